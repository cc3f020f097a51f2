"""MIRAX (.mrxs), on slides written at test time from real slide pixels (mirax_writer.py) that
Debian's OpenSlide 3.4.1 opens as "mirax": levels, pixels of every level (regions across image
edges, overlaps, missing images and the slide's border), properties, the INI's text as GLib
reads it, associated images, against OpenSlide; camera positions from a position buffer, a
zlib-compressed one and the nominal grid, with and without overlap, pictures of one camera
image and of 2 x 2; JPEG, PNG and BMP images; camera positions that put a level's images
between its pixels (odd positions, odd overlaps), painted as OpenSlide paints them, through
tessera and both OpenSlide fronts (every region, origins between pixels included);
the batch reader and `tessera bench` against single reads; damaged and hostile copies fail
with a message that says what is wrong (under ASan+UBSan too when TESSERA_CLI_ASAN names a
sanitized `tessera`)."""

import os
import shutil
import struct
import subprocess

import numpy as np
import openslide
import pytest

import mirax_writer as MW
import tessera_ctypes as T
import vendor_checks as VC
import vendor_writers as V
import wsi_refs as R

IMAGE = (128, 96)
# positions (x, y) moved off the nominal grid: into their neighbours, by multiples of 4 so
# that every level places them on whole pixels (images between pixels: further down)
JITTER = {(1, 1): (4, -4), (2, 0): (-4, 4), (3, 2): (8, 0), (2, 3): (0, -8), (1, 2): (-8, 4)}
SKIP = {(4, 0), (0, 3)}


@pytest.fixture(scope="module")
def source():
    return np.asarray(V.source_rgb(900, 700, 100, 100))


def _slides(source):
    """name: Mirax."""
    out = {}
    m = MW.build(source, 5, 4, *IMAGE, 3, overlap=(8, 8), jitter=JITTER, skip=SKIP, tint=True)
    m.associated = {"macro": source[:100, :300], "label": source[200:280, :90],
                    "thumbnail": source[::4, ::4][:120, :160].copy()}
    out["positions"] = m
    m = MW.build(source, 5, 4, *IMAGE, 3, overlap=(8, 8), jitter=JITTER, skip={(2, 1)}, tint=True)
    m.stitching = True
    m.associated = {"label": source[300:380, 10:100]}
    out["stitching"] = m
    out["nominal"] = MW.build(source, 5, 4, *IMAGE, 4, overlap=(8, 8), skip={(2, 2)})
    out["plain"] = MW.build(source, 5, 3, 100, 76, 3, skip={(1, 1)})
    # pictures of 2 x 2 camera images (CameraImageDivisionsPerSide=2): the pictures overlap,
    # their images do not; levels above 1 cut their images by picture
    out["divisions"] = MW.build(source, 6, 4, *IMAGE, 3, overlap=(16, 8),
                                jitter={(1, 1): (4, -4), (2, 0): (-8, 4)}, skip={(3, 1)},
                                tint=True, divisions=2)
    out["divisions-nominal"] = MW.build(source, 6, 4, *IMAGE, 4, overlap=(16, 8),
                                        skip={(3, 1), (4, 2), (5, 2), (4, 3), (5, 3)},
                                        divisions=2)
    out["divisions-plain"] = MW.build(source, 6, 4, *IMAGE, 3, divisions=2)
    for fmt in ("PNG", "BMP24"):
        out[fmt.lower()] = MW.build(source, 3, 3, *IMAGE, 2, overlap=(8, 8),
                                    jitter={(1, 1): (4, -4)}, tint=True, fmt=fmt)
    return out


NAMES = ["positions", "stitching", "nominal", "plain", "divisions", "divisions-nominal",
         "divisions-plain", "png", "bmp24"]
LEVELS = {"positions": 3, "stitching": 3, "nominal": 4, "plain": 3, "divisions": 3,
          "divisions-nominal": 4, "divisions-plain": 3, "png": 2, "bmp24": 2}


@pytest.fixture(scope="module")
def slides(tmp_path_factory, source):
    d = tmp_path_factory.mktemp("mirax")
    built = _slides(source)
    paths = {}
    for name, m in built.items():
        paths[name] = str(d / (name + ".mrxs"))
        m.write(paths[name])
    return {"paths": paths, "built": built}


def osl(path):
    return R.openslide_open(path)


# ---- what the slide is ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_levels_equal_openslides(lib, slides, name):
    path = slides["paths"][name]
    o = osl(path)
    assert o.properties["openslide.vendor"] == "mirax"
    with T.open_slide(path) as s:
        assert s.vendor == "mirax"
        assert s.level_count == LEVELS[name]
        assert s.level_dimensions() == list(o.level_dimensions)
        assert [s.level_info(i).downsample for i in range(s.level_count)] == \
            list(o.level_downsamples)
        assert s.background == 255


