"create_body's inputs (arch functions, our models, torchvision models), n_in, tree access, hooks, edits."
import copy

import pytest
import torch
from fastai.callback.hook import hook_outputs
from fastai.vision import learner as fl
from torch import nn
from torchvision import models as tvm

import siamese_rs as sr
from conftest import images, make_pair


def test_the_2020_calls_work():
    body = sr.create_body(sr.resnet34, cut=sr.model_meta[sr.resnet34]['cut'], pretrained=False)
    assert isinstance(body, nn.Sequential) and len(body) == 8
    assert sr.model_meta[tvm.resnet34] is sr.model_meta[sr.resnet34]
    ours, ref = sr.model_meta[sr.resnet34]['stats'], fl.model_meta[tvm.resnet34]['stats']
    assert [list(s) for s in ours] == [list(s) for s in ref]


@pytest.mark.parametrize('arch', ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152'])
def test_meta_matches_fastai(arch):
    ours, ref = sr.model_meta[getattr(sr, arch)], fl.model_meta[getattr(tvm, arch)]
    assert set(ours) == set(ref)
    assert ours['cut'] == ref['cut'] and ours.get('weights') == ref.get('weights')
    assert [list(s) for s in ours['stats']] == [list(s) for s in ref['stats']]


def test_resnet_split_equals_fastai():
    torch.manual_seed(0)
    ours = nn.Sequential(sr.create_body(sr.resnet18, pretrained=False), sr.create_head(1024, 2))
    ref = nn.Sequential(fl.create_body(tvm.resnet18()), fl.create_head(1024, 2))
    gs = sr.model_meta[sr.resnet18]['split'](ours)
    rs = fl.model_meta[tvm.resnet18]['split'](ref)
    assert [[p.shape for p in g] for g in gs] == [[p.shape for p in g] for g in rs]


def test_torchvision_instance_is_converted_with_its_weights():
    tv = tvm.resnet18().eval()
    ours = sr.create_body(tv, cut=-2).eval()
    assert type(ours[0]) is sr.Conv2d and isinstance(ours[1], nn.BatchNorm2d)
    ref = fl.create_body(copy.deepcopy(tv), cut=-2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


def test_our_model_and_a_callable_cut():
    model = sr.resnet18()
    body = sr.create_body(model, cut=lambda m: nn.Sequential(*list(m.children())[:4]))
    assert len(body) == 4 and body[0] is model.conv1
    assert len(sr.create_body(sr.resnet18(), pretrained=False)) == 8  # cut=None: last child with a pool


@pytest.mark.parametrize('n_in', [1, 2, 4, 5])
def test_n_in_follows_fastai_weight_rule(n_in):
    tv = tvm.resnet18()
    ref = fl.create_body(copy.deepcopy(tv), n_in=n_in, pretrained=True, cut=-2)
    ours = sr.create_body(tv, n_in=n_in, pretrained=True, cut=-2)
    assert repr(ours[0]) == repr(ref[0])
    torch.testing.assert_close(ours[0].weight, ref[0].weight)
    x = torch.randn(2, n_in, 32, 32)
    ours.eval(), ref.eval()
    with torch.no_grad(): torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


def test_n_in_without_pretrained_gives_a_fresh_conv():
    body = sr.create_body(sr.resnet18, n_in=1, pretrained=False)
    assert body[0].in_channels == 1 and body[0].weight.shape == (64, 1, 7, 7)
    bound = 1 / (1 * 7 * 7) ** 0.5  # PyTorch's default init, as fastai's new nn.Conv2d
    assert body[0].weight.abs().max() <= bound and body[0].weight.std() > bound / 4


def test_indexing_and_slicing(pair18):
    ours, ref = pair18
    assert repr(ours.encoder[:6]) == repr(ref.encoder[:6])
    assert type(ours.encoder[:6]) is sr.Sequential
    assert repr(ours.encoder[-1]) == repr(ref.encoder[-1])
    x = torch.randn(2, 3, 32, 32)
    ours.eval(), ref.eval()
    with torch.no_grad(): torch.testing.assert_close(ours.encoder[:6](x), ref.encoder[:6](x), atol=1e-5, rtol=0)


def test_forward_hooks_fire_and_outputs_stay(pair18):
    ours, ref = pair18
    ours.eval(), ref.eval()
    x1, x2 = images()
    with torch.no_grad():
        expected = ref(x1, x2)
        seen = []
        h = ours.encoder[4][0].conv1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        torch.testing.assert_close(ours(x1, x2), expected, atol=1e-5, rtol=0)
        h.remove()
        assert seen == [torch.Size([2, 64, 8, 8])] * 2
        with hook_outputs([ours.encoder[-1], ours.head[1]]) as hooks:
            ours(x1, x2)
        assert hooks.stored[0].shape == (2, 512, 1, 1) and hooks.stored[1].shape == (2, 2048)
        seen.clear()
        ours(x1, x2)
        assert seen == []  # removed hooks are gone; the one-call path is back


def test_structural_edits_are_honoured(pair18):
    ours, ref = pair18
    ours.eval(), ref.eval()
    ours.head[3] = nn.Identity()  # a foreign module: runs in Python, the rest in Rust
    ref.head[3] = nn.Identity()
    ours.encoder[4][0].relu = sr.ReLU(inplace=False)
    ref.encoder[4][0].relu = nn.ReLU(inplace=False)
    x1, x2 = images()
    with torch.no_grad(): torch.testing.assert_close(ours(x1, x2), ref(x1, x2), atol=1e-5, rtol=0)
    ours.head[4].bias = nn.Parameter(torch.zeros(512))  # a setting change (bias) is seen too
    ref.head[4].bias = nn.Parameter(torch.zeros(512))
    with torch.no_grad(): torch.testing.assert_close(ours(x1, x2), ref(x1, x2), atol=1e-5, rtol=0)


def test_deepcopy_and_pickle_keep_computing(pair18, tmp_path):
    ours, _ = pair18
    ours.eval()
    x1, x2 = images()
    with torch.no_grad():
        expected = ours(x1, x2)
        torch.testing.assert_close(copy.deepcopy(ours)(x1, x2), expected, atol=0, rtol=0)
        torch.save(ours, tmp_path / 'm.pt')
        back = torch.load(tmp_path / 'm.pt', weights_only=False)
        torch.testing.assert_close(back(x1, x2), expected, atol=0, rtol=0)


def test_siamese_model_is_a_fastai_style_module():
    class Mine(sr.Module):
        def __init__(self, a): self.lin = nn.Linear(a, 2)
    assert isinstance(Mine(3).lin, nn.Linear)
    ours, _ = make_pair('resnet18')
    groups = sr.siamese_splitter(ours)
    assert [len(g) for g in groups] == [len(list(ours.encoder.parameters())), len(list(ours.head.parameters()))]
