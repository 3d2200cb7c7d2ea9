"""The file `PairIndex.save` writes (and the command line's galleries): safetensors with `a` (each image's rows as
first image of a pair) and, unless they are the same rows, `b` (as second), and string metadata.

A file a user hands us is untrusted: the safetensors header (its length, JSON, tensor names, dtypes, shapes and
offsets) and every metadata field are checked before anything is allocated, and the tensors' bytes against the
checksums recorded at save time (version 2), so that a damaged, swapped or tampered file is an error naming the
field, never wrong scores. Version 1 files (before checksums) are still read, with every check but that one."""
import json
import math
import os
import re
from pathlib import Path

import torch

from . import _core
from .exceptions import WeightsError, WeightsNotFoundError

__all__ = ['FORMAT', 'VERSION', 'read', 'write']

FORMAT, VERSION, VERSIONS = 'siamese_rs.PairIndex', '2', ('1', '2')
KINDS = ('kernel', 'tail', 'head')  # the pair stages of `index.py`; `head` keeps one tensor for both roles
DTYPES = {'F32': torch.float32, 'BF16': torch.bfloat16}  # storage of rows (`PairIndex(dtype=...)`)
IMAGE_DTYPES = ('float16', 'bfloat16', 'float32', 'float64')
MAX_HEADER = 100 << 20  # bytes of JSON header, safetensors' own limit
MAX_IMAGE = 1 << 24  # values of the declared image, which `load` encodes once to rebuild the pair stage
HEX64 = re.compile(r'[0-9a-f]{64}')
HEX16 = re.compile(r'[0-9a-f]{16}')


class _Bad:
    "Raises `WeightsError` naming the file, the field, what was expected and what was found"
    def __init__(self, path): self.path = os.fspath(path)

    def __call__(self, field, expected, got):
        got = got if isinstance(got, str) and got.startswith('<') else repr(got)
        if len(got) > 200: got = got[:200] + '…'
        raise WeightsError(f'path: {self.path!r}: not a PairIndex file this siamese-rs can read: {field}: expected '
                           f'{expected}, got {got}')


def checksum_hex(t):
    "The checksum of a contiguous CPU tensor's bytes (`_core.checksums`, which the command line computes too)"
    return f'{_core.checksums([t.reshape(-1).view(torch.uint8)], max(1, torch.get_num_threads()))[0]:016x}'


def write(path, tensors, meta):
    "Save `tensors` (name -> CPU tensor) with `meta` and their checksums"
    from safetensors.torch import save_file
    tensors = {k: v.detach().to('cpu').contiguous() for k, v in tensors.items()}
    sums = json.dumps({k: checksum_hex(v) for k, v in tensors.items()}, allow_nan=False)
    save_file(tensors, os.fspath(path), metadata={**meta, 'format': FORMAT, 'version': VERSION, 'checksums': sums})