@pytest.mark.parametrize("name", NAMES)
def test_properties_equal_openslides(lib, slides, name):
    path = slides["paths"][name]
    o = osl(path)
    with T.open_slide(path) as s:
        props = s.properties
    want = {k: v for k, v in o.properties.items() if k.startswith("mirax.")}
    got = {k: v for k, v in props.items() if k.startswith("mirax.")}
    assert len(want) > 40 and got == want
    for key in ("mpp-x", "mpp-y"):
        assert float(props["tessera." + key]) == float(o.properties["openslide." + key])
    for key in ("objective-power", "background-color", "bounds-x", "bounds-y", "bounds-width",
                "bounds-height"):
        assert props["tessera." + key] == o.properties["openslide." + key]


def test_ini_text_is_read_as_glib_reads_it(lib, tmp_path, source):
    """Blanks around keys and values, comments, keys given twice, groups given twice, empty
    values, CRLF and a BOM: the mirax.* properties equal OpenSlide's (GLib's key file)."""
    m = MW.build(source, 2, 2, *IMAGE, 2)
    m.extra_ini = ("[EXTRA]\r\n  spaced key  =   value with trailing  \r\n# comment\r\n"
                   "  ; semicolon=x\r\nDUP=1\r\nDUP=2\r\nempty=\r\n\r\n[GENERAL]\r\nLATE=yes\r\n"
                   "tab\t=\tv\t\r\nSLIDE_NAME=renamed\r\n")
    path = str(tmp_path / "ini.mrxs")
    m.write(path)
    want = {k: v for k, v in openslide.OpenSlide(path).properties.items()
            if k.startswith("mirax.")}
    with T.open_slide(path) as s:
        got = {k: v for k, v in s.properties.items() if k.startswith("mirax.")}
    assert want["mirax.EXTRA.DUP"] == "2" and want["mirax.GENERAL.SLIDE_NAME"] == "renamed"
    assert got == want


def test_what_openslide_4_reads_and_3_4_refuses(lib, tmp_path, source):
    """Three things real MIRAX files hold that OpenSlide 3.4.1 refuses and OpenSlide 4 reads
    (openslide commits f0b330da, 19c75c1c, aae38d23), read as OpenSlide 4 reads them: lines
    with a value and no key (" = False") are skipped; a non-hierarchical record's page may hold
    more than one item; the objective magnification may end in "x" (or be missing: then there
    is no objective power)."""
    m = MW.build(source, 2, 2, *IMAGE, 2)
    m.magnification = "40x"
    m.associated = {"label": source[:50, :60]}
    m.extra_ini = "[EXTRA]\r\n = False\r\nKEPT=1\r\n   =True\r\n"
    path = str(tmp_path / "lenient.mrxs")
    folder = m.write(path)

    def two_items(index):  # the label's record: its page's item count 1 -> 2
        root = _root(index)
        table = struct.unpack_from("<i", index, root + 4)[0]
        head = struct.unpack_from("<i", index, table)[0]
        page = struct.unpack_from("<i", index, head + 4)[0]
        assert struct.unpack_from("<i", index, page)[0] == 1
        struct.pack_into("<i", index, page, 2)
    _index_patch(two_items)(folder)
    with pytest.raises(openslide.OpenSlideError):
        openslide.OpenSlide(path)
    with T.open_slide(path) as s:
        props = s.properties
        assert props["tessera.objective-power"] == "40"
        assert props["mirax.EXTRA.KEPT"] == "1"
        assert not any(k.startswith("mirax.EXTRA.") and k != "mirax.EXTRA.KEPT" for k in props)
        assert s.read_associated("label").shape == (50, 60, 3)
    # and without the odd lines, the same slide is OpenSlide 3.4.1's: the label is its
    _ini_edit(" = False\r\n", "")(folder)
    _ini_edit("   =True\r\n", "")(folder)
    _ini_edit("OBJECTIVE_MAGNIFICATION=40x", "OBJECTIVE_MAGNIFICATION=40")(folder)
    _index_patch(lambda index: struct.pack_into(
        "<i", index, struct.unpack_from("<i", index, struct.unpack_from(
            "<i", index, struct.unpack_from("<i", index, _root(index) + 4)[0])[0] + 4)[0], 1))(
        folder)
    o = openslide.OpenSlide(path)
    with T.open_slide(path) as s:
        assert np.array_equal(s.read_associated("label", channels=4),
                              np.asarray(o.associated_images["label"]))
    m.magnification = ""
    m.write(path)
    with T.open_slide(path) as s:
        assert "tessera.objective-power" not in s.properties


# ---- pixels --------------------------------------------------------------------------


def _cases():
    return [(name, level) for name in NAMES for level in range(LEVELS[name])]


