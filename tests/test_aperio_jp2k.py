"""Aperio SVS files with JPEG 2000 tiles (compression 33003: YCbCr components; 33005: RGB
components) read by tessera equal, byte for byte, what OpenSlide 3.4.1 reads from them, at
every level, in whole levels and in regions (inside, across tiles, at and past the edges),
with 3 and 4 channels.

The files are written at test time (tests/jp2k_writer.py): real pixels (a part of the
CMU-1-Small-Region slide as OpenSlide decodes it, and box-filtered copies of it for the
smaller levels) encoded tile by tile by OpenJPEG's opj_compress, stored by tifffile with an
Aperio ImageDescription, so OpenSlide opens them as "aperio" and decodes the tiles with its own
JPEG 2000 code and YCbCr conversion.
"""

import os
from dataclasses import dataclass

import numpy as np
import pytest

import jp2k_writer as J
import tessera_ctypes as T
import wsi_fixtures as F
import wsi_refs as R

SOURCE = "aperio-jpeg-CMU-1-Small-Region.svs"
FILL = 77


@dataclass(frozen=True)
class Svs:
    name: str
    compression: int
    mode: str             # jp2k_writer.encode_tile's mode
    origin: tuple         # where in the source slide level 0 is taken from
    size: tuple           # level 0 (width, height)
    tile: tuple           # (tile height, tile width)
    downsamples: tuple = (1, 4, 16)
    lossless: bool = False

    @property
    def levels(self):
        return [(self.size[0] // d, self.size[1] // d) for d in self.downsamples]


FIXTURES = {s.name: s for s in [
    # 4:2:2 chroma, as Aperio's "J2K/YUV16"; level sizes divide exactly (downsamples 4, 16)
    Svs("svs-j2k-33003-422-t240", 33003, "ycbcr422", (100, 200), (1600, 1200), (240, 240)),
    # full chroma, lossless wavelet; floor-sized levels, so the downsamples are fractional
    Svs("svs-j2k-33003-444-t256", 33003, "ycbcr444", (300, 1500), (1650, 1210), (256, 256),
        lossless=True),
    Svs("svs-j2k-33005-t256", 33005, "rgb", (0, 900), (1920, 1440), (256, 256)),
    Svs("svs-j2k-33005-t240", 33005, "rgb", (500, 300), (1650, 1210), (240, 240)),
]}

LEVEL_CASES = ["%s@L%d" % (n, lv) for n, s in FIXTURES.items() for lv in range(len(s.levels))]


class Files:
    """Writes each fixture once per session, on first use."""

    def __init__(self, directory):
        self.dir = directory
        self._source = None

    def path(self, name):
        spec = FIXTURES[name]
        p = os.path.join(self.dir, name + ".svs")
        if not os.path.exists(p):
            x, y = spec.origin
            w, h = spec.size
            base = np.ascontiguousarray(self.source()[y:y + h, x:x + w, :3])
            assert base.shape == (h, w, 3), "source slide too small for %s" % name
            tmp = p + ".part"
            J.write_svs(tmp, base, spec.downsamples, spec.tile, spec.compression, spec.mode,
                        spec.lossless)
            os.replace(tmp, p)
        return p

    def source(self):
        if self._source is None:
            osl = R.openslide_open(os.path.join(F.TESTDATA, SOURCE))
            w, h = osl.level_dimensions[0]
            self._source = np.asarray(osl.read_region((0, 0), 0, (w, h)))
        return self._source


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(str(tmp_path_factory.mktemp("aperio-jp2k")))


def first_tile(path, directory):
    import tifffile
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[directory]
        tf.filehandle.seek(page.dataoffsets[0])
        return (int(page.tags["Compression"].value), int(page.tags["PhotometricInterpretation"].value),
                tf.filehandle.read(page.databytecounts[0]))


# --- the files are what they claim -----------------------------------------------------------

@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_is_aperio_jpeg2000(files, name):
    """Each level directory holds the compression code and the codestream layout the fixture
    names (so the pixel tests below test what they say), and OpenSlide reads it as Aperio."""
    spec = FIXTURES[name]
    path = files.path(name)
    want_subs = [(1, 1), (2, 1), (2, 1)] if spec.mode == "ycbcr422" else [(1, 1)] * 3
    want_mct = 1 if spec.mode == "rgb" else 0
    # directory 1 is the stripped thumbnail
    for directory in [0] + list(range(2, len(spec.levels) + 1)):
        comp, photometric, data = first_tile(path, directory)
        assert (comp, photometric) == (spec.compression, 2), (directory, comp, photometric)
        assert J.codestream_layout(data) == (want_subs, want_mct), directory
    osl = R.openslide_open(path)
    assert osl.properties["openslide.vendor"] == "aperio"
    assert list(osl.level_dimensions) == spec.levels
    assert "thumbnail" in osl.associated_images


@pytest.mark.parametrize("name", list(FIXTURES))
def test_vendor_and_levels_equal_openslide(files, lib, name):
    spec = FIXTURES[name]
    path = files.path(name)
    osl = R.openslide_open(path)
    with T.open_slide(path) as ts:
        assert ts.vendor == "aperio"
        assert ts.level_count == osl.level_count
        for lv in range(ts.level_count):
            info = ts.level_info(lv)
            assert (info.width, info.height) == osl.level_dimensions[lv], lv
            assert abs(info.downsample - osl.level_downsamples[lv]) < 1e-9, lv
            assert (info.tile_height, info.tile_width) == spec.tile, lv
            assert info.compression == spec.compression, lv
        assert ts.properties.get("aperio.MPP") == osl.properties["aperio.MPP"]


# --- pixels against OpenSlide ----------------------------------------------------------------

def regions(ts, level, W, H, ds, seed):
    """Regions (level-0 x, y, level x, y, w, h, label) OpenSlide reads without resampling:
    all of them where the downsample is an integer, else those at the origin."""
    info = ts.level_info(level)
    out = []
    for lx, ly, w, h, label in R.regions_for_level(W, H, info.tile_width, info.tile_height, seed):
        if R.is_integer_ds(ds):
            d = int(round(ds))
            out.append((lx * d, ly * d, lx, ly, w, h, label))
        elif (lx, ly) == (0, 0):
            out.append((0, 0, 0, 0, w, h, label))
    return out


@pytest.mark.parametrize("case", LEVEL_CASES)
def test_regions_equal_openslide(files, lib, case):
    """tessera's RGBA regions equal OpenSlide's read_region: colour wherever OpenSlide is
    opaque, alpha everywhere (opaque exactly inside the level); outside, tessera writes the
    fill. The RGB read equals the RGBA read's colour."""
    name, level = case.rsplit("@L", 1)
    level = int(level)
    path = files.path(name)
    osl = R.openslide_open(path)
    W, H = osl.level_dimensions[level]
    ds = osl.level_downsamples[level]
    failures, checked = [], 0
    with T.open_slide(path) as ts:
        for x0, y0, lx, ly, w, h, label in regions(ts, level, W, H, ds, sum(map(ord, case))):
            what = "%s level %d region %s at level-0 (%d, %d) size %dx%d" % (
                name, level, label, x0, y0, w, h)
            o = R.openslide_region(osl, x0, y0, level, w, h)
            got4 = ts.read_region(x0, y0, level, w, h, channels=4, fill=FILL)
            got3 = ts.read_region(x0, y0, level, w, h, channels=3, fill=FILL)
            _, inside = R.crop_fill(np.zeros((H, W, 1), np.uint8), lx, ly, w, h, 0)
            m = R.describe_mismatch(o[..., 3], np.where(inside, 255, 0).astype(np.uint8), None,
                                    what + " (OpenSlide's alpha vs the level's extent)", (lx, ly))
            m = m or R.describe_mismatch(got4[..., :3], o[..., :3], inside, what + " (RGB)",
                                         (lx, ly))
            m = m or R.describe_mismatch(got4[..., 3], o[..., 3], None, what + " (alpha)",
                                         (lx, ly))
            m = m or R.describe_mismatch(got4[..., :3], np.full_like(got4[..., :3], FILL),
                                         ~inside, what + " (fill outside)", (lx, ly))
            m = m or R.describe_mismatch(got3, got4[..., :3], None, what + " (3 vs 4 channels)",
                                         (lx, ly))
            if m:
                failures.append(m)
            checked += 1
    assert checked >= 1
    assert not failures, "%d region(s) differ:\n  " % len(failures) + "\n  ".join(failures[:8])


@pytest.mark.parametrize("name", list(FIXTURES))
def test_whole_levels_equal_openslide(files, lib, name):
    """Every level read whole (split over workers) equals OpenSlide's read of the level."""
    path = files.path(name)
    osl = R.openslide_open(path)
    with T.open_slide(path) as ts:
        for lv in range(osl.level_count):
            W, H = osl.level_dimensions[lv]
            o = R.openslide_region(osl, 0, 0, lv, W, H)
            assert (o[..., 3] == 255).all(), lv
            for channels in (3, 4):
                got = ts.read_level(lv, channels=channels, num_workers=4)
                m = R.describe_mismatch(got[..., :3], o[..., :3],
                                        what="%s level %d, %d channels" % (name, lv, channels))
                assert m is None, m
                if channels == 4:
                    assert (got[..., 3] == 255).all(), lv


@pytest.mark.parametrize("name", [n for n, s in FIXTURES.items() if s.compression == 33003])
def test_ycbcr_conversion_is_openslides(files, lib, name):
    """The 33003 fixtures tell OpenSlide's YCbCr arithmetic (rounded products) from libvips'
    (truncated ones): libvips' decode of the same level 0 differs from OpenSlide's, and
    tessera's equals OpenSlide's."""
    path = files.path(name)
    osl = R.openslide_open(path)
    W, H = osl.level_dimensions[0]
    o = R.openslide_region(osl, 0, 0, 0, W, H)[..., :3]
    v = R.vips_decode(path, ["--page", "0"])
    assert v.shape == o.shape
    differ = (v != o).any(axis=2)
    assert differ.mean() > 0.05, "libvips and OpenSlide agree on %.3f of the pixels" % (
        1 - differ.mean())
    with T.open_slide(path) as ts:
        got = ts.read_region(0, 0, 0, W, H)
    m = R.describe_mismatch(got, o, what="%s level 0 vs OpenSlide" % name)
    assert m is None, m
