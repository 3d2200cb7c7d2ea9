"""`export_model` / `load_model`: a trained Siamese model as one safetensors file that a program without Python
can read: the weights under fastai's `state_dict` keys, and one metadata entry, `"siamese_rs"`, a JSON document
with what builds the model again (the arch, `create_body`'s `n_in` and `cut`, `create_head`'s arguments) and what
prepares its inputs (the `Normalize` statistics, the validation `Resize`, the class labels).

Only models whose every module was built by `create_body` / `create_head` are exported: before writing,
`export_model` builds the model the metadata describes and compares the two module trees (classes, settings,
tensor names and shapes), so a file never describes another model than the one it holds the weights of."""
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from . import _core, _model_doc
from . import learner as _learner
from . import models as _models
from ._engine import _MISSING, RustModule, settings_of
from .exceptions import ArgumentError, ArgumentTypeError, ExportError, SiameseError, WeightsError, WeightsNotFoundError
from .siamese import SiameseModel

__all__ = ['export_model', 'load_model']

FORMAT = 'siamese-rs model'
FORMAT_VERSION = 1
METADATA_KEY = 'siamese_rs'
HEAD_ARGS = _model_doc.HEAD_FIELDS


def export_model(learn_or_model, path):
    """Write `learn_or_model` (a Learner, a SiameseModel or a frozen one) to the safetensors file `path`: float32
    weights under the model's `state_dict` keys and the `"siamese_rs"` metadata (JSON). Returns the path."""
    model, dls = _source(learn_or_model)
    path = _out_path(path)
    body = _body_config(model.encoder)
    head = _head_config(model.head)
    built = _build(body, head)
    _check_same(model, built, f'{_describe(body)} and {_describe_head(head)}')
    from . import __version__
    from .index import fingerprint
    tensors = _tensors(model)
    built.load_state_dict(tensors)
    info = {'format': FORMAT, 'format_version': FORMAT_VERSION, **body, 'head': head,
            'stats': _stats(dls), 'input': _input(dls), 'labels': _labels(dls),
            # What `PairIndex` records of the model (`load_model(path)` has it): the command line's
            # galleries carry it, so `PairIndex.load` takes them with that model and refuses others.
            'fingerprint': fingerprint(built),
            'torch_version': torch.__version__, 'siamese_rs_version': __version__}
    try: document = json.dumps(info, allow_nan=False)  # strict JSON, as any reader parses it
    except ValueError:
        raise ExportError(f'export_model: the metadata holds NaN or infinity (stats {info["stats"]}, head {head}); '
                          'a model file needs finite numbers') from None
    _write(path, tensors, {METADATA_KEY: document})
    return path


def load_model(path):
    """The SiameseModel stored at `path` by `export_model`, built by `create_body` / `create_head` (no download)
    with the file's weights, in eval mode; its metadata (the JSON document, parsed) is `model.export_info`.
    Only safetensors is read: no pickled code runs. Every field of the document is checked and the header's
    tensors are compared with the shapes the document implies before anything is built; a file whose weights are
    not the ones it was exported with (its recorded fingerprint differs) is refused."""
    from safetensors import safe_open
    p = _in_path(path)
    try:
        with safe_open(str(p), 'pt') as f:  # the header (offsets, dtypes, shapes, length) is checked on opening
            info = _parse(p, f.metadata() or {})
            body = {k: info[k] for k in ('arch', 'n_in', 'cut')}
            _check_header(p, info, body, {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()})
            try: model = _build(body, info['head'])
            except SiameseError as e: raise _cannot_build(p, e) from None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SiameseError: raise
    except Exception as e:
        raise WeightsError(f'path: cannot read {str(p)!r} as a safetensors file ({type(e).__name__}: {e}); load_model '
                           'reads the files sr.export_model writes, and never unpickles') from None
    from .weights import load_weights
    try: load_weights(model, tensors, strict=True)
    except WeightsError as e:
        raise WeightsError(f'path: the weights in {str(p)!r} do not fit the model its metadata describes '
                           f'({_describe(body)}): {e}') from None
    from .index import fingerprint
    if fingerprint(model) != info['fingerprint']:
        raise WeightsError(f'path: the weights in {str(p)!r} are not the ones it was exported with (their fingerprint '
                           f'is {fingerprint(model)}, the file records {info["fingerprint"]}); export the model again')
    model.eval()
    model.export_info = info
    return model


def _cannot_build(path, e):
    return WeightsError(f'path: {str(path)!r} describes a model siamese-rs cannot build ({e})')


