"The build backend's torch pin (packaging/siamese_rs_build.py): what a built wheel requires"
import base64
import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def backend():
    spec = importlib.util.spec_from_file_location('siamese_rs_build', ROOT / 'packaging' / 'siamese_rs_build.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


META = ('Metadata-Version: 2.4\nName: siamese-rs\nVersion: 0.1.0\nRequires-Dist: torch>=2.13,<2.16\n'
        'Requires-Dist: torchvision>=0.28,<0.30\nRequires-Dist: fastai==2.8.12\nRequires-Dist: pytest ; extra == \'test\'\n')


def test_pin_replaces_the_torch_range_only(backend):
    out = backend.pin_metadata(META, '2.15.0')
    assert 'Requires-Dist: torch==2.15.0\n' in out and 'torch>=' not in out
    assert 'Requires-Dist: torchvision>=0.28,<0.30\n' in out  # torchvision is not torch
    assert out.replace('torch==2.15.0', 'torch>=2.13,<2.16') == META


def test_pin_refuses_metadata_without_exactly_one_torch_requirement(backend):
    with pytest.raises(RuntimeError, match='found 0'): backend.pin_metadata(META.replace('torch>', 'numpy>'), '2.15.0')
    with pytest.raises(RuntimeError, match='found 2'): backend.pin_metadata(META + 'Requires-Dist: torch\n', '2.15.0')


def test_pinned_wheel_keeps_a_valid_record(backend, tmp_path):
    whl = tmp_path / 'siamese_rs-0.1.0-cp311-cp311-linux_x86_64.whl'
    info = 'siamese_rs-0.1.0.dist-info'
    with zipfile.ZipFile(whl, 'w') as z:
        z.writestr('siamese_rs/__init__.py', 'x = 1\n')
        z.writestr(f'{info}/METADATA', META)
        z.writestr(f'{info}/RECORD', f'siamese_rs/__init__.py,sha256=abc,6\n{info}/METADATA,sha256=old,1\n{info}/RECORD,,\n')
    backend.pin_wheel(str(whl), '2.15.0')
    with zipfile.ZipFile(whl) as z:
        meta = z.read(f'{info}/METADATA')
        record = z.read(f'{info}/RECORD').decode().splitlines()
        assert z.read('siamese_rs/__init__.py') == b'x = 1\n'
    assert b'Requires-Dist: torch==2.15.0\n' in meta
    digest = base64.urlsafe_b64encode(hashlib.sha256(meta).digest()).rstrip(b'=').decode()
    assert record == ['siamese_rs/__init__.py,sha256=abc,6', f'{info}/METADATA,sha256={digest},{len(meta)}', f'{info}/RECORD,,']


def test_the_build_pins_the_torch_it_sees(backend):
    import torch
    assert backend.built_torch() == torch.__version__.split('+')[0]


def test_pyproject_builds_against_the_default_torch():
    "build isolation installs the torch the Makefile and README name as the default"
    text = (ROOT / 'pyproject.toml').read_text()
    default = next(line.split('?=')[1].strip() for line in (ROOT / 'Makefile').read_text().splitlines()
                   if line.startswith('TORCH ?='))
    assert f'"torch=={default}; python_version >= \'3.11\'"' in text.split('[project]')[0]


def test_the_cp310_wheel_builds_against_the_torch_of_isolated_cp310_builds():
    "torch 2.15 has no Python 3.10 release: `make wheels` and pyproject.toml fall back to the same torch"
    make = (ROOT / 'Makefile').read_text().splitlines()
    fallback = next(line.split(':=')[1].strip() for line in make if line.startswith('WHEEL_FALLBACK_TORCH_2.15.0 :='))
    assert f'"torch=={fallback}; python_version < \'3.11\'"' in (ROOT / 'pyproject.toml').read_text().split('[project]')[0]
    assert f'TORCHVISION_{fallback} :=' in '\n'.join(make)  # a torch the Makefile can make a venv for
