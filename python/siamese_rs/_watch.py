"""What a derived object's numbers depend on: a model's modules, its tensors and a sample of their values.

`PairIndex` and `freeze` keep numbers computed from a model; `Watch(model).changed()` says when the model
has moved on since (training went on, weights were loaded, a module was replaced), so that they never
answer with stale numbers. A model may name more tensors it depends on with `_sr_watched()` (a frozen
model names its source's)."""
from . import _core
from ._engine import _MISSING, RustModule

__all__ = ['Watch', 'watched_tensors']

SAMPLE = 1024  # values of a large tensor compared on every check (smaller tensors are compared whole)


def watched_tensors(model):
    "The tensors `model`'s outputs depend on: its parameters and buffers, and those it names in `_sr_watched`"
    extra = getattr(model, '_sr_watched', None)
    return list(model.parameters()) + list(model.buffers()) + (list(extra()) if extra else [])


def _settings(m):
    "What `m`'s own forward reads besides tensors: the core's settings for ours, the extra repr of others"
    if isinstance(m, RustModule):
        key = m.__dict__.get('_sr_key', _MISSING)
        return m._sr_make_key() if key is _MISSING else key
    return m.extra_repr()


class Watch:
    "A snapshot of `model` that `changed()` compares with the model as it is now"
    def __init__(self, model):
        self.model = model
        self.state = self._state()

    def _state(self):
        ts = watched_tensors(self.model)
        mods = tuple((id(m), type(m), len(m._forward_hooks) + len(m._forward_pre_hooks), _settings(m))
                     for m in self.model.modules())
        key = tuple((id(t), 0 if t.is_mkldnn else t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in ts)
        # fastai's optimisers write through `p.data`, which leaves version counters alone: compare values too.
        return mods, key, _core.sample_digest(ts, SAMPLE)

    def changed(self):
        "Whether the model's modules, settings, tensors or sampled values differ from the snapshot"
        return self._state() != self.state
