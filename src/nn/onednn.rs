//! oneDNN operators that tch does not bind, through siamese-rs's addition to the torch-sys shim
//! (`third_party/torch-sys/libtch/siamese_ops.cpp`).
use crate::error::{Error, Result};
use std::ffi::CStr;
use tch::Tensor;
use torch_sys::C_tensor;

/// `mkldnn::_convolution_pointwise`: oneDNN's convolution of a dense input with a weight
/// prepacked for that input's size (`torch._C._nn.mkldnn_reorder_conv2d_weight(..., input_size)`),
/// answering in the input's memory format; with `other`, its `.binary` form adds `other` to the
/// output in the same pass. Unlike `mkldnn_convolution`, a channels-last input stays channels-last.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_pointwise(
    x: &Tensor,
    other: Option<&Tensor>,
    w: &Tensor,
    b: Option<&Tensor>,
    padding: &[i64],
    stride: &[i64],
    dilation: &[i64],
    groups: i64,
) -> Result<Tensor> {
    let ptr = |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut C_tensor);
    let len = |v: &[i64]| v.len() as std::os::raw::c_int;
    // SAFETY: every tensor pointer is a live tensor borrowed for the call (or null where the shim
    // takes null), and each slice outlives the call with its length passed beside it; the shim
    // catches C++ exceptions and reports them through `get_and_reset_last_err`.
    let out = unsafe {
        torch_sys::sr_convolution_pointwise(
            ptr(Some(x)),
            ptr(other),
            ptr(Some(w)),
            ptr(b),
            padding.as_ptr(),
            len(padding),
            stride.as_ptr(),
            len(stride),
            dilation.as_ptr(),
            len(dilation),
            groups,
        )
    };
    last_error()?;
    if out.is_null() {
        return Err(Error::Torch(
            "mkldnn::_convolution_pointwise returned no tensor".into(),
        ));
    }
    // SAFETY: a non-null result is a tensor the shim allocated for us to own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// The shim's pending error, if any (the string is `strdup`ed: freed here).
fn last_error() -> Result<()> {
    // SAFETY: the shim returns null or a `strdup`ed C string that nothing else frees.
    let err = unsafe { torch_sys::get_and_reset_last_err() };
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: `err` is a valid NUL-terminated string until freed just below.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    // SAFETY: allocated by `strdup` (malloc), freed once.
    unsafe { libc::free(err.cast()) };
    Err(tch::TchError::Torch(msg).into()) // without libtorch's C++ backtrace
}
