"""Untrusted model files: every field of the document and of the safetensors header is checked before anything is
built, by `sr.load_model` (an sr exception naming the file and the field) and by the command line (one line on
stderr, exit status 1, never a panic); the command line computes the fingerprint from the weights it loaded."""
import json
import resource
import struct
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import siamese_rs as sr
from siamese_rs.export import METADATA_KEY
from siamese_rs.index import fingerprint
from test_cli import CLI  # the binary `make cli` built (SIAMESE_RS_CLI), or one cargo builds now: never skipped


def small(arch='squeezenet1_1', seed=0, **head):
    torch.manual_seed(seed)
    return sr.SiameseModel(sr.create_body(getattr(sr, arch), pretrained=False), sr.create_head(1024, 2, **head))


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    "A valid model file (squeezenet1_1 body, fastai's head), its document and tensors"
    path = sr.export_model(small(), tmp_path_factory.mktemp('files') / 'good.safetensors')
    with safe_open(str(path), 'pt') as f:
        return path, json.loads(f.metadata()[METADATA_KEY]), {k: f.get_tensor(k) for k in f.keys()}


def write(out, doc, tensors, raw=None):
    "A model file with `doc` (Python's json, so NaN goes in as written) or the raw document text `raw`"
    save_file(tensors, str(out), metadata={METADATA_KEY: raw if raw is not None else json.dumps(doc)})
    return out


def edited(doc, path, value):
    "A deep copy of `doc` with the field at `path` (keys) set to `value`, or removed when `value` is DELETE"
    doc = json.loads(json.dumps(doc))
    d = doc
    for k in path[:-1]: d = d[k]
    if value is DELETE: del d[path[-1]]
    else: d[path[-1]] = value
    return doc


class _Delete:
    "A field to remove"
    def __repr__(self): return 'DELETE'


DELETE = _Delete()

# (field path, value, what the error names): documents that must be refused
BAD_FIELDS = [
    (('head', 'y_range'), [0, float('nan')], 'not JSON'),
    (('stats',), {'mean': [float('nan'), 0.4, 0.4], 'std': [0.2, 0.2, 0.2]}, 'not JSON'),
    (('stats',), {'mean': [0.5, 0.4, 0.4], 'std': [float('inf'), 0.2, 0.2]}, 'not JSON'),
    (('stats',), {'mean': [0.5, 0.4, 0.4], 'std': [0, 0.2, 0.2]}, r'stats.std\[0\] must be a non-zero'),
    (('stats',), {'mean': [0.5], 'std': [0.2]}, 'stats.mean must be a list of 3 to 3'),
    (('format_version',), True, 'format_version True'),
    (('format_version',), 1.0, 'format_version 1.0'),
    (('head', 'pool'), 'false', "head.pool must be true or false, got 'false'"),
    (('head', 'bn_final'), 0, 'head.bn_final must be true or false, got 0'),
    (('cut',), DELETE, r'metadata field cut must be present, got \(missing\)'),
    (('cut',), 1.5, 'cut must be an int'),
    (('head', 'lin_first'), DELETE, 'head.lin_first must be present'),
    (('arch',), ['resnet18'], r'metadata field arch must be one of resnet18, .*got \["resnet18"\]'),
    (('n_in',), True, 'n_in must be an int from 1 to 2147483648, got true'),
    (('n_in',), 0, 'n_in must be an int from 1'),
    (('head', 'nf'), 2 ** 40, 'head.nf must be an int from 1 to 2147483648'),
    (('head', 'n_out'), -2, 'head.n_out must be an int'),
    (('head', 'lin_ftrs'), [512, 0], r'head.lin_ftrs\[1\] must be an int from 1'),
    (('head', 'ps'), [-0.5], r'head.ps\[0\] must be a probability'),
    (('head', 'ps'), 0.5, 'head.ps must be a list'),
    (('head', 'ps'), [], 'head.ps must be a list of 1 to 1024'),
    (('head', 'y_range'), [0, 1, 2], 'head.y_range must be a list of 2 to 2'),
    (('head', 'y_range'), [0, 'one'], r'head.y_range\[1\] must be a finite number'),
    (('head', 'extra'), 1, "head must be an object with the keys nf, .*'extra'"),
    (('extra',), 1, "must be an object with the keys format, .*'extra'"),
    (('input',), {'size': [0, 32], 'method': 'crop', 'pad_mode': 'zeros'}, r'input.size\[0\] must be an int from 1'),
    (('input',), {'size': [32, 10 ** 6], 'method': 'crop', 'pad_mode': 'zeros'}, r'input.size\[1\] must be an int'),
    (('input',), {'size': [32, 32], 'method': 'zoom', 'pad_mode': 'zeros'}, 'input.method must be one of crop'),
    (('labels',), [{'a': 1}, 'same'], r'labels\[0\] must be a string, a number or a bool'),
    (('fingerprint',), 'abc', 'fingerprint must be 64 lowercase hex digits'),
    (('fingerprint',), None, 'fingerprint must be a string'),
    (('torch_version',), 2, 'torch_version must be a string'),
]
# Documents with valid fields whose model is not the one the weights are for
BAD_SHAPES = [
    (('n_in',), 120000, r'encoder.0.0.weight is F32 \[64, 3, 3, 3\] where the model has F32 \[64, 120000, 3, 3\]'),
    (('head', 'nf'), 2 ** 31, 'would hold more than 2147483648 values'),
    (('head', 'nf'), 2 ** 20, r'head.2.weight is F32 \[2048\] where the model has F32 \[2097152\]'),
    (('head', 'lin_ftrs'), [2 ** 31, 2 ** 31], 'would hold more than 2147483648 values'),
    (('arch',), 'resnet18', 'encoder.0.weight is missing'),
    (('cut',), 3, 'encoder.1.1.weight is missing'),
    (('cut',), 0, 'encoder.0.0.weight is not a tensor of the model'),
]


