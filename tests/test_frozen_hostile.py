"""`sr.freeze` where it could silently differ from its source: hooks, BatchNorm on batch statistics, the
snapshot contract (edits the source sees are not the frozen model's until `refresh()`), NaN weights, empty
batches and inference mode. The truth is the source (or fastai's reference) in eval, computed here."""
import copy
import pickle

import pytest
import torch
from torch import nn

import siamese_rs as sr
from conftest import images, make_pair
from siamese_rs import frozen as fz
from test_frozen import pair_inputs, randomise_bn, rel

DTYPES = [torch.float32] + ([torch.bfloat16] if fz.native_bfloat16() else [])
# bfloat16 keeps 8 bits of each activation (test_frozen.py: features within 5e-2 of float32).
TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


def source(seed=0):
    ours, ref = make_pair('resnet18', ps=0.0, seed=seed)
    randomise_bn(ours)
    ref.load_state_dict(ours.state_dict())
    return ours.eval(), ref.eval()


def want(model, x1, x2=None):
    with torch.no_grad(): return model.eval()(x1) if x2 is None else model.eval()(x1, x2)


# Hooks: the frozen copies have none, so a source with forward hooks is refused, naming module and hook.
def scale(m, args, out): return out * 2


def shift(m, args): return (args[0] + 1,)


HOOKS = {'forward on a conv': ('encoder.4.0.conv1', 'register_forward_hook', scale),
         'pre-forward on a block': ('encoder.5', 'register_forward_pre_hook', shift),
         'forward on the encoder': ('encoder', 'register_forward_hook', scale),
         'forward on the head': ('head.1', 'register_forward_hook', scale),
         'pre-forward on the head': ('head', 'register_forward_pre_hook', shift),
         'forward on the model': ('', 'register_forward_hook', scale)}


@pytest.mark.parametrize('case', list(HOOKS))
@pytest.mark.parametrize('dtype', DTYPES)
def test_a_source_with_a_forward_hook_is_refused_naming_it(case, dtype):
    ours, _ = source()
    name, register, hook = HOOKS[case]
    getattr(ours.get_submodule(name), register)(hook)
    with pytest.raises(sr.ArgumentError, match=rf"module '{name}' .*{hook.__name__}"):
        sr.freeze(ours, dtype=dtype)


def test_a_hook_on_a_learner_model_is_refused_and_removing_it_freezes():
    ours, ref = source()
    handle = ours.encoder[0].register_forward_pre_hook(shift)
    with pytest.raises(sr.ArgumentError, match='encoder.0'): sr.freeze(ours)
    handle.remove()
    x1, x2 = pair_inputs('resnet18', n=2)
    assert rel(sr.freeze(ours)(x1, x2), want(ref, x1, x2)) < 1e-4


@pytest.mark.parametrize('case', ['forward on a conv', 'pre-forward on the head'])
def test_a_hook_added_after_freezing_is_refused_at_refresh(case):
    ours, ref = source()
    x1, x2 = pair_inputs('resnet18', n=2)
    frozen = sr.freeze(ours)
    before = want(ref, x1, x2)
    name, register, hook = HOOKS[case]
    handle = getattr(ours.get_submodule(name), register)(hook)
    assert rel(frozen(x1, x2), before) < 1e-4  # the snapshot it was frozen with
    with pytest.raises(sr.ArgumentError, match=rf"module '{name}'"): frozen.refresh()
    assert rel(frozen(x1, x2), before) < 1e-4  # a refused refresh leaves it as it was
    handle.remove()
    frozen.refresh()
    assert rel(frozen(x1, x2), before) < 1e-4


# BatchNorm on batch statistics in eval: fastai's SiameseModel encodes x1 and x2 in separate calls.
def batch_statistics(model, how):
    for m in model.encoder.modules():
        if isinstance(m, nn.BatchNorm2d):
            if how == 'tent':  # test-time adaptation: statistics of the batch at hand, also in eval
                m.track_running_stats, m.running_mean, m.running_var = False, None, None
            elif how == 'running_mean None':
                m.running_mean, m.running_var = None, None
            else:  # track_running_stats=False with its buffers kept: PyTorch's eval uses the buffers
                m.track_running_stats = False
    return model


