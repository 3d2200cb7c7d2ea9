"""The Siamese model of fastai's tutorial: one encoder applied to both images, one head."""
import torch
from torch import nn

from ._engine import RustModule

__all__ = ['Module', 'SiameseModel', 'siamese_splitter']


class _PrePostInitMeta(type(nn.Module)):
    "Calls `nn.Module.__init__` before the subclass's `__init__`, as fastai's `Module` does"
    def __call__(cls, *args, **kwargs):
        obj = cls.__new__(cls, *args, **kwargs)
        nn.Module.__init__(obj)
        obj.__init__(*args, **kwargs)
        return obj


class Module(nn.Module, metaclass=_PrePostInitMeta):
    "Same as `nn.Module`, but no need for subclasses to call `super().__init__`"
    def __init__(self): pass


class SiameseModel(RustModule, Module):
    "`head(cat([encoder(x1), encoder(x2)], dim=1))`, computed in one Rust call"
    _sr_kind = 'SiameseModel'

    def __init__(self, encoder, head):
        self.encoder, self.head = encoder, head

    def forward(self, x1, x2): return super().forward(x1, x2)

    def _py_forward(self, x1, x2): return self.head(torch.cat([self.encoder(x1), self.encoder(x2)], dim=1))


def siamese_splitter(model):
    "Parameter groups `[encoder, head]` for a fastai `Learner`"
    return [list(model.encoder.parameters()), list(model.head.parameters())]