_DTYPES = {'float32': 'F32', 'int64': 'I64'}


def _check_header(path, info, body, header):
    "The header's `{key: (dtype, shape)}` against what the document builds (found without allocating it)"
    h = info['head']
    try:
        want = _core.state_shapes(body['arch'], body['n_in'], body['cut'], h['nf'], h['n_out'], h['lin_ftrs'],
                                  h['ps'], h['pool'], h['concat_pool'], h['first_bn'], h['bn_final'], h['lin_first'],
                                  None if h['y_range'] is None else tuple(h['y_range']))
    except SiameseError as e: raise _cannot_build(path, e) from None
    want = {k: (_DTYPES[d], list(s)) for k, d, s in want}
    odd = [f'{k} is missing (the model has {d} {s})' for k, (d, s) in want.items() if k not in header]
    odd += [f'{k} is {header[k][0]} {list(header[k][1])} where the model has {d} {s}' for k, (d, s) in want.items()
            if k in header and (header[k][0], list(header[k][1])) != (d, s)]
    odd += [f'{k} is not a tensor of the model' for k in header if k not in want]
    if odd:
        more = f' (and {len(odd) - 4} more)' if len(odd) > 4 else ''
        raise WeightsError(f'path: the weights in {str(path)!r} do not fit the model its metadata describes '
                           f'({_describe(body)}): {"; ".join(odd[:4])}{more}')


# What the model is
def _source(obj):
    "`(SiameseModel, dls or None)` of a Learner, a SiameseModel, a frozen one or a (Distributed)DataParallel wrapper"
    from .frozen import FrozenModel
    if isinstance(obj, nn.Module): model, dls = obj, None
    elif hasattr(obj, 'model'): model, dls = obj.model, getattr(obj, 'dls', None)  # a Learner
    else: model, dls = obj, None
    if isinstance(model, FrozenModel): model = model.snapshot  # the state it answers with
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)): model = model.module
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f'export_model: expected a Learner, a SiameseModel or a frozen model (sr.freeze), '
                                f'got {type(obj).__name__}')
    if not isinstance(model, SiameseModel):
        raise ExportError(f'export_model: the model is {_qualname(model)}; export_model writes a '
                          f'sr.SiameseModel(sr.create_body(...), sr.create_head(...))')
    return model, dls


def _qualname(m): return f'{type(m).__module__}.{type(m).__qualname__}'


def _describe(body):
    return f'sr.create_body(sr.{body["arch"]}, n_in={body["n_in"]}, pretrained=False, cut={body["cut"]!r})'


def _describe_head(head):
    args = [repr(head['nf']), repr(head['n_out'])] + [f'{k}={head[k]!r}' for k in HEAD_ARGS[2:]]
    return f'sr.create_head({", ".join(args)})'


def _body_config(encoder):
    "`{'arch', 'n_in', 'cut'}` of the encoder, as `create_body` recorded them (the arch found for a torchvision model)"
    record = encoder.__dict__.get('_sr_body')
    if record is None:
        raise ExportError(f'export_model: the encoder ({_qualname(encoder)}) was not built by sr.create_body; export '
                          f'needs sr.create_body(arch, n_in, cut=...){_REBUILD}')
    if 'reason' in record: raise ExportError(f'export_model: the encoder cannot be exported: {record["reason"]}')
    body = {'arch': record['arch'], 'n_in': record['n_in'], 'cut': record['cut']}
    if body['arch'] is not None: return body
    # A torchvision / fastai instance: the first arch of its family whose body is this one (two archs whose
    # bodies are the same module tree at this cut build the same model, so either name is right).
    closest = None
    for arch, row in _models.ARCHS.items():
        if row['family'] != record['family']: continue
        cand = {**body, 'arch': arch}
        with torch.random.fork_rng(devices=[]):
            built = _learner.create_body(getattr(_models, arch), n_in=cand['n_in'], pretrained=False, cut=cand['cut'])
        diff = _first_difference(encoder, built, 'model.encoder')
        if diff is None: return cand
        if closest is None or diff[0] > closest[0]: closest = (*diff, arch)
    raise ExportError(f'export_model: the encoder is not a {record["family"]} body that sr.create_body builds; closest, '
                      f'{_describe({**body, "arch": closest[2]})}: {closest[1]}')


# Modules built before create_body / create_head recorded their arguments (an older siamese-rs) have no record.
_REBUILD = (' (a model pickled by a siamese-rs older than export_model lacks the record of those arguments: build it '
            'again with sr.create_body / sr.create_head and load its state_dict)')


