"""What a derived object's numbers depend on: a model's modules, settings, tensors and their values.

`PairIndex` keeps numbers computed from a model; `Watch(model).changed()` says when the model has moved on
since (training went on, weights were loaded, a module was replaced or a setting changed), so that it never
answers with stale numbers. Values are compared, not only version counters: fastai's optimisers write through
`p.data`, which leaves those alone. `every_value=True` checksums every byte (a `PairIndex`: ~11 ms for
resnet34's 89 MB); otherwise a digest of each small tensor whole and of 1,024 values of each large one is
compared, which misses an edit outside that sample. A model may name more tensors it depends on with
`_sr_watched()`. (`freeze` does not watch: a frozen model is a snapshot until `refresh()`.)"""
import torch

from . import _core
from ._engine import _MISSING, RustModule

__all__ = ['Watch', 'watched_tensors']

SAMPLE = 1024  # values of a large tensor compared by the sampled digest (smaller tensors are compared whole)


def _walk(model):
    "`(modules, tensors)`: each module's identity, hooks and settings, and every tensor, in one pass over the tree"
    mods, ts = [], []
    for m in model.modules():
        mods.append((id(m), type(m), len(m._forward_hooks) + len(m._forward_pre_hooks), _settings(m)))
        ts += [t for t in m._parameters.values() if t is not None]
        ts += [t for t in m._buffers.values() if t is not None]
        ts += [v for v in vars(m).values() if isinstance(v, torch.Tensor)]  # plain tensors a module reads by name
    extra = getattr(model, '_sr_watched', None)
    return tuple(mods), ts + (list(extra()) if extra else [])


def watched_tensors(model):
    "Parameters, buffers, plain tensor attributes (weights a module reads by name) and those `_sr_watched` names"
    return _walk(model)[1]


def _settings(m):
    "What `m`'s own forward reads besides tensors: the core's settings for ours, public attributes for the rest"
    if isinstance(m, RustModule):
        key = m.__dict__.get('_sr_key', _MISSING)
        if key is _MISSING: key = m._sr_make_key()
        if key is not None: return key
    return tuple((k, repr(v)) for k, v in vars(m).items() if not k.startswith('_') and k != 'training')


def _checksums(ts):
    "Every byte of each tensor (prepacked oneDNN copies are derived from watched ones, and have no bytes to read)"
    ts = [t.detach() for t in ts if not t.is_mkldnn]
    ts = [t if t.device.type == 'cpu' and t.is_contiguous() else t.to('cpu').contiguous() for t in ts]
    return tuple(_core.checksums(ts, max(1, torch.get_num_threads())))


class Watch:
    "A snapshot of `model` that `changed()` compares with the model as it is now (its whole tree, every call)"
    def __init__(self, model, every_value=False):
        self.model, self.every_value = model, every_value
        self.mods, tensors = _walk(model)
        self.state = self._tensor_state(tensors)

    def _tensor_state(self, ts):
        key = tuple((id(t), 0 if t.is_mkldnn else t.data_ptr(), t._version, t.shape, t.dtype) for t in ts)
        values = _checksums(ts) if self.every_value else _core.sample_digest(ts, SAMPLE)
        return key, values

    def changed(self):
        "Whether the model's modules, settings, tensors or values differ from the snapshot"
        mods, ts = _walk(self.model)
        return mods != self.mods or self._tensor_state(ts) != self.state
