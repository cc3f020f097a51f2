"""tessera.openslide against Debian's openslide-python over real OpenSlide 3.4.1, on the same
files at test time: every real slide in ../shared/testdata and fixtures written by vips
tiffsave and tifffile. Compared: properties, level geometry, RGBA regions byte for byte (including regions
partly or wholly outside the slide), associated images, thumbnails, Deep Zoom metadata and
tiles, and errors.

Regions whose level origin is not a whole pixel (x or y not a multiple of a level's
downsample), which OpenSlide 3.4.1 paints through cairo blending neighbouring pixels, are
compared too, on every level above 0 (tessera.openslide paints them with
libtessera-openslide's openslide/fractional.c, built into the extension).

Left out of the pixel comparisons, for a reason OpenSlide gives (docs/OPENSLIDE.md):
- a level smaller than one tile, of any codec but 3-sample JPEG: OpenSlide 3.4.1 decodes it
  through libtiff's TIFFReadRGBATile, which (libtiff 4.5) misplaces its pixels (see
  test_differential.openslide_unreliable; tessera is held to libvips there).
NDPI's levels decoded at 1/2, 1/4 and 1/8 (7 levels on hamamatsu-ndpi-DAPI.ndpi) are tessera's
too, and compared as any other level.
"""

import ctypes
import os
import sys
import threading

import numpy as np
import pytest

import tiffbytes
import wsi_fixtures as F
from conftest import PYTHON_PACKAGE_DIR

from tessera import openslide as tos  # noqa: E402
from tessera.openslide.deepzoom import DeepZoomGenerator as TDeepZoom  # noqa: E402

JPEG = 7
TESTDATA = [f for f in sorted(os.listdir(F.TESTDATA)) if not f.endswith(".md")]
VIPS = ["jpeg-t256-pyr", "odd-deflate-t240-pyr", "rgba-deflate-pyr", "webp-lossy-pyr",
        "gray-deflate-pyr", "jpeg-bigtiff-pyr", "lzw-pred-pyr"]
# tifffile: graded, transparent and opaque alpha, stored associated and unassociated; and
# the tags OpenSlide reports beyond tessera's (DocumentName, XPosition as a RATIONAL,
# YPosition as a FLOAT, resolution unit none)
TIFFFILE = ["assocalpha", "unassalpha", "tags"]
CASES = (["testdata:" + f for f in TESTDATA] + ["vips:" + n for n in VIPS] +
         ["tifffile:" + n for n in TIFFFILE])


def write_tifffile(directory, name):
    """A tifffile picture with graded, transparent and opaque alpha of the kind `name`, or
    for 'tags' an RGB one with the extra tags."""
    import tifffile
    from test_alpha import premultiplied_picture

    path = os.path.join(directory, name + ".tif")
    picture = premultiplied_picture()
    if name == "tags":
        tifffile.imwrite(path, picture[..., :3], tile=(32, 32), photometric="rgb",
                         resolution=(3.5, 7.25), resolutionunit="NONE",
                         extratags=[(269, 2, None, "document name", True),
                                    (286, 5, 1, (7, 3), True), (287, 11, 1, 0.1, True)])
    else:
        tifffile.imwrite(path, picture, tile=(32, 32), photometric="rgb",
                         extrasamples=[name])
    return path


@pytest.fixture(scope="module")
def pair(slides, tmp_path_factory):
    """(path, tessera.openslide.OpenSlide, openslide.OpenSlide) of a case, opened once."""
    import openslide

    opened = {}

    def get(case):
        if case not in opened:
            kind, name = case.split(":", 1)
            if kind == "testdata":
                path = os.path.join(F.TESTDATA, name)
            elif kind == "vips":
                path = slides.path(name)
            else:
                path = write_tifffile(str(tmp_path_factory.mktemp("tifffile")), name)
            opened[case] = (path, tos.OpenSlide(path), openslide.OpenSlide(path))
        return opened[case]

    yield get
    for _, t, o in opened.values():
        t.close()
        o.close()


