"""`freeze`: an inference copy of a model, in the spirit of `torch.jit.freeze` and `optimize_for_inference`.

The copy has every BatchNorm that directly follows a convolution folded into it. In float32, batches of up
to `_SMALL_BATCH` images run dense channels-last on convolution weights prepacked for their shape (oneDNN's
`_convolution_pointwise`; PyTorch's own ReLU and max pool keep NaN there), larger ones in oneDNN's blocked
layout as the exact model does. With `dtype=torch.bfloat16` the encoder computes in bfloat16 with its
convolution weights prepacked once (the head stays float32). It computes what `model.eval()` computes, within
rounding: folding moves float32 features by about 1e-6 relative.

The copy is a snapshot, as `torch.jit.freeze`'s is: it answers with the weights, buffers, modules and settings
its source had when it was frozen (or last `refresh()`ed, or given `load_state_dict`), never re-reading the
source on its own, so no edit of the source can be half-seen. A source with forward hooks is refused (the
copy could not run them as the source does)."""
import copy
import re
import warnings
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import layers
from ._engine import KIND_CHILDREN, KIND_TENSORS, RustModule, _attr, _global_hooks, _plan, generation, pure_torch
from ._watch import _checksums, watched_tensors
from .exceptions import ArgumentError, ArgumentTypeError, DeviceError, DTypeError, ShapeError

__all__ = ['freeze', 'FrozenModel', 'native_bfloat16']

# Containers whose forward applies each child to the previous child's output, so a Conv2d child directly
# followed by a BatchNorm2d child feeds it alone (torchvision's and fastai's forwards; `_DenseBlock`
# concatenates, `Fire` branches, and are not listed).
_CHAINS = {'Sequential', 'ConvLayer', 'XResNet', '_Transition', 'BasicBlock', 'Bottleneck', 'ResNet', '_DenseLayer'}
_HOOKS = ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks', '_backward_pre_hooks', '_forward_hooks_with_kwargs',
          '_forward_hooks_always_called', '_forward_pre_hooks_with_kwargs', '_state_dict_hooks',
          '_state_dict_pre_hooks', '_load_state_dict_pre_hooks', '_load_state_dict_post_hooks')


def native_bfloat16():
    "Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), as oneDNN's bfloat16 kernels want"
    try: flags = open('/proc/cpuinfo').read()
    except OSError: return False
    return bool(re.search(r'\b(avx512_bf16|amx_bf16)\b', flags)) and torch.backends.mkldnn.is_available()


def freeze(model, dtype=torch.float32):
    "An inference copy of `model` (a SiameseModel, a body or a Learner) with BatchNorm folded (and bf16 prepacked)"
    source = getattr(model, 'model', model)
    if isinstance(source, FrozenModel): source = source.source
    if not isinstance(source, nn.Module):
        raise ArgumentTypeError(f'model: expected a SiameseModel, a body (nn.Module) or a Learner, got {type(model).__name__}')
    body = source.encoder if hasattr(source, 'encoder') and hasattr(source, 'head') else source
    if not any(isinstance(m, RustModule) for m in body.modules()):
        raise ArgumentTypeError(f'model: expected a model of siamese_rs modules (sr.create_body, sr.SiameseModel), got '
                                f'{type(body).__name__} of plain PyTorch modules; convert it first with '
                                f'sr.create_body(model, cut=...)')
    if dtype not in (torch.float32, torch.bfloat16):
        raise ArgumentError(f'dtype: expected torch.float32 or torch.bfloat16, got {dtype!r}')
    if dtype == torch.bfloat16 and not native_bfloat16():
        warnings.warn('freeze: this CPU has no native bfloat16 (AVX-512 BF16 or AMX), where bfloat16 is slower than '
                      'float32; freezing in float32', stacklevel=2)
        dtype = torch.float32
    return FrozenModel(source, dtype)


