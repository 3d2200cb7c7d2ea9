"""The `siamese-rs` command line against Python doing the same, in fresh processes, alternated.

    make cli && python bench/bench_cli.py            # 5 runs each; SIAMESE_RS_CLI names the binary

Rows: start-up (load the model file, score one pair) of the binary and of `python -c 'import siamese_rs; ...'`,
and the binary's `index search` of one query against a 10,000-image gallery file, start to finish.
The model is the digits demo's resnet18 at 32 px (random weights: speed does not depend on them)."""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY_SCORE = '''
import sys, numpy as np, torch, siamese_rs as sr
from PIL import Image
m = sr.load_model(sys.argv[1])
info = m.export_info
mean, std = (torch.tensor(info['stats'][k]).view(3, 1, 1) for k in ('mean', 'std'))
def load(f): return ((torch.from_numpy(np.array(Image.open(f).convert('RGB'))).permute(2, 0, 1).float() / 255 - mean) / std)[None]
with torch.no_grad(): print(float(m(load(sys.argv[2]), load(sys.argv[3])).softmax(-1)[0, 1]))
'''


def once(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def setup(tmp, n):
    "A model file and `n` digit images at the model's size"
    from fastai.data.transforms import get_image_files

    import siamese_rs as sr
    digits = sorted(get_image_files(sr.digits_path()))
    dls = sr.siamese_dataloaders(digits[:200], size=32, bs=16)
    from siamese_rs.demo import siamese_learner
    learn = siamese_learner(dls, 'resnet18')
    model = tmp / 'model.safetensors'
    sr.export_model(learn, model)
    gallery = tmp / 'gallery'
    gallery.mkdir()
    for i in range(n): shutil.copy(digits[i % len(digits)], gallery / f'{i:05d}.png')
    return model, gallery, digits


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--gallery', type=int, default=10_000)
    a = p.parse_args(argv)
    cli = os.environ.get('SIAMESE_RS_CLI') or shutil.which('siamese-rs')
    if not cli: sys.exit('bench_cli: build the binary first (make cli) and set SIAMESE_RS_CLI')
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model, gallery, digits = setup(tmp, a.gallery)
        sri = tmp / 'gallery.sri'
        t = time.perf_counter()
        subprocess.run([cli, 'index', 'build', model, gallery, '-o', sri], check=True, stderr=subprocess.DEVNULL)
        build = time.perf_counter() - t
        q, x1, x2 = str(digits[-1]), str(digits[0]), str(digits[1])
        cases = {'siamese-rs score (start-up)': [cli, 'score', model, x1, x2],
                 "python -c 'import siamese_rs; ...' score": [sys.executable, '-c', PY_SCORE, model, x1, x2],
                 f'siamese-rs index search, 1 query vs {a.gallery:,}': [cli, 'index', 'search', model, sri, q, '-k', '5']}
        times = {k: [] for k in cases}
        for _ in range(a.reps):
            for k, cmd in cases.items(): times[k].append(once(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f'gallery of {a.gallery:,} images built in {build:.1f} s (siamese-rs index build)\n')
    print('| command | median s (min–max) |\n|---|---|')
    for k, v in times.items(): print(f'| {k} | {med[k]:.3f} ({min(v):.3f}–{max(v):.3f}) |')
    keys = list(cases)
    print(f'\nstart-up: siamese-rs is {med[keys[1]] / med[keys[0]]:.1f}x faster than Python')


if __name__ == '__main__':
    main()
