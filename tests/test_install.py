"""`meson install` puts the library (shared and static), tessera.h, tessera.pc and the command
where a program built with pkg-config finds them: examples/read_region.c is compiled against
the installed copy, linked both ways, and its region equals the build tree's read; so is
examples/batches.c, whose stream of batches (worker threads included, so a static link must
bring the thread library along) must sum to the same bytes as single reads of its patches."""

import os
import subprocess

import numpy as np
import pytest

import tessera_ctypes as T
import wsi_fixtures as F

BUILD = os.environ.get("TESSERA_BUILD_DIR", os.path.join(F.REPO, "build"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("install"))
    subprocess.run(["meson", "install", "-C", BUILD, "--destdir", dest, "--quiet"], check=True,
                   capture_output=True)
    pcs = [os.path.join(r, f) for r, _, fs in os.walk(dest) for f in fs if f == "tessera.pc"]
    assert len(pcs) == 1, pcs
    return dest, os.path.dirname(pcs[0])


def pkg_config(dest, pcdir, *args):
    env = dict(os.environ, PKG_CONFIG_PATH=pcdir, PKG_CONFIG_SYSROOT_DIR=dest)
    r = subprocess.run(["pkg-config", *args, "tessera"], capture_output=True, text=True,
                       env=env, check=True)
    return r.stdout.split()


def test_installed_files(installed):
    dest, _ = installed
    names = {f for _, _, fs in os.walk(dest) for f in fs}
    # the command's `view` runs the Python package installed beside it, page included
    for want in ("tessera.h", "tessera.pc", "libtessera.a", "tessera", "viewer.js", "index.html"):
        assert want in names, (want, sorted(names))
    assert any(n.startswith("libtessera.so") for n in names), sorted(names)


def build_example(installed, tmp_path, link, name):
    """Compiles examples/NAME.c against the install; returns the program and its environment."""
    dest, pcdir = installed
    flags = pkg_config(dest, pcdir, "--cflags", "--libs",
                       *(["--static"] if link == "static" else []))
    libdir = [f[2:] for f in flags if f.startswith("-L")][0]
    if link == "static":   # the archive itself in place of -ltessera, then its dependencies
        flags = [os.path.join(libdir, "libtessera.a") if f == "-ltessera" else f for f in flags]
    exe = str(tmp_path / name)
    src = os.path.join(F.REPO, "examples", name + ".c")
    subprocess.run(["cc", "-Wall", "-Werror", src, "-o", exe] + flags, check=True)
    return exe, dict(os.environ, LD_LIBRARY_PATH=libdir)


@pytest.mark.parametrize("link", ["shared", "static"])
def test_example_builds_against_the_install_and_reads(installed, lib, tmp_path, link):
    exe, env = build_example(installed, tmp_path, link, "read_region")
    path = os.path.join(F.TESTDATA, "generic-jpeg-ycbcr-128tiles.tiff")
    r = subprocess.run([exe, path, "100", "50", "0", "300", "200"], capture_output=True,
                       env=env, check=True)
    header = b"P6\n300 200\n255\n"
    assert r.stdout.startswith(header), r.stdout[:20]
    got = np.frombuffer(r.stdout[len(header):], np.uint8).reshape(200, 300, 3)
    with T.open_slide(path) as s:
        want = s.read_region(100, 50, 0, 300, 200)
    assert np.array_equal(got, want)
    if link == "static":
        ldd = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
        assert "libtessera" not in ldd, ldd


@pytest.mark.parametrize("link", ["shared", "static"])
def test_batch_example_streams_what_single_reads_give(installed, lib, tmp_path, link):
    exe, env = build_example(installed, tmp_path, link, "batches")
    path = os.path.join(F.TESTDATA, "generic-jpeg-ycbcr-128tiles.tiff")
    r = subprocess.run([exe, path, "0", "100", "60", "4", "2"], capture_output=True, text=True,
                       env=env, check=True)
    lines = r.stdout.splitlines()
    with T.open_slide(path) as s:
        info = s.level_info(0)
        across, down = info.width // 100, info.height // 60
        want = sum(int(s.read_region(x * 100, y * 60, 0, 100, 60).sum(dtype=np.uint64))
                   for y in range(down) for x in range(across))
    n = across * down
    assert lines[-1] == "%d patches, byte sum %d" % (n, want), lines[-1]
    counts = [int(l.split(": ")[1].split()[0]) for l in lines[:-1]]
    assert counts == [4] * (n // 4) + ([n % 4] if n % 4 else []), lines


HOOK_SYMBOLS = ("tsr_hook_", "tsr_shared_cache_verify", "tsr_shared_cache_scribble",
                "tsr_shared_cache_hot_")


def hook_symbols(path):
    out = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
    return [l.split()[-1] for l in out.splitlines() if any(h in l for h in HOOK_SYMBOLS)]


def test_a_default_build_has_no_test_hooks(tmp_path):
    """A library configured with no options (what `meson setup` and `pip install .` build) has
    none of the shared cache's test hooks: it never reads TESSERA_TEST_CACHE_STALL (so never
    stalls on it), and has no routine that checks or scribbles over a segment. The build
    under test, made with -Dtest_hooks=true as dev.sh makes it, shows that the check sees
    them when they are there."""
    build = tmp_path / "default"
    subprocess.run(["meson", "setup", str(build), F.REPO], check=True, capture_output=True)
    subprocess.run(["meson", "compile", "-C", str(build), "src/tessera:shared_library"],
                   check=True, capture_output=True)
    path = str(build / "src" / "libtessera.so")
    assert not T.has_test_hooks(path), "a default build reads TESSERA_TEST_CACHE_STALL"
    assert hook_symbols(path) == []
    if T.has_test_hooks():
        assert "tsr_hook_stall" in hook_symbols(T.lib_path())
