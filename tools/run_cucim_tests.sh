#!/usr/bin/env bash
# cuCIM's own CuImage unit tests, run against tessera as the yardstick of docs/cucim-compat.md.
#
#   tools/run_cucim_tests.sh CUCIM [pytest arguments ...]
#
# CUCIM: a checkout of rapidsai/cucim (a work tree, or a bare git directory such as a mirror).
# Nothing is fetched and nothing of cuCIM's lands in this repository: the five test files of
# python/cucim/tests/unit/clara/ with the fixtures and helpers under python/cucim/tests/ are
# copied into a temporary directory, beside a throw-away `cucim` package whose modules only
# re-export tessera's (cucim -> tessera, cucim.clara -> tessera.clara, cucim.clara.cache ->
# tessera.clara.cache). What Debian 12 lacks is bridged there, for this run only:
#   - imagecodecs (tifffile needs it to write JPEG and deflate tiles): a stand-in that encodes
#     JPEG through Pillow and deflate through zlib;
#   - pytest_lazy_fixtures (the tests' import): Debian's older pytest_lazyfixture under that name
#     (python3-pytest-lazy-fixture);
#   - numpy.asarray(..., copy=True) (NumPy 2; Debian has 1.24): a pytest plugin that accepts it.
# The tessera package comes from $TESSERA_PYTHON (default build/python: ./dev.sh build first).
# The test run's temporary directory is removed afterwards unless KEEP=1.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 CUCIM_CHECKOUT [pytest args...]" >&2; exit 2; }
src="$1"; shift
py="${PYTHON:-/usr/bin/python3}"
tessera_python="${TESSERA_PYTHON:-$here/build/python}"
[ -d "$tessera_python/tessera" ] || { echo "no tessera package in $tessera_python: run ./dev.sh build" >&2; exit 2; }

tmp="$(mktemp -d /tmp/tessera-cucim-tests.XXXXXX)"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
files="python/cucim/tests/__init__.py python/cucim/tests/conftest.py python/cucim/tests/fixtures
  python/cucim/tests/util python/cucim/tests/unit/__init__.py python/cucim/tests/unit/clara/__init__.py
  python/cucim/tests/unit/clara/test_tiff_read_region.py python/cucim/tests/unit/clara/test_batch_decoding.py
  python/cucim/tests/unit/clara/test_image_cache.py python/cucim/tests/unit/clara/test_load_image.py
  python/cucim/tests/unit/clara/test_load_image_metadata.py"
if [ -d "$src/python/cucim/tests" ]; then
  (cd "$src" && tar -cf - $files) | tar -xf - -C "$tmp"
elif git --git-dir="$src" rev-parse --verify -q HEAD >/dev/null; then
  echo "cuCIM tests from $src at $(git --git-dir="$src" rev-parse HEAD)" >&2
  git --git-dir="$src" archive HEAD $files | tar -xf - -C "$tmp"
else
  echo "$src is neither a cuCIM work tree nor a git directory" >&2; exit 2
fi

# The package under test: python/cucim becomes the import root, so that the tests' relative
# imports (from ...util.io import ...) resolve inside `cucim`, whose modules are tessera's.
root="$tmp/python"
mkdir -p "$root/cucim/clara/cache" "$tmp/bridge"
cat > "$root/cucim/__init__.py" <<'PY'
from tessera import *  # noqa: F401,F403
from tessera import CuImage  # noqa: F401
from . import clara  # noqa: F401
PY
cat > "$root/cucim/clara/__init__.py" <<'PY'
from tessera.clara import *  # noqa: F401,F403
from tessera.clara import CuImage, DLDataType, DLDataTypeCode  # noqa: F401
from . import cache  # noqa: F401
PY
cat > "$root/cucim/clara/cache/__init__.py" <<'PY'
from tessera.clara.cache import *  # noqa: F401,F403
PY

cat > "$tmp/bridge/imagecodecs.py" <<'PY'
"""Stand-in for imagecodecs, for tifffile's writer only: JPEG through Pillow, deflate through
zlib."""
import io
import zlib

import numpy
from PIL import Image

__version__ = "0-tessera-stand-in"
ZLIB = True


def zlib_encode(data, level=None, out=None):
    data = data.tobytes() if isinstance(data, numpy.ndarray) else bytes(data)
    return zlib.compress(data, 6 if level is None else level)


def zlib_decode(data, out=None):
    return zlib.decompress(data)


def jpeg_encode(data, level=None, colorspace=None, outcolorspace=None, subsampling=None,
                out=None, **unused):
    data = numpy.ascontiguousarray(data)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    sampling = {None: 0, (1, 1): 0, (2, 1): 1, (2, 2): 2}[
        tuple(subsampling) if subsampling is not None else None]
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, format="JPEG", quality=95 if level is None else level,
                               subsampling=sampling)
    return buf.getvalue()
PY
cat > "$tmp/bridge/pytest_lazy_fixtures.py" <<'PY'
"""The tests' pytest_lazy_fixtures.lf, from Debian's older pytest-lazy-fixture."""
from pytest_lazyfixture import lazy_fixture as lf  # noqa: F401
PY
cat > "$tmp/bridge/numpy_copy_bridge.py" <<'PY'
"""numpy.asarray(a, copy=True) as NumPy 2 takes it, on NumPy 1."""
import numpy

if not hasattr(numpy, "_tessera_asarray") and int(numpy.__version__.split(".")[0]) < 2:
    numpy._tessera_asarray = numpy.asarray

    def asarray(a, dtype=None, order=None, *, copy=None, **kwargs):
        r = numpy._tessera_asarray(a, dtype=dtype, order=order, **kwargs)
        return r.copy() if copy else r

    numpy.asarray = asarray
PY

cd "$root"
PYTHONPATH="$root:$tmp/bridge:$tessera_python${PYTHONPATH:+:$PYTHONPATH}" \
  "$py" -m pytest -p no:cacheprovider -p numpy_copy_bridge -rA "$@" \
  cucim/tests/unit/clara
