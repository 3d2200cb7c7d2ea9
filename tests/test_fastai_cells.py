"fastai 2.8.12's own test cells for layers, create_body and create_head, run on siamese-rs."
import pytest
import torch
from fastai.vision import learner as fl
from fastcore.basics import noop
from torch import nn

import siamese_rs as sr


def test_has_pool_type():
    m = nn.Sequential(nn.AdaptiveAvgPool2d(5), nn.Linear(2, 3), nn.Conv2d(2, 3, 1), nn.MaxPool3d(5))
    assert [bool(sr.has_pool_type(l)) for l in m.children()] == [True, False, False, True]


def _tst():
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.AvgPool2d(1), nn.Linear(3, 4))


def test_create_body_cuts():
    assert len(sr.create_body(_tst())) == 2
    assert len(sr.create_body(_tst(), cut=3)) == 3
    assert len(sr.create_body(_tst(), cut=noop)) == 4
    for n in range(1, 5):
        assert sr.create_body(_tst(), n_in=n)[0].in_channels == n


def test_create_body_matches_fastai_on_a_plain_model():
    ref = fl.create_body(_tst())
    ours = sr.create_body(_tst())
    ours.load_state_dict(ref.state_dict())
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ours(x), ref(x))
    assert repr(ours) == repr(ref)


def test_create_head_cells():
    tst = sr.create_head(5, 10)
    assert len(tst) == 9 and isinstance(tst[2], nn.BatchNorm1d) and isinstance(tst[-1], nn.Linear)
    tst = sr.create_head(5, 10, lin_first=True)
    assert len(tst) == 8 and isinstance(tst[2], nn.Dropout)
    tst = sr.create_head(5, 10, first_bn=False)
    assert len(tst) == 8 and isinstance(tst[2], nn.Dropout)
    assert sr.create_head(5, 10, concat_pool=True)[4].in_features == 10
    assert sr.create_head(5, 10, concat_pool=False)[4].in_features == 5


HEAD_ARGS = [dict(), dict(lin_first=True), dict(first_bn=False), dict(concat_pool=False), dict(pool=False),
             dict(lin_ftrs=[64, 32], ps=[0.1, 0.2, 0.3]), dict(lin_ftrs=[64, 32], ps=0.4), dict(bn_final=True),
             dict(y_range=(-1, 2)), dict(ps=0.), dict(lin_first=True, lin_ftrs=[16], bn_final=True),
             dict(lin_ftrs=[], ps=[0.3, 0.7])]


@pytest.mark.parametrize('kw', HEAD_ARGS)
def test_create_head_equals_fastai(kw):
    ref, ours = fl.create_head(8, 3, **kw), sr.create_head(8, 3, **kw)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for a, b in zip(ours.modules(), ref.modules()):
        if isinstance(b, nn.BatchNorm1d): torch.testing.assert_close(a.bias, b.bias)  # fastai's 1e-3 rule
    ref.load_state_dict(ours.state_dict())
    ours.eval(), ref.eval()
    x = torch.randn(4, 8) if kw.get('pool') is False else torch.randn(4, 8, 3, 3)
    torch.testing.assert_close(ours(x), ref(x))


def test_flatten_cells():
    x = torch.randn(10, 5, 4)
    assert sr.Flatten()(x).shape == (10, 20)
    assert sr.Flatten(full=True)(x).shape == (200,)
    assert repr(sr.Flatten()) == 'Flatten(full=False)'


def test_sigmoid_range_cell():
    x = torch.tensor([-10., 0., 10.])
    out = sr.SigmoidRange(-1, 2)(x)
    torch.testing.assert_close(out, torch.tensor([-1., 0.5, 2.]), atol=2e-4, rtol=0)
    torch.testing.assert_close(out, fl.SigmoidRange(-1, 2)(x), atol=0, rtol=0)
    assert repr(sr.SigmoidRange(-1, 2)) == 'SigmoidRange(low=-1, high=2)'


def test_adaptive_concat_pool_cells():
    x = torch.randn(10, 5, 4, 4)
    y = sr.AdaptiveConcatPool2d()(x)
    assert y.shape == (10, 10, 1, 1)
    torch.testing.assert_close(y[:, :5], torch.amax(x, (2, 3), keepdim=True))
    torch.testing.assert_close(y[:, 5:], x.mean((2, 3), keepdim=True))
    assert sr.AdaptiveConcatPool2d(2)(x).shape == (10, 10, 2, 2)


def test_lin_bn_drop_cells():
    kinds = lambda m: [type(l).__name__ for l in m.children()]  # noqa: E731
    assert kinds(sr.LinBnDrop(10, 20)) == ['BatchNorm1d', 'Linear']
    assert kinds(sr.LinBnDrop(10, 20, p=0.1)) == ['BatchNorm1d', 'Dropout', 'Linear']
    assert kinds(sr.LinBnDrop(10, 20, act=nn.ReLU(), lin_first=True)) == ['Linear', 'ReLU', 'BatchNorm1d']
    tst = sr.LinBnDrop(10, 20, bn=False)
    assert kinds(tst) == ['Linear'] and tst[0].bias is not None
    assert sr.LinBnDrop(10, 20)(torch.randn(4, 10)).shape == (4, 20)