@pytest.mark.parametrize("name,level", _cases())
def test_regions_equal_openslides(lib, slides, name, level):
    """Byte-exact inside the level where OpenSlide has pixels; where it has none (a missing
    image, outside the level) tessera gives the white background with alpha 0. OpenSlide
    paints images that reach past the level's edge there too (its read is not clipped to the
    level): tessera's levels end at their size, so only pixels inside it are compared."""
    path = slides["paths"][name]
    o = osl(path)
    with T.open_slide(path) as s:
        W, H = s.level_dimensions()[level]
        ds = s.level_info(level).downsample
        empty = 0
        for lx, ly, w, h, label in R.regions_for_level(W, H, IMAGE[0], IMAGE[1], seed=level):
            x, y = int(lx * ds), int(ly * ds)
            want = R.openslide_region(o, x, y, level, w, h)
            rgba = s.read_region(x, y, level, w, h, channels=4)
            rgb = s.read_region(x, y, level, w, h, channels=3)
            yy, xx = np.mgrid[ly:ly + h, lx:lx + w]
            in_level = (xx >= 0) & (yy >= 0) & (xx < W) & (yy < H)
            inside = (want[..., 3] == 255) & in_level
            msg = R.describe_mismatch(rgba[..., :3], want[..., :3], inside, "%s %s" % (name, label))
            assert msg is None, msg
            assert np.array_equal(rgba[..., 3][in_level], want[..., 3][in_level]), label
            assert (rgba[..., 3][~in_level] == 0).all(), label
            assert np.array_equal(rgb, rgba[..., :3]), label
            assert (rgb[~inside] == 255).all(), label
            empty += int((in_level & ~inside).sum())
        if name in ("positions", "stitching", "plain", "divisions-nominal") and level == 0:
            assert empty > 0  # the missing images were looked at


def test_overlaps_show_the_image_of_the_later_row_and_column(lib, slides):
    """Where camera images overlap, OpenSlide shows the one of the greater (row, column): the
    strip where image (1, 0) overlaps image (0, 0) is (1, 0)'s, by its tint (the test can
    tell them apart), in tessera as in OpenSlide."""
    path = slides["paths"]["positions"]
    m = slides["built"]["positions"]
    later, earlier = m.images[0][(1, 0)][10:80, 0:8], m.images[0][(0, 0)][10:80, 120:128]
    with T.open_slide(path) as s:
        strip = s.read_region(120, 10, 0, 8, 70).astype(int)
    assert np.abs(strip - later).mean() < 4 < np.abs(strip - earlier).mean()
    assert np.array_equal(strip, R.openslide_region(osl(path), 120, 10, 0, 8, 70)[..., :3])


# ---- images placed between pixels --------------------------------------------------------
#
# Camera positions that are not multiples of 2^level put a level's images between its pixels
# (real scanners' positions are arbitrary, so real slides have them on every level above 0):
# OpenSlide 3.4.1 paints them through cairo (bilinear, SATURATE, in pixman's floating-point
# pipeline), and so does tessera (codec/mosaic.c). Slides of one camera image per picture:
# above level 0 every image is cut into subtiles, which OpenSlide hands cairo with alpha.

# odd moves (and (0, 0) moved too, so the slide's first image lies between pixels)
ODD = {(0, 0): (3, 1), (1, 1): (5, -3), (2, 0): (-7, 1), (3, 2): (3, 0), (2, 3): (1, -9),
       (1, 2): (-1, 5), (4, 1): (-3, -3)}


def _between(source):
    out = {}
    out["between"] = MW.build(source, 5, 4, *IMAGE, 4, overlap=(8, 8), jitter=ODD,
                              skip={(4, 0), (0, 3)}, tint=True)
    m = MW.build(source, 5, 4, *IMAGE, 3, overlap=(6, 10), jitter=ODD, skip={(2, 1)},
                 tint=True, fmt="PNG")
    m.stitching = True
    out["between-stitching"] = m
    # no positions: the nominal grid less an odd overlap, 121 x 91 apart
    out["between-overlap"] = MW.build(source, 5, 4, *IMAGE, 3, overlap=(7, 5), skip={(2, 2)},
                                      fmt="BMP24")
    return out


BETWEEN = ["between", "between-stitching", "between-overlap"]
BETWEEN_LEVELS = {"between": 4, "between-stitching": 3, "between-overlap": 3}


@pytest.fixture(scope="module")
def between(tmp_path_factory, source):
    d = tmp_path_factory.mktemp("mirax-between")
    paths = {}
    for name, m in _between(source).items():
        paths[name] = str(d / (name + ".mrxs"))
        m.write(paths[name])
    return paths


