"""Data and inference for fastai's Siamese tutorial: image pairs labelled same/different, their
`DataLoaders` (as `TfmdLists` or as a `DataBlock`), showing them, predicting and embedding.

Label convention: class 1 (`True`) is "same", class 0 (`False`) is "different".
A class with a single image is allowed: its "same" pairs pair the image with itself (the tutorial
draws the partner among all images of the class). Unreadable image files raise `ImageError`
naming the file when the pair is loaded (a batch, `show_batch`, `fit`), not when the data is built."""
import os
import random
import re
import shutil
import tempfile
from functools import partial
from pathlib import Path

import torch
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.core import TfmdLists, dispatch
from fastai.data.transforms import IntToFloatTensor, Normalize, RandomSplitter, ToTensor
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import TensorCategory, show_image
from fastai.vision.augment import Resize
from fastai.vision.core import PILImage
from fastai.vision.data import get_grid
from fastcore.basics import fastuple, noop
from fastcore.foundation import L
from fasttransform import DisplayedTransform, Pipeline, Transform
from PIL import Image

from .exceptions import ArgumentError, ArgumentTypeError, ShapeError, SiameseError
from .learner import imagenet_stats

__all__ = ['ImageError', 'SiameseImage', 'SiameseTransform', 'SimilarityLabel', 'NameLabeller', 'SiameseLoss',
           'siamese_dataloaders', 'ImageTuple', 'ImageTupleBlock', 'siamese_datablock', 'digits_path',
           'DIGIT_NAMES', 'predict_pair', 'encode', 'score_pairs', 'SAME', 'DIFFERENT']

SAME, DIFFERENT = 'same', 'different'
DIGIT_NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']


class ImageError(SiameseError, OSError):
    "An image file that cannot be read"


def _open(f):
    "`PILImage` from a path, a PIL image or an array, naming the file if it cannot be read"
    if isinstance(f, PILImage): return f
    try: return PILImage.create(f)
    except Exception as e:
        raise ImageError(f'image: cannot read {str(f)!r} as an image ({type(e).__name__}: {e})') from None


def _title(label):
    if isinstance(label, str): return label
    if isinstance(label, torch.Tensor): label = label.item()
    return SAME if label else DIFFERENT


class SiameseImage(fastuple):
    "Two images and, optionally, whether they show the same class"
    def show(self, ctx=None, **kwargs):
        "Show both images side by side, separated by a black line, titled with the label"
        img1, img2, *rest = self
        title = _title(rest[0]) if rest else 'undetermined'
        if not isinstance(img1, torch.Tensor):
            if img2.size != img1.size: img2 = img2.resize(img1.size)
            t1, t2 = (torch.as_tensor(_rgb(i)).permute(2, 0, 1) for i in (img1, img2))
        else: t1, t2 = img1, img2
        if t1.shape[1:] != t2.shape[1:]:
            t2 = torch.nn.functional.interpolate(t2[None].float(), size=t1.shape[1:]).to(t1.dtype)[0]
        line = t1.new_zeros(t1.shape[0], t1.shape[1], 10)
        return show_image(torch.cat([t1, line, t2], dim=2), title=title, ctx=ctx, **kwargs)


def _rgb(img):
    import numpy as np
    return np.array(img.convert('RGB'))  # a writable copy: torch warns on read-only arrays


class NameLabeller:
    "Label from the file name with regex `pat` (first group), e.g. `^(.*)_\\d+\\.\\w+$` for Pets"
    def __init__(self, pat=r'^(.*)_\d+\.\w+$'): self.pat = re.compile(pat)
    def __call__(self, f):
        name = Path(f).name
        m = self.pat.match(name)
        if m is None or not m.groups():
            raise ArgumentError(f'label_func: pat {self.pat.pattern!r} does not match the file name {name!r}; '
                                f'expected a name like "seven_12.png" and a pattern with one group')
        return m.group(1)


def _check_classes(lbl2files):
    if len(lbl2files) < 2:
        raise ArgumentError(f'files: a Siamese task needs at least two classes to draw "different" pairs, '
                            f'got {len(lbl2files)} ({", ".join(map(str, lbl2files)) or "no files"})')


