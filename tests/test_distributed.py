"""DistributedDataParallel over gloo with two CPU processes: the averaged gradients equal one process
on the combined batch.

The comparison needs a model whose per-example gradients do not depend on the rest of the batch:
in training mode BatchNorm normalises each rank's half with that half's statistics (DDP does not
sync them; SyncBatchNorm is CUDA-only), so two halves are not one batch and the comparison would
be ill-posed. The model therefore runs in eval mode (BatchNorm uses its running statistics, dropout
is off); every parameter still gets a gradient, and DDP still all-reduces them.
"""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import siamese_rs as sr

STEPS, BS = 3, 8


def build():
    torch.manual_seed(0)
    model = sr.SiameseModel(sr.create_body(sr.resnet18, cut=6, pretrained=False), sr.create_head(256, 2, lin_ftrs=[32]))
    return model.eval()


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BS, 3, 32, 32, generator=g), torch.randn(BS, 3, 32, 32, generator=g),
             torch.randint(0, 2, (BS,), generator=g)) for _ in range(STEPS)]


def train(model, data, opt):
    "`STEPS` SGD steps; returns the gradients of each step"
    grads = []
    for x1, x2, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x1, x2), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return grads


def worker(rank, world, init_file, out):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        model = DDP(build())
        half = BS // world
        data = [(x1[rank * half:(rank + 1) * half], x2[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
                for x1, x2, y in batches()]
        grads = train(model, data, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        torch.save({'grads': grads, 'params': [p.detach() for p in model.module.parameters()]}, f'{out}.{rank}')
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_processes_match_one_process(tmp_path):
    world = 2
    mp.spawn(worker, args=(world, str(tmp_path / 'init'), str(tmp_path / 'out')), nprocs=world, join=True)
    model = build()
    want = train(model, batches(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    results = [torch.load(tmp_path / f'out.{r}', weights_only=True) for r in range(world)]
    for res in results:
        assert len(res['grads']) == STEPS
        for step, got in zip(want, res['grads']):
            for a, b in zip(step, got): torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        for a, b in zip(model.parameters(), res['params']): torch.testing.assert_close(b, a.detach(), atol=1e-5, rtol=1e-5)
    assert os.path.exists(tmp_path / 'out.1')