def _bad_doc(good, tmp_path, path, value):
    _, doc, tensors = good
    return write(tmp_path / 'bad.safetensors', edited(doc, path, value), tensors)


@pytest.mark.parametrize('path,value,match', BAD_FIELDS + BAD_SHAPES, ids=lambda v: str(v)[:30])
def test_load_model_refuses_a_bad_field(good, tmp_path, path, value, match):
    f = _bad_doc(good, tmp_path, path, value)
    with pytest.raises(sr.WeightsError, match=match) as e: sr.load_model(f)
    assert str(f) in str(e.value)


def _peak_rss_of_loading(path):
    "The growth of the peak resident memory while `sr.load_model(path)` fails, in a fresh process (MiB)"
    code = ('import resource, siamese_rs as sr, sys\n'
            'before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n'
            'try: sr.load_model(sys.argv[1])\nexcept sr.SiameseError: pass\n'
            'print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n')
    out = subprocess.run([sys.executable, '-c', code, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_a_huge_n_in_is_refused_before_allocating(good, tmp_path):
    "n_in 2,000,000 would be a 4.6 GB first conv: the header is compared first, so nothing near that is allocated"
    f = _bad_doc(good, tmp_path, ('n_in',), 2_000_000)
    assert _peak_rss_of_loading(f) < 300
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_the_recorded_fingerprint_must_match_the_weights(good, tmp_path):
    path, doc, tensors = good
    other = {k: (v + 1 if v.is_floating_point() else v) for k, v in tensors.items()}
    f = write(tmp_path / 'swapped.safetensors', doc, other)
    with pytest.raises(sr.WeightsError, match='are not the ones it was exported with'): sr.load_model(f)
    model = sr.load_model(path)
    assert fingerprint(model) == doc['fingerprint']


# The safetensors header: (what is changed, error)
def _header_cases(tensors):
    k = 'head.8.weight'
    return [
        ({**tensors, k: tensors[k].double()}, r'head.8.weight is F64 \[2, 512\] where the model has F32 \[2, 512\]'),
        ({**tensors, 'head.99.weight': torch.zeros(3)}, 'head.99.weight is not a tensor of the model'),
        ({n: v for n, v in tensors.items() if n != k}, r'head.8.weight is missing \(the model has F32 \[2, 512\]\)'),
        ({**tensors, k: tensors[k].t().contiguous()}, r'head.8.weight is F32 \[512, 2\] where'),
        ({**tensors, 'head.2.num_batches_tracked': torch.zeros((), dtype=torch.int32)}, 'is I32'),
    ]


def test_load_model_refuses_a_header_that_does_not_fit(good, tmp_path):
    _, doc, tensors = good
    for changed, match in _header_cases(tensors):
        with pytest.raises(sr.WeightsError, match=match): sr.load_model(write(tmp_path / 'h.safetensors', doc, changed))


def raw_file(header, data, doc):
    "A safetensors file from a header dict (tensor entries) and data bytes, written by hand"
    head = json.dumps({**header, '__metadata__': {METADATA_KEY: json.dumps(doc)}}).encode()
    return struct.pack('<Q', len(head)) + head + data


def _header_and_data(path):
    b = path.read_bytes()
    n = struct.unpack('<Q', b[:8])[0]
    header = json.loads(b[8:8 + n])
    header.pop('__metadata__')
    return header, b[8 + n:]


def test_load_model_refuses_bad_offsets(good, tmp_path):
    path, doc, _ = good
    header, data = _header_and_data(path)
    k = 'head.8.weight'
    cases = [{**header, k: {**header[k], 'data_offsets': [0, 2 ** 62]}},
             {**header, k: {**header[k], 'data_offsets': [8, 4]}},
             {**header, k: {**header[k], 'shape': [2 ** 40, 2 ** 40]}},
             {**header, k: {**header[k], 'dtype': 'Q8'}}]
    for h in cases:
        f = tmp_path / 'o.safetensors'
        f.write_bytes(raw_file(h, data, doc))
        with pytest.raises(sr.WeightsError, match='cannot read .* as a safetensors file'): sr.load_model(f)
    f.write_bytes(struct.pack('<Q', 2 ** 60) + b'{}')
    with pytest.raises(sr.WeightsError, match='cannot read'): sr.load_model(f)


# Fuzzing: every outcome is a model that loads or an sr exception
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
FIELDS = ('format', 'format_version', 'arch', 'n_in', 'cut', 'head', 'stats', 'input', 'labels', 'fingerprint',
          'torch_version', 'siamese_rs_version')
HEAD_FIELDS = ('nf', 'n_out', 'lin_ftrs', 'ps', 'pool', 'concat_pool', 'first_bn', 'bn_final', 'lin_first', 'y_range')
FIELD_PATHS = ([(k,) for k in FIELDS] + [('head', k) for k in HEAD_FIELDS]
               + [('stats', 'mean'), ('stats', 'std'), ('input', 'size'), ('input', 'method'), ('labels',)])


def _fuzzed_doc(doc, data):
    "The document with a few fields replaced by arbitrary JSON, removed, or added"
    doc = json.loads(json.dumps(doc))
    doc['stats'] = {'mean': [0.5, 0.4, 0.4], 'std': [0.2, 0.2, 0.2]}
    doc['input'] = {'size': [32, 32], 'method': 'crop', 'pad_mode': 'zeros'}
    doc['labels'] = ['different', 'same']
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(FIELD_PATHS + [('extra',), ('head', 'extra')]))
        value = data.draw(st.one_of(JSON, st.just(DELETE), st.integers(-2 ** 33, 2 ** 33),
                                    st.sampled_from([True, False, None, 2 ** 31, 2 ** 63, 1e308, -0.0])))
        try: doc = edited(doc, path, value)
        except (KeyError, TypeError): pass
    return doc


def _loads_or_sr_error(path):
    try: sr.load_model(path)
    except sr.SiameseError: pass


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_documents_load_or_raise_an_sr_error(good, tmp_path_factory, data):
    _, doc, tensors = good
    f = write(tmp_path_factory.mktemp('fz') / 'f.safetensors', _fuzzed_doc(doc, data), tensors)
    _loads_or_sr_error(f)


def _fuzzed_header(header, data):
    header = json.loads(json.dumps(header))
    for _ in range(data.draw(st.integers(1, 3))):
        k = data.draw(st.sampled_from(sorted(header)))
        what = data.draw(st.sampled_from(['dtype', 'shape', 'data_offsets', 'drop', 'add']))
        if what == 'drop': header.pop(k)
        elif what == 'add': header[data.draw(st.text(max_size=12))] = data.draw(JSON)
        elif what == 'dtype': header[k]['dtype'] = data.draw(st.sampled_from(['F64', 'F16', 'I64', 'I32', 'U8', 'BOOL', 'X']))
        else:
            n = st.integers(-1, 2 ** 64) | st.integers(0, 4096)
            header[k][what] = data.draw(st.lists(n, max_size=4) | JSON)
    return header


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_headers_load_or_raise_an_sr_error(good, tmp_path_factory, data):
    path, doc, _ = good
    header, body = _header_and_data(path)
    f = tmp_path_factory.mktemp('fh') / 'f.safetensors'
    f.write_bytes(raw_file(_fuzzed_header(header, data), body, doc))
    _loads_or_sr_error(f)


# The command line
def run_cli(*args):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=600)