def levels(t, o):
    """The levels, which both have alike: the same count and sizes."""
    assert t.level_dimensions == o.level_dimensions
    return range(t.level_count)


def openslide_unreliable(t, level):
    """OpenSlide 3.4.1 misplaces the pixels of a level smaller than one tile unless it is
    3-sample JPEG (module docstring)."""
    info = t._slide.level_info(level)
    if info["compression"] == JPEG and info["samples_per_pixel"] == 3:
        return False
    return bool(info["tiled"]) and (info["width"] < info["tile_width"] or
                                    info["height"] < info["tile_height"])


def whole_origin(t, level, x, y):
    """True where OpenSlide reads the region from a whole level pixel: x and y multiples of
    the downsample, or left of / above the image (where OpenSlide restarts at pixel 0)."""
    ds = t.level_downsamples[level]
    return all(v < 0 or v == 0 or (ds == int(ds) and v % int(ds) == 0) for v in (x, y))


def rgba(image):
    assert image.mode == "RGBA"
    return np.asarray(image)


def assert_same_pixels(got, exp, what):
    got, exp = np.asarray(got), np.asarray(exp)
    assert got.shape == exp.shape, "%s: shape %r, OpenSlide %r" % (what, got.shape, exp.shape)
    differ = (got != exp).reshape(got.shape[0], got.shape[1], -1).any(axis=2)
    if differ.any():
        y, x = np.argwhere(differ)[0]
        raise AssertionError("%s: %d pixels differ, first at (%d, %d): tessera %r, OpenSlide "
                             "%r" % (what, differ.sum(), x, y, got[y, x], exp[y, x]))


def openslide4_generic_mpp(props, axis):
    """A generic TIFF's mpp as OpenSlide 4 gives it, from the tags OpenSlide 3.4 reads."""
    per_unit = {"centimeter": 10000.0, "inch": 25400.0}.get(props.get("tiff.ResolutionUnit"))
    res = {a: float(props.get("tiff.%sResolution" % a.upper(), 0)) for a in "xy"}
    if per_unit is None or res["x"] <= 0 or res["y"] <= 0:
        return None
    return per_unit / res[axis]


@pytest.mark.parametrize("case", CASES)
def test_properties(pair, case):
    path, t, o = pair(case)
    tp, op = dict(t.properties), dict(o.properties)
    for key, value in op.items():
        assert key in tp, "%s: tessera has no property %s (OpenSlide: %r)" % (case, key, value)
        assert tp[key] == value, "%s: %s is %r, OpenSlide %r" % (case, key, tp[key], value)
    if op["openslide.vendor"] == "generic-tiff":
        # OpenSlide 4's mpp from the resolution tags (docs/OPENSLIDE.md), which 3.4.1 lacks
        for axis in "xy":
            want = openslide4_generic_mpp(op, axis)
            got = tp.pop("openslide.mpp-" + axis, None)
            assert (got is None) == (want is None), (case, axis, got, want)
            assert want is None or float(got) == pytest.approx(float(want), rel=1e-12)
    assert set(tp) <= set(op), "%s: properties OpenSlide does not have: %s" % (
        case, sorted(set(tp) - set(op)))
    if case == "tifffile:tags":
        assert {"tiff.DocumentName", "tiff.XPosition", "tiff.YPosition"} <= set(tp)
        assert tp["tiff.ResolutionUnit"] == "none"
    # the constants name OpenSlide's keys
    assert tos.PROPERTY_NAME_VENDOR == "openslide.vendor"
    assert t.properties[tos.PROPERTY_NAME_VENDOR] == o.properties["openslide.vendor"]


@pytest.mark.parametrize("case", CASES)
def test_geometry(pair, case):
    _, t, o = pair(case)
    assert t.level_count == o.level_count
    assert t.dimensions == o.dimensions
    assert t.level_dimensions == o.level_dimensions
    assert t.level_downsamples == o.level_downsamples
    top = t.level_downsamples[-1]
    for ds in [0.1, 0.5, 1, 1.5, 2, 2.5, 3.9, 4, 7, 8, 8.5, 16, 17, 31.9, 32, 64, 100, 200,
               1e6]:
        assert t.get_best_level_for_downsample(ds) == o.get_best_level_for_downsample(ds), (
            ds, top)


