"""`PairIndex`: every score equals `model(query, image).softmax(-1)[:, 1]` computed here, for every head
`create_head` builds and every architecture family, with random BatchNorm statistics so folding is
exercised; the streamed, sharded and saved forms give the same numbers; bad input gets clear errors."""
import threading
import warnings

import pytest
import torch
from fastai.data.transforms import get_image_files
from torch import nn

import siamese_rs as sr
from conftest import make_pair
from siamese_rs.data import _as_batch
from siamese_rs.demo import siamese_learner

TOL = 1e-5


def imgs(n, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomize_bn(model, seed=0, size=32):
    "BatchNorm statistics near the data's but randomly off, so that folding them matters; the head's from eval features"
    g = torch.Generator().manual_seed(seed)
    calibrate(model, model, g, size, seed)
    calibrate(model, model.head, g, size, seed)  # after the encoder's statistics moved, so the head does not saturate
    return model.eval()


def calibrate(model, part, g, size, seed):
    "Running statistics of `part`'s BatchNorms from a batch (`part` in train mode), then moved at random"
    bns = [m for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    moms = [m.momentum for m in bns]
    for m in bns: m.momentum = 1.0
    model.eval()
    with torch.no_grad(): part.train(), model(imgs(8, size, seed=seed + 100), imgs(8, size, seed=seed + 200))
    with torch.no_grad():
        for m, mom in zip(bns, moms):
            m.momentum, n = mom, m.num_features
            m.running_mean.add_(torch.randn(n, generator=g) * 0.2 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(n, generator=g) * 0.7 + 0.7)
            if m.weight is not None: m.weight.copy_(1 + torch.randn(n, generator=g) * 0.2)
            if m.bias is not None: m.bias.copy_(torch.randn(n, generator=g) * 0.2)


def siamese(arch='resnet18', seed=0, size=32, n_out=2, flat=False, **head):
    "A Siamese model on `arch` with `create_head(2*nf, n_out, **head)`, random BatchNorm statistics, in eval"
    torch.manual_seed(seed)
    fn = getattr(sr, arch)
    enc = sr.create_body(fn, cut=sr.model_meta[fn]['cut'], pretrained=False)
    if flat: enc = sr.Sequential(enc, sr.AdaptiveAvgPool2d(1), sr.Flatten())
    with torch.no_grad(): nf = enc.eval()(torch.zeros(1, 3, size, size)).shape[1]
    return moderate(randomize_bn(sr.SiameseModel(enc, sr.create_head(2 * nf, n_out, **head)), seed, size), size)


@torch.no_grad()
def moderate(model, size=32):
    """Logits of a trained model's size (std 1.5 around 0), scaling the head's last affine layer: then P(same) spreads
    over (0, 1), and float32 itself (the reference's two logits) is accurate to far better than the tolerance"""
    last = [m for m in model.head.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))][-1]
    z = model.eval()(imgs(8, size, seed=300), imgs(8, size, seed=301))
    k = 1.5 / z.std().clamp_min(1e-6)
    last.weight.mul_(k)
    if last.bias is not None: last.bias.mul_(k).sub_(z.mean(0) * k)
    return model


@torch.no_grad()
def reference(model, q, g):
    "P(same) of `model(q[i], g[j])` for every pair, computed with the model itself"
    return torch.stack([model(q[i:i + 1].expand(len(g), *q.shape[1:]), g).softmax(-1)[:, 1] for i in range(len(q))])


def check_exact(model, q, g):
    index = sr.PairIndex(model, g)
    want = reference(model, q, g)
    assert want.std() > 0.03, 'the reference must spread, or the comparison could not fail'
    torch.testing.assert_close(index.score(q), want, atol=TOL, rtol=0)
    return index


HEADS = [
    dict(), dict(concat_pool=False), dict(lin_ftrs=[]), dict(lin_ftrs=[512]), dict(lin_ftrs=[64, 32]),
    dict(lin_first=True), dict(lin_first=True, lin_ftrs=[64, 32]), dict(bn_final=True), dict(y_range=(-1.5, 2.5)),
    dict(bn_final=True, y_range=(0, 3), lin_ftrs=[]), dict(first_bn=False), dict(first_bn=False, lin_ftrs=[]),
    dict(ps=0.), dict(ps=[0.1, 0.3]), dict(ps=0.9, lin_ftrs=[128, 64, 32]), dict(n_out=3), dict(n_out=5, lin_ftrs=[]),
    dict(n_out=3, y_range=(-1, 1)), dict(pool=False, flat=True), dict(pool=False, flat=True, first_bn=False, lin_ftrs=[]),
]