def assert_one_line_error(r, match=None):
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('siamese-rs: '), r.stderr
    assert 'panicked' not in r.stderr and 'backtrace' not in r.stderr.lower()
    if match is not None:
        import re
        assert re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize('path,value,match', BAD_FIELDS + BAD_SHAPES, ids=lambda v: str(v)[:30])
def test_cli_refuses_a_bad_field(good, tmp_path, path, value, match):
    f = _bad_doc(good, tmp_path, path, value)
    r = run_cli('info', f)
    assert_one_line_error(r)
    assert str(f) in r.stderr
    field = '.'.join(path) if path[-1] != 'extra' else None
    if field and match != 'not JSON' and path not in [p for p, _, _ in BAD_SHAPES]:
        assert field.split('.')[-1] in r.stderr, r.stderr


def test_cli_refuses_a_header_that_does_not_fit(good, tmp_path):
    path, doc, tensors = good
    for changed, _ in _header_cases(tensors):
        assert_one_line_error(run_cli('info', write(tmp_path / 'h.safetensors', doc, changed)), 'do not fit')
    header, data = _header_and_data(path)
    k = 'head.8.weight'
    for h in [{**header, k: {**header[k], 'data_offsets': [0, 2 ** 62]}},
              {**header, k: {**header[k], 'shape': [2 ** 40, 2 ** 40]}}]:
        (tmp_path / 'o.safetensors').write_bytes(raw_file(h, data, doc))
        assert_one_line_error(run_cli('info', tmp_path / 'o.safetensors'), 'not a siamese-rs model file')


