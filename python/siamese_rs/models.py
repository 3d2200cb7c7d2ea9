"""Architectures: the full models the arch table builds in Rust, their block classes, and
conversion of torchvision / fastai instances into modules the core computes."""
import sys

import torch
from torch import nn

from . import _core
from ._engine import KIND_CLASSES, RustModule, build, settings_of
from .exceptions import ArgumentTypeError
from .layers import Sequential

__all__ = ['BasicBlock', 'Bottleneck', 'ResNet', 'ARCHS', 'from_torch']

ARCHS = {a['name']: a for a in _core.archs()}


class BasicBlock(RustModule, nn.Module):
    "torchvision's ResNet basic block"
    _sr_kind = 'BasicBlock'
    expansion = 1

    def __init__(self, stride=1):
        super().__init__()
        self.stride = stride
        self.downsample = None

    def _py_forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(RustModule, nn.Module):
    "torchvision's ResNet bottleneck block (stride on the 3x3 conv)"
    _sr_kind = 'Bottleneck'
    expansion = 4

    def __init__(self, stride=1):
        super().__init__()
        self.stride = stride
        self.downsample = None

    def _py_forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(RustModule, nn.Module):
    "torchvision's ResNet"
    _sr_kind = 'ResNet'

    def _py_forward(self, x):
        for name in ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4', 'avgpool'):
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(x, 1))


def _from_torch_classes():
    "Reference class → our class, by the class name the core knows"
    import torchvision.models.resnet as tvr
    pairs = {nn.Sequential: 'Sequential', tvr.BasicBlock: 'BasicBlock', tvr.Bottleneck: 'Bottleneck',
             tvr.ResNet: 'ResNet'}
    for kind in KIND_CLASSES:
        base = getattr(nn, kind, None)
        if isinstance(base, type) and issubclass(base, nn.Module): pairs.setdefault(base, kind)
    fastai_layers = sys.modules.get('fastai.layers')
    if fastai_layers is not None:
        for kind in ('AdaptiveConcatPool2d', 'Flatten', 'SigmoidRange'):
            pairs[getattr(fastai_layers, kind)] = kind
    return pairs


def from_torch(m):
    "A copy of `m`'s tree made of our modules, sharing `m`'s parameters and buffers"
    if not isinstance(m, nn.Module):
        raise ArgumentTypeError(f'model: expected an nn.Module, got {type(m).__name__}')
    return _convert(m, _from_torch_classes())


def _convert(m, classes):
    if isinstance(m, RustModule): return m
    kind = classes.get(type(m))
    if kind is None: return m  # foreign: kept as is, run in Python by its parent
    cls = KIND_CLASSES[kind]
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for k, v in m.__dict__.items():
        if k not in new.__dict__ or k == 'training': new.__dict__[k] = v
    new._parameters.update(m._parameters)
    new._buffers.update(m._buffers)
    new._non_persistent_buffers_set = set(m._non_persistent_buffers_set)
    for name, child in m._modules.items():
        new._modules[name] = None if child is None else _convert(child, classes)
    settings_of(new, kind)  # fails early if a setting cannot be read
    return new


def _arch_fn(name):
    def arch(pretrained=False, *, weights=None, progress=True):
        from .weights import load_pretrained
        model = build(_core.build_arch(name))
        if pretrained or weights is not None: load_pretrained(model, name, weights, progress)
        return model
    arch.__name__ = arch.__qualname__ = name
    arch.__doc__ = f"`{name}` built by the Rust core; `pretrained=True` loads fastai's ImageNet weights"
    arch.__module__ = __name__
    return arch


for _name in ARCHS:
    setattr(sys.modules[__name__], _name, _arch_fn(_name))
    __all__.append(_name)
