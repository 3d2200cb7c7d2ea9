"""The exceptions siamese-rs raises: one base class, each also a subclass of the matching builtin."""

__all__ = ['SiameseError', 'ArgumentError', 'ShapeError', 'ArgumentTypeError', 'UnknownArchError',
           'WeightsNotFoundError', 'WeightsError', 'TorchError', 'StructureError', 'DTypeError', 'DeviceError',
           'ExportError']


class SiameseError(Exception):
    "Base class of every error siamese-rs raises"


class ArgumentError(SiameseError, ValueError):
    "An argument has a value siamese-rs cannot use"


class ShapeError(SiameseError, ValueError):
    "An input tensor has the wrong number of dimensions or the wrong sizes"


class ArgumentTypeError(SiameseError, TypeError):
    "An argument of the wrong type"


class DTypeError(SiameseError, TypeError, RuntimeError):
    "An input whose dtype differs from the model's (also a RuntimeError, as PyTorch raises)"


class DeviceError(SiameseError, ValueError, RuntimeError):
    "An input on another device than the model (also a RuntimeError, as PyTorch raises)"


class UnknownArchError(SiameseError, KeyError):
    "An architecture siamese-rs does not know"
    def __str__(self): return str(self.args[0]) if self.args else ''


class WeightsNotFoundError(SiameseError, FileNotFoundError):
    "Pretrained weights that are not on disk and cannot be downloaded"


class WeightsError(SiameseError, ValueError):
    "A weight file or state dict that does not fit the model, or cannot be read"


class StructureError(SiameseError, TypeError):
    "A module tree edit that the Rust core cannot honour"


class ExportError(SiameseError, ValueError):
    "A model `export_model` cannot write: a module `create_body` / `create_head` did not build, or a tree edited since"


class TorchError(SiameseError, RuntimeError):
    "libtorch refused an operation (its message, without the C++ backtrace)"
