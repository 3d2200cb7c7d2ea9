"""Splitting a Siamese head at its first `Linear`, for `PairIndex`.

In eval mode everything in fastai's `create_head` up to its first `Linear` acts on each image's
features separately: pooling is per channel (`AdaptiveConcatPool2d` of the concatenated maps is
`[max(f1), max(f2), avg(f1), avg(f2)]`), `BatchNorm1d` on running statistics and `Dropout` are
per feature, and the first `Linear` of a concatenation is a sum of two products. So a pair's
logits are the rest of the head applied to `u(x1) + v(x2)`, with `u` and `v` computed once per
image. What follows is folded in float64 (BatchNorm into the neighbouring `Linear`, a two-class
softmax into one log-odds row) for the Rust kernel. Only modules whose eval semantics are known
exactly are split or folded; anything else stays a module the pair stage calls as it is."""
from dataclasses import dataclass, field

import torch
from fastai import layers as fl
from torch import nn
from torch.nn.modules import module as _torch_module

from . import layers as L

__all__ = ['Split', 'split_head']


def _classes(*names):
    "Our class and PyTorch's (or fastai's) of each mirrored module: the classes whose eval semantics are known"
    return {c for n in names for c in (getattr(L, n), getattr(nn, n, None), getattr(fl, n, None)) if c is not None}


SEQUENTIAL, LINEAR, RELU, BN, DROPOUT = (_classes(n) for n in ('Sequential', 'Linear', 'ReLU', 'BatchNorm1d', 'Dropout'))
SEQUENTIAL |= _classes('LinBnDrop')
CONCAT_POOL, AVG_POOL, MAX_POOL = (_classes(n) for n in ('AdaptiveConcatPool2d', 'AdaptiveAvgPool2d', 'AdaptiveMaxPool2d'))
FLATTEN, SIGMOID_RANGE = _classes('Flatten'), _classes('SigmoidRange')


def _hooked(m):
    return bool(m._forward_hooks or m._forward_pre_hooks)


def flat_modules(head):
    "The leaves of `head` in call order (nested `Sequential`s opened), or None if a container is not a plain one"
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks: return None
    if type(head) not in SEQUENTIAL or _hooked(head): return None
    out = []
    for m in head._modules.values():  # as `Sequential.forward` runs them: fastai repeats one ReLU instance
        if m is None: continue
        if type(m) in SEQUENTIAL:
            sub = flat_modules(m)
            if sub is None: return None
            out += sub
        else: out.append(m)
    return out


def _is(m, classes): return type(m) in classes and not _hooked(m)
def _size_one(s): return s in (1, (1, 1), [1, 1])


def _pool_kinds(m):
    "The per-channel reductions of a pooling module, in output order, or None"
    if _is(m, CONCAT_POOL) and _size_one(m.size):
        mp, ap = getattr(m, 'mp', None), getattr(m, 'ap', None)
        if _pool_kinds(mp) == ['max'] and _pool_kinds(ap) == ['avg']: return ['max', 'avg']
    if _is(m, AVG_POOL) and _size_one(m.output_size): return ['avg']
    if _is(m, MAX_POOL) and _size_one(m.output_size) and not m.return_indices: return ['max']
    return None


def _flattens(m):
    if _is(m, FLATTEN) and type(m) is nn.Flatten: return m.start_dim == 1 and m.end_dim == -1
    return _is(m, FLATTEN) and not m.full


def _bn_affine(m):
    "`(scale, shift)` of a BatchNorm1d in eval, float64, or None when it would use batch statistics"
    if not _is(m, BN) or m.running_mean is None or m.running_var is None: return None
    d = lambda t: t.detach().double().cpu()
    s = (d(m.running_var) + m.eps).rsqrt()
    if m.weight is not None: s = s * d(m.weight)
    t = -d(m.running_mean) * s
    if m.bias is not None: t = t + d(m.bias)
    return s, t


def _per_feature(m):
    "Whether `m` acts on each feature separately in eval (so it can run before the split)"
    return _is(m, DROPOUT) or type(m) is nn.Identity or _bn_affine(m) is not None


