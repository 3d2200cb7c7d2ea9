"The crate's Rust API (`create_body`, `create_head`, `SiameseModel::load_safetensors`) against the Python model"
import pytest
import torch
from safetensors.torch import save_file

import siamese_rs as sr
from siamese_rs import _core
from siamese_rs.exceptions import UnknownArchError, WeightsError

# arch, n_in, cut, image size: each family, the first-conv rule and a custom cut.
CASES = [('resnet18', 3, None, 64), ('resnet34', 1, None, 64), ('resnet18', 3, -3, 64),
         ('xresnet18', 2, None, 64), ('densenet121', 3, None, 64), ('squeezenet1_1', 3, None, 64),
         ('vgg11_bn', 3, None, 32), ('alexnet', 4, None, 64)]


def _trained(arch, n_in, cut, size):
    "A Python SiameseModel whose weights and BatchNorm statistics moved away from their init"
    torch.manual_seed(0)
    # The Rust API's `cut=None` is the arch's own cut (fastai's `create_body` searches for a pooling child).
    arch_fn = getattr(sr, arch)
    cut = sr.model_meta[arch_fn]['cut'] if cut is None else cut
    body = sr.create_body(arch_fn, n_in=n_in, pretrained=False, cut=cut)
    with torch.no_grad(): nf = body.eval()(torch.zeros(2, n_in, size, size)).shape[1] * 2
    model = sr.SiameseModel(body.train(), sr.create_head(nf, 2, lin_ftrs=[64], ps=[0.3, 0.2], bn_final=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        x1, x2 = torch.randn(4, n_in, size, size), torch.randn(4, n_in, size, size)
        loss = model(x1, x2).logsumexp(1).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval(), nf


@pytest.mark.parametrize('arch,n_in,cut,size', CASES)
def test_a_python_state_dict_loads_and_gives_its_outputs(tmp_path, arch, n_in, cut, size):
    model, nf = _trained(arch, n_in, cut, size)
    path = tmp_path / 'model.safetensors'
    save_file(model.state_dict(), path)
    native = _core.NativeSiameseModel(arch, n_in, cut, nf, 2, lin_ftrs=[64], ps=[0.3, 0.2], bn_final=True)
    assert native.state_keys() == list(model.state_dict())
    native.load_safetensors(path)
    x1, x2 = torch.randn(3, n_in, size, size), torch.randn(3, n_in, size, size)
    with torch.no_grad():
        want, feats = model(x1, x2), model.encoder(x1)
    torch.testing.assert_close(native.forward(x1, x2), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(native.encode(x1), feats, rtol=1e-5, atol=1e-5)


def test_training_mode_uses_batch_statistics_as_python_does(tmp_path):
    model, nf = _trained('resnet18', 3, None, 64)
    save_file(model.state_dict(), tmp_path / 'm.safetensors')
    native = _core.NativeSiameseModel('resnet18', 3, None, nf, 2, lin_ftrs=[64], ps=[0.3, 0.2], bn_final=True)
    native.load_safetensors(tmp_path / 'm.safetensors')
    x1, x2 = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    torch.manual_seed(5)  # the same dropout masks: both draw from torch's generator
    with torch.no_grad():
        want = model.train()(x1, x2)
    torch.manual_seed(5)
    torch.testing.assert_close(native.forward(x1, x2, train=True), want, rtol=1e-4, atol=1e-5)


def test_a_mismatched_file_names_the_missing_unexpected_and_misshaped_keys(tmp_path):
    model, nf = _trained('resnet18', 3, None, 64)
    state = dict(model.state_dict())
    del state['encoder.0.weight']
    state['encoder.extra'] = torch.zeros(3)
    state['head.2.weight'] = torch.zeros(7)
    save_file(state, tmp_path / 'bad.safetensors')
    native = _core.NativeSiameseModel('resnet18', 3, None, nf, 2, lin_ftrs=[64], ps=[0.3, 0.2], bn_final=True)
    with pytest.raises(WeightsError) as e:
        native.load_safetensors(tmp_path / 'bad.safetensors')
    msg = str(e.value)
    assert 'missing keys: encoder.0.weight' in msg and 'unexpected keys: encoder.extra' in msg
    assert 'head.2.weight: the file has [7], the model [2048]' in msg
    # The model is unchanged and still runs.
    x = torch.randn(2, 3, 64, 64)
    assert native.forward(x, x).shape == (2, 2)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(UnknownArchError, match='resnet9'):
        _core.NativeSiameseModel('resnet9', 3, None, 1024, 2)
    with pytest.raises(sr.exceptions.ArgumentError, match='n_in'):
        _core.NativeSiameseModel('resnet18', 0, None, 1024, 2)
    native = _core.NativeSiameseModel('resnet18', 3, None, 1024, 2)
    with pytest.raises(WeightsError, match='cannot read'):
        native.load_safetensors(tmp_path / 'absent.safetensors')
    (tmp_path / 'junk.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(WeightsError, match='cannot read'):
        native.load_safetensors(tmp_path / 'junk.safetensors')
    with pytest.raises(sr.exceptions.ShapeError):
        native.forward(torch.randn(2, 3, 64, 64), torch.randn(3, 3, 64, 64))


def test_an_empty_batch_answers_as_pytorch(tmp_path):
    "The encoder answers an empty batch; fastai's head refuses one (its Flatten views (0, -1)), as ours does"
    model, nf = _trained('resnet18', 3, None, 64)
    save_file(model.state_dict(), tmp_path / 'm.safetensors')
    native = _core.NativeSiameseModel('resnet18', 3, None, nf, 2, lin_ftrs=[64], ps=[0.3, 0.2], bn_final=True)
    native.load_safetensors(tmp_path / 'm.safetensors')
    x = torch.randn(0, 3, 64, 64)
    with torch.no_grad():
        assert native.encode(x).shape == model.encoder(x).shape
        with pytest.raises(RuntimeError) as want: model(x, x)
    with pytest.raises(sr.SiameseError, match=str(want.value).split('\n')[0][:40]): native.forward(x, x)
    x1 = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(native.forward(x1, x1), model(x1, x1), rtol=1e-5, atol=1e-5)
