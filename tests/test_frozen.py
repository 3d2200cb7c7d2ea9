"`sr.freeze`: folded, prepacked (and bfloat16) inference copies against fastai's and torchvision's models."
import copy
import pickle
import warnings

import pytest
import torch
from fastai.vision import learner as fl
from torch import nn

import siamese_rs as sr
from conftest import RefSiamese, make_pair
from siamese_rs import frozen as fz
from test_archs import SMALLEST, ref_fn, size


def rel(a, b): return ((a - b).abs().max() / b.abs().max()).item()


def randomise_bn(model, seed=0):
    "Random running statistics and affine values, so that folding has something to fold"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def family_pair(name):
    "`(ours, ref)`: our Siamese model on `name` and fastai's tutorial model over the reference arch, same weights"
    cut = sr.model_meta[getattr(sr, name)]['cut']
    torch.manual_seed(0)
    body = sr.create_body(getattr(sr, name), cut=cut, pretrained=False)
    with torch.no_grad(): nf = body.eval()(torch.zeros(1, 3, size(name), size(name))).shape[1]
    ours = randomise_bn(sr.SiameseModel(body, sr.create_head(2 * nf, 2))).eval()
    ref = RefSiamese(fl.create_body(ref_fn(name)(), cut=cut), fl.create_head(2 * nf, 2)).eval()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def pair_inputs(name, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = size(name)
    return torch.randn(n, 3, s, s, generator=g), torch.randn(n, 3, s, s, generator=g)


@pytest.mark.parametrize('name', ['resnet34', 'resnet50'] + SMALLEST)
def test_float32_is_within_1e4_of_the_reference(name):
    ours, ref = family_pair(name)
    x1, x2 = pair_inputs(name)
    frozen = sr.freeze(ours)
    with torch.no_grad(): want, feats = ref(x1, x2), ref.encoder(x1)
    assert rel(frozen.encoder(x1), feats) < 1e-4
    assert rel(frozen(x1, x2), want) < 1e-4
    # BatchNorm directly after a convolution is gone; float32 weights stay in PyTorch's layout (faster here).
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    kinds = {type(m).__name__ for m in frozen.encoder.modules()}
    if name.startswith(('resnet', 'xresnet', 'vgg')): assert n_bn == 0
    assert '_PackedConv2d' not in kinds and 'Conv2d' in kinds


@pytest.mark.parametrize('name', ['resnet34', 'resnet50'] + SMALLEST)
def test_small_batches_run_dense_on_weights_packed_for_them(name):
    "One pair (two images): dense channels-last on weights prepacked for that shape, NaN and inf as in PyTorch"
    ours, ref = family_pair(name)
    x1, x2 = pair_inputs(name, n=1)
    frozen = sr.freeze(ours)
    with torch.no_grad(): want = ref(x1, x2)
    assert rel(frozen(x1, x2), want) < 1e-4
    sized = frozen.encoder._sized_plans[(2, *x1.shape[1:])][2]
    assert sized is not None  # it ran that way, checked against the blocked plan once
    assert any(t is not None and t.is_mkldnn for t in sized[1])
    x1[0, 0, 3, 3], x2[0, 1, 5, 5] = float('nan'), float('inf')
    with torch.no_grad(): want = ref(x1, x2)
    got = frozen(x1, x2)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()


def test_small_batch_copies_follow_a_refresh_and_stay_few():
    ours, _ = make_pair('resnet18', ps=0.0)
    randomise_bn(ours)
    frozen = sr.freeze(ours)
    x1, x2 = pair_inputs('resnet18', n=1)
    frozen(x1, x2)
    for p in ours.parameters(): p.data.mul_(1.01)
    frozen.refresh()
    got = frozen(x1, x2)
    with torch.no_grad(): want = ours.eval()(x1, x2)
    assert rel(got, want) < 1e-4
    for n in (1, 2, 3, 4):  # images: a copy of the weights per shape, for the last two shapes only
        frozen.encoder(torch.randn(n, 3, 32, 32))
    assert list(frozen.encoder._sized_plans) == [(3, 3, 32, 32), (4, 3, 32, 32)]
    assert frozen.encoder(torch.randn(5, 3, 32, 32)).shape[0] == 5 and len(frozen.encoder._sized_plans) == 2


@pytest.mark.parametrize('name', ['resnet34'] + SMALLEST)
def test_bfloat16_runs_every_family(name):
    ours, ref = family_pair(name)
    x1, x2 = pair_inputs(name)
    frozen = sr.freeze(ours, dtype=torch.bfloat16)
    with torch.no_grad(): feats = ref.encoder(x1)
    out = frozen.encoder(x1)
    assert out.dtype == torch.float32 and rel(out, feats) < 5e-2
    assert frozen(x1, x2).dtype == torch.float32
    # Convolutions run on weights prepacked once; DenseNet's block ones see dense channels-last tensors
    # and stay unpacked.
    kinds = {type(m).__name__ for m in frozen.encoder.modules()}
    assert fz.native_bfloat16(), 'this test needs a CPU with native bfloat16'
    assert '_PackedConv2d' in kinds and ('Conv2d' not in kinds) == (not name.startswith('densenet'))


@pytest.fixture(scope='module')
def digits():
    "A resnet18 Siamese learner trained briefly on the bundled digits, and its validation pairs"
    from siamese_rs.demo import train
    learn, acc, _ = train('resnet18', size=32, freeze_epochs=1, epochs=2, quiet=True)
    x1, x2, y = zip(*[(a, b, y) for (a, b), y in ((xb[:2], xb[2]) for xb in learn.dls.valid)])
    return learn, torch.cat(x1), torch.cat(x2), torch.cat(y), acc


def test_bfloat16_decides_as_float32_on_the_digits(digits):
    learn, x1, x2, _, acc = digits
    model = learn.model.eval()
    with torch.no_grad(): p32 = model(x1, x2).softmax(-1)[:, 1]
    p16 = sr.freeze(learn, dtype=torch.bfloat16)(x1, x2).softmax(-1)[:, 1]
    # The comparison needs a model that learned (chance is 0.5 on these pairs). Its seeded run gave 0.80-0.82 over
    # seeds (`python bench/training_spread.py --short`), and one seed's number moves with the machine: a wide margin.
    assert acc > 0.65, acc
    # bfloat16 keeps 8 bits of each activation: P(same) moves by about 2e-3 on average here, and by up to
    # ~1e-2 where it is steepest, about as much as under eager `torch.autocast('cpu', torch.bfloat16)`.
    diff = (p16 - p32).abs()
    assert diff.quantile(0.99) < 1e-2 and diff.max() < 2e-2 and diff.mean() < 5e-3
    assert ((p16 >= 0.5) == (p32 >= 0.5)).float().mean() >= 0.99


def test_float32_scores_the_digits_as_the_model(digits):
    learn, x1, x2, _, _ = digits
    with torch.no_grad(): want = learn.model.eval()(x1, x2)
    assert rel(sr.freeze(learn.model)(x1, x2), want) < 1e-4


@pytest.mark.parametrize('change', ['optimizer step', 'p.data', 'p.data =', 'load_state_dict', 'train forward',
                                    'setting', 'module', 'register_buffer', 'list setting in place'])
def test_changes_to_the_source_are_folded_at_refresh(change):
    "A snapshot: the frozen model answers as the source did when frozen, and as it does after `refresh()`"
    ours, ref = make_pair('resnet18', ps=0.0)
    randomise_bn(ours)
    x1, x2 = pair_inputs('resnet18', n=2)
    if change == 'list setting in place': ours.encoder[0].padding = [3, 3]  # as it was, but a list
    frozen = sr.freeze(ours)
    with torch.no_grad(): before = ours.eval()(x1, x2)
    if change == 'optimizer step':
        ours.train()
        opt = torch.optim.SGD(ours.parameters(), lr=0.1)
        ours(x1, x2).sum().backward()
        opt.step()
        ours.eval()
    elif change == 'p.data':  # as fastai's optimisers write
        for p in ours.parameters(): p.data.mul_(1.01)
    elif change == 'load_state_dict':
        other, _ = make_pair('resnet18', ps=0.0, seed=5)
        ours.load_state_dict(other.state_dict())
    elif change == 'train forward':  # BatchNorm's running statistics move
        ours.train()
        with torch.no_grad(): ours(x1 + 1, x2 + 1)
        ours.eval()
    elif change == 'p.data =':  # a new tensor behind the same Parameter
        for p in ours.parameters(): p.data = p.data * 1.01
    elif change == 'setting':
        ours.encoder[1].eps = 0.5
    elif change == 'register_buffer':  # no attribute is set
        bn = ours.encoder[1]
        bn.register_buffer('running_var', bn.running_var * 4)
    elif change == 'list setting in place':  # no attribute is set either
        ours.encoder[0].padding[0] = 1
    else:
        ours.encoder[2] = sr.Identity()  # the ReLU after the stem
    with torch.no_grad(): after = ours.eval()(x1, x2)
    assert rel(after, before) > 1e-3
    assert rel(frozen(x1, x2), before) < 1e-4
    frozen.refresh()
    assert rel(frozen(x1, x2), after) < 1e-4


def test_a_call_never_reads_the_source_and_keeps_its_plan(monkeypatch):
    "No per-call watch: a call reads neither the source's tree nor its tensors, and the body's plan is kept"
    ours, _ = make_pair('resnet18', ps=0.0)
    x1, x2 = pair_inputs('resnet18', n=2)
    frozen = sr.freeze(ours)
    frozen(x1, x2)  # packs weights for this shape: modules of the copy change
    frozen(x1, x2)  # so this call plans once more
    walks, plans = [], []
    monkeypatch.setattr(sr._watch, '_walk', lambda m, f=sr._watch._walk: walks.append(1) or f(m))
    monkeypatch.setattr(fz, '_plan', lambda m, f=fz._plan: plans.append(1) or f(m))
    for _ in range(3): frozen(x1, x2)
    assert not walks and not plans
    frozen.refresh()  # a refresh reads the source and plans again
    frozen(x1, x2)
    assert walks and plans


def test_a_pair_index_of_a_frozen_model_is_stale_after_refresh():
    ours, _ = make_pair('resnet18', ps=0.0)
    frozen = sr.freeze(ours)
    x1, x2 = pair_inputs('resnet18', n=4)
    index = sr.PairIndex(frozen, images=x2)
    with torch.no_grad(): want = ours.eval()(x1[:1].expand(4, -1, -1, -1), x2).softmax(-1)[:, 1]
    assert (index.score(x1[:1])[0] - want).abs().max() < 1e-4
    for p in ours.parameters(): p.data.mul_(1.01)
    assert (index.score(x1[:1])[0] - want).abs().max() < 1e-4  # the frozen model is as it was
    frozen.refresh()
    with pytest.raises(sr.WeightsError, match='rebuild'): index.all_pairs()


def test_nan_and_inf_propagate_as_in_pytorch():
    ours, ref = make_pair('resnet18', ps=0.0)
    x1, x2 = pair_inputs('resnet18', n=2)
    x1[0, 0, 3, 3], x1[1, 1, 5, 5] = float('nan'), float('inf')
    with torch.no_grad(): want = ref.eval()(x1, x2)
    got = sr.freeze(ours)(x1, x2)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()


def test_hooks_and_parametrized_sources_compute_the_same():
    ours, ref = make_pair('resnet18', ps=0.0)
    randomise_bn(ours)
    torch.nn.utils.parametrizations.weight_norm(ours.encoder[0])  # our exact model computes it as PyTorch does
    x1, x2 = pair_inputs('resnet18', n=2)
    frozen = sr.freeze(ours)
    frozen(x1, x2)  # planned without hooks first
    seen = []
    frozen.encoder.body[4].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad(): want = ours.eval()(x1, x2)
    assert rel(frozen(x1, x2), want) < 1e-4 and seen  # with a hook the body runs child by child
    assert len(ours.encoder[0]._forward_hooks) == 0 and not frozen.encoder.body[0]._forward_hooks


def test_a_frozen_body_encodes():
    body = randomise_bn(sr.create_body(sr.resnet18, cut=-2, pretrained=False)).eval()
    x = pair_inputs('resnet18')[0]
    with torch.no_grad(): want = body(x)
    frozen = sr.freeze(body)
    assert rel(frozen(x), want) < 1e-4
    with pytest.raises(sr.ArgumentTypeError, match='one input'): frozen(x, x)


def test_bad_input_names_the_argument():
    ours, _ = make_pair('resnet18', ps=0.0)
    frozen = sr.freeze(ours)
    x1, x2 = pair_inputs('resnet18', n=2)
    with pytest.raises(sr.ArgumentError, match='dtype: expected torch.float32 or torch.bfloat16'):
        sr.freeze(ours, dtype=torch.float16)
    with pytest.raises(sr.ArgumentTypeError, match='model: expected'): sr.freeze('resnet18')
    with pytest.raises(sr.ArgumentTypeError, match='plain PyTorch modules'): sr.freeze(make_pair('resnet18')[1])
    with pytest.raises(sr.ArgumentError, match='inference only'): frozen.train()
    with pytest.raises(sr.DTypeError, match='x1 is float64'): frozen(x1.double(), x2.double())
    with pytest.raises(sr.ShapeError, match='same shape'): frozen(x1, x2[:1])
    with pytest.raises(sr.ArgumentTypeError, match='x2 must be a torch.Tensor'): frozen(x1, 'x2')
    with pytest.raises(sr.ArgumentError, match='requires grad'): frozen(x1.requires_grad_(), x2)
    with pytest.raises(sr.ArgumentTypeError, match='two inputs'): frozen(x2)
    assert frozen(x1.detach(), x2).shape == (2, 2)  # and it still works


def test_without_native_bfloat16_it_warns_and_uses_float32(monkeypatch):
    monkeypatch.setattr(fz, 'native_bfloat16', lambda: False)
    ours, _ = make_pair('resnet18', ps=0.0)
    with pytest.warns(UserWarning, match='no native bfloat16'): frozen = sr.freeze(ours, dtype=torch.bfloat16)
    assert frozen.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        sr.freeze(ours)


def test_state_is_the_sources_and_copies_refold(tmp_path):
    ours, ref = make_pair('resnet18', ps=0.0)
    randomise_bn(ours)
    frozen = sr.freeze(ours)
    x1, x2 = pair_inputs('resnet18', n=2)
    assert list(frozen.state_dict()) == list(ref.state_dict())  # fastai's keys: weights move to and fro
    other, _ = make_pair('resnet18', ps=0.0, seed=3)
    frozen.load_state_dict(other.state_dict())
    with torch.no_grad(): want = other.eval()(x1, x2)
    assert rel(frozen(x1, x2), want) < 1e-4
    for clone in (copy.deepcopy(frozen), pickle.loads(pickle.dumps(frozen))):
        assert clone.source is not ours and rel(clone(x1, x2), want) < 1e-4
    index = sr.PairIndex(frozen, images=x2)
    index.save(tmp_path / 'g.safetensors')
    assert torch.equal(sr.PairIndex.load(tmp_path / 'g.safetensors', frozen).all_pairs(), index.all_pairs())