@pytest.mark.parametrize('how', ['tent', 'running_mean None', 'flag only'])
@pytest.mark.parametrize('n', [1, 2, 3, 8])
@pytest.mark.parametrize('dtype', DTYPES)
def test_batchnorm_on_batch_statistics_is_per_side(how, n, dtype):
    ours, ref = source()
    batch_statistics(ours, how), batch_statistics(ref, how)
    x1, x2 = images(n, size=64)  # 2x2 at the last BatchNorm: statistics of one image exist
    x2 = x2 * 3 + 1  # sides with different statistics
    frozen = sr.freeze(ours, dtype=dtype)
    got = frozen(x1, x2)
    with torch.no_grad(): each = frozen.head(torch.cat([frozen.encoder(x1), frozen.encoder(x2)], dim=1))
    assert rel(got, each) < 1e-5  # each side encoded as if alone
    if dtype == torch.float32:  # (bfloat16's rounding grows through statistics of a few values)
        assert rel(got, want(ref, x1, x2)) < 1e-4 and rel(frozen.encoder(x2), want(ref.encoder, x2)) < 1e-4


# The snapshot contract: the frozen model answers with the weights it was frozen (or refreshed, or loaded)
# with, whatever happens to the source, until `refresh()`.
def edit(ours, change, x1, x2):
    big = ours.encoder[7][1].conv2  # 512*512*9 values: far more than any sample
    if change == 'optimizer step':
        ours.train()
        opt = torch.optim.SGD(ours.parameters(), lr=0.1)
        ours(x1, x2).sum().backward()
        opt.step()
    elif change == 'p.data':  # as fastai's optimisers write
        for p in ours.parameters(): p.data.mul_(1.01)
    elif change == 'p.data =':
        for p in ours.parameters(): p.data = p.data * 1.01
    elif change == 'load_state_dict':
        ours.load_state_dict(make_pair('resnet18', ps=0.0, seed=5)[0].state_dict())
    elif change == 'load_state_dict(assign=True)':  # buffers and parameters swapped, not copied
        ours.load_state_dict(randomise_bn(make_pair('resnet18', ps=0.0, seed=5)[0]).state_dict(), assign=True)
    elif change == 'train forward':
        ours.train()
        with torch.no_grad(): ours(x1 + 1, x2 + 1)
    elif change == 'setting':
        ours.encoder[1].eps = 0.5
    elif change == 'module':
        ours.encoder[2] = sr.Identity()
    elif change == 'register_buffer':
        ours.encoder[1].register_buffer('running_var', ours.encoder[1].running_var * 4)
    elif change == '_parameters swap':  # as accelerate's set_module_tensor_to_device writes
        big._parameters['weight'] = nn.Parameter(big.weight.detach() * 3)
    elif change == '_buffers swap':
        ours.encoder[1]._buffers['running_var'] = ours.encoder[1].running_var * 9
    elif change == 'one value through .data':
        big.weight.data[7, 100, 1, 1] += 1e3
    elif change == 'one value through numpy':
        big.weight.detach().numpy()[300, 11, 1, 1] += 1e3
    ours.eval()


CHANGES = ['optimizer step', 'p.data', 'p.data =', 'load_state_dict', 'load_state_dict(assign=True)', 'train forward',
           'setting', 'module', 'register_buffer', '_parameters swap', '_buffers swap', 'one value through .data',
           'one value through numpy']


@pytest.mark.parametrize('change', CHANGES)
def test_the_frozen_model_keeps_its_snapshot_until_refresh(change):
    ours, ref = source()
    x1, x2 = pair_inputs('resnet18', n=2)
    frozen = sr.freeze(ours)
    before = want(ref, x1, x2)
    edit(ours, change, x1, x2)
    after = want(ours, x1, x2)
    assert rel(after, before) > 1e-3, 'the edit must change what the source computes'
    assert rel(frozen(x1, x2), before) < 1e-4  # not silently the source's new weights
    rebuilt = copy.deepcopy(ref)
    rebuilt.load_state_dict(frozen.state_dict())  # and its state is the one it answers with
    assert rel(want(rebuilt, x1, x2), before) < 1e-4
    frozen.refresh()
    assert rel(frozen(x1, x2), after) < 1e-4
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(), ours.state_dict().values()))


@pytest.mark.parametrize('change', ['_parameters swap', 'one value through numpy', 'p.data'])
def test_copies_pickles_and_exports_carry_the_snapshot(change, tmp_path):
    ours, ref = source()
    x1, x2 = pair_inputs('resnet18', n=2)
    frozen = sr.freeze(ours)
    before = want(ref, x1, x2)
    edit(ours, change, x1, x2)
    for clone in (copy.deepcopy(frozen), pickle.loads(pickle.dumps(frozen))):
        assert rel(clone(x1, x2), before) < 1e-4
    loaded = sr.load_model(sr.export_model(frozen, tmp_path / 'frozen.safetensors'))
    assert rel(want(loaded, x1, x2), before) < 1e-4


