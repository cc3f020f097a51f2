"""The cuCIM-compatible Python API (tessera.CuImage, tessera.Array, tessera.Cache) of the
extension tessera._tessera, as a user of cuCIM's reader calls it.

- single regions equal OpenSlide's (inside the image; the slide's background outside) on
  generated JPEG and LZW pyramids (levels 0 and > 0) and the real Aperio file; cuCIM's
  positional argument order; whole levels equal OpenSlide's and libvips'; NumPy, the buffer
  protocol and DLPack (PyTorch, NumPy) share the array's memory;
- metadata (shape, size, spacing, resolutions, grouped properties, raw description,
  associated images) equals what OpenSlide reports for the same file;
- batches: every form of locations (lists, tuples, NumPy arrays of several integer types,
  non-contiguous views, generators) gives the same batches, and every patch of every batch
  equals a single read_region of its location, over batch sizes, drop_last, the seeded
  shuffle (whose order equals the C API's), 4 channels, fill and num_workers;
- lifetimes: arrays outlive their iterator, their slide and later batches; abandoned
  iterators leave no live object (tessera._tessera._live()) and no memory growth;
- pickling (CuImage by path, Array by value), fork (a slide keeps working in a child; an
  iterator made before fork() fails there with a clear error instead of hanging);
- the decoded-tile cache: exact hit/miss counts worked out from the tile grid, sizes,
  configuration, record(), the shared-memory cache;
- errors: every bad argument or file raises a Python exception with a clear message;
- threads: concurrent reads equal sequential ones, and reading releases the GIL.

No pixel value is written here: references are OpenSlide, libvips and tessera's own other
paths (a single read_region, the C API through ctypes), computed at test time.
"""

import ctypes
import gc
import json
import multiprocessing
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import tessera
import tessera_ctypes as T
import wsi_fixtures as F
import wsi_refs as R
from tessera import CuImage

APERIO = "aperio-jpeg-CMU-1-Small-Region.svs"  # 2220x2967, 240x240 JPEG tiles, 3 associated
PYR = "jpeg-t128-pyr"        # JPEG 4:2:0, 1024x768, 128x128 tiles, 4 levels (vips)
OTHER = "lzw-pred-pyr"       # LZW with the horizontal predictor, 256x256 tiles, 3 levels (vips)
CHILD_TIMEOUT = 120          # seconds before a child process that has not answered is a hang


def live():
    gc.collect()
    return tessera._tessera._live()


_LIBC = ctypes.CDLL(None)


def rss_bytes():
    """Resident memory after a garbage collection and glibc's malloc_trim, which gives free
    heap pages back to the system: what is left is memory in use (freed memory that malloc
    keeps resident would otherwise hide a leak that reuses it)."""
    gc.collect()
    _LIBC.malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def data_ptr(obj):
    return obj.__array_interface__["data"][0]


def inside_mask(W, H, lx, ly, w, h):
    """Which pixels of a (w, h) region at level coordinates (lx, ly) lie in a W x H level."""
    xs = np.arange(lx, lx + w)[None, :]
    ys = np.arange(ly, ly + h)[:, None]
    return (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)


def level_origin(img, x, y, level):
    ds = img.resolutions["level_downsamples"][level]
    return int(np.floor(x / ds)), int(np.floor(y / ds))


def single(img, loc, size, level=0, **kw):
    return np.asarray(img.read_region((int(loc[0]), int(loc[1])), size, level, **kw))


def batch_patches(batch):
    """A batch as (patches (count, h, w, c), indices)."""
    a = np.asarray(batch)
    if a.ndim == 3:
        a = a[None]
    return a, tuple(batch.indices)


def check_patches(img, batches, locs, size, level, **kw):
    """Asserts every patch of every batch equals a single read_region of its location with the
    same options; returns the location indices in the order the batches gave them."""
    seen = []
    for b in batches:
        a, idx = batch_patches(b)
        assert a.dtype == np.uint8
        assert len(idx) == a.shape[0]
        for j, i in enumerate(idx):
            exp = single(img, locs[i], size, level, **kw)
            msg = R.describe_mismatch(a[j], exp, what="batch %s patch %d (location %d %s)" % (
                b.batch_number, j, i, tuple(locs[i])))
            assert msg is None, msg
        seen.extend(idx)
    return seen


def snapshot(batches):
    """Copies of a stream's batches: (shape, indices, batch_number, bytes) each."""
    out = []
    for b in batches:
        a = np.asarray(b)
        out.append((a.shape, tuple(b.indices), b.batch_number, a.tobytes()))
    return out


def in_child(fn, timeout=CHILD_TIMEOUT):
    """Runs fn() in a child made by os.fork() and returns ("ok", value) or ("error", type name,
    message), sent back pickled through a pipe. A child that does not answer in time is killed
    and fails the test (a hang is a failure, not a stuck test run)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            try:
                result = ("ok", fn())
            except BaseException as e:  # noqa: B902 - every outcome goes back to the parent
                result = ("error", type(e).__name__, str(e))
            data = memoryview(pickle.dumps(result))
            while data:
                data = data[os.write(w, data):]
            os.close(w)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([r], [], [], max(left, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child did not answer within %d s (hung)" % timeout)
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "child status %#x" % status
    assert chunks, "the child sent nothing back (it died)"
    return pickle.loads(b"".join(chunks))


@pytest.fixture(scope="module")
def path(slides):
    """name -> path of a fixture (generated on first use) or a file of TESSERA_TESTDATA."""
    return slides.path


@pytest.fixture
def nocache_after():
    """Cache tests configure the process's cache; put back 'nocache' whatever happens."""
    yield
    CuImage.cache("nocache")


# ==== 1. single regions ===================================================================

REGION_CASES = [(PYR, 0), (PYR, 2), (OTHER, 1), (APERIO, 0)]


