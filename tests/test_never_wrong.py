"""Never silently wrong: every setting PyTorch's forward reads is honoured or run by PyTorch, NaN and inf propagate,
tensors are read by name, and exceptions raised in callbacks keep their type."""
import numpy as np
import pytest
import torch
import torch.nn.utils.parametrize as P
from fastai import layers as fl
from torch import nn
from torch.nn.utils import prune
from torch.utils.checkpoint import checkpoint

import siamese_rs as sr
from conftest import images, make_pair

# Every public attribute of each mirrored class, with other values to set it to after a first forward.
ALTERNATIVES = {
    'Conv2d': {'dilation': [(2, 2), 2], 'groups': [2], 'in_channels': [5], 'kernel_size': [(5, 5)],
               'out_channels': [3], 'output_padding': [(1, 1)], 'padding': [(2, 0), 'same', 'valid', np.int64(2)],
               'padding_mode': ['reflect', 'circular', 'replicate'], 'stride': [(2, 1), 3, np.int32(2)],
               'transposed': [True]},
    'BatchNorm2d': {'affine': [False], 'eps': [0.5, np.float32(0.25)], 'momentum': [None, 0.9],
                    'num_features': [3], 'track_running_stats': [False]},
    'BatchNorm1d': {'affine': [False], 'eps': [0.5], 'momentum': [None, 0.9], 'num_features': [3],
                    'track_running_stats': [False]},
    'Linear': {'in_features': [5], 'out_features': [3]},
    'ReLU': {'inplace': [True]},
    'MaxPool2d': {'ceil_mode': [True], 'dilation': [2], 'kernel_size': [2, (2, 3)], 'padding': [0],
                  'return_indices': [True], 'stride': [1, np.int64(3)]},
    'AvgPool2d': {'ceil_mode': [True], 'count_include_pad': [False], 'divisor_override': [3], 'kernel_size': [2],
                  'padding': [0], 'stride': [1]},
    'AdaptiveAvgPool2d': {'output_size': [(3, None), 1, [2, 3]]},
    'AdaptiveMaxPool2d': {'output_size': [(None, 3), 1], 'return_indices': [True]},
    'Dropout': {'p': [0.0, 1.0, np.float32(1.0), np.float64(0.0)], 'inplace': [True]},
    'Flatten': {'full': [True]},
    'SigmoidRange': {'low': [0.5, np.float32(-2.0)], 'high': [np.float64(3.0)]},
    'AdaptiveConcatPool2d': {'size': [2]},
}

# `(ours, reference, input)` for each class, built with the same constructor arguments.
LAYERS = {
    'Conv2d': (lambda: sr.Conv2d(4, 8, 3, padding=1), lambda: nn.Conv2d(4, 8, 3, padding=1), (2, 4, 9, 9)),
    'BatchNorm2d': (lambda: sr.BatchNorm2d(8), lambda: nn.BatchNorm2d(8), (4, 8, 5, 5)),
    'BatchNorm1d': (lambda: sr.BatchNorm1d(8), lambda: nn.BatchNorm1d(8), (4, 8)),
    'Linear': (lambda: sr.Linear(6, 4), lambda: nn.Linear(6, 4), (3, 6)),
    'ReLU': (lambda: sr.ReLU(), lambda: nn.ReLU(), (2, 3, 5, 5)),
    'MaxPool2d': (lambda: sr.MaxPool2d(3, 2, 1), lambda: nn.MaxPool2d(3, 2, 1), (2, 3, 9, 9)),
    'AvgPool2d': (lambda: sr.AvgPool2d(3, 2, 1), lambda: nn.AvgPool2d(3, 2, 1), (2, 3, 9, 9)),
    'AdaptiveAvgPool2d': (lambda: sr.AdaptiveAvgPool2d(2), lambda: nn.AdaptiveAvgPool2d(2), (2, 3, 7, 7)),
    'AdaptiveMaxPool2d': (lambda: sr.AdaptiveMaxPool2d(2), lambda: nn.AdaptiveMaxPool2d(2), (2, 3, 7, 7)),
    'Dropout': (lambda: sr.Dropout(0.5), lambda: nn.Dropout(0.5), (4, 16)),
    'Flatten': (lambda: sr.Flatten(), lambda: fl.Flatten(), (2, 3, 2, 2)),
    'SigmoidRange': (lambda: sr.SigmoidRange(-1, 2), lambda: fl.SigmoidRange(-1, 2), (3, 5)),
    'AdaptiveConcatPool2d': (lambda: sr.AdaptiveConcatPool2d(), lambda: fl.AdaptiveConcatPool2d(), (2, 3, 5, 5)),
}


