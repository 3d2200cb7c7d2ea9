"""`sr.export_model` / `sr.load_model`: one safetensors file (fastai's state_dict keys, float32, and a JSON document
under the metadata key "siamese_rs") that builds the same model again, with exactly the same outputs."""
import copy
import json
import pickle
import re
from types import SimpleNamespace

import pytest
import torch
from fastai.data.core import TfmdLists
from fastai.data.transforms import IntToFloatTensor, Normalize, RandomSplitter, ToTensor, get_image_files
from fastai.learner import load_learner
from fastai.vision.augment import Resize
from fastai.vision.learner import create_body as fastai_create_body
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision import models as tvm

import siamese_rs as sr
from conftest import RefSiamese
from siamese_rs.demo import siamese_learner
from siamese_rs.index import fingerprint

HEAD_DEFAULTS = {'lin_ftrs': None, 'ps': [0.5], 'pool': True, 'concat_pool': True, 'first_bn': True, 'bn_final': False,
                 'lin_first': False, 'y_range': None}


def channels(body, n_in=3, size=32):
    with torch.no_grad(): return body.eval()(torch.zeros(1, n_in, size, size)).shape[1]


def siamese(arch, n_in=3, cut=-2, size=32, seed=0, **head):
    "`SiameseModel(create_body(arch, n_in, cut), create_head(2 * channels, 2, **head))`, with random BN statistics"
    torch.manual_seed(seed)
    body = sr.create_body(getattr(sr, arch), n_in=n_in, pretrained=False, cut=cut)
    model = sr.SiameseModel(body, sr.create_head(2 * channels(body, n_in, size), 2, **head))
    randomise(model, seed)
    return model.eval()


def randomise(model, seed=0):
    "Every weight and statistic moved, so that a key loaded into the wrong place would show in the outputs"
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k.endswith('running_var'): v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            elif k.endswith('num_batches_tracked'): v.fill_(7)
            elif v.is_floating_point(): v.add_(torch.randn(v.shape, generator=g) * 0.05)


def inputs(n_in=3, size=32, b=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n_in, size, size, generator=g), torch.randn(b, n_in, size, size, generator=g)


def outputs(model, x):
    with torch.no_grad(): return model.eval()(*x)


def file_contents(path):
    with safe_open(str(path), 'pt') as f: return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def round_trip(model, tmp_path, n_in=3, size=32, name='m.safetensors'):
    "Export, load, and check the loaded model: same tree, keys, tensors and exactly the same eval outputs"
    path = sr.export_model(model, tmp_path / name)
    loaded = sr.load_model(path)
    assert isinstance(loaded, sr.SiameseModel) and not loaded.training
    assert repr(loaded) == repr(model)
    sd, own = loaded.state_dict(), model.state_dict()
    assert list(sd) == list(own)
    assert all(torch.equal(sd[k], own[k]) for k in own)
    x = inputs(n_in, size)
    want = outputs(model, x)
    got = outputs(loaded, x)
    assert torch.equal(got, want)
    return path, loaded


@pytest.mark.parametrize('arch,size', [('resnet18', 32), ('resnet34', 32), ('xresnet18', 32), ('densenet121', 32),
                                       ('squeezenet1_1', 32), ('vgg11_bn', 32), ('alexnet', 64)])
def test_round_trip_gives_the_same_outputs(arch, size, tmp_path):
    model = siamese(arch, cut=sr.model_meta[getattr(sr, arch)]['cut'], size=size)
    path, loaded = round_trip(model, tmp_path, size=size)
    meta, tensors = file_contents(path)
    assert set(meta) == {'siamese_rs'}
    info = json.loads(meta['siamese_rs'])
    assert info == loaded.export_info
    assert (info['format'], info['format_version'], info['arch'], info['n_in']) == ('siamese-rs model', 1, arch, 3)
    assert info['cut'] == sr.model_meta[getattr(sr, arch)]['cut']
    assert info['stats'] is None and info['input'] is None and info['labels'] is None  # a bare model
    assert info['torch_version'] == torch.__version__ and info['siamese_rs_version'] == sr.__version__
    # what PairIndex records of a model: the loaded model's, so galleries built from the file load with it
    assert info['fingerprint'] == fingerprint(loaded) == fingerprint(model)
    # The file holds exactly the state_dict: float32 floats, int64 batch counters with their values
    assert set(tensors) == set(model.state_dict())
    for k, v in model.state_dict().items():
        t = tensors[k]
        assert t.dtype == (torch.int64 if k.endswith('num_batches_tracked') else torch.float32), k
        assert torch.equal(t, v), k


