"""Differential tests: regions read by tessera must equal, byte for byte, what OpenSlide and
libvips decode from the same files, at every level, at many positions and sizes.

Every slide and level is its own test id ("case" = "<slide>@L<level>").
"""

import math

import numpy as np
import pytest

import tessera_ctypes as T
import wsi_fixtures as F
import wsi_refs as R

CASES_ALL = ["%s@L%d" % c for c in F.level_cases()]
# OpenSlide 3.4.1 sees only level 0 of a SubIFD pyramid, and cannot open some files at all
CASES_OS = ["%s@L%d" % c for c in F.level_cases(lambda s, lv: s.openslide and
                                                  not (s.subifd and lv > 0))]
SLIDES_ALL = list(F.SPECS)

# OpenSlide compared region by region; its whole-level reads are kept to moderate sizes
OS_WHOLE_LEVEL_MAX_PIXELS = 6_000_000
FILL = 77


def parse_case(case):
    name, lv = case.rsplit("@L", 1)
    return F.SPECS[name], int(lv)


def tiff_page(path, spec, level):
    """tifffile's view of the directory that holds a level (for its raw tags)."""
    import tifffile
    tf = tifffile.TiffFile(path)
    if spec.kind == "testdata":
        page = tf.pages[spec.pages[level]]
    elif spec.subifd and level > 0:
        page = tf.pages[0].pages[level - 1]
    else:
        page = tf.pages[level]
    return tf, page


def raw_tags(path, spec, level):
    """(width, height, tiled, tile_width, tile_height, compression, samples) from the tags."""
    tf, page = tiff_page(path, spec, level)
    try:
        tags = page.tags
        w = tags["ImageWidth"].value
        h = tags["ImageLength"].value
        comp = int(tags["Compression"].value) if "Compression" in tags else 1
        spp = tags["SamplesPerPixel"].value if "SamplesPerPixel" in tags else 1
        if "TileWidth" in tags:
            return w, h, 1, tags["TileWidth"].value, tags["TileLength"].value, comp, spp
        rps = tags["RowsPerStrip"].value if "RowsPerStrip" in tags else 2 ** 32 - 1
        return w, h, 0, w, min(rps, h), comp, spp
    finally:
        tf.close()


def reference_dims(path, spec, level):
    """Level size as libvips' tiffload sees it (vipsheader would pick openslideload for the
    scanner files, so for those the size comes from the tags as tifffile reads them)."""
    if spec.kind == "testdata":
        return tuple(raw_tags(path, spec, level)[:2])
    return R.vips_dims(path, spec.vips_load_args(level))


class Case:
    """One slide level with its tessera handle and references."""

    def __init__(self, slides, case):
        self.spec, self.level = parse_case(case)
        self.path = slides.path(self.spec.name)
        self.ts = T.open_slide(self.path)
        self.ref = R.vips_decode(self.path, self.spec.vips_load_args(self.level))
        self.H, self.W = self.ref.shape[:2]
        if self.level == 0:
            self.l0 = (self.W, self.H)
        else:
            self.l0 = reference_dims(self.path, self.spec, 0)
        self.ds = R.downsample(self.l0, (self.W, self.H))
        n = self.ts.level_count
        assert self.level < n, "tessera has %d levels; the file has level %d (%dx%d)" % (
            n, self.level, self.W, self.H)
        self.info = self.ts.level_info(self.level)
        assert (self.info.width, self.info.height) == (self.W, self.H), (
            "tessera level %d is %dx%d, libvips decodes %dx%d" % (
                self.level, self.info.width, self.info.height, self.W, self.H))
        assert abs(self.info.downsample - self.ds) < 1e-9, (
            "tessera downsample %r, expected %r" % (self.info.downsample, self.ds))
        self.fill = self.spec.background if self.spec.background is not None else self.ts.background

    def regions(self):
        seed = sum(map(ord, self.spec.name)) * 10 + self.level
        return R.regions_for_level(self.W, self.H, self.info.tile_width, self.info.tile_height,
                                   seed)

    def level0_xy(self, lx, ly, i):
        """A level-0 location whose level origin (floor(x / ds)) is (lx, ly); odd-numbered
        regions use the last level-0 pixel that still maps to the same level pixel."""
        if self.level == 0:
            return lx, ly, lx, ly
        ds = self.ds
        if R.is_integer_ds(ds):
            d = int(round(ds))
            off = (d - 1) if i % 2 else 0
            return lx * d + off, ly * d + off, lx, ly

        def conv(v):
            x0 = math.ceil(v * ds) if i % 2 else math.floor(v * ds)
            # keep clear of values whose quotient is within rounding of an integer
            while x0 != 0 and abs(x0 / ds - round(x0 / ds)) < 1e-6:
                x0 += 1
            return x0, math.floor(x0 / ds)

        x0, lx2 = conv(lx)
        y0, ly2 = conv(ly)
        return x0, y0, lx2, ly2

    def close(self):
        self.ts.close()