@dataclass
class Split:
    "A head split at its first Linear: `pre` per image, then the Linear as `u`/`v` maps, then `tail`"
    pre: list                   # modules run on `cat([f, f])`: pooling, flatten, BatchNorm, dropout
    pooled: int                 # per-channel reductions (2 for concat pooling, 1, or 0: flat features)
    linear: nn.Module
    tail: list                  # modules after the Linear
    fold: 'Fold | None' = None  # the tail as the Rust kernel computes it, or None (the modules run)

    def columns(self, c):
        "Columns of the concatenated features that come from image 1 and from image 2, for `c` channels"
        a = [k * 2 * c + i for k in range(max(self.pooled, 1)) for i in range(c)]
        return torch.tensor(a), torch.tensor(a) + c


def split_head(head, feats_ndim):
    "A `Split` of `head` for features with `feats_ndim` dims, or None if it cannot be split exactly"
    mods = flat_modules(head)
    if mods is None: return None
    i, pooled = 0, 0
    if feats_ndim == 4:
        kinds = _pool_kinds(mods[0]) if mods else None
        if kinds is None or len(mods) < 2 or not _flattens(mods[1]): return None
        i, pooled = 2, len(kinds)
    elif feats_ndim != 2: return None
    while i < len(mods) and _per_feature(mods[i]): i += 1
    if i == len(mods) or not _is(mods[i], LINEAR): return None
    s = Split(mods[:i], pooled, mods[i], mods[i + 1:])
    s.fold = fold_tail(s.tail, mods[i].out_features)
    return s


@dataclass
class Fold:
    "The tail folded: `u @ M`, `v @ M + c`, optional ReLU, then `layers` `[(w, b, relu)]`, then the output"
    width: int
    m: torch.Tensor | None = None   # float64 map applied to `u` and `v` (None: identity)
    c: torch.Tensor | None = None   # float64 shift added to `v`
    relu: bool = False
    layers: list = field(default_factory=list)
    y_range: tuple | None = None
    log_odds: bool = False

    def affine_out(self, s, t):
        "Folds `x * s + t` into the output of the open stage"
        if self.layers:
            w, b, _ = self.layers[-1]
            self.layers[-1][:2] = [w * s[:, None], b * s + t]
        else:
            self.m = torch.diag(s) if self.m is None else self.m * s
            self.c = t if self.c is None else self.c * s + t

    def linear(self, m, pending):
        w = m.weight.detach().double().cpu()
        b = m.bias.detach().double().cpu() if m.bias is not None else w.new_zeros(w.shape[0])
        if pending is not None:
            s, t = pending
            b, w = b + w @ t, w * s
        self.layers.append([w, b, False])

    def n_logits(self): return self.layers[-1][0].shape[0] if self.layers else self.width

    def collapse(self):
        "A two-class softmax is the sigmoid of `l1 - l0`: one row instead of two"
        d = torch.tensor([-1., 1.], dtype=torch.float64)
        if self.layers:
            w, b, r = self.layers[-1]
            self.layers[-1] = [(d @ w)[None], (d @ b)[None], r]
        else:
            self.m = (torch.eye(self.width, dtype=torch.float64) if self.m is None else self.m) @ d[:, None]
            self.c = None if self.c is None else (self.c @ d)[None]
        self.log_odds = True


def _relu_open(f): return f.layers[-1][2] if f.layers else f.relu


def _set_relu(f):
    if f.layers: f.layers[-1][2] = True
    else: f.relu = True


def fold_tail(tail, width):
    "The `Fold` of `tail` (the modules after the first Linear, of `width` outputs), or None"
    f, pending, ended = Fold(width), None, False
    for m in tail:
        if _is(m, DROPOUT) or type(m) is nn.Identity: continue
        if ended: return None
        if (st := _bn_affine(m)) is not None:
            if _relu_open(f) or pending is not None: pending = st if pending is None else _compose(pending, st)
            else: f.affine_out(*st)
        elif _is(m, RELU):
            if pending is not None: return None
            _set_relu(f)
        elif _is(m, LINEAR) and m.in_features == f.n_logits():
            f.linear(m, pending)
            pending = None
        elif _is(m, SIGMOID_RANGE) and pending is None and not _relu_open(f):
            f.y_range, ended = (float(m.low), float(m.high)), True
        else: return None
    if pending is not None or _relu_open(f): return None
    if f.n_logits() == 2 and f.y_range is None: f.collapse()
    return f


def _compose(a, b):
    "`x * s + t` of `a`, then of `b`"
    return a[0] * b[0], a[1] * b[0] + b[1]