def test_metadata_and_file_layout_for_the_default_model(tmp_path):
    model = siamese('resnet34')
    path = sr.export_model(model, str(tmp_path / 'm.safetensors'))
    assert path == tmp_path / 'm.safetensors'
    info = json.loads(file_contents(path)[0]['siamese_rs'])
    assert list(info) == ['format', 'format_version', 'arch', 'n_in', 'cut', 'head', 'stats', 'input', 'labels',
                          'fingerprint', 'torch_version', 'siamese_rs_version']
    assert info['head'] == {'nf': 1024, 'n_out': 2, **HEAD_DEFAULTS}
    # the safetensors header is plain JSON with the document as one string: what a reader without Python parses
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], 'little')])
    assert json.loads(header['__metadata__']['siamese_rs']) == info


# A learner on the bundled digits
@pytest.fixture(scope='module')
def files():
    return sorted(get_image_files(sr.digits_path()))[::22]


def pair_batch(dls):
    "The two image batches of a validation batch (`(x1, x2, y)` from `siamese_dataloaders`, `((x1, x2), y)` from the DataBlock)"
    b = dls.valid.one_batch()
    return tuple(b[0]) if isinstance(b[0], tuple) else tuple(b[:2])


def find_resize(dls): return next(t for t in dls.valid.after_item.fs if isinstance(t, Resize))


def check_learner_file(learn, path, labels, size, method='crop', pad_mode='reflection', x=None):
    info = sr.load_model(sr.export_model(learn, path)).export_info
    mean, std = sr.imagenet_stats
    assert info['stats'] == {'mean': mean, 'std': std}  # float32 values, written in their shortest form
    assert info['input'] == {'size': size, 'method': method, 'pad_mode': pad_mode}
    assert info['labels'] == labels
    assert info['arch'] == 'resnet18' and info['cut'] == -2 and info['n_in'] == 3
    loaded = sr.load_model(path)
    x = pair_batch(learn.dls) if x is None else x
    assert x[0].shape[1:] == (3, *size)
    assert torch.equal(outputs(loaded, x), outputs(learn.model, x))
    return info


def test_metadata_of_a_learner_on_the_digits(files, tmp_path):
    learn = siamese_learner(sr.siamese_dataloaders(files, size=16, bs=8), 'resnet18')
    x = pair_batch(learn.dls)
    check_learner_file(learn, tmp_path / 'digits.safetensors', ['different', 'same'], [16, 16])
    # a Learner saved with learn.export and loaded back keeps what export needs
    learn.path = tmp_path
    learn.export('learn.pkl')
    again = load_learner(tmp_path / 'learn.pkl')
    check_learner_file(again, tmp_path / 'again.safetensors', ['different', 'same'], [16, 16], x=x)


def test_metadata_of_the_datablock_form_has_its_vocab_and_size(files, tmp_path):
    dls = sr.siamese_datablock(files, size=(20, 12)).dataloaders(files, bs=8)
    learn = siamese_learner(dls, 'resnet18')
    assert pair_batch(dls)[0].shape[2:] == (20, 12)  # fastai's (height, width)
    assert list(dls.vocab) == ['different', 'same']
    check_learner_file(learn, tmp_path / 'db.safetensors', list(dls.vocab), [20, 12])


def test_metadata_reads_the_resize_method_and_padding(files, tmp_path):
    splits = RandomSplitter(0.2, seed=42)(files)
    tfm = sr.SiameseTransform(files, sr.NameLabeller(), splits)
    dls = TfmdLists(files, tfm, splits=splits).dataloaders(
        after_item=[Resize((24, 18), method='pad', pad_mode='zeros'), ToTensor, sr.SimilarityLabel()], bs=8,
        after_batch=[IntToFloatTensor, Normalize.from_stats(*sr.imagenet_stats)])
    assert pair_batch(dls)[0].shape[2:] == (24, 18)
    learn = siamese_learner(dls, 'resnet18')
    check_learner_file(learn, tmp_path / 'pad.safetensors', ['different', 'same'], [24, 18], 'pad', 'zeros')
    find_resize(learn.dls).method = 'squish'
    info = sr.load_model(sr.export_model(learn, tmp_path / 'squish.safetensors')).export_info
    assert info['input']['method'] == 'squish'


