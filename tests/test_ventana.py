"""Ventana BIF and Ventana TIFF, on slides written at test time (vendor_writers.write_ventana:
JPEG tiles from real slide pixels, the <iScan> XMLPacket on the first directory, levels
described "level=N mag=M", a macro and a thumbnail, and for BIF level 0's <EncodeInfo> with
two scanned areas, an unscanned one and the joints between tiles) that Debian's OpenSlide 3.4.1
opens as Ventana: levels (the BIF placed at its areas' origin), pixels on every level across
tile edges and the borders byte for byte, properties, associated images; BIFs whose tiles
overlap (a whole or fractional mean overlap: tiles between pixels), whose areas are off one
grid or leave tiles out, byte for byte too, through both OpenSlide fronts as well; damaged
and hostile metadata fail cleanly; batches and `tessera bench` give what single reads give."""

import os
import subprocess

import numpy as np
import openslide
import pytest

import tessera_ctypes as T
import vendor_checks as VC
import vendor_writers as V
import wsi_refs as R

TILE = 256
W0, H0 = 1000, 700  # level 0's directory: 4 x 3 tiles, the last ones cut
MAGS = ["40", "20", "10"]
AREAS = [(0, 0, 2, 3, 100, 50), (2, 0, 2, 3, 612, 50)]  # the second continues the first's grid


@pytest.fixture(scope="module")
def pieces():
    base = V.source_rgb(W0, H0, 200, 100)
    return dict(levels=[base, V.reduce(base, 2), V.reduce(base, 4)],
                 macro=V.source_rgb(300, 120, 1500, 1700), thumb=V.source_rgb(160, 112, 0, 0))


def _bif(path, pieces, encode=None, iscan=None, **kw):
    V.write_ventana(path, iscan or V.ventana_iscan(), pieces["levels"], TILE, MAGS,
                    encode_info=encode or V.bif_encode_info(AREAS, TILE, [2, -2], [1.5, -1.5],
                                                            unscanned=1),
                    macro=pieces["macro"], thumbnail=pieces["thumb"], **kw)


@pytest.fixture(scope="module")
def files(tmp_path_factory, pieces):
    d = tmp_path_factory.mktemp("ventana")
    out = {"bif": str(d / "slide.bif"), "tif": str(d / "slide.tif")}
    _bif(out["bif"], pieces)
    V.write_ventana(out["tif"], V.ventana_iscan(root="Metadata"), pieces["levels"], TILE, MAGS,
                    macro=pieces["macro"], thumbnail=pieces["thumb"], macro_desc="Label Image")
    return out


NAMES = ["bif", "tif"]


def osl(path):
    return R.openslide_open(path)


# ---- what the file is ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_levels_equal_openslides(lib, files, name):
    o = osl(files[name])
    assert o.properties["openslide.vendor"] == "ventana"
    with T.open_slide(files[name]) as s:
        assert s.vendor == "ventana"
        assert s.level_dimensions() == list(o.level_dimensions)
        assert [s.level_info(i).downsample for i in range(s.level_count)] == \
            list(o.level_downsamples) == [1.0, 2.0, 4.0]
        assert s.background == 255
    if name == "bif":  # the grid at its origin (100, 0): wider than the directory
        assert list(o.level_dimensions)[0] == (100 + 4 * TILE, 3 * TILE)


@pytest.mark.parametrize("name", NAMES)
def test_properties_equal_openslides(lib, files, name):
    o = osl(files[name])
    with T.open_slide(files[name]) as s:
        props = s.properties
    want = {k: v for k, v in o.properties.items() if k.startswith("ventana.")}
    got = {k: v for k, v in props.items() if k.startswith("ventana.")}
    assert len(want) == 5 and got == want  # the empty SlideAnnotation is left out
    for key in ("mpp-x", "mpp-y"):
        assert float(props["tessera." + key]) == pytest.approx(
            float(o.properties["openslide." + key]), rel=1e-12) == 0.2325
    region_keys = sorted(k for k in o.properties if k.startswith("openslide.region["))
    assert len(region_keys) == (8 if name == "bif" else 0)
    for key in region_keys + ["openslide.objective-power", "openslide.comment"]:
        assert props.get("tessera." + key[len("openslide."):]) == o.properties[key], key
    for key in ("tiff.ImageDescription", "tiff.Software"):
        assert props.get(key) == o.properties.get(key), key