def public_attrs(m): return {k for k in vars(m) if not k.startswith('_') and k != 'training'}


def outcome(f):
    try: return 'ok', f()
    except Exception as e: return 'error', e


def assert_same(ours, ref):
    "Same values (NaN where the reference has NaN), or an error from both"
    (kind, a), (ref_kind, b) = outcome(ours), outcome(ref)
    assert kind == ref_kind, f'ours: {a!r}, reference: {b!r}'
    if kind == 'error': return
    if isinstance(b, tuple):
        assert isinstance(a, tuple) and len(a) == len(b)
        for x, y in zip(a, b): torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6, equal_nan=True)
    else: torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, equal_nan=True)


def same_on(ours, ref, x, seed=0):
    "Compare train (with grad) and eval (with and without grad) forwards; returns nothing, asserts"
    for train, grad in ((True, True), (False, True), (False, False)):
        ours.train(train), ref.train(train)
        with torch.set_grad_enabled(grad):
            def run(m):
                torch.manual_seed(seed)
                return m(x.clone())
            assert_same(lambda: run(ours), lambda: run(ref))


@pytest.mark.parametrize('name', sorted(LAYERS))
def test_every_public_attribute_has_alternatives(name):
    "The contract is structural: a new attribute in PyTorch's class must be added here to keep this green"
    assert public_attrs(LAYERS[name][1]()) == set(ALTERNATIVES[name]), name


CASES = [(n, a, v) for n, alts in ALTERNATIVES.items() for a, vs in alts.items() for v in vs]


@pytest.mark.parametrize('name,attr,value', CASES, ids=[f'{n}.{a}={v!r}' for n, a, v in CASES])
def test_a_changed_setting_is_honoured_or_run_by_pytorch(name, attr, value):
    make_ours, make_ref, shape = LAYERS[name]
    torch.manual_seed(0)
    ours, ref = make_ours(), make_ref()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(shape)
    same_on(ours, ref, x)  # a first forward caches what the core was told
    setattr(ours, attr, value), setattr(ref, attr, value)
    same_on(ours, ref, x)
    ours.load_state_dict(ref.state_dict())  # running statistics stay in step
    same_on(ours, ref, x)


def test_string_padding_and_padding_modes_in_a_converted_model():
    from torchvision.models import resnet18
    tv = resnet18()
    tv.conv1.padding_mode = 'reflect'
    tv.layer1[0].conv1.padding = 'same'
    tv.layer1[1].conv2 = nn.Conv2d(64, 64, 3, padding=1, padding_mode='circular')
    tv.eval()
    ours = sr.create_body(tv, cut=-2)
    ref = nn.Sequential(*list(tv.children())[:-2])
    x = torch.randn(2, 3, 40, 40)
    for grad in (False, True):
        with torch.set_grad_enabled(grad): torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


# NaN and infinity, on every path: fast (no grad), exact (grad), batched pairs, chunked encoder, the encoder alone
def poisoned(kind, n=2, size=32, seed=1):
    x1, x2 = images(n, size, seed)
    if kind == 'nan pixel': x1[0, 1, 5, 7] = float('nan')
    elif kind == 'inf pixel': x2[-1, 0, 3, 3] = float('inf')
    elif kind == '-inf pixel': x1[0, 2, 10, 1] = -float('inf')
    elif kind == 'all nan': x1[0] = float('nan')
    elif kind == 'huge': x1[0, :, :4, :4] = 3e38  # finite, but overflows to inf in the first convolution
    return x1, x2


def assert_nan_like(a, b):
    assert torch.equal(a.isnan(), b.isnan()), (a, b)
    assert torch.equal(a.isinf(), b.isinf()), (a, b)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, equal_nan=True)


INPUTS = ['nan pixel', 'inf pixel', '-inf pixel', 'all nan', 'huge']


@pytest.mark.parametrize('kind', INPUTS)
@pytest.mark.parametrize('grad', [False, True], ids=['fast', 'exact'])
def test_non_finite_inputs_propagate_as_in_pytorch(kind, grad):
    ours, ref = make_pair('resnet18')
    ours.eval(), ref.eval()
    x1, x2 = poisoned(kind)
    with torch.set_grad_enabled(grad):
        assert_nan_like(ours(x1, x2), ref(x1, x2))
        assert_nan_like(ours.encoder(x1), ref.encoder(x1))