class SiameseTransform(Transform):
    "Turn a file into a `SiameseImage`: a partner of the same class with p=0.5, fixed pairs on `splits[1]`"
    def __init__(self, files, label_func, splits, p_same=0.5):
        self.files, self.label_func, self.p_same = L(files), label_func, p_same
        labels = self.files.map(label_func)
        self.labels = labels.unique()
        self.lbl2files = {lbl: L(f for f, o in zip(self.files, labels) if o == lbl) for lbl in self.labels}
        _check_classes(self.lbl2files)
        self.valid = {f: self._draw(f) for f in self.files[splits[1]]}

    def encodes(self, f):
        f2, same = self.valid[f] if f in self.valid else self._draw(f)
        return SiameseImage(_open(f), _open(f2), same)

    def _draw(self, f):
        "A random partner of `f` and whether it is of the same class"
        same = random.random() < self.p_same
        cls = self.label_func(f)
        if not same: cls = random.choice(L(lbl for lbl in self.labels if lbl != cls))
        return random.choice(self.lbl2files[cls]), same


class SimilarityLabel(DisplayedTransform):
    "Decodes a predicted class (1 is same) to 'same' / 'different'"
    def decodes(self, x: TensorCategory): return SAME if x.item() else DIFFERENT


class SiameseLoss(CrossEntropyLossFlat):
    "`CrossEntropyLossFlat` on bool (or category) targets; decodes to the class, 1 being same"
    def __call__(self, inp, targ, **kwargs): return super().__call__(inp, targ.long(), **kwargs)
    def decodes(self, x): return TensorCategory(x.argmax(dim=self.axis))


def _check_files(files):
    files = L(files)
    if len(files) == 0: raise ArgumentError('files: expected a non-empty list of image files, got none')
    return files


def _stats(stats):
    if stats is None: return imagenet_stats
    if len(stats) != 2: raise ArgumentError(f'stats: expected (mean, std), got {stats!r}')
    return stats


def siamese_dataloaders(files, label_func=None, pat=r'^(.*)_\d+\.\w+$', valid_pct=0.2, seed=42, size=224, bs=64,
                        stats=imagenet_stats, num_workers=0, device=None, **kwargs):
    "`DataLoaders` of `SiameseImage` pairs from image `files`, labelled by `label_func` (default: `pat` on the name)"
    files = _check_files(files)
    if not 0 < valid_pct < 1: raise ArgumentError(f'valid_pct: expected a fraction in (0, 1), got {valid_pct!r}')
    label_func = NameLabeller(pat) if label_func is None else label_func
    splits = RandomSplitter(valid_pct, seed=seed)(files)
    with _seeded(seed): tfm = SiameseTransform(files, label_func, splits)
    tls = TfmdLists(files, tfm, splits=splits)
    return tls.dataloaders(after_item=[Resize(size), ToTensor, SimilarityLabel()], bs=bs, num_workers=num_workers,
                           after_batch=[IntToFloatTensor, Normalize.from_stats(*_stats(stats))], device=device,
                           **kwargs)


class _seeded:
    "Draw the fixed validation pairs from `random` seeded with `seed`, then restore its state"
    def __init__(self, seed): self.seed = seed
    def __enter__(self):
        self.state = random.getstate()
        if self.seed is not None: random.seed(self.seed)
    def __exit__(self, *args): random.setstate(self.state)


