"""cuCIM's Python API and behaviour on tessera.CuImage (issue 17), one test per behaviour:
what read_region returns, the array interface, dtype, the tessera.clara module paths, the
cache object, the missing-file error, physical size from TIFF resolution tags, origin and
direction, the channels of non-RGB files, the bad-level error. docs/cucim-compat.md lists
the whole API; tools/run_cucim_tests.sh runs cuCIM's own tests against tessera.

Fixtures are written here by tifffile and libvips; expected values come from OpenSlide
(python3-openslide), tifffile and plain tessera reads (tessera.Slide), never typed in."""

import math
import os
import subprocess
import warnings

import numpy as np
import openslide
import pytest
import tifffile

import tessera
from tessera import CuImage, Slide

import wsi_fixtures as F

APERIO = os.path.join(F.TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")
MIB = 1 << 20


def live_arrays():
    return tessera._tessera._live()["arrays"]


@pytest.fixture
def nocache_after():
    yield
    CuImage.cache("nocache")


def write_tiff(path, array, **kw):
    """A tiled TIFF by tifffile (16 x 16 tiles)."""
    tifffile.imwrite(path, array, tile=(16, 16), **kw)
    return str(path)


def pattern(h, w, c):
    """Distinct pixel values (a gradient), so that a shifted or mixed read shows."""
    y, x, k = np.mgrid[0:h, 0:w, 0:c]
    return ((x * 7 + y * 13 + k * 61) % 251).astype(np.uint8)


def write_pyramid(path, sizes, px_per_cm):
    """A pyramid by tifffile: levels of sizes (width, height), each the resolution a writer
    gives its level (px_per_cm / (level + 1), as cuCIM's fixture writes it)."""
    with tifffile.TiffWriter(path) as tw:
        for i, (w, h) in enumerate(sizes):
            tw.write(pattern(h, w, 3), tile=(16, 16), photometric="rgb",
                     subfiletype=1 if i else 0, resolution=(px_per_cm / (i + 1),) * 2,
                     resolutionunit="CENTIMETER")
    return str(path)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """Three levels, 0.25 um pixels (40000 per cm) at level 0."""
    return write_pyramid(tmp_path_factory.mktemp("pyr") / "pyr.tif",
                         [(512, 384), (256, 192), (128, 96)], 40000.0)


# ---- 1. read_region returns an image --------------------------------------------------------


def test_read_region_returns_an_image_over_the_same_memory(pyramid):
    with CuImage(pyramid) as img, Slide(pyramid) as plain:
        level = 1
        ds = img.resolutions["level_downsamples"][level]
        before = live_arrays()
        region = img.read_region((100, 200), (50, 40), level)
        assert isinstance(region, tessera.Region) and isinstance(region, tessera.Array)
        # the pixels: those of a plain read, in the region's own memory (no copy made)
        exp = np.asarray(plain.read_region((100, 200), (50, 40), level))
        a = np.asarray(region)
        assert np.array_equal(a, exp)
        ptr = region.__array_interface__["data"][0]
        assert a.__array_interface__["data"][0] == ptr
        assert np.from_dlpack(region).__array_interface__["data"][0] == ptr
        mv = memoryview(region)
        a[0, 0, 0] ^= 0xFF
        assert mv[0, 0, 0] == a[0, 0, 0]  # one memory
        # cuCIM's image attributes, with the values cuCIM gives a region
        assert region.shape == (40, 50, 3) and region.shape == [40, 50, 3]
        assert region.ndim == 3 and region.dims == "YXC"
        assert region.size("XY") == [50, 40] and region.size() == [40, 50, 3]
        assert region.dtype == np.uint8 and region.typestr == "|u1"
        assert region.channel_names == ["R", "G", "B"]
        assert region.resolutions == {"level_count": 1, "level_dimensions": ((50, 40),),
                                      "level_downsamples": (1.0,),
                                      "level_tile_sizes": ((50, 40),)}
        # cuCIM divides the slide's spacing by the level's downsample
        assert region.spacing() == pytest.approx([v / ds for v in img.spacing("YX")] + [1.0])
        assert region.spacing_units() == img.spacing_units() == ["micrometer", "micrometer",
                                                                 "color"]
        assert region.origin == img.origin and region.direction == img.direction
        assert region.coord_sys == "LPS" and region.device == "cpu" and region.is_loaded
        assert region.associated_images == set() and region.raw_metadata == ""
        meta = region.metadata
        assert list(meta) == ["cucim"]
        assert meta["cucim"]["shape"] == [40, 50, 3]
        assert meta["cucim"]["spacing"] == region.spacing()
        assert meta["cucim"]["resolutions"]["level_dimensions"] == [[50, 40]]
        # tessera.Slide keeps its plain Array
        assert type(plain.read_region((0, 0), (4, 4))) is tessera.Array
        del region, a, mv, exp
    assert live_arrays() == before  # the region and the Array it shows are gone


def test_read_region_whole_level_and_batches(pyramid):
    with CuImage(pyramid) as img:
        whole = img.read_region(level=2)
        w, h = img.resolutions["level_dimensions"][2]
        assert whole.shape == (h, w, 3) and whole.resolutions["level_dimensions"] == ((w, h),)
        # batches stay Arrays: the batch path is not touched
        batches = list(img.read_region([(0, 0), (64, 64)], (32, 32), batch_size=2))
        assert len(batches) == 1 and type(batches[0]) is tessera.Array


# ---- 2. __array_interface__ -------------------------------------------------------------


def test_array_interface_strides_none_and_descr():
    with CuImage(APERIO) as img:
        region = img.read_region((0, 0), (30, 20))
        batch = next(iter(img.read_region([(0, 0), (40, 40)], (30, 20), batch_size=2)))
    for arr, shape in ((region, (20, 30, 3)), (batch, (2, 20, 30, 3)), (batch[1], (20, 30, 3))):
        ai = arr.__array_interface__
        assert ai["strides"] is None  # C-contiguous, as the protocol reads None
        assert ai["descr"] == [("", "|u1")] and ai["typestr"] == "|u1"
        assert ai["shape"] == shape and ai["version"] == 3
        # NumPy reads it to the same memory and the same values as the buffer protocol
        a = np.asarray(arr)
        assert a.shape == shape and a.flags.c_contiguous
        assert a.__array_interface__["data"][0] == ai["data"][0]
        assert np.array_equal(a, np.frombuffer(memoryview(arr), np.uint8).reshape(shape))


# ---- 3. dtype ---------------------------------------------------------------------------


def test_dtype_is_cucims_and_numpys():
    from tessera.clara import DLDataType, DLDataTypeCode

    with CuImage(APERIO) as img:
        region = img.read_region((0, 0), (4, 4))
        for dt in (img.dtype, region.dtype):
            assert (dt.code, dt.bits, dt.lanes) == (1, 8, 1)
            assert dt.code == DLDataTypeCode.DLUInt
            assert dt == DLDataType(DLDataTypeCode.DLUInt, 8, 1)
            assert dt != DLDataType(DLDataTypeCode.DLInt, 8, 1)
            assert dt == np.uint8 and dt == np.dtype("uint8") and np.dtype("uint8") == dt
            assert dt != np.int8 and dt != np.uint16
            assert np.dtype(dt) == np.uint8
            assert np.zeros(2, dtype=dt).dtype == np.uint8
            assert dt.itemsize == 1 and dt.name == "uint8" and dt.kind == "u"
            assert hash(dt) == hash(np.dtype("uint8"))
            assert np.asarray(region).dtype == dt
    assert DLDataType(DLDataTypeCode.DLFloat, 32, 1) == np.float32
    with pytest.raises(TypeError):
        np.dtype(DLDataType(DLDataTypeCode.DLBfloat, 16, 1))


# ---- 4. module paths --------------------------------------------------------------------


def test_clara_module_paths():
    import tessera.clara.cache
    from tessera.clara import CuImage as ClaraCuImage, DLDataType, DLDataTypeCode
    from tessera.clara.cache import CacheType, ImageCache, preferred_memory_capacity

    assert ClaraCuImage is CuImage
    with CuImage(APERIO) as img:
        assert DLDataType(DLDataTypeCode.DLUInt, 8, 1) == img.dtype
    assert tessera.clara.cache.preferred_memory_capacity is preferred_memory_capacity
    assert isinstance(CuImage.cache(), ImageCache)
    assert int(CacheType.SharedMemory) == 2


# ---- 5. the cache object ----------------------------------------------------------------


def test_cache_type_capacity_and_names(nocache_after):
    from tessera.clara.cache import CacheType

    cache = CuImage.cache("per_process", memory_capacity=64)
    assert isinstance(cache.type, CacheType) and int(cache.type) == 1
    assert cache.type == CacheType.PerProcess and cache.type == "per_process"
    # cuCIM's count: one tile per 256 x 256 x 3 bytes of the memory
    assert cache.capacity == (64 * MIB) // (256 * 256 * 3) and cache.capacity > 0
    assert cache.config["capacity"] == cache.capacity
    assert CuImage.cache("per_process", memory_capacity=64, capacity=7).capacity == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = CuImage.cache("no_cache")  # cuCIM's spelling in its docs and tests
    assert int(off.type) == 0 and off.capacity == 0 and off.memory_capacity == 0
    assert off.type == "nocache"
    CuImage.cache("per_process", memory_capacity=8)
    with pytest.warns(UserWarning, match="unknown cache type 'lru'"):
        lru = CuImage.cache("lru")  # cuCIM silently uses no cache for it
    assert int(lru.type) == 0 and lru.memory_capacity == 0
    assert int(CuImage.cache(CacheType.PerProcess, memory_capacity=2).type) == 1


def test_cache_reserve_grows(nocache_after):
    with CuImage(APERIO) as img:
        cache = CuImage.cache("per_process", memory_capacity=2, record_stat=True)
        for _ in range(2):
            img.read_region((0, 0), (8, 8))  # missed twice: cached
        assert (cache.size, cache.hit_count, cache.miss_count) == (1, 0, 2)
        cache.reserve(4)
        # grown in place: the tile stays, and so do the statistics
        assert (cache.size, cache.hit_count, cache.miss_count) == (1, 0, 2)
        assert cache.memory_capacity == 4 * MIB and cache.free_memory == 4 * MIB - \
            cache.memory_size
        assert cache.capacity == (4 * MIB) // (256 * 256 * 3)
        assert int(cache.type) == 1 and cache.record() is True
        cache.reserve(1, capacity=500)  # a smaller memory_capacity is left as it is
        assert cache.memory_capacity == 4 * MIB and cache.capacity == 500
        cache.reserve(3)                # nothing larger: nothing changes
        assert cache.memory_capacity == 4 * MIB and cache.capacity == 500
        # the tile held before the growth is a hit, not decoded again
        img.read_region((0, 0), (8, 8))
        assert (cache.size, cache.hit_count, cache.miss_count) == (1, 1, 2)
    off = CuImage.cache("nocache")
    off.reserve(64)
    assert int(off.type) == 0 and off.memory_capacity == 0


def test_preferred_memory_capacity(tmp_path):
    from tessera.clara.cache import preferred_memory_capacity

    # cuCIM's documented figures (its docstring and tests): a 1M x 1M image of 256 x 256 tiles
    big = dict(image_size=(1 << 20, 1 << 20), tile_size=(256, 256), bytes_per_pixel=3)
    assert preferred_memory_capacity(None, patch_size=(256, 256), **big) == 1536
    assert preferred_memory_capacity(None, patch_size=(512, 512), **big) == 2304
    # from an image: its size, level-0 tile size and bytes per pixel
    with CuImage(APERIO) as img:
        w, h = img.size("XY")
        tile = img.resolutions["level_tile_sizes"][0]
        assert preferred_memory_capacity(img, patch_size=(224, 224)) == \
            preferred_memory_capacity(None, (w, h), tile, (224, 224), 3) > 0
    # tile and patch default to 256 x 256
    assert preferred_memory_capacity(None, (5000, 4000)) == \
        preferred_memory_capacity(None, (5000, 4000), (256, 256), (256, 256), 3)
    # an RGBA file counts 4 bytes a pixel
    p = write_tiff(tmp_path / "rgba.tif", pattern(64, 4096, 4), photometric="rgb",
                   extrasamples=["unassalpha"])
    with CuImage(p) as img:
        assert preferred_memory_capacity(img) == \
            preferred_memory_capacity(None, (4096, 64), (16, 16), None, 4)
    with pytest.raises(ValueError, match="image_size"):
        preferred_memory_capacity(None)


# ---- 6. missing file --------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CuImage, Slide])
def test_missing_file_is_value_error_and_os_error(tmp_path, cls):
    missing = str(tmp_path / "no-such-slide.tif")
    for catch in (ValueError, OSError, FileNotFoundError, tessera.SlideNotFoundError):
        with pytest.raises(catch, match=r"Cannot open .*") as e:
            cls(missing)
        assert e.value.filename == missing and missing in str(e.value)
    # a file that is there but not readable stays an OSError only
    with pytest.raises(OSError) as e:
        cls(str(tmp_path))
    assert not isinstance(e.value, ValueError)


# ---- 7. physical size from the TIFF resolution tags ----------------------------------------


def openslide4_mpp(props):
    """OpenSlide 4's mpp of a generic TIFF, from the tags as OpenSlide reads them (its tiff.*
    properties; Debian's OpenSlide 3.4 reads the tags but sets no mpp for a generic TIFF):
    micrometres from centimetres or inches, none for no unit or a zero resolution."""
    per_unit = {"centimeter": 10000.0, "inch": 25400.0}.get(props.get("tiff.ResolutionUnit"))
    try:
        x, y = float(props["tiff.XResolution"]), float(props["tiff.YResolution"])
    except KeyError:
        return None
    if per_unit is None or x <= 0 or y <= 0:
        return None
    return per_unit / x, per_unit / y


RESOLUTIONS = [
    ((10000 / 2.6, 10000 / 2.6), "CENTIMETER"),  # a 2.6 um slide
    ((0.3, 0.5), "CENTIMETER"),
    ((2540.0, 5080.0), "INCH"),
    ((9.0, 1.0), "NONE"),
    (((0, 1), (0, 1)), "INCH"),  # a zero resolution: no physical size
]


@pytest.mark.parametrize("resolution,unit", RESOLUTIONS)
def test_generic_tiff_resolution(tmp_path, resolution, unit):
    p = write_tiff(tmp_path / "res.tif", pattern(64, 96, 3), photometric="rgb",
                   resolution=resolution, resolutionunit=unit)
    osl = openslide.OpenSlide(p)
    assert osl.properties["openslide.vendor"] == "generic-tiff"
    want = openslide4_mpp(osl.properties)
    with tifffile.TiffFile(p) as tf:  # the tags as tifffile reads them
        tags = tf.pages[0].tags
        xres = tags["XResolution"].value[0] / tags["XResolution"].value[1]
        yres = tags["YResolution"].value[0] / tags["YResolution"].value[1]
        tunit = {1: "", 2: "inch", 3: "centimeter"}[int(tags["ResolutionUnit"].value)]
    with CuImage(p) as img, Slide(p) as plain:
        props = img.properties()
        if want is None:
            assert "tessera.mpp-x" not in props
            assert img.spacing_units() == ["", "", "color"]
            if tunit == "":  # cuCIM's spacing without a unit: the resolution as it is
                assert img.spacing() == pytest.approx([yres, xres, 1.0], rel=1e-5)
            else:
                assert img.spacing() == [1.0, 1.0, 1.0]
            assert plain.spacing() == [1.0, 1.0, 1.0]
        else:
            assert float(props["tessera.mpp-x"]) == pytest.approx(want[0], rel=1e-6)
            assert float(props["tessera.mpp-y"]) == pytest.approx(want[1], rel=1e-6)
            assert img.spacing() == pytest.approx([want[1], want[0], 1.0], rel=1e-6)
            assert img.spacing_units() == ["micrometer", "micrometer", "color"]
            assert plain.spacing() == img.spacing()
        tiff = img.metadata["tiff"]
        assert tiff["resolution_unit"] == tunit
        assert isinstance(tiff["x_resolution"], float) and isinstance(tiff["y_resolution"], float)
        assert tiff["x_resolution"] == pytest.approx(xres, rel=1e-5)
        assert tiff["y_resolution"] == pytest.approx(yres, rel=1e-5)
        assert tiff["software"] == osl.properties.get("tiff.Software", "")
        assert tiff["model"] == ""
        # tessera's own keys stay beside cuCIM's (printed with 6 digits)
        assert float(tiff["XResolution"]) == pytest.approx(
            float(osl.properties["tiff.XResolution"]), rel=1e-5)
        assert set(img.metadata) == {"cucim", "tiff"}
        assert "tessera" in plain.metadata


def test_generic_tiff_resolution_from_libvips(tmp_path):
    """libvips writes pixels per millimetre as pixels per centimetre: 2.6 um pixels."""
    src = write_tiff(tmp_path / "src.tif", pattern(64, 64, 3), photometric="rgb")
    p = str(tmp_path / "vips.tif")
    subprocess.run(["vips", "tiffsave", src, p, "--tile", "--tile-width", "16",
                    "--tile-height", "16", "--xres", str(1000 / 2.6), "--yres",
                    str(1000 / 2.6)], check=True)
    want = openslide4_mpp(openslide.OpenSlide(p).properties)
    assert want is not None and want[0] == pytest.approx(2.6, rel=1e-5)
    with CuImage(p) as img:
        assert float(img.properties()["tessera.mpp-x"]) == pytest.approx(want[0], rel=1e-6)
        assert img.spacing("XY") == pytest.approx(list(want), rel=1e-6)
        region = img.read_region((0, 0), (8, 8))
        assert region.spacing("XY") == pytest.approx(list(want), rel=1e-6)


# ---- 8. origin and direction -------------------------------------------------------------


def test_origin_and_direction_are_three_dimensional():
    for cls in (CuImage, Slide):
        with cls(APERIO) as img:
            assert img.origin == [0.0, 0.0, 0.0]
            assert img.direction == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
            assert img.metadata["cucim"]["origin"] == img.origin
            assert img.metadata["cucim"]["direction"] == img.direction
    with CuImage(APERIO) as img:
        region = img.read_region((0, 0), (4, 4))
        assert len(region.origin) == 3 and np.array_equal(np.array(region.direction), np.eye(3))


# ---- 9. channels of RGBA and gray files ---------------------------------------------------


NON_RGB = {
    "rgba": dict(shape=4, photometric="rgb", extrasamples=["unassalpha"]),
    "gray": dict(shape=1, photometric="minisblack"),
    "gray-alpha": dict(shape=2, photometric="minisblack", extrasamples=["unassalpha"]),
}


def as_rgba(pixels):
    """What a file's pixels (as tifffile decodes them) are in RGBA: gray copied to R, G and B;
    alpha the file's, or opaque."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    c = pixels.shape[-1]
    colour = pixels[..., :3] if c >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)
    alpha = pixels[..., -1:] if c in (2, 4) else np.full_like(pixels[..., :1], 255)
    return np.concatenate([colour, alpha], axis=-1)


@pytest.mark.parametrize("kind", sorted(NON_RGB))
def test_non_rgb_files_read_as_rgba(tmp_path, kind):
    spec = dict(NON_RGB[kind])
    c = spec.pop("shape")
    data = pattern(48, 64, c)
    if kind != "gray":
        data[..., -1] = 255  # opaque: OpenSlide's premultiplied RGBA is then the pixels
    p = write_tiff(tmp_path / (kind + ".tif"), data[..., 0] if c == 1 else data, **spec)
    exp = as_rgba(tifffile.imread(p))[8:32, 8:40]
    if kind == "rgba":  # OpenSlide 3.4 reads this one of the three
        assert np.array_equal(np.asarray(openslide.OpenSlide(p).read_region((8, 8), 0,
                                                                            (32, 24))), exp)
    with CuImage(p) as img, Slide(p) as plain:
        assert img.shape == [48, 64, 4] and img.size("C") == [4]
        assert img.channel_names == ["R", "G", "B", "A"]
        assert img.metadata["cucim"]["channel_names"] == ["R", "G", "B", "A"]
        region = img.read_region((8, 8), (32, 24))
        assert region.shape == (24, 32, 4) and region.channel_names == ["R", "G", "B", "A"]
        assert region.metadata["cucim"]["channel_names"] == ["R", "G", "B", "A"]
        assert np.array_equal(np.asarray(region), exp)
        # asked for, 3 channels still
        assert img.read_region((8, 8), (32, 24), channels=3).shape == (24, 32, 3)
        # tessera.Slide keeps tessera's default: RGB unless channels=4
        assert plain.shape == [48, 64, 3] and plain.channel_names == ["R", "G", "B"]
        assert np.array_equal(np.asarray(plain.read_region((8, 8), (32, 24))), exp[..., :3])
        # batches too
        batch = next(iter(img.read_region([(8, 8), (0, 0)], (32, 24), batch_size=2)))
        assert np.array_equal(np.asarray(batch)[0], exp)


def test_rgb_file_stays_rgb(tmp_path):
    p = write_tiff(tmp_path / "rgb.tif", pattern(32, 32, 3), photometric="rgb")
    with CuImage(p) as img:
        assert img.shape == [32, 32, 3] and img.channel_names == ["R", "G", "B"]
        assert img.read_region((0, 0), (8, 8)).shape == (8, 8, 3)


# ---- 10. the bad-level error ------------------------------------------------------------


@pytest.mark.parametrize("level", [-1, 99])
def test_bad_level_error_has_cucims_words(level):
    with CuImage(APERIO) as img:
        n = img.resolutions["level_count"]
        with pytest.raises(ValueError) as e:
            img.read_region((0, 0), (8, 8), level=level)
        msg = str(e.value)
        assert "'level' should be less than %d" % n in msg  # cuCIM's words
        assert "level %d does not exist" % level in msg and "0..%d" % (n - 1) in msg
        with pytest.raises(ValueError, match=r"'level' should be less than "):
            img.read_region([(0, 0), (8, 8)], (8, 8), level=level, batch_size=2)


def test_spacing_of_region_levels_follows_cucim(pyramid):
    """A pyramid with a physical size: each level's region spacing is the level-0 spacing
    divided by the level's downsample (cuCIM's rule, which its own test pins)."""
    p = pyramid
    osl = openslide.OpenSlide(p)
    mpp = openslide4_mpp(osl.properties)
    with CuImage(p) as img:
        for level, ds in enumerate(osl.level_downsamples):
            got = img.read_region((0, 0), (16, 16), level).spacing("XY")
            assert got == pytest.approx([mpp[0] / ds, mpp[1] / ds], rel=1e-6)
            assert math.isclose(img.resolutions["level_downsamples"][level], ds, rel_tol=1e-9)
