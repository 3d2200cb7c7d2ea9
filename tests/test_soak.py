"Soak: thousands of training steps keep memory flat and leak no tensors."
import gc

import psutil
import pytest
import torch

import siamese_rs as sr


def live_tensors():
    gc.collect()
    n = 0
    for o in gc.get_objects():
        try:
            if isinstance(o, torch.Tensor): n += 1
        except ReferenceError: pass
    return n


@pytest.mark.soak
def test_two_thousand_training_steps_hold_memory_flat():
    torch.manual_seed(0)
    body = sr.Sequential(sr.Conv2d(3, 8, 3, padding=1, bias=False), sr.BatchNorm2d(8), sr.ReLU(inplace=True),
                         sr.MaxPool2d(2), sr.Conv2d(8, 16, 3, padding=1), sr.ReLU())
    model = sr.SiameseModel(body, sr.create_head(32, 2, lin_ftrs=[16], ps=0.25))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(64, 3, 16, 16, generator=g), torch.randn(64, 3, 16, 16, generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    proc = psutil.Process()

    def step(i):
        j = slice(8 * (i % 8), 8 * (i % 8) + 8)
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x1[j], x2[j]), y[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 50 == 0:  # eval forwards too (the no-autograd path), and a dtype error now and then
            model.eval()
            with torch.no_grad(): model(x1[j], x2[j])
            with pytest.raises(sr.DTypeError): model(x1[j].double(), x2[j].double())
        return loss.item()

    for i in range(200): step(i)
    rss0, tensors0 = proc.memory_info().rss, live_tensors()
    losses = [step(i) for i in range(200, 2200)]
    rss1, tensors1 = proc.memory_info().rss, live_tensors()
    assert all(l == l for l in losses) and sum(losses[-100:]) < sum(losses[:100])  # finite, and it learned
    assert tensors1 <= tensors0, (tensors0, tensors1)
    assert rss1 < rss0 * 1.05, f'RSS grew from {rss0 / 2**20:.1f} MiB to {rss1 / 2**20:.1f} MiB'