@pytest.fixture
def ctx(slides, case):
    c = Case(slides, case)
    yield c
    c.close()


def _report(failures):
    if failures:
        n = len(failures)
        raise AssertionError("%d region(s) differ:\n  " % n + "\n  ".join(failures[:8]))


# --- structure ----------------------------------------------------------------------------

def same_property(key, ours, theirs):
    """Text properties must match exactly; numbers (OpenSlide prints the float libtiff gives,
    e.g. '28.340000152587891' for the rational 2834/100) must match as single floats."""
    if ours == theirs:
        return True
    if ours is None or key not in ("tiff.XResolution", "tiff.YResolution", "tiff.XPosition",
                                   "tiff.YPosition"):
        return False
    try:
        a, b = float(ours), float(theirs)
    except ValueError:
        return False
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-30)


@pytest.mark.parametrize("name", SLIDES_ALL)
def test_level_structure(slides, lib, name):
    """Level count, sizes and downsamples agree with OpenSlide (matched by size where OpenSlide
    adds levels of its own) and libvips; tile size, tiling, compression and samples agree with
    the file's tags as tifffile reads them; vendor and associated images agree with OpenSlide."""
    spec = F.SPECS[name]
    path = slides.path(name)
    with T.open_slide(path) as ts:
        n = ts.level_count
        dims = ts.level_dimensions()
        # the expected stored levels, from libvips (and the writer's parameters)
        exp = [reference_dims(path, spec, lv) for lv in range(spec.nlevels)]
        if spec.kind != "testdata":
            assert exp == [tuple(d) for d in spec.levels], "libvips sees %r, written %r" % (
                exp, spec.levels)
        stored = list(range(n))
        if spec.vendor == "hamamatsu":
            # and levels decoded from stored ones at 1/2, 1/4, 1/8, as OpenSlide adds them
            # (compared with OpenSlide below and in test_ndpi.py)
            stored = [dims.index(d) for d in exp if d in dims]
            assert [dims[lv] for lv in stored] == exp, "tessera levels %r, libvips %r" % (dims,
                                                                                         exp)
        else:
            assert dims == exp, "tessera levels %r, libvips %r" % (dims, exp)
        if spec.subifd:
            assert R.vips_subifd_count(path) == n - 1
        for page, lv in enumerate(stored):
            info = ts.level_info(lv)
            assert abs(info.downsample - R.downsample(exp[0], exp[page])) < 1e-9, (lv, info.downsample)
            w, h, tiled, tw, th, comp, spp = raw_tags(path, spec, page)
            if spec.vendor == "hamamatsu" and th == h:
                # an NDPI strip is read by restart interval (test_ndpi.py): OpenSlide's grid
                osl = R.openslide_open(path)
                k = list(osl.level_dimensions).index((w, h))
                tw = int(osl.properties["openslide.level[%d].tile-width" % k])
                th = int(osl.properties["openslide.level[%d].tile-height" % k])
            got = (info.width, info.height, info.tiled, info.tile_width, info.tile_height,
                   info.compression, info.samples_per_pixel)
            assert got == (w, h, tiled, tw, th, comp, spp), (
                "level %d: tessera (w, h, tiled, tw, th, compression, spp) = %r, tags say %r"
                % (lv, got, (w, h, tiled, tw, th, comp, spp)))
        assert ts.vendor == spec.vendor
        props = ts.properties
        keys = ts.property_keys()
        assert keys == sorted(keys), "property keys are not sorted"
        assert len(set(keys)) == len(keys), "duplicate property keys"
        assert props.get("tessera.vendor") == spec.vendor, props.get("tessera.vendor")
        if spec.openslide:
            osl = R.openslide_open(path)
            assert osl.properties.get("openslide.vendor") == spec.vendor
            os_dims = list(osl.level_dimensions)
            if spec.subifd:
                assert os_dims == [dims[0]], os_dims
            elif spec.vendor == "hamamatsu":
                # the same levels: OpenSlide's scaled JPEG decodes are tessera's too
                assert dims == os_dims, "tessera %r, OpenSlide %r" % (dims, os_dims)
                for lv in range(n):
                    assert osl.level_downsamples[lv] == ts.level_info(lv).downsample
            else:
                assert dims == os_dims, "tessera %r, OpenSlide %r" % (dims, os_dims)
                for lv in range(n):
                    assert abs(osl.level_downsamples[lv] - ts.level_info(lv).downsample) < 1e-9, (
                        lv, osl.level_downsamples[lv], ts.level_info(lv).downsample)
            names = set(ts.associated_names)
            assert set(osl.associated_images.keys()) <= names, (
                "OpenSlide has associated images %r, tessera %r" % (
                    sorted(osl.associated_images.keys()), sorted(names)))
            # every TIFF tag property OpenSlide shows (ImageDescription, Software, XResolution,
            # ResolutionUnit, ...) is there with the same text
            diffs = ["%s: tessera %r, OpenSlide %r" % (k, props.get(k), v)
                     for k, v in sorted(osl.properties.items())
                     if k.startswith("tiff.") and not same_property(k, props.get(k), v)]
            assert not diffs, "; ".join(d[:300] for d in diffs)