# ---- pixels --------------------------------------------------------------------------


@pytest.mark.parametrize("name,level", [(n, lv) for n in NAMES for lv in range(3)])
def test_regions_equal_openslides(lib, files, name, level):
    """Byte-exact where OpenSlide has pixels; where it has none (left of the BIF's grid, past
    the directories' edges, outside the slide) tessera gives white with alpha 0."""
    o = osl(files[name])
    with T.open_slide(files[name]) as s:
        W, H = s.level_dimensions()[level]
        ds = s.level_info(level).downsample
        seen_inside = seen_outside = 0
        for lx, ly, w, h, label in R.regions_for_level(W, H, TILE // 2, TILE // 2, seed=level):
            x, y = int(lx * ds), int(ly * ds)
            want = R.openslide_region(o, x, y, level, w, h)
            rgba = s.read_region(x, y, level, w, h, channels=4)
            inside = want[..., 3] == 255
            msg = R.describe_mismatch(rgba[..., :3], want[..., :3], inside,
                                      "%s level %d %s" % (name, level, label))
            assert msg is None, msg
            assert np.array_equal(rgba[..., 3], want[..., 3]), label
            assert (rgba[..., :3][~inside] == 255).all(), label
            seen_inside += int(inside.sum())
            seen_outside += int((~inside).sum())
        assert seen_inside > 0 and seen_outside > 0


# ---- associated images ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_associated_images_equal_openslides(lib, files, name, pieces):
    o = osl(files[name])
    with T.open_slide(files[name]) as s:
        assert sorted(s.associated_names) == sorted(o.associated_images) == ["macro",
                                                                             "thumbnail"]
        for image in ("macro", "thumbnail"):
            want = np.asarray(o.associated_images[image].convert("RGBA"))
            assert np.array_equal(s.read_associated(image, channels=4), want), image
        assert np.array_equal(s.read_associated("macro"), pieces["macro"])  # lossless strips


# ---- BIFs whose tiles lie between pixels or off one grid ----------------------------
#
# OpenSlide places a BIF's tiles at their area's position plus the advance (the tile less the
# confidence-weighted mean overlap) per tile, and on a level of downsample d at 1/d of that:
# where that is not whole pixels, or the areas are not on one grid, or leave tiles out,
# tiles lie between pixels, overlap, or leave gaps. tessera places them the same way and
# paints them as OpenSlide paints them (codec/mosaic.c: cairo's bilinear and SATURATE in
# pixman's arithmetic; BIF tiles reach cairo with alpha, so always the floating-point path).

PLACED = {
    # a whole overlap of 10: level 0 on whole pixels, level 2's advance 61.5
    "overlap": lambda: V.bif_encode_info(AREAS, TILE, [10], [0]),
    # mean overlaps of 9.33 across and 3.5 down: every level between pixels
    "fractional": lambda: V.bif_encode_info(AREAS, TILE, [10, 11, 7], [3, 4]),
    # the second area off the first's grid (and the overlaps fractional)
    "off-grid": lambda: V.bif_encode_info([AREAS[0], (2, 0, 2, 3, 601, 61)], TILE,
                                          [10.25, 3], [2.5]),
    "off-grid-whole": lambda: V.bif_encode_info([AREAS[0], (2, 0, 2, 3, 650, 50)], TILE,
                                                [0], [0]),
    # one area: the directory's tiles right of it in no area
    "uncovered": lambda: V.bif_encode_info(AREAS[:1], TILE, [0], [0]),
}


@pytest.fixture(scope="module")
def placed(tmp_path_factory, pieces):
    d = tmp_path_factory.mktemp("ventana-placed")
    out = {}
    for name, encode in PLACED.items():
        out[name] = str(d / (name + ".bif"))
        _bif(out[name], pieces, encode=encode())
    return out


def _placed_regions(W, H, level):
    out = list(R.regions_for_level(W, H, TILE // 2, TILE // 2, seed=20 + level))
    rng = np.random.default_rng(level)
    for i in range(12):  # odd level coordinates (odd level-0 ones on level 0)
        w, h = int(rng.integers(1, 200)), int(rng.integers(1, 150))
        out.append((int(rng.integers(-w // 2, W)) | 1, int(rng.integers(-h // 2, H)) | 1, w, h,
                    "odd-%d" % i))
    return out


@pytest.mark.parametrize("name", sorted(PLACED))
def test_placed_bifs_are_openslides_levels_and_properties(lib, placed, name):
    o = osl(placed[name])
    with T.open_slide(placed[name]) as s:
        assert s.vendor == "ventana"
        assert s.level_dimensions() == list(o.level_dimensions)
        assert [s.level_info(i).downsample for i in range(s.level_count)] == \
            list(o.level_downsamples)
        props = s.properties
    for key in [k for k in o.properties if k.startswith("openslide.region[")] + [
            "openslide.objective-power", "openslide.comment"]:
        assert props.get("tessera." + key[len("openslide."):]) == o.properties[key], key
    assert {k: v for k, v in props.items() if k.startswith("ventana.")} == \
        {k: v for k, v in o.properties.items() if k.startswith("ventana.")}


@pytest.mark.parametrize("name,level", [(n, lv) for n in sorted(PLACED) for lv in range(3)])
def test_placed_bifs_equal_openslides(lib, placed, name, level):
    """Byte-exact inside the level where OpenSlide painted anything (alpha > 0: tiles' edges
    between pixels, partly covered, included), alpha everywhere inside it; white with alpha 0
    where it painted nothing (gaps, outside)."""
    o = osl(placed[name])
    partial = 0
    with T.open_slide(placed[name]) as s:
        W, H = s.level_dimensions()[level]
        ds = s.level_info(level).downsample
        for lx, ly, w, h, label in _placed_regions(W, H, level):
            x, y = int(lx * ds), int(ly * ds)
            want = R.openslide_region(o, x, y, level, w, h)
            rgba = s.read_region(x, y, level, w, h, channels=4)
            yy, xx = np.mgrid[ly:ly + h, lx:lx + w]
            in_level = (xx >= 0) & (yy >= 0) & (xx < W) & (yy < H)
            painted = (want[..., 3] > 0) & in_level
            msg = R.describe_mismatch(rgba[..., :3], want[..., :3], painted,
                                      "%s level %d %s" % (name, level, label))
            assert msg is None, msg
            assert np.array_equal(rgba[..., 3], want[..., 3]), label
            assert (rgba[..., :3][~painted] == 255).all(), label
            partial += int((painted & (want[..., 3] < 255)).sum())
    if name in ("fractional", "off-grid"):
        assert partial > 0  # tiles' edges between pixels were compared


@pytest.mark.parametrize("level", [0, 1, 2])
def test_placed_batches_equal_single_reads(lib, placed, level):
    VC.check_batches_equal_single_reads(placed["fractional"], LOCS, (96, 80), level,
                                        batch_size=3)


def test_placed_bench_checksum_equals_single_reads(lib, cli, placed, tmp_path):
    VC.check_bench_checksum(cli, placed["off-grid"], LOCS, (77, 53), 1, tmp_path)


def test_placed_openslide_dropin_reads_as_openslide(lib, placed, tmp_path):
    """openslide-python over tessera's libopenslide.so.0 and tessera.openslide against
    Debian's OpenSlide: levels, every property (quickhash-1 included), the associated images,
    and every region, from origins between a level's pixels too."""
    import openslide_dropin as D
    import tessera.openslide
    paths = [placed[n] for n in sorted(PLACED)]
    got = D.reads(paths, tmp_path)
    D.check_reads_equal(got, lambda real, key: True, 40)
    between = 0
    for path in paths:
        real = got[path][0]
        front = tessera.openslide.OpenSlide(path)
        assert dict(front.properties) == real["properties"]
        for (dims, level, x, y, w, h), want in real["regions"].items():
            region = np.asarray(front.read_region((x, y), level, (w, h)))
            assert region.tobytes() == want, (path, level, x, y, w, h)
            between += not D.whole_pixel(real, level, x, y)
    assert between > 20


# ---- batches and bench ---------------------------------------------------------------


LOCS = [(0, 0), (90, 40), (300, 200), (612, 500), (1000, 600), (-20, -10), (355, 511)]


@pytest.mark.parametrize("name,level", [("bif", 0), ("bif", 1), ("tif", 0)])
def test_batches_equal_single_reads(lib, files, name, level):
    VC.check_batches_equal_single_reads(files[name], LOCS, (96, 80), level, batch_size=3)


def test_bench_checksum_equals_single_reads(lib, cli, files, tmp_path):
    VC.check_bench_checksum(cli, files["bif"], LOCS, (77, 53), 0, tmp_path)


# ---- damaged and hostile metadata -----------------------------------------------------


def _encode(**kw):
    return V.bif_encode_info(AREAS, TILE, [2, -2], [1.5, -1.5], **kw)


DAMAGED = {
    # name: (keywords for _bif, what the message must say)
    "truncated-iscan": (dict(iscan=V.ventana_iscan()[:-5]), "XML line"),
    "truncated-encode-info": (dict(encode=_encode()[:-40]), "XML line"),
    "tile-size": (dict(encode=_encode().replace('Width="256"', 'Width="512"', 1)), "tiles are"),
    "origin-off-tile": (dict(encode=_encode().replace('OriginX="512"', 'OriginX="500"')),
                        "origin"),
    "bad-direction": (dict(encode=_encode().replace('"RIGHT"', '"LEFT"', 1)), "Direction"),
    "tile-out-of-range": (dict(encode=_encode().replace('Tile2="2"', 'Tile2="99"', 1)),
                          "tile 99"),
    "not-neighbours": (dict(encode=_encode().replace('Tile1="1" Tile2="2"', 'Tile1="1" Tile2="3"',
                                                     1)), "neighbours"),
    "bad-number": (dict(encode=_encode().replace('Pos-X="100"', 'Pos-X="1OO"')), "number"),
    "missing-origins": (dict(encode=_encode().replace('<AOI1 OriginX="512" OriginY="0"/>', "")),
                        "origins"),
    "no-joints": (dict(encode=V.bif_encode_info([(0, 0, 1, 1, 0, 0)], TILE, [0], [0])),
                  "TileJointInfo"),
    # (fuzz_vendor found an infinite overlap making every position NaN, converted to int64)
    "infinite-overlap": (dict(encode=V.bif_encode_info(AREAS, TILE, [2, -2], [1.5, "-inf"])),
                         "overlap"),
    "huge-overlap": (dict(encode=V.bif_encode_info(AREAS, TILE, ["1e300"], [1.5])), "overlap"),
    # an origin 2^55 tiles away: its position (a double) would not fit an integer
    "far-origin-overlapping": (dict(encode=_encode().replace(
        'OriginX="512"', 'OriginX="%d"' % ((2 ** 55 - 1) * TILE))), "past 2^20 tiles"),
    "far-origin-on-grid": (dict(encode=V.bif_encode_info(
        [(0, 0, 2, 1, 0, 0), (2, 0, 1, 2, 512, 0)], TILE, [0], [0]).replace(
            'OriginX="512"', 'OriginX="%d"' % ((2 ** 55 - 1) * TILE))), "past 2^20 tiles"),
    # an area of 10^9 tiles over a level of 12: refused before anything is allocated for them
    "too-many-tiles": (dict(encode=V.bif_encode_info(
        [(0, 0, 2, 1, 0, 0), (2, 0, 1, 2, 512, 0)], TILE, [0], [0]).replace(
            'NumRows="1" NumCols="2"', 'NumRows="1000" NumCols="1000000"', 1)), "areas hold"),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_metadata_fails_clearly(lib, cli, tmp_path, pieces, name):
    path = str(tmp_path / (name + ".bif"))
    _bif(path, pieces, **DAMAGED[name][0])
    st, msg, s = T.open_status(path)
    assert s is None and st == T.E_FORMAT, (st, msg)
    assert DAMAGED[name][1] in msg and "Ventana" in msg, msg
    r = subprocess.run([cli, "info", path], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Ventana" in r.stderr, r.stderr


LEVEL_CASES = {
    # name: (mags, descriptions override, what the message must say)
    "magnification-grows": (["40", "20", "30"], None, "magnification"),
    "level-skipped": (MAGS, {2: "level=3 mag=10"}, "level 2 was expected"),
    "no-mag": (MAGS, {1: "level=1 quality=90"}, "no level or mag"),
    "bad-mag": (MAGS, {1: "level=1 mag=twenty"}, "magnification"),
}


@pytest.mark.parametrize("name", sorted(LEVEL_CASES))
def test_bad_level_descriptions_fail_as_in_openslide(lib, tmp_path, pieces, name):
    import tifffile
    mags, override, words = LEVEL_CASES[name]
    path = str(tmp_path / (name + ".tif"))
    b = V.ventana_iscan().encode()
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(pieces["macro"], photometric="rgb", description="Label_Image", metadata=None,
                 extratags=[(700, 1, len(b), b, True)])
        for i, (arr, mag) in enumerate(zip(pieces["levels"], mags)):
            desc = (override or {}).get(i, "level=%d mag=%s quality=90" % (i, mag))
            V.write_jpeg_tiled(tw, arr, TILE, description=desc)
    with pytest.raises(openslide.OpenSlideError):
        openslide.OpenSlide(path)
    st, msg, s = T.open_status(path)
    assert s is None and st == T.E_FORMAT and words in msg and "Ventana" in msg, msg


HOSTILE = {
    "deep-nesting": '<?xml version="1.0"?><Metadata>' + "<a>" * 100000 + "<iScan/>"
                    + "</a>" * 100000 + "</Metadata>",
    "billion-laughs": ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>'
                       '<iScan Magnification="&lol;"/>'),
    "many-attributes": "<iScan " + " ".join('a%d="1"' % i for i in range(5000)) + "/>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_iscan_fails_clearly(lib, tmp_path, pieces, name):
    path = str(tmp_path / (name + ".bif"))
    _bif(path, pieces, iscan=HOSTILE[name])
    st, msg, s = T.open_status(path)
    assert s is None and st in (T.E_FORMAT, T.E_LIMIT), (st, msg)
    assert "Ventana" in msg, msg


def test_xml_without_iscan_is_generic_tiff_as_for_openslide(lib, tmp_path, pieces):
    path = str(tmp_path / "other.tif")
    V.write_ventana(path, '<?xml version="1.0"?><Other note="iScan"/>', pieces["levels"], TILE,
                    MAGS)
    assert openslide.OpenSlide(path).properties["openslide.vendor"] == "generic-tiff"
    with T.open_slide(path) as s:
        assert s.vendor == "generic-tiff"
        assert not any(k.startswith("ventana.") for k in s.properties)


# ---- through tessera's libopenslide -------------------------------------------------------


def test_openslide_dropin_reads_as_openslide(lib, files, tmp_path):
    """openslide-python over tessera's libopenslide.so.0 against Debian's OpenSlide: levels,
    every property, the associated images, and every region that starts on a level's pixel."""
    import openslide_dropin as D
    got = D.reads([files["bif"], files["tif"]], tmp_path)
    D.check_reads_equal(got, lambda real, key: D.whole_pixel(real, key[1], key[2], key[3]), 21)


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3, 0.6, 0.9, 0.999])
def test_truncated_copies_fail_cleanly(lib, cli, files, tmp_path, fraction):
    """A copy cut short: the open fails with a message, or the slide opens and each read
    either works or fails with a message; `tessera info` exits 0 or 1, never by a signal."""
    VC.check_truncated_copy(cli, files["bif"], str(tmp_path / "cut.bif"), fraction)


ASAN_ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=99",
                UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")


def test_commands_under_the_sanitizers(lib, cli, files, tmp_path, pieces):
    """`tessera info` and `tessera read` of every level and associated image (the plain build,
    and the ASan+UBSan one when TESSERA_CLI_ASAN names it) on the slides and on damaged ones:
    the slides read as the library reads them, the damaged ones fail with one line, nothing
    trips a sanitizer."""
    clis = [cli] + ([os.environ["TESSERA_CLI_ASAN"]] if os.environ.get("TESSERA_CLI_ASAN")
                    else [])
    bad = []
    for name, (kw, _) in sorted(DAMAGED.items()):
        bad.append(str(tmp_path / (name + ".bif")))
        _bif(bad[-1], pieces, **kw)
    for c in clis:
        for path in bad:
            r = subprocess.run([c, "info", path], capture_output=True, text=True, env=ASAN_ENV,
                               timeout=300)
            assert r.returncode == 1 and "Sanitizer" not in r.stderr and \
                "runtime error" not in r.stderr, (c, path, r.stderr[-3000:])
        for name in NAMES:
            with T.open_slide(files[name]) as s:
                cases = [(["--location", "%d,%d" % (-4 * 2 ** lv, -3 * 2 ** lv), "--size",
                           "%d,%d" % (s.level_dimensions()[lv][0] + 9,
                                      s.level_dimensions()[lv][1] + 7),
                           "--level", str(lv), "--channels", "4"],
                          s.read_region(-4 * 2 ** lv, -3 * 2 ** lv, lv,
                                        s.level_dimensions()[lv][0] + 9,
                                        s.level_dimensions()[lv][1] + 7, channels=4))
                         for lv in range(s.level_count)]
                cases += [(["--associated", a], s.read_associated(a)) for a in s.associated_names]
            for i, (args, want) in enumerate(cases):
                out = str(tmp_path / ("%d.raw" % i))
                r = subprocess.run([c, "read", files[name]] + args + ["--output", out],
                                   capture_output=True, text=True, env=ASAN_ENV, timeout=300)
                assert r.returncode == 0 and "Sanitizer" not in r.stderr, (c, r.stderr[-3000:])
                assert np.array_equal(np.fromfile(out, np.uint8).reshape(want.shape), want)


@pytest.mark.parametrize("name", NAMES)
def test_cuda_batches_equal_cpu_batches_on_the_simulator(files, name):
    """device='cuda' on the CUDA simulator (test_gpu_sim.py): patches across the BIF grid's
    origin, the tile seams and the slide's edges equal the CPU's, at every level."""
    from test_gpu_sim import run_checks
    out = run_checks("""
        img = CuImage(SLIDE)
        rng = np.random.default_rng(4)
        for level in range(3):
            w, h = img.resolutions["level_dimensions"][0]
            locs = np.stack([rng.integers(-200, w + 50, 23), rng.integers(-200, h + 50, 23)],
                            1).astype(np.int64)
            same_batches(img, locs, level)
        print(sim.sim_decoded_images(), sim.sim_failures())
    """.replace("SLIDE", repr(files[name])))
    decoded, failures = map(int, out.split())
    assert decoded > 0 and failures == 0, out