@pytest.mark.parametrize('kind', ['nan pixel', 'inf pixel'])
def test_non_finite_inputs_in_chunked_and_batched_batches(kind):
    ours, ref = make_pair('resnet18')
    ours.eval(), ref.eval()
    with torch.no_grad():
        x1, x2 = poisoned(kind, n=9, size=224)  # side by side, in chunks of 8
        assert_nan_like(ours(x1, x2), ref(x1, x2))
        x1, x2 = poisoned(kind, n=3, size=64)  # both sides in one encoder call
        assert_nan_like(ours(x1, x2), ref(x1, x2))
        x1, x2 = images(9, 224)
        x1[8, 0, 0, 0] = float('nan')  # only in the last chunk
        assert_nan_like(ours.encoder(x1), ref.encoder(x1))


@pytest.mark.parametrize('where', ['encoder.0.weight', 'encoder.4.0.bn1.running_var', 'encoder.7.1.conv2.weight',
                                   'head.4.weight', 'encoder.1.bias'])
@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_a_diverged_weight_shows_in_the_output(where, value):
    ours, ref = make_pair('resnet18')
    for m in (ours, ref):
        with torch.no_grad(): m.state_dict()[where].view(-1)[3] = value
        m.eval()
    x1, x2 = images(2, 32)
    for grad in (False, True):
        with torch.set_grad_enabled(grad): assert_nan_like(ours(x1, x2), ref(x1, x2))


@pytest.mark.parametrize('arch', ['densenet121', 'vgg11_bn', 'squeezenet1_1'])
def test_other_families_propagate_nan(arch):
    from fastai.vision import learner as fvl
    from torchvision import models as tvm
    torch.manual_seed(0)
    full, ref_full = getattr(sr, arch)(), getattr(tvm, arch)()
    ref_full.load_state_dict(full.state_dict())
    cut = sr.model_meta[getattr(sr, arch)]['cut']
    ours, ref = sr.create_body(full, cut=cut).eval(), fvl.create_body(ref_full, cut=cut).eval()
    x = torch.randn(2, 3, 64, 64)
    x[1, 0, 9, 9] = float('nan')
    with torch.no_grad(): assert_nan_like(ours(x), ref(x))


