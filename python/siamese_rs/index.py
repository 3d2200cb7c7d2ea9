"""`PairIndex`: exact P(same) of a Siamese model between many images, for search and de-duplication.

Each image is encoded once; the head is split at its first `Linear` (see `_split`), so a pair costs
the rest of the head on `u(x1) + v(x2)`, computed by a fused Rust kernel on all cores. A head it
cannot split runs per pair in blocks with the model's own modules (same numbers), with a warning."""
import hashlib
import json
import numbers
import os
import warnings

import torch
from torch import nn

from . import _core
from ._index_file import read as _read
from ._index_file import write as _write
from ._split import split_head
from ._watch import Watch as _Watch
from .data import _as_batch, _check_bs, _model_dls
from .exceptions import ArgumentError, ArgumentTypeError, DTypeError, ShapeError, WeightsError

__all__ = ['PairIndex']

_BLOCK = 1 << 22  # values per block where PyTorch scores pairs (16 MiB of float32)


def _threads(): return max(1, torch.get_num_threads())


def _as_cpu(t): return t.detach().to('cpu').contiguous()


def _row_blocks(n_rows, n_cols):
    "Ranges of rows whose `n_rows × n_cols` scores fit in a block"
    step = max(1, _BLOCK // max(n_cols, 1))
    return [(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


class _Kernel:
    "The pair stage in Rust: `u`, `v` of each image, the folded rest of the head"
    kind = 'kernel'

    def __init__(self, split, c):
        self.pre, (self.ia, self.ib) = split.pre, split.columns(c)
        self.a, self.b, self.bias = _first_linear(split.linear, self.ia, self.ib)
        f = split.fold
        if f.m is not None: self.a, self.b, self.bias = self.a @ f.m, self.b @ f.m, self.bias @ f.m
        if f.c is not None: self.bias = self.bias + f.c
        layers = [(w.float(), b.float(), r) for w, b, r in f.layers]
        self.head = _core.PairHead(self.a.shape[1], f.relu, layers, f.log_odds, f.y_range)

    def encode(self, feats):
        "`(u, v)` of each image: the first Linear's two halves (folded), in float64 then float32"
        z = _pre(self.pre, feats).double()
        return (z[:, self.ia] @ self.a).float(), (z[:, self.ib] @ self.b + self.bias).float()

    def score(self, a, b): return self.head.score(a, b, _threads())
    def score_each(self, a, b): return self.head.score_each(a, b, _threads())
    def matches(self, a, b, threshold, offset): return self.head.matches(a, b, threshold, offset, True, _threads())


def _first_linear(lin, ia, ib):
    "The first Linear's weight columns of image 1 and 2 (transposed) and its bias, float64"
    w = lin.weight.detach().double()
    bias = lin.bias.detach().double() if lin.bias is not None else w.new_zeros(w.shape[0])
    return w[:, ia].T.cpu(), w[:, ib].T.cpu(), bias.cpu()


def _pre(mods, feats):
    "The per-image part of the head on `cat([f, f])`: each column as the head computes it for a pair"
    z = torch.cat([feats, feats], dim=1)
    for m in mods: z = m(z)
    return _as_cpu(z)


class _TorchPairs:
    "Scores pairs with PyTorch modules, in blocks; subclasses say how a block of pairs is scored"
    def score(self, a, b):
        out = torch.empty(len(a), len(b))
        for i in range(len(a)):
            for j0, j1 in _row_blocks(len(b), self.cols):
                out[i, j0:j1] = self.pairs(a[i:i + 1].expand(j1 - j0, *a.shape[1:]), b[j0:j1])
        return out

    def score_each(self, a, b):
        step = max(1, _BLOCK // self.cols)
        return torch.cat([self.pairs(a[i:i + step], b[i:i + step]) for i in range(0, len(a), step)])

    def matches(self, a, b, threshold, offset):
        pairs, ps = [torch.empty(0, 2, dtype=torch.long)], [torch.empty(0)]
        for r0, r1 in _row_blocks(len(a), len(b)):
            s = self.score(a[r0:r1], b)
            keep = s >= threshold
            rows = torch.arange(r1 - r0)
            diag = rows + offset + r0  # the column of each row's own image: (k, k) is not a pair
            keep[rows[diag < len(b)], diag[diag < len(b)]] = False
            pairs.append(keep.nonzero() + torch.tensor([offset + r0, 0]))
            ps.append(s[keep])
        return torch.cat(pairs), torch.cat(ps)

    def _run(self, mods, x):
        p = next((t for m in mods for t in m.parameters()), None)
        if p is not None: x = x.to(device=p.device, dtype=p.dtype)
        for m in mods: x = m(x)
        return x.softmax(-1)[:, 1].float().cpu()


class _TorchTail(_TorchPairs):
    "`u`, `v` as for the kernel; the rest of the head (which the kernel cannot fold) runs as modules"
    kind = 'tail'

    def __init__(self, split, c):
        self.pre, (self.ia, self.ib) = split.pre, split.columns(c)
        self.a, self.b, self.bias = _first_linear(split.linear, self.ia, self.ib)
        self.tail, self.cols = split.tail, self.a.shape[1]

    encode = _Kernel.encode
    def pairs(self, a, b): return self._run(self.tail, a.float() + b.float())


class _WholeHead(_TorchPairs):
    "A head that cannot be split: each image keeps its features, the whole head runs per pair"
    kind = 'head'

    def __init__(self, head, feats_shape):
        self.head, self.cols = head, max(1, int(torch.tensor(feats_shape[1:]).prod()) * 2)

    def encode(self, feats):
        f = _as_cpu(feats)
        return f, f

    def pairs(self, a, b): return self._run([self.head], torch.cat([a, b], dim=1))


def _pair_stage(model, feats):
    "The pair stage for `model`'s head on features like `feats`, warning when it cannot use the kernel"
    split = split_head(model.head, feats.ndim)
    if split is not None and split.fold is not None:
        f = split.fold
        if not f.log_odds and f.n_logits() < 2:
            raise ArgumentError(f'model: P(same) is softmax(-1)[:, 1] of the head\'s outputs, which needs 2 or more; '
                                f'the head has {f.n_logits()}')
        return _Kernel(split, feats.shape[1])
    what = 'the modules after its first Linear' if split is not None else 'the head'
    warnings.warn(f'PairIndex: {what} cannot be split exactly for the Rust pair kernel (a module it does not know, '
                  'or hooks); scoring runs them per pair in blocks, with '
                  'the same numbers, much more slowly', stacklevel=5)
    return _TorchTail(split, feats.shape[1]) if split is not None else _WholeHead(model.head, feats.shape)


def _check_batch_stats(model):
    "Refuse BatchNorm on batch statistics in eval (no running ones): a score would depend on the images chunked with it"
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None and m.running_var is None:
            raise ArgumentError(
                f'model: {name} ({type(m).__name__}) has no running statistics (track_running_stats=False), so in eval '
                'it normalises each batch with that batch\'s statistics and P(same) of a pair depends on the images '
                'encoded with it; expected BatchNorm with running statistics (give it some, e.g. '
                'track_running_stats=True and a pass over training data, or replace it) for a PairIndex')


def fingerprint(model):
    "sha256 of `model`'s structure and every value of its state dict"
    h = hashlib.sha256(repr(model).encode())
    for name, t in model.state_dict().items():
        t = t.detach().to('cpu').contiguous()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class PairIndex:
    "Exact P(same) of `model(query, image)` for many images, each encoded once and every pair scored in Rust"
    def __init__(self, model, images=None, dls=None, bs=64, dtype=torch.float32):
        self.model, self.dls = _model_dls(model, dls)
        _check_batch_stats(self.model)
        _check_bs(bs)
        if dtype not in (torch.float32, torch.bfloat16):
            raise ArgumentError(f'dtype: expected torch.float32 or torch.bfloat16 (storage of u and v), got {dtype!r}')
        self.bs, self.dtype = bs, dtype
        self._stage = self._watch = self._image = None
        self._a = self._b = None
        if images is not None: self.add(images)

    def __len__(self): return 0 if self._a is None else len(self._a)

    def __repr__(self):
        kind = self._stage.kind if self._stage is not None else 'empty'
        return f'PairIndex({len(self)} images, {kind}, {str(self.dtype).removeprefix("torch.")})'

    def add(self, images):
        "Encode `images` (a float batch, or files / PIL images with `dls`) and add them to the index"
        self._fresh()
        a, b = self._encode(self._batch(images, 'images'))
        shared = a is b
        a = a.to(self.dtype)
        self._a = a if self._a is None else torch.cat([self._a, a])
        if shared: self._b = self._a
        else: self._b = b.to(self.dtype) if self._b is None else torch.cat([self._b, b.to(self.dtype)])
        return self

    def score(self, queries, distributed=False):
        "`(q, n)` P(same) of `model(query, image)` for every query and indexed image"
        self._ready()
        x = self._batch(queries, 'queries')
        r0, r1 = _shard(len(x), distributed, len(self))
        s = self._stage.score(self._encode(x[r0:r1])[0], self._b)
        return _gather(s, distributed)

    def topk(self, queries, k, distributed=False):
        "`(values, indices)`, each `(q, k)`: the `k` indexed images most likely the same as each query, best first"
        self._ready()
        _check_number('k', k, numbers.Integral, 1, len(self), f'an int from 1 to the number of indexed images ({len(self)})')
        x = self._batch(queries, 'queries')
        r0, r1 = _shard(len(x), distributed, len(self))
        a = self._encode(x[r0:r1])[0]
        vals, idx = [torch.empty(0, k)], [torch.empty(0, k, dtype=torch.long)]
        for i0, i1 in _row_blocks(len(a), len(self)):
            v, i = self._stage.score(a[i0:i1], self._b).topk(int(k), dim=1)
            vals.append(v); idx.append(i)
        return _gather(torch.cat(vals), distributed), _gather(torch.cat(idx), distributed)

    def all_pairs(self, distributed=False):
        "The `(n, n)` matrix of P(same) of `model(x_i, x_j)` over the indexed images"
        self._ready()
        r0, r1 = _shard(len(self), distributed, len(self))
        return _gather(self._stage.score(self._a[r0:r1], self._b), distributed)

    def matches(self, threshold, distributed=False):
        "`(pairs, p)`: every ordered pair `i != j` with P(same) >= `threshold`, streamed without the n×n matrix"
        self._ready()
        _check_number('threshold', threshold, numbers.Real, 0, 1, 'a probability in [0, 1]')
        r0, r1 = _shard(len(self), distributed, len(self))
        pairs, p = self._stage.matches(self._a[r0:r1], self._b, float(threshold), r0)
        return _gather(pairs, distributed), _gather(p, distributed)

    def save(self, path):
        "Save to a safetensors file at `path`, with what `load` checks (the model's fingerprint, the rows' checksums)"
        self._ready()
        meta = {'model': fingerprint(self.model), 'kind': self._stage.kind,
                'image': json.dumps([list(self._image[0]), str(self._image[1]).removeprefix('torch.')])}
        _write(path, {'a': self._a} if self._b is self._a else {'a': self._a, 'b': self._b}, meta)

    @classmethod
    def load(cls, path, model, dls=None, bs=64):
        "The index saved at `path`, for `model` (the same architecture, head and weights it was built with)"
        meta, tensors = _read(path)  # every field and tensor checked, nothing allocated from unchecked sizes
        index = cls(model, dls=dls, bs=bs, dtype=tensors['a'].dtype)
        if meta['model'] != fingerprint(index.model):
            raise WeightsError(f'path: {os.fspath(path)!r} was built with another model (architecture, head or weights '
                               'differ from the model given); load it with that model, or rebuild the index')
        index._image = meta['image']
        index._a, index._b = tensors['a'], tensors.get('b', tensors['a'])
        a = index._probe(path)
        if index._stage.kind != meta['kind'] or index._a.shape[1:] != a.shape[1:]:
            raise WeightsError(f'path: {os.fspath(path)!r} holds a {meta["kind"]} index of shape '
                               f'{tuple(index._a.shape)}; this model makes a {index._stage.kind} index of rows '
                               f'{tuple(a.shape[1:])}: rebuild the index')
        return index

    def _probe(self, path):
        "Rows of one zero image of the file's declared shape (this builds the pair stage from the model)"
        shape, dtype = self._image
        try: return self._encode(torch.zeros(1, *shape, dtype=dtype))[0]
        except WeightsError: raise
        except Exception as e:  # the declared shape is the file's, not the caller's: name the field
            raise WeightsError(f'path: {os.fspath(path)!r}: image: this model cannot encode an image of the shape '
                               f'{shape} and dtype {str(dtype).removeprefix("torch.")} the file declares '
                               f'({type(e).__name__}: {str(e)[:200]})') from None

    # internals
    def _score_each(self, x1, x2):
        "P(same) of each pair `(x1[k], x2[k])` (what `score_pairs` returns for two lists)"
        self._fresh()
        a, b = self._encode(self._batch(x1, 'images1'))[0], self._encode(self._batch(x2, 'images2'))[1]
        return self._stage.score_each(a, b)

    def _ready(self):
        "Not empty and not stale"
        if self._stage is None or len(self) == 0:
            raise ArgumentError('index: the PairIndex is empty; add images first (index.add(images))')
        self._fresh()

    def _fresh(self):
        if self._watch is not None and self._watch.changed(): _stale('after this PairIndex was built')

    def _batch(self, images, name):
        "`images` as a float batch like the indexed ones"
        x = _as_batch(images, self.dls, name)
        if len(x) == 0: raise ArgumentError(f'{name}: expected at least one image, got none')
        if self._image is None:
            if not x.is_floating_point(): raise DTypeError(f'{name}: expected float images, got {x.dtype}')
            self._image = (tuple(x.shape[1:]), x.dtype)
        shape, dtype = self._image
        if tuple(x.shape[1:]) != shape:
            raise ShapeError(f'{name}: expected images of shape {shape} like the indexed ones, got {tuple(x.shape[1:])}')
        if x.dtype != dtype:
            raise DTypeError(f'{name}: expected {str(dtype).removeprefix("torch.")} images like the indexed ones, '
                             f'got {str(x.dtype).removeprefix("torch.")}')
        return x

    @torch.no_grad()
    def _encode(self, x):
        "`(a, b)` of each image of `x`: what the pair stage needs of it as first and as second image"
        if len(x) == 0 and self._a is not None: return self._a[:0], self._b[:0]  # a rank's empty shard
        model, was = self.model, self.model.training
        p = next(model.parameters(), None)
        first = self._watch is None
        if first: _check_batch_stats(model)
        if first: self._watch = _Watch(model, every_value=True)  # before any chunk: a change from now on is seen
        model.eval()
        try:
            out = []
            for i in range(0, len(x), self.bs):
                c = x[i:i + self.bs]
                feats = model.encoder(c.to(p.device) if p is not None else c)
                if self._stage is None: self._stage = _pair_stage(model, feats)
                out.append(self._stage.encode(feats))
        except BaseException:
            if first: self._stage = self._watch = self._image = None  # nothing was built: the index stays empty
            raise
        finally: model.train(was)
        if self._watch.changed():  # encoded by two models: no row of it may be used
            if first: self._stage = self._watch = self._image = None
            _stale('while this PairIndex encoded images')
        a = torch.cat([o[0] for o in out])
        return (a, a) if out[0][0] is out[0][1] else (a, torch.cat([o[1] for o in out]))


def _stale(when):
    raise WeightsError(f'model: its weights or modules changed {when}, so its scores would be stale; rebuild the '
                       'index (PairIndex(model, images)) after training')


def _check_number(name, v, kind, low, high, what):
    "`ArgumentTypeError` if `v` is not a `kind` number, `ArgumentError` if it is outside `[low, high]`"
    if isinstance(v, bool) or not isinstance(v, kind):
        raise ArgumentTypeError(f'{name}: expected {what}, got {type(v).__name__} {v!r}')
    if not low <= v <= high: raise ArgumentError(f'{name}: expected {what}, got {v!r}')


# Sharding across processes (torchrun / torch.distributed): each rank scores a block of rows
def _dist():
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise ArgumentError('distributed: expected an initialised process group (torch.distributed.init_process_group, '
                            'as under torchrun), found none')
    return dist


def _shard(n_rows, distributed, n_index):
    "This rank's rows `(start, stop)` of `n_rows` (all of them when not distributed)"
    if not distributed: return 0, n_rows
    dist = _dist()
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = _all_gather(torch.tensor([[n_rows, n_index]]), dist)
    if not (sizes == sizes[0]).all():
        raise ArgumentError(f'distributed: every rank must score the same rows of the same index; got (rows, indexed '
                            f'images) {sizes.tolist()} across ranks')
    return n_rows * rank // world, n_rows * (rank + 1) // world


def _gather(t, distributed):
    "The rows of every rank, in rank order"
    return _all_gather(t, _dist()) if distributed else t


def _all_gather(t, dist):
    dev = torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else torch.device('cpu')
    n = torch.tensor([len(t)], device=dev)
    ns = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(ns, n)
    m = int(max(x.item() for x in ns))
    padded = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[:len(t)] = t
    out = [torch.empty_like(padded) for _ in ns]
    dist.all_gather(out, padded)
    return torch.cat([o[:int(k.item())] for o, k in zip(out, ns)]).cpu()
