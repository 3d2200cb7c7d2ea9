"Property-based tests: any arguments give fastai's result or a clean exception, never a crash."
import pytest
import torch
from fastai.vision import learner as fl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision import models as tvm

import siamese_rs as sr
from conftest import RefSiamese

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sizes = st.integers(-2, 40)
probs = st.floats(-0.5, 1.5, allow_nan=False)


def outcome(fn):
    "`('ok', value)` or `('error', exception)`; anything that is not an `Exception` propagates"
    try: return 'ok', fn()
    except Exception as e: return 'error', e


def assert_clean(e, ours=True):
    "A clean error: ours (a SiameseError and a builtin), or a builtin one"
    assert isinstance(e, Exception)
    if ours: assert isinstance(e, sr.SiameseError) and type(e).__module__ == 'siamese_rs.exceptions', repr(e)


@SETTINGS
@given(nf=sizes, n_out=sizes, lin_ftrs=st.none() | st.lists(sizes, max_size=3), ps=probs | st.lists(probs, max_size=4),
       pool=st.booleans(), concat_pool=st.booleans(), first_bn=st.booleans(), bn_final=st.booleans(),
       lin_first=st.booleans(), y_range=st.none() | st.tuples(st.floats(-3, 0), st.floats(0.5, 3)))
def test_create_head_matches_fastai_or_fails_cleanly(nf, n_out, lin_ftrs, ps, pool, concat_pool, first_bn, bn_final,
                                                     lin_first, y_range):
    kw = dict(lin_ftrs=lin_ftrs, ps=ps, pool=pool, concat_pool=concat_pool, first_bn=first_bn, bn_final=bn_final,
              lin_first=lin_first, y_range=y_range)
    torch.manual_seed(0)
    kind, ours = outcome(lambda: sr.create_head(nf, n_out, **kw))
    ref_kind, ref = outcome(lambda: fl.create_head(nf, n_out, **kw))
    if kind == 'error':
        assert_clean(ours)
        return
    assert ref_kind == 'ok', f'fastai refused what we accepted: {ref!r}'
    assert repr(ours) == repr(ref)
    ref.load_state_dict(ours.state_dict())
    ours.eval(); ref.eval()
    nf_in = nf * 2 if pool and concat_pool else nf
    x = torch.randn(3, nf, 2, 2) if pool else torch.randn(3, nf_in)
    with torch.no_grad():
        kind, out = outcome(lambda: ours(x))
        ref_kind, ref_out = outcome(lambda: ref(x))
    if kind == 'error':
        assert_clean(out, ours=False)
        assert ref_kind == 'error', f'fastai ran what we refused: {out!r}'
    else:
        assert ref_kind == 'ok'
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope='module')
def body_pair():
    "Our resnet18 body and fastai's with the same weights, cut at -2"
    torch.manual_seed(0)
    ours = sr.create_body(sr.resnet18, cut=-2, pretrained=False).eval()
    ref = fl.create_body(tvm.resnet18(), cut=-2).eval()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@settings(max_examples=15, deadline=None)
@given(n_in=st.integers(-1, 5) | st.sampled_from(['3', 3.0, None]), cut=st.sampled_from([None, -1, -2, -3, 4, 0, 'x', 1.5]))
def test_create_body_matches_fastai_or_fails_cleanly(n_in, cut):
    torch.manual_seed(0)
    kind, ours = outcome(lambda: sr.create_body(sr.resnet18, n_in=n_in, pretrained=False, cut=cut))
    ref_kind, ref = outcome(lambda: fl.create_body(tvm.resnet18(), n_in=n_in, pretrained=False, cut=cut))
    if kind == 'error':
        assert_clean(ours)
        return
    assert ref_kind == 'ok', f'fastai refused what we accepted: {ref!r}'
    assert repr(ours) == repr(ref)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, int(n_in), 24, 24)
    with torch.no_grad(): torch.testing.assert_close(ours.eval()(x), ref.eval()(x), atol=1e-4, rtol=1e-4)


dims = st.integers(0, 3)
@SETTINGS
@given(s1=st.tuples(dims, st.integers(1, 4), st.integers(1, 40), st.integers(1, 40)),
       s2=st.none() | st.tuples(dims, st.integers(1, 4), st.integers(1, 40), st.integers(1, 40)),
       ndim=st.integers(2, 5))
