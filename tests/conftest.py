"""Shared fixtures of the Python tests.

Environment:
  TESSERA_LIB       the shared library (default build/src/libtessera.so)
  TESSERA_CLI       the `tessera` command (default build/cli/tessera)
  TESSERA_CLI_ASAN  optional: a `tessera` built with AddressSanitizer + UBSan; when set, the
                    damaged-file CLI cases run with it as well
  TESSERA_TESTDATA  the real slide files (default ../shared/testdata)
  TESSERA_FUZZ_OPEN_REPLAY_ASAN  the fuzz_open replay program built with AddressSanitizer +
                    UBSan (default build-asan/fuzz/fuzz_open_replay), for test_damaged_copies
  TESSERA_PYTHON    the folder holding the built Python package `tessera` (default
                    build/python); the package's tests import it from there

Nothing here skips: a missing library, command or reader makes the tests that need it fail.
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
PYTHON_PACKAGE_DIR = os.environ.get(
    "TESSERA_PYTHON", os.path.join(os.path.dirname(HERE), "build", "python"))
if PYTHON_PACKAGE_DIR not in sys.path:
    sys.path.insert(0, PYTHON_PACKAGE_DIR)

import tessera_ctypes  # noqa: E402
import wsi_fixtures  # noqa: E402

# Debian's openslide-python, imported in this process by test_python_openslide, loads
# libopenslide.so.0 by soname; once test_openslide_c has loaded tessera's copy by path, the
# loader would hand that one back under the same soname. Loading Debian's first keeps the
# reference reader real whatever order the tests run in (a path load still gets tessera's).
try:
    import openslide as _debian_openslide  # noqa: E402,F401
except ImportError:
    pass  # the tests that need it fail on their own

# The tests that stop a process inside the shared cache through its test hook need a library
# built with it (meson -Dtest_hooks=true, as dev.sh builds).
needs_test_hooks = pytest.mark.skipif(not tessera_ctypes.has_test_hooks(),
                                      reason="library built without -Dtest_hooks=true")


@pytest.fixture(scope="session")
def lib():
    """The loaded C library (loading fails the test when it is missing)."""
    return tessera_ctypes.load()


@pytest.fixture(scope="session")
def cli():
    path = wsi_fixtures.cli_path()
    assert os.path.isfile(path) and os.access(path, os.X_OK), "tessera command not found: %s" % path
    return path


@pytest.fixture(scope="session")
def slides(tmp_path_factory):
    """Writes the generated slide fixtures on demand (each once per session)."""
    return wsi_fixtures.SlideFactory(str(tmp_path_factory.mktemp("slides")))


def pytest_collection_modifyitems(session, config, items):
    """Runs the tests of one slide and level one after another, so each decoded reference
    level is reused while it is still in the small cache."""
    order = {}

    def key(item):
        cs = getattr(item, "callspec", None)
        case = cs.params.get("case") if cs is not None else None
        if case is None:
            return (0, 0)
        if case not in order:
            order[case] = len(order)
        return (1, order[case])

    # sort only within each module, keeping modules in their collected order
    by_module = {}
    for i, it in enumerate(items):
        by_module.setdefault(it.module.__name__ if it.module else "", []).append((i, it))
    result = []
    for mod, its in by_module.items():
        if mod.endswith("test_differential"):
            for _, it in its:
                key(it)
            its = sorted(its, key=lambda p: (key(p[1]), p[0]))
        result.extend(it for _, it in its)
    items[:] = result
