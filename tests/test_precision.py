"Precision, devices and memory format: autocast, fastai's mixed precision, channels_last, meta, float64."
import torch
from torch import nn

import siamese_rs as sr
from conftest import images, make_pair
from pairdata import X1, X2, pair_learner, tiny_model


def test_autocast_bf16_matches_the_reference():
    ours, ref = make_pair('resnet18', ps=0.0)
    x1, x2 = images(2, 32)
    for mode in ('eval', 'train'):
        getattr(ours, mode)(); getattr(ref, mode)()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            a, b = ours(x1, x2), ref(x1, x2)
        assert a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    a.float().sum().backward(); b.float().sum().backward()
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert p.grad.dtype == q.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, atol=5e-2, rtol=5e-2)
    for p, q in zip(ours.buffers(), ref.buffers()): torch.testing.assert_close(p, q, atol=1e-2, rtol=1e-2)


def test_fastai_mixed_precision_callbacks():
    "`to_bf16` / `to_fp16` train (on CPU fastai's autocast targets CUDA, so both run as the reference does)"
    import fastai.callback.fp16  # noqa: F401  (patches Learner.to_bf16 / to_fp16)
    from fastai.vision import learner as fl
    from torchvision.models import resnet18

    from conftest import RefSiamese
    for to in ('to_bf16', 'to_fp16'):
        ours = tiny_model(seed=3)
        ref = RefSiamese(fl.create_body(resnet18(), cut=5), fl.create_head(128, 2, lin_ftrs=[16], ps=0.0))
        ref.load_state_dict(ours.state_dict())
        losses = []
        for model in (ours, ref):
            learn = getattr(pair_learner(model), to)()
            learn.fit(1, 1e-2)
            losses.append(learn.recorder.values[-1])
            learn.model.eval()
        torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-4, rtol=1e-4)
        with torch.no_grad(): torch.testing.assert_close(ours(X1[:4], X2[:4]), ref(X1[:4], X2[:4]), atol=1e-4, rtol=1e-4)


def test_channels_last_inputs_give_the_same_outputs():
    ours, ref = make_pair('resnet18')
    x1, x2 = images(2, 32)
    cl1, cl2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
    ours.eval(); ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(cl1, cl2), ours(x1, x2), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(cl1, cl2), ref(x1, x2), atol=1e-5, rtol=1e-5)
    ours.to(memory_format=torch.channels_last); ref.to(memory_format=torch.channels_last)
    with torch.no_grad(): torch.testing.assert_close(ours(cl1, cl2), ref(cl1, cl2), atol=1e-5, rtol=1e-5)


def test_meta_device():
    ours, ref = make_pair('resnet18')
    ours.to('meta'); ref.to('meta')
    x1, x2 = (x.to('meta') for x in images(3, 32))
    for mode in ('eval', 'train'):
        getattr(ours, mode)(); getattr(ref, mode)()
        a, b = ours(x1, x2), ref(x1, x2)
        assert a.device.type == 'meta' and a.shape == b.shape == (3, 2) and a.dtype == b.dtype
    a.sum().backward()
    assert ours.encoder[0].weight.grad.device.type == 'meta'


def test_double():
    ours, ref = make_pair('resnet18')
    ours.double(); ref.double()
    x1, x2 = (x.double() for x in images(2, 32))
    for mode in ('eval', 'train'):
        getattr(ours, mode)(); getattr(ref, mode)()
        for m in (ours, ref):
            for d in m.modules():
                if isinstance(d, nn.Dropout): d.p = 0.
        a, b = ours(x1, x2), ref(x1, x2)
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    with torch.no_grad(): assert ours.eval()(x1, x2).dtype == torch.float64
    import pytest
    with pytest.raises(sr.DTypeError, match='model.to'): ours(*images(2, 32))