def _between_regions(W, H, level):
    """Regions across image edges, overlaps and the slide's border, and at odd level
    coordinates (so odd level-0 ones above level 0 are whole level pixels too)."""
    out = [r[:4] + (r[4],) for r in R.regions_for_level(W, H, 61, 45, seed=10 + level)]
    rng = np.random.default_rng(level)
    for i in range(12):
        w, h = int(rng.integers(1, 90)), int(rng.integers(1, 70))
        lx = int(rng.integers(-w // 2, W)) | 1
        ly = int(rng.integers(-h // 2, H)) | 1
        out.append((lx, ly, w, h, "odd-%d" % i))
    return out


def _compare_between(s, o, level, regions, name):
    """Byte-exact against OpenSlide inside the level: colour where OpenSlide painted anything
    (alpha > 0, partial alpha at images' edges between pixels included), and alpha
    everywhere; the read's fill (255, alpha 0) where it painted nothing."""
    W, H = s.level_dimensions()[level]
    ds = s.level_info(level).downsample
    partial = 0
    for lx, ly, w, h, label in regions:
        x, y = int(lx * ds), int(ly * ds)
        want = R.openslide_region(o, x, y, level, w, h)
        rgba = s.read_region(x, y, level, w, h, channels=4)
        rgb = s.read_region(x, y, level, w, h, channels=3)
        yy, xx = np.mgrid[ly:ly + h, lx:lx + w]
        in_level = (xx >= 0) & (yy >= 0) & (xx < W) & (yy < H)
        painted = (want[..., 3] > 0) & in_level
        msg = R.describe_mismatch(rgba[..., :3], want[..., :3], painted,
                                  "%s level %d %s" % (name, level, label))
        assert msg is None, msg
        assert np.array_equal(rgba[..., 3][in_level], want[..., 3][in_level]), label
        assert (rgba[..., 3][~in_level] == 0).all(), label
        assert np.array_equal(rgb[painted], rgba[..., :3][painted]), label
        assert (rgb[~painted] == 255).all(), label
        partial += int((painted & (want[..., 3] < 255)).sum())
    return partial


@pytest.mark.parametrize("name,level", [(n, lv) for n in BETWEEN
                                        for lv in range(BETWEEN_LEVELS[n])])
def test_images_between_pixels_equal_openslides(lib, between, name, level):
    path = between[name]
    o = osl(path)
    with T.open_slide(path) as s:
        assert s.level_count == BETWEEN_LEVELS[name]
        assert s.level_dimensions() == list(o.level_dimensions)
        W, H = s.level_dimensions()[level]
        partial = _compare_between(s, o, level, _between_regions(W, H, level), name)
        if level > 0:
            assert partial > 0  # pixels partly covered (images' edges between pixels) compared


def test_images_between_pixels_blend_at_their_edges(lib, between):
    """The test above can fail: level 1's image of camera position (0, 0) starts at (1.5,
    0.5), so its first column and row are half covered, which tessera once placed at the pixel
    below (fully covered)."""
    path = between["between"]
    with T.open_slide(path) as s:
        corner = s.read_region(0, 0, 1, 4, 4, channels=4)
    want = R.openslide_region(osl(path), 0, 0, 1, 4, 4)
    painted = want[..., 3] > 0
    assert np.array_equal(corner[painted], want[painted])
    assert np.array_equal(corner[..., 3], want[..., 3])
    assert want[0, 0, 3] == 0 and 0 < want[0, 2, 3] < 255 and 0 < want[1, 1, 3] < 255
    assert want[2, 2, 3] == 255


@pytest.mark.parametrize("level", [1, 2])
def test_between_batches_equal_single_reads(lib, between, level):
    path = between["between"]
    with T.open_slide(path) as s:
        locs = VC.level_locations(s, level)
    VC.check_batches_equal_single_reads(path, locs, (67, 45), level)


def test_between_bench_checksum_equals_single_reads(lib, cli, between, tmp_path):
    path = between["between"]
    with T.open_slide(path) as s:
        locs = VC.level_locations(s, 1, n=40)
    VC.check_bench_checksum(cli, path, locs, (37, 23), 1, tmp_path)


def test_between_openslide_fronts_equal_openslide(lib, between, tmp_path, source):
    """Both OpenSlide fronts over tessera (openslide-python over libtessera-openslide, and
    tessera.openslide) give OpenSlide's regions of these slides byte for byte: every region,
    origins between a level's pixels (each image painted from the origin's fraction), pixels
    past the level's edge, and, on a slide of 2 x 2 camera images a picture, regions inside
    one whole image between pixels (pixman's 8-bit path) included."""
    import pickle
    import tessera.openslide
    here = os.path.dirname(os.path.abspath(__file__))
    so0 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(T.lib_path()))),
                       "openslide", "so0")
    div = str(tmp_path / "div.mrxs")
    _divisions(source).write(div)
    paths = [between[n] for n in BETWEEN] + [div]
    runs = {}
    for which, env in (("openslide", {}), ("tessera", {"LD_LIBRARY_PATH": so0})):
        out = str(tmp_path / (which + ".pickle"))
        subprocess.run(["/usr/bin/python3", os.path.join(here, "openslide_reader.py"), out]
                       + paths, env=dict(os.environ, **env), check=True, capture_output=True,
                       timeout=600)
        with open(out, "rb") as f:
            runs[which] = pickle.load(f)
    compared = fractional = partial = 0
    for path in paths:
        real, ours = runs["openslide"]["slides"][path], runs["tessera"]["slides"][path]
        assert "error" not in real and "error" not in ours, (real.get("error"), ours.get("error"))
        assert ours["properties"] == real["properties"], path
        assert ours["levels"] == real["levels"]
        front = tessera.openslide.OpenSlide(path)
        for (dims, level, x, y, w, h), want in real["regions"].items():
            assert ours["regions"][(dims, level, x, y, w, h)] == want, (path, level, x, y, w, h)
            got = np.asarray(front.read_region((x, y), level, (w, h)))
            assert got.tobytes() == want, (path, level, x, y, w, h)
            o = np.frombuffer(want, np.uint8).reshape(h, w, 4)
            partial += int(((o[..., 3] > 0) & (o[..., 3] < 255)).sum())
            ds = real["levels"][level][1]
            fractional += int(x > 0 and x % ds != 0 or y > 0 and y % ds != 0)
            compared += 1
        # small regions inside level 1's whole images of the 2 x 2 slide: pixman's 8-bit path
        if path == div:
            o = osl(path)
            W, H = o.level_dimensions[1]
            for ly in range(0, H - 8, 20):
                for lx in range(0, W - 8, 20):
                    want = np.asarray(o.read_region((lx * 2, ly * 2), 1, (8, 8)))
                    got = np.asarray(front.read_region((lx * 2, ly * 2), 1, (8, 8)))
                    assert np.array_equal(got, want), (lx, ly)
    assert compared > 60 and fractional > 10 and partial > 0


def _divisions(source):
    return MW.build(source, 6, 4, *IMAGE, 3, overlap=(16, 8), jitter={(1, 1): (5, -3),
                    (2, 0): (-7, 1)}, skip={(3, 1)}, tint=True, divisions=2)


def test_opaque_images_between_pixels_differ_by_one_at_most(lib, tmp_path, source):
    """The one case tessera's own reads do not give byte for byte (README.md,
    docs/OPENSLIDE.md; the OpenSlide fronts do, test above): with pictures of 2 x 2 camera
    images, level 1's images are whole (not cut into subtiles), which OpenSlide hands cairo
    without alpha; where a read's region lies inside such an image between pixels (on each
    axis the image is not on whole pixels), pixman finds the image opaque over every sample,
    turns SATURATE into OVER_REVERSE and computes it in 8 bits (7-bit bilinear weights)
    instead of floats. So OpenSlide's pixels there depend on the region read, where tessera's
    tiles do not: tessera gives the floating-point pixels of any region reaching the image's
    edges, which differ from the 8-bit ones by at most 1 per channel. Measured here: every
    level exact (whole levels and regions across images' edges), and small regions inside
    one image of level 1 differ by 1 at most, alpha never."""
    m = _divisions(source)
    path = str(tmp_path / "div.mrxs")
    m.write(path)
    o = osl(path)
    differ = total = 0
    with T.open_slide(path) as s:
        for level in (0, 1, 2):
            W, H = s.level_dimensions()[level]
            _compare_between(s, o, level, [(0, 0, W, H, "whole-level")], "div")
            if level != 1:
                _compare_between(s, o, level, _between_regions(W, H, level), "div")
        W, H = s.level_dimensions()[1]
        for ly in range(0, H - 8, 10):
            for lx in range(0, W - 8, 10):
                got = s.read_region(lx * 2, ly * 2, 1, 8, 8, channels=4).astype(int)
                want = R.openslide_region(o, lx * 2, ly * 2, 1, 8, 8).astype(int)
                painted = want[..., 3] > 0
                d = np.abs(got - want)[painted]
                assert d.size == 0 or d.max() <= 1, (lx, ly)
                assert np.array_equal(got[..., 3][painted], want[..., 3][painted])
                differ += int(d.size > 0 and d.max() > 0)
                total += 1
    assert 0 < differ < total


def test_missing_image_is_transparent_background(lib, slides):
    """Image (4, 0) is left out: where no neighbour reaches, OpenSlide is transparent and
    tessera white with alpha 0; at level 1, the subtile of that position is left out too."""
    path = slides["paths"]["positions"]
    o = osl(path)
    with T.open_slide(path) as s:
        rgba = s.read_region(492, 4, 0, 100, 80, channels=4)
        assert (rgba[..., 3] == 0).all() and (rgba[..., :3] == 255).all()
        assert (R.openslide_region(o, 492, 4, 0, 100, 80)[..., 3] == 0).all()
        up = s.read_region(492, 4, 1, 50, 40, channels=4)
        assert (up[..., 3] == 0).all()
        assert s.read_region(0, 0, 0, 100, 80, channels=4)[..., 3].min() == 255


@pytest.mark.parametrize("name", ["positions", "stitching"])
def test_associated_images_equal_openslides(lib, slides, name):
    path = slides["paths"][name]
    o = osl(path)
    with T.open_slide(path) as s:
        assert sorted(s.associated_names) == sorted(o.associated_images)
        assert sorted(s.associated_names) == sorted(slides["built"][name].associated)
        for image in s.associated_names:
            want = np.asarray(o.associated_images[image].convert("RGBA"))
            assert s.associated_dimensions(image) == (want.shape[1], want.shape[0])
            assert np.array_equal(s.read_associated(image, channels=4), want), (name, image)
            assert np.array_equal(s.read_associated(image), want[..., :3]), (name, image)


# ---- the batch reader and `tessera bench` ----------------------------------------------


@pytest.mark.parametrize("level", [0, 1])
def test_batches_equal_single_reads(lib, slides, level):
    path = slides["paths"]["positions"]
    with T.open_slide(path) as s:
        locs = VC.level_locations(s, level)
    VC.check_batches_equal_single_reads(path, locs, (67, 45), level)


def test_bench_checksum_equals_single_reads(lib, cli, slides, tmp_path):
    """Without a cache, and through the per-process and the shared tile cache (tiles painted
    from several images are cached painted)."""
    path = slides["paths"]["positions"]
    with T.open_slide(path) as s:
        locs = VC.level_locations(s, 1, n=40)
    VC.check_bench_checksum(cli, path, locs, (37, 23), 1, tmp_path)


def test_python_package_reads_it(slides):
    """The Python package (CuImage and its openslide-python API) reads a MIRAX slide through
    the same library: its regions equal the C API's."""
    import tessera  # the built package (conftest.py puts TESSERA_PYTHON on sys.path)
    import tessera.openslide
    path = slides["paths"]["positions"]
    with T.open_slide(path) as s:
        want = s.read_region(100, 50, 0, 200, 120, channels=4)
    img = tessera.CuImage(path)
    got = np.asarray(img.read_region((100, 50), (200, 120), 0))
    assert np.array_equal(got[..., :3], want[..., :3])
    o = tessera.openslide.OpenSlide(path)
    assert o.properties["openslide.vendor"] == "mirax"
    assert np.array_equal(np.asarray(o.read_region((100, 50), 0, (200, 120))), want)


def test_openslide_fronts_equal_openslide(lib, slides, tmp_path):
    """OpenSlide's API over tessera: openslide-python over libtessera-openslide (run in a
    process of its own, tests/openslide_reader.py) and tessera.openslide give every property
    OpenSlide 3.4.1 gives (quickhash-1, tile sizes where it has them, mpp, bounds, background),
    its associated images and its regions, every byte of each: origins between a level's
    pixels and pixels past the level's edge included (the fronts paint MIRAX regions as
    OpenSlide paints them, image by image)."""
    import pickle
    import tessera.openslide
    here = os.path.dirname(os.path.abspath(__file__))
    so0 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(T.lib_path()))),
                       "openslide", "so0")
    paths = [slides["paths"][n] for n in NAMES]
    runs = {}
    for which, env in (("openslide", {}), ("tessera", {"LD_LIBRARY_PATH": so0})):
        out = str(tmp_path / (which + ".pickle"))
        subprocess.run(["/usr/bin/python3", os.path.join(here, "openslide_reader.py"), out]
                       + paths, env=dict(os.environ, **env), check=True, capture_output=True,
                       timeout=600)
        with open(out, "rb") as f:
            runs[which] = pickle.load(f)
    assert runs["openslide"]["version"] != runs["tessera"]["version"]
    compared = 0
    for path in paths:
        real, ours = runs["openslide"]["slides"][path], runs["tessera"]["slides"][path]
        assert "error" not in real and "error" not in ours, (real.get("error"), ours.get("error"))
        assert "openslide.quickhash-1" in real["properties"]
        assert ours["properties"] == real["properties"], path
        assert dict(tessera.openslide.OpenSlide(path).properties) == real["properties"], path
        assert ours["levels"] == real["levels"] and ours["associated"] == real["associated"]
        for key, want in real["regions"].items():
            assert ours["regions"][key] == want, (path, key)
            compared += 1
    assert compared > 100


