"""Leica SCN, on slides written at test time (vendor_writers.write_leica: a BigTIFF of JPEG
tiles from real slide pixels, with the SCN XML in the first directory) that Debian's OpenSlide
3.4.1 opens as Leica: the main image chosen among a macro, a fluorescence image and a second
focal plane; its levels (their dimensions listed out of order, odd sizes) placed in the
collection at the view's offset; pixels on every level, across tile edges, the image's border
and the slide's, byte for byte against OpenSlide; properties; the macro; damaged and hostile
XML failing cleanly; the batch reader and `tessera bench` giving what single reads give."""

import math
import os
import subprocess

import numpy as np
import openslide
import pytest

import tessera_ctypes as T
import vendor_checks as VC
import vendor_writers as V
import wsi_refs as R

NMPP = 250  # nm per level-0 pixel
COLLECTION = (2_000_000, 1_000_000)  # nm: 8000 x 4000 level-0 pixels
TILE = 256
W0, H0 = 1003, 757


def _levels(base):
    return [base, V.reduce(base, 2), V.reduce(base, 4)]


@pytest.fixture(scope="module")
def pieces():
    base = V.source_rgb(W0, H0, 300, 200)
    return dict(levels=_levels(base), macro=V.source_rgb(400, 200, 1500, 1700),
                macro_small=V.source_rgb(100, 50, 100, 1500),
                fluo=V.source_rgb(120, 90, 50, 50), plane1=np.ascontiguousarray(base[::-1]))


def _scn_xml(levels, offset=(1_234_567, 300_321), ns="2010/10/01", fluo=True, macro=True,
             plane=True, **main):
    (w0, h0), (w1, h1), (w2, h2) = [(a.shape[1], a.shape[0]) for a in levels]
    dims = [(2, w2, h2, None), (1, w0, h0, "0"), (3, w1, h1, None)]  # out of order
    if plane:
        dims.append((6, w0, h0, "1"))  # another focal plane: not a level
    images = []
    if macro:
        images.append(V.leica_image([(0, 400, 200, None), (5, 100, 50, None)],
                                    COLLECTION + (0, 0), objective=None))
    images.append(V.leica_image(dims, (w0 * NMPP, h0 * NMPP) + offset, **main))
    if fluo:
        images.append(V.leica_image([(4, 120, 90, None)], (30_000, 22_500, 10_000, 20_000),
                                    illumination="fluorescence", objective="40"))
    return V.leica_xml(COLLECTION, images, ns=ns,
                       barcode="SCN-0042 slide" if ns == "2010/10/01" else "legacy-7")


def _write(path, pieces, xml, skip=()):
    lv = pieces["levels"]
    res = 1e7 / NMPP  # pixels per centimetre
    V.write_leica(path, [(pieces["macro"], 128, (), None), (lv[0], TILE, skip, res),
                         (lv[2], TILE, (), None), (lv[1], TILE, (), None),
                         (pieces["fluo"], 64, (), None), (pieces["macro_small"], 64, (), None),
                         (pieces["plane1"], TILE, (), None)], xml)


@pytest.fixture(scope="module")
def files(tmp_path_factory, pieces):
    d = tmp_path_factory.mktemp("leica")
    out = {"scn": str(d / "slide.scn"), "old": str(d / "old.scn"),
           "sparse": str(d / "sparse.scn")}
    _write(out["scn"], pieces, _scn_xml(pieces["levels"]))
    # the 2010/03/10 namespace, no macro (OpenSlide's legacy slides), another offset
    _write(out["old"], pieces, _scn_xml(pieces["levels"], offset=(77_777, 1_999), ns="2010/03/10",
                                        fluo=False, macro=False))
    _write(out["sparse"], pieces, _scn_xml(pieces["levels"]), skip=(5,))
    return out


NAMES = ["scn", "old"]


def osl(path):
    return R.openslide_open(path)


