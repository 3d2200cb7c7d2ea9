"""siamese-rs: fastai's Siamese tutorial building blocks, computed by a Rust (libtorch) core."""
import torch  # noqa: F401  (loads libtorch before the native module, which has no RPATH)

from . import exceptions as exceptions
from ._core import Graph  # noqa: F401
from .data import *  # noqa: F403
from .exceptions import *  # noqa: F403
from .index import PairIndex  # noqa: F401
from .layers import *  # noqa: F403
from .learner import *  # noqa: F403
from .learner import imagenet_stats  # noqa: F401
from .models import *  # noqa: F403
from .siamese import *  # noqa: F403
from .weights import load_weights  # noqa: F401

__version__ = '0.1.0'