class FrozenModel(nn.Module):
    """What `freeze` returns: `forward(x1, x2)` of a SiameseModel (or `forward(x)` of a body), for inference only.

    A snapshot: it answers with the state its source (`frozen.source`) had when frozen, or at the last
    `refresh()` or `load_state_dict`, whatever happens to the source since; `state_dict()`, copies, pickles
    and `sr.export_model` carry that state."""
    def __init__(self, source, dtype, snapshot=None):
        super().__init__()
        self.__dict__['source'] = source  # not a child: its parameters are not the frozen model's
        self.dtype, self.siamese = dtype, hasattr(source, 'encoder') and hasattr(source, 'head')
        self.encoder = _FrozenEncoder(self)
        self.head = None
        if snapshot is None: self.refresh()
        else: self._take(snapshot)
        self.train(False)

    def refresh(self):
        """Take the source's current state and fold and pack it again (the only time a frozen model reads
        its source); a source with forward hooks is refused, and this model is left as it was"""
        self._take(_snapshot(self.source))

    def _take(self, snap):
        "Answer with `snap`, a private copy of the source: fold and pack it"
        with torch.no_grad(), torch.inference_mode(False):  # copies that a PairIndex can watch
            body = _fold_and_pack(snap.encoder if self.siamese else snap, self.dtype)
            head = _copy(snap.head).eval() if self.siamese else None
        self.__dict__['_snapshot'] = snap
        self.encoder.body, self.encoder.per_side = body, _batch_dependent(body)
        if self.siamese: self.head = head

    @property
    def snapshot(self):
        "The source as this model answers it: a private copy taken by `freeze`, `refresh()` or `load_state_dict`"
        return self._snapshot

    def train(self, mode=True):
        if mode:
            raise ArgumentError('mode: a frozen model is for inference only; train the source model (frozen.source) '
                                'and call frozen.refresh() to fold the new weights')
        return super().train(False)

    def extra_repr(self): return f'dtype={str(self.dtype).removeprefix("torch.")}'

    # Its state is the snapshot's (fastai's state_dict keys): prepacked weights are a cache, so saving,
    # copying and pickling go through the snapshot, and loading refolds.
    def state_dict(self, *args, **kwargs):
        out = self._snapshot.state_dict(*args, **kwargs)
        for k, v in out.items(): out[k] = v.detach().clone()  # edits of it must not reach the snapshot
        return out

    def load_state_dict(self, state_dict, strict=True, assign=False):
        "Load into the source, and refresh"
        out = self.source.load_state_dict(state_dict, strict=strict, assign=assign)
        self.refresh()
        return out

    def __reduce__(self): return FrozenModel, (self.source, self.dtype, self._snapshot)

    def forward(self, x1, x2=None):
        if not self.siamese:
            if x2 is not None: raise ArgumentTypeError('forward: a frozen body takes one input (x), got two')
            _check_input(x1, 'x', self.encoder.body)
            return self.encoder.run(x1)
        if x2 is None: raise ArgumentTypeError('forward: a frozen SiameseModel takes two inputs (x1, x2), got one')
        for name, x in (('x1', x1), ('x2', x2)): _check_input(x, name, self.encoder.body)
        if x1.shape != x2.shape:
            raise ShapeError(f'forward: x1 and x2 must have the same shape (batch, channels, height, width); '
                             f'got x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)}')
        run, b = self.encoder.run, len(x1)
        if self.encoder.per_side: f = torch.cat([run(x1), run(x2)], dim=1)  # batch statistics of each side
        else:  # one encoder call: the batch does not change the result, and the core chunks a large batch
            f = run(torch.cat([x1, x2]))
            f = torch.cat([f[:b], f[b:]], dim=1)
        with torch.no_grad(): return self.head(f)


