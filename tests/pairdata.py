"A tiny synthetic dataset of image pairs as fastai `DataLoaders`, picklable for `learn.export`."
import torch
from fastai.data.core import Datasets
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat

import siamese_rs as sr

_G = torch.Generator().manual_seed(0)
X1, X2 = torch.randn(16, 3, 16, 16, generator=_G), torch.randn(16, 3, 16, 16, generator=_G)
Y = torch.randint(0, 2, (16,), generator=_G)


def get_x1(i): return X1[i]
def get_x2(i): return X2[i]
def get_y(i): return Y[i]


def pair_dls(bs=4):
    "fastai `DataLoaders` of `(x1, x2, y)`: 12 training pairs, 4 validation pairs, no shuffling"
    dsets = Datasets(list(range(16)), tfms=[[get_x1], [get_x2], [get_y]], n_inp=2, splits=[list(range(12)), list(range(12, 16))])
    return dsets.dataloaders(bs=bs, shuffle=False, device='cpu')


def tiny_model(seed=0, ps=0.0):
    "A small Siamese model: resnet18's stem and first stage, a head with one hidden layer"
    torch.manual_seed(seed)
    body = sr.create_body(sr.resnet18, cut=5, pretrained=False)
    return sr.SiameseModel(body, sr.create_head(128, 2, lin_ftrs=[16], ps=ps))


def pair_learner(model=None, path='.', **kwargs):
    return Learner(pair_dls(), model if model is not None else tiny_model(), loss_func=CrossEntropyLossFlat(),
                   splitter=sr.siamese_splitter, path=path, **kwargs)
