"The core issue's bad inputs: a clear Exception subclass naming what was expected and given; the model keeps working."
import pytest
import torch

import siamese_rs as sr
from conftest import images, make_pair


@pytest.fixture(scope='module')
def model():
    ours, _ = make_pair('resnet34')
    return ours.eval()


CASES = [
    ('channels', lambda m: m(torch.randn(2, 4, 32, 32), torch.randn(2, 4, 32, 32)), sr.ShapeError,
     'expected input with 3 channels, got 4'),
    ('batch', lambda m: m(torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)), sr.ShapeError, 'same shape'),
    ('spatial', lambda m: m(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)), sr.ShapeError, 'x2 [2, 3, 64, 64]'),
    ('ndim', lambda m: m(torch.randn(3, 32, 32), torch.randn(3, 32, 32)), sr.ShapeError, '4-d'),
    ('not a tensor', lambda m: m([[1.0]], torch.randn(2, 3, 32, 32)), sr.ArgumentTypeError,
     'x1 must be a torch.Tensor, got list'),
    ('one input', lambda m: m(torch.randn(2, 3, 32, 32)), TypeError, 'x2'),
]


@pytest.mark.parametrize('name,call,exc,fragment', CASES, ids=[c[0] for c in CASES])
def test_bad_forward_inputs(model, name, call, exc, fragment):
    x1, x2 = images(2, 32)
    with torch.no_grad():
        before = model(x1, x2)
        with pytest.raises(exc, match=fragment.replace('[', r'\[').replace(']', r'\]')) as info:
            call(model)
        assert isinstance(info.value, Exception)
        torch.testing.assert_close(model(x1, x2), before, atol=0, rtol=0)


def test_the_2020_head_idiom_says_which_nf_fits():
    model = sr.SiameseModel(sr.create_body(sr.resnet34, cut=-2, pretrained=False), sr.create_head(512 * 4, 2)).eval()
    with pytest.raises(sr.ShapeError, match=r'create_head\(1024, n_out\)'):
        with torch.no_grad(): model(*images(2, 32))


def test_unknown_arch_and_bad_cut():
    with pytest.raises(sr.UnknownArchError, match='resnet34') as info:
        sr.create_body(lambda pretrained: None)
    assert isinstance(info.value, KeyError)
    with pytest.raises(sr.ArgumentTypeError, match="cut must be None, an int or a function, got str"):
        sr.create_body(sr.resnet18, cut='-2', pretrained=False)
    with pytest.raises(sr.ArgumentError, match='n_in must be a positive'):
        sr.create_body(sr.resnet18, n_in=0, pretrained=False)


def test_bad_head_arguments():
    with pytest.raises(sr.ArgumentError, match='nf must be a positive'): sr.create_head(0, 2)
    with pytest.raises(sr.ArgumentError, match='between 0 and 1, got 1.5'): sr.create_head(8, 2, ps=1.5)
    with pytest.raises(sr.ArgumentTypeError, match='nf must be an int, got str'): sr.create_head('8', 2)


def test_pretrained_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    def offline(*a, **k): raise OSError('no network')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(sr.WeightsNotFoundError, match='resnet34-b627a593.pth') as info:
        sr.create_body(sr.resnet34, cut=-2)
    assert str(tmp_path) in str(info.value) and isinstance(info.value, FileNotFoundError)
