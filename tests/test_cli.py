"The `siamese-rs` command line (the real binary) against the Python model it was exported from"
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

import siamese_rs as sr
from siamese_rs.demo import train
from siamese_rs.export import METADATA_KEY

ROOT = Path(__file__).resolve().parents[1]


def _binary():
    "The binary `make cli` built (`SIAMESE_RS_CLI`), or one cargo builds now"
    if os.environ.get('SIAMESE_RS_CLI'): return Path(os.environ['SIAMESE_RS_CLI'])
    out = subprocess.run(['cargo', 'build', '--release', '--features', 'cli', '--bin', 'siamese-rs',
                          '--message-format=json-render-diagnostics'], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    return Path(next(json.loads(line)['executable'] for line in out.splitlines()
                     if '"executable":"' in line and 'siamese-rs' in line))


CLI = _binary()


def cli(*args, ok=True):
    r = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok: assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A digits learner (resnet18, 32 px, two short epochs), its model file and 120 validation images"
    learn, _, _ = train('resnet18', 32, 64, 1, 1, n_files=600, quiet=True)
    learn.model.eval()
    path = tmp_path_factory.mktemp('cli') / 'model.safetensors'
    sr.export_model(learn, path)
    files = sorted(learn.dls.valid_ds.items)[:120]
    return learn, path, files


def _resized(files, dest):
    "Copies of `files` at sizes other than the model's (so the transforms resize and crop them)"
    dest.mkdir(exist_ok=True)
    out = []
    for i, f in enumerate(files):
        w, h = [(45, 40), (20, 26), (64, 64), (33, 50)][i % 4]
        p = dest / f'{i:03d}_{Path(f).stem}.png'
        Image.open(f).convert('RGB').resize((w, h), Image.BICUBIC).save(p)
        out.append(p)
    return out


def _python_scores(learn, queries, gallery):
    return sr.PairIndex(learn, gallery).score(queries)


def _cli_scores(model, gallery_file, queries, gallery):
    "`(q, n)` P(same) from `index search --json -k n`, in the gallery's order"
    r = cli('index', 'search', model, gallery_file, *queries, '-k', len(gallery), '--json')
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    index = {str(g): i for i, g in enumerate(gallery)}
    out = torch.empty(len(docs), len(gallery))
    for qi, d in enumerate(docs):
        for m in d['matches']: out[qi, index[m['file']]] = m['p_same']
    return out


def test_score_equals_python(trained):
    learn, model, files = trained
    for f1, f2 in zip(files[:6], files[6:12]):
        label, p = sr.predict_pair(learn, f1, f2)  # the probability of the label it gives
        p_same = p if label == sr.SAME else 1 - p
        doc = json.loads(cli('score', model, f1, f2, '--json').stdout)
        assert abs(doc['p_same'] - p_same) < 1e-5 and doc['label'] == label
        assert abs(float(cli('score', model, f1, f2).stdout) - p_same) < 1e-5


def test_gallery_search_equals_python_and_loads_in_python(trained, tmp_path):
    learn, model, files = trained
    gallery, queries = files[:80], files[80:90]
    out = tmp_path / 'gallery.sri'
    cli('index', 'build', model, *gallery, '-o', out)
    ours = _cli_scores(model, out, queries, gallery)
    want = _python_scores(learn, queries, gallery)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)
    # top-5 order of the command line is Python's topk
    docs5 = [json.loads(line) for line in cli('index', 'search', model, out, *queries, '-k', 5, '--json').stdout.splitlines()]
    vals, idx = sr.PairIndex(learn, gallery).topk(queries, 5)
    for d, v in zip(docs5, vals):
        torch.testing.assert_close(torch.tensor([m['p_same'] for m in d['matches']]), v, atol=1e-5, rtol=0)
    # the file is PairIndex's: Python loads it with the exported model and scores the same
    index = sr.PairIndex.load(out, sr.load_model(model), dls=learn.dls)
    torch.testing.assert_close(index.score(queries), want, atol=1e-5, rtol=0)


def test_a_folder_of_resized_photos_agrees_with_python(trained, tmp_path):
    learn, model, files = trained
    resized = _resized(files[:100], tmp_path / 'photos')
    out = tmp_path / 'photos.sri'
    cli('index', 'build', model, tmp_path / 'photos', '-o', out)
    queries = resized[:20]
    ours, want = _cli_scores(model, out, queries, resized), _python_scores(learn, queries, resized)
    print(f'resized photos: max |P_cli - P_python| = {(ours - want).abs().max():.2e}')
    assert (ours - want).abs().max() < 1e-5  # PIL's resampling arithmetic, reproduced (the target is 1e-2)
    assert ((ours >= 0.5) == (want >= 0.5)).float().mean() >= 0.99


def test_dedupe_finds_pythons_matches(trained, tmp_path):
    learn, model, files = trained
    d = tmp_path / 'dir'
    d.mkdir()
    chosen = files[:40]
    for f in chosen: (d / Path(f).name).write_bytes(Path(f).read_bytes())
    local = sorted(d.iterdir())
    r = cli('dedupe', model, d, '--threshold', 0.9, '--json')
    ours = {(Path(x['a']).name, Path(x['b']).name): x['p_same'] for x in map(json.loads, r.stdout.splitlines())}
    pairs, p = sr.PairIndex(learn, local).matches(0.9)
    want = {(local[i].name, local[j].name): float(q) for (i, j), q in zip(pairs.tolist(), p)}
    near = {k for k, v in {**ours, **want}.items() if abs(v - 0.9) < 1e-4}
    assert set(ours) - near == set(want) - near
    assert len(want) > 0


