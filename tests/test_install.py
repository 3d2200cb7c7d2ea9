"What an installed siamese-rs does on import and load: a light import, and a core that finds libtorch itself."
import subprocess
import sys

HEAVY = ('fastai', 'torchvision', 'sklearn', 'pandas', 'matplotlib')


def run(code):
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_import_loads_torch_and_the_core_only():
    loaded = run(f'import sys, siamese_rs; print(",".join(m for m in {HEAVY!r} if m in sys.modules))')
    assert loaded == ''


def test_data_helpers_and_reference_keys_load_on_first_use():
    out = run('import sys, siamese_rs as sr, torchvision\n'
              'print(sr.model_meta[torchvision.models.resnet34]["cut"], sr.digits_path.__module__, "fastai" in sys.modules)')
    assert out == '-2 siamese_rs.data True'


def test_the_native_module_finds_libtorch_without_torch_imported_first():
    "An RPATH relative to the installed torch, as torchvision's libraries have"
    out = run('import importlib.util, sys\n'
              'spec = importlib.util.find_spec("siamese_rs._core")\n'
              'print(spec.origin)')
    rpath = subprocess.run(['readelf', '-d', out], capture_output=True, text=True).stdout
    assert '$ORIGIN/../torch/lib' in rpath