def _head_config(head):
    record = head.__dict__.get('_sr_head')
    if record is None:
        raise ExportError(f'export_model: the head ({_qualname(head)}) was not built by sr.create_head; export needs '
                          f'sr.create_head(nf, n_out, ...){_REBUILD}')
    return dict(record)


def _build(body, head):
    "The SiameseModel `create_body` / `create_head` build from the metadata, without touching the caller's RNG"
    with torch.random.fork_rng(devices=[]):
        encoder = _learner.create_body(getattr(_models, body['arch']), n_in=body['n_in'], pretrained=False,
                                       cut=body['cut'])
        return SiameseModel(encoder, _learner.create_head(**head))


def _check_same(model, built, described):
    diff = _first_difference(model, built, 'model')
    if diff is not None:
        raise ExportError(f'export_model: {diff[1]}; the file would describe {described}, which is another model. '
                          f'Export a model built by sr.create_body / sr.create_head and not edited since, or save its '
                          f'state_dict instead')
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    if keys != want:  # the walk compares every module's tensors; this is the state_dict seen whole
        odd = sorted(set(keys) ^ set(want)) or [k for k in keys if keys[k] != want[k]]
        raise ExportError(f'export_model: the state_dict differs from what the metadata builds at {odd[:4]}')


def _first_difference(a, b, path, counter=None):
    "`(depth, message)` of the first place where module trees `a` (the user's) and `b` (built) differ, or None"
    counter = counter if counter is not None else [0]
    counter[0] += 1
    here = counter[0]
    if type(a) is not type(b):
        own = '' if type(a).__module__.split('.')[0] == 'siamese_rs' else ' (a module siamese-rs did not build)'
        return here, f'{path} is {_qualname(a)}{own} where the recorded arguments build {_qualname(b)}'
    if isinstance(a, RustModule):
        kind = type(b)._sr_kind
        sa, sb = settings_of(a, kind), settings_of(b, kind)
        sa.update({k: getattr(a, k, _MISSING) for k in type(b)._sr_fixed})
        sb.update({k: getattr(b, k, _MISSING) for k in type(b)._sr_fixed})
        for k in sb:
            if sa[k] != sb[k]:
                shown = repr(sa[k]) if sa[k] is not _MISSING else repr(getattr(a, k)) if hasattr(a, k) else '(missing)'
                return here, f'{path} ({type(a).__name__}) has {k}={shown} where the recorded arguments build {sb[k]!r}'
    for what in ('_parameters', '_buffers'):
        ta = {k: tuple(v.shape) for k, v in getattr(a, what).items() if v is not None}
        tb = {k: tuple(v.shape) for k, v in getattr(b, what).items() if v is not None}
        if ta != tb:
            return here, (f'{path} ({type(a).__name__}) has {what[1:]} {_shapes(ta)} where the recorded arguments '
                          f'build {_shapes(tb)}')
    ca, cb = a._modules, b._modules
    if list(ca) != list(cb):
        extra, missing = [k for k in ca if k not in cb], [k for k in cb if k not in ca]
        if extra and ca[extra[0]] is not None:
            return here, f'{path}.{extra[0]} is {_qualname(ca[extra[0]])}, a module the recorded arguments do not build'
        return here, (f'{path} ({type(a).__name__}) has children {list(ca)} where the recorded arguments build '
                      f'{list(cb)}' + (f' (missing {missing})' if missing else ''))
    for name in cb:
        x, y = ca[name], cb[name]
        if x is None or y is None:
            if x is not y: return here, f'{path}.{name} is {x!r} where the recorded arguments build {y!r}'
            continue
        diff = _first_difference(x, y, f'{path}.{name}', counter)
        if diff is not None: return diff
    return None


def _shapes(d): return '{' + ', '.join(f'{k}: {list(s)}' for k, s in d.items()) + '}'


# What prepares its inputs (fastai's transforms, read without importing fastai: a Learner has loaded it)
def _fastai_class(module, name):
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _valid_dl(dls):
    "The validation `DataLoader` of fastai `DataLoaders` (its transforms are what inference applies), or None"
    if dls is None: return None
    try: return dls.valid
    except Exception: return None


def _tfms(dl, attr):
    pipe = getattr(dl, attr, None) if dl is not None else None
    return list(getattr(pipe, 'fs', None) or [])