# Bodies and heads other than the defaults
@pytest.mark.parametrize('arch,n_in,cut', [('resnet18', 1, 6), ('resnet34', 1, -2), ('xresnet18', 2, -4),
                                           ('densenet121', 1, None), ('resnet18', 3, None)])
def test_n_in_and_cut(arch, n_in, cut, tmp_path):
    model = siamese(arch, n_in=n_in, cut=cut)
    _, loaded = round_trip(model, tmp_path, n_in=n_in)
    assert (loaded.export_info['n_in'], loaded.export_info['cut']) == (n_in, cut)


HEADS = [dict(lin_ftrs=[64, 32]), dict(ps=[0.1, 0.2, 0.3], lin_ftrs=[64, 32]), dict(ps=0.25), dict(bn_final=True),
         dict(lin_first=True), dict(y_range=(-1, 2.5)), dict(concat_pool=False), dict(first_bn=False),
         dict(lin_ftrs=[48], ps=[0.0, 0.3], concat_pool=False, first_bn=False, bn_final=True, lin_first=True,
              y_range=(0.5, 3))]


@pytest.mark.parametrize('head', HEADS, ids=lambda h: ','.join(h))
def test_head_arguments(head, tmp_path):
    model = siamese('resnet18', **head)
    _, loaded = round_trip(model, tmp_path)
    got = loaded.export_info['head']
    want = {**HEAD_DEFAULTS, **head}
    want['ps'] = [float(p) for p in want['ps']] if isinstance(want['ps'], list) else [float(want['ps'])]
    if want['y_range'] is not None: want['y_range'] = list(want['y_range'])
    assert {k: v for k, v in got.items() if k not in ('nf', 'n_out')} == want
    if 'y_range' in head:  # the user's numbers, ints kept as ints, as fastai's SigmoidRange holds them
        low, high = head['y_range']
        assert (loaded.head[-1].low, loaded.head[-1].high) == (low, high)
        assert type(loaded.head[-1].low) is type(low)


def test_head_without_pooling_round_trips(tmp_path):
    "pool=False takes features already flat: the tree, keys and weights come back"
    torch.manual_seed(0)
    model = sr.SiameseModel(sr.create_body(sr.resnet18, cut=-1, pretrained=False), sr.create_head(1024, 3, pool=False))
    randomise(model)
    loaded = sr.load_model(sr.export_model(model, tmp_path / 'm.safetensors'))
    assert repr(loaded) == repr(model) and loaded.export_info['head']['pool'] is False
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_a_torchvision_or_fastai_model_given_to_create_body_is_found_in_the_arch_table(tmp_path):
    from fastai.vision.models import xresnet
    for ref, arch in ((tvm.resnet34(), 'resnet34'), (tvm.squeezenet1_1(), 'squeezenet1_1'), (xresnet.xresnet18(), 'xresnet18')):
        body = sr.create_body(ref, cut=sr.model_meta[getattr(sr, arch)]['cut'], pretrained=False)
        model = sr.SiameseModel(body, sr.create_head(2 * channels(body), 2))
        randomise(model)
        _, loaded = round_trip(model, tmp_path, name=f'{arch}.safetensors')
        assert loaded.export_info['arch'] == arch


def test_one_of_our_instances_given_to_create_body(tmp_path):
    full = sr.resnet50()
    body = sr.create_body(full, n_in=1, cut=-3, pretrained=False)
    model = sr.SiameseModel(body, sr.create_head(2 * channels(body, 1), 2))
    _, loaded = round_trip(model, tmp_path, n_in=1)
    assert (loaded.export_info['arch'], loaded.export_info['cut']) == ('resnet50', -3)


