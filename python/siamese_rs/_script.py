"""TorchScript twins of our modules. `torch.jit.script` asks each module for `__prepare_scriptable__`;
ours answer with a plain-PyTorch copy of the subtree (these classes, or the `torch.nn` class a layer
mirrors) holding the same parameter and buffer tensors, so the scripted model computes what the
reference `forward`s compute and runs without siamese-rs. The original tree is not changed."""
import copy
from typing import List

import torch
from torch import Tensor, nn


class Flatten(nn.Module):
    def __init__(self, full: bool = False):
        super().__init__()
        self.full = full

    def forward(self, x: Tensor) -> Tensor: return x.view(-1) if self.full else x.view(x.size(0), -1)


class SigmoidRange(nn.Module):
    def forward(self, x: Tensor) -> Tensor: return torch.sigmoid(x) * (self.high - self.low) + self.low


class AdaptiveConcatPool2d(nn.Module):
    def forward(self, x: Tensor) -> Tensor: return torch.cat([self.mp(x), self.ap(x)], 1)


class BasicBlock(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        return self.fc(torch.flatten(x, 1))


class ResBlock(nn.Module):
    def forward(self, x: Tensor) -> Tensor: return self.act(self.convpath(x) + self.idpath(x))


class PoolFlattenClassify(nn.Module):
    "torchvision's VGG and AlexNet"
    def forward(self, x: Tensor) -> Tensor: return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class DenseLayer(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0: out = nn.functional.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock(nn.ModuleDict):
    def forward(self, init_features: Tensor) -> Tensor:
        features: List[Tensor] = [init_features]
        for layer in self.values(): features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        out = nn.functional.adaptive_avg_pool2d(nn.functional.relu(self.features(x), inplace=True), (1, 1))
        return self.classifier(torch.flatten(out, 1))


class Fire(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def forward(self, x: Tensor) -> Tensor: return torch.flatten(self.classifier(self.features(x)), 1)


class SiameseModel(nn.Module):
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.head(torch.cat([self.encoder(x1), self.encoder(x2)], dim=1))


TWINS = {'Flatten': Flatten, 'SigmoidRange': SigmoidRange, 'AdaptiveConcatPool2d': AdaptiveConcatPool2d,
         'BasicBlock': BasicBlock, 'Bottleneck': Bottleneck, 'ResNet': ResNet, 'ResBlock': ResBlock,
         'VGG': PoolFlattenClassify, 'AlexNet': PoolFlattenClassify, '_DenseLayer': DenseLayer,
         '_DenseBlock': DenseBlock, 'DenseNet': DenseNet, 'Fire': Fire, 'SqueezeNet': SqueezeNet,
         'SiameseModel': SiameseModel}


def _torch_class(m):
    "The `torch.nn` class a layer of ours mirrors (`nn.Conv2d` for our `Conv2d`, `nn.Sequential` for `ConvLayer`)"
    return next(c for c in type(m).__mro__ if c.__module__.startswith('torch.nn'))


def twin(m):
    "A plain-PyTorch copy of `m`'s subtree sharing its tensors, for `torch.jit.script`"
    from ._engine import RustModule
    if not isinstance(m, nn.Module): return m
    if isinstance(m, RustModule):
        cls = TWINS.get(m._sr_kind) or _torch_class(m)
        new = cls.__new__(cls)
        new.__dict__.update({k: v for k, v in m.__dict__.items() if k != '_sr_key'})
    elif any(isinstance(c, RustModule) for c in m.modules()): new = copy.copy(m)  # a foreign parent of ours
    else: return m
    new._parameters, new._buffers = dict(m._parameters), dict(m._buffers)
    new._modules = {k: twin(c) for k, c in m._modules.items()}
    return new