def test_info_command_names_the_format(cli, slides):
    r = subprocess.run([cli, "info", slides["paths"]["positions"]], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "mirax" in r.stdout


# ---- damaged and hostile copies --------------------------------------------------------


def _ini_edit(old, new):
    def edit(folder):
        p = os.path.join(folder, "Slidedat.ini")
        text = open(p, "rb").read()
        assert old.encode() in text, old
        open(p, "wb").write(text.replace(old.encode(), new.encode(), 1))
    return edit


def _both(a, b):
    def edit(folder):
        a(folder)
        b(folder)
    return edit


def _truncate(name, keep):
    def edit(folder):
        p = os.path.join(folder, name)
        data = open(p, "rb").read()
        open(p, "wb").write(data[:int(len(data) * keep)])
    return edit


def _remove(name):
    return lambda folder: os.remove(os.path.join(folder, name))


def _index_patch(fn):
    def edit(folder):
        p = os.path.join(folder, "Index.dat")
        data = bytearray(open(p, "rb").read())
        fn(data)
        open(p, "wb").write(bytes(data))
    return edit


def _root(data):
    return 5 + len(MW.Mirax(1, 1, 1, 1, 1).slide_id)


def _level0_page(data):
    table = struct.unpack_from("<i", data, _root(data))[0]
    head = struct.unpack_from("<i", data, table)[0]
    return struct.unpack_from("<i", data, head + 4)[0]


def _page_loop(data):
    page = _level0_page(data)
    struct.pack_into("<i", data, page + 4, page)


def _huge_length(data):
    struct.pack_into("<i", data, _level0_page(data) + 8 + 8, 0x7FFFFFF0)


def _too_many_images(data):
    """A page of 100 copies of level 0's first image joins the chain: more images than the
    slide has camera images."""
    page = _level0_page(data)
    first = bytes(data[page + 8:page + 24])
    while struct.unpack_from("<i", data, page + 4)[0]:
        page = struct.unpack_from("<i", data, page + 4)[0]
    struct.pack_into("<i", data, page + 4, len(data))
    data += struct.pack("<ii", 100, 0) + first * 100


def _bad_index(data):
    struct.pack_into("<i", data, _level0_page(data) + 8, 4 * 5 * 4)


def _bad_file_number(data):
    struct.pack_into("<i", data, _level0_page(data) + 8 + 12, 7)


# name: (edit, what the message must say, whether the failure may come at read time)
DAMAGED = {
    "no-slidedat": (_remove("Slidedat.ini"), "Slidedat.ini", False),
    "empty-slidedat": (_truncate("Slidedat.ini", 0), "empty", False),
    "huge-slidedat": (lambda f: open(os.path.join(f, "Slidedat.ini"), "ab").write(
        b"#" * (1 << 20) + b"\n"), "allowed", False),
    "nul-in-slidedat": (_ini_edit("SLIDE_NAME=", "SLIDE_NAME=\0"), "NUL", False),
    "not-ini": (_ini_edit("[DATAFILE]", "DATAFILE"), "line", False),
    "no-general": (_ini_edit("[GENERAL]", "[GENERALE]"), "GENERAL", False),
    "huge-image-count": (_ini_edit("IMAGENUMBER_X=5", "IMAGENUMBER_X=2000000000"),
                         "camera images", False),
    "zero-image-count": (_ini_edit("IMAGENUMBER_Y=4", "IMAGENUMBER_Y=0"), "IMAGENUMBER_Y",
                         False),
    "text-image-count": (_ini_edit("IMAGENUMBER_Y=4", "IMAGENUMBER_Y=four"), "not an integer",
                         False),
    "huge-level-count": (_ini_edit("HIER_0_COUNT=3", "HIER_0_COUNT=1000000000"),
                         "HIER_0_COUNT", False),
    # the associated images' name is not found: the search goes on to NONHIER_2_NAME
    "huge-nonhier-count": (_both(_ini_edit("NONHIER_COUNT=", "NONHIER_COUNT=2147483647\r\nX="),
                                 _ini_edit("=Scan data layer", "=Other layer")),
                           "NONHIER_2_NAME", False),
    "huge-file-count": (_ini_edit("FILE_COUNT=2", "FILE_COUNT=99999999"), "FILE_COUNT", False),
    "file-outside-folder": (_ini_edit("FILE_0=Data0000.dat", "FILE_0=../../../etc/passwd"),
                            "not a name", False),
    "index-outside-folder": (_ini_edit("INDEXFILE=Index.dat", "INDEXFILE=/etc/passwd"),
                             "not a name", False),
    "negative-width": (_ini_edit("DIGITIZER_WIDTH=128", "DIGITIZER_WIDTH=-5"),
                       "DIGITIZER_WIDTH", False),
    "huge-width": (_ini_edit("DIGITIZER_WIDTH=128", "DIGITIZER_WIDTH=2147483647"),
                   "DIGITIZER_WIDTH", False),
    "nan-overlap": (_ini_edit("OVERLAP_X=8", "OVERLAP_X=nan"), "not a number", False),
    "unknown-format": (_ini_edit("IMAGE_FORMAT=JPEG", "IMAGE_FORMAT=TIFF"), "image format",
                       False),
    "huge-concat": (_ini_edit("IMAGE_CONCAT_FACTOR=1", "IMAGE_CONCAT_FACTOR=40"),
                    "IMAGE_CONCAT_FACTOR", False),
    "other-slide-id": (_ini_edit("SLIDE_ID=a7c8", "SLIDE_ID=b7c8"), "SLIDE_ID", False),
    "no-index": (_remove("Index.dat"), "Index.dat", False),
    "truncated-index": (_truncate("Index.dat", 0.6), "Index.dat", False),
    "index-page-loop": (_index_patch(_page_loop), "loop", False),
    "index-huge-length": (_index_patch(_huge_length), "limit", False),
    "index-image-outside": (_index_patch(_bad_index), "outside", False),
    "index-too-many-images": (_index_patch(_too_many_images), "more images than", False),
    "index-bad-file": (_index_patch(_bad_file_number), "data file 7", False),
    "no-data-file": (_remove("Data0001.dat"), "Data0001.dat", True),
    "truncated-data-file": (_truncate("Data0000.dat", 0.5), "Data0000.dat", True),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, slides):
    d = tmp_path_factory.mktemp("mirax-damaged")
    good = slides["paths"]["positions"]
    out = {}
    for name, (edit, _, _) in DAMAGED.items():
        path = str(d / (name + ".mrxs"))
        shutil.copy(good, path)
        shutil.copytree(good[:-5], path[:-5])
        edit(path[:-5])
        out[name] = path
    return out


def _fails(path):
    """(message) of the first failure opening the slide or reading every level and image."""
    st, msg, s = T.open_status(path)
    if s is None:
        assert st != T.OK
        return msg, True
    with s:
        try:
            for level in range(s.level_count):
                W, H = s.level_dimensions()[level]
                s.read_region(0, 0, level, W, H)
            for name in s.associated_names:
                s.read_associated(name)
        except T.TesseraError as e:
            return str(e), False
    return None, False


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_copies_fail_clearly(lib, cli, damaged, name, tmp_path):
    _, words, at_read = DAMAGED[name]
    msg, at_open = _fails(damaged[name])
    assert msg is not None, "%s opened and read" % name
    assert words in msg, msg
    assert at_open or at_read, msg
    clis = [("cli", cli)]
    if os.environ.get("TESSERA_CLI_ASAN"):
        clis.append(("asan", os.environ["TESSERA_CLI_ASAN"]))
    for which, exe in clis:
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=99",
                   UBSAN_OPTIONS="halt_on_error=1:exitcode=98:print_stacktrace=1")
        out = str(tmp_path / ("%s.raw" % which))
        cmd = [exe, "info", damaged[name]] if not at_read else \
            [exe, "read", damaged[name], "--location", "0,0", "--size", "608,360", "--output",
             out]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 1, (which, r.returncode, r.stderr)
        assert words in r.stderr and "Sanitizer" not in r.stderr, (which, r.stderr)