def regions(t, level):
    """(x, y, width, height) in level-0 / level pixels: at the origin, partly outside on
    each side (at whole and at fractional level offsets left of and above the image), the
    bottom-right corner, the whole level when small, and wholly outside."""
    W, H = t.level_dimensions[level]
    ds = t.level_downsamples[level]
    d = int(round(ds)) if ds == int(ds) else 1
    w, h = min(W, 300) + 40, min(H, 200) + 30
    out = [(0, 0, min(W, 400), min(H, 300)),
           (-37 * d, -23 * d, w, h),
           (-5, -3, w, h),
           (-1, 0, 50, 40),
           (d * max(0, W - w + 40), d * max(0, H - h + 30), w, h),
           (d * (W + 10), 0, 20, 20),
           (-10 ** 6, -10 ** 6, 16, 16)]
    if W * H <= 1200 * 1200:
        out.append((0, 0, W, H))
    return out + fractional_regions(t, level)


def fractional_regions(t, level):
    """Regions of a level above 0 whose origin falls between its pixels (x, y or both), inside
    the image, across its bottom-right corner and beside a negative coordinate, and one over
    4096 pixels wide (OpenSlide paints it in pieces, each from its own origin; one from a
    whole pixel too, which takes the same path)."""
    if level == 0:
        return []
    W, H = t.level_dimensions[level]
    ds = t.level_downsamples[level]

    def between(p):  # a level-0 coordinate just right of level pixel p, not on a pixel
        return int(p * ds) + 1

    fx, fy = between(min(W // 3, 150)), between(min(H // 3, 110))
    return [(fx, fy, 170, 130), (fx, 0, 90, 70), (0, fy, 90, 70), (-5, fy, 60, 50),
            (between(max(0, W - 100)), between(max(0, H - 70)), 150, 110),
            (fx, fy, 4100, 6), (0, 0, 4100, 6)]


@pytest.mark.parametrize("case", CASES)
def test_regions(pair, case):
    _, t, o = pair(case)
    checked = 0
    for level in levels(t, o):
        if openslide_unreliable(t, level):
            continue
        fractional = 0
        for x, y, w, h in regions(t, level):
            got = t.read_region((x, y), level, (w, h))
            exp = o.read_region((x, y), level, (w, h))
            assert got.size == exp.size == (w, h)
            assert_same_pixels(rgba(got), rgba(exp), "%s level %d at (%d, %d) %dx%d" % (
                case, level, x, y, w, h))
            checked += 1
            fractional += not whole_origin(t, level, x, y)
        assert level == 0 or fractional >= 5, (level, fractional)
    assert checked >= 6


@pytest.mark.parametrize("case", CASES)
def test_associated_images(pair, case):
    _, t, o = pair(case)
    tnames, onames = list(t.associated_images), list(o.associated_images)
    extra = set(tnames) - set(onames)
    # OpenSlide 3.4.1 does not list NDPI's focus map
    assert extra <= ({"map"} if case.endswith(".ndpi") else set()), extra
    assert set(onames) <= set(tnames)
    for name in onames:
        assert_same_pixels(rgba(t.associated_images[name]), rgba(o.associated_images[name]),
                           "%s associated image %s" % (case, name))
    with pytest.raises(KeyError):
        t.associated_images["__missing"]


@pytest.mark.parametrize("case", CASES)
def test_thumbnail(pair, case):
    _, t, o = pair(case)
    for size in [(256, 256), (100, 300), (1000, 1000)]:
        ds = max(d / s for d, s in zip(t.dimensions, size))
        level = t.get_best_level_for_downsample(ds)
        got = t.get_thumbnail(size)
        exp = o.get_thumbnail(size)
        assert got.size == exp.size and got.mode == exp.mode == "RGB"
        assert level == o.get_best_level_for_downsample(ds)
        if openslide_unreliable(t, level):
            continue  # OpenSlide's misplaced small level
        assert_same_pixels(np.asarray(got), np.asarray(exp), "%s thumbnail %r" % (case, size))


@pytest.mark.parametrize("limit_bounds", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_deepzoom(pair, case, limit_bounds):
    from openslide.deepzoom import DeepZoomGenerator

    _, t, o = pair(case)
    for tile_size, overlap in [(254, 1), (240, 0), (510, 3)]:
        tz = TDeepZoom(t, tile_size, overlap, limit_bounds)
        oz = DeepZoomGenerator(o, tile_size, overlap, limit_bounds)
        for attr in ("level_count", "level_tiles", "level_dimensions", "tile_count"):
            assert getattr(tz, attr) == getattr(oz, attr), attr
        for fmt in ("jpeg", "png"):
            assert tz.get_dzi(fmt) == oz.get_dzi(fmt)
        assert repr(tz).startswith("DeepZoomGenerator(OpenSlide(")
        compared = 0
        for level in range(tz.level_count):
            cols, rows = tz.level_tiles[level]
            addresses = {(c, r) for c in (0, cols // 2, cols - 1) for r in (0, rows // 2, rows - 1)}
            for address in sorted(addresses):
                tc, oc = tz.get_tile_coordinates(level, address), oz.get_tile_coordinates(
                    level, address)
                assert tz.get_tile_dimensions(level, address) == oz.get_tile_dimensions(
                    level, address)
                (x, y), slide_level, _ = tc
                assert tc == oc, (level, address)
                if openslide_unreliable(t, slide_level):
                    continue
                assert_same_pixels(np.asarray(tz.get_tile(level, address)),
                                   np.asarray(oz.get_tile(level, address)),
                                   "%s deep zoom level %d tile %r" % (case, level, address))
                compared += 1
        assert compared > 0
        with pytest.raises(ValueError):
            tz.get_tile(tz.level_count, (0, 0))
        with pytest.raises(ValueError):
            tz.get_tile(0, (1, 0))


def test_quickhash_absent_where_openslide_gives_none(slides, tmp_path):
    """OpenSlide hashes no smallest level over 5 MiB: a one-level uncompressed 2048 x 1536
    slide has no openslide.quickhash-1 in either."""
    import openslide

    path = str(tmp_path / "big-none.tif")
    F.run(["vips", "tiffsave", slides.source("rgb2k"), path, "--tile", "--compression",
           "none"])
    with tos.OpenSlide(path) as t, openslide.OpenSlide(path) as o:
        assert "openslide.vendor" in o.properties
        assert "openslide.quickhash-1" not in o.properties
        assert "openslide.quickhash-1" not in t.properties


def test_properties_of_damaged_directories(slides):
    """OpenSlide's properties come from the core (tessera_openslide_properties), which takes
    every size from the file: on damaged headers, directories and value offsets,
    tessera.openslide raises OpenSlide's errors (at open, or from `properties` where the hash
    reads tiles past the end), as real OpenSlide refuses the same file, never another
    exception."""
    import struct
    import openslide

    good = open(slides.path("jpeg-t256-pyr"), "rb").read()
    first = struct.unpack("<I", good[4:8])[0]
    tiff = tiffbytes.Tiff(good)
    last = len(tiff.ifds) - 1
    offsets_entry = tiff.ifds[last].entries[tiffbytes.TAG["TileOffsets"]]
    cases = {
        "header only": good[:8],
        "truncated in the first directory": good[:first + 7],
        "truncated before the last tiles": good[:tiffbytes.tile_spans(tiff, last)[0][0]],
        "first directory past the end": good[:4] + struct.pack("<I", len(good) + 10) +
        good[8:],
        "65535 entries": good[:first] + b"\xff\xff" + good[first + 2:],
        "a directory that is its own next": tiffbytes.patch_next(good, tiff, 0, first),
        "tile offsets past the end": tiffbytes.patch_entry(
            good, tiff, last, "TileOffsets", 4, offsets_entry.count, len(good) * 2),
    }
    refused = 0
    for what, data in cases.items():
        path = os.path.join(slides.dir, "qh-%s.tif" % what.replace(" ", "-"))
        with open(path, "wb") as f:
            f.write(data)
        try:
            with openslide.OpenSlide(path) as o:
                real = dict(o.properties)
        except openslide.OpenSlideError:
            real = None
        try:
            with tos.OpenSlide(path) as t:
                ours = dict(t.properties)
        except tos.OpenSlideError:
            ours = None
        if real is None:
            refused += 1
            assert ours is None, what
        elif ours is not None:
            assert ours.get("openslide.quickhash-1") == real.get("openslide.quickhash-1"), what
    assert refused >= 5


def test_errors_as_openslide_python(tmp_path):
    import openslide

    missing = str(tmp_path / "missing.svs")
    notslide = tmp_path / "notes.txt"
    notslide.write_text("not a slide\n")
    png = str(tmp_path / "picture.png")
    from PIL import Image
    Image.new("RGB", (30, 20), (10, 200, 30)).save(png)
    for mod in (tos, openslide):
        with pytest.raises(mod.OpenSlideUnsupportedFormatError):
            mod.OpenSlide(missing)
        with pytest.raises(mod.OpenSlideUnsupportedFormatError):
            mod.OpenSlide(str(notslide))
        assert mod.OpenSlide.detect_format(missing) is None
        assert mod.OpenSlide.detect_format(png) is None
        with mod.open_slide(png) as s:
            assert isinstance(s, mod.ImageSlide)
            assert s.read_region((-5, -5), 0, (40, 30)).tobytes() == \
                openslide.ImageSlide(png).read_region((-5, -5), 0, (40, 30)).tobytes()
    path = os.path.join(F.TESTDATA, "aperio-jpeg-tiny-16x16.svs")
    assert tos.OpenSlide.detect_format(path) == openslide.OpenSlide.detect_format(path)
    t, o = tos.OpenSlide(path), openslide.OpenSlide(path)
    assert isinstance(tos.open_slide(path), tos.OpenSlide)
    for s, mod in ((t, tos), (o, openslide)):
        with pytest.raises(mod.OpenSlideError):
            s.read_region((0, 0), 0, (10, -1))
        assert s.read_region((0, 0), 0, (0, 10)).size == (0, 10)
        # a level the slide does not have reads as transparent
        assert not np.asarray(s.read_region((0, 0), 5, (8, 8))).any()
        props = s.properties
        s.close()
        with pytest.raises(ctypes.ArgumentError):
            s.read_region((0, 0), 0, (4, 4))
        with pytest.raises(ctypes.ArgumentError):
            props["openslide.vendor"]
        with pytest.raises(ctypes.ArgumentError):
            s.close()


def test_color_profile_is_the_slides_icc(tmp_path):
    """color_profile is the first directory's ICC profile, as openslide-python 1.3 gives it
    over OpenSlide 4 (Debian's 1.2 has none to compare with): a pyramid written by vips with
    its sRGB profile gives those bytes (read back by tifffile) and a profile PIL opens; the
    thumbnail carries it; a slide without one gives None."""
    import subprocess

    import tifffile
    from PIL import ImageCms

    src = str(tmp_path / "src.v")
    subprocess.run(["vips", "black", src, "600", "400", "--bands", "3"], check=True)
    with_icc, without = str(tmp_path / "icc.tif"), str(tmp_path / "plain.tif")
    subprocess.run(["vips", "tiffsave", src, with_icc, "--tile", "--pyramid", "--compression",
                    "jpeg", "--profile", "srgb"], check=True)
    subprocess.run(["vips", "tiffsave", src, without, "--tile", "--pyramid", "--compression",
                    "jpeg"], check=True)
    with tifffile.TiffFile(with_icc) as t:
        want = t.pages[0].tags["InterColorProfile"].value
    want = bytes(want)
    assert len(want) > 100
    with tos.OpenSlide(with_icc) as s:
        assert s._icc() == want
        profile = s.color_profile
        assert isinstance(profile, ImageCms.ImageCmsProfile)
        assert s.get_thumbnail((50, 50)).info.get("icc_profile") == want
    with tos.OpenSlide(without) as s:
        assert s.color_profile is None


def test_malformed_tiff_raises_as_openslide_python(slides, tmp_path):
    """A TIFF whose structure is malformed (cut short inside its first directory, or pointing
    at a directory past its end) is claimed by no format in OpenSlide: openslide-python
    raises OpenSlideUnsupportedFormatError, and so must tessera.openslide (not the plain
    OpenSlideError of a TIFF that opens but cannot be read). The class each raises is asked
    of openslide-python at test time."""
    import struct

    import openslide

    good = open(slides.path("jpeg-t256-pyr"), "rb").read()
    first = struct.unpack("<I", good[4:8])[0]
    cases = {"cut in the first directory": good[:first + 7],
             "first directory past the end": good[:4] + struct.pack("<I", len(good) + 10) +
             good[8:]}
    for what, data in cases.items():
        path = str(tmp_path / ("%s.tif" % what.replace(" ", "-")))
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(openslide.OpenSlideError) as want:
            openslide.OpenSlide(path)
        with pytest.raises(tos.OpenSlideError) as got:
            tos.OpenSlide(path)
        assert type(got.value).__name__ == type(want.value).__name__, what
        assert type(want.value).__name__ == "OpenSlideUnsupportedFormatError", what


def test_context_manager_and_cache():
    """set_cache sets the capacity of tessera's process-wide cache; the test puts back the
    configuration it found, for the tests after it."""
    from tessera import _tessera

    before = _tessera.cache_stats()
    assert before["type"] in ("nocache", "per_process"), before
    path = os.path.join(F.TESTDATA, "aperio-jpeg-tiny-16x16.svs")
    try:
        with tos.OpenSlide(path) as s:
            assert s.level_count == 1
            s.set_cache(tos.OpenSlideCache(3 << 20))
            stats = _tessera.cache_stats()
            assert (stats["type"], stats["memory_capacity"]) == ("per_process", 3 << 20)
            assert s.read_region((0, 0), 0, (16, 16)).size == (16, 16)
            assert _tessera.cache_stats()["items"] > 0
            s.set_cache(tos.OpenSlideCache(0))
            assert _tessera.cache_stats()["type"] == "nocache"
            with pytest.raises(TypeError):
                s.set_cache(None)
    finally:
        _tessera.cache_configure(before["type"], before["memory_capacity"] >> 20)
    with pytest.raises(ctypes.ArgumentError):
        s.level_count
    with pytest.raises(ctypes.ArgumentError):
        tos.OpenSlideCache(-1)
    with pytest.raises(ctypes.ArgumentError):
        tos.OpenSlideCache(1.5)


def test_region_over_the_read_limit_fails_without_latching():
    """A region larger than tessera's max_read_bytes (4 GiB) is refused before any read:
    OpenSlideError, and the slide keeps reading (its file is not at fault)."""
    path = os.path.join(F.TESTDATA, "aperio-jpeg-tiny-16x16.svs")
    with tos.OpenSlide(path) as s:
        with pytest.raises(tos.OpenSlideError, match="max_read_bytes"):
            s.read_region((0, 0), 0, (1 << 20, 1 << 20))
        assert s.read_region((0, 0), 0, (16, 16)).size == (16, 16)
        assert s.properties["openslide.vendor"] == "aperio"


def test_error_latches_as_openslide(tmp_path):
    """A damaged tile fails the read in both, and then every call but close (OpenSlide's
    latching errors), while a second tessera.openslide object on the same file is unharmed."""
    import openslide

    src = os.path.join(F.TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")
    data = bytearray(open(src, "rb").read())
    tiff = tiffbytes.Tiff(bytes(data))
    offset, count = tiffbytes.tile_spans(tiff, 0)[0]
    data[offset + 2:offset + count] = b"\xff\x00" * ((count - 2) // 2) + b"\x00" * (count % 2)
    bad = tmp_path / "damaged.svs"
    bad.write_bytes(bytes(data))
    other = tos.OpenSlide(str(bad))
    for mod in (tos, openslide):
        s = mod.OpenSlide(str(bad))
        assert s.properties["openslide.vendor"] == "aperio"
        with pytest.raises(mod.OpenSlideError):
            np.asarray(s.read_region((0, 0), 0, (100, 100)))
        with pytest.raises(mod.OpenSlideError):
            s.properties["openslide.vendor"]
        with pytest.raises(mod.OpenSlideError):
            s.read_region((1000, 1000), 0, (10, 10))
        s.close()
    assert other.read_region((1000, 1000), 0, (10, 10)).size == (10, 10)
    other.close()


@pytest.mark.parametrize("location, level, size", [((0, 0), 0, (4000, 3000)),
                                                   ((3, 5), 1, (3000, 2000))])
def test_read_region_lets_other_threads_run(pair, location, level, size):
    """While tessera.openslide reads a large region, another Python thread runs: the read
    holds no GIL. With the switch interval set far beyond the read, a thread waiting for the
    GIL only gets it when the reader gives it up of its own accord. (Checked to fail with
    the Py_BEGIN_ALLOW_THREADS around tessera_read_region in python/ext/slide.c removed.)
    The second region starts between level 1's pixels: read_region_openslide paints it."""
    _, t, _ = pair("testdata:generic-zstd-1024tiles-pyramid.tiff")
    counter = [0]
    stop = threading.Event()

    def count():
        import time
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0)  # gives the GIL back at once, so the reader is not held up

    old = sys.getswitchinterval()
    worker = threading.Thread(target=count)
    worker.start()
    try:
        while counter[0] == 0:
            pass
        sys.setswitchinterval(1000.0)
        before = counter[0]
        region = t.read_region(location, level, size)
        during = counter[0] - before
    finally:
        sys.setswitchinterval(old)
        stop.set()
        worker.join(60)
    assert region.size == size
    # Holding the GIL, the reader lets the counter run once at most (for the switch request
    # made before the interval was raised); releasing it, the counter runs all through the
    # read (a thousand times here on a busy machine).
    assert during > 10, "the counter ran %d times while read_region read %dx%d pixels: " \
        "the read held the GIL" % (during, size[0], size[1])


def test_threads_sharing_a_slide_read_what_one_thread_reads(pair):
    """Two threads reading random regions through one OpenSlide object get the pixels that
    openslide-python reads for the same calls."""
    _, t, o = pair("testdata:aperio-jpeg-CMU-1-Small-Region.svs")
    rng = np.random.default_rng(7)
    calls = [(int(x), int(y)) for x, y in zip(rng.integers(-100, 2100, 60),
                                              rng.integers(-100, 2800, 60))]
    expected = [np.asarray(o.read_region(c, 0, (224, 224))) for c in calls]
    got = [None] * len(calls)

    def read(part):
        for i in range(part, len(calls), 2):
            got[i] = np.asarray(t.read_region(calls[i], 0, (224, 224)))

    threads = [threading.Thread(target=read, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for i, c in enumerate(calls):
        assert_same_pixels(got[i], expected[i], "region at %r read in a thread" % (c,))


def test_python_package_has_openslide():
    assert os.path.isfile(os.path.join(PYTHON_PACKAGE_DIR, "tessera", "openslide",
                                       "deepzoom.py"))


def test_the_reference_is_debians_openslide():
    """The comparisons above are against real OpenSlide only if openslide-python in this
    process did not get tessera's libopenslide.so.0 (loaded here by test_openslide_c)."""
    import openslide
    assert "tessera" not in openslide.__library_version__, openslide.__library_version__