@pytest.mark.parametrize("name", [n for n, s in F.SPECS.items() if s.background is not None])
def test_default_background(slides, lib, name):
    """255 for the Aperio files (white glass), 0 for generic TIFF, and used outside the image
    when the caller gives no fill."""
    spec = F.SPECS[name]
    with T.open_slide(slides.path(name)) as ts:
        assert ts.background == spec.background
        last = ts.level_count - 1
        info = ts.level_info(last)
        for channels in (3, 4):
            px = ts.read_region(-int(10 * info.downsample), -int(10 * info.downsample), last, 4, 3,
                                channels=channels)
            assert (px[..., :3] == spec.background).all(), px[..., :3].tolist()
            if channels == 4:
                assert (px[..., 3] == 0).all()
            px = ts.read_region(int((info.width + 3) * info.downsample) + 1, 0, last, 2, 2,
                                channels=channels)
            assert (px[..., :3] == spec.background).all(), px[..., :3].tolist()


# --- pixels against libvips ---------------------------------------------------------------

@pytest.mark.parametrize("case", CASES_ALL)
def test_vs_vips(ctx):
    """tessera's RGB read equals libvips' decode of the level (grayscale expanded, alpha
    dropped), with the default fill outside; RGBA reads carry the source alpha inside and 0
    outside (255 inside for opaque sources)."""
    c = ctx
    failures = []
    for i, (lx, ly, w, h, label) in enumerate(c.regions()):
        x0, y0, olx, oly = c.level0_xy(lx, ly, i)
        exp, inside = R.crop_fill(c.ref, olx, oly, w, h, c.fill)
        what = "%s level %d region %s at level-0 (%d, %d) -> level (%d, %d) size %dx%d" % (
            c.spec.name, c.level, label, x0, y0, olx, oly, w, h)
        try:
            got = c.ts.read_region(x0, y0, c.level, w, h, channels=3)
        except T.TesseraError as e:
            failures.append("%s: %s" % (what, e))
            continue
        m = R.describe_mismatch(got, R.to_rgb(exp), what=what + " (RGB)", origin=(olx, oly))
        if m:
            failures.append(m)
            continue
        if w * h > 16_000_000:
            continue
        got4 = c.ts.read_region(x0, y0, c.level, w, h, channels=4)
        m = R.describe_mismatch(got4[..., :3], got, what=what + " (RGB of RGBA read vs RGB read)",
                                origin=(olx, oly))
        if m:
            failures.append(m)
            continue
        exp_alpha = np.where(inside, R.alpha_of(exp), 0).astype(np.uint8)
        m = R.describe_mismatch(got4[..., 3], exp_alpha, what=what + " (alpha)", origin=(olx, oly))
        if m:
            failures.append(m)
    _report(failures)


