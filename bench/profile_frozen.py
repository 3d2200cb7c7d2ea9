"""Where `sr.freeze`'s float32 time goes, against eager: a `torch.profiler` breakdown of one call per row.

    python bench/profile_frozen.py                                   # resnet34, resnet50 at 32x64, 8x224
    python bench/profile_frozen.py --archs resnet50 --eval 64x64 --calls 10

For each row: eager's and the float32 peers' totals, and the frozen call's, split into what `torch.profiler`
puts in its convolutions, in the NaN probes (the per-channel means that catch a NaN that oneDNN's ReLU or max
pool would map away, and their conversions), in the other elementwise passes (ReLU, residual add) and in the
rest. Two ratios: the best peer over the frozen call without its probes (what the peers, which map NaN
away, gain by not checking), and eager over the frozen convolutions alone (the most any float32 mode on the
same oneDNN kernels can be ahead of eager). Interleaved; medians of 3 rounds of `--calls` calls; the profiler
adds a little to every op, so totals are above bench_pairs.py's.
"""
import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
import siamese_rs as sr  # noqa: E402
from bench_pairs import compiled, models, score  # noqa: E402

PROBE = ('aten::mkldnn_adaptive_avg_pool2d', 'aten::_to_dense')
ELEMENTWISE = ('aten::relu_', 'aten::add_', 'aten::relu', 'aten::add')


def breakdown(fn, x1, x2, calls):
    "`{part: ms}` per call: total, convolutions, probes, elementwise and the rest"
    for _ in range(3): score(fn, x1, x2, None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            with torch.profiler.record_function('call'): score(fn, x1, x2, None)
    events = prof.key_averages()
    self_ms = {e.key: e.self_cpu_time_total / 1e3 / calls for e in events}
    totals = [e.cpu_time_total / 1e3 / calls for e in events if e.key == 'call']
    total = totals[0] if totals else sum(self_ms.values())
    # Every convolution op's own time: its kernel (the dispatcher's frames around it have next to none).
    conv = sum(v for k, v in self_ms.items() if 'conv' in k)
    probe = sum(self_ms.get(k, 0) for k in PROBE)
    elementwise = sum(self_ms.get(k, 0) for k in ELEMENTWISE)
    return {'total': total, 'conv': conv, 'probe': probe, 'elementwise': elementwise,
            'rest': total - conv - probe - elementwise}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--archs', default='resnet34,resnet50')
    p.add_argument('--eval', default='32x64,8x224')
    p.add_argument('--peers', default='trace,compile-freeze', help="bench_pairs.py's float32 peers to time too")
    p.add_argument('--calls', type=int, default=5)
    a = p.parse_args(argv)
    warnings.filterwarnings('ignore')
    peers = [r for r in a.peers.split(',') if r]
    print('| arch | pairs×px | eager ms | ' + ''.join(f'{r} ms | ' for r in peers) + 'frozen ms | frozen: convs | '
          'NaN probes | ReLU, add | rest | best peer / (frozen − probes) | eager / (frozen convs alone) |')
    print('|' + '---|' * (11 + len(peers)))
    for arch in a.archs.split(','):
        torch.manual_seed(0)
        ours, ref = models(arch)
        ours.eval(), ref.eval()
        frozen = sr.freeze(ours)
        for shape in a.eval.split(','):
            b, px = map(int, shape.split('x'))
            x1, x2 = torch.randn(b, 3, px, px), torch.randn(b, 3, px, px)
            cands = {'eager': ref, 'frozen': frozen, **{r: compiled(ref, r, x1, x2) for r in peers}}
            runs = {n: [] for n in cands}
            for _ in range(3):  # interleaved; the median of each part
                for n, fn in cands.items(): runs[n].append(breakdown(fn, x1, x2, a.calls))
            med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
            e, f = med['eager'], med['frozen']
            best = min([med[r]['total'] for r in peers] or [float('nan')])
            print(f"| {arch} | {b}×{px} | {e['total']:.1f} | " + ''.join(f"{med[r]['total']:.1f} | " for r in peers)
                  + f"{f['total']:.1f} | {f['conv']:.1f} | {f['probe']:.1f} | {f['elementwise']:.1f} "
                  f"| {f['rest']:.1f} | {best / (f['total'] - f['probe']):.2f} | {e['total'] / f['conv']:.2f} |",
                  flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
