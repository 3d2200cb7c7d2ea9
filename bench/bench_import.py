"""What `import siamese_rs` costs over `import torch`: medians of fresh interpreters, alternated.

    python bench/bench_import.py            # 5 processes each
"""
import argparse
import statistics
import subprocess
import sys
import time

CASES = {'import torch': 'import torch', 'import siamese_rs': 'import siamese_rs',
         'import siamese_rs + data helpers': 'import siamese_rs; siamese_rs.digits_path'}


def once(code):
    t = time.perf_counter()
    subprocess.run([sys.executable, '-c', code], check=True)
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--reps', type=int, default=5)
    a = p.parse_args(argv)
    times = {k: [] for k in CASES}
    for _ in range(a.reps):
        for k, code in CASES.items(): times[k].append(once(code))
    base = statistics.median(times['import torch'])
    print('| command | median s (min–max) | over `import torch` |\n|---|---|---|')
    for k, v in times.items():
        m = statistics.median(v)
        print(f'| `{k}` | {m:.2f} ({min(v):.2f}–{max(v):.2f}) | {m - base:+.2f} s |')


if __name__ == '__main__':
    main()