# What fastai users do with the objects keeps them exportable, and the record is invisible
def test_copies_pickles_frozen_and_wrapped_models_export(tmp_path):
    model = siamese('resnet18')
    assert not any('_sr_' in k for k in model.state_dict())
    want = file_contents(sr.export_model(model, tmp_path / 'a.safetensors'))
    for i, other in enumerate([copy.deepcopy(model), pickle.loads(pickle.dumps(model)), sr.freeze(model),
                               nn.DataParallel(model)]):
        got = file_contents(sr.export_model(other, tmp_path / f'{i}.safetensors'))
        assert got[0] == want[0], type(other)
        assert all(torch.equal(got[1][k], v) for k, v in want[1].items())
    frozen = sr.freeze(model)
    loaded = sr.load_model(sr.export_model(frozen, tmp_path / 'frozen.safetensors'))
    x = inputs()
    assert torch.equal(outputs(loaded, x), outputs(model, x))
    model.train()
    sr.export_model(model, tmp_path / 'train.safetensors')
    assert model.training  # export leaves the model as it was


def test_export_and_load_leave_the_random_state_alone(tmp_path):
    model = siamese('resnet18')
    state = torch.get_rng_state()
    sr.load_model(sr.export_model(model, tmp_path / 'm.safetensors'))
    assert torch.equal(torch.get_rng_state(), state)


def test_a_model_of_another_dtype_is_written_in_float32(tmp_path):
    model = siamese('resnet18').double()
    _, tensors = file_contents(sr.export_model(model, tmp_path / 'm.safetensors'))
    assert {v.dtype for k, v in tensors.items() if not k.endswith('num_batches_tracked')} == {torch.float32}


def test_re_exporting_a_loaded_model_writes_the_same_file(tmp_path):
    model = siamese('xresnet18', cut=-4)
    loaded = sr.load_model(sr.export_model(model, tmp_path / 'a.safetensors'))
    a, b = file_contents(tmp_path / 'a.safetensors'), file_contents(sr.export_model(loaded, tmp_path / 'b.safetensors'))
    assert a[0] == b[0] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


# Models that export refuses, naming the module
class MyBlock(nn.Module):
    def forward(self, x): return x


def export_error(model, tmp_path):
    with pytest.raises(sr.ExportError) as e: sr.export_model(model, tmp_path / 'x.safetensors')
    assert isinstance(e.value, sr.SiameseError) and isinstance(e.value, ValueError)
    assert not (tmp_path / 'x.safetensors').exists()
    return str(e.value)


def test_a_users_own_module_is_named(tmp_path):
    model = siamese('resnet18')
    model.encoder[4][1] = MyBlock()
    msg = export_error(model, tmp_path)
    assert 'model.encoder.4.1 is test_export_model.MyBlock' in msg and 'did not build' in msg
    model = siamese('resnet18')
    model.head.add_module('extra', MyBlock())
    assert 'model.head.extra is test_export_model.MyBlock' in export_error(model, tmp_path)
    model = siamese('resnet18')
    model.head[4] = nn.Linear(1024, 512, bias=False)  # PyTorch's own Linear, not ours
    assert 'model.head.4 is torch.nn.modules.linear.Linear' in export_error(model, tmp_path)


def test_a_users_own_siamese_class_is_named(tmp_path):
    ours = siamese('resnet18')
    with pytest.raises(sr.ExportError, match=r'conftest\.RefSiamese'):
        sr.export_model(RefSiamese(ours.encoder, ours.head), tmp_path / 'x.safetensors')

    class MySiamese(sr.SiameseModel): pass
    assert 'model is test_export_model.' in export_error(MySiamese(ours.encoder, ours.head), tmp_path)


