"Our SiameseModel against the tutorial's model over fastai 2.8.12 + torchvision 0.28, computed here."
import pytest
import torch
from torch import nn

from conftest import images, make_pair

ARCHS = ['resnet18', 'resnet34', 'resnet50']


def no_dropout(*models):
    for m in models:
        for d in m.modules():
            if isinstance(d, nn.Dropout): d.p = 0.


@pytest.mark.parametrize('arch', ARCHS)
def test_keys_and_repr_match(arch):
    ours, ref = make_pair(arch)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [v.shape for v in ours.state_dict().values()] == [v.shape for v in ref.state_dict().values()]
    assert repr(ours).replace('SiameseModel', 'X') == repr(ref).replace('RefSiamese', 'X')
    assert repr(ours.encoder[-1]) == repr(ref.encoder[-1])
    assert repr(ours.head) == repr(ref.head)


@pytest.mark.parametrize('arch', ARCHS)
def test_eval_outputs_match(arch):
    ours, ref = make_pair(arch)
    ours.eval(), ref.eval()
    x1, x2 = images(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x1, x2), ref(x1, x2), atol=1e-5, rtol=0)


@pytest.mark.parametrize('arch', ARCHS)
def test_train_losses_gradients_and_stats_match(arch):
    ours, ref = make_pair(arch)
    no_dropout(ours, ref)
    x1, x2 = images(4, 32)
    y = torch.tensor([0, 1, 1, 0])
    losses = []
    for m in (ours, ref):
        m.train()
        loss = nn.functional.cross_entropy(m(x1, x2), y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert p.grad is not None, n
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=n)
    for (n, b), c in zip(ours.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-5, msg=n)
    assert ours.encoder[1].num_batches_tracked.item() == 2  # one step per encoder call, as PyTorch


def test_dropout_masks_match_with_the_same_seed():
    ours, ref = make_pair('resnet18', ps=0.5)
    ours.train(), ref.train()
    x1, x2 = images(4, 32)
    torch.manual_seed(7)
    a = ours(x1, x2)
    torch.manual_seed(7)
    b = ref(x1, x2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.manual_seed(8)
    assert not torch.allclose(ours(x1, x2), a)  # the mask does depend on the seed


def test_parameters_are_the_tensors_the_core_uses(pair18):
    ours, ref = pair18
    ours.eval(), ref.eval()
    x1, x2 = images()
    with torch.no_grad():
        ours.head[-1].weight.mul_(3)  # an in-place edit from Python is seen by the next forward
        ref.head[-1].weight.mul_(3)
        torch.testing.assert_close(ours(x1, x2), ref(x1, x2), atol=1e-5, rtol=0)
    new = {k: v * 1.01 if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    ours.load_state_dict(new, assign=True)
    ref.load_state_dict(new)
    with torch.no_grad(): torch.testing.assert_close(ours(x1, x2), ref(x1, x2), atol=1e-5, rtol=0)
    ours.double(), ref.double()
    with torch.no_grad():
        out = ours(x1.double(), x2.double())
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, ref(x1.double(), x2.double()), atol=1e-10, rtol=0)


def test_autograd_flows_into_python_grads(pair18):
    ours, _ = pair18
    x1, x2 = images()
    x1.requires_grad_()
    ours(x1, x2).sum().backward()
    assert x1.grad is not None and x1.grad.abs().sum() > 0
    assert all(p.grad is not None for p in ours.parameters())


@pytest.mark.parametrize('n,px', [(9, 224), (20, 160)])
def test_eval_batches_split_into_chunks_match(n, px):
    "Large eval batches run the encoder chunk by chunk (8 images at 224 px, 15 at 160 px)"
    ours, ref = make_pair('resnet18')
    ours.eval(), ref.eval()
    x1, x2 = images(n, px)
    with torch.no_grad():
        torch.testing.assert_close(ours(x1, x2), ref(x1, x2), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encoder(x1), ref.encoder(x1), atol=1e-5, rtol=0)
