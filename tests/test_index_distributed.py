"""`PairIndex` sharded by rows over two gloo processes (as under torchrun): each rank scores its block of
query rows, and the gathered matches, matrix, top-k and scores are those of one process, value for value."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import siamese_rs as sr
from test_index import imgs, siamese

THRESHOLD = 0.5


def results(index, distributed):
    q = imgs(5, seed=2)
    return {'matches': index.matches(THRESHOLD, distributed=distributed), 'all': index.all_pairs(distributed=distributed),
            'topk': index.topk(q, 4, distributed=distributed), 'score': index.score(q, distributed=distributed),
            'one': index.score(q[:1], distributed=distributed)}  # one query row: one rank scores none


def build():
    return sr.PairIndex(siamese(seed=5), imgs(37, seed=3))


def worker(rank, world, init_file, out):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try: torch.save(results(build(), True), f'{out}.{rank}')
    finally: dist.destroy_process_group()


def test_two_gloo_processes_give_the_results_of_one(tmp_path):
    world = 2
    mp.spawn(worker, args=(world, str(tmp_path / 'init'), str(tmp_path / 'out')), nprocs=world, join=True)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the encoder as the workers ran it
        want = results(build(), False)
    finally: torch.set_num_threads(n)
    assert 0 < len(want['matches'][0]) < 37 * 36
    for rank in range(world):
        got = torch.load(tmp_path / f'out.{rank}', weights_only=True)
        for key in want:
            a, b = (want[key], got[key]) if isinstance(want[key], tuple) else ((want[key],), (got[key],))
            assert all(torch.equal(x, y) for x, y in zip(a, b)), (rank, key)
