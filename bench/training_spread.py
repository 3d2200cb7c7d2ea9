"""The spread of the notebooks' training outcomes over seeds: the margins `tests/test_notebooks.py` asserts.

Both notebooks train the same recipe (resnet18 from random weights on the bundled digits at 32 px, `SiameseLoss`,
1 frozen epoch at 3e-3, then 6 at slice(1e-3, 1e-2)). Each seed changes the split, the pairs drawn, the
initial weights and the batch order, so the spread over seeds bounds what a change of machine or thread count
does to one seeded run. Prints, per seed, the validation pair accuracy, the top-1 retrieval accuracy of 200
training images against the validation images (`pair_search.ipynb`) and the share of `matches(0.99)` that
show the same digit; then min / median / max of each.

    python bench/training_spread.py --seeds 42 0 1 2 3
    python bench/training_spread.py --short --seeds 42 0 1 2 3   # tests/test_frozen.py's 1 + 2 epochs (demo.train)
"""
import argparse
import statistics
import time

from fastai.vision.all import get_image_files, set_seed

import siamese_rs as sr
from siamese_rs.demo import siamese_learner


def run(seed):
    "One training run of the notebooks' recipe from `seed`: (pair accuracy, top-1 retrieval, share same in matches)"
    set_seed(seed, reproducible=True)
    dls = sr.siamese_dataloaders(get_image_files(sr.digits_path()), size=32, bs=64, seed=seed)
    learn = siamese_learner(dls, 'resnet18')
    with learn.no_bar(), learn.no_logging():
        learn.freeze(); learn.fit_one_cycle(1, 3e-3)
        learn.unfreeze(); learn.fit_one_cycle(6, slice(1e-3, 1e-2))
        accuracy = float(learn.validate()[1])
    label = sr.NameLabeller(r'^(.*)_\d+\.\w+$')
    gallery, queries = list(dls.valid_ds.items), list(dls.train_ds.items)[:200]
    index = sr.PairIndex(learn, gallery)
    _, idx = index.topk(queries, k=1)
    top1 = sum(label(gallery[i]) == label(q) for q, i in zip(queries, idx[:, 0].tolist())) / len(queries)
    pairs, _ = index.matches(0.99)
    same = sum(label(gallery[i]) == label(gallery[j]) for i, j in pairs.tolist()) / max(1, len(pairs))
    return accuracy, top1, same


def run_short(seed):
    "`tests/test_frozen.py`'s learner: `demo.train` for 1 + 2 epochs from `seed`; its validation pair accuracy"
    from siamese_rs.demo import train
    return train('resnet18', size=32, freeze_epochs=1, epochs=2, seed=seed, quiet=True)[1:2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[42, 0, 1, 2, 3])
    ap.add_argument('--short', action='store_true', help="tests/test_frozen.py's 1 + 2 epochs: pair accuracy only")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        start = time.time()
        if args.short:
            rows.append(run_short(seed))
            print(f'seed {seed}: pair accuracy {rows[-1][0]:.4f} ({time.time() - start:.0f} s)', flush=True)
            continue
        rows.append(run(seed))
        print(f'seed {seed}: pair accuracy {rows[-1][0]:.4f}, top-1 retrieval {rows[-1][1]:.3f}, '
              f'same digit in matches(0.99) {rows[-1][2]:.1%} ({time.time() - start:.0f} s)', flush=True)
    for name, col in zip(('pair accuracy', 'top-1 retrieval', 'same in matches'), zip(*rows)):
        print(f'{name}: min {min(col):.4f}  median {statistics.median(col):.4f}  max {max(col):.4f}')


if __name__ == '__main__': main()
