"""The per-process tile cache over every generated fixture and real file: reads through the
cache (a first pass that fills it, a second that hits it, and one with a cache too small for
most tiles, which evicts and bypasses) equal reads without a cache, at every level, with 3
and 4 channels, regions and batches alike; and they equal libvips' decode, so a tile stored
whole in the cache and cropped from there is still byte-exact. Statistics add up: each pass
of the same reads either hits or misses every tile it needs. A file rewritten in place with
the same size and modification time (cp -p, rsync -t --inplace, tar x) is told apart by its
status-change time, with both kinds of cache."""

import os
import zlib

import numpy as np
import pytest
import tifffile

import tessera_ctypes as T
import wsi_fixtures as F
import wsi_refs as R

CASES = F.level_cases()


def regions(w, h, rng):
    """A few regions of a level: whole tiles' worth, straddling, partly outside, tiny."""
    out = [(0, 0, min(w, 300), min(h, 200)), (w - 50, h - 40, 90, 70), (-20, -10, 60, 50)]
    for _ in range(5):
        rw, rh = int(rng.integers(1, 260)), int(rng.integers(1, 260))
        out.append((int(rng.integers(-40, w)), int(rng.integers(-40, h)), rw, rh))
    return out


@pytest.fixture(autouse=True)
def no_cache_after():
    yield
    T.configure_cache(T.CACHE_NONE)


@pytest.mark.parametrize("name,level", CASES, ids=["%s-L%d" % c for c in CASES])
def test_cached_reads_equal_plain_reads(slides, name, level):
    path = slides.path(name)
    rng = np.random.default_rng(zlib.crc32(("%s/%d" % (name, level)).encode()))
    with T.open_slide(path) as s:
        info = s.level_info(level)
        ds = info.downsample
        regs = regions(info.width, info.height, rng)
        T.configure_cache(T.CACHE_NONE)
        want = {(r, c): s.read_region(int(r[0] * ds), int(r[1] * ds), level, r[2], r[3],
                                      channels=c)
                for r in regs for c in (3, 4)}
        for mib, passes in ((256, 2), (1, 1)):
            T.configure_cache(T.CACHE_PER_PROCESS, memory_capacity_mib=mib)
            for p in range(passes):
                for (r, c), w in want.items():
                    got = s.read_region(int(r[0] * ds), int(r[1] * ds), level, r[2], r[3],
                                        channels=c)
                    assert np.array_equal(got, w), (name, level, r, c, mib, p)
            st = T.cache_stats()
            assert st["bytes"] <= st["memory_capacity"], st
            if mib == 256 and info.tile_width * info.tile_height * 4 < (8 << 20):
                assert st["misses"] > 0 and st["hits"] >= st["misses"], st


JPEG_CASES = [c for c in CASES if F.SPECS[c[0]].kind != "testdata" and "jpeg" in c[0]][:6]


@pytest.mark.parametrize("name,level", JPEG_CASES, ids=["%s-L%d" % c for c in JPEG_CASES])
def test_cached_batches_equal_libvips(slides, name, level):
    path = slides.path(name)
    ref = R.vips_decode(path, F.SPECS[name].vips_load_args(level))
    T.configure_cache(T.CACHE_PER_PROCESS, memory_capacity_mib=64)
    with T.open_slide(path) as s:
        info = s.level_info(level)
        rng = np.random.default_rng(7)
        pos = [(int(rng.integers(0, max(1, info.width - 40))),
                int(rng.integers(0, max(1, info.height - 30)))) for _ in range(24)]
        xy = np.array([(int(x * info.downsample), int(y * info.downsample)) for x, y in pos],
                      np.int64)
        for p in range(2):
            with s.batches(xy, (40, 30), level, batch_size=5, num_workers=2) as it:
                for arr, idx in it:
                    for k, i in enumerate(idx):
                        x, y = pos[i]
                        want = R.to_rgb(ref)[y:y + 30, x:x + 40]
                        got = arr[k][:want.shape[0], :want.shape[1]]
                        assert np.array_equal(got, want), (name, level, p, x, y)


def same_size_tiff(path, seed):
    """An uncompressed tiled RGB TIFF of random pixels: another seed gives other pixels in a
    file of exactly the same size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(64, 64), photometric="rgb", metadata=None)


@pytest.mark.parametrize("kind", [T.CACHE_PER_PROCESS, T.CACHE_SHARED_MEMORY],
                         ids=["per_process", "shared_memory"])
def test_rewrite_in_place_keeping_size_and_mtime_is_not_served_stale(tmp_path, kind):
    """The tiles of a slide read through the cache, then its bytes overwritten in place by a
    file of the same size and the modification time set back (as cp -p, rsync -t --inplace
    and tar x leave it): device, inode, size and mtime are all the same, only the ctime
    differs. A reopened slide reads the new pixels, as a read without a cache does."""
    path, other = str(tmp_path / "a.tif"), str(tmp_path / "b.tif")
    same_size_tiff(path, 1)
    same_size_tiff(other, 2)
    assert os.path.getsize(path) == os.path.getsize(other)
    name = "tessera-pytest-%d-rewrite" % os.getpid()
    T.configure_cache(kind, memory_capacity_mib=64,
                      name=name if kind == T.CACHE_SHARED_MEMORY else None)
    try:
        with T.open_slide(path) as s:
            old = s.read_region(0, 0, 0, 256, 256)
        before = os.stat(path)
        with open(other, "rb") as f:
            new_bytes = f.read()
        with open(path, "r+b") as f:
            f.write(new_bytes)
        # the kernel stamps ctime from a coarse clock: set mtime back until the change shows
        for _ in range(1000):
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            after = os.stat(path)
            if after.st_ctime_ns != before.st_ctime_ns:
                break
        assert (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
        assert after.st_ctime_ns != before.st_ctime_ns
        with T.open_slide(path) as s:
            cached = s.read_region(0, 0, 0, 256, 256)
        T.configure_cache(T.CACHE_NONE)
        with T.open_slide(path) as s:
            plain = s.read_region(0, 0, 0, 256, 256)
        with T.open_slide(other) as s:
            assert np.array_equal(plain, s.read_region(0, 0, 0, 256, 256))
        assert not np.array_equal(plain, old), "the two files should hold other pixels"
        assert np.array_equal(cached, plain), "the cache served the file's old pixels"
    finally:
        T.configure_cache(T.CACHE_NONE)
        if kind == T.CACHE_SHARED_MEMORY and os.path.exists("/dev/shm/" + name):
            T.shared_cache_remove(name, force=True)