def _floats(t):
    "A tensor's values as JSON numbers; float32 ones in their shortest form that reads back as the same float32"
    t = torch.as_tensor(t).detach().flatten().cpu()
    if t.dtype == torch.float32:
        import numpy as np
        return [float(str(v)) for v in t.numpy().astype(np.float32)]
    return [float(v) for v in t.tolist()]


def _stats(dls):
    "`{'mean', 'std'}` of the first `Normalize` of the validation batch transforms, or None"
    norm = _fastai_class('fastai.data.transforms', 'Normalize')
    for t in _tfms(_valid_dl(dls), 'after_batch'):
        if norm is not None and isinstance(t, norm) and getattr(t, 'mean', None) is not None:
            return {'mean': _floats(t.mean), 'std': _floats(t.std)}
    return None


def _input(dls):
    "`{'size': [h, w], 'method', 'pad_mode'}` of the validation item transforms' `Resize`, or None"
    resize = _fastai_class('fastai.vision.augment', 'Resize')
    for t in _tfms(_valid_dl(dls), 'after_item'):
        if resize is not None and type(t) is resize:
            w, h = t.size  # fastai keeps (width, height), as PIL does
            return {'size': [int(h), int(w)], 'method': str(t.method), 'pad_mode': str(t.pad_mode)}
    return None


def _labels(dls):
    "The class vocab of the learner's data; for `siamese_dataloaders` (no vocab), what `SimilarityLabel` decodes to"
    if dls is None: return None
    try: vocab = dls.vocab
    except Exception: vocab = None
    if vocab is not None:
        return [v if type(v) in (str, int, float, bool) else str(v) for v in vocab]
    data = sys.modules.get('siamese_rs.data')
    if data is not None and any(isinstance(t, data.SimilarityLabel) for t in _tfms(_valid_dl(dls), 'after_item')):
        return [data.DIFFERENT, data.SAME]  # class 0 decodes to 'different', class 1 to 'same'
    return None


# The file
def _out_path(path):
    try: p = Path(os.fspath(path))
    except TypeError:
        raise ArgumentTypeError(f'path: expected a file path (str or os.PathLike), got {type(path).__name__}') from None
    if p.is_dir(): raise ArgumentError(f'path: {str(p)!r} is a directory; expected a file path such as model.safetensors')
    if not p.parent.is_dir(): raise ArgumentError(f'path: the folder {str(p.parent)!r} does not exist')
    return p


def _tensors(model):
    "The state_dict as safetensors holds it: floating tensors float32, every tensor contiguous on the CPU, unshared"
    out = {}
    for k, v in model.state_dict().items():
        if v.device.type == 'meta': raise ExportError(f'export_model: {k!r} is on the meta device (it has no values)')
        v = v.detach().to('cpu', torch.float32 if v.is_floating_point() else v.dtype)
        out[k] = v.contiguous().clone()
    return out


def _write(path, tensors, metadata):
    "Write atomically: a reader never sees half a file, and an existing file is replaced only once the new one is whole"
    from safetensors.torch import save_file
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists(): tmp.unlink()


def _in_path(path):
    try: p = Path(os.fspath(path))
    except TypeError:
        raise ArgumentTypeError(f'path: expected a file path (str or os.PathLike), got {type(path).__name__}') from None
    if not p.is_file(): raise WeightsNotFoundError(f'path: no model file at {str(p)!r}')
    return p


def _parse(path, meta):
    "The metadata document, checked field by field (`_model_doc`)"
    raw = meta.get(METADATA_KEY)
    if raw is None:
        raise WeightsError(f'path: {str(path)!r} has no {METADATA_KEY!r} metadata, so it is not a model file of '
                           f'sr.export_model (metadata keys: {sorted(meta)}); for a bare state dict use sr.load_weights')
    try: info = _model_doc.parse(raw)
    except ValueError as e:
        raise WeightsError(f'path: the {METADATA_KEY!r} metadata of {str(path)!r} is not JSON ({e})') from None
    if not isinstance(info, dict) or info.get('format') != FORMAT:
        found = info.get('format') if isinstance(info, dict) else type(info).__name__
        raise WeightsError(f'path: {str(path)!r} is not a {FORMAT} file (format {found!r})')
    version = info.get('format_version')
    if type(version) is not int or version != FORMAT_VERSION:
        from . import __version__
        newer = type(version) is int and version > FORMAT_VERSION
        raise WeightsError(f'path: {str(path)!r} is format_version {version!r}; siamese-rs {__version__} reads '
                           f'format_version {FORMAT_VERSION}' + ('; upgrade siamese-rs to load it' if newer else ''))
    _model_doc.check(path, info, _models.ARCHS)
    return info