@pytest.mark.parametrize('head', HEADS, ids=lambda h: ','.join(f'{k}={v}' for k, v in h.items()) or 'default')
def test_every_head_is_exact(head):
    model = siamese(**head)
    index = check_exact(model, imgs(3, seed=2), imgs(12))
    assert index._stage.kind == 'kernel'


@pytest.mark.parametrize('arch', ['xresnet18', 'densenet121', 'vgg11_bn', 'squeezenet1_1', 'alexnet', 'resnet50'])
@pytest.mark.parametrize('head', [dict(), dict(lin_ftrs=[64], lin_first=True, bn_final=True)], ids=['default', 'other'])
def test_every_family_is_exact(arch, head):
    size = 64 if arch == 'alexnet' else 32
    check_exact(siamese(arch, size=size, **head), imgs(2, size, seed=2), imgs(9, size))


def test_equals_the_fastai_reference_model():
    "Against fastai's own pure-PyTorch model with the same weights, not only against ours"
    ours, ref = make_pair('resnet18')
    moderate(randomize_bn(ours))
    ref.load_state_dict(ours.state_dict())
    q, g = imgs(4, seed=5), imgs(17)
    torch.testing.assert_close(sr.PairIndex(ours, g).score(q), reference(ref.eval(), q, g), atol=TOL, rtol=0)


@pytest.fixture(scope='module')
def model(): return siamese()


@pytest.fixture(scope='module')
def gallery(): return imgs(24, seed=3)


@pytest.fixture(scope='module')
def index(model, gallery): return sr.PairIndex(model, gallery)


def test_all_pairs_matches_and_topk_agree(model, index, gallery):
    m = index.all_pairs()
    torch.testing.assert_close(m, reference(model, gallery, gallery), atol=TOL, rtol=0)
    torch.testing.assert_close(index.score(gallery[7:9]), m[7:9], atol=TOL, rtol=0)
    thr = float(m.median())
    pairs, p = index.matches(thr)
    keep = (m >= thr) & ~torch.eye(len(m), dtype=torch.bool)
    assert torch.equal(pairs, keep.nonzero()) and torch.equal(p, m[keep])
    assert len(index.matches(0.)[0]) == 24 * 23 and len(index.matches(1.)[0]) == int((m == 1).sum() - m.diag().eq(1).sum())
    vals, idx = index.topk(gallery[:3], 5)
    assert vals.shape == idx.shape == (3, 5) and torch.equal(vals, m[:3].topk(5, dim=1).values)
    assert torch.equal(m[:3].gather(1, idx), vals) and (vals[:, :-1] >= vals[:, 1:]).all()


def test_add_in_steps_equals_one_build(model, index, gallery):
    steps = sr.PairIndex(model).add(gallery[:13]).add(gallery[13:])
    assert len(steps) == len(index) == 24
    assert torch.equal(steps.all_pairs(), index.all_pairs())


def test_threads_do_not_change_a_score(index, gallery):
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = index.all_pairs()
        torch.set_num_threads(2)
        assert torch.equal(index.all_pairs(), one)
    finally: torch.set_num_threads(n)
    results = [None] * 3
    def work(i): results[i] = index.score(gallery[:10])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads: t.start()
    for t in threads: t.join(timeout=120)
    assert all(torch.equal(r, one[:10]) for r in results)


def test_bfloat16_storage_halves_memory(model, index, gallery):
    half = sr.PairIndex(model, gallery, dtype=torch.bfloat16)
    assert half._a.dtype == torch.bfloat16 and half._a.element_size() * 2 == index._a.element_size()
    torch.testing.assert_close(half.all_pairs(), index.all_pairs(), atol=2e-2, rtol=0)


def test_nan_propagates_as_in_pytorch(model, index, gallery):
    q = imgs(2, seed=9)
    q[0, 0, 3, 3] = float('nan')
    got, want = index.score(q), reference(model, q, gallery)
    assert got[0].isnan().all() and want[0].isnan().all()
    torch.testing.assert_close(got[1], want[1], atol=TOL, rtol=0)


class Swish(nn.Module):
    "A user's own activation: the pair kernel does not know it"
    def forward(self, x): return x * torch.sigmoid(x)


class MyPool(nn.Module):
    "A user's own pooling"
    def forward(self, x): return torch.cat([x.amax((2, 3)), x.mean((2, 3))], 1)[..., None, None]


def user_tail(m): m.head[5] = Swish()
def user_pool(m): m.head[0] = MyPool()
def hooked(m): m.head[4].register_forward_hook(lambda mod, i, o: o * 1.5)


