"""Pair scoring and training steps: siamese-rs against fastai's model in eager mode and compiled.

One process, interleaved repetitions, medians with min–max, ratios reference/ours (> 1: we are
faster), peak memory of each, and achieved GFLOP/s against the machine's measured float32 peak.
The "fp32 ceiling" column is the most any float32 implementation doing the model's FLOPs could
gain over eager on this machine: eager's time over the FLOPs' time at that peak. `frozen` and
`frozen-bf16` are `sr.freeze`d copies of ours (their ratio columns are eager over them); the last
column says whether they meet their targets against the float32 and bfloat16 peers.
Writes a markdown table (default bench/RESULTS.md).

    python bench/bench_pairs.py                                  # the full table (~25 min on 2 cores)
    python bench/bench_pairs.py --archs resnet34 --eval 8x64 --train "" --reps 3
    python bench/bench_pairs.py --refs eager,compile             # torch.compile instead of jit.trace
    python bench/bench_pairs.py --refs eager,compile,ours-compile  # and our model under torch.compile
    python bench/bench_pairs.py --archs resnet34 --eval 8x224 --train "" --refs eager,frozen,frozen-bf16,autocast
    python bench/bench_pairs.py --archs resnet34,xresnet50,vgg16_bn,alexnet,densenet121,squeezenet1_1 \
        --eval 8x224 --train 8x224 --refs eager --out bench/FAMILIES.md     # one arch per family
"""
import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from fastai.torch_core import Module
from fastai.vision import learner as fl
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision import models as tvm

import siamese_rs as sr
from memory import PeakMemory


class RefSiamese(Module):
    def __init__(self, encoder, head): self.encoder, self.head = encoder, head
    def forward(self, x1, x2): return self.head(torch.cat([self.encoder(x1), self.encoder(x2)], dim=1))


def ref_arch(arch):
    "torchvision's arch function, or fastai's for the xresnets"
    if arch.startswith('xresnet'):
        from fastai.vision.models import xresnet
        return getattr(xresnet, arch)
    return getattr(tvm, arch)


def models(arch):
    "`(ours, ref)` with identical weights (cut from `model_meta`)"
    cut = sr.model_meta[getattr(sr, arch)]['cut']
    body = sr.create_body(getattr(sr, arch), cut=cut, pretrained=False).eval()
    with torch.no_grad(): nf = body(torch.zeros(1, 3, 64, 64)).shape[1]
    ours = sr.SiameseModel(body, sr.create_head(2 * nf, 2))
    ref = RefSiamese(fl.create_body(ref_arch(arch)(), cut=cut), fl.create_head(2 * nf, 2))
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def score(model, x1, x2, _y):
    with torch.no_grad(): return model(x1, x2)