# ---- what the file is ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_levels_equal_openslides(lib, files, name):
    o = osl(files[name])
    assert o.properties["openslide.vendor"] == "leica"
    with T.open_slide(files[name]) as s:
        assert s.vendor == "leica"
        assert s.level_count == 3
        assert s.level_dimensions() == list(o.level_dimensions)
        assert [s.level_info(i).downsample for i in range(3)] == list(o.level_downsamples)
        assert s.level_dimensions()[0] == (COLLECTION[0] // NMPP, COLLECTION[1] // NMPP)
        assert s.background == 255


@pytest.mark.parametrize("name", NAMES)
def test_properties_equal_openslides(lib, files, name):
    o = osl(files[name])
    with T.open_slide(files[name]) as s:
        props = s.properties
    want = {k: v for k, v in o.properties.items() if k.startswith("leica.")}
    got = {k: v for k, v in props.items() if k.startswith("leica.")}
    assert len(want) == 7 and got == want
    assert want["leica.barcode"] == ("SCN-0042 slide" if name == "scn" else "legacy-7")
    for key in ("mpp-x", "mpp-y"):
        assert float(props["tessera." + key]) == pytest.approx(
            float(o.properties["openslide." + key]), rel=1e-6)
    keys = ["objective-power", "bounds-x", "bounds-y", "bounds-width", "bounds-height"] + [
        "region[0].%s" % k for k in ("x", "y", "width", "height")]
    for key in keys:
        assert props.get("tessera." + key) == o.properties.get("openslide." + key), key
    assert "openslide.region[1].x" not in o.properties
    # tiff.* are the level-0 directory's (the main image's, not directory 0's), without the
    # XML
    for key in ("tiff.ImageDescription", "tiff.Software", "tiff.ResolutionUnit"):
        assert props.get(key) == o.properties.get(key), key
    assert props["tiff.ResolutionUnit"] == "centimeter"
    assert "tessera.comment" not in props and "openslide.comment" not in o.properties


# ---- pixels --------------------------------------------------------------------------


def _os_start(x, ds, off):
    """The level pixel OpenSlide 3.4.1 starts a region at, for level-0 coordinate x: a negative
    x moves the region by -x / ds rounded toward zero; else its position in the image (x / ds
    - offset) is rounded toward zero."""
    if x < 0:
        return -int(-x / ds)
    return int(x / ds - off) + off


def _coords(lx, ds, off):
    """Level-0 coordinates (for tessera, for OpenSlide) that start a region at level pixel lx
    in each reader. tessera takes floor(x / ds); OpenSlide rounds toward zero left of and
    above the image (_os_start), so there the two may need different x for the same pixels."""
    lo, hi = math.floor((lx - 1) * ds) - 1, math.ceil((lx + 1) * ds) + 1
    mine = [x for x in range(lo, hi + 1) if math.floor(x / ds) == lx]
    theirs = [x for x in range(lo, hi + 1) if _os_start(x, ds, off) == lx]
    both = [x for x in mine if x in theirs]
    return (both[0], both[0]) if both else (mine[0], theirs[0])


def _regions(W, H, ox, oy, iw, ih):
    """Regions of the image's extent (tile edges, its border, outside it), moved to where the
    image lies, and at the corners of the level."""
    out = [(lx + ox, ly + oy, w, h, label)
           for lx, ly, w, h, label in R.regions_for_level(iw, ih, TILE, TILE, seed=iw)
           if label not in ("whole-level", "whole-level-margin")]
    out += [(ox - 3, oy - 2, iw + 6, ih + 5, "image-and-margin"),
            (0, 0, 64, 48, "slide-origin"), (-5, -4, 30, 20, "before-slide"),
            (W - 40, H - 30, 60, 50, "slide-corner"), (ox - 500, oy + 5, 200, 30, "left-of-image")]
    return out


@pytest.mark.parametrize("name,level", [(n, lv) for n in NAMES for lv in range(3)])
def test_regions_equal_openslides(lib, files, name, level):
    """Byte-exact where OpenSlide has pixels; where it has none (around the image, outside
    the slide) tessera gives white with alpha 0 and OpenSlide alpha 0."""
    o = osl(files[name])
    with T.open_slide(files[name]) as s:
        W, H = s.level_dimensions()[level]
        ds = s.level_info(level).downsample
        ox, oy = int(s.properties["tessera.bounds-x"]), int(s.properties["tessera.bounds-y"])
        # the image's place and size in this level, as OpenSlide computes it
        nm_per_px = W0 * NMPP / [W0, W0 // 2, W0 // 4][level]
        offset_nm = {"scn": (1_234_567, 300_321), "old": (77_777, 1_999)}[name]
        lox, loy = int(offset_nm[0] / nm_per_px), int(offset_nm[1] / nm_per_px)
        ih, iw = [(H0, W0), (H0 // 2, W0 // 2), (H0 // 4, W0 // 4)][level]
        assert (lox, loy) == (ox, oy) or level > 0
        seen_inside = seen_outside = 0
        for lx, ly, w, h, label in _regions(W, H, lox, loy, iw, ih):
            (tx, osx), (ty, osy) = _coords(lx, ds, lox), _coords(ly, ds, loy)
            want = R.openslide_region(o, osx, osy, level, w, h)
            rgba = s.read_region(tx, ty, level, w, h, channels=4)
            inside = want[..., 3] == 255
            msg = R.describe_mismatch(rgba[..., :3], want[..., :3], inside,
                                      "%s level %d %s" % (name, level, label))
            assert msg is None, msg
            assert np.array_equal(rgba[..., 3], want[..., 3]), label
            assert (rgba[..., :3][~inside] == 255).all(), label
            seen_inside += int(inside.sum())
            seen_outside += int((~inside).sum())
        assert seen_inside > 0 and seen_outside > 0


def test_level0_is_the_main_image(lib, files, pieces):
    """Independently of OpenSlide: level 0 at the view's offset is the level-0 directory's
    pixels (decoded by PIL from the same JPEG tiles), not the other focal plane's."""
    import io
    from PIL import Image
    with T.open_slide(files["scn"]) as s:
        ox, oy = int(s.properties["tessera.bounds-x"]), int(s.properties["tessera.bounds-y"])
        assert (ox, oy) == (1_234_567 // NMPP, 300_321 // NMPP)
        got = s.read_region(ox, oy, 0, TILE, TILE)
    tile = np.asarray(Image.open(io.BytesIO(V.jpeg_tiles(pieces["levels"][0], TILE)[0])))
    assert np.array_equal(got, tile)


def test_missing_tile_reads_as_background(lib, files):
    """A tile stored with byte count 0 is background (alpha 0) in tessera; OpenSlide 3.4.1's
    Leica reader has no missing tiles and fails on it."""
    with T.open_slide(files["sparse"]) as s:
        ox, oy = int(s.properties["tessera.bounds-x"]), int(s.properties["tessera.bounds-y"])
        across = -(-W0 // TILE)
        x, y = ox + (5 % across) * TILE, oy + (5 // across) * TILE
        rgba = s.read_region(x, y, 0, TILE, TILE, channels=4)
        assert (rgba[..., :3] == 255).all() and (rgba[..., 3] == 0).all()
        assert s.read_region(x - TILE, y, 0, TILE, TILE).std() > 0
    with openslide.OpenSlide(files["sparse"]) as o:
        with pytest.raises(openslide.OpenSlideError):
            o.read_region((x, y), 0, (TILE, TILE))


# ---- associated images ---------------------------------------------------------------


def test_macro_equals_openslides(lib, files):
    o = osl(files["scn"])
    with T.open_slide(files["scn"]) as s:
        assert s.associated_names == list(o.associated_images) == ["macro"]
        want = np.asarray(o.associated_images["macro"].convert("RGBA"))
        assert s.associated_dimensions("macro") == (400, 200) == (want.shape[1], want.shape[0])
        assert np.array_equal(s.read_associated("macro", channels=4), want)
    with T.open_slide(files["old"]) as s:
        assert s.associated_names == list(osl(files["old"]).associated_images) == []


# ---- batches and bench ---------------------------------------------------------------


def _locations(props):
    ox, oy = int(props["tessera.bounds-x"]), int(props["tessera.bounds-y"])
    return [(ox, oy), (ox - 50, oy - 40), (ox + 200, oy + 230), (ox + W0 - 60, oy + H0 - 30),
            (0, 0), (ox + 500, oy + 100), (ox + 255, oy + 511), (-30, -30)]


@pytest.mark.parametrize("level", [0, 1])
def test_batches_equal_single_reads(lib, files, level):
    with T.open_slide(files["scn"]) as s:
        locs = _locations(s.properties)
    VC.check_batches_equal_single_reads(files["scn"], locs, (96, 80), level, batch_size=3)


def test_bench_checksum_equals_single_reads(lib, cli, files, tmp_path):
    with T.open_slide(files["scn"]) as s:
        locs = _locations(s.properties)
    VC.check_bench_checksum(cli, files["scn"], locs, (77, 53), 0, tmp_path)


# ---- damaged and hostile metadata -----------------------------------------------------


def _xml(**kw):
    return _scn_xml(_levels(np.zeros((H0, W0, 3), np.uint8)), **kw)


def _damaged():
    good = _xml()
    return {
        # name: (description, what the message must say)
        "truncated-xml": (good[:-30], "XML line"),
        "unclosed-element": (good.replace("</pixels>", "", 1), "XML line"),
        "no-collection": (good.replace("<collection", "<kollection").replace(
            "</collection>", "</kollection>"), "collection"),
        "no-view": (good.replace('<view sizeX="250750"', '<vue sizeX="250750"'), "view"),
        "bad-integer": (good.replace('offsetX="1234567"', 'offsetX="12x4"'), "integer"),
        "missing-integer": (good.replace(' ifd="2"', ""), "ifd"),
        "no-dimension": (good.replace('<dimension sizeX="1003" sizeY="757" ifd="1" z="0"/>',
                                      "").replace('<dimension sizeX="250" sizeY="189" ifd="2"/>',
                                                  "").replace(
            '<dimension sizeX="501" sizeY="378" ifd="3"/>', ""), "dimension"),
        "dimension-past-the-file": (good.replace('ifd="3"', 'ifd="99"'), "directory 99"),
        "zero-width": (good.replace('sizeX="501"', 'sizeX="0"'), "dimension"),
        "no-brightfield": (good.replace(">brightfield<", ">darkfield<"), "brightfield"),
        "two-main-images": (good.replace("fluorescence", "brightfield"), "main images"),
        "huge-collection": (good.replace('sizeX="2000000"', 'sizeX="9000000000000000000"'),
                            "collection"),
    }


DAMAGED = _damaged()


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, pieces):
    d = tmp_path_factory.mktemp("leica-damaged")
    out = {}
    for name, (xml, _) in DAMAGED.items():
        out[name] = str(d / (name + ".scn"))
        _write(out[name], pieces, xml)
    return out


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_metadata_fails_clearly(lib, cli, damaged, name):
    st, msg, s = T.open_status(damaged[name])
    assert s is None and st in (T.E_FORMAT, T.E_UNSUPPORTED, T.E_LIMIT), (st, msg)
    assert DAMAGED[name][1] in msg and "Leica" in msg, msg
    r = subprocess.run([cli, "info", damaged[name]], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Leica" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["truncated-xml", "no-view", "bad-integer", "no-brightfield",
                                  "missing-integer"])
def test_openslide_refuses_them_too(damaged, name):
    """The damaged files that OpenSlide also cannot open as Leica (the XML cut short it reads
    as a plain TIFF)."""
    try:
        vendor = openslide.OpenSlide(damaged[name]).properties["openslide.vendor"]
    except openslide.OpenSlideError:
        vendor = None
    assert vendor != "leica"


HOSTILE = {
    "deep-nesting": _xml().replace("<collection", "<a>" * 100000 + "<collection", 1),
    "billion-laughs": ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>'
                       '<scn xmlns="%s">&lol;</scn>' % V.LEICA_NS["2010/10/01"]),
    "many-images": _xml().replace("</collection>", "<image/>" * 300 + "</collection>"),
    "many-dimensions": _xml().replace(
        "</pixels>", '<dimension sizeX="1" sizeY="1" ifd="1"/>' * 100 + "</pixels>", 1),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_xml_fails_clearly(lib, tmp_path, pieces, name):
    path = str(tmp_path / (name + ".scn"))
    _write(path, pieces, HOSTILE[name])
    st, msg, s = T.open_status(path)
    assert s is None and st in (T.E_FORMAT, T.E_LIMIT), (st, msg)
    assert "Leica" in msg, msg


def test_other_root_in_the_namespace_fails_as_in_openslide(lib, tmp_path, pieces):
    path = str(tmp_path / "other-root.scn")
    _write(path, pieces, '<?xml version="1.0"?><other xmlns="%s"/>' % V.LEICA_NS["2010/10/01"])
    with pytest.raises(openslide.OpenSlideError):
        openslide.OpenSlide(path)
    st, msg, s = T.open_status(path)
    assert s is None and st == T.E_FORMAT and "Leica" in msg and "collection" in msg, msg


def test_a_prefixed_namespace_is_leicas_too(lib, tmp_path, pieces):
    """Elements are Leica's by their namespace, whatever its prefix (libxml2's XPath, in
    OpenSlide): the same document with every element prefixed reads the same."""
    import re
    xml = _scn_xml(pieces["levels"])
    prefixed = re.sub(r"<(/?)([a-zA-Z])", r"<\1l:\2", xml.split("\n", 1)[1]).replace(
        'xmlns="', 'xmlns:l="')
    path = str(tmp_path / "prefixed.scn")
    _write(path, pieces, prefixed)
    o = openslide.OpenSlide(path)
    with T.open_slide(path) as s:
        assert s.vendor == o.properties["openslide.vendor"] == "leica"
        assert s.level_dimensions() == list(o.level_dimensions)
        assert {k: v for k, v in s.properties.items() if k.startswith("leica.")} == \
            {k: v for k, v in o.properties.items() if k.startswith("leica.")}


@pytest.mark.parametrize("case", ["other-namespace", "namespace-on-a-child"])
def test_not_an_scn_document_is_generic_tiff_as_for_openslide(lib, tmp_path, pieces, case):
    ns = V.LEICA_NS["2010/10/01"]
    desc = ('<?xml version="1.0"?><scn xmlns="urn:x"><!-- %s --></scn>' % ns
            if case == "other-namespace" else
            '<?xml version="1.0"?><scn><collection xmlns="%s"/></scn>' % ns)
    path = str(tmp_path / (case + ".tiff"))
    _write(path, pieces, desc)
    assert openslide.OpenSlide(path).properties["openslide.vendor"] == "generic-tiff"
    with T.open_slide(path) as s:
        assert s.vendor == "generic-tiff"
        assert not any(k.startswith("leica.") for k in s.properties)


# ---- through tessera's libopenslide -------------------------------------------------------


def test_openslide_dropin_reads_as_openslide(lib, files, tmp_path):
    """Both OpenSlide fronts (openslide-python over tessera's libopenslide.so.0, and
    tessera.openslide) against Debian's OpenSlide: levels, every property, the macro, and
    every region of every level byte for byte. OpenSlide's smaller Leica levels have
    fractional downsamples; where a region starts between their pixels OpenSlide does not
    resample (as it does for other formats) but starts the image at a whole pixel, the origin
    less the image's offset truncated toward zero, and so do the fronts."""
    import openslide_dropin as D
    import tessera.openslide
    got = D.reads([files["scn"], files["old"]], tmp_path)
    D.check_reads_equal(got, lambda real, key: True, 20)
    between = 0
    for path, (real, _) in got.items():
        front = tessera.openslide.OpenSlide(path)
        for (dims, level, x, y, w, h), want in real["regions"].items():
            px = np.asarray(front.read_region((x, y), level, (w, h)))
            assert px.tobytes() == want, (path, level, x, y, w, h)
            a = np.frombuffer(want, np.uint8).reshape(h, w, 4)[..., 3]
            between += int(not D.whole_pixel(real, level, x, y) and (a == 255).any())
    assert between >= 4, between


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3, 0.6, 0.9, 0.999])
def test_truncated_copies_fail_cleanly(lib, cli, files, tmp_path, fraction):
    """A copy cut short: the open fails with a message, or the slide opens and each read
    either works or fails with a message; `tessera info` exits 0 or 1, never by a signal."""
    VC.check_truncated_copy(cli, files["scn"], str(tmp_path / "cut.scn"), fraction)


ASAN_ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=99",
                UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")


def test_commands_under_the_sanitizers(lib, cli, files, damaged, tmp_path):
    """`tessera info` and `tessera read` of every level (the plain build, and the ASan+UBSan
    one when TESSERA_CLI_ASAN names it) on the slides and the damaged copies: the slides read
    as the library reads them, the damaged ones fail with one line, nothing trips a
    sanitizer."""
    clis = [cli] + ([os.environ["TESSERA_CLI_ASAN"]] if os.environ.get("TESSERA_CLI_ASAN")
                    else [])
    for c in clis:
        for name, path in damaged.items():
            r = subprocess.run([c, "info", path], capture_output=True, text=True, env=ASAN_ENV,
                               timeout=300)
            assert r.returncode == 1 and "Sanitizer" not in r.stderr and \
                "runtime error" not in r.stderr, (c, name, r.stderr[-3000:])
        for name in NAMES:
            with T.open_slide(files[name]) as s:
                for level in range(s.level_count):
                    # across the image's top-left corner, into the background
                    x = int(s.properties["tessera.bounds-x"]) - 7 * 2 ** level
                    y = int(s.properties["tessera.bounds-y"]) - 5 * 2 ** level
                    want = s.read_region(x, y, level, 600, 400, channels=4)
                    out = str(tmp_path / "r.raw")
                    r = subprocess.run([c, "read", files[name], "--location", "%d,%d" % (x, y),
                                        "--size", "600,400", "--level", str(level),
                                        "--channels", "4", "--output", out],
                                       capture_output=True, text=True, env=ASAN_ENV, timeout=300)
                    assert r.returncode == 0 and "Sanitizer" not in r.stderr, (c, r.stderr[-3000:])
                    assert np.array_equal(np.fromfile(out, np.uint8).reshape(want.shape), want)


def test_cuda_batches_equal_cpu_batches_on_the_simulator(files):
    """device='cuda' on the CUDA simulator (test_gpu_sim.py): the placed image's tiles go to
    nvJPEG and are copied to where they lie; patches across the image's border, inside and
    outside it equal the CPU's, at every level."""
    from test_gpu_sim import run_checks
    out = run_checks("""
        img = CuImage(SLIDE)
        rng = np.random.default_rng(3)
        for level in range(3):
            ds = img.resolutions["level_downsamples"][level]
            x0, y0 = BOUNDS
            xs = rng.integers(x0 - 300, x0 + 1300, 23)
            ys = rng.integers(y0 - 300, y0 + 1000, 23)
            locs = np.stack([xs, ys], 1).astype(np.int64)
            same_batches(img, locs, level)
        print(sim.sim_decoded_images(), sim.sim_failures())
    """.replace("SLIDE", repr(files["scn"])).replace(
        "BOUNDS", repr((1_234_567 // NMPP, 300_321 // NMPP))))
    decoded, failures = map(int, out.split())
    assert decoded > 0 and failures == 0, out


# ---- several brightfield main images, composited into each level ------------------------
#
# OpenSlide 3.4.1 makes each level of all the main images together: the collection at the
# finest scale of their dimensions (nm per pixel, the least), each image's dimension placed
# at its view's offset (nm / nm per pixel, truncated), painted in the document's order with
# cairo's SATURATE operator, so that where they overlap the first image shows.

MCOLL = (600_000, 400_000)  # nm: 2400 x 1600 level-0 pixels


def _pyramid(w, h, x, y):
    base = V.source_rgb(w, h, x, y)
    return [base, V.reduce(base, 2), V.reduce(base, 4)]


@pytest.fixture(scope="module")
def mains():
    # odd sizes; each image's levels halve (rounded down) as a scanner's do
    return {"a": _pyramid(517, 389, 900, 300), "b": _pyramid(611, 433, 2500, 1800),
            "c": _pyramid(263, 301, 4000, 900)}


def _main_dims(levels, first_ifd):
    """A main image's dimensions, listed out of order, with another focal plane."""
    (w0, h0), (w1, h1), (w2, h2) = [(a.shape[1], a.shape[0]) for a in levels]
    return [(first_ifd + 1, w1, h1, None), (first_ifd, w0, h0, "0"),
            (first_ifd + 2, w2, h2, None), (first_ifd, w0, h0, "1")]


# name: the main images (key, nm offset), in document order
MULTI = {
    # b over a's lower right: a shows where they overlap
    "two-overlapping": [("a", (50_123, 40_077)), ("b", (150_321, 110_999))],
    # a, then c disjoint from it (a gap between), then b overlapping c
    "three": [("a", (20_000, 260_321)), ("c", (260_777, 30_001)), ("b", (310_333, 80_555))],
    # the same three the other way round: b first, so b shows over c
    "three-reversed": [("b", (310_333, 80_555)), ("c", (260_777, 30_001)),
                       ("a", (20_000, 260_321))],
    # an image reaching past the collection's right and bottom edges
    "past-the-edge": [("a", (10_000, 10_000)), ("b", (520_111, 330_999))],
}


def _multi_xml(mains, images, macro=True, fluo=True, edit=None):
    """The document: a macro (directories 0, 1), the main images (three directories each,
    from 2 on, in key order a, b, c), a fluorescence image between them (directory 11)."""
    first = {"a": 2, "b": 5, "c": 8}
    out = []
    if macro:
        out.append(V.leica_image([(0, 400, 200, None), (1, 100, 50, None)], MCOLL + (0, 0),
                                 objective=None))
    for n, (key, off) in enumerate(images):
        lv = mains[key]
        kw = edit(n, key) if edit else {}
        dims = kw.pop("dims", _main_dims(lv, first[key]))
        out.append(V.leica_image(dims, (lv[0].shape[1] * NMPP, lv[0].shape[0] * NMPP) + off,
                                 **kw))
        if n == 0 and fluo:
            out.append(V.leica_image([(11, 120, 90, None)], (30_000, 22_500, 5_000, 5_000),
                                     illumination="fluorescence", objective="40"))
    return V.leica_xml(MCOLL, out)


def _write_multi(path, pieces, mains, xml):
    res = 1e7 / NMPP
    dirs = [(pieces["macro"], 128, (), None), (pieces["macro_small"], 64, (), None)]
    for key in "abc":
        lv = mains[key]
        dirs += [(lv[0], TILE, (), res), (lv[1], 128, (), None), (lv[2], 64, (), None)]
    dirs.append((pieces["fluo"], 64, (), None))
    V.write_leica(path, dirs, xml)


@pytest.fixture(scope="module")
def multi(tmp_path_factory, pieces, mains):
    d = tmp_path_factory.mktemp("leica-multi")
    out = {}
    for name, images in MULTI.items():
        out[name] = str(d / (name + ".scn"))
        _write_multi(out[name], pieces, mains, _multi_xml(mains, images))
    return out


def _placement(mains, images):
    """Per level: (nm per pixel, [(x, y) of each image]) as OpenSlide computes them."""
    out = []
    for level in range(3):
        nmpp = min(mains[k][0].shape[1] * NMPP / mains[k][level].shape[1] for k, _ in images)
        out.append((nmpp, [(int(ox / nmpp), int(oy / nmpp)) for _, (ox, oy) in images]))
    return out


def _os_start_all(x, ds, offs):
    """The level pixel OpenSlide 3.4.1 starts a region at for level-0 coordinate x, when every
    image starts it at the same one (_os_start for each); None when they differ."""
    starts = {_os_start(x, ds, off) for off in offs}
    return starts.pop() if len(starts) == 1 else None


def _coords_all(lx, ds, offs):
    """Level-0 coordinates (tessera's, OpenSlide's) of a region at level pixel lx in each, or
    None where OpenSlide starts no region there for all images alike."""
    lo, hi = math.floor((lx - 1) * ds) - 1, math.ceil((lx + 1) * ds) + 1
    mine = [x for x in range(lo, hi + 1) if math.floor(x / ds) == lx]
    theirs = [x for x in range(lo, hi + 1) if _os_start_all(x, ds, offs) == lx]
    if not theirs:
        return None
    both = [x for x in mine if x in theirs]
    return (both[0], both[0]) if both else (mine[0], theirs[0])


def _multi_regions(W, H, places, sizes):
    out = [(0, 0, W, H, "whole-level"), (-3, -2, 50, 40, "before-slide"),
           (W - 40, H - 30, 60, 50, "slide-corner")]
    for n, ((ox, oy), (iw, ih)) in enumerate(zip(places, sizes)):
        out += [(lx + ox, ly + oy, w, h, "image %d %s" % (n, label))
                for lx, ly, w, h, label in R.regions_for_level(iw, ih, 64, 64, seed=n)
                if label not in ("whole-level", "whole-level-margin")]
        out.append((ox - 5, oy - 4, iw + 10, ih + 8, "image %d and margin" % n))
    return out


@pytest.mark.parametrize("name", sorted(MULTI))
def test_composited_levels_equal_openslides(lib, multi, mains, name):
    images = MULTI[name]
    o = osl(multi[name])
    assert o.properties["openslide.vendor"] == "leica"
    places = _placement(mains, images)
    with T.open_slide(multi[name]) as s:
        assert s.vendor == "leica" and s.level_count == 3
        assert s.level_dimensions() == list(o.level_dimensions)
        assert [s.level_info(i).downsample for i in range(3)] == list(o.level_downsamples)
        assert s.level_dimensions()[0] == (MCOLL[0] // NMPP, MCOLL[1] // NMPP)
        for level in range(3):
            W, H = s.level_dimensions()[level]
            ds = s.level_info(level).downsample
            offs = places[level][1]
            sizes = [(mains[k][level].shape[1], mains[k][level].shape[0]) for k, _ in images]
            compared = inside_px = whole = 0
            for lx, ly, w, h, label in _multi_regions(W, H, offs, sizes):
                cx = _coords_all(lx, ds, [x for x, _ in offs])
                cy = _coords_all(ly, ds, [y for _, y in offs])
                if cx is None or cy is None:
                    continue  # OpenSlide starts this region differently for each image
                (tx, osx), (ty, osy) = cx, cy
                want = R.openslide_region(o, osx, osy, level, w, h)
                rgba = s.read_region(tx, ty, level, w, h, channels=4)
                # OpenSlide paints an image reaching past the level's edge there too; tessera
                # keeps to the level, and is background (alpha 0) beyond it
                cols = np.arange(lx, lx + w)[None, :]
                rows = np.arange(ly, ly + h)[:, None]
                level_px = (cols >= 0) & (cols < W) & (rows >= 0) & (rows < H)
                inside = (want[..., 3] == 255) & level_px
                where = "%s level %d %s" % (name, level, label)
                msg = R.describe_mismatch(rgba[..., :3], want[..., :3], inside, where)
                assert msg is None, msg
                assert np.array_equal(rgba[..., 3][level_px], want[..., 3][level_px]), where
                assert (rgba[..., 3][~level_px] == 0).all(), where
                assert (rgba[..., :3][~inside] == 255).all(), where
                compared += 1
                whole += label == "whole-level"
                inside_px += int(inside.sum())
            # at levels 1 and 2 OpenSlide starts a region at another pixel of each image
            # unless they agree (_coords_all): fewer of them can be compared
            assert whole == 1 and compared >= (20 if level == 0 else 6) and inside_px > 0, (
                level, compared)


def test_the_first_image_shows_where_they_overlap(lib, multi, mains):
    """Independently of OpenSlide: in "two-overlapping", level 0 where a and b overlap is a's
    pixels (decoded by PIL from a's JPEG tiles), and right of a it is b's."""
    import io
    from PIL import Image
    (ax, ay), (bx, by) = _placement(mains, MULTI["two-overlapping"])[0][1]
    a, b = mains["a"][0], mains["b"][0]
    assert ax < bx < ax + a.shape[1] and ay < by < ay + a.shape[0]
    with T.open_slide(multi["two-overlapping"]) as s:
        got = s.read_region(ax, ay, 0, TILE, TILE)
        tile = np.asarray(Image.open(io.BytesIO(V.jpeg_tiles(a, TILE)[0])))
        assert np.array_equal(got, tile)
        # a's last tile column ends at ax + 517: there b starts showing
        over = s.read_region(bx, by, 0, ax + a.shape[1] - bx + 20, 16)
        right = over[:, ax + a.shape[1] - bx:]
        btile = np.asarray(Image.open(io.BytesIO(V.jpeg_tiles(b, TILE)[0])))
        assert np.array_equal(right, btile[:16, ax + a.shape[1] - bx:ax + a.shape[1] - bx + 20])
        assert not np.array_equal(over[:, :20], btile[:16, :20])


@pytest.mark.parametrize("name", sorted(MULTI))
def test_composited_properties_equal_openslides(lib, multi, name):
    o = osl(multi[name])
    with T.open_slide(multi[name]) as s:
        props = s.properties
    want = {k: v for k, v in o.properties.items() if k.startswith("leica.")}
    assert len(want) == 7 and {k: v for k, v in props.items() if k.startswith("leica.")} == want
    n = len(MULTI[name])
    keys = ["objective-power", "mpp-x", "mpp-y", "bounds-x", "bounds-y", "bounds-width",
            "bounds-height"] + ["region[%d].%s" % (i, k) for i in range(n)
                                for k in ("x", "y", "width", "height")]
    for key in keys:
        assert props.get("tessera." + key) == o.properties.get("openslide." + key), key
    assert "openslide.region[%d].x" % n not in o.properties
    assert "tessera.region[%d].x" % n not in props


def test_composited_through_the_dropin(lib, multi, mains, tmp_path):
    """Both OpenSlide fronts over tessera (openslide-python over libtessera-openslide, and
    tessera.openslide) give OpenSlide 3.4.1's every property (quickhash-1 of the macro, as
    OpenSlide hashes a slide of several main images), levels, the macro, and every region
    byte for byte: regions past the level's edge (where OpenSlide paints an image reaching
    past the collection's edge beyond the level, "past-the-edge"), and regions at levels 1
    and 2 from an origin between the level's pixels (OpenSlide starts each image at its own
    whole pixel, the origin truncated image by image)."""
    import openslide_dropin as D
    import tessera.openslide
    got = D.reads([multi[n] for n in sorted(MULTI)], tmp_path)
    D.check_reads_equal(got, lambda real, key: True, 20)
    beyond = between = 0
    for name in sorted(MULTI):
        path = multi[name]
        real = got[path][0]
        front = tessera.openslide.OpenSlide(path)
        regions = dict(real["regions"])
        # and across each image's corners, at each level, from origins between pixels
        o = osl(path)
        for level, (nmpp, offs) in enumerate(_placement(mains, MULTI[name])):
            ds = o.level_downsamples[level]
            (W, H) = o.level_dimensions[level]
            for n, ((ox, oy), (key, _)) in enumerate(zip(offs, MULTI[name])):
                ih, iw = mains[key][level].shape[:2]
                for lx, ly in ((ox - 7, oy - 5), (ox + iw - 40, oy + ih - 30)):
                    for fx, fy in ((0, 0), (0.5, 0.25), (0.75, 0)) if level else ((0, 0),):
                        x, y = int((lx + fx) * ds), int((ly + fy) * ds)
                        k = ((W, H), level, x, y, 90, 70)
                        regions[k] = o.read_region((x, y), level, (90, 70)).tobytes()
        for (dims, level, x, y, w, h), want in regions.items():
            got_px = np.asarray(front.read_region((x, y), level, (w, h)))
            assert got_px.tobytes() == want, (name, level, x, y, w, h)
            a = np.frombuffer(want, np.uint8).reshape(h, w, 4)[..., 3]
            ds = real["levels"][level][1]
            lx, ly = int(x / ds), int(y / ds)
            W, H = dims
            if x >= 0 and y >= 0:
                beyond += int(a[:, max(W - lx, 0):].any() or a[max(H - ly, 0):].any())
            between += int(level > 0 and (x % ds != 0 or y % ds != 0) and (a == 255).any())
    # some regions show pixels past the level's edge, some are painted between pixels
    assert beyond >= 3 and between >= 10, (beyond, between)


def test_past_the_edge_front_and_own_reads_in_turns(lib, multi, mains):
    """In one process (one tile cache), tessera's own reads (cut at the level's edge) and
    tessera.openslide's (painted past it, as OpenSlide) of the tiles an image has across the
    level's edge, in turns: each gives its own pixels, whichever read cached the tile first."""
    import tessera
    import tessera.openslide
    path = multi["past-the-edge"]
    o = osl(path)
    places = _placement(mains, MULTI["past-the-edge"])
    for level in range(3):
        bx, by = places[level][1][1]
        W, H = o.level_dimensions[level]
        ds = o.level_downsamples[level]
        x, y = max(W - 150, bx + 5), max(H - 120, by + 5)  # across the corner, inside b
        cw, ch = W - x, H - y  # the part inside the level
        assert 0 < cw < 300 and 0 < ch < 240
        # level-0 coordinates on level pixel (x, y) for tessera (floor) and OpenSlide alike
        X, Y = math.ceil(x * ds), math.ceil(y * ds)
        want = np.asarray(o.read_region((X, Y), level, (300, 240)))
        assert (want[ch:, cw:, 3] == 255).any()  # b past the level's corner
        front = tessera.openslide.OpenSlide(path)
        with tessera.CuImage(path) as img:
            for turn in range(4):
                own = np.asarray(img.read_region((X, Y), (300, 240), level,
                                                 channels=4))
                got = np.asarray(front.read_region((X, Y), level,
                                                   (300, 240)))
                assert np.array_equal(got, want), (level, turn)
                assert (own[ch:, :, 3] == 0).all() and (own[:, cw:, 3] == 0).all()
                assert np.array_equal(own[:ch, :cw], want[:ch, :cw]), (level, turn)
        front.close()


def _multi_locations(s):
    """Level-0 places across each image's corners and inside it, in the gaps and outside."""
    p = s.properties
    out = [(0, 0), (2300, 1500), (-30, -30)]
    n = 0
    while "tessera.region[%d].x" % n in p:
        x, y, w, h = (int(p["tessera.region[%d].%s" % (n, k)]) for k in ("x", "y", "width",
                                                                         "height"))
        out += [(x - 50, y - 40), (x + w // 3, y + h // 2), (x + w - 60, y + h - 30),
                (x + 200, y + 100)]
        n += 1
    return out


@pytest.mark.parametrize("name,level", [("three", 0), ("three", 1), ("two-overlapping", 2)])
def test_composited_batches_equal_single_reads(lib, multi, name, level):
    with T.open_slide(multi[name]) as s:
        locs = _multi_locations(s)
    VC.check_batches_equal_single_reads(multi[name], locs, (96, 80), level, batch_size=4)


def test_composited_bench_checksum_equals_single_reads(lib, cli, multi, tmp_path):
    with T.open_slide(multi["three"]) as s:
        locs = _multi_locations(s)
    VC.check_bench_checksum(cli, multi["three"], locs, (77, 53), 0, tmp_path)


def test_two_images_of_the_same_directories(lib, tmp_path, pieces):
    """Two main images naming the same directories (at other offsets): OpenSlide composites
    them as it would two images; so does tessera."""
    xml = _scn_xml(pieces["levels"])
    main = xml[xml.index("<image", xml.index("<image") + 1):]
    main = main[:main.index("</image>") + len("</image>")]
    second = main.replace('offsetX="1234567"', 'offsetX="100000"')
    path = str(tmp_path / "two.scn")
    _write(path, pieces, xml.replace(main, main + second))
    o = openslide.OpenSlide(path)
    with T.open_slide(path) as s:
        assert s.level_dimensions() == list(o.level_dimensions)
        for key in ("bounds-x", "bounds-width", "region[1].x", "region[1].y"):
            assert s.properties["tessera." + key] == o.properties["openslide." + key]
        for level in range(3):
            W, H = s.level_dimensions()[level]
            want = R.openslide_region(o, 0, 0, level, W, H)
            got = s.read_region(0, 0, level, W, H, channels=4)
            assert np.array_equal(got[..., 3], want[..., 3]), level
            inside = want[..., 3] == 255
            assert np.array_equal(got[..., :3][inside], want[..., :3][inside]), level


# the first image inside the collection; the second, of the same directories, reaching past
# its right and bottom edges (level 0: at 7500, 3500 of 8000 x 4000, 1003 x 757 pixels)
SHARED_DIRS = ((1_550_000, 700_000), (1_875_000, 875_000))


def _shared_dirs_file(path, pieces):
    (fx, fy), (sx, sy) = SHARED_DIRS
    xml = _scn_xml(pieces["levels"], offset=(fx, fy))
    main = xml[xml.index("<image", xml.index("<image") + 1):]
    main = main[:main.index("</image>") + len("</image>")]
    second = main.replace('offsetX="%d"' % fx, 'offsetX="%d"' % sx).replace(
        'offsetY="%d"' % fy, 'offsetY="%d"' % sy)
    assert second != main
    _write(path, pieces, xml.replace(main, main + second))


@pytest.mark.parametrize("kind", [T.CACHE_PER_PROCESS, T.CACHE_SHARED_MEMORY],
                         ids=["per_process", "shared_memory"])
def test_an_image_cut_at_the_edge_shares_no_cut_tiles_through_the_cache(lib, tmp_path, pieces,
                                                                        kind):
    """Two main images naming the same directories (OpenSlide composites them), the second
    reaching past the collection's right and bottom edges: tessera cuts its edge tiles at the
    level's edge, where the first image's same tiles (same directory, same tile index) are
    whole. The tile cache, keyed by file, directory and tile index, must not serve one image's
    cut tile to the other: reads through a cache (per-process or shared) equal reads without one,
    whichever image is read first (or both in one read, where the cut one is painted first),
    at every level; and those equal OpenSlide 3.4.1's pixels inside the level."""
    path = str(tmp_path / "shared-dirs.scn")
    _shared_dirs_file(path, pieces)
    o = openslide.OpenSlide(path)
    assert o.properties["openslide.vendor"] == "leica"
    sizes = [(a.shape[1], a.shape[0]) for a in pieces["levels"]]
    name = ("tessera-pytest-%d-leica-shared-dirs" % os.getpid()
            if kind == T.CACHE_SHARED_MEMORY else None)
    try:
        with T.open_slide(path) as s:
            assert s.level_dimensions() == list(o.level_dimensions)
            regions = {}  # (level, which): (level-0 x, y, w, h)
            compared = 0
            for level in range(3):
                W, H = s.level_dimensions()[level]
                ds = s.level_info(level).downsample
                nmpp = NMPP * sizes[0][0] / sizes[level][0]
                (ax, ay), (bx, by) = [(int(x / nmpp), int(y / nmpp)) for x, y in SHARED_DIRS]
                iw, ih = sizes[level]
                assert ax + iw < W and ay + ih < H and bx < W < bx + iw and by < H < by + ih
                for which, (lx, ly, w, h) in (("first", (ax - 5, ay - 4, iw + 10, ih + 8)),
                                              ("second", (bx - 5, by - 4, iw + 10, ih + 8)),
                                              ("both", (ax - 5, ay - 4, W - ax + 20,
                                                        H - ay + 20))):
                    regions[level, which] = (math.ceil(lx * ds), math.ceil(ly * ds), w, h)
                    # against OpenSlide, where it starts the region at the same pixels
                    cx, cy = _coords_all(lx, ds, [ax, bx]), _coords_all(ly, ds, [ay, by])
                    if cx is None or cy is None:
                        continue
                    (tx, osx), (ty, osy) = cx, cy
                    want = R.openslide_region(o, osx, osy, level, w, h)
                    got = s.read_region(tx, ty, level, w, h, channels=4)
                    cols = np.arange(lx, lx + w)[None, :]
                    rows = np.arange(ly, ly + h)[:, None]
                    level_px = (cols < W) & (rows < H)
                    inside = (want[..., 3] == 255) & level_px
                    where = "level %d %s" % (level, which)
                    assert inside.any(), where
                    msg = R.describe_mismatch(got[..., :3], want[..., :3], inside, where)
                    assert msg is None, msg
                    assert np.array_equal(got[..., 3][level_px], want[..., 3][level_px]), where
                    assert (got[..., 3][~level_px] == 0).all(), where
                    compared += 1
            assert compared >= 6, compared
            T.configure_cache(T.CACHE_NONE)
            plain = {k: s.read_region(r[0], r[1], k[0], r[2], r[3], channels=4)
                     for k, r in regions.items()}
            for order in (("second", "first", "both"), ("first", "second", "both"),
                          ("both", "first", "second")):
                T.configure_cache(kind, memory_capacity_mib=64, name=name)
                for level in range(3):
                    for which in order:
                        x, y, w, h = regions[level, which]
                        got = s.read_region(x, y, level, w, h, channels=4)
                        msg = R.describe_mismatch(got, plain[level, which], None,
                                                  "%s: level %d %s" % (order, level, which))
                        assert msg is None, msg
                st = T.cache_stats()
                assert st["hits"] > 0, (order, st)
                T.configure_cache(T.CACHE_NONE)
                if name and os.path.exists("/dev/shm/" + name):
                    T.shared_cache_remove(name, force=True)  # a fresh one for each order
    finally:
        T.configure_cache(T.CACHE_NONE)
        if name and os.path.exists("/dev/shm/" + name):
            T.shared_cache_remove(name, force=True)


def _second(n, key, **kw):
    return kw if n == 1 else {}


# name: (edit of the main images, OpenSlide's words, tessera's status, macro)
MULTI_DAMAGED = {
    "dissimilar-objective": (lambda n, k: _second(n, k, objective="40"),
                             "dissimilar main images", T.E_UNSUPPORTED, True),
    "dissimilar-levels": (lambda n, k: _second(n, k, dims=[(6, 305, 216, None),
                                                           (5, 611, 433, "0")]),
                          "dissimilar main images", T.E_UNSUPPORTED, True),
    "inconsistent-resolution": (lambda n, k: _second(n, k, dims=[(6, 400, 216, None),
                                                                 (5, 611, 433, "0"),
                                                                 (7, 152, 108, None)]),
                                "Inconsistent main image resolutions", T.E_UNSUPPORTED, True),
    "no-macro": (None, "quickhash", T.E_FORMAT, False),
}


@pytest.mark.parametrize("name", sorted(MULTI_DAMAGED))
def test_dissimilar_main_images_fail_as_in_openslide(lib, tmp_path, pieces, mains, name):
    edit, words, status, macro = MULTI_DAMAGED[name]
    path = str(tmp_path / (name + ".scn"))
    _write_multi(path, pieces, mains, _multi_xml(mains, MULTI["two-overlapping"], macro=macro,
                                                 edit=edit))
    with pytest.raises(openslide.OpenSlideError) as e:
        openslide.OpenSlide(path)
    assert words in str(e.value), str(e.value)
    st, msg, s = T.open_status(path)
    assert s is None and st == status, (st, msg)
    assert "Leica" in msg and (words in msg or "macro" in msg), msg


def test_composited_cuda_batches_equal_cpu_batches_on_the_simulator(multi):
    """device='cuda' on the CUDA simulator (test_gpu_sim.py): a composite level's patches are
    painted on the CPU and copied to the device; they equal the CPU's at every level, across
    the images, their overlap and the gaps."""
    from test_gpu_sim import run_checks
    out = run_checks("""
        img = CuImage(SLIDE)
        rng = np.random.default_rng(5)
        for level in range(3):
            xs = rng.integers(-100, 2400, 29)
            ys = rng.integers(-100, 1600, 29)
            locs = np.stack([xs, ys], 1).astype(np.int64)
            for want in same_batches(img, locs, level):
                assert np.concatenate(want).std() > 0
        print(sim.sim_failures())
    """.replace("SLIDE", repr(multi["three"])))
    assert int(out.split()[-1]) == 0, out


def test_composited_commands_under_the_sanitizers(lib, cli, multi, pieces, mains, tmp_path):
    """`tessera read` of every level of the composite slides across their images (and `info`
    of the dissimilar ones), under the plain build and the ASan+UBSan one when
    TESSERA_CLI_ASAN names it: the reads equal the library's, nothing trips a sanitizer."""
    clis = [cli] + ([os.environ["TESSERA_CLI_ASAN"]] if os.environ.get("TESSERA_CLI_ASAN")
                    else [])
    bad = str(tmp_path / "dissimilar.scn")
    _write_multi(bad, pieces, mains, _multi_xml(mains, MULTI["three"],
                                                edit=lambda n, k: _second(n, k, objective="5")))
    for c in clis:
        r = subprocess.run([c, "info", bad], capture_output=True, text=True, env=ASAN_ENV,
                           timeout=300)
        assert r.returncode == 1 and "dissimilar" in r.stderr and "Sanitizer" not in r.stderr \
            and "runtime error" not in r.stderr, (c, r.stderr[-3000:])
        for name, (x, y) in (("three", (1000, 300)), ("past-the-edge", (1900, 1100))):
            with T.open_slide(multi[name]) as s:
                for level in range(s.level_count):
                    want = s.read_region(x, y, level, 900, 700, channels=4)
                    out = str(tmp_path / "r.raw")
                    r = subprocess.run([c, "read", multi[name], "--location", "%d,%d" % (x, y),
                                        "--size", "900,700", "--level", str(level),
                                        "--channels", "4", "--output", out],
                                       capture_output=True, text=True, env=ASAN_ENV, timeout=300)
                    assert r.returncode == 0 and "Sanitizer" not in r.stderr and \
                        "runtime error" not in r.stderr, (c, r.stderr[-3000:])
                    assert np.array_equal(np.fromfile(out, np.uint8).reshape(want.shape), want)
                    assert (want[..., 3] == 255).any()


def test_a_missing_tile_shows_what_lies_beneath(lib, tmp_path, pieces, mains):
    """A tile the first image leaves out (byte count 0) where it overlaps the second shows the
    second image there, and background elsewhere, as if the first had no pixels there.
    (OpenSlide 3.4.1 fails a read of a missing Leica tile: the second image alone, read by
    tessera as OpenSlide reads it, is what is expected.)"""
    images = MULTI["two-overlapping"]
    res = 1e7 / NMPP
    paths = {}
    for name, imgs, skip in (("sparse", images, (4,)), ("b-only", images[1:], ())):
        dirs = [(pieces["macro"], 128, (), None), (pieces["macro_small"], 64, (), None)]
        for key in "abc":
            lv = mains[key]
            dirs += [(lv[0], TILE, skip if key == "a" else (), res), (lv[1], 128, (), None),
                     (lv[2], 64, (), None)]
        dirs.append((pieces["fluo"], 64, (), None))
        paths[name] = str(tmp_path / (name + ".scn"))
        V.write_leica(paths[name], dirs, _multi_xml(mains, imgs))
    (ax, ay), (bx, by) = _placement(mains, images)[0][1]
    x, y = ax + TILE, ay + TILE  # a's tile 4 (column 1, row 1 of 3 x 2)
    w, h = TILE, mains["a"][0].shape[0] - TILE
    with T.open_slide(paths["sparse"]) as s, T.open_slide(paths["b-only"]) as b:
        got = s.read_region(x, y, 0, w, h, channels=4)
        want = b.read_region(x, y, 0, w, h, channels=4)
        assert (want[..., 3] == 255).any() and (want[..., 3] == 0).any()
        assert np.array_equal(got, want)
        # and next to it, a's pixels as in the whole slide
        left = s.read_region(ax, y, 0, TILE, h, channels=4)
        assert (left[..., 3] == 255).all() and left[..., :3].std() > 0


@pytest.mark.parametrize("name", ["two-overlapping", "three"])
def test_composited_through_the_python_openslide_front(lib, multi, mains, name):
    """tessera.openslide (openslide-python's API over tessera) shows OpenSlide 3.4.1's whole
    property table for a composite slide, and its pixels where the images overlap (level 0)
    and on a whole smaller level."""
    import tessera.openslide
    path = multi[name]
    o = openslide.OpenSlide(path)
    t = tessera.openslide.OpenSlide(path)
    want, got = dict(o.properties), dict(t.properties)
    assert got == want, set(got.items()) ^ set(want.items())
    assert t.level_dimensions == o.level_dimensions
    x, y = _placement(mains, MULTI[name])[0][1][-1]
    a = np.asarray(t.read_region((x - 40, y - 30), 0, (300, 200)))
    assert np.array_equal(a, R.openslide_region(o, x - 40, y - 30, 0, 300, 200))
    W, H = o.level_dimensions[2]
    assert np.array_equal(np.asarray(t.read_region((0, 0), 2, (W, H))),
                          R.openslide_region(o, 0, 0, 2, W, H))
