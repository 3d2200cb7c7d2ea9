"Data, predict and embeddings: the user's side of the Siamese tutorial, on real fastai."
import random
import re

import pytest
import torch
from fastai.data.transforms import get_image_files
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.vision.core import PILImage
from PIL import Image

import siamese_rs as sr
from siamese_rs.data import _as_batch
from siamese_rs.demo import siamese_learner, train


@pytest.fixture(scope='module')
def files():
    return get_image_files(sr.digits_path())


@pytest.fixture(scope='module')
def small(files):
    "80 files over all classes, as a small `DataLoaders` of 16-pixel pairs"
    return sr.siamese_dataloaders(sorted(files)[::22], size=16, bs=8)


@pytest.fixture(scope='module')
def learn(small):
    return siamese_learner(small, 'resnet18')


def write_images(folder, names, size=(12, 12)):
    for i, n in enumerate(names):
        Image.new('RGB', size, (i * 20 % 255, 0, 0)).save(folder / n)
    return get_image_files(folder)


def test_embedded_data_layout(files):
    assert len(files) == 1797
    names = {f.name for f in files}
    assert all(re.match(r'^[a-z]+_\d+\.png$', n) for n in names)
    assert {n.split('_')[0] for n in names} == set(sr.DIGIT_NAMES)
    assert {f.parent for f in files} == {sr.digits_path()}
    assert sr.NameLabeller()(files[0]) == files[0].name.split('_')[0]
    im = Image.open(files[0])
    assert im.size == (32, 32)


def test_digits_built_in_fresh_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('SIAMESE_RS_DATA', str(tmp_path))
    p = sr.digits_path(px=8)
    assert p.parent == tmp_path and len(list(p.glob('*.png'))) == 1797
    assert sr.digits_path(px=8) == p
    assert [q.name for q in tmp_path.iterdir()] == [p.name]


def test_siamese_image_show():
    a, b = PILImage(Image.new('RGB', (8, 8))), PILImage(Image.new('RGB', (6, 6)))
    ax = sr.SiameseImage(a, b, True).show()
    assert ax.get_title() == 'same'
    assert sr.SiameseImage(a, b).show().get_title() == 'undetermined'


def test_transform_semantics(files):
    fs = sorted(files)[::9]
    splits = [list(range(150)), list(range(150, len(fs)))]
    random.seed(0)
    tfm = sr.SiameseTransform(fs, sr.NameLabeller(), splits)
    assert set(tfm.valid) == set(fs[150:])
    lab = sr.NameLabeller()
    for f, (f2, same) in tfm.valid.items(): assert (lab(f) == lab(f2)) == same
    f = fs[160]
    first = tfm(f)
    assert isinstance(first, sr.SiameseImage) and len(first) == 3
    assert all(tfm.valid[f] == tfm.valid[f] for _ in range(3)) and tfm(f)[2] == first[2]
    draws = [tfm._draw(fs[0]) for _ in range(400)]
    assert 0.4 < sum(s for _, s in draws) / 400 < 0.6
    assert all((lab(f2) == lab(fs[0])) == s for f2, s in draws)


def test_dataloaders_shapes_and_stats(small):
    x1, x2, y = small.one_batch()
    assert x1.shape == x2.shape == (8, 3, 16, 16) and y.dtype == torch.bool
    norm = small.after_batch.fs[-1]
    assert torch.allclose(norm.mean.flatten().cpu(), torch.tensor(sr.imagenet_stats[0]))
    assert torch.allclose(norm.std.flatten().cpu(), torch.tensor(sr.imagenet_stats[1]))
    assert len(small.valid_ds) == 16 and small.n_inp == 2
    fs = small.train_ds.items + small.valid_ds.items
    a, b = (sr.siamese_dataloaders(fs, size=16, bs=8).valid_ds.tfms[0].valid for _ in range(2))
    assert a == b and len(a) == 16


def test_datablock_form(files):
    dls = sr.siamese_datablock(sorted(files)[::30], size=16).dataloaders(sorted(files)[::30], bs=4)
    (x1, x2), y = (lambda b: (b[0], b[1]))(dls.one_batch())
    assert x1.shape == x2.shape == (4, 3, 16, 16) and dls.vocab == ['different', 'same']
    dls.show_batch(max_n=2)


def test_show_batch_and_results(small, learn):
    small.show_batch(max_n=2)
    learn.show_results(max_n=2)