@pytest.mark.parametrize("case", CASES_ALL)
def test_fill_and_stride(ctx):
    """A caller's fill value is used outside the image (alpha 0 there), and a row stride
    larger than width * channels leaves the padding bytes untouched."""
    c = ctx
    W, H = c.W, c.H
    regions = [(W - 9, H - 7, 23, 19), (-5, -6, 17, 13), (W // 3, H // 3, 41, 29)]
    for i, (lx, ly, w, h) in enumerate(regions):
        x0, y0, olx, oly = c.level0_xy(lx, ly, i)
        exp, inside = R.crop_fill(c.ref, olx, oly, w, h, FILL)
        for channels in (3, 4):
            pad = 13 + channels
            stride = w * channels + pad
            size = stride * (h - 1) + w * channels
            buf = np.full(stride * h, 0xA5, np.uint8)
            st, msg = c.ts.read_into(buf, x0, y0, c.level, w, h, channels=channels, fill=FILL,
                                     stride=stride, dst_size=size)
            assert st == T.OK, "read failed: %s" % msg
            rows = buf.reshape(h, stride)
            assert (rows[:, w * channels:] == 0xA5).all(), "stride padding was written"
            img = rows[:, :w * channels].reshape(h, w, channels)
            what = "%s level %d fill %d stride %d channels %d at level (%d, %d) %dx%d" % (
                c.spec.name, c.level, FILL, stride, channels, olx, oly, w, h)
            m = R.describe_mismatch(img[..., :3], R.to_rgb(exp), what=what, origin=(olx, oly))
            assert m is None, m
            assert (img[..., :3][~inside] == FILL).all()
            if channels == 4:
                exp_alpha = np.where(inside, R.alpha_of(exp), 0).astype(np.uint8)
                m = R.describe_mismatch(img[..., 3], exp_alpha, what=what + " alpha",
                                        origin=(olx, oly))
                assert m is None, m
                if c.spec.bands != 4 and c.ref.shape[2] != 4:
                    assert (img[..., 3][inside] == 255).all()


# --- pixels against OpenSlide -------------------------------------------------------------

def openslide_level(osl, dims):
    ods = list(osl.level_dimensions)
    assert tuple(dims) in ods, "OpenSlide has no level of size %r (it has %r)" % (dims, ods)
    return ods.index(tuple(dims))


def openslide_unreliable(path, spec, level, W, H):
    """OpenSlide 3.4.1 decodes everything but 3-sample JPEG through libtiff's
    TIFFReadRGBATile, which with libtiff 4.5 misplaces the pixels of a level smaller than one
    tile ("Raster width ... shall not be larger than image width"): there OpenSlide disagrees
    with libvips and tessera is held to libvips."""
    _, _, tiled, tw, th, comp, spp = raw_tags(path, spec, level)
    if comp == F.JPEG and spp == 3:
        return False
    return tiled and (W < tw or H < th)


@pytest.mark.parametrize("case", CASES_OS)
def test_vs_openslide(ctx):
    """tessera's RGBA read equals OpenSlide's read_region where OpenSlide is opaque; alpha
    equals OpenSlide's everywhere; outside the image tessera writes the fill with alpha 0."""
    c = ctx
    osl = R.openslide_open(c.path)
    olv = openslide_level(osl, (c.W, c.H))
    ods = osl.level_downsamples[olv]
    assert abs(ods - c.ds) < 1e-9, (ods, c.ds)
    integer = R.is_integer_ds(ods)
    quirk = openslide_unreliable(c.path, c.spec, c.level, c.W, c.H)
    failures = []
    checked = 0
    for i, (lx, ly, w, h, label) in enumerate(c.regions()):
        if not integer and (lx, ly) != (0, 0):
            continue  # OpenSlide resamples at a fractional level origin
        if w * h > OS_WHOLE_LEVEL_MAX_PIXELS:
            continue
        d = int(round(ods))
        x0, y0 = lx * d, ly * d
        what = "%s level %d (OpenSlide level %d) region %s at level-0 (%d, %d) size %dx%d" % (
            c.spec.name, c.level, olv, label, x0, y0, w, h)
        try:
            got = c.ts.read_region(x0, y0, c.level, w, h, channels=4, fill=FILL)
        except T.TesseraError as e:
            failures.append("%s: %s" % (what, e))
            continue
        o = R.openslide_region(osl, x0, y0, olv, w, h)
        checked += 1
        _, inside = R.crop_fill(c.ref, lx, ly, w, h, 0)
        opaque = o[..., 3] == 255
        if quirk:
            ref, _ = R.crop_fill(c.ref, lx, ly, w, h, FILL)
            agree = opaque & (o[..., :3] == R.to_rgb(ref)).all(axis=2)
            m = R.describe_mismatch(got[..., :3], o[..., :3], agree, what + " (RGB, opaque)",
                                    (lx, ly))
            m = m or R.describe_mismatch(got[..., :3], R.to_rgb(ref), inside,
                                         what + " (RGB vs libvips where OpenSlide is wrong)",
                                         (lx, ly))
        else:
            m = R.describe_mismatch(got[..., :3], o[..., :3], opaque, what + " (RGB, opaque)",
                                    (lx, ly))
            m = m or R.describe_mismatch(got[..., 3], o[..., 3], None, what + " (alpha)",
                                         (lx, ly))
        m = m or R.describe_mismatch(got[..., :3], np.full_like(got[..., :3], FILL), ~inside,
                                     what + " (fill outside)", (lx, ly))
        m = m or R.describe_mismatch(got[..., 3], np.zeros_like(got[..., 3]), ~inside,
                                     what + " (alpha outside)", (lx, ly))
        if m:
            failures.append(m)
    assert checked >= 1
    _report(failures)
