"Shared builders: our Siamese model and fastai's reference with the same weights."
import pytest
import torch
from fastai.torch_core import Module as FastaiModule
from fastai.vision import learner as fl
from hypothesis import settings
from torchvision import models as tvm

import siamese_rs as sr

# Property tests draw the same examples on every run (a failure found once is found again, and CI cannot fail
# on a draw a local run never made); no deadline, since this machine's cores are shared.
settings.register_profile('deterministic', derandomize=True, deadline=None, print_blob=True)
settings.load_profile('deterministic')


class RefSiamese(FastaiModule):
    "The tutorial's SiameseModel, verbatim, over fastai's pure-PyTorch modules"
    def __init__(self, encoder, head): self.encoder, self.head = encoder, head
    def forward(self, x1, x2): return self.head(torch.cat([self.encoder(x1), self.encoder(x2)], dim=1))


NF = {'resnet18': 512, 'resnet34': 512, 'resnet50': 2048}


def make_pair(arch='resnet18', ps=0.5, seed=0):
    "`(ours, ref)` Siamese models on `arch` (cut -2, `create_head(2*nf, 2)`), ref loaded with our weights"
    torch.manual_seed(seed)
    ours = sr.SiameseModel(sr.create_body(getattr(sr, arch), cut=-2, pretrained=False),
                           sr.create_head(2 * NF[arch], 2, ps=ps))
    ref = RefSiamese(fl.create_body(getattr(tvm, arch)(), cut=-2), fl.create_head(2 * NF[arch], 2, ps=ps))
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.fixture
def pair18():
    return make_pair('resnet18')


def images(n=2, size=32, seed=1, channels=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g), torch.randn(n, channels, size, size, generator=g)