def _snapshot(source):
    """A private copy of `source` as it is now, checked byte for byte against it (a copy taken while another
    thread edits the source is taken again); hooks are refused first"""
    _check_hooks(source)
    with torch.no_grad(), torch.inference_mode(False):
        for _ in range(3):
            before = _checksums(watched_tensors(source))
            snap = copy.deepcopy(source)
            if _checksums(watched_tensors(snap)) == before: return snap.eval()
    raise ArgumentError('model: its tensors kept changing while freeze or refresh() copied them (is another thread '
                        'training it?); freeze it, or call refresh(), once it holds still')


def _check_hooks(model):
    "Forward hooks change what a module computes, and the frozen copies cannot run them as the source does"
    for name, m in model.named_modules():
        for kind, hooks in (('forward pre-hook', m._forward_pre_hooks), ('forward hook', m._forward_hooks)):
            for h in hooks.values():
                what = getattr(h, '__qualname__', None) or type(h).__name__
                raise ArgumentError(f"model: module '{name}' ({type(m).__name__}) has a {kind} ({what}), which a "
                                    f"frozen model cannot run as the source does; remove it (handle.remove()) "
                                    f"before sr.freeze or refresh(), or run the source model")


def _batch_dependent(body):
    "Whether a module of the (eval) body normalises with the statistics of the batch at hand"
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None and m.running_var is None
               for m in body.modules())


class _FrozenEncoder(nn.Module):
    "The frozen encoder: float32 images in, float32 features out (bfloat16 inside for a bfloat16 model)"
    def __init__(self, owner):
        super().__init__()
        self.__dict__['owner'] = owner
        self.body, self.per_side = None, False

    def forward(self, x):
        _check_input(x, 'x', self.body)
        return self.run(x)

    def _plan(self):
        "The body's plan, made again only when a module changed (a hook, `.to()`, a new body: `generation`)"
        if _global_hooks(): return None  # run module by module, so that the hooks see every module
        gen, plan = self.__dict__.get('_cached_plan', (None, None))
        if plan is None or gen != generation():
            gen, plan = generation(), _plan(self.body)
            self.__dict__['_cached_plan'] = gen, plan
        return plan

    def run(self, x):
        "The encoder on checked images"
        with torch.no_grad(), torch.autocast('cpu', enabled=False):
            x = x.to(self.owner.dtype)
            plan = None if pure_torch() else self._plan()
            if plan is None: return self.body(x).float()
            # oneDNN's layouts have no empty batch: PyTorch's layout answers one, as PyTorch does.
            fast = x.device.type == 'cpu' and torch.backends.mkldnn.enabled and x.numel() > 0
            sized = self._sized(x, plan) if fast else None
            if sized is not None:  # dense channels-last: no NaN probes needed
                graph, tensors = sized
                return graph.forward(tensors, [x.contiguous(memory_format=torch.channels_last)], False).contiguous()
            graph, tensors = plan
            return graph.forward(tensors, [x], fast).float()

    def _sized(self, x, plan):
        """For a small float32 batch, the plan of a copy of the body whose weights are prepacked for `x`'s
        shape (kept for the last `_SIZED_SHAPES` shapes while the body's tensors stay the same), or None"""
        if self.owner.dtype != torch.float32 or x.dim() != 4 or len(x) > _SMALL_BATCH: return None
        cache, key, gen = self.__dict__.setdefault('_sized_plans', OrderedDict()), tuple(x.shape), generation()
        entry = cache.get(key)
        if entry is not None and entry[0] != gen:  # some module changed: is it still this body's copy?
            entry = (gen, *entry[1:]) if entry[1] == _stamp(plan[1]) else None
        if entry is None:
            sized = _sized_plan(self.body, x, plan)  # (its hooks and packing move the generation)
            entry = generation(), _stamp(plan[1]), sized
            while len(cache) >= _SIZED_SHAPES: cache.popitem(last=False)
        cache[key] = entry
        cache.move_to_end(key)
        return entry[2]