@pytest.mark.parametrize('edit,kind', [(user_tail, 'tail'), (user_pool, 'head'), (hooked, 'head')])
def test_heads_it_cannot_split_fall_back_with_one_warning(edit, kind):
    model = siamese(seed=3)
    edit(model)
    g, q = imgs(12), imgs(3, seed=2)
    with pytest.warns(UserWarning, match='cannot be split exactly') as record:
        index = sr.PairIndex(model, g)
        index.add(imgs(2, seed=7))
        index.score(q)
    assert len([w for w in record if 'cannot be split' in str(w.message)]) == 1 and index._stage.kind == kind
    g = torch.cat([g, imgs(2, seed=7)])
    torch.testing.assert_close(index.score(q), reference(model, q, g), atol=TOL, rtol=0)
    pairs, p = index.matches(0.5)
    m = index.all_pairs()
    assert torch.equal(pairs, ((m >= 0.5) & ~torch.eye(len(m), dtype=torch.bool)).nonzero())


def fastai_sgd_step(m):
    "What fastai's optimisers do: write through `p.data`, which leaves version counters alone"
    for p in m.parameters(): p.data.add_(torch.randn_like(p) * 1e-3)


def train_forward(m):
    m.train()
    m(imgs(4), imgs(4, seed=2))
    m.eval()


def other_weights(m): m.load_state_dict(siamese(seed=11, bn_final=True).state_dict())
def new_module(m): m.head[5] = nn.ReLU()
def new_setting(m): m.head[-1].eps = 0.5
def one_value(m): m.head[8].weight.data[1, 3] += 1.0


def data_mul(m): m.head[4].weight.data.mul_(1.01)
def data_assigned(m): m.head[4].weight.data = m.head[4].weight.data * 1.01


def no_grad_slice(m):
    with torch.no_grad(): m.head[4].weight[300:] += 1


def data_column(m): m.head[4].weight.data[:, 1] = 0  # one input feature ablated: a column, strided in memory
def encoder_value(m): m.encoder[4][0].conv1.weight.data.view(-1)[12345] += 0.5
def numpy_value(m): m.head[4].weight.detach().numpy()[7, 3] += 1.0
def encoder_setting(m): m.encoder[1].eps = 0.3
def head_running_stat(m): m.head[6].running_var.data[5] *= 2


def torch_optimizer_step(m):
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m.train()
    m(imgs(4), imgs(4, seed=2)).sum().backward()
    opt.step()
    m.eval()


@pytest.mark.parametrize('change', [fastai_sgd_step, train_forward, other_weights, new_module, new_setting, one_value,
                                    data_mul, data_assigned, no_grad_slice, data_column, encoder_value, numpy_value,
                                    encoder_setting, head_running_stat, torch_optimizer_step])
def test_changed_weights_raise_and_rebuilding_fixes(change):
    model = siamese(seed=4, bn_final=True)
    g = imgs(8)
    index = sr.PairIndex(model, g)
    index.score(imgs(2))
    change(model)
    for call in (lambda: index.score(imgs(2)), index.all_pairs, lambda: index.matches(0.5), lambda: index.add(imgs(1))):
        with pytest.raises(sr.WeightsError, match='rebuild the index'): call()
    torch.testing.assert_close(sr.PairIndex(model, g).score(imgs(2)), reference(model, imgs(2), g), atol=TOL, rtol=0)


def test_a_plain_tensor_weight_is_watched():
    "A weight read by name that is neither a parameter nor a buffer (the core supports them) is watched too"
    model = siamese(seed=4)
    lin = model.head[8]
    w = lin.weight.detach().clone()
    del lin.weight
    lin.weight = w
    g, q = imgs(8), imgs(2, seed=2)
    index = sr.PairIndex(model, g)
    torch.testing.assert_close(index.score(q), reference(model, q, g), atol=TOL, rtol=0)
    w[0, 1] += 1.0
    with pytest.raises(sr.WeightsError, match='rebuild the index'): index.score(q)
    lin.weight = w.clone()
    with pytest.raises(sr.WeightsError, match='rebuild the index'): index.score(q)


def test_save_and_load(model, index, gallery, tmp_path):
    index.save(tmp_path / 'g.safetensors')
    loaded = sr.PairIndex.load(tmp_path / 'g.safetensors', model)
    assert len(loaded) == 24 and torch.equal(loaded.all_pairs(), index.all_pairs())
    assert torch.equal(loaded.score(imgs(2)), index.score(imgs(2)))
    half = sr.PairIndex(model, gallery[:5], dtype=torch.bfloat16)
    half.save(tmp_path / 'h.safetensors')
    assert torch.equal(sr.PairIndex.load(tmp_path / 'h.safetensors', model).all_pairs(), half.all_pairs())


