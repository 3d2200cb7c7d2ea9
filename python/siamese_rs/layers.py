"""Layers computed by the Rust core, each a subclass of the PyTorch or fastai class it mirrors
(same name, constructor, `repr`, `state_dict` keys and `isinstance` checks)."""
import torch
from torch import nn

from ._engine import RustModule

__all__ = ['Sequential', 'Conv2d', 'BatchNorm1d', 'BatchNorm2d', 'Linear', 'ReLU', 'MaxPool2d', 'AvgPool2d',
           'AdaptiveAvgPool2d', 'AdaptiveMaxPool2d', 'AdaptiveConcatPool2d', 'Flatten', 'Dropout',
           'SigmoidRange', 'LinBnDrop', 'BatchNorm', 'Identity']


class _Weighted(RustModule):
    @classmethod
    def _sr_new(cls, settings):
        # Built on the meta device: the core supplies the initialised tensors.
        return cls(**settings, device='meta')


class Sequential(RustModule, nn.Sequential):
    "`nn.Sequential` run by the core"
    _sr_kind = 'Sequential'


class Conv2d(_Weighted, nn.Conv2d):
    _sr_kind = 'Conv2d'
    _sr_fixed = {'padding_mode': 'zeros'}  # string paddings ('same', 'valid') also run in PyTorch


class BatchNorm1d(_Weighted, nn.BatchNorm1d): _sr_kind = 'BatchNorm1d'
class BatchNorm2d(_Weighted, nn.BatchNorm2d): _sr_kind = 'BatchNorm2d'
class Linear(_Weighted, nn.Linear): _sr_kind = 'Linear'
class ReLU(RustModule, nn.ReLU): _sr_kind = 'ReLU'
class AdaptiveAvgPool2d(RustModule, nn.AdaptiveAvgPool2d): _sr_kind = 'AdaptiveAvgPool2d'


class MaxPool2d(RustModule, nn.MaxPool2d):
    _sr_kind = 'MaxPool2d'
    _sr_fixed = {'return_indices': False}


class AvgPool2d(RustModule, nn.AvgPool2d):
    _sr_kind = 'AvgPool2d'
    _sr_fixed = {'divisor_override': None}


class AdaptiveMaxPool2d(RustModule, nn.AdaptiveMaxPool2d):
    _sr_kind = 'AdaptiveMaxPool2d'
    _sr_fixed = {'return_indices': False}


class Dropout(RustModule, nn.Dropout): _sr_kind = 'Dropout'
class Identity(RustModule, nn.Identity): _sr_kind = 'Identity'


class AdaptiveConcatPool2d(RustModule, nn.Module):
    "Layer that concats `AdaptiveAvgPool2d` and `AdaptiveMaxPool2d` (max first), as fastai's"
    _sr_kind = 'AdaptiveConcatPool2d'

    def __init__(self, size=None):
        super().__init__()
        self.size = size or 1
        self.ap = AdaptiveAvgPool2d(self.size)
        self.mp = AdaptiveMaxPool2d(self.size)

    def _py_forward(self, x): return torch.cat([self.mp(x), self.ap(x)], 1)


class Flatten(RustModule, nn.Module):
    "Flatten `x` to a single dimension, e.g. at end of a model. `full` for rank-1 tensor"
    _sr_kind = 'Flatten'

    def __init__(self, full=False):
        super().__init__()
        self.full = full

    def extra_repr(self): return f'full={self.full}'
    def _py_forward(self, x): return x.view(-1) if self.full else x.view(x.size(0), -1)


class SigmoidRange(RustModule, nn.Module):
    "Sigmoid module with range `(low, high)`"
    _sr_kind = 'SigmoidRange'

    def __init__(self, low, high):
        super().__init__()
        self.low, self.high = low, high

    def extra_repr(self): return f'low={self.low}, high={self.high}'
    def _py_forward(self, x): return torch.sigmoid(x) * (self.high - self.low) + self.low


def BatchNorm(nf, ndim=2, **kwargs):
    "BatchNorm layer with `nf` features and `ndim`, weight 1 and bias 1e-3 as fastai's"
    bn = (BatchNorm1d if ndim == 1 else BatchNorm2d)(nf, **kwargs)
    with torch.no_grad():
        bn.bias.fill_(1e-3)
        bn.weight.fill_(1.)
    return bn


class LinBnDrop(Sequential):
    "Module grouping `BatchNorm1d`, `Dropout` and `Linear` layers"
    def __init__(self, n_in, n_out, bn=True, p=0., act=None, lin_first=False):
        layers = [BatchNorm(n_out if lin_first else n_in, ndim=1)] if bn else []
        if p != 0: layers.append(Dropout(p))
        lin = [Linear(n_in, n_out, bias=not bn)]
        if act is not None: lin.append(act)
        layers = lin + layers if lin_first else layers + lin
        super().__init__(*layers)
