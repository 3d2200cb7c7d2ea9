"""Speed of our SiameseModel against the tutorial's fastai model with the same weights.

One process; the two models alternate on every repetition (so machine noise hits both alike);
medians, min–max and the ratio reference/ours (> 1 means we are faster) are printed.

    python bench/bench_core.py                       # resnet34, eval + train, b8x224 and b32x64
    python bench/bench_core.py --arch resnet18 --sizes 8x64 --reps 5
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from fastai.torch_core import Module
from fastai.vision import learner as fl
from torch import nn
from torchvision import models as tvm

import siamese_rs as sr

NF = {'resnet18': 512, 'resnet34': 512, 'resnet50': 2048, 'resnet101': 2048, 'resnet152': 2048}


class RefSiamese(Module):
    def __init__(self, encoder, head): self.encoder, self.head = encoder, head
    def forward(self, x1, x2): return self.head(torch.cat([self.encoder(x1), self.encoder(x2)], dim=1))


def models(arch):
    "`(ours, ref)` with identical weights"
    ours = sr.SiameseModel(sr.create_body(getattr(sr, arch), cut=-2, pretrained=False),
                           sr.create_head(2 * NF[arch], 2))
    ref = RefSiamese(fl.create_body(getattr(tvm, arch)(), cut=-2), fl.create_head(2 * NF[arch], 2))
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def eval_step(model, x1, x2, _y):
    model.eval()
    with torch.no_grad(): return model(x1, x2)


def train_step(model, x1, x2, y):
    "Forward, backward and an SGD step"
    model.train()
    loss = nn.functional.cross_entropy(model(x1, x2), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-4 * p.grad
            p.grad = None
    return loss


def bench(step, ours, ref, inputs, reps):
    times = {'ours': [], 'ref': []}
    for m in (ours, ref): step(m, *inputs)  # warm-up
    for _ in range(reps):
        for name, m in (('ours', ours), ('ref', ref)):
            t = time.perf_counter()
            step(m, *inputs)
            times[name].append(time.perf_counter() - t)
    return times


def row(label, times):
    o, r = statistics.median(times['ours']), statistics.median(times['ref'])
    mm = lambda v: f'{min(v) * 1e3:.0f}–{max(v) * 1e3:.0f}'  # noqa: E731
    return (f'| {label} | {o * 1e3:.1f} ({mm(times["ours"])}) | {r * 1e3:.1f} ({mm(times["ref"])}) '
            f'| {r / o:.2f} |')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--arch', default='resnet34', choices=sorted(NF))
    p.add_argument('--sizes', default='8x224,32x64', help='pair batch x pixels, comma separated')
    p.add_argument('--modes', default='eval,train')
    p.add_argument('--reps', type=int, default=7)
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ours, ref = models(a.arch)
    print(f'{a.arch} SiameseModel, torch {torch.__version__}, {a.threads} threads, {a.reps} interleaved reps')
    print('| case | ours ms (min–max) | fastai ms (min–max) | speed ratio fastai/ours |')
    print('|---|---|---|---|')
    for size in a.sizes.split(','):
        b, px = map(int, size.split('x'))
        x1, x2, y = torch.randn(b, 3, px, px), torch.randn(b, 3, px, px), torch.randint(0, 2, (b,))
        for mode in a.modes.split(','):
            step = eval_step if mode == 'eval' else train_step
            if mode == 'train': ref.load_state_dict(ours.state_dict())
            print(row(f'{mode} b{b}×{px}px', bench(step, ours, ref, (x1, x2, y), a.reps)), flush=True)


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).parent))
    main()