def test_parts_not_built_by_our_functions(tmp_path):
    head = sr.create_head(1024, 2)
    msg = export_error(sr.SiameseModel(fastai_create_body(tvm.resnet18(), cut=-2), head), tmp_path)
    assert 'encoder (torch.nn.modules.container.Sequential) was not built by sr.create_body' in msg
    body = sr.create_body(sr.resnet18, cut=-2, pretrained=False)
    msg = export_error(sr.SiameseModel(body, nn.Sequential(nn.Flatten(), nn.Linear(1024, 2))), tmp_path)
    assert 'head (torch.nn.modules.container.Sequential) was not built by sr.create_head' in msg
    cut_fn = sr.create_body(sr.resnet18, cut=lambda m: sr.Sequential(*list(m.children())[:-2]), pretrained=False)
    assert 'cut by a function' in export_error(sr.SiameseModel(cut_fn, head), tmp_path)
    sliced = sr.create_body(sr.resnet18, cut=-2, pretrained=False)[:6]  # a new Sequential: not what create_body built
    assert 'was not built by sr.create_body' in export_error(sr.SiameseModel(sliced, sr.create_head(256, 2)), tmp_path)
    with pytest.raises(sr.ExportError, match='the model is siamese_rs.layers.Sequential'):
        sr.export_model(body, tmp_path / 'x.safetensors')
    with pytest.raises(sr.ArgumentTypeError, match='got str'): sr.export_model('model', tmp_path / 'x.safetensors')


def test_a_tree_edited_after_building_is_named(tmp_path):
    model = siamese('resnet18')
    model.head[8] = sr.Linear(512, 5, bias=False)  # our class, other settings
    assert 'model.head.8 (Linear) has out_features=5 where the recorded arguments build 2' in export_error(model, tmp_path)
    model = siamese('resnet18')
    model.head[2].weight = nn.Parameter(torch.ones(7))  # a tensor of another shape
    msg = export_error(model, tmp_path)
    assert re.search(r'model\.head\.2 \(BatchNorm1d\) has parameters \{weight: \[7\], bias: \[2048\]\} where the '
                     r'recorded arguments build \{weight: \[2048\], bias: \[2048\]\}', msg), msg
    model = siamese('resnet18')
    model.encoder[0].stride = (1, 1)  # a setting: no shape changes
    assert 'model.encoder.0 (Conv2d) has stride=(1, 1) where the recorded arguments build (2, 2)' in export_error(model, tmp_path)
    model = siamese('resnet18')
    del model.encoder[7]
    assert "model.encoder (Sequential) has children ['0', '1', '2', '3', '4', '5', '6']" in export_error(model, tmp_path)
    model = siamese('resnet18')
    torch.nn.utils.parametrizations.weight_norm(model.head[4])
    assert 'model.head.4 is torch.nn.utils.parametrize.ParametrizedLinear' in export_error(model, tmp_path)
    ref = tvm.resnet18()
    ref.layer4 = nn.Identity()
    body = sr.create_body(ref, cut=-2, pretrained=False)
    msg = export_error(sr.SiameseModel(body, sr.create_head(512, 2)), tmp_path)
    assert 'is not a resnet body that sr.create_body builds; closest, sr.create_body(sr.resnet18, n_in=3' in msg
    assert 'model.encoder.7 is siamese_rs.layers.Identity where the recorded arguments build' in msg


def test_metadata_must_be_finite(tmp_path):
    "The document is strict JSON (no NaN), so that any JSON parser reads it"
    norm = Normalize.from_stats([float('nan'), 0.4, 0.4], [0.2, 0.2, 0.2])
    learn = SimpleNamespace(model=siamese('resnet18'), dls=SimpleNamespace(valid=SimpleNamespace(
        after_batch=SimpleNamespace(fs=[norm]), after_item=SimpleNamespace(fs=[]))))
    assert 'NaN or infinity' in export_error(learn, tmp_path)
    norm.mean[0, 0] = 0.5
    info = sr.load_model(sr.export_model(learn, tmp_path / 'm.safetensors')).export_info
    assert info['stats'] == {'mean': [0.5, 0.4, 0.4], 'std': [0.2, 0.2, 0.2]} and info['input'] is None


# Files that load_model refuses
def rewrite_metadata(path, out, edit):
    meta, tensors = file_contents(path)
    info = json.loads(meta['siamese_rs'])
    edit(info)
    save_file(tensors, str(out), metadata={'siamese_rs': json.dumps(info)})
    return out


