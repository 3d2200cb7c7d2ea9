"""The bridge between `nn.Module` trees and the Rust core.

A module of ours keeps its settings and tensors in the ordinary PyTorch places, so fastai,
`state_dict`, `.to()`, hooks and pickling see a normal module. On every top-level call it
walks its subtree, hands the current tensors to a compiled Rust graph and runs the whole
subtree in one call with the GIL released. A subtree holding a module the core cannot run,
or a module with hooks, runs child by child instead, so hooks fire and edits are honoured.
"""
import functools
import numbers

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from . import _core
from .exceptions import ArgumentTypeError, DeviceError, DTypeError

__all__ = ['RustModule', 'build', 'settings_of', 'pure_torch', 'KIND_FIELDS', 'KIND_TENSORS', 'KIND_CHILDREN',
           'KIND_CLASSES']

_KINDS = _core.kinds()
KIND_FIELDS = {k: fields for k, (fields, _, _) in _KINDS.items()}
KIND_TENSORS = {k: tensors for k, (_, tensors, _) in _KINDS.items()}
KIND_CHILDREN = {k: children for k, (_, _, children) in _KINDS.items()}
KIND_CLASSES = {}
_GRAPHS = {}
_MAX_GRAPHS = 256
_MISSING = object()
# How many times a module of ours had an attribute set or deleted, a hook added or its tensors converted
# (`.to()`), or any module registered a parameter, buffer or child: a frozen model plans its own copies
# again only when this moved (`frozen.py`).
_GENERATION = [0]


def generation():
    "The module-change counter (see `_GENERATION`)"
    return _GENERATION[0]


def _bump(*_):
    _GENERATION[0] += 1


for _register in (_torch_module.register_module_module_registration_hook,
                  _torch_module.register_module_parameter_registration_hook,
                  _torch_module.register_module_buffer_registration_hook):
    _register(_bump)


def pure_torch():
    "True when our modules must run PyTorch's own forward instead of the core"
    # Graph capture must see standard ops, not an opaque call (jit, dynamo/compile/export, ONNX).
    # Python code that libtorch calls back (saved-tensor hooks, as checkpointing uses; dispatch or
    # function modes) must run under PyTorch's bindings, where its exceptions keep their type.
    return (torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
            or torch._C._autograd._top_saved_tensors_default_hooks(True) is not None
            or torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_torch_function_mode_enabled())


def _plain(v):
    "`v` in the core's setting types (None, bool, int, float, tuple of ints/None), or `_MISSING`"
    if v is None or type(v) in (bool, int, float): return v
    if type(v).__module__ == 'numpy' and hasattr(v, 'item'): v = v.item()  # numpy scalars
    if isinstance(v, bool): return bool(v)
    if isinstance(v, numbers.Integral): return int(v)
    if isinstance(v, numbers.Real): return float(v)
    if isinstance(v, (tuple, list)):
        items = tuple(_plain(i) for i in v)
        if all(i is None or type(i) is int for i in items): return items
    return _MISSING


def _setting(m, field):
    "The value of `field` for `m` as the core reads it (`bias` is whether there is one)"
    if field == 'bias' and isinstance(m, (nn.Conv2d, nn.Linear)): return m.bias is not None
    return _plain(getattr(m, field, _MISSING))


def settings_of(m, kind):
    "`{field: value}` of module `m` read as core kind `kind`"
    return {f: _setting(m, f) for f in KIND_FIELDS[kind]}


@functools.cache
def _class_attr(cls, name):
    "Whether `name` is found on the class (a parametrization's property), before the instance"
    return hasattr(cls, name)


def _attr(m, name):
    "`m.<name>` as PyTorch's forward reads it, without `nn.Module.__getattr__` when it can"
    if _class_attr(type(m), name): return getattr(m, name, _MISSING)
    for d in (m.__dict__, m._parameters, m._buffers, m._modules):
        if name in d: return d[name]
    return _MISSING


def _has_hooks(m):
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks():
    g = _torch_module
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks)


class RustModule:
    "Mixin for modules the core computes; `_sr_kind` names the core kind"
    _sr_kind = None
    # Attributes PyTorch's forward reads that the core does not implement, with the one value
    # it computes as PyTorch does; any other value runs PyTorch's own forward for that module.
    _sr_fixed = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get('_sr_kind'): KIND_CLASSES.setdefault(cls._sr_kind, cls)

    def __setattr__(self, name, value):
        # Any attribute may be a setting the cached key depends on.
        self.__dict__.pop('_sr_key', None)
        _bump()
        super().__setattr__(name, value)

    def __delattr__(self, name):
        self.__dict__.pop('_sr_key', None)
        _bump()
        super().__delattr__(name)

    def _sr_supported(self):
        "Whether the core computes this module exactly as its PyTorch class would"
        return all(getattr(self, k, _MISSING) == v for k, v in self._sr_fixed.items())

    def _sr_make_key(self):
        "`(kind, settings)` for the core, or None when the core cannot honour this module"
        kind = self._sr_kind
        raw = [getattr(self, f, _MISSING) for f in KIND_FIELDS[kind]]
        values = tuple(_setting(self, f) for f in KIND_FIELDS[kind])
        ok = self._sr_supported() and _MISSING not in values
        key = (kind, values) if ok else None
        if not any(isinstance(v, list) for v in raw): self.__dict__['_sr_key'] = key  # lists can change in place
        return key

    @classmethod
    def _sr_new(cls, settings):
        "An empty module of this class from core settings; tensors and children come after"
        return cls(**settings)

    def forward(self, *xs):
        if pure_torch(): return self._py_forward(*xs)
        for i, x in enumerate(xs):
            if not isinstance(x, torch.Tensor):
                name = f'x{i + 1}' if len(xs) > 1 else 'x'
                raise ArgumentTypeError(f'{type(self).__name__}.forward: {name} must be a torch.Tensor, '
                                        f'got {type(x).__name__}')
        plan = _plan(self)
        if plan is None: return self._py_forward(*xs)
        graph, tensors = plan
        _check_like_params(self, xs, tensors)
        return graph.forward(tensors, list(xs), _fast_ok(xs[0]) if xs else False)

    def __prepare_scriptable__(self):
        "What `torch.jit.script` compiles instead: a plain-PyTorch copy of this subtree sharing its tensors"
        from ._script import twin
        return twin(self)

    def _py_forward(self, *xs):
        "PyTorch's forward (child by child for containers), used where the core cannot run as one call"
        return super(RustModule, self).forward(*xs)