# Batches of at most this many images (both sides of a pair batch together) run dense channels-last on
# weights prepacked for their shape, where oneDNN beat its blocked layout by 1.1-1.5x here (bench/FROZEN.md);
# larger ones run blocked.
_SMALL_BATCH = 4
_SIZED_SHAPES = 2  # input shapes whose prepacked weights a frozen model keeps (a copy of the weights each)


def _stamp(tensors):
    "The identity of a plan's tensors (what the packed copy was made from)"
    return tuple((id(t), 0 if t is None or t.is_mkldnn else t.data_ptr()) for t in tensors)


def _sized_plan(body, x, plan):
    """The plan of a copy of `body` with every convolution's float32 weight prepacked for the input size it
    gets from `x`, or None when oneDNN cannot run it so: checked once against the blocked plan"""
    sizes = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: sizes.__setitem__(id(m), list(a[0].shape)))
             for m in body.modules() if type(m) is layers.Conv2d]
    try: body(x)  # module by module (the hooks see every convolution)
    finally:
        for h in hooks: h.remove()
    copy_ = _copy(body)
    for m, c in zip(body.modules(), copy_.modules()):
        if id(m) in sizes and m._sr_make_key() is not None: _pack(c, torch.float32, sizes[id(m)])
    sized = _plan(copy_)
    if sized is None: return None
    # Checked on random images of that shape (the caller's may hold NaN), from a generator of its own.
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device)
    try: got = sized[0].forward(sized[1], [probe.contiguous(memory_format=torch.channels_last)], False)
    except Exception: return None  # a convolution oneDNN refuses in this form: run blocked
    want = plan[0].forward(plan[1], [probe], True)
    if not want.isfinite().all(): return None  # NaN or infinite weights: the blocked plan keeps them as PyTorch
    ok = got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    return sized if ok else None


def _check_input(x, name, body):
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f'forward: {name} must be a torch.Tensor, got {type(x).__name__}')
    if x.dtype != torch.float32:
        raise DTypeError(f'forward: {name} is {str(x.dtype).removeprefix("torch.")} but a frozen model takes float32 '
                         f'images (bfloat16 models convert them themselves); use {name}.float()')
    if x.requires_grad and torch.is_grad_enabled():
        raise ArgumentError(f'forward: {name} requires grad, but a frozen model is for inference only (no autograd); '
                            f'pass {name}.detach(), or use the source model to train')
    p = next(body.parameters(), None) if body is not None else None
    if p is not None and x.device != p.device:
        raise DeviceError(f'forward: {name} is on {x.device} but the frozen model is on {p.device}')


def _fold_and_pack(body, dtype):
    "A frozen copy of `body`: BatchNorm folded into the convolutions; for bfloat16, weights prepacked for oneDNN"
    tree = _copy(body).eval()
    _fold(tree)
    # float32 weights stay in PyTorch's layout: prepacked ones ran 0-20% slower here, most at small inputs
    # (oneDNN's packed layout is chosen for one input shape; given a plain weight, it picks per shape).
    if dtype == torch.float32: return tree
    cpu = next(tree.parameters(), torch.empty(0)).device.type == 'cpu'
    # DenseNet's blocks run on dense channels-last tensors (they concatenate), where oneDNN's convolution on a
    # prepacked weight answers in the ordinary layout and the block ran 1.1-1.4x slower (bench/FROZEN.md).
    dense = {id(c) for m in tree.modules() if getattr(m, '_sr_kind', None) == '_DenseBlock' for c in m.modules()}
    for m in tree.modules():
        packable = type(m) is layers.Conv2d and id(m) not in dense and m._sr_make_key() is not None
        if packable and cpu and torch.backends.mkldnn.is_available():
            _pack(m, dtype)
        elif isinstance(m, nn.Conv2d):
            m.weight = nn.Parameter(m.weight.to(dtype), requires_grad=False)
            if m.bias is not None: m.bias = nn.Parameter(m.bias.to(dtype), requires_grad=False)
    return tree