def test_wrong_format_version_and_format(tmp_path):
    path = sr.export_model(siamese('resnet18'), tmp_path / 'm.safetensors')
    v2 = rewrite_metadata(path, tmp_path / 'v2.safetensors', lambda i: i.update(format_version=2))
    with pytest.raises(sr.WeightsError, match='is format_version 2; siamese-rs 0.1.0 reads format_version 1; upgrade'):
        sr.load_model(v2)
    v0 = rewrite_metadata(path, tmp_path / 'v0.safetensors', lambda i: i.update(format_version='1'))
    with pytest.raises(sr.WeightsError, match="is format_version '1'; siamese-rs 0.1.0 reads format_version 1$"):
        sr.load_model(v0)
    other = rewrite_metadata(path, tmp_path / 'f.safetensors', lambda i: i.update(format='something else'))
    with pytest.raises(sr.WeightsError, match="is not a siamese-rs model file \\(format 'something else'\\)"):
        sr.load_model(other)
    bad_arch = rewrite_metadata(path, tmp_path / 'a.safetensors', lambda i: i.update(arch='resnet9'))
    with pytest.raises(sr.WeightsError, match="metadata field arch must be one of resnet18, .*, got 'resnet9'"):
        sr.load_model(bad_arch)
    bad_head = rewrite_metadata(path, tmp_path / 'h.safetensors', lambda i: i['head'].update(ps='half'))
    with pytest.raises(sr.WeightsError, match="field head.ps must be a list of 1 to 1024 dropout probabilities, got 'half'"):
        sr.load_model(bad_head)
    other_model = rewrite_metadata(path, tmp_path / 'o.safetensors', lambda i: i.update(arch='resnet34'))
    with pytest.raises(sr.WeightsError, match=r'do not fit the model its metadata describes \(sr.create_body\(sr.resnet34'):
        sr.load_model(other_model)


def test_a_plain_state_dict_file_is_not_a_model_file(tmp_path):
    save_file({'w': torch.zeros(2)}, str(tmp_path / 'sd.safetensors'))
    with pytest.raises(sr.WeightsError, match="has no 'siamese_rs' metadata.*sr.load_weights"):
        sr.load_model(tmp_path / 'sd.safetensors')
    save_file({'w': torch.zeros(2)}, str(tmp_path / 'j.safetensors'), metadata={'siamese_rs': '{not json'})
    with pytest.raises(sr.WeightsError, match='is not JSON'): sr.load_model(tmp_path / 'j.safetensors')


class Planted:
    "Unpickling this creates the file `marker`"
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (open, (self.marker, 'w'))


def test_a_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / 'unpickled'
    evil = tmp_path / 'evil.safetensors'
    evil.write_bytes(pickle.dumps({'siamese_rs': Planted(str(marker))}))
    torch.save({'weights': Planted(str(marker))}, tmp_path / 'evil.pth')
    for path in (evil, tmp_path / 'evil.pth'):
        with pytest.raises(sr.WeightsError, match='as a safetensors file .*never unpickles'): sr.load_model(path)
        assert not marker.exists()
    pickle.loads(evil.read_bytes())  # the file does what it was made for when it is unpickled
    assert marker.exists()


def test_bad_paths(tmp_path):
    with pytest.raises(sr.WeightsNotFoundError, match='no model file at'): sr.load_model(tmp_path / 'missing.safetensors')
    with pytest.raises(FileNotFoundError): sr.load_model(str(tmp_path / 'missing.safetensors'))
    with pytest.raises(sr.WeightsNotFoundError): sr.load_model(tmp_path)
    with pytest.raises(sr.ArgumentTypeError, match='path: expected a file path'): sr.load_model(3)
    model = siamese('resnet18')
    with pytest.raises(sr.ArgumentError, match='is a directory'): sr.export_model(model, tmp_path)
    with pytest.raises(sr.ArgumentError, match='the folder .* does not exist'):
        sr.export_model(model, tmp_path / 'no' / 'm.safetensors')
    with pytest.raises(sr.ArgumentTypeError, match='path: expected a file path'): sr.export_model(model, None)
    good = sr.export_model(model, tmp_path / 'm.safetensors')
    cut = tmp_path / 'truncated.safetensors'
    cut.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(sr.WeightsError, match='cannot read .* as a safetensors file'): sr.load_model(cut)
    # an existing file is replaced whole, and nothing else is left in the folder
    sr.export_model(siamese('resnet18', seed=3), good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m.safetensors', 'truncated.safetensors']
    assert not torch.equal(file_contents(good)[1]['head.8.weight'], model.state_dict()['head.8.weight'])
