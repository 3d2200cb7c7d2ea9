"""`PairIndex` files as untrusted input, builds that race training, models it cannot score exactly, and P(same) at
its extremes: every outcome is the model's own numbers or an `sr` exception naming the file and field."""
import json
import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import siamese_rs as sr
from test_index import TOL, imgs, reference, siamese

# Files: a header rewritten, the data kept or edited


def parts(path):
    "`(header, data)` of a safetensors file"
    raw = path.read_bytes()
    n = struct.unpack('<Q', raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write(path, header, data, raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack('<Q', len(h)) + h + data)
    return path


def edited(src, dst, meta=None, drop=(), header=None, data=None):
    "A copy of `src` with metadata fields set (None deletes), and the header / data edited"
    h, d = parts(src)
    for k, v in (meta or {}).items():
        if v is None: h['__metadata__'].pop(k, None)
        else: h['__metadata__'][k] = v
    for k in drop: h['__metadata__'].pop(k)
    if header: header(h)
    return write(dst, h, data(d) if data else d)


@pytest.fixture(scope='module')
def model(): return siamese(seed=5)


@pytest.fixture(scope='module')
def saved(model, tmp_path_factory):
    "A kernel index of 10 images saved, and its scores"
    index = sr.PairIndex(model, imgs(10, seed=4))
    path = tmp_path_factory.mktemp('files') / 'g.safetensors'
    index.save(path)
    return path, index.all_pairs()


def swap_ab(h):
    h['a'], h['b'] = h['b'], h['a']


def drop_b(h):
    "No `b` (the data keeps its bytes, so the offsets still tile it only if `b` came last)"
    del h['b']


def flip_byte(d): return d[:5] + bytes([d[5] ^ 0x40]) + d[6:]


def extra_tensor(h):
    end = max(h[k]['data_offsets'][1] for k in ('a', 'b'))
    h['c'] = {'dtype': 'F32', 'shape': [1, 1], 'data_offsets': [end, end + 4]}


def as_dtype(dtype, shape=None):
    def edit(h):
        for k in ('a', 'b'):
            h[k]['dtype'] = dtype
            if shape: h[k]['shape'] = shape(h[k]['shape'])
    return edit


def three_d(h):
    for k in ('a', 'b'): h[k]['shape'] = [h[k]['shape'][0], 1, h[k]['shape'][1]]


def overlap(h): h['b']['data_offsets'] = h['a']['data_offsets']


def a_rows_of_b(h):
    "`a` with half its rows and `b` the rest of the bytes: offsets and sizes agree, shapes do not"
    r, c = h['a']['shape']
    h['a']['shape'], h['b']['shape'] = [r // 2, c], [r + r - r // 2, c]
    h['a']['data_offsets'][1] = h['b']['data_offsets'][0] = r // 2 * c * 4


def bad_meta(k, v): return dict(meta={k: v})


HUGE = json.dumps([[3, 20000, 20000], 'float32'])
CASES = {
    'swapped a and b': dict(header=swap_ab, match='checksum'),
    'kernel without b': dict(header=drop_b, data=lambda d: d[:len(d) // 2], match='tensors'),
    'a changed byte': dict(data=flip_byte, match='checksum'),
    'an extra tensor': dict(header=extra_tensor, data=lambda d: d + b'\0' * 4, match='tensors'),
    'float16 rows': dict(header=as_dtype('F16', lambda s: [s[0], s[1] * 2]), match='dtype'),
    'int32 rows': dict(header=as_dtype('I32'), match='dtype'),
    '3-d rows': dict(header=three_d, match='shape'),
    'overlapping tensors': dict(header=overlap, match='data_offsets'),
    'a and b of other shapes': dict(header=a_rows_of_b, match="like 'a'"),
    'truncated': dict(data=lambda d: d[:-100], match='data'),
    'bytes appended': dict(data=lambda d: d + b'\0' * 8, match='data'),
    'version 3': dict(bad_meta('version', '3'), match='version'),
    'no version': dict(bad_meta('version', None), match='version'),
    'no format': dict(bad_meta('format', None), match='format'),
    'no model': dict(bad_meta('model', None), match='model'),
    'model not a fingerprint': dict(bad_meta('model', 'x'), match='model'),
    'no kind': dict(bad_meta('kind', None), match='kind'),
    'unknown kind': dict(bad_meta('kind', 'magic'), match='kind'),
    'kind head with two tensors': dict(bad_meta('kind', 'head'), match='checksums|tensors'),
    'no image': dict(bad_meta('image', None), match='image'),
    'image not JSON': dict(bad_meta('image', '[[3, 32'), match='image'),
    'image with NaN': dict(bad_meta('image', '[[3, NaN, 32], "float32"]'), match='image'),
    'image with Infinity': dict(bad_meta('image', '[[3, Infinity, 32], "float32"]'), match='image'),
    'image of ints': dict(bad_meta('image', '[[3, 32, 32], "int64"]'), match='image'),
    'image of no dtype': dict(bad_meta('image', '[[3, 32, 32], "Tensor"]'), match='image'),
    'image size 0': dict(bad_meta('image', '[[3, 0, 32], "float32"]'), match='image'),
    'image sizes of floats': dict(bad_meta('image', '[[3.0, 32, 32], "float32"]'), match='image'),
    'image of 20000 x 20000': dict(bad_meta('image', HUGE), match='image'),
    'image of another shape': dict(bad_meta('image', '[[3, 8, 8, 8], "float32"]'), match='image'),
    'no checksums': dict(bad_meta('checksums', None), match='checksums'),
    'checksums not hex': dict(bad_meta('checksums', '{"a": "zz", "b": "00"}'), match='checksums'),
    'checksums with NaN': dict(bad_meta('checksums', '{"a": NaN, "b": 1}'), match='checksums'),
    'checksums repeated key': dict(bad_meta('checksums', '{"a": "0000000000000000", "a": "0", "b": "0"}'),
                                   match='checksums'),
    'files of another count': dict(bad_meta('files', '["x.png"]'), match='files'),
    'metadata not strings': dict(header=lambda h: h['__metadata__'].update(version=2), match='__metadata__'),
    'no metadata': dict(header=lambda h: h.pop('__metadata__'), match='__metadata__'),
}


@pytest.fixture
def no_huge_alloc(monkeypatch):
    "`torch.zeros` / `torch.empty` of more than 2^26 values fails the test (a file's declared size was trusted)"
    for name in ('zeros', 'empty'):
        real = getattr(torch, name)
        def guarded(*size, _real=real, **kw):
            dims = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
            assert math.prod(int(s) for s in dims) <= 1 << 26, f'allocated {dims} from a file'
            return _real(*size, **kw)
        monkeypatch.setattr(torch, name, guarded)


@pytest.mark.parametrize('case', list(CASES))
def test_tampered_files_are_weights_errors_naming_the_field(model, saved, tmp_path, case, no_huge_alloc):
    spec = dict(CASES[case])
    match = spec.pop('match')
    path = edited(saved[0], tmp_path / 'bad.safetensors', **spec)
    with pytest.raises(sr.WeightsError, match=match) as e:
        sr.PairIndex.load(path, model)
    assert 'bad.safetensors' in str(e.value)


@pytest.mark.parametrize('raw,match', [(b'', 'size'), (b'\x05' + b'\0' * 6, 'size'), (b'\xff' * 8 + b'{}', 'header'),
                                       (struct.pack('<Q', 4) + b'{"a"', 'header'),
                                       (struct.pack('<Q', 2) + b'[]', 'header'),
                                       (struct.pack('<Q', 3) + b'\xff\xfe{', 'header')])
def test_damaged_headers_are_weights_errors(model, tmp_path, raw, match):
    (tmp_path / 'x.safetensors').write_bytes(raw)
    with pytest.raises(sr.WeightsError, match=match): sr.PairIndex.load(tmp_path / 'x.safetensors', model)


def test_a_saved_file_is_strict_json_with_checksums(saved):
    meta = parts(saved[0])[0]['__metadata__']
    assert meta['version'] == '2' and sorted(json.loads(meta['checksums'])) == ['a', 'b']


def test_version_1_files_still_load(model, saved, tmp_path):
    "Files written before checksums: every other check applies, the scores are the same"
    path = edited(saved[0], tmp_path / 'v1.safetensors', meta={'version': '1', 'checksums': None})
    assert torch.equal(sr.PairIndex.load(path, model).all_pairs(), saved[1])


# Fuzzing: a valid file mutated loads to the same scores or raises an sr exception, nothing else

def tiny():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())
    return sr.SiameseModel(enc, sr.create_head(8, 2, lin_ftrs=[16])).eval()


@pytest.fixture(scope='module')
def tiny_saved(tmp_path_factory):
    model = tiny()
    index = sr.PairIndex(model, imgs(6, size=8, seed=9))
    path = tmp_path_factory.mktemp('fuzz') / 'tiny.safetensors'
    index.save(path)
    return model, path, index.all_pairs()


def outcome(model, path, want):
    try: index = sr.PairIndex.load(path, model)
    except sr.SiameseError: return 'refused'
    assert torch.equal(index.all_pairs(), want), 'a mutated file loaded with other scores'
    return 'loaded'


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
                    max_leaves=12)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@FUZZ
@given(key=st.sampled_from(['format', 'version', 'model', 'kind', 'image', 'checksums', 'files', 'other']),
       value=st.one_of(st.none(), st.text(max_size=40), JSON.map(lambda v: json.dumps(v)),
                       st.sampled_from(['NaN', '[[3, 8, 8], "float32"]', '[[3, 8, 8], "float64"]', '[[1], "float32"]',
                                        '[[3, 1, 1], "float32"]', '[[3, 4096, 4096], "float32"]', '1', '2', 'head',
                                        'tail', 'kernel', '[]', '{}'])))
def test_fuzzed_metadata(tiny_saved, tmp_path_factory, key, value):
    model, path, want = tiny_saved
    dst = tmp_path_factory.mktemp('m') / 'f.safetensors'
    outcome(model, edited(path, dst, meta={key: value}), want)


@FUZZ
@given(name=st.sampled_from(['a', 'b']), field=st.sampled_from(['dtype', 'shape', 'data_offsets', None]),
       value=JSON | st.lists(st.integers(-2, 2**64 + 5), max_size=4) | st.sampled_from(['F32', 'BF16', 'F16', 'U8']))
def test_fuzzed_tensor_entries(tiny_saved, tmp_path_factory, name, field, value):
    model, path, want = tiny_saved
    def edit(h):
        if field is None: h[name] = value
        else: h[name][field] = value
    dst = tmp_path_factory.mktemp('t') / 'f.safetensors'
    outcome(model, edited(path, dst, header=edit), want)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_fuzzed_header_bytes(tiny_saved, tmp_path_factory, edits, cut):
    "Bytes of the length and JSON header replaced (the file possibly cut short): never another exception, never a crash"
    model, path, want = tiny_saved
    raw = bytearray(path.read_bytes())
    n = 8 + struct.unpack('<Q', raw[:8])[0]
    for at, b in edits: raw[at % n] = b
    if cut is not None: raw = raw[:cut % len(raw)]
    dst = tmp_path_factory.mktemp('h') / 'f.safetensors'
    dst.write_bytes(bytes(raw))
    outcome(model, dst, want)


# Builds and queries while the model changes: a deterministic stand-in for training in another thread

def edit_on_call(model, k, edit):
    "A hook on the encoder that edits the weights as it finishes its `k`-th forward call (1-based)"
    calls = [0]
    def hook(mod, inp, out):
        calls[0] += 1
        if calls[0] == k: edit(model)
    return model.encoder.register_forward_hook(hook)


def sgd_step(m):  # as fastai's optimisers write: through `p.data`
    for p in m.head.parameters(): p.data.add_(0.01)


def encoder_step(m):
    with torch.no_grad(): m.encoder[0].weight.mul_(1.01)


@pytest.mark.parametrize('k', [1, 2, 3])
@pytest.mark.parametrize('edit', [sgd_step, encoder_step])
def test_a_model_changed_during_a_build_is_the_stale_error(k, edit):
    model, g = siamese(seed=6), imgs(12, seed=8)
    handle = edit_on_call(model, k, edit)
    with pytest.raises(sr.WeightsError, match='while this PairIndex encoded images'):
        sr.PairIndex(model, g, bs=4)  # three chunks
    handle.remove()
    q = imgs(2, seed=1)
    torch.testing.assert_close(sr.PairIndex(model, g, bs=4).score(q), reference(model, q, g), atol=TOL, rtol=0)


def test_a_model_changed_while_queries_encode_is_the_stale_error():
    "The hook is there when the index is built (two chunks), and edits while the second chunk of queries encodes"
    model, g = siamese(seed=6), imgs(6, seed=8)
    edit_on_call(model, 4, sgd_step)
    index = sr.PairIndex(model, g, bs=4)
    with pytest.raises(sr.WeightsError, match='while this PairIndex encoded images'): index.score(imgs(8, seed=1))
    with pytest.raises(sr.WeightsError, match='after this PairIndex was built'): index.score(imgs(1, seed=1))


def test_a_failed_first_build_leaves_an_empty_index_that_can_be_built():
    model, g = siamese(seed=6), imgs(6, seed=8)
    index = sr.PairIndex(model, bs=4)
    handle = edit_on_call(model, 1, sgd_step)
    with pytest.raises(sr.WeightsError): index.add(g)
    handle.remove()
    assert len(index) == 0
    q = imgs(2, seed=1)
    torch.testing.assert_close(index.add(g).score(q), reference(model, q, g), atol=TOL, rtol=0)


# BatchNorm on batch statistics in eval: a score would depend on the images chunked with it

def head_bn(m): m.head[2] = nn.BatchNorm1d(m.head[2].num_features, track_running_stats=False)
def head_bn_none(m): m.head[2].running_mean = m.head[2].running_var = None
def encoder_bn(m): m.encoder[1] = nn.BatchNorm2d(m.encoder[1].num_features, track_running_stats=False)


@pytest.mark.parametrize('edit,name', [(head_bn, 'head.2'), (head_bn_none, 'head.2'), (encoder_bn, 'encoder.1')])
def test_batchnorm_without_running_statistics_is_refused(edit, name, saved):
    model = siamese(seed=5)
    edit(model)
    for build in (lambda: sr.PairIndex(model, imgs(4)), lambda: sr.PairIndex(model),
                  lambda: sr.PairIndex.load(saved[0], model)):
        with pytest.raises(sr.ArgumentError, match=f'{name} .*running statistics'): build()


# P(same) at its extremes: exactly 0 and 1 where the model's softmax gives them

@pytest.mark.parametrize('head', [dict(), dict(lin_ftrs=[64, 32]), dict(bn_final=True)],
                         ids=['default', 'layered', 'bn_final'])
def test_extreme_scores_are_exactly_the_models(head):
    model = siamese(seed=7, **head)
    with torch.no_grad():
        last = [m for m in model.head.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))][-1]
        last.weight.mul_(60)
        if last.bias is not None: last.bias.mul_(60)
    q, g = imgs(6, seed=2), imgs(40, seed=3)
    want = reference(model, q, g)
    assert (want == 0).any() and (want == 1).any() and ((want > 0) & (want < 1)).any(), 'extremes to compare'
    index = sr.PairIndex(model, g)
    got = index.score(q)
    # logits of magnitude ~100 carry float32 rounding of ~1e-5 in either computation: P within 1e-4 where it is not
    # saturated, and exactly 0 / 1 (not a subnormal) wherever the model's own softmax is
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert torch.equal(got == 0, want == 0) and torch.equal(got == 1, want == 1)
    top = index.topk(q, len(g))[0]
    assert torch.equal(top == 0, want.sort(1, descending=True).values == 0)