def make_train_step(model):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    def step(_m, x1, x2, y):
        loss = nn.functional.cross_entropy(model(x1, x2), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss
    return step


# Our inference modes (ratio columns: eager over them) and the peers each is held against.
OURS = ('frozen', 'frozen-bf16')
FP32_PEERS, BF16_PEERS = ('trace', 'compile', 'compile-freeze'), ('autocast',)


class CompileFrozen:
    "`torch.compile` (inductor) with its `freezing` on: weights folded into the graph as constants"
    def __init__(self, model): self.fn = torch.compile(model, dynamic=False)

    def __call__(self, x1, x2):
        with torch._inductor.config.patch(freezing=True): return self.fn(x1, x2)


class Autocast:
    "Eager under `torch.autocast('cpu', torch.bfloat16)`: the bfloat16 way a PyTorch user would pick"
    def __init__(self, model): self.model = model

    def __call__(self, x1, x2):
        with torch.autocast('cpu', torch.bfloat16): return self.model(x1, x2).float()


def compiled(model, kind, x1, x2):
    "A model as a user would speed it up: compiled, traced and frozen, autocast, or `sr.freeze`d"
    if kind in ('compile', 'ours-compile', 'compile-freeze'):
        # Every row compiles its own graph for its shapes: past dynamo's recompile limit (8 per code object,
        # and rows share `forward`'s) it would run eager instead, and after a second shape, dynamic shapes.
        torch._dynamo.config.recompile_limit = 1024
    if kind in ('compile', 'ours-compile'): return torch.compile(model, dynamic=False)
    if kind == 'compile-freeze': return CompileFrozen(model)
    if kind == 'autocast': return Autocast(model)
    if kind in OURS: return sr.freeze(model, dtype=torch.bfloat16 if kind == 'frozen-bf16' else torch.float32)
    with torch.no_grad(): return torch.jit.optimize_for_inference(torch.jit.trace(model, (x1, x2)))


def flops(model, fn, inputs):
    with FlopCounterMode(display=False) as counter: fn(model, *inputs)
    return counter.get_total_flops()


def _best_gflops(fn, flop, reps=3):
    fn()
    best = 0.
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = max(best, flop / (time.perf_counter() - t) / 1e9)
    return best


def machine_peak():
    "The best float32 GFLOP/s measured here: a large MKL matmul, or oneDNN's 3x3 convolution (higher)"
    best = 0.
    for n in (2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = max(best, _best_gflops(lambda a=a, b=b: a @ b, 2 * n**3))
    for c, px in ((64, 56), (256, 14)):
        x, w = torch.randn(16, c, px, px).to_mkldnn(), torch.randn(c, c, 3, 3)
        conv = lambda x=x, w=w: torch.mkldnn_convolution(x, w, None, [1, 1], [1, 1], [1, 1], 1)
        best = max(best, _best_gflops(conv, 2 * 16 * px * px * c * c * 9))
    return best


def run(cands, inputs, reps):
    "Interleaved timings `{name: [s]}`, peak memory `{name: MiB}` and first calls `{name: s}` of `(name, fn, model)`"
    times, peaks, firsts = {n: [] for n, _, _ in cands}, {}, {}
    for n, fn, m in cands:
        t = time.perf_counter()
        fn(m, *inputs)  # warm-up: compiles what compiles
        firsts[n] = time.perf_counter() - t
        with PeakMemory() as mem: fn(m, *inputs)
        peaks[n] = mem.peak
    for _ in range(reps):
        for n, fn, m in cands:
            t = time.perf_counter()
            fn(m, *inputs)
            times[n].append(time.perf_counter() - t)
    return times, peaks, firsts


def fmt(v): return f'{statistics.median(v) * 1e3:.1f} ({min(v) * 1e3:.0f}–{max(v) * 1e3:.0f})'


def table_rows(arch, mode, b, px, times, peaks, gflop, refs, peak):
    "One result row; `ceiling` is eager's time over the time the FLOPs take at the machine's peak"
    med = {n: statistics.median(v) for n, v in times.items()}
    o, eager = med['ours'], med['eager']
    cells = [f'{arch}', mode, f'{b}×{px}', fmt(times['ours'])]
    for r in refs:
        if r not in times: cells += ['–', '–']
        elif r in OURS: cells += [fmt(times[r]), f'{eager / med[r]:.2f}']
        else: cells += [fmt(times[r]), f'{med[r] / o:.2f}']
    ceiling = eager / (gflop / peak)
    cells += [' / '.join(f'{peaks[n]:.0f}' for n in ['ours', 'eager', *(r for r in refs if r in OURS and r in peaks)]),
              f'{gflop / o:.0f} ({100 * gflop / o / peak:.0f}%)', f'{ceiling:.2f}', targets(med, b, px)]
    return '| ' + ' | '.join(cells) + ' |'


def targets(med, b, px):
    "Frozen float32 against the best float32 peer and 1.3x eager; bfloat16 against the bf16 peers (2x eager at 8x224)"
    out = []
    fp32 = [med[r] for r in FP32_PEERS if r in med]
    if 'frozen' in med and fp32:
        ok = med['frozen'] <= min(fp32) and med['eager'] / med['frozen'] >= 1.3
        out.append(f"fp32 {'met' if ok else 'missed'} ({min(fp32) / med['frozen']:.2f}× best peer)")
    bf16 = [med[r] for r in BF16_PEERS if r in med]
    if 'frozen-bf16' in med and bf16:
        ok = med['frozen-bf16'] <= min(bf16) and ((b, px) != (8, 224) or med['eager'] / med['frozen-bf16'] >= 2)
        out.append(f"bf16 {'met' if ok else 'missed'} ({min(bf16) / med['frozen-bf16']:.2f}× autocast)")
    return '; '.join(out) or '–'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--archs', default='resnet34,resnet50,densenet121')
    p.add_argument('--eval', default='1x64,8x64,32x64,64x64,1x224,8x224,32x224,64x224')
    p.add_argument('--train', default='8x224,32x64')
    p.add_argument('--refs', default='eager,trace,compile-freeze,autocast,frozen,frozen-bf16',
                   help='eager plus trace (frozen jit.trace), compile (torch.compile), compile-freeze (with inductor '
                        'freezing), autocast (eager in bfloat16), ours-compile (ours under torch.compile), frozen and '
                        'frozen-bf16 (sr.freeze)')
    p.add_argument('--reps', type=int, default=7)
    p.add_argument('--out', default=str(Path(__file__).with_name('RESULTS.md')))
    a = p.parse_args(argv)
    refs = a.refs.split(',')
    peak = machine_peak()
    head = ('| arch | mode | pairs×px | ours ms | ' + ' | '.join(f'{r} ms | {r}/ours' for r in refs)
            + ' | peak MiB ours / eager' + ''.join(f' / {r}' for r in refs if r in OURS)
            + ' | ours GFLOP/s (% of peak) | fp32 ceiling | frozen targets |')
    lines = ['# siamese-rs benchmark\n',
             f'`python bench/bench_pairs.py {" ".join(argv or [])}`'.replace(' `', '`'),
             f'\nMachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, '
             f'torch {torch.__version__}; fp32 peak {peak:.0f} GFLOP/s (best of a large matmul and a 3×3 convolution). '
             f'Medians of {a.reps} interleaved '
             f'repetitions (min–max); ratios > 1 mean siamese-rs is faster.\n', head,
             '|' + '---|' * (head.count('|') - 1)]
    print('\n'.join(lines), flush=True)
    setup = []
    for arch in a.archs.split(','):
        torch.manual_seed(0)
        ours, ref = models(arch)
        for mode, shapes in (('eval', a.eval), ('train', a.train)):
            for shape in filter(None, shapes.split(',')):
                b, px = map(int, shape.split('x'))
                inputs = (torch.randn(b, 3, px, px), torch.randn(b, 3, px, px), torch.randint(0, 2, (b,)))
                if mode == 'eval':
                    ours.eval(), ref.eval()
                    with torch.no_grad(): torch.testing.assert_close(ours(*inputs[:2]), ref(*inputs[:2]), atol=1e-4, rtol=0)
                    cands = [('ours', score, ours), ('eager', score, ref)]
                    cands += [(r, score, compiled(ours if r in ('ours-compile', *OURS) else ref, r, *inputs[:2]))
                              for r in refs if r != 'eager']
                    gflop = flops(ref, score, inputs) / 1e9
                else:
                    ours.train(), ref.train()
                    ref.load_state_dict(ours.state_dict())
                    cands = [('ours', make_train_step(ours), ours), ('eager', make_train_step(ref), ref)]
                    gflop = flops(ref, make_train_step(ref), inputs) / 1e9
                times, peaks, firsts = run(cands, inputs, a.reps)
                line = table_rows(arch, mode, b, px, times, peaks, gflop, refs, peak)
                lines.append(line)
                setup.append(f'| {arch} | {mode} | {b}×{px} | ' + ' | '.join(
                    f'{firsts[r]:.1f}' if r in firsts else '–' for r in ['ours', *refs]) + ' |')
                print(line, flush=True)
    lines += ['\nFirst call of each (s): compiling, tracing and freezing happen there.\n',
              '| arch | mode | pairs×px | ' + ' | '.join(['ours', *refs]) + ' |', '|' + '---|' * (4 + len(refs)), *setup]
    print('\n'.join(lines[-len(setup) - 3:]))
    out = Path(a.out)
    rest = out.read_text().split('\n## ', 1) if out.exists() else []
    # Sections other benchmarks wrote (`## ...`, e.g. bench_index.py's) are kept.
    out.write_text('\n'.join(lines) + '\n' + (f'\n## {rest[1]}' if len(rest) > 1 else ''))


if __name__ == '__main__':
    import sys
    main(sys.argv[1:])
