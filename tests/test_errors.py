"""A catalogue of bad inputs across the public API. Each raises a clear `Exception` subclass (ours, or
PyTorch's own where its code runs first) naming what was expected, and the model keeps working."""
import os
import re

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm

import siamese_rs as sr
from conftest import images


def small_model(seed=0):
    torch.manual_seed(seed)
    return sr.SiameseModel(sr.create_body(sr.resnet18, cut=-2, pretrained=False), sr.create_head(1024, 2)).eval()


class Evil:
    "A pickle payload: unpickling it would create `path`"
    def __init__(self, path): self.path = path
    def __reduce__(self): return (os.mkdir, (self.path,))


@pytest.fixture(scope='module')
def ctx(tmp_path_factory):
    d = tmp_path_factory.mktemp('weights')
    model = small_model()
    good = d / 'good.pth'
    torch.save(model.state_dict(), good)
    data = good.read_bytes()
    (d / 'truncated.pth').write_bytes(data[:len(data) // 2])
    rng = np.random.default_rng(0)
    (d / 'corrupted.pth').write_bytes(data[:64] + rng.integers(0, 256, len(data) - 64, dtype=np.uint8).tobytes())
    (d / 'noise.pth').write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    torch.save({'encoder.0.weight': Evil(str(d / 'pwned'))}, d / 'evil.pth')
    torch.save([1, 2, 3], d / 'list.pth')
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / 'good.safetensors')
    st = (d / 'good.safetensors').read_bytes()
    (d / 'truncated.safetensors').write_bytes(st[:len(st) // 3])
    torch.manual_seed(1)
    wrong_arch = sr.SiameseModel(sr.create_body(sr.resnet34, cut=-2, pretrained=False), sr.create_head(1024, 2))
    torch.save(wrong_arch.state_dict(), d / 'resnet34.pth')
    one_channel = sr.SiameseModel(sr.create_body(sr.resnet18, n_in=1, cut=-2, pretrained=False), sr.create_head(1024, 2))
    torch.save(one_channel.state_dict(), d / 'n_in1.pth')
    x1, x2 = images(2, 32)
    with torch.no_grad(): before = model(x1, x2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return {'model': model, 'dir': d, 'inputs': (x1, x2), 'before': before, 'state': state}


def f(ctx, name): return ctx['dir'] / name


def resnet18(pretrained=False):
    "Not torchvision's resnet18: the name alone must not make it an architecture we build"
    return tvm.resnet18()


def bad_shape_sd(m): return {k: (v[..., :1] if v.ndim else v) for k, v in m.state_dict().items()}


T = torch.randn
# (id, call on ctx, exception class, message fragment)
CASES = [
    # forward: types
    ('x1 list', lambda c: c['model']([[1.0]], T(2, 3, 32, 32)), sr.ArgumentTypeError, 'x1 must be a torch.Tensor, got list'),
    ('x2 ndarray', lambda c: c['model'](T(2, 3, 32, 32), np.zeros((2, 3, 32, 32), np.float32)), sr.ArgumentTypeError,
     'x2 must be a torch.Tensor, got ndarray'),
    ('x1 None', lambda c: c['model'](None, T(2, 3, 32, 32)), sr.ArgumentTypeError, 'got NoneType'),
    ('x1 int', lambda c: c['model'](3, T(2, 3, 32, 32)), sr.ArgumentTypeError, 'got int'),
    ('one input', lambda c: c['model'](T(2, 3, 32, 32)), TypeError, 'x2'),
    ('three inputs', lambda c: c['model'](*[T(2, 3, 32, 32)] * 3), TypeError, 'positional arguments'),
    # forward: shapes
    ('3-d', lambda c: c['model'](T(3, 32, 32), T(3, 32, 32)), sr.ShapeError, '4-d'),
    ('5-d', lambda c: c['model'](T(1, 2, 3, 32, 32), T(1, 2, 3, 32, 32)), sr.ShapeError, '4-d'),
    ('2-d', lambda c: c['model'](T(2, 3), T(2, 3)), sr.ShapeError, '4-d'),
    ('4 channels', lambda c: c['model'](T(2, 4, 32, 32), T(2, 4, 32, 32)), sr.ShapeError,
     'expected input with 3 channels, got 4'),
    ('1 channel', lambda c: c['model'](T(2, 1, 32, 32), T(2, 1, 32, 32)), sr.ShapeError, '3 channels, got 1'),
    ('batch mismatch', lambda c: c['model'](T(2, 3, 32, 32), T(3, 3, 32, 32)), sr.ShapeError, 'same shape'),
    ('spatial mismatch', lambda c: c['model'](T(2, 3, 32, 32), T(2, 3, 64, 64)), sr.ShapeError, 'x2 [2, 3, 64, 64]'),
    ('body 3-d', lambda c: c['model'].encoder(T(3, 32, 32)), sr.ShapeError, 'BatchNorm2d expected 4D input'),
    ('head wrong width', lambda c: c['model'].head(T(2, 5, 1, 1)), sr.ShapeError,
     'BatchNorm1d expected 2048 features/channels, got 10'),
    ('head 2-d', lambda c: c['model'].head(T(2, 1024)), RuntimeError, '3D or 4D'),
    # forward: dtype and device
    ('float64 input', lambda c: c['model'](T(2, 3, 32, 32).double(), T(2, 3, 32, 32).double()), sr.DTypeError,
     "x1 is float64 but the model's parameters are float32"),
    ('float16 input', lambda c: c['model'](T(2, 3, 32, 32).half(), T(2, 3, 32, 32).half()), sr.DTypeError, 'x1 is float16'),
    ('x2 float64 only', lambda c: c['model'](T(2, 3, 32, 32), T(2, 3, 32, 32).double()), sr.DTypeError, 'x2 is float64'),
    ('int64 input', lambda c: c['model'](torch.ones(2, 3, 32, 32, dtype=torch.long), torch.ones(2, 3, 32, 32, dtype=torch.long)),
     sr.DTypeError, 'x.to(torch.float32)'),
    ('meta input', lambda c: c['model'](T(2, 3, 32, 32, device='meta'), T(2, 3, 32, 32, device='meta')), sr.DeviceError,
     'x1 is on meta but the model is on cpu'),
    ('x2 meta', lambda c: c['model'](T(2, 3, 32, 32), T(2, 3, 32, 32, device='meta')), sr.DeviceError, 'x2 is on meta'),
    # create_head
    ('nf 0', lambda c: sr.create_head(0, 2), sr.ArgumentError, 'nf must be a positive'),
    ('nf -5', lambda c: sr.create_head(-5, 2), sr.ArgumentError, 'got -5'),
    ('nf huge', lambda c: sr.create_head(2 ** 62, 2), sr.ArgumentError, 'layer sizes must be at most'),
    ('nf str', lambda c: sr.create_head('8', 2), sr.ArgumentTypeError, 'nf must be an int, got str'),
    ('nf float', lambda c: sr.create_head(8.0, 2), sr.ArgumentTypeError, 'nf must be an int, got float'),
    ('n_out 0', lambda c: sr.create_head(8, 0), sr.ArgumentError, 'n_out must be a positive'),
    ('ps 1.5', lambda c: sr.create_head(8, 2, ps=1.5), sr.ArgumentError, 'between 0 and 1, got 1.5'),
    ('ps -0.1', lambda c: sr.create_head(8, 2, ps=-0.1), sr.ArgumentError, 'between 0 and 1, got -0.1'),
    ('ps list > 1', lambda c: sr.create_head(8, 2, ps=[0.1, 2.0]), sr.ArgumentError, 'got 2'),
    ('ps empty', lambda c: sr.create_head(8, 2, ps=[]), sr.ArgumentError, 'at least one dropout'),
    ('ps str', lambda c: sr.create_head(8, 2, ps='0.5'), sr.ArgumentTypeError, 'ps must be a float or a list of floats'),
    ('lin_ftrs [0]', lambda c: sr.create_head(8, 2, lin_ftrs=[0]), sr.ArgumentError, 'lin_ftrs must hold positive'),
    ('lin_ftrs [-3, 10]', lambda c: sr.create_head(8, 2, lin_ftrs=[-3, 10]), sr.ArgumentError, 'got -3'),
    ('lin_ftrs int', lambda c: sr.create_head(8, 2, lin_ftrs=5), sr.ArgumentTypeError, 'lin_ftrs must be a list of ints'),
    ('lin_ftrs floats', lambda c: sr.create_head(8, 2, lin_ftrs=[1.5]), sr.ArgumentTypeError, 'lin_ftrs must be an int'),
    ('y_range 3 values', lambda c: sr.create_head(8, 2, y_range=(0, 1, 2)), sr.ArgumentError, 'y_range must be (low, high)'),
    ('y_range 1 value', lambda c: sr.create_head(8, 2, y_range=(0.,)), sr.ArgumentError, 'y_range must be (low, high)'),
    ('y_range scalar', lambda c: sr.create_head(8, 2, y_range=5), sr.ArgumentError, 'y_range must be (low, high)'),
    ('y_range strings', lambda c: sr.create_head(8, 2, y_range=('a', 'b')), sr.ArgumentTypeError, 'y_range must be'),
    # create_body
    ('cut str', lambda c: sr.create_body(sr.resnet18, cut='-2', pretrained=False), sr.ArgumentTypeError,
     'cut must be None, an int or a function, got str'),
    ('cut float', lambda c: sr.create_body(sr.resnet18, cut=2.5, pretrained=False), sr.ArgumentTypeError, 'got float'),
    ('cut None, no pool', lambda c: sr.create_body(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), pretrained=False),
     sr.ArgumentError, 'needs a child with a pooling layer'),
    ('unknown arch', lambda c: sr.create_body(lambda pretrained: None, pretrained=False), sr.UnknownArchError,
     'unknown architecture'),
    ('impostor named resnet18', lambda c: sr.create_body(resnet18, pretrained=False), sr.UnknownArchError, "'resnet18'"),
    ('arch as str', lambda c: sr.create_body('resnet18', pretrained=False), sr.ArgumentTypeError, 'got str'),
    ('model None', lambda c: sr.create_body(None, pretrained=False), sr.ArgumentTypeError, 'got NoneType'),
    ('n_in 0', lambda c: sr.create_body(sr.resnet18, n_in=0, pretrained=False), sr.ArgumentError, 'n_in must be a positive'),
    ('n_in -1', lambda c: sr.create_body(sr.resnet18, n_in=-1, pretrained=False), sr.ArgumentError, 'got -1'),
    ('n_in str', lambda c: sr.create_body(sr.resnet18, n_in='3', pretrained=False), sr.ArgumentError, "got '3'"),
    # weight files
    ('missing file', lambda c: sr.load_weights(c['model'], f(c, 'nope.pth')), sr.WeightsNotFoundError, 'does not exist'),
    ('truncated pth', lambda c: sr.load_weights(c['model'], f(c, 'truncated.pth')), sr.WeightsError, 'cannot read weights file'),
    ('corrupted pth', lambda c: sr.load_weights(c['model'], f(c, 'corrupted.pth')), sr.WeightsError, 'cannot read weights file'),
    ('random bytes', lambda c: sr.load_weights(c['model'], f(c, 'noise.pth')), sr.WeightsError, 'cannot read weights file'),
    ('malicious pickle', lambda c: sr.load_weights(c['model'], f(c, 'evil.pth')), sr.WeightsError, 'cannot read weights file'),
    ('not a state dict', lambda c: sr.load_weights(c['model'], f(c, 'list.pth')), sr.WeightsError, 'does not hold a state dict'),
    ('truncated safetensors', lambda c: sr.load_weights(c['model'], f(c, 'truncated.safetensors')), sr.WeightsError,
     'cannot read weights file'),
    ('wrong arch', lambda c: sr.load_weights(c['model'], f(c, 'resnet34.pth')), sr.WeightsError,
     'unexpected keys (96): encoder.4.2.conv1.weight'),
    ('wrong shapes', lambda c: sr.load_weights(c['model'], f(c, 'n_in1.pth')), sr.WeightsError,
     'mis-shaped keys (1): encoder.0.weight: model (64, 3, 7, 7), file (64, 1, 7, 7)'),
    ('weights not a path', lambda c: sr.load_weights(c['model'], 5), sr.ArgumentTypeError, 'expected a path or a state dict'),
    ('state dict shapes', lambda c: sr.load_weights(c['model'], bad_shape_sd(c['model'])), sr.WeightsError, 'mis-shaped keys'),
    # PyTorch's own load_state_dict runs first: its RuntimeError
    ('load_state_dict missing', lambda c: c['model'].load_state_dict({}), RuntimeError, 'Missing key(s)'),
    ('load_state_dict shapes', lambda c: c['model'].load_state_dict(bad_shape_sd(c['model'])), RuntimeError, 'size mismatch'),
    ('load_state_dict assign shapes', lambda c: c['model'].load_state_dict(bad_shape_sd(c['model']), assign=True), RuntimeError,
     'size mismatch'),
]


@pytest.mark.parametrize('name,call,exc,fragment', CASES, ids=[c[0] for c in CASES])
def test_bad_input(ctx, name, call, exc, fragment):
    model, state = ctx['model'], ctx['state']
    with pytest.raises(exc, match=re.escape(fragment)) as info:
        with torch.no_grad(): call(ctx)
    assert isinstance(info.value, Exception)  # never pyo3's PanicException (a BaseException)
    if issubclass(exc, sr.SiameseError): assert type(info.value).__module__ == 'siamese_rs.exceptions'
    assert not (ctx['dir'] / 'pwned').exists()  # weights_only: the pickle's code never ran
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    with torch.no_grad(): torch.testing.assert_close(model(*ctx['inputs']), ctx['before'], atol=0, rtol=0)


def test_catalogue_size(): assert len(CASES) >= 40


def test_hierarchy():
    "Every class derives from the base and from the builtin a caller would catch"
    for name in sr.exceptions.__all__:
        cls = getattr(sr, name)
        assert issubclass(cls, Exception) and (cls is sr.SiameseError or issubclass(cls, sr.SiameseError))
    pairs = {sr.ArgumentError: ValueError, sr.ShapeError: ValueError, sr.ArgumentTypeError: TypeError,
             sr.UnknownArchError: KeyError, sr.WeightsNotFoundError: FileNotFoundError, sr.WeightsError: ValueError,
             sr.TorchError: RuntimeError, sr.DTypeError: TypeError, sr.DeviceError: ValueError}
    for cls, builtin in pairs.items(): assert issubclass(cls, builtin), cls
    assert issubclass(sr.DTypeError, RuntimeError) and issubclass(sr.DeviceError, RuntimeError)  # what torch raises


def test_the_2020_head_idiom_on_resnet34_says_which_nf_fits():
    torch.manual_seed(0)
    model = sr.SiameseModel(sr.create_body(sr.resnet34, cut=-2, pretrained=False), sr.create_head(512 * 4, 2)).eval()
    with pytest.raises(sr.ShapeError, match=re.escape('build it with create_head(1024, n_out)')):
        with torch.no_grad(): model(*images(2, 32))
    model.head = sr.create_head(1024, 2).eval()  # the fix the message names works
    with torch.no_grad(): assert model(*images(2, 32)).shape == (2, 2)


def test_good_files_still_load_after_the_bad_ones(ctx):
    "The model loads its own weights from both formats (the bad files above failed for their own reasons)"
    other = small_model(seed=5)
    x1, x2 = images(2, 32)
    with torch.no_grad():
        want = ctx['model'](x1, x2)
        for name in ('good.pth', 'good.safetensors'):
            sr.load_weights(other, f(ctx, name))
            torch.testing.assert_close(other(x1, x2), want, atol=0, rtol=0)


def test_bad_training_input_leaves_training_usable():
    "An error mid training step (wrong channels) leaves autograd and the optimizer usable"
    model = small_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x1, x2 = images(4, 32)
    with pytest.raises(sr.ShapeError): model(x1[:, :2], x2[:, :2]).sum().backward()
    loss = model(x1, x2).sum()
    loss.backward()
    opt.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
