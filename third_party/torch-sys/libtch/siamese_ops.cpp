// siamese-rs: operators that tch does not bind, called through the dispatcher. Boxed calls take the
// schema's arguments as IValues, so they do not depend on the C++ types each torch release gives them.
#include "torch_api.h"
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace {
std::vector<int64_t> ints(const int64_t *v, int n) { return std::vector<int64_t>(v, v + n); }

c10::OperatorHandle op(const char *name, const char *overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}
}  // namespace

extern "C" {
// oneDNN's convolution on a dense (channels-last) input with a weight prepacked for its input size:
// `mkldnn::_convolution_pointwise` with no post-op. The output keeps the input's memory format.
tensor sr_convolution_pointwise(tensor x, tensor w, tensor b, int64_t *padding, int padding_len,
                                int64_t *stride, int stride_len, int64_t *dilation, int dilation_len,
                                int64_t groups) {
  PROTECT(
    torch::jit::Stack stack;
    stack.emplace_back(*x);
    stack.emplace_back(*w);
    stack.emplace_back(b ? c10::IValue(*b) : c10::IValue());
    stack.emplace_back(ints(padding, padding_len));
    stack.emplace_back(ints(stride, stride_len));
    stack.emplace_back(ints(dilation, dilation_len));
    stack.emplace_back(groups);
    stack.emplace_back(std::string("none"));                       // attr
    stack.emplace_back(c10::List<std::optional<c10::Scalar>>());   // scalars
    stack.emplace_back(c10::IValue());                             // algorithm
    op("mkldnn::_convolution_pointwise", "").callBoxed(&stack);
    return new torch::Tensor(stack[0].toTensor());
  )
  return nullptr;
}
}
