"""PairIndex: pairs per second of the pair stage against PyTorch, and all-pairs de-duplication at scale.

The pair stage of the default head (`create_head(1024, 2)` split at its first Linear: 512 wide,
`relu(u + v)` then one folded log-odds row) against (a) the same math in eager PyTorch and (b) the
same math under `torch.compile`, each blocked queries × gallery (the best of a few block shapes,
chosen by a trial run), (c) the per-pair head (the head on `cat(f1, f2)` of each pair's 512 × 2 × 2
feature maps, what `score_pairs` did before the index) and (d) `model(x1, x2)` (resnet34 at 32 px).
One process, interleaved repetitions, medians (min–max). Then the end-to-end all-pairs `matches` of
10,000 digits images at 32 px (files → validation transforms → encoding → every ordered pair),
with its peak heap memory. Writes its section of bench/RESULTS.md.

    python bench/bench_index.py                      # ~5 min on 2 cores
    python bench/bench_index.py --reps 3 --n-dedup 2000 --out ""
"""
import argparse
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from fastai.data.transforms import get_image_files

import siamese_rs as sr
from bench_pairs import machine_peak
from memory import PeakMemory
from siamese_rs import index as ix
from siamese_rs._split import split_head
from siamese_rs.data import _as_batch

FLOP_PER_PAIR = 3 * 512  # add, max, multiply-add over 512 columns (counting a multiply-add as one)
SECTION = '## Pair index'


def default_head(seed=0):
    "fastai's default head for 512 + 512 features, in eval, with random BatchNorm statistics"
    torch.manual_seed(seed)
    head = sr.create_head(1024, 2).eval()
    for m in head.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2)
    return head


def folded(kernel, split):
    "`(w, b)` of the folded rest of the head as float32: one log-odds row over the 512 hidden units"
    (w, b, _), = split.fold.layers
    return w.float().T.contiguous(), b.float()


def torch_block(w, b):
    "The pair stage of a block of queries against a block of gallery rows, in PyTorch ops"
    def block(u, v):
        h = torch.relu(u[:, None, :] + v[None, :, :])
        return torch.sigmoid(h @ w + b)[..., 0]
    return block


def blocked(fn, bq, bg):
    "`fn` over `bq` queries × `bg` gallery rows at a time (sizes divide the inputs: no recompiles)"
    def score(u, v):
        out = torch.empty(len(u), len(v))
        for i in range(0, len(u), bq):
            for j in range(0, len(v), bg):
                out[i:i + bq, j:j + bg] = fn(u[i:i + bq], v[j:j + bg])
        return out
    return score


def best_block(fn, u, v, shapes):
    "The fastest `(bq, bg)` of `shapes` for `fn` on `u × v` (after a warm-up each)"
    def t(s):
        f = blocked(fn, *s)
        f(u, v)
        start = time.perf_counter()
        f(u, v)
        return time.perf_counter() - start
    return min(shapes, key=t)


def interleaved(cands, reps):
    "`{name: [seconds]}` of each `(name, fn)`, one call of each per repetition"
    times = {n: [] for n, _ in cands}
    for _, fn in cands: fn()  # warm-up
    for _ in range(reps):
        for n, fn in cands:
            start = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - start)
    return times