def regions_for(W, H, tw, th):
    """(lx, ly, w, h) in level coordinates: tiles, straddles, edges, outside."""
    return [
        (0, 0, min(tw, W), min(th, H)),                 # the first tile
        (tw - 7, th - 5, 30, 20),                       # four tiles meet
        (W // 2 - 40, H // 2 - 30, 2 * tw + 3, th + 9),  # several tiles
        (W // 3, H // 3, 1, 1),                         # one pixel
        (W - 20, H - 10, 50, 30),                       # over the bottom-right edges
        (-6, -4, 25, 17),                               # over the top-left edges
        (W + 3, 5, 8, 8),                               # wholly outside
    ]


@pytest.mark.parametrize("name,level", REGION_CASES)
def test_read_region_equals_openslide(path, name, level):
    p = path(name)
    osl = R.openslide_open(p)
    W, H = osl.level_dimensions[level]
    ds = osl.level_downsamples[level]
    assert R.is_integer_ds(ds)
    tw = int(osl.properties["openslide.level[%d].tile-width" % level])
    th = int(osl.properties["openslide.level[%d].tile-height" % level])
    with CuImage(p) as img:
        assert img.background == F.SPECS[name].background
        for lx, ly, w, h in regions_for(W, H, tw, th):
            x, y = int(lx * ds), int(ly * ds)
            arr = img.read_region((x, y), (w, h), level)  # cuCIM's positional order
            assert isinstance(arr, tessera.Array)
            assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
            got = np.asarray(arr)
            assert got.shape == (h, w, 3) and got.dtype == np.uint8
            exp = np.asarray(osl.read_region((x, y), level, (w, h)).convert("RGB"))
            inside = inside_mask(W, H, lx, ly, w, h)
            msg = R.describe_mismatch(got, exp, inside, "%s L%d (%d, %d) %dx%d" % (
                name, level, x, y, w, h), (lx, ly))
            assert msg is None, msg
            assert (got[~inside] == img.background).all()
            kw = img.read_region(location=[x, y], size=[w, h], level=level, num_workers=3)
            assert np.array_equal(np.asarray(kw), got)


def test_whole_level_equals_openslide_and_libvips(path):
    """read_region(level=1, num_workers=8) as in the design's example (a); location and size
    omitted mean the whole level."""
    p = path(PYR)
    osl = R.openslide_open(p)
    with CuImage(p) as img:
        for level, workers in ((1, 8), (0, 0), (3, 2)):
            W, H = osl.level_dimensions[level]
            whole = np.asarray(img.read_region(level=level, num_workers=workers))
            assert whole.shape == (H, W, 3)
            exp = np.asarray(osl.read_region((0, 0), level, (W, H)).convert("RGB"))
            msg = R.describe_mismatch(whole, exp, what="L%d vs OpenSlide" % level)
            assert msg is None, msg
            vips = R.to_rgb(R.vips_decode(p, F.SPECS[PYR].vips_load_args(level)))
            msg = R.describe_mismatch(whole, vips, what="L%d vs libvips" % level)
            assert msg is None, msg
        assert np.array_equal(np.asarray(img.read_region()),
                              np.asarray(img.read_region((0, 0), img.size("XY"))))
    a = path(APERIO)
    osl = R.openslide_open(a)
    with CuImage(a) as img:
        W, H = osl.level_dimensions[0]
        whole = np.asarray(img.read_region(num_workers=2))
        exp = np.asarray(osl.read_region((0, 0), 0, (W, H)).convert("RGB"))
        msg = R.describe_mismatch(whole, exp, what="Aperio whole level")
        assert msg is None, msg


def test_numpy_buffer_and_dlpack_share_memory(path):
    start = live()["arrays"]
    with CuImage(path(PYR)) as img:
        arr = img.read_region((200, 100), (40, 30), 1)
    ptr = data_ptr(arr)
    assert arr.__array_interface__["shape"] == (30, 40, 3)
    assert arr.__array_interface__["typestr"] == "|u1"
    assert arr.__array_interface__["data"][1] is False  # writable
    a = np.asarray(arr)
    b = np.asarray(arr)
    assert data_ptr(a) == ptr and np.shares_memory(a, b)
    assert arr.ndim == 3 and arr.nbytes == 30 * 40 * 3 and len(arr) == 30 and arr.device == "cpu"
    mv = memoryview(arr)
    assert mv.shape == (30, 40, 3) and mv.format == "B" and not mv.readonly
    assert mv.nbytes == arr.nbytes and mv.c_contiguous
    assert data_ptr(np.frombuffer(mv, np.uint8)) == ptr
    t = torch.from_dlpack(arr)
    assert t.dtype == torch.uint8 and tuple(t.shape) == (30, 40, 3) and t.data_ptr() == ptr
    n = np.from_dlpack(arr)
    assert data_ptr(n) == ptr
    # one memory: a write through the tensor shows everywhere
    before = a.copy()
    t[3, 5, 1] = (int(before[3, 5, 1]) + 1) % 256
    assert a[3, 5, 1] == b[3, 5, 1] == mv[3, 5, 1] == n[3, 5, 1] == t[3, 5, 1].item()
    assert a[3, 5, 1] != before[3, 5, 1]
    # the tensor keeps the memory alive on its own
    base = live()["arrays"]
    del arr, a, b, mv, n
    assert live()["arrays"] == base
    t[3, 5, 1] = int(before[3, 5, 1])
    assert np.array_equal(t.numpy(), before)
    del t
    assert live()["arrays"] == start  # the region (a view) and the Array it shows
    # a batch and its items: views into the one batch buffer
    with CuImage(path(PYR)) as img:
        it = img.read_region([[0, 0], [300, 200], [1000, 700]], (16, 8), batch_size=3)
        batch = next(it)
    bp = data_ptr(batch)
    assert data_ptr(np.asarray(batch)) == bp
    assert torch.from_dlpack(batch).data_ptr() == bp
    item = batch[2]
    assert item.shape == (8, 16, 3)
    assert data_ptr(np.asarray(item)) == bp + 2 * 8 * 16 * 3
    assert torch.from_dlpack(item).data_ptr() == bp + 2 * 8 * 16 * 3
    assert np.array_equal(np.asarray(item), np.asarray(batch)[2])
    assert [np.asarray(x).tobytes() for x in batch] == [np.asarray(batch)[i].tobytes()
                                                        for i in range(3)]


# ==== 2. metadata =========================================================================

CUCIM_TIFF_KEYS = {"model", "software", "resolution_unit", "x_resolution", "y_resolution"}


@pytest.mark.parametrize("name", [APERIO, PYR])
def test_metadata_equals_openslide(path, name):
    p = path(name)
    osl = R.openslide_open(p)
    props = osl.properties
    W, H = osl.level_dimensions[0]
    with CuImage(p) as img:
        assert img.shape == [H, W, 3]
        assert img.size() == [H, W, 3] and img.size("XYC") == [W, H, 3]
        assert img.size("XY") == [W, H] and img.size("C") == [3]
        assert img.ndim == 3 and img.dims == "YXC"
        assert img.dtype == np.uint8 and img.typestr == "|u1"
        assert img.channel_names == ["R", "G", "B"]
        assert img.device == "cpu" and img.is_loaded
        res = img.resolutions
        assert res["level_count"] == osl.level_count == img.level_count
        assert res["level_dimensions"] == osl.level_dimensions
        assert res["level_downsamples"] == pytest.approx(osl.level_downsamples, rel=1e-12)
        assert res["level_tile_sizes"] == tuple(
            (int(props["openslide.level[%d].tile-width" % i]),
             int(props["openslide.level[%d].tile-height" % i])) for i in range(osl.level_count))
        if name == APERIO:
            assert "openslide.mpp-x" in props  # the spacing branch with a physical size
            mpp = (float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"]))
            assert img.spacing() == pytest.approx([mpp[1], mpp[0], 1.0])
            assert img.spacing("XY") == pytest.approx(list(mpp))
            assert img.spacing_units() == ["micrometer", "micrometer", "color"]
        else:
            # a generic TIFF: the physical size its resolution tags give (in centimetres
            # here, as libvips writes them), as OpenSlide 4 and cuCIM read them
            assert "openslide.mpp-x" not in props and props["tiff.ResolutionUnit"] == \
                "centimeter"
            mpp = [10000.0 / float(props["tiff.%sResolution" % a]) for a in "XY"]
            assert img.spacing("XYC") == pytest.approx(mpp + [1.0], rel=1e-12)
            assert img.spacing_units("XY") == ["micrometer", "micrometer"]
        groups = img.metadata
        assert "tessera" not in groups  # cuCIM's groups only: tessera's are in Slide.metadata
        for prefix in ("aperio", "tiff"):
            theirs = {k[len(prefix) + 1:]: v for k, v in props.items()
                      if k.startswith(prefix + ".")}
            ours = {k: v for k, v in groups.get(prefix, {}).items()
                    if prefix != "tiff" or k not in CUCIM_TIFF_KEYS}
            assert ours == theirs, prefix
        assert CUCIM_TIFF_KEYS <= set(groups["tiff"])  # issue 17: cuCIM's keys beside them
        if name == APERIO:
            assert len(groups["aperio"]) > 5
        assert img.raw_metadata == props.get("tiff.ImageDescription", "")
        assert json.loads(json.dumps(groups)) == groups  # cuCIM's metadata is JSON
        cu = groups["cucim"]
        assert cu["shape"] == img.shape and cu["path"] == p
        assert cu["resolutions"]["level_count"] == osl.level_count
        assert [tuple(d) for d in cu["resolutions"]["level_dimensions"]] == \
            list(osl.level_dimensions)
        assert cu["spacing"] == img.spacing()
        assert img.associated_images == set(osl.associated_images)
        assert cu["associated_images"] == sorted(osl.associated_images)
        if name == APERIO:
            assert img.associated_images == {"label", "macro", "thumbnail"}
        for n, pil in osl.associated_images.items():
            got = img.associated_image(n)
            assert isinstance(got, tessera.Array)
            exp = np.asarray(pil.convert("RGB"))
            msg = R.describe_mismatch(np.asarray(got), exp, what="associated image " + n)
            assert got.shape == exp.shape and msg is None, msg
        with pytest.raises(ValueError, match="no associated image 'nope'"):
            img.associated_image("nope")
        with pytest.raises(TypeError):
            img.associated_image(3)
        with pytest.raises(ValueError, match="dim_order"):
            img.size("XZ")


# ==== 3. batches ==========================================================================

# level-0 locations on PYR (1024x768): inside, across tile corners, over the right and bottom
# edges; all >= 0 so every integer type holds them
LOCS = [(0, 0), (1000, 10), (500, 750), (1010, 760), (127, 127), (300, 200), (1023, 0),
        (0, 767), (64, 640), (900, 300), (250, 700)]
SIZE = (64, 48)


def location_forms(locs):
    arr = np.array(locs, np.int64)
    wide = np.full((2 * len(locs), 5), -999, np.int64)
    wide[::2, 1] = arr[:, 0]
    wide[::2, 3] = arr[:, 1]
    view = wide[::2, 1:4:2]
    assert not view.flags.c_contiguous and not view.flags.f_contiguous
    assert np.array_equal(view, arr)
    return {
        "list of lists": lambda: [list(p) for p in locs],
        "tuple of tuples": lambda: tuple(tuple(p) for p in locs),
        "list of tuples": lambda: [tuple(p) for p in locs],
        "int64": lambda: arr.copy(),
        "int32": lambda: arr.astype(np.int32),
        "uint16": lambda: arr.astype(np.uint16),
        "fortran": lambda: np.asfortranarray(arr),
        "strided view": lambda: view,
        "generator": lambda: ((int(x), int(y)) for x, y in locs),
        "numpy scalars": lambda: [(np.int64(x), np.uint32(y)) for x, y in locs],
    }


@pytest.mark.parametrize("level", [0, 1])
def test_location_forms_give_the_same_batches(path, level):
    with CuImage(path(PYR)) as img:
        ref_it = img.read_region(LOCS, SIZE, level, batch_size=4)
        ref = snapshot(ref_it)
        assert len(ref) == 3
        for form, make in location_forms(LOCS).items():
            for workers in (0, 2):
                got = snapshot(img.read_region(make(), SIZE, level, batch_size=4,
                                               num_workers=workers))
                assert got == ref, (form, workers)
        # every patch equals a single read of its location
        seen = check_patches(img, img.read_region(np.array(LOCS), SIZE, level, batch_size=4,
                                                  num_workers=2), LOCS, SIZE, level)
        assert seen == list(range(len(LOCS)))
        # whole-number floats are locations too
        floats = snapshot(img.read_region(np.array(LOCS, np.float64), SIZE, level, batch_size=4))
        assert floats == ref


def test_batch_shapes_len_drop_last(path):
    n = len(LOCS)
    w, h = SIZE
    with CuImage(path(PYR)) as img:
        for bs, drop in ((4, False), (4, True), (5, False), (1, False), (11, False), (20, True)):
            it = img.read_region(LOCS, SIZE, 1, batch_size=bs, drop_last=drop, num_workers=2)
            assert isinstance(it, tessera.BatchIter)
            expect_len = n // bs if drop else -(-n // bs)
            assert len(it) == expect_len
            batches = list(it)
            assert len(batches) == expect_len and len(it) == expect_len
            counts = [bs] * (n // bs) + ([] if drop or n % bs == 0 else [n % bs])
            for k, (b, count) in enumerate(zip(batches, counts)):
                assert b.dtype == np.uint8 and b.batch_number == k
                if bs == 1:
                    assert b.shape == (h, w, 3)  # items, not batches of one
                else:
                    assert b.shape == (count, h, w, 3)  # a short last batch keeps its axis
                assert b.indices == tuple(range(k * bs, k * bs + count))
            check_patches(img, batches, LOCS, SIZE, 1)
        assert list(img.read_region(np.zeros((0, 2), np.int64), SIZE)) == []
        assert len(img.read_region(iter([]), SIZE)) == 0


def test_no_locations_give_no_batches(path):
    """Every empty form of locations is a stream of no batches (len 0, a loop runs no
    times), whatever the options; [] and () used to read one region at (0, 0), whose rows a
    `for batch in ...` loop then ran over. Omitted, the location is still (0, 0)."""
    with CuImage(path(PYR)) as img:
        forms = [lambda: [], lambda: (), lambda: np.zeros((0, 2), np.int64),
                 lambda: np.zeros((0,), np.int32), lambda: iter([]), lambda: (p for p in ())]
        for form in forms:
            for bs, workers, drop, shuffle in ((1, 0, False, False), (4, 2, False, True),
                                               (4, 0, True, False)):
                it = img.read_region(form(), SIZE, 1, batch_size=bs, num_workers=workers,
                                     drop_last=drop, shuffle=shuffle)
                what = (type(form()).__name__, bs, workers, drop, shuffle)
                assert isinstance(it, tessera.BatchIter), what
                assert len(it) == 0, what
                assert list(it) == [], what
        # no size either: still nothing (the size of no patch does not matter)
        for empty in ([], (), np.zeros((0, 2), np.int64)):
            assert list(img.read_region(empty)) == []
            assert list(img.read_region(empty, batch_size=8)) == []
        assert np.array_equal(np.asarray(img.read_region(size=SIZE)),
                              np.asarray(img.read_region((0, 0), SIZE)))


def test_negative_and_far_locations(path):
    locs = [(-30, -20), (-64, 100), (100, -48), (-1000, -1000), (5000, 5000), (1020, -10),
            (-2 ** 40, 2 ** 40)]
    with CuImage(path(PYR)) as img:
        for level in (0, 1):
            for workers in (0, 2):
                it = img.read_region(locs, SIZE, level, batch_size=3, num_workers=workers)
                assert check_patches(img, it, locs, SIZE, level) == list(range(len(locs)))
        far = np.asarray(img.read_region((5000, 5000), SIZE))
        assert (far == img.background).all()


def test_shuffle(path):
    n = len(LOCS)
    p = path(PYR)
    st, msg, cslide = T.open_status(p)
    assert st == T.OK, msg
    with CuImage(p) as img, cslide:
        orders = {}
        for seed in (0, 7, 2 ** 63 + 5):
            runs = []
            for workers in (0, 2):
                it = img.read_region(LOCS, SIZE, 1, batch_size=4, shuffle=True, seed=seed,
                                     num_workers=workers)
                batches = list(it)
                order = check_patches(img, batches, LOCS, SIZE, 1)
                runs.append((order, snapshot(batches)))
            assert runs[0] == runs[1], "the same seed gave different streams"
            order = runs[0][0]
            assert sorted(order) == list(range(n))
            c_order = [int(i) for _, idx in cslide.batches(LOCS, SIZE, 1, batch_size=4,
                                                             shuffle=1, seed=seed)
                       for i in idx]
            assert order == c_order, "the Python order differs from the C API's"
            orders[seed] = order
        assert len({tuple(o) for o in orders.values()}) == 3
        assert all(o != list(range(n)) for o in orders.values())
        # drop_last drops the end of the shuffled order
        dropped = list(img.read_region(LOCS, SIZE, 1, batch_size=4, shuffle=True, seed=7,
                                       drop_last=True))
        assert len(dropped) == 2
        assert check_patches(img, dropped, LOCS, SIZE, 1) == orders[7][:8]
        # shuffle off ignores the seed
        plain = [i for b in img.read_region(LOCS, SIZE, 1, batch_size=4, seed=7) for i in
                 b.indices]
        assert plain == list(range(n))


def test_channels_and_fill(path):
    p = path(PYR)
    with CuImage(p) as img:
        for level in (0, 1):
            W, H = img.resolutions["level_dimensions"][level]
            rgba = list(img.read_region(LOCS, SIZE, level, batch_size=4, channels=4,
                                        num_workers=2))
            check_patches(img, rgba, LOCS, SIZE, level, channels=4)
            filled = list(img.read_region(LOCS, SIZE, level, batch_size=4, fill=77))
            check_patches(img, filled, LOCS, SIZE, level, fill=77)
            white = list(img.read_region(LOCS, SIZE, level, batch_size=4, fill=255,
                                         channels=4))
            check_patches(img, white, LOCS, SIZE, level, fill=255, channels=4)
            for i, loc in enumerate(LOCS):
                lx, ly = level_origin(img, loc[0], loc[1], level)
                inside = inside_mask(W, H, lx, ly, *SIZE)
                plain = single(img, loc, SIZE, level)
                a4 = np.asarray(rgba[i // 4])[i % 4]
                assert a4.shape == SIZE[::-1] + (4,)
                assert np.array_equal(a4[..., :3][inside], plain[inside])
                assert (a4[..., 3][inside] == 255).all() and (a4[..., 3][~inside] == 0).all()
                f = np.asarray(filled[i // 4])[i % 4]
                assert np.array_equal(f[inside], plain[inside])
                assert (f[~inside] == 77).all()
                assert (np.asarray(white[i // 4])[i % 4][..., :3][~inside] == 255).all()
            # LOCS has patches over the edges at both levels, so the fill checks above bite
            assert any(not inside_mask(W, H, *level_origin(img, x, y, level), *SIZE).all()
                       for x, y in LOCS)
        single4 = np.asarray(img.read_region((1000, 700), (40, 30), 0, channels=4, fill=9))
        plain = np.asarray(img.read_region((1000, 700), (40, 30), 0))
        inside = inside_mask(1024, 768, 1000, 700, 40, 30)
        assert (single4[..., :3][~inside] == 9).all()
        assert np.array_equal(single4[..., :3][inside], plain[inside])


# ==== 4. lifetimes ========================================================================

def test_arrays_outlive_iterator_slide_and_later_batches(path):
    p = path(PYR)
    rng = np.random.default_rng(11)
    locs = np.stack([rng.integers(-40, 1040, 24), rng.integers(-40, 780, 24)], 1)
    size = (40, 24)
    with CuImage(p) as ref:
        expected = [single(ref, loc, size, 1).copy() for loc in locs]
    start = live()
    img = CuImage(p)
    it = img.read_region(locs, size, 1, batch_size=2, num_workers=2, prefetch_factor=2)
    held_arrays, held_numpy, held_torch, held_items = [], [], [], []
    for k, b in enumerate(it):
        if k % 4 == 0:
            held_arrays.append(b)
        elif k % 4 == 1:
            held_numpy.append((np.asarray(b)[:, 1:, ::2], b.indices))  # a NumPy view only
        elif k % 4 == 2:
            held_torch.append((torch.from_dlpack(b), b.indices))
        else:
            held_items.append((b[1], b.indices[1]))  # an item of the batch only
        del b
    assert live()["batches_held"] - start["batches_held"] == 12
    del it
    img.close()
    del img
    # more streams on another slide: reused memory would overwrite what is held
    other = CuImage(p)
    for _ in range(3):
        for b in other.read_region(locs[::-1], size, 1, batch_size=2, num_workers=2):
            np.asarray(b)[...] = 0
    other.close()
    del other, b
    now = live()
    assert now["slides"] == start["slides"] and now["iterators"] == start["iterators"]
    assert now["batches_held"] - start["batches_held"] == 12

    def verify(held_arrays, held_numpy, held_torch, held_items):
        for b in held_arrays:
            for j, i in enumerate(b.indices):
                assert np.array_equal(np.asarray(b)[j], expected[i])
        for view, idx in held_numpy:
            for j, i in enumerate(idx):
                assert np.array_equal(view[j], expected[i][1:, ::2])
        for t, idx in held_torch:
            for j, i in enumerate(idx):
                assert np.array_equal(t[j].numpy(), expected[i])
        for item, i in held_items:
            assert np.array_equal(np.asarray(item), expected[i])

    verify(held_arrays, held_numpy, held_torch, held_items)
    assert [len(x) for x in (held_arrays, held_numpy, held_torch, held_items)] == [3] * 4
    del held_arrays, held_numpy, held_torch, held_items
    assert live() == start


def test_iterator_keeps_working_after_slide_close(path):
    p = path(PYR)
    with CuImage(p) as ref:
        expected = [single(ref, loc, SIZE, 0).copy() for loc in LOCS]
    img = CuImage(p)
    it = img.read_region(LOCS, SIZE, 0, batch_size=2, num_workers=2)
    first = next(it)
    img.close()
    assert img.closed
    with pytest.raises(ValueError, match="closed"):
        img.read_region((0, 0), SIZE)
    rest = list(it)
    for b in [first] + rest:
        for j, i in enumerate(b.indices):
            assert np.array_equal(np.asarray(b)[j], expected[i])
    assert sorted(i for b in [first] + rest for i in b.indices) == list(range(len(LOCS)))
    # close() of the iterator mid-stream: it stops; what it gave stays valid
    with CuImage(p) as img:
        it = img.read_region(LOCS, SIZE, 0, batch_size=2, num_workers=2, prefetch_factor=3)
        b = next(it)
        it.close()
        it.close()
        assert list(it) == []
        with img.read_region(LOCS, SIZE, 0, batch_size=2) as it2:
            b2 = next(it2)
        assert list(it2) == []
    for x in (b, b2):
        for j, i in enumerate(x.indices):
            assert np.array_equal(np.asarray(x)[j], expected[i])


def _abandon(img_or_path, i, locs):
    """Makes an iterator, takes some of it in one of several ways, and drops it."""
    img = CuImage(img_or_path) if isinstance(img_or_path, str) else img_or_path
    it = img.read_region(locs, (128, 128), batch_size=4, num_workers=2, prefetch_factor=2)
    kept = None
    mode = i % 5
    if mode == 1:
        next(it)
    elif mode == 2:
        kept = np.asarray(next(it))  # outlives the iterator
    elif mode == 3:
        next(it)
        it.close()
    elif mode == 4:
        for _ in it:
            break
    del it
    return kept


def test_abandoned_iterators_leave_nothing_alive(path):
    p = path(PYR)
    # patches on the tile grid: one decoded tile each, so the loop is quick
    locs = [(tx * 128, ty * 128) for ty in range(3) for tx in range(4)]
    img = CuImage(p)
    start = live()
    for i in range(200):
        kept = _abandon(p if i % 10 == 0 else img, i, locs)
        if kept is not None:
            assert kept.shape == (4, 128, 128, 3)
        del kept
    assert live() == start
    # memory: after a warm-up, many more iterations do not grow the process. A batch buffer
    # (4 x 128 x 128 x 3 = 192 KiB) lost per iteration would be 56 MiB here.
    for i in range(60):
        _abandon(img, i, locs)
    before = rss_bytes()
    for i in range(300):
        _abandon(p if i % 10 == 0 else img, i, locs)
    grown = rss_bytes() - before
    assert grown < 24 << 20, "RSS grew by %.1f MiB over 300 abandoned iterators" % (grown / 2**20)
    img.close()
    del img
    after = live()
    assert after["slides"] == start["slides"] - 1
    assert after["iterators"] == start["iterators"] and after["arrays"] == start["arrays"]
    assert after["batches_held"] == start["batches_held"]


# ==== 5. pickling and fork ================================================================

def test_pickle_cuimage_and_array(path):
    p = path(PYR)
    with CuImage(p) as img:
        region = img.read_region((300, 200), (50, 40), 1)
        for proto in (2, pickle.HIGHEST_PROTOCOL):
            copy = pickle.loads(pickle.dumps(img, protocol=proto))
            try:
                assert type(copy) is CuImage and copy is not img
                assert copy.path == img.path and not copy.closed
                assert copy.resolutions == img.resolutions
                assert np.array_equal(np.asarray(copy.read_region((300, 200), (50, 40), 1)),
                                      np.asarray(region))
            finally:
                copy.close()
        batch = next(img.read_region(LOCS, SIZE, 1, batch_size=3))
    for arr in (region, batch, batch[2]):
        back = pickle.loads(pickle.dumps(arr))
        assert type(back) is tessera.Array
        assert back.shape == arr.shape and back.dtype == np.uint8
        assert np.array_equal(np.asarray(back), np.asarray(arr))
        assert not np.shares_memory(np.asarray(back), np.asarray(arr))


def test_pickle_keeps_the_file_a_relative_path_named(path, tmp_path):
    """A slide opened by a relative path pickles as the file it opened: unpickled after a
    chdir (Dask workers chdir), pickled after one, or in a process started elsewhere."""
    p = path(PYR)
    here = os.getcwd()
    other = tmp_path / "elsewhere"
    other.mkdir()
    try:
        os.chdir(os.path.dirname(p))
        for name in (os.path.basename(p), os.fsencode(os.path.basename(p))):
            with CuImage(name) as img:
                want = np.asarray(img.read_region((300, 200), (50, 40), 1)).copy()
                data = pickle.dumps(img)
                os.chdir(other)
                later = pickle.dumps(img)  # pickled after the chdir: still the file opened
                for blob in (data, later):
                    with pickle.loads(blob) as copy:
                        assert os.path.isabs(copy.path), copy.path
                        got = np.asarray(copy.read_region((300, 200), (50, 40), 1))
                        assert np.array_equal(got, want)
                os.chdir(os.path.dirname(p))
        code = ("import pickle, sys\n"
                "img = pickle.loads(sys.stdin.buffer.read())\n"
                "sys.stdout.buffer.write(bytes(img.read_region((300, 200), (50, 40), 1)))\n")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(tessera.__file__)))
        r = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                           cwd=str(other), env=env, timeout=CHILD_TIMEOUT)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        assert r.stdout == want.tobytes()
    finally:
        os.chdir(here)


def _read_in_worker(img, loc, size, level):
    return np.asarray(img.read_region(loc, size, level)).copy()


def test_cuimage_through_a_fork_pool(path):
    """The slide is pickled (by path) to a multiprocessing worker, as a DataLoader does."""
    with CuImage(path(PYR)) as img:
        expected = single(img, (130, 260), (77, 55), 1)
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_read_in_worker,
                                   (img, (130, 260), (77, 55), 1)).get(CHILD_TIMEOUT)
    assert np.array_equal(got, expected)


def test_slide_works_in_forked_child(path):
    p = path(PYR)
    img = CuImage(p)
    # use the thread pool before forking, so the child must cope with its absence
    list(img.read_region(LOCS, SIZE, 0, batch_size=4, num_workers=2))
    whole_parent = np.asarray(img.read_region(level=1, num_workers=2)).copy()

    def child():
        region = np.asarray(img.read_region((100, 90), (200, 150), 0)).copy()
        whole = np.asarray(img.read_region(level=1, num_workers=2)).copy()
        batches = snapshot(img.read_region(LOCS, SIZE, 1, batch_size=4, num_workers=2))
        return region, whole, batches

    result = in_child(child)
    assert result[0] == "ok", result
    region, whole, batches = result[1]
    assert np.array_equal(region, single(img, (100, 90), (200, 150), 0))
    assert np.array_equal(whole, whole_parent)
    assert batches == snapshot(img.read_region(LOCS, SIZE, 1, batch_size=4))
    img.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_iterator_made_before_fork_fails_in_child(path, workers):
    p = path(PYR)
    with CuImage(p) as img:
        it = img.read_region(LOCS, SIZE, 0, batch_size=2, num_workers=workers,
                             prefetch_factor=2)
        first = next(it)

        def child():
            try:
                next(it)
                outcome = "no error"
            except Exception as e:
                outcome = (type(e).__name__, str(e))
            it.close()  # neither closing nor dropping it hangs
            fresh = snapshot(img.read_region(LOCS[:4], SIZE, 0, batch_size=2,
                                             num_workers=workers))
            return outcome, fresh

        result = in_child(child)
        assert result[0] == "ok", result
        outcome, fresh = result[1]
        assert outcome != "no error", "an iterator made before fork() gave a batch in the child"
        kind, message = outcome
        assert kind == "ValueError" and "made before fork()" in message, outcome
        assert fresh == snapshot(img.read_region(LOCS[:4], SIZE, 0, batch_size=2))
        # the parent's iterator is untouched by the child
        rest = list(it)
        seen = check_patches(img, [first] + rest, LOCS, SIZE, 0)
        assert seen == list(range(len(LOCS)))


# ==== 6. the cache ========================================================================

def tiles_of(img, x, y, w, h):
    """The level-0 tiles a region touches (clipped to the image), as (column, row) pairs."""
    W, H = img.resolutions["level_dimensions"][0]
    tw, th = img.resolutions["level_tile_sizes"][0]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 <= x0 or y1 <= y0:
        return set()
    return {(tx, ty) for ty in range(y0 // th, (y1 - 1) // th + 1)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1)}


def test_per_process_cache_statistics(path, nocache_after):
    p = path(APERIO)
    img = CuImage(p)
    tw, th = img.resolutions["level_tile_sizes"][0]
    W, H = img.size("XY")
    script = [
        (tw // 4, th // 4, tw // 2, th // 2),   # inside tile (0, 0)
        (tw // 4, th // 4, tw // 2, th // 2),   # the same again: missed again, cached
        (tw - 5, 10, 10, 10),                   # tiles (0, 0) and (1, 0)
        (tw - 5, th - 5, 10, 10),               # four tiles, two of them new
        (W - 10, H - 10, 50, 50),               # the last tile, the rest outside
        (-100, -100, 20, 20),                   # wholly outside: no tile
        (0, 0, 3 * tw, 5),                      # a row of three tiles
    ]
    plain = [np.asarray(img.read_region((x, y), (w, h))).copy() for x, y, w, h in script]
    region = (10, 10, 4 * tw - 20, 3 * th - 20)
    region_plain = np.asarray(img.read_region(region[:2], region[2:])).copy()
    cache = CuImage.cache("per_process", memory_capacity=64, record_stat=True)
    assert isinstance(cache, tessera.Cache) and cache.type == "per_process"
    # capacity: cuCIM's default, one tile per 256 x 256 x 3 bytes
    assert cache.config == {"type": "per_process", "memory_capacity": 64,
                            "capacity": (64 << 20) // (256 * 256 * 3), "record_stat": True,
                            "name": None}
    assert cache.memory_capacity == 64 << 20 and cache.record() is True
    assert (cache.hit_count, cache.miss_count, cache.size, cache.memory_size) == (0, 0, 0, 0)
    # a tile is cached at its second miss (the first leaves it in the cache's ghost)
    held, seen, hits, misses = set(), set(), 0, 0
    for (x, y, w, h), exp in zip(script, plain):
        got = np.asarray(img.read_region((x, y), (w, h)))
        assert np.array_equal(got, exp), "a cached read differs from an uncached one"
        tiles = tiles_of(img, x, y, w, h)
        new = tiles - held
        hits += len(tiles & held)
        misses += len(new)
        held |= new & seen
        seen |= new
        assert (cache.hit_count, cache.miss_count) == (hits, misses), (x, y, w, h)
        assert cache.size == len(held)
        assert (cache.memory_size > 0) == bool(held)
        assert cache.memory_size <= cache.memory_capacity
    assert hits >= 4 and misses >= 4 and len(held) >= 2  # the script does exercise them
    assert cache.free_memory == cache.memory_capacity - cache.memory_size
    assert cache.evict_count == 0
    # CuImage.cache() is the current cache
    now = CuImage.cache()
    assert now.config == cache.config and now.hit_count == hits and now.size == len(held)
    # record(False) zeroes and stops counting; the tiles stay
    cache.record(False)
    assert cache.record() is False and (cache.hit_count, cache.miss_count) == (0, 0)
    img.read_region(script[0][:2], script[0][2:])
    assert (cache.hit_count, cache.miss_count) == (0, 0) and cache.size == len(held)
    cache.record(True)
    assert cache.record() is True
    img.read_region(script[0][:2], script[0][2:])
    assert (cache.hit_count, cache.miss_count) == (1, 0)
    # the memory budget holds: 1 MiB keeps fewer tiles than a 4 x 3 tile region touches
    small = CuImage.cache("per_process", memory_capacity=1, record_stat=True)
    assert small.size == 0 and small.memory_capacity == 1 << 20
    got = np.asarray(img.read_region(region[:2], region[2:]))
    assert np.array_equal(got, region_plain)
    tiles = tiles_of(img, *region)
    n = len(tiles)
    # first misses; the region covers three quarters of each tile or more, so each is cached
    # at once, and all but what 1 MiB holds evicted again
    assert small.miss_count == n and small.hit_count == 0
    assert 0 < small.size < n and small.evict_count == n - small.size
    for tx, ty in sorted(tiles):   # each tile read three times in a row: cached once, kept
        for _ in range(3):
            img.read_region((tx * tw, ty * th), (1, 1))
    assert 0 < small.memory_size <= 1 << 20 and 0 < small.size < n
    assert small.evict_count >= n - small.size
    # an item capacity
    items = CuImage.cache("per_process", memory_capacity=64, capacity=2, record_stat=True)
    assert items.capacity == 2 and items.config["capacity"] == 2
    for k in range(3):             # each tile missed twice in a row: the second time cached
        for _ in range(2):
            img.read_region((k * tw, 0), (1, 1))
    assert items.size == 2 and items.miss_count == 6 and items.evict_count == 1
    # nocache: nothing held, nothing counted
    off = CuImage.cache("nocache")
    assert off.type == "nocache" and off.size == 0 and off.memory_size == 0
    img.read_region((0, 0), (3 * tw, 5))
    assert (off.hit_count, off.miss_count, off.size) == (0, 0, 0)
    assert cache.type == "nocache"  # every Cache object follows the process's cache
    img.close()


def test_shared_memory_cache(path, nocache_after):
    p = path(APERIO)
    name = "tessera-pytest-api-%d" % os.getpid()
    img = CuImage(p)
    tw, th = img.resolutions["level_tile_sizes"][0]
    expected = np.asarray(img.read_region((10, 10), (tw // 2, th // 2))).copy()
    try:
        cache = CuImage.cache("shared_memory", memory_capacity=16, record_stat=True, name=name)
        assert cache.type == "shared_memory" and cache.name == name
        assert cache.config["name"] == name and cache.config["memory_capacity"] == 16
        # missed, missed again and cached, then hit
        for want in ((0, 1, 0), (0, 2, 1), (1, 2, 1)):
            got = np.asarray(img.read_region((10, 10), (tw // 2, th // 2)))
            assert np.array_equal(got, expected)
            assert (cache.hit_count, cache.miss_count, cache.size) == want
        listed = [c for c in tessera.shared_caches() if c["name"].lstrip("/") == name]
        assert len(listed) == 1, tessera.shared_caches()
        entry = listed[0]
        assert entry["ready"] and entry["users"] >= 1
        assert entry["items"] == 1 and entry["memory_capacity"] == 16 << 20
        assert 0 < entry["bytes"] == cache.memory_size <= entry["memory_capacity"]

        # a forked child uses the same segment: its read of the tile is a hit
        def child():
            c = CuImage.cache()
            a = np.asarray(img.read_region((10, 10), (tw // 2, th // 2))).copy()
            return c.type, a

        result = in_child(child)
        assert result[0] == "ok", result
        kind, a = result[1]
        assert kind == "shared_memory" and np.array_equal(a, expected)
        entry = [c for c in tessera.shared_caches() if c["name"].lstrip("/") == name][0]
        assert (entry["hits"], entry["misses"], entry["items"]) == (2, 2, 1)
    finally:
        CuImage.cache("nocache")
        img.close()
        if any(c["name"].lstrip("/") == name for c in tessera.shared_caches()):
            tessera.remove_shared_cache(name, force=True)
    assert not any(c["name"].lstrip("/") == name for c in tessera.shared_caches())


def test_cache_argument_errors(nocache_after):
    with pytest.warns(UserWarning, match="unknown cache type"):
        assert CuImage.cache("lru").type == "nocache"  # cuCIM's no cache, with a warning
    with pytest.raises(TypeError):
        CuImage.cache(3)
    with pytest.raises(ValueError, match="memory_capacity"):
        CuImage.cache("per_process", memory_capacity=-1)
    with pytest.raises(TypeError, match="unexpected"):
        CuImage.cache("per_process", colour="red")
    assert CuImage.cache().type == "nocache"
    # cuCIM's other options are accepted
    c = CuImage.cache("per_process", memory_capacity=2, mutex_pool_capacity=11,
                      list_padding=10000)
    assert c.type == "per_process"


# ==== 7. errors ===========================================================================

def test_file_errors(path, lib, tmp_path):
    missing = str(tmp_path / "no-such-slide.svs")
    with pytest.raises(FileNotFoundError) as e:
        CuImage(missing)
    assert e.value.filename == missing and missing in str(e.value)
    with pytest.raises(OSError):
        CuImage(str(tmp_path))
    assert issubclass(tessera.TesseraError, RuntimeError)
    text = tmp_path / "notes.txt"
    text.write_bytes(b"these are not the pixels you are looking for\n" * 20)
    src = path(APERIO)
    with open(src, "rb") as f:
        head = f.read(1200)
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(head)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    for bad in (text, truncated, empty):
        with pytest.raises((OSError, RuntimeError)) as e:
            CuImage(str(bad))
        st, msg, s = T.open_status(str(bad))
        assert st != T.OK and s is None
        assert str(e.value) == msg, "not the library's message"


def test_truncated_tiles_fail_only_their_reads(path, lib, tmp_path):
    """A file cut short after its directories: open works, the tiles past the end fail with
    the library's message, the others read as in the whole file, and a batch stream fails only
    the batch that needs a lost tile."""
    src = path("tf-deflate-pred")  # tifffile: directory first, 256x256 tiles
    with open(src, "rb") as f:
        data = f.read()
    cut = str(tmp_path / "cut.tif")
    with open(cut, "wb") as f:
        f.write(data[:len(data) * 6 // 10])
    st, msg, cslide = T.open_status(cut)
    assert st == T.OK, msg
    with CuImage(src) as whole, CuImage(cut) as img, cslide:
        W, H = img.size("XY")
        good, bad = (10, 20), (W - 60, H - 60)
        size = (40, 30)
        assert np.array_equal(single(img, good, size), single(whole, good, size))
        with pytest.raises((OSError, RuntimeError)) as e:
            img.read_region(bad, size)
        with pytest.raises(T.TesseraError) as ce:
            cslide.read_region(bad[0], bad[1], 0, size[0], size[1])
        assert str(e.value) == ce.value.message and "past the end" in str(e.value)
        for workers in (0, 2):
            it = img.read_region([good, bad, good], size, batch_size=1, num_workers=workers)
            first = next(it)
            with pytest.raises((OSError, RuntimeError), match="past the end"):
                next(it)
            third = next(it)
            assert list(it) == []
            for b in (first, third):
                assert np.array_equal(np.asarray(b), single(whole, good, size))
        # the slide is still usable
        assert np.array_equal(single(img, good, size), single(whole, good, size))


BAD_LEVELS = [-1, "too big", "a", 1.0, None]
BAD_SIZES = [(0, 10), (10, 0), (-1, 5), "ab", (1, 2, 3), 5, (1.5, 2), object()]
BAD_LOCATIONS = ["xy", b"xy", [1], [[1, 2, 3]], [[1.5, 2]], [[0, 0], [1]], [[0, "a"]],
                 object(), 5, [[float("nan"), 0]], [[float("inf"), 0]],
                 np.zeros((3, 3), np.int64), np.array([[1, 2]], ">i8"),
                 [[2 ** 63, 0]], [[0, -2 ** 63 - 1]], np.array([[2 ** 63, 0]], np.uint64),
                 (True, 0), [[True, 0]], [[0, False]]]
# (keywords, a word the message must name)
BAD_BATCH_OPTIONS = [
    (dict(channels=5), "channels"), (dict(channels=2), "channels"), (dict(fill=300), "fill"),
    (dict(fill=-2), "fill"), (dict(fill="x"), "fill"), (dict(batch_size=0), "batch_size"),
    (dict(batch_size=-3), "batch_size"), (dict(prefetch_factor=0), "prefetch_factor"),
    (dict(num_workers=-1), "num_workers"), (dict(seed=-1), "seed"), (dict(seed=2 ** 64), "seed"),
    (dict(seed=1.5), "seed"), (dict(device="tpu"), "tpu"), (dict(buf=bytearray(64)), "buf"),
    (dict(shm_name="slide"), "shm_name"), (dict(level=99), "level"),
]
BAD_SINGLE_OPTIONS = [
    (dict(channels=5), "channels"), (dict(fill=300), "fill"), (dict(fill=-2), "fill"),
    (dict(num_workers=-1), "num_workers"), (dict(device="tpu"), "tpu"),
    (dict(buf=bytearray(64)), "buf"), (dict(shm_name="slide"), "shm_name"),
]


def case_id(value):
    """A stable test id (no memory addresses, no line breaks)."""
    if type(value) is object:
        return "object()"
    if isinstance(value, np.ndarray):
        return "ndarray%s%s" % (value.dtype.str, list(value.shape))
    return repr(value)[:40]


@pytest.fixture(scope="module")
def pyr_image(path):
    img = CuImage(path(PYR))
    yield img
    img.close()


@pytest.fixture(scope="module")
def pyr_image_path(path):
    return path(PYR)


@pytest.mark.parametrize("level", BAD_LEVELS, ids=case_id)
def test_bad_level(pyr_image, level):
    if level == "too big":
        level = pyr_image.level_count
    for call in (lambda: pyr_image.read_region((0, 0), (8, 8), level),
                 lambda: pyr_image.read_region([(0, 0)], (8, 8), level),
                 lambda: pyr_image.read_region(level=level)):
        with pytest.raises((ValueError, TypeError), match="level"):
            call()


@pytest.mark.parametrize("size", BAD_SIZES, ids=case_id)
def test_bad_size(pyr_image, size):
    with pytest.raises((ValueError, TypeError), match="size|width|height"):
        pyr_image.read_region((0, 0), size)
    with pytest.raises((ValueError, TypeError), match="size|width|height"):
        pyr_image.read_region([(0, 0), (5, 5)], size)


def test_flat_locations_as_cucim_takes_them(pyr_image):
    """x0, y0, x1, y1, ... (a list, a 1-d array, an iterator) are the same locations as pairs;
    one (x, y) with batch_size > 1 is a stream of one patch."""
    flat = [v for xy in LOCS for v in xy]
    want = snapshot(pyr_image.read_region(LOCS, SIZE, 0, batch_size=4))
    assert snapshot(pyr_image.read_region(flat, SIZE, 0, batch_size=4)) == want
    assert snapshot(pyr_image.read_region(np.array(flat), SIZE, 0, batch_size=4)) == want
    assert snapshot(pyr_image.read_region(iter(flat), SIZE, 0, batch_size=4)) == want
    one = pyr_image.read_region(LOCS[2], SIZE, 0, batch_size=4)
    assert isinstance(one, tessera.BatchIter) and len(one) == 1
    (batch,) = list(one)
    assert np.asarray(batch).shape == (1, SIZE[1], SIZE[0], 3)
    assert np.array_equal(np.asarray(batch)[0],
                          np.asarray(pyr_image.read_region(LOCS[2], SIZE, 0)))
    with pytest.raises(ValueError, match="even number"):
        pyr_image.read_region(flat[:-1], SIZE, 0, batch_size=4)
    with pytest.raises(TypeError, match="pair"):
        pyr_image.read_region([LOCS[0], 5], SIZE, 0, batch_size=4)


def test_metadata_calls_survive_close_from_python_code_they_run(pyr_image_path):
    """level_info runs the argument's __index__, which may close the slide: the call then
    finds it closed (it used to go on reading the freed slide)."""
    img = CuImage(pyr_image_path)

    class ClosingIndex:
        def __index__(self):
            img.close()
            return 0

    with pytest.raises(ValueError, match="closed"):
        img.level_info(ClosingIndex())
    assert img.closed


def test_missing_files_leak_nothing(tmp_path):
    missing = str(tmp_path / "nothing-here.svs")
    for _ in range(50):
        with pytest.raises(FileNotFoundError):
            CuImage(missing)
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(2000):
        with pytest.raises(FileNotFoundError) as e:
            CuImage(missing)
    del e
    gc.collect()
    assert len(gc.get_objects()) - before < 100


def test_fortran_order_buffer_refused(pyr_image):
    arr = pyr_image.read_region((0, 0), (5, 4))
    PyBUF_F_CONTIGUOUS = 0x0040 | 0x0008 | 0x0010   # F_CONTIGUOUS with STRIDES (and ND)
    buf = (ctypes.c_char * 128)()                   # room for a Py_buffer
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
    with pytest.raises(BufferError, match="C-contiguous"):
        get(arr, ctypes.addressof(buf), PyBUF_F_CONTIGUOUS)
    view = memoryview(arr)                          # a C-ordered request is met
    assert view.c_contiguous and view.shape == (4, 5, 3)


def test_child_forked_during_a_stream_can_close_and_reopen(pyr_image_path):
    """An iterator alive at fork holds a use of its slide that nobody gives back in the child;
    the child can still close the slide and open it again."""
    img = CuImage(pyr_image_path)
    it = img.read_region(LOCS, SIZE, 0, batch_size=2, num_workers=2)
    next(it)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            img.close()
            img.__init__(pyr_image_path)
            ok = np.array_equal(np.asarray(img.read_region((5, 5), (16, 16))),
                                np.asarray(CuImage(pyr_image_path).read_region((5, 5), (16, 16))))
            code = 0 if ok else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], CHILD_TIMEOUT)
    assert ready, "the child hung"
    answer = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == bytes([0])
    assert len(list(it)) == len(it) - 1   # the parent's stream goes on


@pytest.mark.parametrize("loc", BAD_LOCATIONS, ids=case_id)
def test_bad_locations(pyr_image, loc):
    with pytest.raises((ValueError, TypeError), match="location|pair|64 bits|whole"):
        it = pyr_image.read_region(loc, (8, 8))
        list(it)


@pytest.mark.parametrize("loc", [(1.5, 2), (-0.5, 3), (2 ** 63, 0), (0, -2 ** 63 - 1),
                                 (float("nan"), 0), ("a", 0), (None, 0),
                                 np.array([2 ** 63, 0], np.uint64)], ids=case_id)
def test_bad_single_location(pyr_image, loc):
    with pytest.raises((ValueError, TypeError), match="location|pair|64 bits|whole"):
        pyr_image.read_region(loc, (8, 8))


# NumPy rows and tensor rows have __index__ too; they are pairs (they have a length), not one
# (x, y) of scalars
@pytest.mark.parametrize("form", ["numpy rows", "torch tensor"])
def test_iterable_of_array_rows(pyr_image, form):
    arr = np.array(LOCS, np.int64)
    locs = [row for row in arr] if form == "numpy rows" else torch.tensor(arr)
    got = snapshot(pyr_image.read_region(locs, SIZE, 0, batch_size=4))
    assert got == snapshot(pyr_image.read_region(arr, SIZE, 0, batch_size=4))


@pytest.mark.parametrize("kw,word", BAD_BATCH_OPTIONS, ids=case_id)
def test_bad_batch_options(pyr_image, kw, word):
    with pytest.raises((ValueError, TypeError)) as e:
        list(pyr_image.read_region(LOCS, SIZE, **kw))
    assert word in str(e.value)


@pytest.mark.parametrize("kw,word", BAD_SINGLE_OPTIONS, ids=case_id)
def test_bad_single_options(pyr_image, kw, word):
    with pytest.raises((ValueError, TypeError)) as e:
        pyr_image.read_region((0, 0), SIZE, **kw)
    assert word in str(e.value)


def cuda_refusal():
    """What device='cuda' must say here: the loader's reason where CUDA is missing, and that
    there is no GPU decoder yet where CUDA, a device and nvJPEG are all present."""
    try:
        tessera._tessera.cuda_status()
    except RuntimeError as e:
        return "CUDA is not available: " + str(e).split(": ")[0]
    return "no GPU decoder"


def test_cuda_is_a_clear_error(pyr_image):
    refusal = cuda_refusal()
    calls = [lambda d: pyr_image.read_region((0, 0), SIZE, device=d),
             lambda d: pyr_image.read_region(LOCS, SIZE, batch_size=4, device=d),
             lambda d: pyr_image.read_region(level=2, device=d)]
    for device in ("cuda", "cuda:0", "CUDA"):
        for call in calls:
            with pytest.raises(RuntimeError) as e:
                call(device)
            assert refusal in str(e.value)
    with CuImage(os.path.join(F.TESTDATA, APERIO)) as img:
        with pytest.raises(RuntimeError, match=refusal):
            img.associated_image("label", device="cuda")
    # 'cpu' in any spelling reads
    assert np.array_equal(np.asarray(pyr_image.read_region((0, 0), SIZE, device="CPU")),
                          np.asarray(pyr_image.read_region((0, 0), SIZE)))


def test_closed_slide(path):
    p = path(PYR)
    img = CuImage(p)
    arr = img.read_region((0, 0), SIZE)
    img.close()
    img.close()  # twice is fine
    assert img.closed and not img.is_loaded and "closed" in repr(img)
    calls = [lambda: img.read_region((0, 0), SIZE), lambda: img.read_region(LOCS, SIZE),
             lambda: img.read_region(level=1), lambda: img.metadata,
             lambda: img.associated_images, lambda: img.raw_metadata]
    for call in calls:
        with pytest.raises(ValueError, match="closed"):
            call()
    assert np.asarray(arr).shape == (SIZE[1], SIZE[0], 3)  # arrays outlive the slide
    with CuImage(p) as img2:
        assert not img2.closed
        ok = np.asarray(img2.read_region((0, 0), SIZE))
    assert img2.closed
    with pytest.raises(ValueError, match="closed"):
        img2.read_region((0, 0), SIZE)
    assert np.array_equal(ok, np.asarray(arr))
    try:
        with CuImage(p) as img3:
            raise KeyError("inside")
    except KeyError:
        pass
    assert img3.closed


# ==== 8. threads ==========================================================================

def test_threads_read_what_sequential_reads_give(path):
    p = path(PYR)
    rng = np.random.default_rng(8)
    jobs = [[(int(rng.integers(-50, 1000)), int(rng.integers(-50, 760)),
              int(rng.integers(1, 160)), int(rng.integers(1, 160)), int(rng.integers(0, 3)),
              int(rng.integers(0, 3))) for _ in range(10)] for _ in range(4)]
    streams = [[(int(rng.integers(-50, 1000)), int(rng.integers(-50, 760))) for _ in range(9)]
               for _ in range(4)]
    with CuImage(p) as img:
        expected = [[single(img, (x, y), (w, h), lv).copy() for x, y, w, h, lv, _ in job]
                    for job in jobs]
        expected_streams = [snapshot(img.read_region(s, (33, 21), 1, batch_size=2))
                            for s in streams]
        results, errors = [None] * 4, []
        barrier = threading.Barrier(4)

        def work(t):
            try:
                barrier.wait()
                regions = [np.asarray(img.read_region((x, y), (w, h), lv, num_workers=nw))
                           for x, y, w, h, lv, nw in jobs[t]]
                stream = snapshot(img.read_region(streams[t], (33, 21), 1, batch_size=2,
                                                  num_workers=t % 3))
                results[t] = (regions, stream)
            except BaseException as e:  # noqa: B902
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(CHILD_TIMEOUT)
        assert not any(th.is_alive() for th in threads), "a reading thread hung"
        assert not errors, errors
        for t in range(4):
            regions, stream = results[t]
            for k, (got, exp) in enumerate(zip(regions, expected[t])):
                assert np.array_equal(got, exp), (t, k, jobs[t][k])
            assert stream == expected_streams[t], t


@pytest.mark.parametrize("what", ["read_region", "batch"])
def test_reading_releases_the_gil(path, what):
    """With the interpreter's switch interval made huge, a thread holding the GIL keeps it
    until it blocks or gives it up. The reader does up to K reads; the main thread, woken when
    the reader starts, can run only when a read gives the GIL up. If reads kept it, the main
    thread would first run after all K reads; no clock is involved."""
    img = CuImage(path(APERIO))
    K = 20
    started, stop = threading.Event(), threading.Event()
    done = [0]

    def reader():
        started.set()
        for _ in range(K):
            if stop.is_set():
                break
            if what == "read_region":
                img.read_region((0, 0), (480, 480))
            else:
                next(img.read_region([(0, 0), (240, 240)], (240, 240), batch_size=2))
            done[0] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        t = threading.Thread(target=reader)
        t.start()
        started.wait()
        seen = done[0]
        stop.set()
        t.join(CHILD_TIMEOUT)
    finally:
        sys.setswitchinterval(old)
    assert not t.is_alive()
    assert seen < K, "the main thread could not run while %s read (GIL held)" % what
    assert done[0] >= 1
    img.close()


def test_limits(pyr_image_path):
    """Keyword limits reach the library (tessera_open_ex), limits() reads them back, a read
    over max_read_bytes is refused before anything is allocated, and pickling keeps them."""
    default = CuImage(pyr_image_path).limits()
    assert default["max_read_bytes"] == 4 << 30 and default["max_dimension"] == 1 << 24
    img = CuImage(pyr_image_path, max_read_bytes=32 * 32 * 3)
    assert img.limits() == dict(default, max_read_bytes=32 * 32 * 3)
    assert np.asarray(img.read_region((0, 0), (32, 32))).shape == (32, 32, 3)
    for call in (lambda: img.read_region((0, 0), (33, 32)),
                 lambda: img.read_region((0, 0), (32, 32), channels=4),
                 lambda: img.read_region(level=3),
                 lambda: img.read_region(LOCS, (32, 32), batch_size=2),
                 lambda: img.read_region(LOCS, (32, 32), num_workers=1, prefetch_factor=1)):
        with pytest.raises(tessera.TesseraError, match="max_read_bytes"):
            call()
    # One buffer of one patch fits, with the few hundred bytes that scheduling its tiles takes
    # (which a patch of exactly the limit leaves no room for).
    assert len(img.read_region(LOCS, (28, 28))) == len(LOCS)
    with pytest.raises(tessera.TesseraError, match="schedule"):
        img.read_region(LOCS, (32, 32))
    again = pickle.loads(pickle.dumps(img))
    assert again.limits()["max_read_bytes"] == 32 * 32 * 3
    with pytest.raises(tessera.TesseraError, match="larger than the limit"):
        CuImage(pyr_image_path, max_dimension=100)


@pytest.mark.parametrize("kw", [dict(max_read_bytes=0), dict(max_dimension=-1),
                                dict(max_directories=2 ** 33), dict(max_tile_bytes=True),
                                dict(max_decoded_tile_bytes="1")], ids=case_id)
def test_bad_limits(pyr_image_path, kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        CuImage(pyr_image_path, **kw)
