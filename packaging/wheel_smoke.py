"""What a user of the installed wheel does first, run by `make test-wheel` in a brand-new venv, outside
the source tree: the core loads libtorch by itself, `import siamese_rs` stays light, the README's Usage
snippet trains one step on a few digits and predicts a pair, and a libtorch error is a Python exception.
Prints one line per check and `N passed, N failed`; exits 1 if any failed."""
import glob
import os
import subprocess
import sys
import sysconfig
import traceback

HEAVY = ('fastai', 'torchvision', 'sklearn', 'pandas', 'matplotlib')
SITE = sysconfig.get_paths()['platlib']
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def fresh(code):
    "stdout of `code` in a new interpreter of this venv"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


@check
def installed_from_the_wheel():
    where = fresh('import siamese_rs; print(siamese_rs.__file__)')
    assert where.startswith(SITE), f'siamese_rs imported from {where}, not from this venv ({SITE})'
    cores = glob.glob(os.path.join(SITE, 'siamese_rs', '_core.*.so'))
    assert len(cores) == 1, cores


@check
def core_loads_libtorch_without_torch_imported():
    core = glob.glob(os.path.join(SITE, 'siamese_rs', '_core.*.so'))[0]
    out = fresh(f'import ctypes, sys; ctypes.CDLL({core!r}); print("torch" in sys.modules)')
    assert out == 'False', out


@check
def import_is_light():
    loaded = fresh(f'import sys, siamese_rs; print(",".join(m for m in {HEAVY!r} if m in sys.modules))')
    assert loaded == '', f'import siamese_rs imported {loaded}'


@check
def usage_snippet_trains_and_predicts():
    # The README's Usage section on 60 of the bundled digits (32 px): one training step, one prediction.
    import torch
    from fastai.callback.core import Callback, CancelFitException
    from fastai.vision.all import CrossEntropyLossFlat, Learner, accuracy, get_image_files

    import siamese_rs as sr

    class StopAfterOneStep(Callback):
        def after_step(self): raise CancelFitException()

    files = get_image_files(sr.digits_path()).sorted()[::30]  # 60 files, every digit
    dls = sr.siamese_dataloaders(files, size=32, bs=8, stats=sr.model_meta[sr.resnet34]['stats'])
    encoder = sr.create_body(sr.resnet34, cut=sr.model_meta[sr.resnet34]['cut'], pretrained=False)
    head = sr.create_head(512 * 2, 2, ps=0.5)
    model = sr.SiameseModel(encoder, head)
    def loss_func(out, targ): return CrossEntropyLossFlat()(out, targ.long())
    learn = Learner(dls, model, loss_func=loss_func, splitter=sr.siamese_splitter, metrics=accuracy)
    learn.freeze()
    before = [p.detach().clone() for p in learn.model.head.parameters()]
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=[StopAfterOneStep()])
    moved = sum(not torch.equal(a, b) for a, b in zip(before, learn.model.head.parameters()))
    assert moved > 0, 'one training step changed no head parameter'
    p = sr.score_pairs(learn, files[:2], files[2:4])
    assert p.shape == (2,) and bool(((p >= 0) & (p <= 1)).all()), p
    label, prob = sr.predict_pair(learn, files[0], files[2])  # the Usage loss has no activation or decodes
    assert label in ('same', 'different') and 0.5 <= prob <= 1, (label, prob)
    same = prob if label == 'same' else 1 - prob
    assert abs(same - p[0].item()) < 1e-4, (label, prob, p)


@check
def libtorch_errors_are_python_exceptions():
    # A C++ exception thrown inside libtorch, caught by the core's C++ shim (its own static libstdc++)
    import torch

    import siamese_rs as sr
    from siamese_rs import _engine
    linear = [m for m in sr.create_head(64, 2).modules() if isinstance(m, torch.nn.Linear)][0]
    graph, tensors = _engine._plan(linear)
    bad = [tensors[0].double(), *tensors[1:]]
    try: graph.forward(bad, [torch.randn(3, linear.in_features)], False)
    except sr.TorchError as e: assert 'dtype' in str(e), e
    else: raise AssertionError('a float64 weight against a float32 input raised nothing')


def main():
    passed = 0
    for fn in CHECKS:
        try:
            fn()
            passed += 1
            print(f'PASSED {fn.__name__}')
        except Exception:
            print(f'FAILED {fn.__name__}\n{traceback.format_exc()}')
    print(f'{passed} passed, {len(CHECKS) - passed} failed')
    return 0 if passed == len(CHECKS) else 1


if __name__ == '__main__': sys.exit(main())
