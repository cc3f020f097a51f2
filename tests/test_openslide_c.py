"""libtessera-openslide (openslide/): OpenSlide's C API over tessera, built as
libopenslide.so.0 (OpenSlide 3.4's ABI) and libopenslide.so.1 (4.0's).

The proof is Debian's own python3-openslide, which loads libopenslide.so.0 by name: the same
reading program (openslide_reader.py) runs in two processes, one over Debian's OpenSlide 3.4.1
and one with LD_LIBRARY_PATH pointing at tessera's library, on every file of
../shared/testdata and on pyramids written at test time by vips tiffsave and tifffile; every
region, associated image and property must come out the same, byte for byte, and so must the
level lists (NDPI's included: tessera offers the levels OpenSlide decodes at 1/2, 1/4 and 1/8
of a stored one). Levels that OpenSlide 3.4.1 itself misreads are compared with tessera's own
read instead (openslide_misreads).

The rest calls the libraries through ctypes: OpenSlide's error semantics (sticky, the handle
dead; NULL for what is not a slide), while tessera's own API keeps its per-call errors on the
same damaged file; the exported symbols of each ABI; the 4.0 cache and ICC calls; the install.
"""

import ctypes
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import tessera_ctypes as T
import wsi_fixtures as F

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("TESSERA_BUILD_DIR",
                       os.path.dirname(os.path.dirname(os.path.abspath(T.lib_path()))))
SO = {0: os.path.join(BUILD, "openslide", "so0", "libopenslide.so.0"),
      1: os.path.join(BUILD, "openslide", "so1", "libopenslide.so.1")}
DEBIAN_OPENSLIDE = "/usr/lib/x86_64-linux-gnu/libopenslide.so.0"
PYTHON = "/usr/bin/python3"  # Debian's, with python3-openslide

TESTDATA = sorted(s.name for s in F.SPECS.values() if s.kind == "testdata")
# Pyramids written at test time that OpenSlide 3.4.1 opens. SubIFD pyramids are left out: it
# sees only their first level, tessera all of them (so the level lists differ by design).
GENERATED = sorted(s.name for s in F.SPECS.values()
                   if s.kind != "testdata" and s.openslide and not s.subifd)
ALL = TESTDATA + GENERATED


@pytest.fixture(scope="module")
def reads(tmp_path_factory, slides):
    """What openslide-python reads from every file, over Debian's library and over tessera's."""
    paths = [slides.path(n) for n in ALL]
    out = tmp_path_factory.mktemp("openslide-reads")
    runs = {}
    for which, env in (("openslide", {}), ("tessera", {"LD_LIBRARY_PATH": os.path.dirname(SO[0])})):
        pickled = str(out / (which + ".pickle"))
        subprocess.run([PYTHON, os.path.join(HERE, "openslide_reader.py"), pickled] + paths,
                       env=dict(os.environ, **env), check=True, capture_output=True,
                       timeout=900)
        with open(pickled, "rb") as f:
            runs[which] = pickle.load(f)
    return {name: (runs["openslide"]["slides"][p], runs["tessera"]["slides"][p], p)
            for name, p in zip(ALL, paths)} | {"_versions": (runs["openslide"]["version"],
                                                              runs["tessera"]["version"])}


def test_the_two_runs_used_the_two_libraries(reads):
    real, ours = reads["_versions"]
    assert real == "3.4.1"
    assert ours.startswith("3.4.1+tessera-"), ours


def openslide_misreads(path, dims, tile):
    """OpenSlide 3.4.1 decodes all but 3-sample JPEG through libtiff's TIFFReadRGBATile, which
    with libtiff 4.5 misplaces the pixels of a level smaller than one tile (test_differential
    holds tessera to libvips there); so does it here, and such a level is compared with
    tessera's own read instead."""
    if dims[0] >= tile[0] and dims[1] >= tile[1]:
        return False
    with tifffile.TiffFile(path) as t:
        for page in t.pages:
            if (page.imagewidth, page.imagelength) == tuple(dims) and page.is_tiled:
                return not (page.compression == 7 and page.samplesperpixel == 3)
    return False