def test_predict_pair(learn, files):
    label, idx, probs = learn.predict(sr.SiameseImage(PILImage.create(files[0]), PILImage.create(files[1])))
    assert label in ('same', 'different') and probs.shape == (2,)
    assert label == ('same' if idx.item() == 1 else 'different')
    assert torch.isclose(probs.sum(), torch.tensor(1.))
    lbl, p = sr.predict_pair(learn, files[0], files[1])
    assert lbl == label and p == pytest.approx(probs[idx].item(), abs=1e-5) and p >= 0.5


def _usage_loss(out, targ): return CrossEntropyLossFlat()(out, targ.long())  # the README's Usage loss


@pytest.mark.parametrize('loss_func', [_usage_loss, CrossEntropyLossFlat(), torch.nn.CrossEntropyLoss()],
                         ids=['usage-function', 'CrossEntropyLossFlat', 'nn.CrossEntropyLoss'])
def test_predict_pair_with_a_plain_loss(learn, files, loss_func):
    "A learner built as in the README's Usage (no `SiameseLoss`) predicts what the `SiameseLoss` one does"
    plain = Learner(learn.dls, learn.model, loss_func=loss_func, splitter=sr.siamese_splitter)
    model = learn.model.eval()
    for f1, f2 in [(files[0], files[1]), (files[0], files[0]), (files[5], files[900])]:
        expected = sr.predict_pair(learn, f1, f2)
        lbl, p = sr.predict_pair(plain, f1, f2)
        assert isinstance(lbl, str) and isinstance(p, float)
        assert lbl == expected[0] and p == pytest.approx(expected[1], abs=1e-6)
        x1, x2 = (_as_batch([f], learn.dls, 'images') for f in (f1, f2))  # the validation set's transforms
        with torch.no_grad(): probs = model(x1, x2).softmax(-1)[0]
        assert lbl == ('same' if probs[1] > probs[0] else 'different')
        assert p == pytest.approx(probs.max().item(), abs=1e-5)


def test_predict_pair_bad_input(learn, files):
    with pytest.raises(sr.ArgumentTypeError, match='learn'): sr.predict_pair(learn.model, files[0], files[1])
    head = torch.nn.Sequential(learn.model.head, torch.nn.Linear(2, 1))  # one logit: not a same/different pair
    one = Learner(learn.dls, sr.SiameseModel(learn.model.encoder, head), loss_func=_usage_loss)
    with pytest.raises(sr.ShapeError, match='two logits'): sr.predict_pair(one, files[0], files[1])


def test_encode_and_score_pairs(learn, files):
    fs = files[:5]
    e = sr.encode(learn, fs)
    assert e.shape == (5, 1024)
    m = sr.score_pairs(learn, fs)
    assert m.shape == (5, 5) and ((m >= 0) & (m <= 1)).all()
    p = sr.score_pairs(learn, fs, fs[::-1])
    assert torch.allclose(p, torch.stack([m[i, 4 - i] for i in range(5)]), atol=1e-5)
    lbl, prob = sr.predict_pair(learn, fs[0], fs[2])
    assert (prob if lbl == 'same' else 1 - prob) == pytest.approx(m[0, 2].item(), abs=1e-4)


def test_score_pairs_bad_input(learn):
    x = torch.randn(3, 3, 16, 16)
    with pytest.raises(sr.ShapeError, match='images2'): sr.score_pairs(learn.model, x, torch.randn(3, 3, 20, 20))
    with pytest.raises(sr.ArgumentError, match='images2'): sr.score_pairs(learn.model, x, x[:2])
    with pytest.raises(sr.ShapeError, match='images'): sr.encode(learn.model, torch.randn(3, 16, 16))
    with pytest.raises(sr.ArgumentTypeError, match='model'): sr.encode(torch.nn.Linear(2, 2), x)


def test_pairs_of_different_sizes(tmp_path, learn):
    fs = write_images(tmp_path, ['a_1.png', 'b_1.png'])
    Image.new('RGB', (40, 25)).save(tmp_path / 'a_2.png')
    lbl, p = sr.predict_pair(learn, tmp_path / 'a_1.png', tmp_path / 'a_2.png')
    assert lbl in ('same', 'different') and 0.5 <= p <= 1
    assert sr.score_pairs(learn, [tmp_path / 'a_2.png'], [fs[0]]).shape == (1,)


