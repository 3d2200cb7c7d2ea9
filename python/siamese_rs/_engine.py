"""The bridge between `nn.Module` trees and the Rust core.

A module of ours keeps its settings and tensors in the ordinary PyTorch places, so fastai,
`state_dict`, `.to()`, hooks and pickling see a normal module. On every top-level call it
walks its subtree, hands the current tensors to a compiled Rust graph and runs the whole
subtree in one call with the GIL released. A subtree holding a module the core cannot run,
or a module with hooks, runs child by child instead, so hooks fire and edits are honoured.
"""
import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from . import _core
from .exceptions import ArgumentTypeError, DeviceError, DTypeError

__all__ = ['RustModule', 'build', 'settings_of', 'KIND_FIELDS', 'KIND_CLASSES']

KIND_FIELDS = dict(_core.kinds())
KIND_CLASSES = {}
_GRAPHS = {}
_MAX_GRAPHS = 256


def _setting(m, field):
    "The value of `field` for `m` as the core reads it (`bias` is whether there is one)"
    if field == 'bias' and isinstance(m, (nn.Conv2d, nn.Linear)): return m.bias is not None
    v = getattr(m, field)
    return tuple(v) if isinstance(v, list) else v


def settings_of(m, kind):
    "`{field: value}` of module `m` read as core kind `kind`"
    return {f: _setting(m, f) for f in KIND_FIELDS[kind]}


def _has_hooks(m):
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks():
    g = _torch_module
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks)


class RustModule:
    "Mixin for modules the core computes; `_sr_kind` names the core kind"
    _sr_kind = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get('_sr_kind'): KIND_CLASSES.setdefault(cls._sr_kind, cls)

    def __setattr__(self, name, value):
        # Any attribute may be a setting the cached key depends on.
        self.__dict__.pop('_sr_key', None)
        super().__setattr__(name, value)

    def _sr_make_key(self):
        key = (self._sr_kind, tuple(_setting(self, f) for f in KIND_FIELDS[self._sr_kind]))
        self.__dict__['_sr_key'] = key
        return key

    @classmethod
    def _sr_new(cls, settings):
        "An empty module of this class from core settings; tensors and children come after"
        return cls(**settings)

    def forward(self, *xs):
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

    def _py_forward(self, *xs):
        "Child-by-child forward, used when the subtree cannot run as one Rust call"
        raise NotImplementedError(type(self).__name__)


def _check_like_params(m, xs, tensors):
    "Inputs must share the parameters' device, and their dtype unless autocast casts them"
    p = next((t for t in tensors if t.is_floating_point()), None)
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


def _plan(root):
    "`(graph, tensors)` for `root`'s subtree, or None when it must run child by child"
    if _global_hooks(): return None if root._modules else _plan_leaf(root)
    entries, tensors, stack = [], [], [root]
    while stack:
        m = stack.pop()
        if not isinstance(m, RustModule) or (m is not root and _has_hooks(m)): return None
        key = m.__dict__.get('_sr_key') or m._sr_make_key()
        n = len(tensors)
        tensors.extend(t for t in m._parameters.values() if t is not None)
        tensors.extend(t for t in m._buffers.values() if t is not None)
        children = [c for c in m._modules.values() if c is not None]
        entries.append((key, len(children), m.training, len(tensors) - n))
        stack.extend(reversed(children))
    return _graph(tuple(entries)), tensors


def _plan_leaf(m):
    key = m.__dict__.get('_sr_key') or m._sr_make_key()
    tensors = [t for t in m._parameters.values() if t is not None]
    tensors += [t for t in m._buffers.values() if t is not None]
    return _graph(((key, 0, m.training, len(tensors)),)), tensors


def _graph(entries):
    g = _GRAPHS.get(entries)
    if g is None:
        if len(_GRAPHS) >= _MAX_GRAPHS: _GRAPHS.clear()
        g = _GRAPHS[entries] = _core.Graph([(k, s, n, tr, nt) for (k, s), n, tr, nt in entries])
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
