"Threads: the forward releases the GIL, so concurrent calls must still give the serial results."
import threading

import torch

import siamese_rs as sr
from conftest import images
from pairdata import X1, X2, Y, tiny_model


def run_threads(fns):
    "Run each function in its own thread; re-raise the first error"
    results, errors = [None] * len(fns), []
    def work(i):
        try: results[i] = fns[i]()
        except BaseException as e: errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(fns))]
    for t in threads: t.start()
    for t in threads: t.join(timeout=300)
    if errors: raise errors[0]
    assert not any(t.is_alive() for t in threads)
    return results


def test_four_threads_share_one_model_in_eval():
    torch.manual_seed(0)
    model = sr.SiameseModel(sr.create_body(sr.resnet18, cut=-2, pretrained=False), sr.create_head(1024, 2)).eval()
    inputs = [[images(2, 32, seed=10 * t + i) for i in range(4)] for t in range(4)]
    def infer(batches):
        with torch.no_grad(): return [model(x1, x2) for x1, x2 in batches]
    serial = [infer(b) for b in inputs]
    concurrent = run_threads([lambda b=b: infer(b) for b in inputs])
    for s, c in zip(serial, concurrent):
        for a, b in zip(s, c): torch.testing.assert_close(b, a, atol=0, rtol=0)


def train(model, steps=6):
    "SGD steps on the synthetic pairs; returns the losses"
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for i in range(steps):
        j = slice(4 * (i % 3), 4 * (i % 3) + 4)
        loss = torch.nn.functional.cross_entropy(model(X1[j], X2[j]), Y[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


def test_inference_in_one_thread_while_another_trains():
    "no_grad is per thread: the inference thread's mode must not leak into the training thread"
    torch.manual_seed(1)
    server = sr.SiameseModel(sr.create_body(sr.resnet18, cut=-2, pretrained=False), sr.create_head(1024, 2)).eval()
    batches = [images(2, 32, seed=s) for s in range(8)]
    def infer():
        with torch.no_grad(): return [server(x1, x2) for x1, x2 in batches]
    serial_out = infer()
    serial_model = tiny_model(seed=2)
    serial_losses = train(serial_model)
    model = tiny_model(seed=2)
    out, losses = run_threads([infer, lambda: train(model)])
    for a, b in zip(serial_out, out): torch.testing.assert_close(b, a, atol=0, rtol=0)
    torch.testing.assert_close(torch.stack(losses), torch.stack(serial_losses), atol=1e-6, rtol=1e-6)
    for p, q in zip(model.parameters(), serial_model.parameters()): torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    for p, q in zip(model.buffers(), serial_model.buffers()): torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