def test_unreadable_image(tmp_path):
    write_images(tmp_path, ['a_1.png', 'a_2.png', 'b_1.png', 'b_2.png'])
    (tmp_path / 'a_3.png').write_bytes(b'not a png')
    fs = sorted(get_image_files(tmp_path))
    with pytest.raises(sr.ImageError, match='a_3.png'):
        dls = sr.siamese_dataloaders(fs, size=8, bs=1, valid_pct=0.2)
        for _ in range(5): dls.train.one_batch(); dls.valid.one_batch()
    with pytest.raises(sr.ImageError, match='a_3.png'): sr.predict_pair(None, tmp_path / 'a_3.png', fs[0])


def test_too_few_classes(tmp_path):
    fs = write_images(tmp_path, ['a_1.png', 'a_2.png', 'a_3.png'])
    with pytest.raises(sr.ArgumentError, match='at least two classes'): sr.siamese_dataloaders(fs, size=8)
    with pytest.raises(sr.ArgumentError, match='files'): sr.siamese_dataloaders([], size=8)


def test_label_pattern_mismatch(tmp_path):
    fs = write_images(tmp_path, ['a_1.png', 'nolabel.png'])
    with pytest.raises(sr.ArgumentError, match="pat .* 'nolabel.png'"): sr.siamese_dataloaders(fs, size=8)


def test_single_image_class(tmp_path):
    fs = write_images(tmp_path, ['a_1.png', 'a_2.png', 'a_3.png', 'b_1.png'])
    tfm = sr.SiameseTransform(fs, sr.NameLabeller(), [[0, 1, 2, 3], []])
    b = [f for f in fs if f.name == 'b_1.png'][0]
    for _ in range(30):
        f2, same = tfm._draw(b)
        assert (f2 == b) == same
    dls = sr.siamese_dataloaders(fs, size=8, bs=2, valid_pct=0.25)
    assert dls.one_batch()[0].shape == (2, 3, 8, 8)


def test_bad_arguments(files):
    with pytest.raises(sr.ArgumentError, match='valid_pct'): sr.siamese_dataloaders(files[:10], valid_pct=1.5)
    with pytest.raises(sr.ArgumentError, match='px'): sr.digits_path(px=4)
    with pytest.raises(sr.ArgumentError, match='arch'): siamese_learner(None, 'resnet9')


def test_demo_train_tiny(tmp_path):
    learn, acc, seconds = train(size=16, bs=16, n_files=96, freeze_epochs=1, epochs=1, quiet=True,
                                out=tmp_path / 'm.pkl')
    assert 0 <= acc <= 1 and seconds > 0 and len(learn.recorder.values) == 1
    loaded = load_learner(tmp_path / 'm.pkl')
    f = learn.dls.valid_ds.items[0]
    lbl, p = sr.predict_pair(loaded, f, f)
    assert (lbl, round(p, 4)) == tuple((a, round(b, 4)) for a, b in [sr.predict_pair(learn, f, f)])[0]


def test_files_are_transformed_as_the_validation_set(tmp_path, learn):
    "A non-square image is centre-cropped, as fastai's validation `Resize` does, the same on every call"
    from fastai.data.transforms import IntToFloatTensor, Normalize, ToTensor
    from fastai.vision.augment import Resize
    Image.effect_noise((40, 25), 60).convert('RGB').save(tmp_path / 'a_1.png')
    f = tmp_path / 'a_1.png'
    e = sr.encode(learn, [f])
    for _ in range(3): torch.testing.assert_close(sr.encode(learn, [f]), e, atol=0, rtol=0)
    img = Resize(16)(PILImage.create(f), split_idx=1)
    x = IntToFloatTensor()(ToTensor()(img))[None]
    x = Normalize.from_stats(*sr.imagenet_stats)(x)
    torch.testing.assert_close(sr.encode(learn.model, x), e, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sr.encode(learn, f), e, atol=0, rtol=0)  # one path is one image


@pytest.mark.parametrize('bs', [0, -1, 2.5, True])
def test_bad_batch_size_names_bs(learn, bs):
    x = torch.randn(3, 3, 16, 16)
    with pytest.raises(sr.ArgumentError, match=f'bs: expected a positive int.*got {bs!r}'): sr.encode(learn, x, bs=bs)
    with pytest.raises(sr.ArgumentError, match='bs: '): sr.score_pairs(learn, x, bs=bs)


def test_images_of_a_wrong_type_name_the_argument(learn):
    with pytest.raises(sr.ArgumentTypeError, match='images: expected a tensor batch'): sr.encode(learn, 42)