@pytest.mark.parametrize('other', [lambda: siamese(seed=1), lambda: siamese(lin_ftrs=[64]), lambda: siamese('xresnet18')],
                         ids=['weights', 'head', 'architecture'])
def test_loading_with_another_model_is_an_error(index, tmp_path, other):
    index.save(tmp_path / 'g.safetensors')
    with pytest.raises(sr.WeightsError, match='another model'): sr.PairIndex.load(tmp_path / 'g.safetensors', other())


def test_truncated_or_foreign_files_are_errors(model, index, tmp_path):
    index.save(tmp_path / 'g.safetensors')
    data = (tmp_path / 'g.safetensors').read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(sr.WeightsError, match='truncated'): sr.PairIndex.load(tmp_path / 'cut.safetensors', model)
    (tmp_path / 'junk.safetensors').write_bytes(b'not an index at all')
    with pytest.raises(sr.WeightsError, match='header length'): sr.PairIndex.load(tmp_path / 'junk.safetensors', model)
    from safetensors.torch import save_file
    save_file({'x': torch.zeros(2)}, tmp_path / 'w.safetensors')
    with pytest.raises(sr.WeightsError, match='not a PairIndex file'): sr.PairIndex.load(tmp_path / 'w.safetensors', model)
    with pytest.raises(sr.WeightsNotFoundError, match='no PairIndex file'): sr.PairIndex.load(tmp_path / 'none', model)


def test_bad_input_names_the_argument(model, index):
    empty = sr.PairIndex(model)
    for call in (lambda: empty.score(imgs(1)), empty.all_pairs, lambda: empty.matches(0.5), lambda: empty.topk(imgs(1), 1),
                 lambda: empty.save('x')):
        with pytest.raises(sr.ArgumentError, match='empty; add images first'): call()
    with pytest.raises(sr.ShapeError, match=r'queries: expected images of shape \(3, 32, 32\).*got \(3, 48, 48\)'):
        index.score(imgs(2, 48))
    with pytest.raises(sr.DTypeError, match='queries: expected float32 .* got float64'): index.score(imgs(2).double())
    with pytest.raises(sr.ShapeError, match='images: expected images of shape'): sr.PairIndex(model, imgs(2)).add(imgs(1, 16))
    with pytest.raises(sr.ShapeError, match=r'queries: expected a batch'): index.score(torch.randn(3, 32, 32))
    for k in (0, -1, 25):
        with pytest.raises(sr.ArgumentError, match=r'k: expected an int from 1 to the number of indexed images \(24\)'):
            index.topk(imgs(1), k)
    for k in (2.5, '3', True):
        with pytest.raises(sr.ArgumentTypeError, match='k: expected an int'): index.topk(imgs(1), k)
    for t in (-0.1, 1.5, float('nan')):
        with pytest.raises(sr.ArgumentError, match=r'threshold: expected a probability in \[0, 1\]'): index.matches(t)
    with pytest.raises(sr.ArgumentTypeError, match='threshold'): index.matches('0.5')
    with pytest.raises(sr.ArgumentError, match='dtype: expected torch.float32 or torch.bfloat16'):
        sr.PairIndex(model, dtype=torch.float16)
    with pytest.raises(sr.ArgumentError, match=r'softmax\(-1\)\[:, 1\].*needs 2 or more'): sr.PairIndex(siamese(n_out=1), imgs(2))
    with pytest.raises(sr.ArgumentTypeError, match='model: expected a Learner or a SiameseModel'): sr.PairIndex(nn.Linear(2, 2))
    with pytest.raises(sr.ArgumentError, match='distributed: expected an initialised process group'):
        index.matches(0.5, distributed=True)
    assert len(index) == 24 and torch.equal(index.score(imgs(1)), index.score(imgs(1)))  # still fine


def test_files_through_a_learner():
    files = sorted(get_image_files(sr.digits_path()))[::90]
    learn = siamese_learner(sr.siamese_dataloaders(files, size=16, bs=8), 'resnet18')
    moderate(randomize_bn(learn.model, size=16), size=16)
    index = sr.PairIndex(learn, files[:12])
    assert len(index) == 12
    m = index.all_pairs()
    x = _as_batch(files[:12], learn.dls, 'images')
    torch.testing.assert_close(m, reference(learn.model.eval(), x, x), atol=TOL, rtol=0)
    torch.testing.assert_close(index.score(files[3]), m[3:4], atol=TOL, rtol=0)  # a batch of 1 encodes differently
    torch.testing.assert_close(sr.score_pairs(learn, files[:12]), m, atol=0, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert torch.equal(sr.score_pairs(learn, files[:4], files[4:8]), torch.stack([m[k, 4 + k] for k in range(4)]))