def through_openslide_python(rgba):
    """What openslide-python 1.2 makes of a region tessera read as straight RGBA: OpenSlide's
    premultiplied ARGB (rounded as libtiff does), then its un-premultiplication."""
    c = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:].astype(np.uint32)
    pre = np.where(a == 255, c, (c * a + 127) // 255)
    out = np.where(a == 255, pre, np.where(a == 0, 0, 255 * pre // np.maximum(a, 1)))
    return np.concatenate([out, a], axis=2).astype(np.uint8)


def fractional(real, level, x, y):
    """Whether a region's level origin falls between pixels: OpenSlide then resamples (cairo's
    bilinear filter through pixman), which tessera's library reproduces
    (test_fractional_regions_equal)."""
    ds = real["levels"][level][1]
    return any(v >= 0 and v / ds != int(v / ds) for v in (x, y))


@pytest.mark.parametrize("name", ALL)
def test_regions_equal_byte_for_byte(reads, name):
    real, ours, path = reads[name]
    assert "error" not in real, real
    assert "error" not in ours, ours
    ts = T.open_slide(path)
    compared = against_tessera = 0
    for key, want in real["regions"].items():
        dims, level, x, y, w, h = key
        got = ours["regions"][key]
        if fractional(real, level, x, y):
            continue
        tile = tuple(int(real["properties"]["openslide.level[%d].tile-%s" % (level, k)])
                     for k in ("width", "height"))
        what = "%s level %d (%d, %d) %dx%d" % (name, level, x, y, w, h)
        if openslide_misreads(path, dims, tile):
            if x < 0 or y < 0:
                continue
            rgba = ts.read_region(x, y, level, w, h, channels=4, fill=0)
            assert got == through_openslide_python(rgba).tobytes(), what
            against_tessera += 1
            continue
        if got != want:
            g = np.frombuffer(got, np.uint8).reshape(h, w, 4)
            o = np.frombuffer(want, np.uint8).reshape(h, w, 4)
            bad = np.argwhere((g != o).any(axis=2))
            pytest.fail("%s: %d pixels differ, first at %s: tessera %s, OpenSlide %s" % (
                what, len(bad), bad[0], g[tuple(bad[0])], o[tuple(bad[0])]))
        compared += 1
    ts.close()
    assert compared > 0, "no region of %s compared with OpenSlide" % name
    assert ours["levels"] == real["levels"]


def test_fractional_regions_equal(reads):
    """Regions whose origin falls between a level's pixels: OpenSlide paints each tile with
    pixman's bilinear filter and SATURATE, which pixman computes in floats whatever the CPU
    (its general path: SATURATE divides, so no SIMD path takes it); tessera's library does the
    same arithmetic, so the bytes are OpenSlide's. Levels OpenSlide misreads are left out.
    One test over every file: a single-level file has no such region, and is not a skip."""
    checked = {}
    for name in ALL:
        real, ours, path = reads[name]
        for key, want in real["regions"].items():
            dims, level, x, y, w, h = key
            tile = tuple(int(real["properties"]["openslide.level[%d].tile-%s" % (level, k)])
                         for k in ("width", "height"))
            if not fractional(real, level, x, y) or openslide_misreads(path, dims, tile):
                continue
            got = ours["regions"][key]
            if got != want:
                o = np.frombuffer(want, np.uint8).reshape(h, w, 4)
                g = np.frombuffer(got, np.uint8).reshape(h, w, 4)
                bad = np.argwhere(o != g)
                pytest.fail("%s level %d (%d, %d) %dx%d: %d bytes differ (at most by %d), first "
                            "at %s: tessera %s, OpenSlide %s" % (
                                name, level, x, y, w, h, len(bad),
                                np.abs(o.astype(int) - g).max(), bad[0][:2],
                                g[tuple(bad[0][:2])], o[tuple(bad[0][:2])]))
            checked[name] = checked.get(name, 0) + 1
    # the pyramids among the test data and the fixtures all have such levels
    assert "hamamatsu-ndpi-DAPI.ndpi" in checked and len(checked) >= 10, checked


@pytest.mark.parametrize("name", ALL)
def test_associated_images_equal(reads, name):
    real, ours, _ = reads[name]
    assert sorted(ours["associated"]) == sorted(real["associated"])
    for k, (size, pixels) in real["associated"].items():
        assert ours["associated"][k][0] == size, k
        assert ours["associated"][k][1] == pixels, "%s: associated image %s differs" % (name, k)


@pytest.mark.parametrize("name", ALL)
def test_properties_equal(reads, name):
    real, ours, _ = reads[name]
    differ = sorted(k for k in set(real["properties"]) | set(ours["properties"])
                    if real["properties"].get(k) != ours["properties"].get(k))
    assert not differ, ["%s: OpenSlide %r, tessera %r" % (
        k, real["properties"].get(k), ours["properties"].get(k)) for k in differ]
    assert ours["levels"] == real["levels"]


# --- through ctypes --------------------------------------------------------------------------

def load(abi):
    lib = ctypes.CDLL(SO[abi])
    P, I64, I32, S = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_char_p
    P64 = ctypes.POINTER(I64)
    sigs = {
        "openslide_open": (P, [S]),
        "openslide_close": (None, [P]),
        "openslide_get_error": (S, [P]),
        "openslide_detect_vendor": (S, [S]),
        "openslide_get_level_count": (I32, [P]),
        "openslide_get_level_dimensions": (None, [P, I32, P64, P64]),
        "openslide_get_level_downsample": (ctypes.c_double, [P, I32]),
        "openslide_get_best_level_for_downsample": (I32, [P, ctypes.c_double]),
        "openslide_read_region": (None, [P, ctypes.c_void_p, I64, I64, I32, I64, I64]),
        "openslide_get_property_names": (ctypes.POINTER(S), [P]),
        "openslide_get_property_value": (S, [P, S]),
        "openslide_get_associated_image_names": (ctypes.POINTER(S), [P]),
        "openslide_get_version": (S, []),
    }
    if abi == 1:
        sigs.update({
            "openslide_cache_create": (P, [ctypes.c_size_t]),
            "openslide_set_cache": (None, [P, P]),
            "openslide_cache_release": (None, [P]),
            "openslide_get_icc_profile_size": (I64, [P]),
            "openslide_read_icc_profile": (None, [P, ctypes.c_void_p]),
        })
    else:
        sigs.update({"openslide_can_open": (ctypes.c_bool, [S]),
                     "openslide_get_layer_count": (I32, [P])})
    for fn, (res, args) in sigs.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


def names(arr):
    out = []
    while arr[len(out)] is not None:
        out.append(arr[len(out)].decode())
    return out


def read(lib, osr, x, y, level, w, h):
    buf = np.full(w * h, 0x5A5A5A5A, np.uint32)
    lib.openslide_read_region(osr, buf.ctypes.data, x, y, level, w, h)
    return buf


def exported(path):
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return {line.split()[-1] for line in out if line.strip()}


def soname(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True,
                         check=True).stdout
    return re.search(r"Library soname: \[(.*)\]", out).group(1)


def test_abi_3_4_exports_what_debians_openslide_exports():
    assert soname(SO[0]) == "libopenslide.so.0"
    want = {s for s in exported(DEBIAN_OPENSLIDE) if s.startswith("openslide_")}
    assert exported(SO[0]) == want


def test_abi_4_0_exports_the_4_0_functions():
    """The functions of openslide/openslide.h, which declares OpenSlide 4.0's API."""
    assert soname(SO[1]) == "libopenslide.so.1"
    with open(os.path.join(F.REPO, "openslide", "openslide.h")) as f:
        declared = set(re.findall(r"\b(openslide_\w+)\(", f.read()))
    assert exported(SO[1]) == declared
    assert "openslide_cache_create" in declared and "openslide_can_open" not in declared


@pytest.mark.parametrize("abi", [0, 1])
def test_version(abi):
    v = load(abi).openslide_get_version().decode()
    assert v == ("3.4.1" if abi == 0 else "4.0.0") + "+tessera-" + T.version()


def debian_refuses(path):
    """Whether Debian's OpenSlide 3.4.1 claims no format for the file (openslide_open NULL,
    which openslide-python raises as OpenSlideUnsupportedFormatError)."""
    out = subprocess.run([PYTHON, "-c", "import openslide, sys\n"
                          "try:\n openslide.OpenSlide(sys.argv[1]); print('opened')\n"
                          "except openslide.OpenSlideUnsupportedFormatError: print('refused')\n"
                          "except openslide.OpenSlideError as e: print('error', e)", path],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out == "refused"


@pytest.mark.parametrize("abi", [0, 1])
def test_not_a_slide_and_a_malformed_tiff_are_null(abi, slides, tmp_path):
    """OpenSlide parses a TIFF's directories before any format may claim it (3.4 and 4.0
    alike), so a TIFF whose structure is broken is claimed by none: NULL, as for a text file.
    (A well-formed TIFF that fails to open is a handle in error state: next test.)"""
    lib = load(abi)
    text = tmp_path / "notes.txt"
    text.write_bytes(b"not a slide at all\n" * 10)
    assert lib.openslide_open(str(text).encode()) is None
    assert lib.openslide_open(str(tmp_path / "missing.tif").encode()) is None
    assert lib.openslide_detect_vendor(str(text).encode()) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # in a child process: an open that blocks on the FIFO fails the test instead of hanging it
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); lib.openslide_open.restype = "
            "ctypes.c_void_p; print(lib.openslide_open(sys.argv[2].encode()))")
    out = subprocess.run([sys.executable, "-c", code, SO[abi], str(fifo)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "None"
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\xff" * 60)  # its first directory outside the file
    truncated = tmp_path / "truncated.tif"
    with open(slides.path("aperio-jpeg-CMU-1-Small-Region.svs"), "rb") as f:
        truncated.write_bytes(f.read(30000))  # the header, not the directories
    for path in (str(broken), str(truncated)):
        assert debian_refuses(path), path
        assert lib.openslide_open(path.encode()) is None, path
        assert lib.openslide_detect_vendor(path.encode()) is None, path
        if abi == 0:
            assert not lib.openslide_can_open(path.encode())


@pytest.mark.parametrize("abi", [0, 1])
def test_a_compression_tessera_cannot_decode_fails_at_open(abi, slides, tmp_path):
    """OpenSlide refuses such a slide at open (tessera's own API opens it and fails its
    reads): the handle is in error state, as Debian's OpenSlide's is."""
    path = str(tmp_path / "unknown-codec.tif")
    with open(slides.path("deflate-nopred-pyr"), "rb") as f, open(path, "wb") as g:
        g.write(f.read())
    F._relabel_compression(path, 52479)
    real = subprocess.run([PYTHON, "-c", "import openslide, sys\n"
                           "try:\n openslide.OpenSlide(sys.argv[1])\n"
                           "except openslide.OpenSlideError as e:\n print('error', e)",
                           path], capture_output=True, text=True, check=True).stdout
    assert real.startswith("error"), real
    lib = load(abi)
    osr = lib.openslide_open(path.encode())
    assert osr is not None
    assert b"compression 52479" in lib.openslide_get_error(osr)
    lib.openslide_close(osr)
    T.open_slide(path).close()


@pytest.mark.parametrize("abi", [0, 1])
def test_an_error_is_sticky_and_the_handle_dead(abi):
    lib = load(abi)
    path = F.SPECS["aperio-jpeg-CMU-1-Small-Region.svs"]
    osr = lib.openslide_open(os.path.join(F.TESTDATA, path.source).encode())
    assert lib.openslide_get_error(osr) is None
    assert lib.openslide_get_level_count(osr) == 1
    assert (read(lib, osr, 0, 0, 0, 8, 8) >> 24 == 255).all()
    lib.openslide_read_region(osr, None, 0, 0, 0, -1, 5)  # OpenSlide: a negative size kills
    msg = lib.openslide_get_error(osr)
    assert msg and b"negative width" in msg
    lib.openslide_read_region(osr, None, 0, 0, 0, 5, -1)
    assert lib.openslide_get_error(osr) == msg, "the first error is kept"
    assert lib.openslide_get_level_count(osr) == -1
    w, h = ctypes.c_int64(), ctypes.c_int64()
    lib.openslide_get_level_dimensions(osr, 0, ctypes.byref(w), ctypes.byref(h))
    assert (w.value, h.value) == (-1, -1)
    assert lib.openslide_get_level_downsample(osr, 0) == -1.0
    assert lib.openslide_get_property_value(osr, b"openslide.vendor") is None
    assert names(lib.openslide_get_property_names(osr)) == []
    assert names(lib.openslide_get_associated_image_names(osr)) == []
    assert (read(lib, osr, 0, 0, 0, 8, 8) == 0).all(), "a dead handle's reads are cleared"
    lib.openslide_close(osr)


def damaged_copy(slides, tmp_path):
    """A deflate pyramid with one tile of level 0 overwritten by bytes inflate refuses."""
    src = slides.path("deflate-nopred-pyr")
    with tifffile.TiffFile(src) as t:
        page = t.pages[0]
        off, count = page.dataoffsets[0], page.databytecounts[0]
        tw = page.tilewidth
    data = bytearray(open(src, "rb").read())
    data[off:off + count] = b"\xff" * count
    out = tmp_path / "damaged.tif"
    out.write_bytes(bytes(data))
    return str(out), tw


@pytest.mark.parametrize("abi", [0, 1])
def test_damaged_tile_kills_the_handle_but_not_tesseras_own_slide(abi, slides, tmp_path):
    path, tw = damaged_copy(slides, tmp_path)
    lib = load(abi)
    osr = lib.openslide_open(path.encode())
    assert lib.openslide_get_error(osr) is None
    good = read(lib, osr, tw, 0, 0, 16, 16)  # tile 1: fine
    assert (good >> 24 == 255).all()
    bad = read(lib, osr, 0, 0, 0, 16, 16)  # tile 0: damaged
    assert (bad == 0).all(), "no partial result"
    msg = lib.openslide_get_error(osr)
    assert msg and b"tile 0" in msg, msg
    assert (read(lib, osr, tw, 0, 0, 16, 16) == 0).all(), "the handle is dead"
    lib.openslide_close(osr)
    # tessera's own API: the damaged tile fails its read only
    ts = T.open_slide(path)
    with pytest.raises(T.TesseraError):
        ts.read_region(0, 0, 0, 16, 16)
    ok = ts.read_region(tw, 0, 0, 16, 16, channels=4, fill=0)
    assert (ok[..., 3] == 255).all()
    ts.close()


@pytest.mark.parametrize("abi", [0, 1])
def test_detect_vendor_and_best_level(abi, reads):
    lib = load(abi)
    for name in TESTDATA:
        real, _, path = reads[name]
        vendor = lib.openslide_detect_vendor(path.encode()).decode()
        assert vendor == real["properties"]["openslide.vendor"]
        osr = lib.openslide_open(path.encode())
        ds = [d for _, d in real["levels"]]
        for want in (0.5, 1, 1.5, 2, 3.99, 4, 5, 17, 100, 1000):
            # OpenSlide's rule: the last level whose downsample is at most `want`
            best = max([i for i, d in enumerate(ds) if d <= want] or [0])
            got = lib.openslide_get_best_level_for_downsample(osr, want)
            assert got == min(best, lib.openslide_get_level_count(osr) - 1), (name, want)
        lib.openslide_close(osr)


def test_abi_4_cache_calls_keep_reads_equal(reads):
    lib = load(1)
    real, _, path = reads["aperio-jpeg-CMU-1-Small-Region.svs"]
    osr = lib.openslide_open(path.encode())
    before = read(lib, osr, 100, 200, 0, 300, 300)
    for capacity in (0, 1 << 20, 64 << 20):
        cache = lib.openslide_cache_create(capacity)
        assert cache
        lib.openslide_set_cache(osr, cache)
        lib.openslide_cache_release(cache)  # the slide keeps using it
        for _ in range(2):
            assert (read(lib, osr, 100, 200, 0, 300, 300) == before).all()
    assert lib.openslide_get_error(osr) is None
    lib.openslide_close(osr)


def test_abi_4_icc_profile(slides, tmp_path):
    """The profile's bytes as the file holds them, and openslide.icc-size; none: 0."""
    src = slides.source("rgb1k")
    out = str(tmp_path / "icc.tif")
    F.run(["vips", "tiffsave", src, out, "--tile", "--pyramid", "--compression", "deflate",
           "--profile", "sRGB"])
    with tifffile.TiffFile(out) as t:
        want = bytes(t.pages[0].tags["InterColorProfile"].value)
    lib = load(1)
    osr = lib.openslide_open(out.encode())
    assert lib.openslide_get_icc_profile_size(osr) == len(want) > 0
    buf = ctypes.create_string_buffer(len(want))
    lib.openslide_read_icc_profile(osr, buf)
    assert buf.raw == want
    assert lib.openslide_get_property_value(osr, b"openslide.icc-size") == str(len(want)).encode()
    lib.openslide_close(osr)
    plain = slides.path("deflate-nopred-pyr")
    osr = lib.openslide_open(plain.encode())
    assert lib.openslide_get_icc_profile_size(osr) == 0
    assert lib.openslide_get_property_value(osr, b"openslide.icc-size") is None
    lib.openslide_close(osr)


def test_abi_4_associated_properties(reads):
    lib = load(1)
    real, _, path = reads["aperio-jpeg-CMU-1-Small-Region.svs"]
    osr = lib.openslide_open(path.encode())
    for k, (size, _) in real["associated"].items():
        for i, dim in enumerate(("width", "height")):
            v = lib.openslide_get_property_value(osr, ("openslide.associated.%s.%s" % (k, dim)).encode())
            assert v == str(size[i]).encode()
    lib.openslide_close(osr)


def test_installed_with_pkg_config(tmp_path):
    """meson install puts both libraries, the header and tessera-openslide.pc in place; a program
    built with pkg-config against the install reads a region."""
    dest = str(tmp_path / "root")
    subprocess.run(["meson", "install", "-C", BUILD, "--destdir", dest, "--quiet"], check=True,
                   capture_output=True)
    files = {os.path.join(r, f)[len(dest):] for r, _, fs in os.walk(dest) for f in fs}
    libs = [f for f in files if "/tessera-openslide/" in f and "libopenslide.so" in f]
    assert any(f.endswith("/tessera-openslide/3.4/libopenslide.so.0.4.1") for f in libs), libs
    assert any(f.endswith("/tessera-openslide/libopenslide.so.1.0.0") for f in libs), libs
    pc = [f for f in files if f.endswith("/tessera-openslide.pc")]
    assert len(pc) == 1
    env = dict(os.environ, PKG_CONFIG_PATH=dest + os.path.dirname(pc[0]),
               PKG_CONFIG_SYSROOT_DIR=dest)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "tessera-openslide"],
                           capture_output=True, text=True, env=env, check=True).stdout.split()
    prog = tmp_path / "prog.c"
    prog.write_text(r"""
#include <openslide.h>
#include <stdio.h>
int main(int argc, char **argv) {
  openslide_t *osr = openslide_open(argv[1]);
  if (!osr || openslide_get_error(osr)) return 1;
  uint32_t px[4];
  openslide_read_region(osr, px, 0, 0, 0, 2, 2);
  printf("%s %08x\n", openslide_get_property_value(osr, OPENSLIDE_PROPERTY_NAME_VENDOR), px[0]);
  openslide_close(osr);
  return 0;
}
""")
    exe = str(tmp_path / "prog")
    subprocess.run(["cc", "-Wall", "-Werror", str(prog), "-o", exe] + flags, check=True)
    libdir = [f[2:] for f in flags if f.startswith("-L")][0]
    path = os.path.join(F.TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")
    out = subprocess.run([exe, path], capture_output=True, text=True, check=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=libdir)).stdout.split()
    lib = load(1)
    osr = lib.openslide_open(path.encode())
    px = read(lib, osr, 0, 0, 0, 2, 2)
    lib.openslide_close(osr)
    assert out == ["aperio", "%08x" % px[0]]


# --- Debian's libvips, whose OpenSlide loader links libopenslide.so.0 --------------------------

def vips(args, cwd, over_tessera):
    env = dict(os.environ)
    if over_tessera:
        env["LD_LIBRARY_PATH"] = os.path.dirname(SO[0])
    F.run(["vips"] + args, cwd=str(cwd), env=env)


@pytest.mark.parametrize("name", TESTDATA)
def test_vips_openslideload_equal(reads, name, tmp_path):
    """`vips openslideload` of level 0 and of the smallest level both read right gives the same
    .v file (pixels and metadata) over both libraries."""
    real, ours, path = reads[name]
    levels = [i for i, (dims, _) in enumerate(ours["levels"])
              if not openslide_misreads(path, dims, tuple(
                  int(real["properties"]["openslide.level[%d].tile-%s" % (i, k)])
                  for k in ("width", "height")))]
    # (not --associated: Debian's vips 8.14.1 crashes loading an associated image, over its
    # own OpenSlide as over tessera's, in openslide_get_associated_image_dimensions called
    # while it fills the region)
    loads = [["--level", str(levels[0])], ["--level", str(levels[-1])]]
    for i, extra in enumerate(loads):
        for over_tessera in (False, True):
            vips(["openslideload", path, "%d-%d.v" % (i, over_tessera)] + extra, tmp_path,
                 over_tessera)
        a = (tmp_path / ("%d-0.v" % i)).read_bytes()
        b = (tmp_path / ("%d-1.v" % i)).read_bytes()
        assert a == b, "%s %s: vips output differs" % (name, extra)


def test_vips_dzsave_equal(tmp_path):
    """A Deep Zoom pyramid of a small slide, every tile file the same over both libraries
    (vips-properties.xml differs only in the date it was written)."""
    path = os.path.join(F.TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")
    trees = []
    for over_tessera in (False, True):
        vips(["dzsave", path, "dz%d" % over_tessera], tmp_path, over_tessera)
        root = tmp_path / ("dz%d_files" % over_tessera)
        files = {}
        for r, _, fs in os.walk(root):
            for f in fs:
                data = open(os.path.join(r, f), "rb").read()
                if f == "vips-properties.xml":
                    data = re.sub(rb' date="[^"]*"', b"", data)
                files[os.path.relpath(os.path.join(r, f), root)] = data
        files["dzi"] = (tmp_path / ("dz%d.dzi" % over_tessera)).read_bytes()
        trees.append(files)
    assert len(trees[0]) > 100
    assert sorted(trees[0]) == sorted(trees[1])
    differ = [k for k in trees[0] if trees[0][k] != trees[1][k]]
    assert not differ, differ


@pytest.mark.parametrize("name", TESTDATA)
def test_openslide_tools_equal(name, tmp_path):
    """Debian's openslide-tools over both libraries: openslide-show-properties prints the same,
    openslide-write-png writes the same file."""
    path = os.path.join(F.TESTDATA, F.SPECS[name].source)
    out = []
    for over_tessera in (False, True):
        env = dict(os.environ)
        if over_tessera:
            env["LD_LIBRARY_PATH"] = os.path.dirname(SO[0])
        png = str(tmp_path / ("%d.png" % over_tessera))
        props = subprocess.run(["openslide-show-properties", path], env=env, check=True,
                               capture_output=True).stdout
        subprocess.run(["openslide-write-png", path, "10", "20", "0", "300", "200", png], env=env,
                       check=True, capture_output=True)
        out.append((props, open(png, "rb").read()))
    assert out[0][0] == out[1][0]
    assert out[0][1] == out[1][1]


def openslide_number(v):
    """A number as OpenSlide (3.4 and 4.0) writes it, GLib's g_ascii_dtostr: C's %.17g."""
    return "%.17g" % v


@pytest.mark.parametrize("abi", [0, 1])
@pytest.mark.parametrize("resolution", [(889, 10), (254000, 1)])
def test_numbers_written_with_17_digits_even_where_15_read_back(abi, resolution, tmp_path):
    """OpenSlide writes tiff.XResolution and a generic TIFF's mpp with 17 significant digits
    also where 15 would read back as the same double (88.9 as a float: 88.900001525878906, not
    88.9000015258789; an mpp of 0.1: 0.10000000000000001): the first against Debian's
    OpenSlide 3.4.1, the mpp (4.0 only) as OpenSlide 4 prints it, %.17g."""
    path = str(tmp_path / "resolution.tif")
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), tile=(32, 32),
                     resolution=(resolution, resolution), resolutionunit=2)
    debian = subprocess.run([PYTHON, "-c", "import openslide, sys; print(openslide.OpenSlide("
                             "sys.argv[1]).properties['tiff.XResolution'])", path],
                            capture_output=True, text=True, check=True).stdout.strip()
    lib = load(abi)
    osr = lib.openslide_open(path.encode())
    assert lib.openslide_get_property_value(osr, b"tiff.XResolution") == debian.encode()
    mpp = 25400.0 / (resolution[0] / resolution[1])
    want = openslide_number(mpp)
    if resolution == (254000, 1):
        assert float("%.15g" % mpp) == mpp and want != "%.15g" % mpp, "the case tests nothing"
    got = lib.openslide_get_property_value(osr, b"openslide.mpp-x")
    assert got == (None if abi == 0 else want.encode())
    lib.openslide_close(osr)


@pytest.mark.parametrize("abi", [0, 1])
def test_generic_tiff_mpp_as_each_version(abi, tmp_path):
    """OpenSlide 4.0 gives a generic TIFF the micrometres per pixel of its resolution tags;
    3.4 none (the 3.4 build is checked against Debian's OpenSlide in test_properties_equal).
    The resolution is the rational as stored, divided as doubles (libtiff's float would differ
    in the last digits for a rational no float holds, which the one written here is)."""
    path = str(tmp_path / "resolution.tif")
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), tile=(32, 32),
                     resolution=((1000003, 7919), (1000003, 7919)), resolutionunit=3)
    with tifffile.TiffFile(path) as t:
        tags = t.pages[0].tags
        unit = int(tags["ResolutionUnit"].value)
        num, den = tags["XResolution"].value
    xres = num / den
    assert unit == 3 and float(np.float32(xres)) != xres
    lib = load(abi)
    osr = lib.openslide_open(path.encode())
    got = lib.openslide_get_property_value(osr, b"openslide.mpp-x")
    if abi == 0:
        assert got is None
    else:
        assert got == openslide_number(10000.0 / xres).encode()
    debian = subprocess.run([PYTHON, "-c", "import openslide, sys; print(openslide.OpenSlide("
                             "sys.argv[1]).properties['tiff.XResolution'])", path],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert debian == openslide_number(xres)
    assert lib.openslide_get_property_value(osr, b"tiff.XResolution") == debian.encode()
    lib.openslide_close(osr)


@pytest.mark.parametrize("abi", [0, 1])
def test_associated_alpha_comes_back_as_stored(abi, tmp_path):
    """OpenSlide returns a TIFF's associated (premultiplied) alpha samples as stored, in ARGB;
    tessera divides them by alpha on decode, and the library must multiply them back exactly,
    not round them again. Expected: the samples tifffile reads back, which Debian's OpenSlide
    3.4.1 (loaded by path in a child process) gives too."""
    from test_alpha import premultiplied_picture
    path = str(tmp_path / "assocalpha.tif")
    tifffile.imwrite(path, premultiplied_picture(), tile=(32, 32), photometric="rgb",
                     extrasamples=["assocalpha"])
    stored = tifffile.imread(path).astype(np.uint32)
    h, w = stored.shape[:2]
    want = (stored[..., 3] << 24 | stored[..., 0] << 16 | stored[..., 1] << 8
            | stored[..., 2]).ravel()
    assert ((stored[..., 3] > 0) & (stored[..., 3] < 255)).any()
    code = ("import ctypes, sys, numpy as np; lib = ctypes.CDLL(sys.argv[1]); "
            "lib.openslide_open.restype = ctypes.c_void_p; "
            "lib.openslide_read_region.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + "
            "[ctypes.c_int64] * 2 + [ctypes.c_int32] + [ctypes.c_int64] * 2; "
            "o = lib.openslide_open(sys.argv[2].encode()); w, h = int(sys.argv[3]), "
            "int(sys.argv[4]); b = np.zeros(w * h, np.uint32); "
            "lib.openslide_read_region(o, b.ctypes.data, 0, 0, 0, w, h); "
            "sys.stdout.write(b.tobytes().hex())")
    debian = subprocess.run([PYTHON, "-c", code, DEBIAN_OPENSLIDE, path, str(w), str(h)],
                            capture_output=True, text=True, check=True).stdout
    assert bytes.fromhex(debian) == want.astype("<u4").tobytes(), "OpenSlide gives them as stored"
    lib = load(abi)
    osr = lib.openslide_open(path.encode())
    got = read(lib, osr, 0, 0, 0, w, h)
    assert lib.openslide_get_error(osr) is None
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, "%d pixels differ, first %#010x for %#010x" % (
        bad.size, got[bad[0]], want[bad[0]])
    lib.openslide_close(osr)
