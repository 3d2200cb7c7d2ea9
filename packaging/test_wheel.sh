#!/usr/bin/env bash
# Install the built wheel as a user would and try it: test_wheel.sh PYTHON WHEEL_DIR VENV
# VENV is made anew; the dependencies are the package index's files, resolved by pip against the
# index and kept in a wheelhouse (~/.cache/siamese-rs/wheelhouse, ~3.5 GB: torch and CUDA) so that
# a later run downloads only what changed. The checks (wheel_smoke.py) run from an empty folder
# outside the source tree.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${1:?usage: test_wheel.sh PYTHON WHEEL_DIR VENV}; wheels=${2:?}; venv=${3:?}
tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
shopt -s nullglob
found=("$wheels"/siamese_rs-*-"$tag"-"$tag"-manylinux_2_28_x86_64.whl)
[[ ${#found[@]} -eq 1 ]] || { echo "test_wheel.sh: expected one $tag manylinux wheel in $wheels, found ${found[*]:-none}" >&2; exit 1; }
wheel=$(cd "$(dirname "${found[0]}")" && pwd)/$(basename "${found[0]}")
rm -rf "$venv"
"$python" -m venv "$venv"
unset VIRTUAL_ENV PYTHONPATH
start=$SECONDS
"$venv/bin/python" -m pip install -q --upgrade pip
wheelhouse=${SIAMESE_RS_CACHE:-$HOME/.cache/siamese-rs}/wheelhouse
mkdir -p "$wheelhouse"
rm -f "$wheelhouse"/siamese_rs-*  # pip download would keep an earlier build of the same version
"$venv/bin/python" -m pip download -q -d "$wheelhouse" "$wheel"
"$venv/bin/python" -m pip install -q --no-index --find-links "$wheelhouse" "$wheel"
rm -f "$wheelhouse"/siamese_rs-*
echo "installed $(basename "$wheel") and its dependencies in $((SECONDS - start)) s"
"$venv/bin/python" -m pip check
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/wheel_smoke.py" "$work/"
cd "$work"
"$venv/bin/python" -I wheel_smoke.py
