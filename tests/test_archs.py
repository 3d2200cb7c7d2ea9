"Every arch of the table against its reference: torchvision 0.28's models and fastai 2.8.12's XResNet."
import re

import pytest
import torch
from fastai.vision import learner as fl
from fastai.vision.models import xresnet as fx
from torch import nn
from torchvision import models as tvm

import siamese_rs as sr
from siamese_rs import _engine
from siamese_rs._engine import RustModule

XRESNETS = ['xresnet18', 'xresnet34', 'xresnet50', 'xresnet101', 'xresnet152']
TORCHVISION = ['vgg11_bn', 'vgg13_bn', 'vgg16_bn', 'vgg19_bn', 'alexnet', 'densenet121', 'densenet161',
               'densenet169', 'densenet201', 'squeezenet1_0', 'squeezenet1_1']
ARCHS = XRESNETS + TORCHVISION
SMALLEST = ['xresnet18', 'vgg11_bn', 'alexnet', 'densenet121', 'squeezenet1_1']


def ref_fn(name): return getattr(fx if name.startswith('xresnet') else tvm, name)


def size(name):
    "Small inputs the model still reduces to at least 1x1: AlexNet and SqueezeNet need 64 px"
    return 64 if name.startswith(('alexnet', 'squeezenet')) else 32


def pair(name, seed=0):
    "`(ours, ref)` full models, ref loaded with our weights"
    torch.manual_seed(seed)
    ours, ref = getattr(sr, name)(), ref_fn(name)()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def inputs(name, n=2, seed=1):
    return torch.randn(n, 3, size(name), size(name), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module', params=ARCHS)
def arch(request):
    "`(name, ours, ref)`, built once for the tests below (they run in this order per arch)"
    yield (request.param, *pair(request.param))


def test_model_matches_reference(arch):
    name, ours, ref = arch
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [v.shape for v in ours.state_dict().values()] == [v.shape for v in ref.state_dict().values()]
    assert repr(ours) == repr(ref)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    assert all(isinstance(m, RustModule) for m in ours.modules())
    ours.eval(), ref.eval()
    converted = sr.models.from_torch(ref)
    assert all(isinstance(m, RustModule) for m in converted.modules())
    x = inputs(name)
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(ours(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(converted(x), want, atol=1e-5, rtol=0)


def test_meta_and_split_match_fastai(arch):
    name, o, r = arch
    ours, ref = sr.model_meta[getattr(sr, name)], fl.model_meta[ref_fn(name)]
    assert sr.model_meta[ref_fn(name)] is ours
    assert set(ours) == set(ref)
    assert ours['cut'] == ref['cut'] and ours.get('weights') == ref.get('weights')
    assert [list(s) for s in ours['stats']] == [list(s) for s in ref['stats']]
    head = nn.Linear(2, 2)
    m_ours = nn.Sequential(sr.create_body(o, cut=ours['cut']), head)
    m_ref = nn.Sequential(fl.create_body(r, cut=ref['cut']), head)
    groups, want = ours['split'](m_ours), ref['split'](m_ref)
    assert len(groups) == 3
    assert [[p.shape for p in g] for g in groups] == [[p.shape for p in g] for g in want]


def test_body_matches_fastai_in_eval_and_training(arch):
    name, ours, ref = arch
    cut = sr.model_meta[getattr(sr, name)]['cut']
    body, ref_body = sr.create_body(ours, cut=cut), fl.create_body(ref, cut=cut)
    assert repr(body) == repr(ref_body)
    assert _engine._plan(body) is not None  # the whole body is one call into the core
    x = inputs(name)
    body.eval(), ref_body.eval()
    with torch.no_grad():
        torch.testing.assert_close(body(x), ref_body(x), atol=1e-5, rtol=0)
    body.train(), ref_body.train()
    outs = [body(x), ref_body(x)]
    w = torch.randn(outs[1].shape, generator=torch.Generator().manual_seed(2))
    for out in outs: (out * w).sum().backward()
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    for (n, p), q in zip(body.named_parameters(), ref_body.parameters()):
        assert p.grad is not None, n
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=n)
    for (n, b), c in zip(body.named_buffers(), ref_body.buffers()):
        torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5, msg=n)


@pytest.mark.parametrize('name', SMALLEST)
def test_python_path_matches_when_hooks_force_it(name):
    "A hook on every leaf makes every container run its own Python forward"
    ours, ref = pair(name)
    seen = []
    for m in ours.modules():
        if not m._modules: m.register_forward_hook(lambda *_: seen.append(1))
    ours.eval(), ref.eval()
    x = inputs(name)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)
    assert len(seen) == sum(1 for m in ours.modules() if not m._modules)