def _bumping(name):
    "`nn.Module.<name>`, counting a module change first (hooks and conversions change what a forward computes)"
    def method(self, *args, **kwargs):
        _bump()
        return getattr(super(RustModule, self), name)(*args, **kwargs)
    method.__name__ = method.__qualname__ = name
    return method


for _name in ('_apply', 'register_forward_hook', 'register_forward_pre_hook', 'register_full_backward_hook',
              'register_full_backward_pre_hook', 'register_backward_hook'):
    setattr(RustModule, _name, _bumping(_name))


def _check_like_params(m, xs, tensors):
    "Inputs must share the parameters' device, and their dtype unless autocast casts them"
    p = next((t for t in tensors if t is not None and t.is_floating_point()), None)
    if p is None: return
    for i, x in enumerate(xs):
        name = f'x{i + 1}' if len(xs) > 1 else 'x'
        if x.device != p.device:
            raise DeviceError(f'{type(m).__name__}.forward: {name} is on {x.device} but the model is on {p.device}; '
                              f'move one of them (x.to({str(p.device)!r}) or model.to({str(x.device)!r}))')
        if x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
            fix = f'x.to(torch.{_dtype(p)})'
            if x.is_floating_point(): fix = f'convert the input ({fix}) or the model (model.to(torch.{_dtype(x)}))'
            raise DTypeError(f'{type(m).__name__}.forward: {name} is {_dtype(x)} but the model\'s parameters are '
                             f'{_dtype(p)}; {fix}')


def _dtype(t): return str(t.dtype).removeprefix('torch.')


def _fast_ok(x):
    "oneDNN's blocked layout gives the same values faster, but has no autograd and no autocast"
    return (not torch.is_grad_enabled() and x.device.type == 'cpu' and x.dtype == torch.float32
            and x.numel() > 0
            and not torch.is_autocast_enabled('cpu') and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


def _children(m):
    "`(name, child)` for the children `m`'s forward calls (an absent optional one left out), or `_MISSING`"
    names = KIND_CHILDREN[m._sr_kind]
    if names is None: return [(n, c) for n, c in m._modules.items() if c is not None]
    out = []
    for name in names:
        c = _attr(m, name.rstrip('?'))
        if c is None and name.endswith('?'): continue
        if not isinstance(c, nn.Module): return _MISSING  # PyTorch's forward raises here, so it runs
        out.append((name.rstrip('?'), c))
    return out


def _leaf_tensors(m):
    "The tensors the kind's forward reads, by name (None where PyTorch sees None), or `_MISSING`"
    ts = [_attr(m, n) for n in KIND_TENSORS[m._sr_kind]]
    if any(t is not None and not isinstance(t, torch.Tensor) for t in ts): return _MISSING
    return ts


def _plan(root):
    "`(graph, tensors)` for `root`'s subtree, or None when it must run child by child"
    entries, tensors, stack = [], [], [root]
    hooks = _global_hooks()
    while stack:
        m = stack.pop()
        if not isinstance(m, RustModule) or (m is not root and (hooks or _has_hooks(m))): return None
        key = m.__dict__.get('_sr_key', _MISSING)
        if key is _MISSING: key = m._sr_make_key()
        if key is None: return None
        ts, children = _leaf_tensors(m), _children(m)
        if ts is _MISSING or children is _MISSING: return None
        tensors.extend(ts)
        entries.append((key, tuple(n for n, _ in children), m.training, tuple(t is not None for t in ts)))
        stack.extend(c for _, c in reversed(children))
    return _graph(tuple(entries)), tensors


def _graph(entries):
    g = _GRAPHS.get(entries)
    if g is None:
        if len(_GRAPHS) >= _MAX_GRAPHS: _GRAPHS.clear()
        g = _GRAPHS[entries] = _core.Graph([(k, s, n, tr, pr) for (k, s), n, tr, pr in entries])
    return g


def build(tree):
    "Modules from a core tree `(kind, settings, children, tensors)`"
    kind, settings, children, tensors = tree
    m = KIND_CLASSES[kind]._sr_new(settings)
    for name, child in children: setattr(m, name, build(child))
    for name, t in tensors:
        if name in m._parameters: m._parameters[name] = nn.Parameter(t)
        else: m._buffers[name] = t
    return m