def _copy(m):
    "`m`'s tree with the same classes and settings, no hooks, and detached copies of the tensors its forward reads"
    if not isinstance(m, RustModule): return copy.deepcopy(m)
    # Not `copy.copy`: a parametrized module refuses to be copied (PyTorch's `__getstate__`).
    cls = parametrize.type_before_parametrizations(m)
    c = cls.__new__(cls)
    c.__dict__.update(m.__dict__)
    for h in _HOOKS:
        if h in m.__dict__: c.__dict__[h] = OrderedDict()
    reads = KIND_TENSORS[m._sr_kind]
    values = {n: _attr(m, n) for n in reads}  # as PyTorch's forward sees them: parametrized, pruned...
    for n in reads: c.__dict__.pop(n, None)
    params, bufs = OrderedDict(), OrderedDict()
    for n, v in values.items():
        v = None if not isinstance(v, torch.Tensor) else v.detach().clone()
        if n in ('weight', 'bias'): params[n] = None if v is None else nn.Parameter(v, requires_grad=False)
        else: bufs[n] = v
    c.__dict__.update(_parameters=params, _buffers=bufs, _non_persistent_buffers_set=set())
    c.__dict__['_modules'] = OrderedDict((k, None if v is None else _copy(v)) for k, v in m._modules.items()
                                         if k != 'parametrizations')
    c.__dict__.pop('_sr_key', None)
    return c


def _named_children(m):
    "`(name, child)` in the order the forward of `m`'s kind calls them"
    names = KIND_CHILDREN.get(m._sr_kind)
    if names is None: return list(m._modules.items())
    return [(n.rstrip('?'), m._modules.get(n.rstrip('?'))) for n in names]


def _fold(m):
    "Fold each BatchNorm2d that directly follows a Conv2d in a chain into it, in place, leaving an Identity"
    if not isinstance(m, RustModule): return
    if m._sr_kind in _CHAINS:
        kids = _named_children(m)
        for (_, conv), (name, bn) in zip(kids, kids[1:]):
            if _foldable(conv, bn):
                _fold_into(conv, bn)
                setattr(m, name, layers.Identity())
    for c in m._modules.values():
        if c is not None: _fold(c)


def _foldable(conv, bn):
    "A plain conv of ours followed by an eval BatchNorm2d on running statistics"
    return (type(conv) is layers.Conv2d and type(bn) is layers.BatchNorm2d and conv._sr_make_key() is not None
            and bn.running_mean is not None and bn.running_var is not None and conv.weight.shape[0] == bn.num_features)


def _fold_into(conv, bn):
    "`conv` computing `bn(conv(x))` with running statistics, the arithmetic in float64"
    w = conv.weight.double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None: scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None: shift = shift + bn.bias.double()
    if conv.bias is not None: shift = shift + conv.bias.double() * scale
    dt = conv.weight.dtype
    conv.weight = nn.Parameter((w * scale.reshape(-1, 1, 1, 1)).to(dt), requires_grad=False)
    conv.bias = nn.Parameter(shift.to(dt), requires_grad=False)


def _pack(conv, dtype, input_size=None):
    "`conv`'s weight reordered once into oneDNN's layout for its convolution (for an input size, if given)"
    w = conv.weight.detach().to_mkldnn(dtype)
    size = [] if input_size is None else [input_size]
    packed = torch._C._nn.mkldnn_reorder_conv2d_weight(w, list(conv.padding), list(conv.stride),
                                                       list(conv.dilation), conv.groups, *size)
    del conv.weight
    conv.register_buffer('weight', packed)
    conv.__class__ = _PackedConv2d


class _PackedConv2d(layers.Conv2d):
    "A frozen convolution whose weight is prepacked for oneDNN; run by PyTorch it calls oneDNN directly too"
    def _py_forward(self, x):
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)
