"""tessera.dask: to_dask_array (a pyramid level as a lazy dask array) and read_patches (patch
batches of many slides), computed with dask's threaded scheduler and on a dask.distributed
cluster of two worker processes.

Whole levels are compared with OpenSlide's read of the level (JPEG fixture; every level has a
non-integer downsample) and with libvips' decode (the real zstd pyramid, whose last level has
downsample 16.0128...; OpenSlide 3.4.1 misplaces the pixels of its levels smaller than one tile,
see test_differential.openslide_unreliable). Patches are compared with tessera's single reads."""

import collections

import numpy as np
import pytest
from dask.distributed import Client, LocalCluster

import tessera.dask as tdask
import wsi_fixtures as F
import wsi_refs as R
from tessera import CuImage

JPEG_SLIDE = "odd-jpeg-pyr"  # 1001 x 777, 500 x 388, 250 x 194: 256 x 256 JPEG tiles
ZSTD_SLIDE = "generic-zstd-1024tiles-pyramid.tiff"  # 10000 x 5000 ... 625 x 312, 1024 tiles


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    c = Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(params=["threads", "distributed"])
def scheduler(request):
    """What compute(scheduler=...) gets: the threaded scheduler, or the cluster's client."""
    if request.param == "distributed":
        return request.getfixturevalue("client")
    return "threads"


def chunks_for(height, width):
    """Chunk sizes that divide neither side of the level and make several chunks each way."""
    rows, cols = height // 3 + 7, width // 4 + 5
    assert height % rows and width % cols
    return rows, cols


def check_chunks(arr, height, width, rows, cols, channels=3):
    assert arr.shape == (height, width, channels) and arr.dtype == np.uint8
    want_rows = tuple(min(rows, height - y) for y in range(0, height, rows))
    want_cols = tuple(min(cols, width - x) for x in range(0, width, cols))
    assert arr.chunks == (want_rows, want_cols, (channels,))
    assert len(want_rows) > 1 and len(want_cols) > 1


def opened_on_workers(client):
    """The slide paths each worker process holds open (tessera.dask keeps a few per process)."""
    return client.run(lambda: sorted(__import__("tessera.dask").dask._open))


# ---- to_dask_array ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1, 2])
def test_level_equals_openslide(slides, scheduler, level):
    path = slides.path(JPEG_SLIDE)
    osl = R.openslide_open(path)
    width, height = osl.level_dimensions[level]
    if level:
        assert not R.is_integer_ds(osl.level_downsamples[level])
    rows, cols = chunks_for(height, width)
    arr = tdask.to_dask_array(path, level, (rows, cols))
    check_chunks(arr, height, width, rows, cols)
    got = arr.compute(scheduler=scheduler)
    ref = R.openslide_region(osl, 0, 0, level, width, height)
    assert (ref[..., 3] == 255).all()
    m = R.describe_mismatch(got, ref[..., :3], what="%s level %d" % (JPEG_SLIDE, level))
    assert m is None, m


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_level_equals_libvips(slides, scheduler, level):
    path = slides.path(ZSTD_SLIDE)
    spec = F.SPECS[ZSTD_SLIDE]
    ref = R.vips_decode(path, spec.vips_load_args(level))
    height, width = ref.shape[:2]
    with CuImage(path) as img:
        assert img.resolutions["level_dimensions"][level] == (width, height)
        ds = img.resolutions["level_downsamples"][level]
    if level == 4:
        assert not R.is_integer_ds(ds) and abs(ds - 16.0128) < 1e-3
    rows, cols = chunks_for(height, width)
    arr = tdask.to_dask_array(path, level, chunks=(rows, cols))
    check_chunks(arr, height, width, rows, cols)
    got = arr.compute(scheduler=scheduler)
    m = R.describe_mismatch(got, R.to_rgb(ref), what="%s level %d" % (ZSTD_SLIDE, level))
    assert m is None, m


def test_tasks_run_in_the_worker_processes(slides, client):
    path = slides.path(JPEG_SLIDE)
    arr = tdask.to_dask_array(path, 1, (100, 100))
    got = arr.compute(scheduler=client)
    with CuImage(path) as img:
        np.testing.assert_array_equal(got, np.asarray(img.read_region(level=1)))
    opened = opened_on_workers(client)
    assert len(opened) == 2
    assert any(path in paths for paths in opened.values())


def test_given_a_cuimage_and_rgba(slides):
    path = slides.path(JPEG_SLIDE)
    with CuImage(path) as img:
        by_image = tdask.to_dask_array(img, 1, (111, 123))
        whole = np.asarray(img.read_region(level=1))
    # only the path is kept: the array is read after the image is closed
    np.testing.assert_array_equal(by_image.compute(scheduler="threads"), whole)
    rgba = tdask.to_dask_array(path, 1, 150, channels=4).compute(scheduler="threads")
    assert rgba.shape == whole.shape[:2] + (4,)
    np.testing.assert_array_equal(rgba[..., :3], whole)
    assert (rgba[..., 3] == 255).all()
    # a part of the array reads only the chunks it needs, and equals that part of the level
    part = tdask.to_dask_array(path, 1, (64, 64))[70:200, 33:301]
    np.testing.assert_array_equal(part.compute(scheduler="threads"), whole[70:200, 33:301])
    # a NumPy integer names a level as well as an int does
    by_numpy = tdask.to_dask_array(path, np.int64(1), (111, 123))
    assert by_numpy.name == by_image.name


