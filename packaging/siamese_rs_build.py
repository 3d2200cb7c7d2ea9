"""The build backend: maturin's, plus the two things a libtorch extension needs from it.

1. The wheel requires exactly the torch release it was compiled against (`torch==2.15.0`), as
   torchvision's do: the C++ shim is compiled against that release's headers and refuses any other
   at import. `pyproject.toml` keeps a range (so that `maturin develop` never swaps the torch of a
   development venv); the pin is written into the metadata here, from the torch the build sees
   (the build environment's with build isolation, the target environment's without).
2. maturin's backend runs a `maturin` command from `PATH`; a venv that is not activated has its
   `maturin` in the interpreter's scripts folder, which is put on `PATH` here.

`python packaging/siamese_rs_build.py pin WHEEL... --torch 2.15.0` applies the pin to built wheels
(`make wheels` builds with maturin directly)."""
import base64
import hashlib
import os
import re
import shutil
import sys
import sysconfig
import zipfile

import maturin

# The requirement in pyproject.toml that the pin replaces.
_TORCH_REQ = re.compile(r'^Requires-Dist: torch\b[^;\n]*$', re.M)


def _maturin_on_path():
    if shutil.which('maturin'): return
    for folder in (sysconfig.get_path('scripts'), os.path.dirname(sys.executable)):
        if folder and os.path.exists(os.path.join(folder, 'maturin')):
            os.environ['PATH'] = folder + os.pathsep + os.environ.get('PATH', '')
            return


def built_torch():
    "The release (no local part) of the torch this build compiles against"
    from importlib.metadata import PackageNotFoundError, version
    try: return version('torch').split('+')[0]
    except PackageNotFoundError:
        raise RuntimeError('siamese-rs builds against an installed torch: install torch (see the README) or build '
                           'with build isolation, which installs the torch named in pyproject.toml') from None


def pin_metadata(text, torch_version):
    "METADATA text with its torch requirement replaced by `torch==torch_version`"
    pinned, n = _TORCH_REQ.subn(f'Requires-Dist: torch=={torch_version}', text)
    if n != 1: raise RuntimeError(f'siamese-rs: expected one torch requirement in the metadata, found {n}')
    return pinned


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return f'{name},sha256={digest},{len(data)}'


def pin_wheel(path, torch_version):
    "Rewrite the wheel at `path` so that it requires `torch==torch_version` (METADATA and its RECORD line)"
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        files = {i.filename: z.read(i.filename) for i in infos}
    meta = next(n for n in files if n.endswith('.dist-info/METADATA'))
    record = next(n for n in files if n.endswith('.dist-info/RECORD'))
    files[meta] = pin_metadata(files[meta].decode(), torch_version).encode()
    lines = [(_record_line(meta, files[meta]) if line.split(',')[0] == meta else line)
             for line in files[record].decode().splitlines()]
    files[record] = ('\n'.join(lines) + '\n').encode()
    tmp = path + '.tmp'
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as z:
        for i in infos: z.writestr(i, files[i.filename])
    os.replace(tmp, path)


def _pin_dist_info(metadata_directory, dist_info):
    path = os.path.join(metadata_directory, dist_info, 'METADATA')
    with open(path) as f: text = f.read()
    with open(path, 'w') as f: f.write(pin_metadata(text, built_torch()))
    return dist_info


def get_requires_for_build_wheel(config_settings=None):
    _maturin_on_path()
    return maturin.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_sdist(config_settings=None):
    _maturin_on_path()
    return maturin.get_requires_for_build_sdist(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _maturin_on_path()
    return _pin_dist_info(metadata_directory, maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings))


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _maturin_on_path()
    torch_version = built_torch()  # before the minutes of compiling, a missing torch fails here
    name = maturin.build_wheel(wheel_directory, config_settings, metadata_directory)
    pin_wheel(os.path.join(wheel_directory, name), torch_version)
    return name


def build_sdist(sdist_directory, config_settings=None):
    _maturin_on_path()
    return maturin.build_sdist(sdist_directory, config_settings)


def _main(argv):
    import argparse
    p = argparse.ArgumentParser(prog='siamese_rs_build.py')
    sub = p.add_subparsers(dest='cmd', required=True)
    pin = sub.add_parser('pin', help='make built wheels require exactly the torch they were compiled against')
    pin.add_argument('wheels', nargs='+')
    pin.add_argument('--torch', required=True, help='the torch release, e.g. 2.15.0')
    args = p.parse_args(argv)
    for w in args.wheels: pin_wheel(w, args.torch.split('+')[0])


if __name__ == '__main__': _main(sys.argv[1:])