def test_the_binary_links_libtorch_not_libpython():
    dynamic = subprocess.run(['readelf', '-d', str(CLI)], capture_output=True, text=True, check=True).stdout
    needed = [line for line in dynamic.splitlines() if 'NEEDED' in line]
    assert any('libtorch' in n for n in needed)
    assert not any('python' in n for n in needed), needed


@pytest.mark.parametrize('args', [[], ['score'], ['index'], ['index', 'build'], ['index', 'search'], ['dedupe']])
def test_every_command_has_help(args):
    r = cli(*args, '--help')
    assert 'Usage: siamese-rs' in r.stdout


def test_bad_input_is_a_clear_message_and_an_exit_status(trained, tmp_path):
    learn, model, files = trained
    def fails(*args, match):
        r = cli(*args, ok=False)
        assert r.returncode != 0 and match in r.stderr, r.stderr
        assert 'panicked' not in r.stderr
    fails('score', model, files[0], tmp_path / 'absent.png', match='absent.png')
    (tmp_path / 'junk.png').write_bytes(b'not an image')
    fails('score', model, files[0], tmp_path / 'junk.png', match='cannot read image')
    fails('score', tmp_path / 'absent.safetensors', files[0], files[1], match='cannot read')
    # a model file of another format version
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(model), 'pt') as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta[METADATA_KEY])
    info['format_version'] = 99
    save_file(tensors, tmp_path / 'v99.safetensors', metadata={METADATA_KEY: json.dumps(info)})
    fails('score', tmp_path / 'v99.safetensors', files[0], files[1], match='format version 99')
    # a document the transforms cannot honour: an error, not a crash
    for key, value, match in [('stats', {'mean': [0.5], 'std': [0.2]}, 'stats.mean'),
                              ('input', {'size': [0, 32], 'method': 'crop', 'pad_mode': 'zeros'}, 'input.size')]:
        bad = {**json.loads(meta[METADATA_KEY]), key: value}
        save_file(tensors, tmp_path / 'bad.safetensors', metadata={METADATA_KEY: json.dumps(bad)})
        fails('score', tmp_path / 'bad.safetensors', files[0], files[1], match=match)
    # a gallery built by another model
    other = sr.load_model(model)
    with torch.no_grad(): other.head[-1].weight.mul_(-1)
    sr.export_model(other, tmp_path / 'other.safetensors')
    cli('index', 'build', tmp_path / 'other.safetensors', *files[:4], '-o', tmp_path / 'other.sri')
    fails('index', 'search', model, tmp_path / 'other.sri', files[5], match='another model')
    fails('index', 'search', model, tmp_path / 'absent.sri', files[5], match='cannot read gallery')
    cli('index', 'build', model, *files[:4], '-o', tmp_path / 'g.sri')
    fails('index', 'search', model, tmp_path / 'g.sri', files[5], '-k', 9, match='-k')
    fails('dedupe', model, tmp_path, '--threshold', 2, match='--threshold')
    assert cli('score', ok=False).returncode == 2  # clap's usage error


def test_tampered_galleries_are_one_line_errors(trained, tmp_path):
    "A gallery is untrusted: swapped, damaged or tampered files are refused naming the field, never scored"
    from test_index_files import HUGE, drop_b, edited, extra_tensor, flip_byte, swap_ab
    learn, model, files = trained
    good = tmp_path / 'g.sri'
    cli('index', 'build', model, *files[:6], '-o', good)
    want = cli('index', 'search', model, good, files[7], '-k', 6, '--json').stdout
    cases = {
        'swapped': (dict(header=swap_ab), 'checksum'),
        'byte': (dict(data=flip_byte), 'checksum'),
        'no b': (dict(header=drop_b, data=lambda d: d[:len(d) // 2]), 'tensors'),
        'extra': (dict(header=extra_tensor, data=lambda d: d + b'\0' * 4), 'tensors'),
        'f16': (dict(header=lambda h: [h[k].update(dtype='F16', shape=[h[k]['shape'][0], h[k]['shape'][1] * 2])
                                       for k in 'ab']), 'tensor a'),
        'truncated': (dict(data=lambda d: d[:-100]), 'safetensors header'),
        'version 3': (dict(meta={'version': '3'}), 'version'),
        'no checksums': (dict(meta={'checksums': None}), 'checksums'),
        'bad checksums': (dict(meta={'checksums': '{"a": "00", "b": "zz"}'}), 'checksums'),
        'huge image': (dict(meta={'image': HUGE}), 'image'),
        'NaN image': (dict(meta={'image': '[[3, NaN, 32], "float32"]'}), 'image'),
        'files': (dict(meta={'files': '["x.png"]'}), 'files'),
        'kind': (dict(meta={'kind': None}), 'kind'),
    }
    for name, (edit, match) in cases.items():
        bad = edited(good, tmp_path / 'bad.sri', **edit)
        r = cli('index', 'search', model, bad, files[7], ok=False)
        msg = r.stderr.strip()
        assert r.returncode != 0 and match in msg and 'bad.sri' in msg, (name, msg)
        assert '\n' not in msg and 'panicked' not in msg, (name, msg)
    # a version 1 gallery (before checksums) still reads, with the same scores
    v1 = edited(good, tmp_path / 'v1.sri', meta={'version': '1', 'checksums': None})
    assert cli('index', 'search', model, v1, files[7], '-k', 6, '--json').stdout == want