def read(path):
    "`(metadata, tensors)` of an index file, every field checked (metadata's `image` parsed to `(shape, dtype)`)"
    p, bad = Path(os.fspath(path)), _Bad(path)
    if not p.is_file(): raise WeightsNotFoundError(f'path: no PairIndex file at {os.fspath(path)!r}')
    try:
        with open(p, 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            header, start = _header(f, size, bad)
            meta = _metadata(header.pop('__metadata__', None), bad)
            infos = _infos(header, meta, size - start, bad)
            tensors = {k: _tensor(f, start, info, k, bad) for k, info in infos.items()}
    except OSError as e:
        raise WeightsError(f'path: cannot read {os.fspath(path)!r} ({type(e).__name__}: {e})') from None
    if meta['version'] != '1':
        sums = meta['checksums']
        for k, t in tensors.items():
            if checksum_hex(t) != sums[k]:
                bad(f'tensor {k!r}', f'bytes of checksum {sums[k]} (recorded at save)', f'<checksum {checksum_hex(t)}>')
    return meta, tensors


def _strict(text, field, bad):
    "JSON without NaN / Infinity (as `json.dumps(allow_nan=False)` writes) and without repeated keys"
    def constant(c): raise ValueError(f'{c} is not JSON')
    def pairs(kv):
        keys = [k for k, _ in kv]
        if len(set(keys)) != len(keys): raise ValueError(f'a key repeated in {keys}')
        return dict(kv)
    try: return json.loads(text, parse_constant=constant, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as e: bad(field, 'strict JSON', f'<{type(e).__name__}: {e}>')


def _header(f, size, bad):
    "The safetensors header, checked against the file's size before it is read"
    if size < 8: bad('size', 'at least 8 bytes (a safetensors header length)', f'<{size} bytes>')
    n = int.from_bytes(f.read(8), 'little')
    if n > min(MAX_HEADER, size - 8) or n < 2:
        bad('header length', f'2 to {min(MAX_HEADER, size - 8)} bytes (within the file)', n)
    raw = f.read(n)
    try: text = raw.decode('utf-8')
    except UnicodeDecodeError as e: bad('header', 'UTF-8 JSON', f'<{e}>')
    header = _strict(text, 'header', bad)
    if not isinstance(header, dict): bad('header', 'a JSON object', f'<{type(header).__name__}>')
    return header, 8 + n


def _metadata(meta, bad):
    "The `__metadata__` strings, each field checked; `image` parsed, `checksums` parsed (version 2)"
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        bad('__metadata__', 'an object of strings', f'<{type(meta).__name__}>')
    meta = dict(meta)
    if meta.get('format') != FORMAT: bad('format', repr(FORMAT), meta.get('format'))
    if meta.get('version') not in VERSIONS: bad('version', f'one of {VERSIONS} (this siamese-rs)', meta.get('version'))
    if not HEX64.fullmatch(meta.get('model', '')): bad('model', 'a sha256 fingerprint (64 hex digits)', meta.get('model'))
    if meta.get('kind') not in KINDS: bad('kind', f'one of {KINDS}', meta.get('kind'))
    meta['image'] = _image(meta.get('image'), bad)
    if meta['version'] != '1':
        sums = _strict(meta.get('checksums', ''), 'checksums', bad)
        names = ('a',) if meta['kind'] == 'head' else ('a', 'b')
        if not (isinstance(sums, dict) and sorted(sums) == list(names)
                and all(isinstance(v, str) and HEX16.fullmatch(v) for v in sums.values())):
            bad('checksums', f'an object of 16 hex digits for each of {names}', meta.get('checksums'))
        meta['checksums'] = sums
    return meta


def _image(text, bad):
    "`(shape, dtype)` of one image, its size bounded before the probe that `load` encodes is allocated"
    if not isinstance(text, str): bad('image', 'a JSON [shape, dtype]', text)
    v = _strict(text, 'image', bad)
    ok = isinstance(v, list) and len(v) == 2 and isinstance(v[0], list) and 1 <= len(v[0]) <= 4
    ok = ok and all(type(s) is int and s >= 1 for s in v[0]) and v[1] in IMAGE_DTYPES
    if not ok: bad('image', f'[shape of 1 to 4 sizes >= 1, one of {IMAGE_DTYPES}]', text)
    if math.prod(v[0]) > MAX_IMAGE: bad('image', f'an image of at most {MAX_IMAGE} values', text)
    return tuple(v[0]), getattr(torch, v[1])


def _infos(header, meta, data_size, bad):
    "Each tensor's `(dtype, shape, begin, end)`: the names of the kind, one dtype and shape, offsets tiling the data"
    names = ['a'] if meta['kind'] == 'head' else ['a', 'b']
    if sorted(header) != names: bad('tensors', f'exactly {names} for a {meta["kind"]} index', sorted(header))
    infos = {k: _info(header[k], k, 5 if meta['kind'] == 'head' else 2, bad) for k in names}
    first = infos['a']
    for k, (dtype, shape, _, _) in infos.items():
        if (dtype, shape) != first[:2]: bad(f'tensor {k!r}', f'{first[0]} of shape {first[1]} like \'a\'', [dtype, shape])
    if 'files' in meta:
        files = _strict(meta['files'], 'files', bad)
        if not (isinstance(files, list) and all(isinstance(s, str) for s in files) and len(files) == first[1][0]):
            bad('files', f'a list of {first[1][0]} file names (one per row)', meta['files'])
    end = 0
    for k, (_, _, b, e) in sorted(infos.items(), key=lambda kv: kv[1][2]):
        if b != end: bad(f'tensor {k!r}: data_offsets', f'to start at byte {end} (tensors tile the data)', b)
        end = e
    if end != data_size: bad('data', f'{end} bytes after the header (the tensors)', f'<{data_size} bytes: truncated or extended>')
    return infos


def _info(entry, name, ndim, bad):
    "`(dtype, shape, begin, end)` of one entry: rows of `ndim` or fewer (at least 2) sizes (features for `head`)"
    keys = ['data_offsets', 'dtype', 'shape']
    if not isinstance(entry, dict) or sorted(entry) != keys: bad(f'tensor {name!r}', f'an object of {keys}', entry)
    dtype, shape, offs = entry['dtype'], entry['shape'], entry['data_offsets']
    if not isinstance(dtype, str) or dtype not in DTYPES: bad(f'tensor {name!r}: dtype', f'one of {list(DTYPES)}', dtype)
    if not (isinstance(shape, list) and 2 <= len(shape) <= ndim and all(type(s) is int and s >= 1 for s in shape)):
        bad(f'tensor {name!r}: shape', f'[rows, columns, ...] of 2 to {ndim} sizes >= 1', shape)
    if not (isinstance(offs, list) and len(offs) == 2 and all(type(s) is int and s >= 0 for s in offs)):
        bad(f'tensor {name!r}: data_offsets', '[begin, end] byte offsets', offs)
    n = math.prod(shape) * DTYPES[dtype].itemsize
    if offs[1] - offs[0] != n: bad(f'tensor {name!r}: data_offsets', f'{n} bytes for {dtype} {shape}', offs)
    return dtype, tuple(shape), offs[0], offs[1]


def _tensor(f, start, info, name, bad):
    "One tensor read into memory of its checked size (the offsets lie within the file)"
    dtype, shape, b, e = info
    buf = torch.empty(e - b, dtype=torch.uint8)
    f.seek(start + b)
    if f.readinto(buf.numpy()) != e - b: bad(f'tensor {name!r}', f'{e - b} bytes', '<fewer: the file is truncated>')
    return buf.view(DTYPES[dtype]).reshape(shape)