# Tensors are read by name, as PyTorch's forward reads them
def _linear_pair(bias=True):
    torch.manual_seed(0)
    ours, ref = sr.Linear(6, 4, bias=bias), nn.Linear(6, 4, bias=bias)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _bn_pair():
    torch.manual_seed(0)
    ours, ref = sr.BatchNorm2d(8), nn.BatchNorm2d(8)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2), ours.bias.uniform_(-1, 1), ours.running_mean.uniform_(-1, 1)
        ours.running_var.uniform_(0.5, 2)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _conv_pair():
    torch.manual_seed(0)
    ours, ref = sr.Conv2d(4, 8, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


PAIRS = {'linear': (_linear_pair, (3, 6)), 'bn': (_bn_pair, (4, 8, 5, 5)), 'conv': (_conv_pair, (2, 4, 9, 9))}

EDITS = {
    'prune.l1_unstructured': lambda m: prune.l1_unstructured(m, 'weight', amount=0.5),
    'prune then remove': lambda m: prune.remove(prune.random_unstructured(m, 'weight', amount=0.3), 'weight'),
    'prune bias then remove': lambda m: prune.remove(prune.l1_unstructured(m, 'bias', amount=0.5), 'bias'),
    'weight_norm (legacy)': lambda m: nn.utils.weight_norm(m),
    'parametrizations.weight_norm': lambda m: nn.utils.parametrizations.weight_norm(m),
    'spectral_norm': lambda m: nn.utils.parametrizations.spectral_norm(m),
    'register_parametrization': lambda m: P.register_parametrization(m, 'weight', _Double()),
    'plain tensor weight': lambda m: _plain_weight(m),
    'bias None': lambda m: setattr(m, 'bias', None),
}


class _Double(nn.Module):
    def forward(self, w): return 2 * w


def _plain_weight(m):
    w = m.weight.detach().clone() * 0.5
    del m.weight
    m.weight = w


@pytest.mark.parametrize('edit', sorted(EDITS))
@pytest.mark.parametrize('layer', sorted(PAIRS))
def test_reparametrized_and_pruned_tensors(layer, edit):
    make, shape = PAIRS[layer]
    ours, ref = make()
    if layer == 'bn' and edit in ('spectral_norm',): edit = 'register_parametrization'
    torch.manual_seed(1)
    EDITS[edit](ours)
    torch.manual_seed(1)
    EDITS[edit](ref)
    x = torch.randn(shape)
    same_on(ours, ref, x)
    ours.train(), ref.train()
    for m in (ours, ref):
        m.zero_grad()
        m(x).square().sum().backward()
    grads = [(n, p.grad) for n, p in ours.named_parameters()]
    for (n, g), (rn, rp) in zip(grads, ref.named_parameters()):
        assert n == rn
        torch.testing.assert_close(g, rp.grad, atol=1e-5, rtol=1e-5, msg=n)


def test_prune_remove_keeps_batchnorm_weight_and_bias_apart():
    ours, ref = _bn_pair()
    for m in (ours, ref): prune.remove(prune.l1_unstructured(m, 'weight', amount=0.5), 'weight')
    assert list(ours._parameters) == ['bias', 'weight']  # re-registered after bias, as PyTorch does
    x = torch.randn(4, 8, 5, 5)
    same_on(ours, ref, x)


def test_pruned_model_in_a_siamese_network():
    ours, ref = make_pair('resnet18')
    for m in (ours, ref):
        prune.l1_unstructured(m.encoder[4][0].conv1, 'weight', amount=0.4)
        prune.l1_unstructured(m.head[4], 'weight', amount=0.3)
        m.eval()
    x1, x2 = images(2, 32)
    for grad in (False, True):
        with torch.set_grad_enabled(grad): torch.testing.assert_close(ours(x1, x2), ref(x1, x2), atol=1e-5, rtol=1e-5)


def test_test_time_adaptation_batchnorm_without_running_stats():
    "Tent: track_running_stats=False and running_mean = running_var = None, in train and eval"
    ours, ref = make_pair('resnet18', ps=0.)
    for m in (ours, ref):
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.track_running_stats = False
                bn.running_mean = bn.running_var = None
    x1, x2 = images(4, 32)
    for train in (True, False):
        ours.train(train), ref.train(train)
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                torch.testing.assert_close(ours(x1, x2), ref(x1, x2), atol=1e-5, rtol=1e-5)


# Exceptions raised in Python code that libtorch calls back during our forward keep their type and message
def test_an_exception_in_a_saved_tensors_hook_keeps_its_type():
    ours, _ = make_pair('resnet18')
    x1, x2 = images(2, 32)

    def pack(t): raise ValueError('boom')

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with pytest.raises(ValueError, match='boom'): ours(x1, x2)
    assert ours(x1, x2).shape == (2, 2)  # and the model keeps working


@pytest.mark.parametrize('use_reentrant', [False, True])
def test_checkpointing_gives_pytorchs_gradients(use_reentrant):
    ours, ref = make_pair('resnet18', ps=0.)
    x1, x2 = images(4, 32)
    x1.requires_grad_(True)
    y = torch.tensor([0, 1, 1, 0])
    grads = []
    for m in (ours, ref):
        m.train()
        out = m.head(torch.cat([checkpoint(m.encoder, x1, use_reentrant=use_reentrant),
                                checkpoint(m.encoder, x2, use_reentrant=use_reentrant)], 1))
        nn.functional.cross_entropy(out, y).backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads): torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_an_exception_in_a_dispatch_mode_keeps_its_type():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Refuse(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if 'convolution' in str(func): raise KeyError('no convolutions here')
            return func(*args, **(kwargs or {}))

    ours, _ = make_pair('resnet18')
    with Refuse():
        with pytest.raises(KeyError, match='no convolutions here'): ours(*images(2, 32))


# Settings as PyTorch accepts them
def test_numpy_settings_in_a_model():
    ours, ref = make_pair('resnet18')
    for m in (ours, ref):
        m.head[3].p = np.float32(0.0)
        m.encoder[0].stride = (np.int64(2), np.int64(2))
        m.eval()
    x1, x2 = images(2, 32)
    with torch.no_grad(): torch.testing.assert_close(ours(x1, x2), ref(x1, x2), atol=1e-5, rtol=1e-5)