@pytest.mark.parametrize('arch,head', [('resnet18', {}), ('squeezenet1_1', {'y_range': (0, 5), 'ps': [0.2, 1]}),
                                       ('xresnet18', {'lin_first': True, 'bn_final': True, 'lin_ftrs': [32, 16],
                                                      'y_range': (-1.5, 2.25), 'concat_pool': False}),
                                       ('densenet121', {'pool': False}), ('vgg11_bn', {'ps': 0.25}),
                                       ('alexnet', {'first_bn': False, 'n_out': 3})])
def test_cli_computes_pythons_fingerprint(arch, head, tmp_path):
    "The command line's fingerprint of the weights it loaded is Python's `fingerprint(load_model(path))`"
    torch.manual_seed(1)
    n_out = head.pop('n_out', 2)
    nf = {'resnet18': 512, 'squeezenet1_1': 512, 'xresnet18': 512, 'densenet121': 1024, 'vgg11_bn': 512,
          'alexnet': 256}[arch]
    body = sr.create_body(getattr(sr, arch), pretrained=False, cut=None if arch == 'densenet121' else -2)
    model = sr.SiameseModel(body, sr.create_head(nf, n_out, **head))
    f = sr.export_model(model, tmp_path / 'm.safetensors')
    r = run_cli('info', f)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['fingerprint'] == fingerprint(sr.load_model(f)) == fingerprint(model)


def test_cli_refuses_a_gallery_after_the_weights_were_replaced(good, tmp_path):
    "A gallery built with the model is refused once the file's weights are replaced (same shapes, valid file)"
    path, doc, tensors = good
    from PIL import Image
    imgs = []
    for i in range(3):
        p = tmp_path / f'{i}.png'
        Image.fromarray((torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()).save(p)
        imgs.append(p)
    model = write(tmp_path / 'm.safetensors', doc, tensors)
    r = run_cli('index', 'build', model, *imgs, '-o', tmp_path / 'g.sri')
    assert r.returncode == 0, r.stderr
    assert run_cli('index', 'search', model, tmp_path / 'g.sri', imgs[0], '-k', 2).returncode == 0
    other = {k: (v * 0.5 if v.is_floating_point() else v) for k, v in tensors.items()}
    write(model, doc, other)  # the document (and its recorded fingerprint) unchanged
    assert_one_line_error(run_cli('index', 'search', model, tmp_path / 'g.sri', imgs[0], '-k', 2),
                          'not the ones the file was exported with')
    # the same weights with a fingerprint that matches them: a model file of another model, so the gallery is refused
    swapped = small()
    swapped.load_state_dict(other)
    write(model, {**doc, 'fingerprint': fingerprint(swapped)}, other)
    assert_one_line_error(run_cli('index', 'search', model, tmp_path / 'g.sri', imgs[0], '-k', 2), 'another model')


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_cli_fuzzed_files_exit_with_a_one_line_error(good, tmp_path_factory, data):
    path, doc, tensors = good
    d = tmp_path_factory.mktemp('fc')
    if data.draw(st.booleans()):
        f = write(d / 'f.safetensors', _fuzzed_doc(doc, data), tensors)
    else:
        header, body = _header_and_data(path)
        f = d / 'f.safetensors'
        f.write_bytes(raw_file(_fuzzed_header(header, data), body, doc))
    r = run_cli('info', f)
    if r.returncode != 0: assert_one_line_error(r)