def _png_header(w, h):
    """A PNG whose header says w x h 8-bit RGB (no pixels follow that size)."""
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_huge_png_image_fails_its_reads_within_the_limit(lib, tmp_path, source):
    """A PNG image whose header (and the INI) say 60000 x 60000: decoding it whole would take
    10 GB; its tiles fail with the limit named, without allocating it."""
    m = MW.build(source, 1, 1, 32, 24, 1, fmt="PNG")
    m.files = 1
    path = str(tmp_path / "huge.mrxs")
    folder = m.write(path)
    _ini_edit("DIGITIZER_WIDTH=32", "DIGITIZER_WIDTH=60000")(folder)
    _ini_edit("DIGITIZER_HEIGHT=24", "DIGITIZER_HEIGHT=60000")(folder)
    data = os.path.join(folder, "Data0000.dat")
    at = os.path.getsize(data)
    png = _png_header(60000, 60000)
    open(data, "ab").write(png)

    def point(index):
        page = _level0_page(index)
        struct.pack_into("<ii", index, page + 8 + 4, at, len(png))
    _index_patch(point)(folder)
    with T.open_slide(path) as s:
        assert s.level_dimensions()[0] == (60000, 60000)
        with pytest.raises(T.TesseraError) as e:
            s.read_region(0, 0, 0, 64, 64)
        assert e.value.status == T.E_LIMIT and "PNG" in str(e.value), str(e.value)


def test_openslide_rejects_the_damaged_metadata_too(damaged):
    """The copies damaged at open are no slide for OpenSlide either (so the cases are
    damage, not tessera's taste)."""
    for name in ("no-slidedat", "other-slide-id", "truncated-index", "unknown-format",
                 "zero-image-count", "no-general"):
        with pytest.raises(openslide.OpenSlideError):
            openslide.OpenSlide(damaged[name])


def test_descriptors_stay_bounded(lib, tmp_path, source):
    """A slide of many data files: each is opened once read, at most a bounded number stay
    open, and the pixels stay OpenSlide's."""
    m = MW.build(source, 5, 4, *IMAGE, 2, overlap=(8, 8))
    m.files = 60
    path = str(tmp_path / "files.mrxs")
    m.write(path)
    o = osl(path)
    with T.open_slide(path) as s:
        before = len(os.listdir("/proc/self/fd"))
        W, H = s.level_dimensions()[0]
        got = s.read_region(0, 0, 0, W, H, channels=4)
        during = len(os.listdir("/proc/self/fd"))
        assert during - before <= 32
        assert np.array_equal(got, R.openslide_region(o, 0, 0, 0, W, H))