def test_a_source_edited_while_refresh_copies_it_is_not_half_taken(monkeypatch):
    "An edit that lands after refresh has read the source is not in the frozen model, nor in its state"
    ours, ref = source()
    x1, x2 = pair_inputs('resnet18', n=2)
    frozen = sr.freeze(ours)
    for p in ours.parameters(): p.data.mul_(1.01)
    fresh = want(ours, x1, x2)
    original = fz._fold_and_pack

    def racing(body, dtype):  # another thread steps the source while refresh folds
        out = original(body, dtype)
        for p in ours.parameters(): p.data.mul_(1.5)
        return out
    monkeypatch.setattr(fz, '_fold_and_pack', racing)
    frozen.refresh()
    monkeypatch.setattr(fz, '_fold_and_pack', original)
    got = frozen(x1, x2)
    rebuilt = copy.deepcopy(ref)
    rebuilt.load_state_dict(frozen.state_dict())
    assert rel(got, want(rebuilt, x1, x2)) < 1e-4 and rel(got, fresh) < 1e-4
    frozen.refresh()  # the edit is taken by the next refresh, as by the first call after it
    assert rel(frozen(x1, x2), want(ours, x1, x2)) < 1e-4


def test_a_pair_index_of_a_frozen_model_follows_the_frozen_model():
    ours, _ = source()
    frozen = sr.freeze(ours)
    x1, x2 = pair_inputs('resnet18', n=4)
    index = sr.PairIndex(frozen, images=x2)
    p = want(ours, x1[:1].expand(4, -1, -1, -1), x2).softmax(-1)[:, 1]
    for q in ours.parameters(): q.data.mul_(1.01)
    assert (index.score(x1[:1])[0] - p).abs().max() < 1e-4  # the frozen model did not change
    frozen.refresh()
    with pytest.raises(sr.WeightsError, match='rebuild'): index.all_pairs()


# Where PyTorch answers, so must a frozen model.
@pytest.mark.parametrize('n', [1, 2, 3, 8])
@pytest.mark.parametrize('where', ['conv weight', 'bn running_var', 'head weight'])
def test_a_nan_weight_answers_nan_as_pytorch(n, where):
    ours, ref = source()
    with torch.no_grad():
        t = {'conv weight': ours.encoder[4][0].conv1.weight, 'bn running_var': ours.encoder[6][1].bn2.running_var,
             'head weight': ours.head[-1].weight}[where]
        t.view(-1)[3] = float('nan')
    ref.load_state_dict(ours.state_dict())
    x1, x2 = pair_inputs('resnet18', n=n)
    got, expected = sr.freeze(ours)(x1, x2), want(ref, x1, x2)
    assert torch.equal(got.isnan(), expected.isnan()) and expected.isnan().any()
    finite = ~expected.isnan()
    assert torch.allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-4)


def outcome(fn, *xs):
    "`fn(*xs)`'s shape, or the message of the RuntimeError it raises"
    try:
        with torch.no_grad(): return tuple(fn(*xs).shape)
    except RuntimeError as e: return str(e).split('\n')[0]


@pytest.mark.parametrize('dtype', DTYPES)
def test_an_empty_batch_answers_as_pytorch(dtype):
    "Encoders answer an empty batch; fastai's head refuses one (its Flatten views (0, -1)), and so does ours"
    ours, ref = source()
    x1, x2 = pair_inputs('resnet18', n=0)
    frozen = sr.freeze(ours, dtype=dtype)
    assert outcome(frozen.encoder, x1) == outcome(ref.encoder, x1) == (0, 512, 1, 1)
    assert outcome(sr.freeze(ours.encoder, dtype=dtype), x1) == (0, 512, 1, 1)
    expected = outcome(ref, x1, x2)
    assert outcome(frozen, x1, x2) == expected
    if isinstance(expected, str):
        with pytest.raises(sr.SiameseError): frozen(x1, x2)  # a clear error of ours, as the exact model's
    x1, x2 = pair_inputs('resnet18', n=2)
    assert rel(frozen(x1, x2), want(ref, x1, x2)) < TOL[dtype]  # and it still works


@pytest.mark.parametrize('dtype', DTYPES)
def test_a_model_frozen_in_inference_mode_serves_a_pair_index(dtype):
    ours, ref = source()
    x1, x2 = pair_inputs('resnet18', n=4)
    with torch.inference_mode():
        frozen = sr.freeze(ours, dtype=dtype)
        inside = frozen(x1, x2)
    index = sr.PairIndex(frozen, images=x2)
    p = want(ref, x1[:1].expand(4, -1, -1, -1), x2).softmax(-1)[:, 1]
    assert (index.score(x1[:1])[0] - p).abs().max() < 10 * TOL[dtype]
    assert rel(inside, want(ref, x1, x2)) < TOL[dtype]
    frozen.refresh()
    assert rel(frozen(x1, x2), want(ref, x1, x2)) < TOL[dtype]

