"""Architectures: the full models the arch table builds in Rust, their block classes, and
conversion of torchvision / fastai instances into modules the core computes."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

from . import _core
from ._engine import KIND_CLASSES, RustModule, build
from .exceptions import ArgumentTypeError
from .layers import Sequential

__all__ = ['BasicBlock', 'Bottleneck', 'ResNet', 'ConvLayer', 'ResBlock', 'XResNet', 'VGG', 'AlexNet', 'DenseNet',
           'Fire', 'SqueezeNet', 'ARCHS', 'from_torch']

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


class ConvLayer(Sequential):
    "fastai's `ConvLayer`: conv, BatchNorm and activation as an `nn.Sequential`"
    _sr_kind = 'ConvLayer'


class ResBlock(RustModule, nn.Module):
    "fastai's `ResBlock`: `act(convpath(x) + idpath(x))`"
    _sr_kind = 'ResBlock'

    def _py_forward(self, x): return self.act(self.convpath(x) + self.idpath(x))


class XResNet(Sequential):
    "fastai's `XResNet`, an `nn.Sequential`"
    _sr_kind = 'XResNet'


def _pool_flatten_classify(m, x):
    "`features`, `avgpool`, flatten, `classifier`: torchvision's VGG and AlexNet"
    return m.classifier(torch.flatten(m.avgpool(m.features(x)), 1))


class VGG(RustModule, nn.Module):
    "torchvision's VGG"
    _sr_kind = 'VGG'
    _py_forward = _pool_flatten_classify


class AlexNet(RustModule, nn.Module):
    "torchvision's AlexNet"
    _sr_kind = 'AlexNet'
    _py_forward = _pool_flatten_classify


class _DenseLayer(RustModule, nn.Module):
    "torchvision's dense layer: BN-ReLU-conv 1x1, BN-ReLU-conv 3x3, then `F.dropout(drop_rate)`"
    _sr_kind = '_DenseLayer'

    def __init__(self, drop_rate=0., memory_efficient=False):
        super().__init__()
        self.drop_rate, self.memory_efficient = float(drop_rate), memory_efficient

    def forward(self, input):
        # A dense block hands each layer the list of all earlier features, as torchvision's does.
        if isinstance(input, (list, tuple)): input = torch.cat(input, 1)
        return super().forward(input)

    def _py_forward(self, x):
        out = self.conv1(self.relu1(self.norm1(x)))
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0: out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBlock(RustModule, nn.ModuleDict):
    "torchvision's dense block: each layer sees every earlier output, all are concatenated"
    _sr_kind = '_DenseBlock'
    _version = 2

    def _py_forward(self, init_features):
        features = [init_features]
        for layer in self.values(): features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(Sequential):
    "torchvision's DenseNet transition: BN, ReLU, conv 1x1, average pool"
    _sr_kind = '_Transition'


class DenseNet(RustModule, nn.Module):
    "torchvision's DenseNet (ReLU and pooling after `features` happen in `forward`)"
    _sr_kind = 'DenseNet'

    def _py_forward(self, x):
        out = F.adaptive_avg_pool2d(F.relu(self.features(x), inplace=True), (1, 1))
        return self.classifier(torch.flatten(out, 1))


class Fire(RustModule, nn.Module):
    "torchvision's SqueezeNet Fire module"
    _sr_kind = 'Fire'

    def __init__(self, inplanes):
        super().__init__()
        self.inplanes = inplanes

    def _py_forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(RustModule, nn.Module):
    "torchvision's SqueezeNet"
    _sr_kind = 'SqueezeNet'

    def __init__(self, num_classes=1000):
        super().__init__()
        self.num_classes = num_classes

    def _py_forward(self, x): return torch.flatten(self.classifier(self.features(x)), 1)


def _from_torch_classes():
    "Reference class → our class, by the class name the core knows"
    import torchvision.models as tvm
    from torchvision.models import densenet as tvd
    from torchvision.models import squeezenet as tvs
    pairs = {nn.Sequential: 'Sequential', tvm.resnet.BasicBlock: 'BasicBlock', tvm.resnet.Bottleneck: 'Bottleneck',
             tvm.ResNet: 'ResNet', tvm.VGG: 'VGG', tvm.AlexNet: 'AlexNet', tvm.DenseNet: 'DenseNet',
             tvd._DenseLayer: '_DenseLayer', tvd._DenseBlock: '_DenseBlock', tvd._Transition: '_Transition',
             tvm.SqueezeNet: 'SqueezeNet', tvs.Fire: 'Fire'}
    for kind in KIND_CLASSES:
        base = getattr(nn, kind, None)
        if isinstance(base, type) and issubclass(base, nn.Module): pairs.setdefault(base, kind)
    fastai_layers = sys.modules.get('fastai.layers')
    if fastai_layers is not None:
        for kind in ('AdaptiveConcatPool2d', 'Flatten', 'SigmoidRange'):
            pairs[getattr(fastai_layers, kind)] = kind
        pairs[fastai_layers.ConvLayer], pairs[fastai_layers.ResBlock] = 'ConvLayer', 'ResBlock'
    xresnet = sys.modules.get('fastai.vision.models.xresnet')
    if xresnet is not None: pairs[xresnet.XResNet] = 'XResNet'
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
    return new


def _arch_fn(name):
    def arch(pretrained=False, *, weights=None, progress=True):
        from .weights import load_pretrained
        model = build(_core.build_arch(name))
        model._sr_arch = name  # what `create_body` records for `export_model` when given this instance
        if pretrained or weights is not None: load_pretrained(model, name, weights, progress)
        return model
    arch.__name__ = arch.__qualname__ = name
    arch.__doc__ = f"`{name}` built by the Rust core; `pretrained=True` loads fastai's ImageNet weights"
    arch.__module__ = __name__
    return arch


for _name in ARCHS:
    setattr(sys.modules[__name__], _name, _arch_fn(_name))
    __all__.append(_name)
