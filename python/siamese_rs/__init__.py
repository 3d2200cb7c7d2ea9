"""siamese-rs: fastai's Siamese tutorial building blocks, computed by a Rust (libtorch) core.

`import siamese_rs` loads torch and the core only; the data helpers (fastai, PIL, scikit-learn's
digits) load on first use of one of their names."""
from . import _loader  # noqa: F401  (first: loads the core, refusing a torch it was not built against)
from . import exceptions as exceptions
from . import export as _export
from . import frozen as _frozen
from . import layers as _layers
from . import learner as _learner
from . import models as _models
from . import siamese as _siamese
from ._core import Graph  # noqa: F401
from .exceptions import *  # noqa: F403
from .export import *  # noqa: F403
from .frozen import *  # noqa: F403
from .layers import *  # noqa: F403
from .learner import *  # noqa: F403
from .learner import imagenet_stats  # noqa: F401
from .models import *  # noqa: F403
from .siamese import *  # noqa: F403
from .weights import load_weights  # noqa: F401

__version__ = '0.1.0'

# `siamese_rs.data`'s public names, imported on first use (it needs fastai).
_DATA = ('ImageError', 'SiameseImage', 'SiameseTransform', 'SimilarityLabel', 'NameLabeller', 'SiameseLoss',
         'siamese_dataloaders', 'ImageTuple', 'ImageTupleBlock', 'siamese_datablock', 'digits_path',
         'DIGIT_NAMES', 'predict_pair', 'encode', 'score_pairs', 'SAME', 'DIFFERENT')

# ... and `siamese_rs.index`'s (it scores files through the data helpers).
_INDEX = ('PairIndex',)

__all__ = ['exceptions', 'load_weights', 'imagenet_stats', *exceptions.__all__, *_export.__all__, *_frozen.__all__,
           *_layers.__all__, *_learner.__all__, *_models.__all__, *_siamese.__all__, *_DATA, *_INDEX]


def __getattr__(name):
    if name in _DATA or name in _INDEX:
        import importlib
        return getattr(importlib.import_module('.data' if name in _DATA else '.index', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__(): return sorted(set(globals()) | set(_DATA) | set(_INDEX))
