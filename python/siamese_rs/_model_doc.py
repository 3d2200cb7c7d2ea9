"""The checks of a model file's JSON document, field by field, before anything is built from it (the command
line's `src/deploy/document.rs` applies the same rules): strict JSON (no NaN or Infinity), strict types (a bool is
not an int, a string not a bool), finite numbers, every field present and no other, sizes bounded."""
import json
import math

from .exceptions import WeightsError

FIELDS = ('format', 'format_version', 'arch', 'n_in', 'cut', 'head', 'stats', 'input', 'labels', 'fingerprint',
          'torch_version', 'siamese_rs_version')
HEAD_FIELDS = ('nf', 'n_out', 'lin_ftrs', 'ps', 'pool', 'concat_pool', 'first_bn', 'bn_final', 'lin_first', 'y_range')
MAX_FEATURES = 1 << 31   # the Rust core's largest layer size (`head::MAX_FEATURES`)
MAX_LIST = 1024          # longest list of layer sizes or dropout probabilities
MAX_LABELS = 1 << 20
MAX_SIDE = 8192          # largest side of the validation Resize, in pixels
_METHODS, _PAD_MODES = ('crop', 'squish', 'pad'), ('zeros', 'border', 'reflection')


class _Bad(Exception):
    "A field that fails its check: `(field, expected, given)`; the caller names the file"


def parse(raw):
    "The document `raw` as strict JSON (NaN, Infinity and -Infinity are not JSON, whatever Python's json allows)"
    def refuse(name): raise ValueError(f'{name} is not JSON (a model file holds finite numbers)')
    return json.loads(raw, parse_constant=refuse)


def check(path, info, archs):
    "Every field of `info` (format and version already checked), or a WeightsError naming the file and the field"
    try: _check(info, archs)
    except _Bad as e:
        field, expected, given = e.args
        shown = '(missing)' if given is _MISSING else _short(given)
        raise WeightsError(f'path: {str(path)!r}: metadata field {field} must be {expected}, got {shown}') from None


_MISSING = object()


def _short(v):
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 80 else s[:77] + '...'


def _object(v, field, keys):
    expected = f'an object with the keys {", ".join(keys)}'
    if not isinstance(v, dict): raise _Bad(field or '(the document)', expected, v)
    for k in keys:
        if k not in v: raise _Bad(f'{field}.{k}' if field else k, 'present', _MISSING)
    extra = [k for k in v if k not in keys]
    if extra: raise _Bad(field or '(the document)', expected, f'an object with {extra[0]!r}')
    return v


def _int(v, field, lo, hi):
    if type(v) is not int or not lo <= v <= hi: raise _Bad(field, f'an int from {lo} to {hi}', v)
    return v


def _number(v, field):
    if type(v) not in (int, float) or not math.isfinite(v) or (type(v) is int and abs(v) >= 1 << 63):
        raise _Bad(field, 'a finite number', v)
    return v


def _list(v, field, what, lo, hi):
    if type(v) is not list or not lo <= len(v) <= hi: raise _Bad(field, f'a list of {lo} to {hi} {what}', v)
    return v


def _string(v, field, choices=()):
    if type(v) is not str or len(v) > 256 or (choices and v not in choices):
        raise _Bad(field, f'one of {", ".join(choices)}' if choices else 'a string', v)
    return v


def _check(info, archs):
    _object(info, '', FIELDS)
    _string(info['arch'], 'arch', tuple(archs))
    n_in = _int(info['n_in'], 'n_in', 1, MAX_FEATURES)
    if info['cut'] is not None: _int(info['cut'], 'cut', -MAX_FEATURES, MAX_FEATURES)
    _check_head(_object(info['head'], 'head', HEAD_FIELDS))
    if info['stats'] is not None:
        s = _object(info['stats'], 'stats', ('mean', 'std'))
        what = f'{n_in} finite numbers (one per input channel)'
        for i, v in enumerate(_list(s['mean'], 'stats.mean', what, n_in, n_in)): _number(v, f'stats.mean[{i}]')
        for i, v in enumerate(_list(s['std'], 'stats.std', what, n_in, n_in)):
            if _number(v, f'stats.std[{i}]') == 0: raise _Bad(f'stats.std[{i}]', 'a non-zero finite number', v)
    if info['input'] is not None:
        i = _object(info['input'], 'input', ('size', 'method', 'pad_mode'))
        for k, v in enumerate(_list(i['size'], 'input.size', 'sides [h, w]', 2, 2)): _int(v, f'input.size[{k}]', 1, MAX_SIDE)
        _string(i['method'], 'input.method', _METHODS)
        _string(i['pad_mode'], 'input.pad_mode', _PAD_MODES)
    if info['labels'] is not None:
        for i, v in enumerate(_list(info['labels'], 'labels', 'labels', 0, MAX_LABELS)):
            if type(v) is float: _number(v, f'labels[{i}]')
            elif type(v) not in (str, int, bool): raise _Bad(f'labels[{i}]', 'a string, a number or a bool', v)
    fp = _string(info['fingerprint'], 'fingerprint')
    if len(fp) != 64 or any(c not in '0123456789abcdef' for c in fp):
        raise _Bad('fingerprint', '64 lowercase hex digits (sha256)', fp)
    _string(info['torch_version'], 'torch_version')
    _string(info['siamese_rs_version'], 'siamese_rs_version')


def _check_head(h):
    _int(h['nf'], 'head.nf', 1, MAX_FEATURES)
    _int(h['n_out'], 'head.n_out', 1, MAX_FEATURES)
    if h['lin_ftrs'] is not None:
        for i, v in enumerate(_list(h['lin_ftrs'], 'head.lin_ftrs', 'layer sizes', 0, MAX_LIST)):
            _int(v, f'head.lin_ftrs[{i}]', 1, MAX_FEATURES)
    for i, v in enumerate(_list(h['ps'], 'head.ps', 'dropout probabilities', 1, MAX_LIST)):
        if not 0 <= _number(v, f'head.ps[{i}]') <= 1: raise _Bad(f'head.ps[{i}]', 'a probability from 0 to 1', v)
    for f in ('pool', 'concat_pool', 'first_bn', 'bn_final', 'lin_first'):
        if type(h[f]) is not bool: raise _Bad(f'head.{f}', 'true or false', h[f])
    if h['y_range'] is not None:
        for i, v in enumerate(_list(h['y_range'], 'head.y_range', 'finite numbers [low, high]', 2, 2)):
            _number(v, f'head.y_range[{i}]')