@dispatch
def show_batch(x: SiameseImage, y, samples, ctxs=None, max_n=6, nrows=None, ncols=2, figsize=None, **kwargs):
    "Show pairs of a batch titled same/different"
    if figsize is None: figsize = (ncols * 6, max(max_n // ncols, 1) * 3)
    if ctxs is None: ctxs = get_grid(min(x[0].shape[0], max_n), nrows=nrows, ncols=ncols, figsize=figsize)
    for i, ctx in enumerate(ctxs): SiameseImage(x[0][i], x[1][i], _title(x[2][i])).show(ctx=ctx)
    return ctxs


@dispatch
def show_results(x: SiameseImage, y, samples, outs, ctxs=None, max_n=6, nrows=None, ncols=2, figsize=None, **kwargs):
    "Show pairs of a batch titled with their actual label and the prediction"
    if figsize is None: figsize = (ncols * 6, max(max_n // ncols, 1) * 3)
    if ctxs is None: ctxs = get_grid(min(x[0].shape[0], max_n), nrows=nrows, ncols=ncols, figsize=figsize)
    for i, ctx in enumerate(ctxs):
        title = f'Actual: {_title(x[2][i])}\nPrediction: {_title(y[2][i])}'
        SiameseImage(x[0][i], x[1][i], title).show(ctx=ctx)
    return ctxs


# The DataBlock form of the tutorial
class ImageTuple(fastuple):
    "A tuple of images that shows them side by side"
    @classmethod
    def create(cls, fns): return cls(tuple(_open(f) for f in fns))
    def show(self, ctx=None, **kwargs): return SiameseImage(*self).show(ctx=ctx, **kwargs)


def ImageTupleBlock():
    "A `TransformBlock` for `ImageTuple`s"
    return TransformBlock(type_tfms=ImageTuple.create, batch_tfms=IntToFloatTensor)


def _split_sets(files, splits): return [set(files[s]) for s in splits]


class _PairDrawer:
    "Draws the partner of a file within its own split (the DataBlock form of the tutorial)"
    def __init__(self, files, label_func, splits):
        self.label_func, self.sets = label_func, _split_sets(files, splits)
        self.labels = L(files).map(label_func).unique()
        self.splbl2files = [{lbl: [f for f in s if label_func(f) == lbl] for lbl in self.labels} for s in self.sets]
        _check_classes(self.splbl2files[0])

    def split_of(self, f):
        for i, s in enumerate(self.sets):
            if f in s: return i
        raise ArgumentError(f'files: {str(f)!r} is in no split')

    def draw(self, f):
        same, cls, split = random.random() < 0.5, self.label_func(f), self.split_of(f)
        others = [lbl for lbl in self.labels if lbl != cls and self.splbl2files[split][lbl]]
        if not same and others: cls = random.choice(others)
        else: same = True
        return random.choice(self.splbl2files[split][cls]), same



def _tuples(drawer, files): return [[f, *drawer.draw(f)] for f in files]


def _splitter(drawer, items):
    return [[j for j, (f1, _, _) in enumerate(items) if drawer.split_of(f1) == i] for i in range(len(drawer.sets))]


def _get_x(t): return t[:2]
def _get_y(t): return SAME if t[2] else DIFFERENT


def siamese_datablock(files, label_func=None, pat=r'^(.*)_\d+\.\w+$', valid_pct=0.2, seed=42, size=224,
                      stats=imagenet_stats):
    "The tutorial's `DataBlock` of image pairs (`ImageTupleBlock`, `CategoryBlock` of different/same); call `.dataloaders(files)`"
    files = _check_files(files)
    label_func = NameLabeller(pat) if label_func is None else label_func
    drawer = _PairDrawer(files, label_func, RandomSplitter(valid_pct, seed=seed)(files))
    return DataBlock(blocks=(ImageTupleBlock, CategoryBlock(vocab=[DIFFERENT, SAME])), get_items=partial(_tuples, drawer),
                     get_x=_get_x, get_y=_get_y, splitter=partial(_splitter, drawer), item_tfms=Resize(size),
                     batch_tfms=[Normalize.from_stats(*_stats(stats))])


# The embedded data set: scikit-learn's digits laid out like Oxford-IIIT Pets
def _data_root():
    return Path(os.environ.get('SIAMESE_RS_DATA') or Path.home() / '.cache' / 'siamese_rs')


def _write_digits(dest, px):
    from sklearn.datasets import load_digits
    digits, counts = load_digits(), {}
    for img, t in zip(digits.images, digits.target):
        counts[t] = counts.get(t, 0) + 1
        im = Image.fromarray((img * (255 / 16)).round().clip(0, 255).astype('uint8'), mode='L')
        im.resize((px, px), Image.BICUBIC).save(dest / f'{DIGIT_NAMES[t]}_{counts[t]}.png')


def digits_path(px=32):
    "Folder of scikit-learn's 1797 digits as `px`-pixel PNGs named like Pets (`seven_12.png`), built at first use"
    if isinstance(px, bool) or not isinstance(px, int) or px < 8:
        raise ArgumentError(f'px: expected an int >= 8 (image side in pixels), got {px!r}')
    root = _data_root()
    path = root / ('digits' if px == 32 else f'digits{px}')
    if path.is_dir(): return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix='.digits-', dir=root))
    try:
        _write_digits(tmp, px)
        os.rename(tmp, path)  # atomic: a concurrent builder either wins or finds the folder complete
    except OSError:
        if not path.is_dir(): raise
    finally:
        if tmp.exists(): shutil.rmtree(tmp, ignore_errors=True)
    return path


# Inference
def _model_dls(learn_or_model, dls=None):
    model = getattr(learn_or_model, 'model', learn_or_model)
    if not (hasattr(model, 'encoder') and hasattr(model, 'head')):
        raise ArgumentTypeError(f'model: expected a Learner or a SiameseModel (with encoder and head), '
                                f'got {type(model).__name__}')
    return model, dls if dls is not None else getattr(learn_or_model, 'dls', None)


def predict_pair(learn, img1, img2):
    """`(label, probability)` of the pair: label 'same' or 'different', the probability of that label.

    The probability is the softmax over the model's two logits (class 1 is "same"), whatever the learner's
    loss: a plain function such as the README's `CrossEntropyLossFlat()(out, targ.long())` has no
    `activation` or `decodes` for `learn.predict` to apply, `SiameseLoss` has the same softmax."""
    item = SiameseImage(_open(img1), _open(img2))
    if not all(hasattr(learn, a) for a in ('dls', 'get_preds', 'no_bar')):
        raise ArgumentTypeError(f'learn: expected a fastai Learner, got {type(learn).__name__}')
    dl = learn.dls.test_dl([item], num_workers=0)  # the validation set's item and batch transforms, as learn.predict
    with learn.no_bar(): logits = learn.get_preds(dl=dl, act=noop)[0]  # the model's output, not the loss's activation
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, 2):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ShapeError(f'learn: expected the model to return two logits per pair (different, same), got {shape}')
    probs = logits[0].float().softmax(-1)
    idx = int(probs.argmax())
    return (SAME if idx == 1 else DIFFERENT), probs[idx].item()


def _as_batch(images, dls, name):
    "A float batch from a tensor batch (used as is) or images / files (transformed as the validation set)"
    if isinstance(images, torch.Tensor):
        if images.ndim != 4: raise ShapeError(f'{name}: expected a batch (n, c, h, w), got shape {tuple(images.shape)}')
        return images
    if isinstance(images, (str, os.PathLike, Image.Image)): images = [images]  # one image
    try: images = list(images)
    except TypeError:
        raise ArgumentTypeError(f'{name}: expected a tensor batch, or a list of image files or PIL images, '
                                f'got {type(images).__name__}') from None
    if not images: raise ArgumentError(f'{name}: expected at least one image, got none')
    if dls is None: raise ArgumentError(f'{name}: images other than tensors need dls (pass a Learner or dls=)')
    dl = dls.valid
    tfms = Pipeline(dl.after_item.fs, split_idx=1)  # the validation set's transforms (Resize crops the centre)
    ts = [tfms(_open(o)) for o in images]
    shapes = {tuple(t.shape) for t in ts}
    if len(shapes) > 1: raise ShapeError(f'{name}: images of sizes {sorted(shapes)} after the item transforms; '
                                         'expected one size (add a Resize)')
    return dl.after_batch(torch.stack(ts).to(dls.device or 'cpu'))


def _chunks(x, bs): return [x[i:i + bs] for i in range(0, len(x), bs)]


def _check_bs(bs):
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ArgumentError(f'bs: expected a positive int (images per batch), got {bs!r}')


def _run(f, x, model, bs):
    p = next(model.parameters(), None)
    if p is not None: x = x.to(p.device)
    return torch.cat([f(c) for c in _chunks(x, bs)])


def _pool(model, feats):
    "The head's pooling (`AdaptiveConcatPool2d` + `Flatten` in fastai's head), else global average pooling"
    if feats.ndim != 4: return feats.flatten(1)
    first = model.head[0] if len(model.head) else None
    if first is not None and 'Pool' in type(first).__name__: return model.head[1](first(feats)).flatten(1)
    return feats.mean((2, 3))


@torch.no_grad()
def encode(model, images, dls=None, bs=64):
    "The encoder's pooled feature vector of each of `images` (a tensor batch, or files/images with `dls`)"
    model, dls = _model_dls(model, dls)
    _check_bs(bs)
    x = _as_batch(images, dls, 'images')
    was_training = model.training
    model.eval()
    try: return _run(lambda c: _pool(model, model.encoder(c)), x, model, bs)
    finally: model.train(was_training)


@torch.no_grad()
def score_pairs(model, images1, images2=None, dls=None, bs=64):
    "P(same) of each pair `(images1[i], images2[i])`, or the matrix over all pairs of `images1` if no `images2`"
    model, dls = _model_dls(model, dls)
    _check_bs(bs)
    x1 = _as_batch(images1, dls, 'images1')
    x2 = x1 if images2 is None else _as_batch(images2, dls, 'images2')
    if images2 is not None and len(x1) != len(x2):
        raise ArgumentError(f'images2: expected as many images as images1 ({len(x1)}), got {len(x2)}')
    if x1.shape[1:] != x2.shape[1:]:
        raise ShapeError(f'images2: expected images of shape {tuple(x1.shape[1:])} like images1, '
                         f'got {tuple(x2.shape[1:])}')
    from .index import PairIndex  # the pair index is built on this module's helpers
    index = PairIndex(model, bs=bs)
    return index.add(x1).all_pairs() if images2 is None else index._score_each(x1, x2)
