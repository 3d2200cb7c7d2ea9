"""Loading the native module: it is compiled against one torch release and refuses any other.
Importing this module checks (torch is imported first: it loads libtorch and its Python side)."""
import importlib

import torch


def _release(v): return str(v).split('+')[0]


def check_torch():
    "Raise `ImportError` naming both versions when the installed torch is not the one the core was built against"
    try: core = importlib.import_module('siamese_rs._core')
    except ImportError as e:
        raise ImportError(f'siamese_rs: the native module does not load with torch {torch.__version__} ({e}); '
                          'it was probably built against another torch: rebuild it (pip install --no-build-isolation '
                          '--force-reinstall siamese-rs) or install the torch it was built for') from e
    built = core.TORCH_VERSION
    if built != 'unknown' and built != _release(torch.__version__):
        raise ImportError(f'siamese_rs was built against torch {built} but torch {torch.__version__} is installed; '
                          f'install torch=={built}, or rebuild siamese-rs against this torch '
                          '(pip install --no-build-isolation --force-reinstall siamese-rs)')


check_torch()
