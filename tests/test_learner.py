"An ordinary fastai Learner trains our SiameseModel exactly as it trains the tutorial's model."
import fastai.callback.all  # noqa: F401  (patches Learner: no_bar, lr_find, fit_one_cycle, summary)
import pytest
import torch
from fastai.data.core import TfmdLists
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed

import siamese_rs as sr
from conftest import make_pair


def loss_func(out, targ): return CrossEntropyLossFlat()(out, targ.long())


def pairs(n, seed):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)
    y = (torch.rand(n, generator=g) > 0.5).long()
    x2[y == 1] = x1[y == 1] + 0.1 * x2[y == 1]  # "same" pairs look alike: there is something to learn
    return [(x1[i], x2[i], y[i]) for i in range(n)]


def dls(seed=0):
    set_seed(seed, reproducible=True)
    tl = TfmdLists(pairs(48, 1) + pairs(16, 2), [], splits=[list(range(48)), list(range(48, 64))])
    return tl.dataloaders(bs=16)


def learner(model, **kw):
    return Learner(dls(), model, loss_func=loss_func, splitter=sr.siamese_splitter, metrics=accuracy, **kw)


def test_freeze_trains_encoder_batchnorm_only():
    ours, _ = make_pair('resnet18')
    learn = learner(ours)
    learn.freeze()
    assert not ours.encoder[0].weight.requires_grad
    assert ours.encoder[1].weight.requires_grad and ours.encoder[1].bias.requires_grad
    assert all(p.requires_grad for p in ours.head.parameters())
    conv, bn = ours.encoder[0].weight.clone(), ours.encoder[1].weight.clone()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
    assert torch.equal(conv, ours.encoder[0].weight)
    assert not torch.equal(bn, ours.encoder[1].weight)


def test_two_seeded_epochs_end_with_fastais_weights():
    ours, ref = make_pair('resnet18', ps=0.5)
    finals = []
    for model in (ours, ref):
        learn = learner(model)
        learn.freeze()
        set_seed(42, reproducible=True)
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, 1e-3)
            learn.unfreeze()
            learn.fit_one_cycle(1, slice(1e-5, 1e-3))
        finals.append(({k: v.clone() for k, v in model.state_dict().items()}, learn.recorder.values))
    (a, va), (b, vb) = finals
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=1e-4, rtol=1e-4, msg=k)
    assert sum(map(list, va), []) == pytest.approx(sum(map(list, vb), []), abs=1e-4)


def test_learner_workflow(tmp_path):
    ours, _ = make_pair('resnet18')
    learn = learner(ours, path=tmp_path)
    with learn.no_bar(), learn.no_logging():
        learn.freeze()
        lr = learn.lr_find(show_plot=False)
        assert lr.valley > 0
        learn.fit_one_cycle(1, 1e-3)
        learn.unfreeze()
        learn.fit_one_cycle(1, slice(1e-6, 1e-4))
        preds, targs = learn.get_preds()
    assert preds.shape == (16, 2) and targs.shape == (16,)
    assert len(learn.opt.param_groups) == 2
    assert [g['lr'] for g in learn.opt.param_groups][0] < [g['lr'] for g in learn.opt.param_groups][1]
    learn.save('stage')
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with torch.no_grad(): ours.head[-1].weight.zero_()
    learn.load('stage')
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())
    learn.export(tmp_path / 'export.pkl')
    back = load_learner(tmp_path / 'export.pkl')
    x1, x2, _ = next(iter(learn.dls.valid))
    ours.eval(), back.model.eval()
    with torch.no_grad(): torch.testing.assert_close(back.model(x1, x2), ours(x1, x2), atol=0, rtol=0)
    with learn.no_bar(): assert 'Conv2d' in str(learn.summary())


def test_weight_decay_and_train_bn_rules_match_fastai():
    ours, ref = make_pair('resnet18')
    flags = []
    for model in (ours, ref):
        learn = learner(model, wd_bn_bias=False)
        learn.create_opt()
        learn.freeze()
        flags.append([(state.get('do_wd', True), state.get('force_train', False), p.requires_grad)
                      for p, _, state, _ in learn.opt.all_params(with_grad=False)])
    assert flags[0] == flags[1]
    assert sum(not wd for wd, _, _ in flags[0]) > 40  # BatchNorm weights and biases, every bias
