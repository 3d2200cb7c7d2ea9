"""Check a built wheel's native module against what its manylinux tag and its torch pin promise.

`auditwheel show` checks the versions of the glibc/libstdc++ symbols the module needs. This adds what
it does not look at, each a way to ship a wheel that installs and then fails to load elsewhere:
- an undefined symbol with no version that glibc defines (linked against a glibc without it: it
  would bind, or not, to whatever the user's glibc has);
- a libstdc++.so dependency (ours is linked statically; see the README);
- libraries other than libtorch's and glibc's, and a run path other than the installed torch's;
- a module that is not stripped;
- a torch requirement other than `torch==<the release the module was built against>`.

Usage: check_wheel.py --torch 2.15.0 WHEEL... (one line per wheel; exits 1 on the first failure)."""
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GLIBC_LIBS = ('libc.so.6', 'libm.so.6', 'libpthread.so.0', 'libdl.so.2', 'librt.so.1', 'libutil.so.1')
ALLOWED_NEEDED = {'libgcc_s.so.1', 'ld-linux-x86-64.so.2', *GLIBC_LIBS}
TORCH_NEEDED = re.compile(r'^lib(torch\w*|c10\w*)\.so$')
RUNPATH = '$ORIGIN/../torch/lib'
MAX_GLIBC = (2, 28)


def run(*cmd): return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def glibc_exports():
    "Names the host glibc's libraries define"
    names = set()
    for lib in GLIBC_LIBS:
        path = Path('/lib/x86_64-linux-gnu') / lib
        if not path.exists(): continue
        for line in run('objdump', '-T', str(path)).splitlines():
            parts = line.split()
            if len(parts) >= 7 and parts[3] != '*UND*': names.add(parts[-1])
    return names


def check_so(so):
    problems = []
    dyn = run('readelf', '-d', '-W', str(so))
    needed = re.findall(r'\(NEEDED\).*\[(.+)\]', dyn)
    for lib in needed:
        if lib not in ALLOWED_NEEDED and not TORCH_NEEDED.match(lib): problems.append(f'needs {lib}')
    paths = re.findall(r'\((?:RPATH|RUNPATH)\).*\[(.+)\]', dyn)
    if paths != [RUNPATH]: problems.append(f'run path {paths}, expected [{RUNPATH!r}]')
    if '.symtab' in run('readelf', '-S', '-W', str(so)): problems.append('not stripped (has .symtab)')
    exports = glibc_exports()
    for line in run('objdump', '-T', str(so)).splitlines():
        parts = line.split()
        if '*UND*' not in parts: continue
        name, version = parts[-1], parts[-2]
        m = re.match(r'\(?GLIBC_(\d+)\.(\d+)', version)
        if m and tuple(map(int, m.groups())) > MAX_GLIBC: problems.append(f'{name} needs {version}')
        if re.match(r'\(?(GLIBCXX|CXXABI)_', version): problems.append(f'{name} needs {version} (libstdc++.so)')
        if '*UND*' == version and name in exports: problems.append(f'{name} is undefined without a version')
    return problems


def auditwheel_tag(path):
    """The platform tag auditwheel finds the wheel consistent with once libtorch's libraries are excluded
    (what `auditwheel repair --exclude` decides; `auditwheel show` has no `--exclude` and so reports
    `linux_x86_64` for any wheel that links another wheel's libraries, as torchvision's do)"""
    from auditwheel.wheel_abi import analyze_wheel_abi
    from auditwheel.wheeltools import get_wheel_architecture, get_wheel_libc
    name = Path(path).name
    try: libc = get_wheel_libc(name)
    except Exception: libc = None  # a linux_x86_64 wheel names none
    info = analyze_wheel_abi(libc, get_wheel_architecture(name), Path(path),
                             frozenset(['libtorch*.so', 'libc10*.so']), disable_isa_ext_check=False, allow_graft=False)
    return info.overall_policy.name


def check_wheel(path, torch_version):
    with zipfile.ZipFile(path) as z, tempfile.TemporaryDirectory() as tmp:
        sos = [n for n in z.namelist() if n.endswith('.so')]
        if len(sos) != 1: return [f'expected one native module, found {sos}']
        meta = next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))
        torch_reqs = re.findall(r'^Requires-Dist: (torch\b.*)$', z.read(meta).decode(), re.M)
        so = Path(z.extract(sos[0], tmp))
        problems = check_so(so)
        if torch_version.encode() not in so.read_bytes(): problems.append(f'the module does not name torch {torch_version}')
    if torch_reqs != [f'torch=={torch_version}']: problems.append(f'requires {torch_reqs}, expected torch=={torch_version}')
    tag, plat = auditwheel_tag(path), Path(path).name.rsplit('-', 1)[1].removesuffix('.whl')
    if tag != plat: problems.append(f'auditwheel finds it consistent with {tag}, not with its tag {plat}')
    return problems


def main(argv):
    if len(argv) < 3 or argv[0] != '--torch': sys.exit(__doc__)
    torch_version, paths = argv[1], argv[2:]
    for p in paths:
        problems = check_wheel(p, torch_version)
        if problems:
            print(f'{Path(p).name}: FAILED\n  ' + '\n  '.join(problems))
            return 1
        print(f'{Path(p).name}: ok (auditwheel: consistent with its tag, libtorch excluded; glibc <= '
              f'{MAX_GLIBC[0]}.{MAX_GLIBC[1]}, libstdc++ static, run path {RUNPATH}, stripped, torch=={torch_version})')
    return 0


if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