def test_to_dask_array_bad_arguments(slides, tmp_path):
    path = slides.path(JPEG_SLIDE)
    for level in (3, -1, np.int64(3)):
        with pytest.raises(ValueError, match="level"):
            tdask.to_dask_array(path, level)
    for level in (1.0, "1", True, None):
        with pytest.raises(TypeError, match="level"):
            tdask.to_dask_array(path, level)
    for chunks in ((0, 64), (64, -1), (1, 2, 3, 4), 0):
        with pytest.raises(ValueError, match="chunks"):
            tdask.to_dask_array(path, 0, chunks)
    with pytest.raises(ValueError, match="channels"):
        tdask.to_dask_array(path, 0, channels=5)
    with pytest.raises(OSError):
        tdask.to_dask_array(str(tmp_path / "missing.tif"), 0)


# ---- read_patches ----------------------------------------------------------------------------


def patch_inputs(slides):
    a = slides.path(JPEG_SLIDE)
    b = slides.path(ZSTD_SLIDE)
    locs_a = np.array([(0, 0), (37, 411), (-20, -9), (960, 740), (500, 300), (123, 700),
                       (777, 31), (250, 250), (1000, 776), (64, 64)], dtype=np.int64)
    locs_b = [[9950, 4950], [0, 0], [5000, 2500], [1234, 4321], [-30, 100], [7000, 10],
              [8191, 3071]]  # a list: anything NumPy makes (n, 2) integers of
    return [(a, locs_a), (b, locs_b)]


def single_reads(inputs, size, level):
    out = []
    for path, locs in inputs:
        with CuImage(path) as img:
            out += [np.asarray(img.read_region((int(x), int(y)), size, level))
                    for x, y in locs]
    return np.stack(out)


@pytest.mark.parametrize("level", [0, 1])
def test_read_patches_equals_single_reads(slides, scheduler, level):
    inputs = patch_inputs(slides)
    arr = tdask.read_patches(inputs, (64, 48), level=level, batch_size=4)
    # one chunk per batch of one slide: 10 -> 4, 4, 2 and 7 -> 4, 3
    assert arr.chunks == ((4, 4, 2, 4, 3), (48,), (64,), (3,))
    assert arr.dtype == np.uint8
    got = arr.compute(scheduler=scheduler)
    np.testing.assert_array_equal(got, single_reads(inputs, (64, 48), level))


def test_read_patches_options(slides):
    inputs = patch_inputs(slides)
    with CuImage(inputs[0][0]) as img:
        # a CuImage in place of a path, batches of one, RGBA with a fill, decoding threads
        arr = tdask.read_patches([(img, inputs[0][1]), (inputs[1][0], inputs[1][1][:1])],
                                 (30, 20), batch_size=1, channels=4, fill=7, num_workers=2)
        assert arr.chunks[0] == (1,) * 11
        got = arr.compute(scheduler="threads")
        want = [np.asarray(img.read_region((int(x), int(y)), (30, 20), channels=4, fill=7))
                for x, y in inputs[0][1]]
    with CuImage(inputs[1][0]) as img:
        x, y = inputs[1][1][0]
        want.append(np.asarray(img.read_region((x, y), (30, 20), channels=4, fill=7)))
    np.testing.assert_array_equal(got, np.stack(want))
    assert (got[2][..., 3] == 0).any() and (got[2][..., :3][got[2][..., 3] == 0] == 7).all()
    # a slide without locations adds nothing; none at all gives an empty array
    arr = tdask.read_patches([(inputs[0][0], np.zeros((0, 2), np.int64)), inputs[1]],
                             (16, 16), batch_size=5)
    assert arr.chunks[0] == (5, 2)
    np.testing.assert_array_equal(arr.compute(scheduler="threads"),
                                  single_reads([inputs[1]], (16, 16), 0))
    empty = tdask.read_patches([], (16, 8))
    assert empty.shape == (0, 8, 16, 3) and empty.dtype == np.uint8


def test_read_patches_bad_arguments(slides):
    path = slides.path(JPEG_SLIDE)
    locs = np.array([[0, 0], [10, 10]])
    with pytest.raises(ValueError, match="size"):
        tdask.read_patches([(path, locs)], (0, 64))
    with pytest.raises(ValueError, match="batch_size"):
        tdask.read_patches([(path, locs)], (64, 64), batch_size=0)
    with pytest.raises(ValueError, match="locations"):
        tdask.read_patches([(path, np.zeros((3, 3), np.int64))], (64, 64))
    with pytest.raises(ValueError, match="locations"):
        tdask.read_patches([(path, locs.astype(np.float32))], (64, 64))
    with pytest.raises(ValueError, match="locations"):
        tdask.read_patches([(path, [1, 2, 3])], (64, 64))
    # a level the slide does not have fails the computation with a clear error
    with pytest.raises(ValueError, match="level"):
        tdask.read_patches([(path, locs)], (64, 64), level=7).compute(scheduler="threads")


def test_a_slide_evicted_from_the_open_set_stays_readable(slides, monkeypatch):
    """The per-process set of open slides drops the least recent one; a task still holding it
    must be able to read (it used to be closed under it)."""
    monkeypatch.setattr(tdask, "_OPEN_MAX", 1)
    monkeypatch.setattr(tdask, "_open", collections.OrderedDict())
    first, second = slides.path(JPEG_SLIDE), slides.path(ZSTD_SLIDE)
    held = tdask._slide(first)
    tdask._slide(second)          # evicts the first
    assert first not in tdask._open
    region = np.asarray(held.read_region((10, 10), (32, 32)))
    with CuImage(first) as fresh:
        assert np.array_equal(region, np.asarray(fresh.read_region((10, 10), (32, 32))))