def pair_stage(reps):
    "Rows of the pair-stage table: `(name, pairs, seconds list, note)`"
    head = default_head()
    split = split_head(head, 4)
    kernel = ix._Kernel(split, 512)
    torch.manual_seed(1)
    feats = torch.randn(4096, 512, 2, 2)
    u, v = kernel.encode(feats)
    w, b = folded(kernel, split)
    math = torch_block(w, b)
    with torch.no_grad():
        ref = blocked(math, 16, 512)(u[:64], v[:1024])
        torch.testing.assert_close(kernel.score(u[:64], v[:1024]), ref, atol=1e-5, rtol=0)
        want = head(torch.cat([feats[:8].repeat_interleave(8, 0), feats[8:16].repeat(8, 1, 1, 1)], 1)).softmax(-1)[:, 1]
        torch.testing.assert_close(kernel.score(u[:8], v[8:16]).reshape(-1), want, atol=1e-5, rtol=0)
    shapes = [(16, 2048), (8, 512), (4, 256), (16, 128)]
    nq, ng = 1024, 4096  # ours: 4.2 M pairs
    eq, eg = 64, 2048    # eager and compile: 131 k pairs
    with torch.no_grad():
        eager_shape = best_block(math, u[:eq], v[:eg], shapes)
        compiled = torch.compile(math, dynamic=False)
        t0 = time.perf_counter()
        compile_shape = best_block(compiled, u[:eq], v[:eg], shapes)
        compile_s = time.perf_counter() - t0
        eager, comp = blocked(math, *eager_shape), blocked(compiled, *compile_shape)
        torch.testing.assert_close(comp(u[:eq], v[:eg]), kernel.score(u[:eq], v[:eg]), atol=1e-5, rtol=0)
    whole = ix._WholeHead(head, feats.shape)
    fa, fb = whole.encode(feats)
    model = sr.SiameseModel(sr.create_body(sr.resnet34, cut=-2, pretrained=False), head).eval()
    x1, x2 = torch.randn(64, 3, 32, 32), torch.randn(64, 3, 32, 32)
    threads = torch.get_num_threads()

    def no_grad(f):
        def run():
            with torch.no_grad(): return f()
        return run
    cands = [('ours (Rust kernel)', lambda: kernel.head.score(u[:nq], v[:ng], threads)),
             ('(a) eager PyTorch', no_grad(lambda: eager(u[:eq], v[:eg]))),
             ('(b) torch.compile', no_grad(lambda: comp(u[:eq], v[:eg]))),
             ('(c) per-pair head', no_grad(lambda: whole.score(fa[:2], fb[:1024]))),
             ('(d) model(x1, x2)', no_grad(lambda: model(x1, x2)))]
    pairs = [nq * ng, eq * eg, eq * eg, 2 * 1024, 64]
    notes = ['', f'blocks {eager_shape[0]} × {eager_shape[1]}',
             f'blocks {compile_shape[0]} × {compile_shape[1]}; compile and block trial {compile_s:.0f} s',
             'feature maps 512 × 2 × 2 (64 px), in blocks', 'resnet34 at 32 px, batches of 64 pairs']
    times = interleaved(cands, reps)
    return [(n, p, times[n], note) for (n, _), p, note in zip(cands, pairs, notes)]


def pair_table(rows):
    "Markdown lines of the pair-stage rows, with ratios against ours and torch.compile"
    rate = {n: p / statistics.median(t) for n, p, t, _ in rows}
    ours, comp = rate['ours (Rust kernel)'], rate['(b) torch.compile']
    lines = ['| pair stage | pairs per call | M pairs/s median (min–max) | ours / this | GFLOP/s | notes |',
             '|---|---|---|---|---|---|']
    for n, p, t, note in rows:
        r = rate[n]
        lo, hi = p / max(t) / 1e6, p / min(t) / 1e6
        gf = f'{r * FLOP_PER_PAIR / 1e9:.1f}' if n[:2] in ('ou', '(a', '(b') else '–'
        lines.append(f'| {n} | {p:,} | {r / 1e6:.3g} ({lo:.3g}–{hi:.3g}) | {ours / r:.3g} | {gf} | {note} |')
    return lines, ours, comp


def digits_batch(n, size, seed=0):
    "`n` digits files sampled with replacement and `DataLoaders` that resize them to `size` px"
    files = list(get_image_files(sr.digits_path()))
    dls = sr.siamese_dataloaders(files, size=size, bs=64)
    return random.Random(seed).choices(files, k=n), dls


def dedup(n, size, reps):
    "End-to-end all-pairs matches of `n` digits images: `(seconds per stage, peak MiB, matches, threshold)`"
    files, dls = digits_batch(n, size)
    torch.manual_seed(0)
    model = sr.SiameseModel(sr.create_body(sr.resnet34, cut=-2, pretrained=False), default_head()).eval()
    # A threshold that keeps ~1 pair in 10,000 of this random model, from a sample of its scores
    probe = sr.PairIndex(model, files[:200], dls=dls)
    threshold = float(probe.all_pairs().flatten().quantile(0.9999))
    runs = []
    for _ in range(reps):
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            x = _as_batch(files, dls, 'images')
            t1 = time.perf_counter()
            index = sr.PairIndex(model, x)
            t2 = time.perf_counter()
            pairs, p = index.matches(threshold)
            t3 = time.perf_counter()
        runs.append(((t1 - t0, t2 - t1, t3 - t2, t3 - t0), mem.peak, len(pairs)))
    watch = interleaved([('staleness check', index._watch.changed), ('score, 1 query', lambda: index.score(x[:1])),
                         ('score, 64 queries', lambda: index.score(x[:64]))], reps)
    return runs, threshold, {k: statistics.median(v) for k, v in watch.items()}


