"The command line's image files and file names against PIL / fastai (`PILImage.create`, `sr.predict_pair`)"
import io
import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.vision.core import PILImageBW
from PIL import Image

import siamese_rs as sr
from test_cli import CLI, cli, trained  # noqa: F401  (the digits learner and its model file)


def pixels(f, gray=False):
    "The image as the command line hands it to the transforms (`siamese-rs pixels`), as an array"
    r = subprocess.run([str(CLI), 'pixels', f, *(['--gray'] if gray else [])], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return np.array(Image.open(io.BytesIO(r.stdout)))


def pil(f, gray=False):
    "What fastai gets: `PILImage.create` (convert('RGB')) or `PILImageBW.create` (convert('L'))"
    return np.array(Image.open(f).convert('L' if gray else 'RGB'))


def colourful(h, w, seed):
    "A smooth colour picture with noise and sharp edges (JPEG's chroma subsampling and rounding both matter)"
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(9 * x * y)], -1) * 100 + 128
    base[h // 3:, w // 2:] = rng.integers(0, 256, 3)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype('uint8')


def png(w, h, colour, depth, rows, chunks=()):
    "A PNG written byte by byte (PIL cannot write every colour type and depth)"
    def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    ihdr = struct.pack('>IIBBBBB', w, h, depth, colour, 0, 0, 0)
    body = b''.join(b'\0' + r for r in rows)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + b''.join(chunk(t, d) for t, d in chunks)
            + chunk(b'IDAT', zlib.compress(body)) + chunk(b'IEND', b''))


# JPEG: every kind PIL writes, at odd sizes (partial MCUs), against PIL's decode (libjpeg-turbo)
JPEGS = [dict(quality=q, subsampling=s, progressive=p, size=size)
         for q in (60, 95) for s in (0, 1, 2) for p in (False, True) for size in [(37, 23), (64, 48)]]
JPEGS += [dict(quality=85, subsampling=2, progressive=False, size=(50, 41), restart_marker_blocks=3),
          dict(quality=85, subsampling=1, progressive=True, size=(50, 41), restart_marker_rows=1),
          dict(quality=90, mode='L', size=(33, 47)), dict(quality=70, mode='L', progressive=True, size=(40, 40)),
          dict(quality=90, mode='CMYK', size=(31, 29)), dict(quality=90, optimize=True, size=(45, 40))]


@pytest.mark.parametrize('kind', JPEGS, ids=lambda k: '-'.join(f'{a}{b}' for a, b in k.items()))
def test_jpeg_decodes_as_pil(kind, tmp_path):
    kind = dict(kind)
    w, h = kind.pop('size')
    im = Image.fromarray(colourful(h, w, seed=w * h)).convert(kind.pop('mode', 'RGB'))
    f = tmp_path / 'x.jpg'
    im.save(f, **kind)
    for gray in (False, True):
        assert np.array_equal(pixels(f, gray), pil(f, gray)), (kind, gray)


def _pngs():
    rng = np.random.default_rng(3)
    w, h = 23, 17
    g16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    g16[0, :6] = [0, 1, 255, 256, 4000, 65535]  # PIL clips 16-bit grey to 255, it does not scale
    c16 = rng.integers(0, 65536, (h, w, 4), dtype=np.uint16)
    c8 = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    be = lambda a: [r.astype('>u2').tobytes() for r in a]  # noqa: E731
    packed = lambda a, bits: [np.packbits(np.unpackbits(r[:, None], axis=1)[:, 8 - bits:]).tobytes() for r in a]  # noqa: E731
    idx = rng.integers(0, 6, (h, w), dtype=np.uint8)
    plte = (b'PLTE', bytes(rng.integers(0, 256, 15, dtype=np.uint8)))  # 5 entries: index 5 is past the end
    trns = (b'tRNS', bytes([0, 128, 255, 7, 9]))
    return {
        'grey16': png(w, h, 0, 16, be(g16)),
        'grey16-trns': png(w, h, 0, 16, be(g16), [(b'tRNS', b'\x01\x00')]),
        'rgb16': png(w, h, 2, 16, be(c16[..., :3].reshape(h, -1))),
        'rgba16': png(w, h, 6, 16, be(c16.reshape(h, -1))),
        'la16': png(w, h, 4, 16, be(c16[..., :2].reshape(h, -1))),
        'la8': png(w, h, 4, 8, [r.tobytes() for r in c8[..., :2].reshape(h, -1)]),
        'rgba8': png(w, h, 6, 8, [r.tobytes() for r in c8.reshape(h, -1)]),
        'palette-trns': png(w, h, 3, 8, [r.tobytes() for r in idx], [plte, trns]),
        'palette4': png(w, h, 3, 4, packed(idx, 4), [plte]),
        'grey1': png(w, h, 0, 1, packed(idx % 2, 1)),
        'grey2': png(w, h, 0, 2, packed(idx % 4, 2)),
        'grey4': png(w, h, 0, 4, packed(idx, 4)),
        'rgb8-trns': png(w, h, 2, 8, [r.tobytes() for r in c8[..., :3].reshape(h, -1)], [(b'tRNS', b'\0\1\0\2\0\3')]),
    }


