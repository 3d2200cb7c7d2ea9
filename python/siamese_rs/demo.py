"""Train fastai's Siamese tutorial end to end on the embedded digits: `python -m siamese_rs.demo`.

The body starts from random weights (`--pretrained` loads ImageNet weights when they are on disk),
so the tutorial's frozen stage trains the head and the body's BatchNorm, and the unfrozen stage
trains everything with discriminative rates."""
import argparse
import random
import time
from contextlib import nullcontext
from pathlib import Path

import fastai.callback.all  # noqa: F401  (fit_one_cycle, lr_find, progress bars)
from fastai.data.transforms import get_image_files
from fastai.learner import Learner
from fastai.metrics import accuracy
from fastcore.foundation import L

from . import learner as _learner
from . import models
from .data import SiameseLoss, digits_path, predict_pair, siamese_dataloaders
from .exceptions import ArgumentError
from .siamese import SiameseModel, siamese_splitter

__all__ = ['siamese_learner', 'train', 'main']


def siamese_learner(dls, arch='resnet18', pretrained=False, ps=0.5, **kwargs):
    "The tutorial's `Learner`: `SiameseModel(create_body(arch), create_head(2*nf, 2))`, `siamese_splitter`"
    if arch not in models.ARCHS:
        raise ArgumentError(f'arch: expected one of {", ".join(models.ARCHS)}, got {arch!r}')
    fn = getattr(models, arch)
    encoder = _learner.create_body(fn, cut=_learner.model_meta[fn]['cut'], pretrained=pretrained)
    nf = _num_features(encoder)
    head = _learner.create_head(nf * 2, 2, ps=ps)
    return Learner(dls, SiameseModel(encoder, head), loss_func=SiameseLoss(), splitter=siamese_splitter,
                   metrics=accuracy, **kwargs)


def _num_features(encoder):
    "Channels of the encoder's output, from the last conv or BatchNorm"
    for m in reversed(list(encoder.modules())):
        for attr in ('num_features', 'out_channels'):
            if hasattr(m, attr): return getattr(m, attr)
    raise ArgumentError('arch: cannot find the number of features of the body')


def train(arch='resnet18', size=32, bs=64, freeze_epochs=1, epochs=6, lr=3e-3, unfrozen_lr=(1e-3, 1e-2),
          pretrained=False, n_files=None, out=None, seed=42, quiet=False):
    "Train the tutorial's model on the embedded digits; return `(learn, accuracy, seconds)`"
    from fastai.torch_core import set_seed
    set_seed(seed, reproducible=True)
    files = get_image_files(digits_path())
    if n_files is not None: files = L(random.Random(seed).sample(list(files), n_files))
    dls = siamese_dataloaders(files, size=size, bs=bs, seed=seed)
    learn = siamese_learner(dls, arch, pretrained=pretrained)
    start = time.time()
    with learn.no_bar() if quiet else nullcontext(), learn.no_logging() if quiet else nullcontext():
        learn.freeze()
        if freeze_epochs: learn.fit_one_cycle(freeze_epochs, lr)
        learn.unfreeze()
        if epochs: learn.fit_one_cycle(epochs, slice(*unfrozen_lr))
    seconds = time.time() - start
    acc = learn.validate()[1]
    if out is not None:
        out = Path(out).absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        learn.export(out)
    return learn, acc, seconds


def examples(learn, n=6):
    "`n` validation pairs as `(file1, file2, actual, predicted, probability)`"
    tfm, res = learn.dls.valid_ds.tfms[0], []
    for f1, (f2, same) in list(tfm.valid.items())[:n]:
        label, p = predict_pair(learn, f1, f2)
        res.append((f1.name, f2.name, 'same' if same else 'different', label, p))
    return res


def main(argv=None):
    "Command line entry point"
    p = argparse.ArgumentParser(prog='python -m siamese_rs.demo', description=__doc__.splitlines()[0])
    p.add_argument('--arch', default='resnet18', help='body architecture (default resnet18)')
    p.add_argument('--size', type=int, default=32, help='image side in pixels (default 32)')
    p.add_argument('--bs', type=int, default=64, help='batch size (default 64)')
    p.add_argument('--freeze-epochs', type=int, default=1, help='epochs with the body frozen (default 1)')
    p.add_argument('--epochs', type=int, default=6, help='epochs after unfreezing (default 6)')
    p.add_argument('--pretrained', action='store_true', help='start from ImageNet weights (must be on disk)')
    p.add_argument('--out', default='siamese_demo.pkl', help='where to export the learner')
    a = p.parse_args(argv)
    path = digits_path()
    print(f'data: {path} ({len(get_image_files(path))} images), arch {a.arch}, size {a.size}, '
          f'pretrained={a.pretrained}')
    learn, acc, seconds = train(a.arch, a.size, a.bs, a.freeze_epochs, a.epochs, pretrained=a.pretrained, out=a.out)
    print(f'validation pair accuracy: {acc:.4f} ({len(learn.dls.valid_ds)} pairs), training time {seconds:.0f}s')
    print(f'learner exported to {Path(a.out).absolute()}')
    for f1, f2, actual, label, prob in examples(learn):
        print(f'{f1:>16} {f2:>16}  actual {actual:<9} predicted {label:<9} p={prob:.3f}')
    return acc


if __name__ == '__main__': main()
