#!/usr/bin/env bash
# Runs openslide-python's own test suite against tessera.openslide, with only its imports
# changed (`openslide` -> `tessera.openslide`), out of tree: nothing of it is kept here.
#   bench/openslide_python_suite.sh CHECKOUT [BUILD]
# CHECKOUT: an openslide-python source tree (or a git dir: its HEAD is exported);
# BUILD: tessera's build folder (default build). Prints pytest's result per test.
set -euo pipefail
src=$1
build=$(cd "${2:-build}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -d "$src/tests" ]; then
  cp -r "$src/tests" "$work/tests"
else
  git --git-dir="$src" archive HEAD tests | tar -x -C "$work"
fi
sed -i -E 's/^(\s*)from openslide([ .])/\1from tessera.openslide\2/; s/^(\s*)import openslide$/\1import tessera.openslide as openslide/' \
  "$work"/tests/*.py
cd "$work/tests"
PYTHONPATH="$build/python" /usr/bin/python3 -m pytest -p no:cacheprovider -rA -q . "${@:3}"