PNGS = _pngs()


@pytest.mark.parametrize('name', sorted(PNGS))
def test_png_reads_as_pil(name, tmp_path):
    f = tmp_path / f'{name}.png'
    f.write_bytes(PNGS[name])
    for gray in (False, True):
        assert np.array_equal(pixels(f, gray), pil(f, gray)), (name, gray)


def test_colour_to_grey_is_pils_601_luma(tmp_path):
    "PIL's L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, checked against PIL itself, then against the command line"
    rgb = np.random.default_rng(1).integers(0, 256, (29, 31, 3), dtype=np.uint8)
    f = tmp_path / 'c.png'
    Image.fromarray(rgb).save(f)
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    assert np.array_equal(pil(f, gray=True), (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)
    assert np.array_equal(pixels(f, gray=True), pil(f, gray=True))


def test_bmp_and_a_png_named_jpg_read_as_pil(tmp_path):
    im = Image.fromarray(colourful(21, 26, seed=2))
    im.save(tmp_path / 'a.bmp')
    im.save(tmp_path / 'png.jpg', format='PNG')  # PIL goes by the content, not the name
    for f in ('a.bmp', 'png.jpg'):
        for gray in (False, True):
            assert np.array_equal(pixels(tmp_path / f, gray), pil(tmp_path / f, gray))


# Scores: the command line's `score` against `sr.predict_pair` on the same files

def _p_same(learn, f1, f2):
    label, p = sr.predict_pair(learn, f1, f2)
    return p if label == sr.SAME else 1 - p


def _score(model, f1, f2):
    return float(cli('score', model, f1, f2).stdout)


def _variants(files, dest):
    "Digits written as the kinds of file the review found scored apart from Python"
    dest.mkdir(exist_ok=True)
    out = {}
    for i, f in enumerate(files):
        im = Image.open(f).convert('RGB').resize((45, 40), Image.BICUBIC)
        a = np.array(im).astype(np.float64)
        tint = (a * [0.9, 0.6, 0.3] + colourful(40, 45, seed=i) * 0.4).clip(0, 255).astype('uint8')
        out[f'jpeg420-{i}'] = (Image.fromarray(tint), dict(format='JPEG', quality=75))
        out[f'jpeg-progressive444-{i}'] = (Image.fromarray(tint), dict(format='JPEG', quality=90, subsampling=0,
                                                                        progressive=True))
        a16 = (a[..., 0] * 257 * 0.3).astype(np.uint16)  # 16-bit grey: values past 255 clip in PIL
        out[f'grey16-{i}'] = (Image.fromarray(a16), dict(format='PNG'))
        rgba = np.dstack([tint, np.full(tint.shape[:2], 90, np.uint8)])
        out[f'rgba-{i}'] = (Image.fromarray(rgba), dict(format='PNG'))
        out[f'palette-trns-{i}'] = (Image.fromarray(tint).quantize(16), dict(format='PNG', transparency=0))
    paths = {}
    for name, (im, kw) in out.items():
        paths[name] = dest / f'{name}.{"jpg" if kw["format"] == "JPEG" else "png"}'
        im.save(paths[name], **kw)
    c16 = (np.array(Image.open(files[0]).convert('RGB').resize((45, 40))).astype(np.uint32) * 200).astype('>u2')
    paths['rgb16'] = dest / 'rgb16.png'
    paths['rgb16'].write_bytes(png(45, 40, 2, 16, [r.tobytes() for r in c16.reshape(40, -1)]))
    return paths


@pytest.fixture(scope='module')
def variants(trained, tmp_path_factory):  # noqa: F811
    return _variants(trained[2][:2], tmp_path_factory.mktemp('variants'))


KINDS = ['jpeg420', 'jpeg-progressive444', 'grey16', 'rgba', 'palette-trns']


@pytest.mark.parametrize('kind', KINDS + ['rgb16'])
def test_score_of_each_kind_of_file_equals_predict_pair(kind, trained, variants):  # noqa: F811
    learn, model, files = trained
    f1 = variants['rgb16'] if kind == 'rgb16' else variants[f'{kind}-0']
    for f2 in (variants[f'{kind}-1'] if kind != 'rgb16' else files[3], files[5]):
        assert abs(_score(model, f1, f2) - _p_same(learn, f1, f2)) < 1e-5, (f1, f2)


def test_exif_orientation_is_not_applied_as_in_fastai(trained, tmp_path):  # noqa: F811
    "`PILImage.create` does not rotate by the EXIF orientation, so neither does the command line"
    learn, model, files = trained
    im = Image.open(files[0]).convert('RGB').resize((60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    f = tmp_path / 'rotated.jpg'
    im.save(f, exif=exif, quality=90)
    assert Image.open(f).getexif()[0x0112] == 6
    assert np.array_equal(pixels(f), pil(f))
    assert abs(_score(model, f, files[1]) - _p_same(learn, f, files[1])) < 1e-5


def test_a_one_channel_model_sees_pils_luma(tmp_path):
    "A one-channel model gets `PILImageBW.create` (convert('L')); its scores equal the model's on those tensors"
    torch.manual_seed(0)
    body = sr.create_body(sr.resnet18, n_in=1, pretrained=False)
    model = sr.SiameseModel(body, sr.create_head(1024, 2)).eval()
    path = tmp_path / 'bw.safetensors'
    sr.export_model(model, path)
    a = [tmp_path / f'{i}.png' for i in range(3)]
    for i, f in enumerate(a): Image.fromarray(colourful(32, 32, seed=10 + i)).save(f)
    def x(f): return torch.tensor(np.array(PILImageBW.create(f)), dtype=torch.float32)[None, None] / 255
    for f1, f2 in [(a[0], a[1]), (a[1], a[2])]:
        with torch.no_grad(): want = model(x(f1), x(f2)).softmax(-1)[0, 1].item()
        assert abs(_score(path, f1, f2) - want) < 1e-5


# File names that are not UTF-8, and files that are not images

def _latin1(tmp_path, src, name=b'caf\xe9'):
    "A copy of `src` under a name that is not UTF-8 (Latin-1 bytes)"
    f = os.fsencode(tmp_path) + b'/' + name + b'.png'
    Path(os.fsdecode(f)).write_bytes(Path(src).read_bytes())
    return f


def _run(*args):
    return subprocess.run([str(CLI), *[a if isinstance(a, bytes) else str(a) for a in args]], capture_output=True,
                          timeout=600)


def test_score_json_carries_a_non_utf8_name(trained, tmp_path):  # noqa: F811
    learn, model, files = trained
    f = _latin1(tmp_path, files[0])
    r = _run('score', model, f, files[1], '--json')
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert os.fsencode(doc['a']) == f  # Python's os.fsdecode form: the bytes come back
    assert abs(doc['p_same'] - _p_same(learn, os.fsdecode(f), files[1])) < 1e-5


def test_dedupe_and_search_carry_non_utf8_names_and_build_refuses_them(trained, tmp_path):  # noqa: F811
    learn, model, files = trained
    d = tmp_path / 'dir'
    d.mkdir()
    f = _latin1(d, files[0])
    _latin1(d, files[0], b'copy\xff')  # a second image: threshold 0 lists every pair
    r = _run('dedupe', model, d, '--threshold', 0, '--json')
    assert r.returncode == 0, r.stderr
    found = {(os.fsencode(x['a']), os.fsencode(x['b'])) for x in map(json.loads, r.stdout.splitlines())}
    assert (f, os.fsencode(d) + b'/copy\xff.png') in found
    text = _run('dedupe', model, d, '--threshold', 0)
    assert text.returncode == 0 and f in text.stdout  # plain text: the name's own bytes
    cli('index', 'build', model, *files[:4], '-o', tmp_path / 'g.sri')
    r = _run('index', 'search', model, tmp_path / 'g.sri', f, '-k', 2, '--json')
    assert r.returncode == 0, r.stderr
    assert os.fsencode(json.loads(r.stdout)['query']) == f
    r = _run('index', 'build', model, d, '-o', tmp_path / 'bad.sri')
    assert r.returncode == 1 and b'not UTF-8' in r.stderr and b'panicked' not in r.stderr, r.stderr
    assert not (tmp_path / 'bad.sri').exists()


def _fails(model, f, match, tmp_path):
    r = _run('score', model, f, f)
    assert r.returncode == 1, r.stderr
    err = r.stderr.decode()
    assert match in err and str(f) in err and 'panicked' not in err and len(err.strip().splitlines()) == 1, err


def test_truncated_and_corrupt_files_are_one_line_errors_naming_the_file(trained, tmp_path):  # noqa: F811
    learn, model, files = trained
    im = Image.fromarray(colourful(40, 45, seed=4))
    for fmt, kw in [('JPEG', dict(quality=90)), ('JPEG', dict(progressive=True)), ('PNG', {})]:
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        data = buf.getvalue()
        f = tmp_path / f'cut{len(data)}.{fmt.lower()}'
        f.write_bytes(data[:len(data) // 2])
        with pytest.raises(OSError): Image.open(f).load()  # PIL refuses it too
        _fails(model, f, 'cannot read image', tmp_path)
        f.write_bytes(data[:200] + bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))
        with pytest.raises((OSError, SyntaxError, ValueError)): Image.open(f).load()
        _fails(model, f, 'cannot read image', tmp_path)


def test_a_huge_declared_size_is_refused_as_pil_refuses_it(trained, tmp_path):  # noqa: F811
    learn, model, files = trained
    big = tmp_path / 'big.png'
    big.write_bytes(png(20000, 20000, 0, 8, [b'\0' * 20000]))  # 4e8 pixels declared, one row given
    buf = io.BytesIO()
    Image.fromarray(colourful(16, 16, seed=1)).save(buf, format='JPEG')
    data = bytearray(buf.getvalue())
    sof = data.index(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', 60000, 60000)  # height, width
    (tmp_path / 'big.jpg').write_bytes(bytes(data))
    for f in (big, tmp_path / 'big.jpg'):
        with pytest.raises(Image.DecompressionBombError): Image.open(f)
        _fails(model, f, 'decompression-bomb', tmp_path)