def test_dense_layer_dropout_follows_drop_rate():
    ours, ref = pair('densenet121')
    for a, b in zip(ours.modules(), ref.modules()):
        if type(a).__name__ == '_DenseLayer': a.drop_rate = b.drop_rate = 0.3
    ours.train(), ref.train()
    x = inputs('densenet121')
    torch.manual_seed(5)
    a = ours(x)
    torch.manual_seed(5)
    torch.testing.assert_close(a, ref(x), atol=1e-4, rtol=1e-4)


def legacy_densenet_keys(sd):
    "torchvision's densenet files: 'denselayer1.norm.1.weight' and no BatchNorm batch counters"
    return {re.sub(r'(denselayer\d+\.(?:norm|relu|conv))([12])\.', r'\1.\2.', k): v for k, v in sd.items()
            if not k.endswith('num_batches_tracked')}


WITH_WEIGHTS = [n for n in ARCHS if sr.models.ARCHS[n]['weights_file']]


def test_pretrained_loads_the_hub_file(arch, tmp_path, monkeypatch):
    name, _, ref = arch
    if not sr.models.ARCHS[name]['weights_file']:  # fastai ships none: asking for them is a clear error
        with pytest.raises(sr.WeightsNotFoundError, match=name): getattr(sr, name)(pretrained=True)
        return
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    # torchvision's (fastai's) keys, with values our fresh model cannot have drawn.
    sd = {k: v + 1 if v.is_floating_point() else v + 5 for k, v in ref.state_dict().items()}
    file = sr.models.ARCHS[name]['weights_file']
    folder = tmp_path / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    saved = sd
    if name.startswith('densenet'):
        saved = legacy_densenet_keys(sd)
        assert any('.norm.1.' in k for k in saved)
    if name.startswith('xresnet'): saved = {'model': sd}  # fastai's file wraps its state dict
    torch.save(saved, folder / file)
    got = getattr(sr, name)(pretrained=True).state_dict()
    assert list(got) == list(sd)
    for k in saved if name.startswith('densenet') else sd:
        k = re.sub(r'\.(norm|relu|conv)\.([12])\.', r'.\1\2.', k)
        assert torch.equal(got[k], sd[k]), k


@pytest.mark.parametrize('name', WITH_WEIGHTS)
def test_missing_weights_without_network_name_arch_file_and_folder(name, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))

    def offline(*args, **kwargs): raise OSError('no network')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(sr.WeightsNotFoundError) as info:
        getattr(sr, name)(pretrained=True)
    msg = str(info.value)
    assert name in msg and sr.models.ARCHS[name]['weights_file'] in msg
    assert str(tmp_path / 'hub' / 'checkpoints') in msg


def test_xresnets_without_fastai_weights_say_so():
    with pytest.raises(sr.WeightsNotFoundError, match='xresnet18'):
        sr.xresnet18(pretrained=True)


def test_densenet_chunks_match_in_eval():
    """densenet's concatenations across a batch larger than one chunk (8 images at 224 px). Its dense
    blocks run in channels-last order, which rounds differently: features of size ~10 agree to 1e-5
    relative, as PyTorch's own channels-last run does."""
    ours, ref = pair('densenet121')
    body, ref_body = sr.create_body(ours, cut=-1), fl.create_body(ref, cut=-1)
    body.eval(), ref_body.eval()
    x = torch.randn(10, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(body(x), ref_body(x), atol=1e-5, rtol=1e-5)