def model_tensors():
    "The tensors of the de-duplication model"
    torch.manual_seed(0)
    m = sr.SiameseModel(sr.create_body(sr.resnet34, cut=-2, pretrained=False), default_head())
    return [*m.parameters(), *m.buffers()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--reps', type=int, default=7)
    p.add_argument('--n-dedup', type=int, default=10_000)
    p.add_argument('--dedup-reps', type=int, default=3)
    p.add_argument('--out', default=str(Path(__file__).with_name('RESULTS.md')), help='"" to print only')
    a = p.parse_args(argv)
    threads = torch.get_num_threads()
    lines = [SECTION, '', f'`python bench/bench_index.py {" ".join(argv or [])}`'.replace(' `', '`'), '',
             f'Machine: {platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}, '
             f'pair kernel {sr._core.pair_isa()}. Medians of {a.reps} interleaved repetitions (min–max). '
             f'GFLOP/s counts {FLOP_PER_PAIR} operations a pair (add, max, multiply-add over 512).', '']
    print('\n'.join(lines), flush=True)
    table, ours, comp = pair_table(pair_stage(a.reps))
    peak = machine_peak()
    bound = peak / 2 / FLOP_PER_PAIR * 1e9  # the peak counts a multiply-add as 2; our operations are 1 each
    summary = ['', f'Ours against torch.compile of the same math: **{ours / comp:.1f}×**; {ours / 1e6:.1f} M pairs/s on '
               f'{threads} threads, {ours * FLOP_PER_PAIR / 1e9:.0f} GFLOP/s. The machine\'s measured float32 peak is '
               f'{peak:.0f} GFLOP/s (multiply-adds as 2), i.e. {peak / 2:.0f} G vector-lane operations a second; at '
               f'{FLOP_PER_PAIR} operations a pair that bounds the pair stage at {bound / 1e6:.0f} M pairs/s: ours runs '
               f'at {100 * ours / bound:.0f}% of it.', '']
    lines += table + summary
    print('\n'.join(table + summary), flush=True)
    runs, threshold, watch = dedup(a.n_dedup, 32, a.dedup_reps)
    med = [statistics.median(r[0][k] for r in runs) for k in range(4)]
    peak = statistics.median(r[1] for r in runs)
    n = a.n_dedup
    dd = [f'All-pairs de-duplication of {n:,} digits images at 32 px (files sampled with replacement from the '
          f'1,797, resnet34 with the default head, random weights; `PairIndex(model, x).matches({threshold:.4f})`, '
          f'the threshold keeping ~1 pair in 10,000): {n * (n - 1):,} ordered pairs, {runs[0][2]:,} matches. '
          f'Medians of {len(runs)} runs:', '',
          '| files → batch (validation transforms) | encoding (PairIndex) | matches | end to end | peak heap MiB |',
          '|---|---|---|---|---|',
          f'| {med[0]:.1f} s | {med[1]:.1f} s | {med[2]:.1f} s | **{med[3]:.1f} s** | {peak:.0f} |']
    n_values = sum(t.numel() for t in [*model_tensors()])
    dd += ['', f'Every call first checks that the model is unchanged: a checksum of every byte of its tensors '
           f'({n_values / 1e6:.1f} M values for resnet34 and the head) and its structure. Medians on the {n:,}-image '
           'index: ' + ', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in watch.items()) + '.']
    lines += dd
    print('\n'.join(dd), flush=True)
    if a.out: write_section(Path(a.out), '\n'.join(lines) + '\n')


def write_section(path, text):
    "Replace (or append) this benchmark's section of the results file, keeping the others"
    old = path.read_text() if path.exists() else ''
    start = old.find(SECTION)
    if start < 0: new = old.rstrip('\n') + '\n\n' + text
    else:
        end = old.find('\n## ', start + len(SECTION))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else '')
    path.write_text(new)


if __name__ == '__main__':
    import sys
    main(sys.argv[1:])