def test_siamese_inputs_match_the_reference_or_fail_cleanly(body_pair, s1, s2, ndim):
    body, ref_body = body_pair
    torch.manual_seed(0)
    head = sr.create_head(1024, 2).eval()
    ref_head = fl.create_head(1024, 2).eval()
    ref_head.load_state_dict(head.state_dict())
    ours, ref = sr.SiameseModel(body, head), RefSiamese(ref_body, ref_head)
    shape1 = (s1 + (2, 2, 2))[:ndim] if ndim >= 4 else s1[-ndim:]
    shape2 = shape1 if s2 is None else ((s2 + (2,))[:ndim] if ndim >= 4 else s2[-ndim:])
    x1, x2 = torch.randn(shape1), torch.randn(shape2)
    with torch.no_grad():
        kind, out = outcome(lambda: ours(x1, x2))
        ref_kind, ref_out = outcome(lambda: ref(x1, x2))
    if kind == 'error':
        assert_clean(out, ours=False)
        assert isinstance(out, sr.SiameseError) or ref_kind == 'error'
        return
    assert ref_kind == 'ok', f'the reference refused what we accepted: {ref_out!r}'
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)


def _poison(x, kind, data):
    if kind is not None:
        idx = tuple(data.draw(st.integers(0, s - 1)) for s in x.shape)
        x[idx] = {'nan': float('nan'), 'inf': float('inf'), '-inf': -float('inf')}[kind]
    return x


def _same_or_both_fail(make_ours, make_ref, x, grad):
    kind, ours = outcome(make_ours)
    ref_kind, ref = outcome(make_ref)
    assert kind == ref_kind, f'ours: {ours!r}, reference: {ref!r}'
    if kind == 'error': return
    ref.load_state_dict(ours.state_dict())
    ours.eval(), ref.eval()
    with torch.set_grad_enabled(grad):
        kind, out = outcome(lambda: ours(x))
        ref_kind, ref_out = outcome(lambda: ref(x))
    assert kind == ref_kind, f'ours: {out!r}, reference: {ref_out!r}'
    if kind == 'ok':
        assert torch.equal(out.isnan(), ref_out.isnan()) and torch.equal(out.isinf(), ref_out.isinf())
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5, equal_nan=True)


@SETTINGS
@given(stride=st.integers(1, 3), padding=st.sampled_from([0, 1, 2, 'same', 'valid']), dilation=st.integers(1, 2),
       padding_mode=st.sampled_from(['zeros', 'reflect', 'circular', 'replicate']), groups=st.sampled_from([1, 2]),
       bias=st.booleans(), poison=st.sampled_from([None, 'nan', 'inf', '-inf']), grad=st.booleans(), data=st.data())
def test_conv_relu_pool_settings_and_non_finite_values_match_pytorch(stride, padding, dilation, padding_mode, groups,
                                                                      bias, poison, grad, data):
    "Any conv setting, then ReLU and max pool (the ops oneDNN's blocked layout would hide NaN in), with NaN or inf"
    kw = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode, groups=groups, bias=bias)
    x = _poison(torch.randn(2, 4, 11, 11), poison, data)
    torch.manual_seed(0)
    _same_or_both_fail(lambda: sr.Sequential(sr.Conv2d(4, 6, 3, **kw), sr.ReLU(), sr.MaxPool2d(2)),
                       lambda: torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, **kw), torch.nn.ReLU(), torch.nn.MaxPool2d(2)),
                       x, grad)


@SETTINGS
@given(k=st.integers(1, 4), stride=st.none() | st.integers(1, 3), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       ceil_mode=st.booleans(), count_include_pad=st.booleans(), divisor_override=st.none() | st.integers(1, 5),
       poison=st.sampled_from([None, 'nan', 'inf', '-inf']), grad=st.booleans(), data=st.data())
def test_pool_settings_and_non_finite_values_match_pytorch(k, stride, padding, dilation, ceil_mode, count_include_pad,
                                                           divisor_override, poison, grad, data):
    x = _poison(torch.randn(2, 3, 9, 9), poison, data)
    mp = dict(kernel_size=k, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    _same_or_both_fail(lambda: sr.MaxPool2d(**mp), lambda: torch.nn.MaxPool2d(**mp), x, grad)
    ap = dict(kernel_size=k, stride=stride, padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
              divisor_override=divisor_override)
    _same_or_both_fail(lambda: sr.AvgPool2d(**ap), lambda: torch.nn.AvgPool2d(**ap), x, grad)
