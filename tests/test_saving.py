"Saving and loading in every way PyTorch and fastai offer reproduces the model's outputs exactly."
import copy
import io
import pickle

import pytest
import torch
from fastai.learner import load_learner

import siamese_rs as sr
from conftest import images
from pairdata import X1, X2, pair_learner, tiny_model


def outputs(model, x1=None, x2=None):
    x1, x2 = (x1, x2) if x1 is not None else images(2, 32)
    model.eval()
    with torch.no_grad(): return model(x1, x2)


@pytest.fixture(scope='module')
def model():
    "A resnet18 Siamese model whose BatchNorm running stats moved off their defaults"
    torch.manual_seed(0)
    m = sr.SiameseModel(sr.create_body(sr.resnet18, cut=-2, pretrained=False), sr.create_head(1024, 2))
    m.train()
    m(*images(4, 32, seed=3))
    return m.eval()


def same(a, b): torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_torch_save_whole_model(model, tmp_path):
    torch.save(model, tmp_path / 'm.pt')
    loaded = torch.load(tmp_path / 'm.pt', weights_only=False)
    assert type(loaded) is sr.SiameseModel and type(loaded.head[4]) is sr.Linear
    same(outputs(loaded), outputs(model))


def test_deepcopy_and_pickle(model):
    want = outputs(model)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        same(outputs(clone), want)
        assert clone.encoder[0].weight.data_ptr() != model.encoder[0].weight.data_ptr()
        with torch.no_grad(): clone.encoder[0].weight.zero_()  # a copy, not a view: the original is untouched
        same(outputs(model), want)


@pytest.mark.parametrize('assign', [False, True])
def test_state_dict_round_trip(model, assign, tmp_path):
    torch.save(model.state_dict(), tmp_path / 'sd.pth')
    other = sr.SiameseModel(sr.create_body(sr.resnet18, cut=-2, pretrained=False), sr.create_head(1024, 2))
    assert not torch.equal(outputs(other), outputs(model))
    other.load_state_dict(torch.load(tmp_path / 'sd.pth', weights_only=True), assign=assign)
    same(outputs(other), outputs(model))
    if assign:  # the loaded tensors replaced the parameters: training still reaches them
        other.train()
        other(*images(2, 32)).sum().backward()
        assert other.encoder[0].weight.grad is not None and other.head[4].weight.grad is not None


def test_load_weights_both_formats(model, tmp_path):
    from safetensors.torch import save_file
    torch.save(model.state_dict(), tmp_path / 'w.pth')
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / 'w.safetensors')
    for name in ('w.pth', 'w.safetensors'):
        other = sr.SiameseModel(sr.create_body(sr.resnet18, cut=-2, pretrained=False), sr.create_head(1024, 2))
        sr.load_weights(other, tmp_path / name)
        same(outputs(other), outputs(model))


@pytest.mark.parametrize('damage', ['truncate', 'corrupt'])
def test_damaged_file_is_a_weights_error_and_changes_nothing(model, damage, tmp_path):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    if damage == 'truncate': data = data[:len(data) - 1000]
    else: data = data[:100] + bytes(b ^ 0xFF for b in data[100:2000]) + data[2000:]
    (tmp_path / 'bad.pth').write_bytes(data)
    other = tiny_model(seed=4).eval()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    x1, x2 = X1[:2], X2[:2]
    want = outputs(other, x1, x2)
    with pytest.raises(sr.WeightsError, match='cannot read weights file'):
        sr.load_weights(other, tmp_path / 'bad.pth')
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())
    same(outputs(other, x1, x2), want)


def test_fastai_save_load(tmp_path):
    learn = pair_learner(path=tmp_path)
    learn.fit(1, 1e-2)
    learn.save('stage1')
    want = outputs(learn.model, X1[:4], X2[:4])
    other = pair_learner(tiny_model(seed=9), path=tmp_path)
    assert not torch.equal(outputs(other.model, X1[:4], X2[:4]), want)
    other.load('stage1')
    same(outputs(other.model, X1[:4], X2[:4]), want)
    other.fit(1, 1e-2)  # the optimizer state came along and training goes on


def test_fastai_export_load_learner(tmp_path):
    learn = pair_learner(path=tmp_path)
    learn.fit(1, 1e-2)
    learn.export('export.pkl')
    loaded = load_learner(tmp_path / 'export.pkl', cpu=True)
    assert type(loaded.model) is sr.SiameseModel
    same(outputs(loaded.model, X1[:4], X2[:4]), outputs(learn.model, X1[:4], X2[:4]))
    preds, _ = loaded.get_preds(dl=learn.dls.valid)
    ref_preds, _ = learn.get_preds(dl=learn.dls.valid)
    same(preds, ref_preds)


@pytest.mark.parametrize('bad', ['meta tensor', 'not a tensor', 'copy fails'])
def test_load_weights_validates_everything_before_writing(model, bad):
    other = tiny_model(seed=5).eval()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    sd = {k: v.clone() + 1 if v.is_floating_point() else v.clone() for k, v in other.state_dict().items()}
    last = list(sd)[-1]  # the late keys are the ones a half-done load would miss
    if bad == 'meta tensor': sd[last] = torch.empty_like(sd[last], device='meta')
    elif bad == 'not a tensor': sd[last] = sd[last].tolist()
    else:
        class Refuses(torch.Tensor):
            "A tensor whose copy into a parameter fails part-way through a load"
            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                if func is torch.Tensor.copy_: raise RuntimeError('copy refused')
                return super().__torch_function__(func, types, args, kwargs or {})
        sd[last] = sd[last].as_subclass(Refuses)
    with pytest.raises(sr.WeightsError, match=repr(last) if bad != 'copy fails' else 'copy refused'):
        sr.load_weights(other, sd)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())
