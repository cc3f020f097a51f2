"""Tiles whose bytes disagree with the tags around them, found by reviewing and fuzzing the
decoders. Each file is made at test time from real encoders' output (vips, zstd) wrapped by
tiffwrite.py. The rule: a tile whose image is not the tile's size is an error, decided from
its header before anything is decoded; a tile the tags describe correctly reads like libvips.
"""

import json
import os
import resource
import struct
import subprocess
import sys

import pytest

import tessera_ctypes as T
import tiffbytes as tb
import wsi_fixtures as F
import wsi_refs as R
from tiffwrite import write_tiff

MINISWHITE, MINISBLACK, RGB, YCBCR = 0, 1, 2, 6


@pytest.fixture(scope="module")
def work(tmp_path_factory, slides):
    d = str(tmp_path_factory.mktemp("hostile"))
    src = slides.source("rgb1k")
    return d, src


def encoded(d, src, name, w, h, save_args, bands=3):
    """Bytes of a w x h crop of the source picture saved by vips with save_args."""
    crop = os.path.join(d, name + ".v")
    F.run(["vips", "crop", src, crop, 0, 0, w, h])
    if bands == 1:
        gray = os.path.join(d, name + "-g.v")
        F.run(["vips", "extract_band", crop, gray, 1])
        crop = gray
    out = os.path.join(d, name)
    F.run(["vips", "copy", crop, out + save_args])
    with open(out, "rb") as f:
        return f.read()


def assert_reads_like_vips(path, w, h, what):
    ref = R.to_rgb(R.vips_decode(path, ["--page", "0"]))
    with T.open_slide(path) as s:
        got = s.read_region(0, 0, 0, w, h)
    m = R.describe_mismatch(got, ref, what=what)
    assert m is None, m


def cli_read(cli, path, w, h, memory_mb=768):
    """Runs `tessera read` under an address-space limit, so a tile that makes the decoder
    allocate for a huge image fails the test instead of the machine."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    out = path + ".raw"
    r = subprocess.run([cli, "read", path, "--location", "0,0", "--size", "%d,%d" % (w, h),
                        "--output", out], capture_output=True, text=True, timeout=60,
                       preexec_fn=limit)
    return r, out


def test_progressive_jpeg_declaring_a_huge_image_is_refused_before_decoding(work, cli):
    d, src = work
    jpeg = bytearray(encoded(d, src, "prog.jpg", 64, 64, "[interlace,Q=80]", bands=1))
    sof2 = jpeg.find(b"\xff\xc2")
    assert sof2 > 0, "vips did not write a progressive JPEG"
    struct.pack_into(">HH", jpeg, sof2 + 5, 30000, 30000)   # height, width
    path = os.path.join(d, "prog-bomb.tif")
    write_tiff(path, 64, 64, 64, 64, [bytes(jpeg)], 7, MINISBLACK, 1)
    r, out = cli_read(cli, path, 64, 64)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "30000x30000" in r.stderr, r.stderr
    assert not os.path.exists(out)


@pytest.mark.parametrize("what,w,h", [("wider", 64, 32), ("taller", 32, 80)])
def test_jpeg_larger_than_its_tile_is_an_error(work, lib, what, w, h):
    d, src = work
    jpeg = encoded(d, src, "big-%s.jpg" % what, w, h, "[Q=90]")
    path = os.path.join(d, "jpeg-%s.tif" % what)
    write_tiff(path, 32, 32, 32, 32, [jpeg], 7, YCBCR, 3,
               extra=[(530, 3, 2, struct.pack("<HH", 2, 2))])
    with T.open_slide(path) as s:
        with pytest.raises(T.TesseraError) as e:
            s.read_region(0, 0, 0, 32, 32)
    assert e.value.status == T.E_CORRUPT and "%dx%d" % (w, h) in str(e.value), str(e.value)


def test_jpeg2000_larger_than_its_tile_is_an_error(work, lib):
    d, src = work
    j2k = encoded(d, src, "big.j2k", 64, 64, "[lossless]")
    path = os.path.join(d, "j2k-big.tif")
    write_tiff(path, 32, 32, 32, 32, [j2k], 33005, RGB, 3)
    with T.open_slide(path) as s:
        with pytest.raises(T.TesseraError) as e:
            s.read_region(0, 0, 0, 32, 32)
    assert e.value.status == T.E_CORRUPT and "64x64" in str(e.value), str(e.value)


def test_miniswhite_jpeg_is_inverted_like_libvips(work, lib):
    d, src = work
    jpeg = encoded(d, src, "gray.jpg", 32, 32, "[Q=90]", bands=1)
    path = os.path.join(d, "jpeg-miniswhite.tif")
    write_tiff(path, 32, 32, 32, 32, [jpeg], 7, MINISWHITE, 1)
    assert_reads_like_vips(path, 32, 32, "MinIsWhite JPEG")


def test_zstd_tile_with_padding_after_its_frame_reads_like_libvips(work, lib):
    d, src = work
    raw = os.path.join(d, "tile.raw")
    crop = os.path.join(d, "zcrop.v")
    F.run(["vips", "crop", src, crop, 0, 0, 32, 32])
    F.run(["vips", "rawsave", crop, raw])
    subprocess.run(["zstd", "-q", "-f", raw, "-o", raw + ".zst"], check=True)
    with open(raw + ".zst", "rb") as f:
        frame = f.read()
    path = os.path.join(d, "zstd-padded.tif")
    write_tiff(path, 32, 32, 32, 32, [frame + b"\x00" * 8], 50000, RGB, 3)
    assert_reads_like_vips(path, 32, 32, "padded zstd tile")


def test_tile_tables_larger_than_the_file_are_refused(work, lib):
    """Two directories that share one array of 2^20 SHORT entries: the file is 2 MiB, but its
    tags ask for 2^20 tiles per directory."""
    d, _ = work
    n = 1 << 20
    side = 2048 * 1024                                    # 1024 x 1024 tiles of 2048
    ifd_size = 2 + 10 * 12 + 4
    array_at = 8 + 2 * ifd_size
    data = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for k in range(2):
        w = side - k * 2048
        entries = [(256, 4, 1, w), (257, 4, 1, w), (258, 3, 1, 8), (259, 3, 1, 1),
                   (262, 3, 1, 1), (277, 3, 1, 1), (322, 4, 1, 2048), (323, 4, 1, 2048),
                   (324, 3, n, array_at), (325, 3, n, array_at)]
        data += struct.pack("<H", len(entries))
        for tag, typ, count, value in entries:
            packed = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else \
                struct.pack("<I", value)
            data += struct.pack("<HHI", tag, typ, count) + packed
        data += struct.pack("<I", 8 + (k + 1) * ifd_size if k == 0 else 0)
    data += struct.pack("<H", 8) * n
    path = os.path.join(d, "shared-tables.tif")
    with open(path, "wb") as f:
        f.write(data)
    st, msg, slide = T.open_status(path)
    assert st == T.E_FORMAT, (T.STATUS_NAMES.get(st), msg)
    # refused before libtiff reads the directory (its entries point at 4 MiB, the file has 2)
    assert "points at more tag data than the file holds" in msg, msg


def test_jpeg_with_stray_bytes_before_eoi_reads_like_libvips(work, lib):
    """Padding between the last scan and EOI leaves the image whole: not an error."""
    d, src = work
    jpeg = encoded(d, src, "padded.jpg", 32, 32, "[Q=90]")
    assert jpeg.endswith(b"\xff\xd9")
    path = os.path.join(d, "jpeg-padded.tif")
    write_tiff(path, 32, 32, 32, 32, [jpeg[:-2] + b"\x00" * 20 + b"\xff\xd9"], 7, YCBCR, 3,
               extra=[(530, 3, 2, struct.pack("<HH", 2, 2))])
    assert_reads_like_vips(path, 32, 32, "JPEG with stray bytes before EOI")


def test_jpeg_with_stray_bytes_before_a_restart_marker_is_an_error(work, lib):
    """Stray bytes inside the entropy data (before RST0) mean lost data: an error. (Twenty of
    them: libjpeg-turbo's bit buffer swallows a few without a warning.)"""
    d, src = work
    jpeg = encoded(d, src, "restart.jpg", 32, 32, "[Q=90,restart-interval=1]")
    rst = jpeg.find(b"\xff\xd0", jpeg.find(b"\xff\xda"))
    assert rst > 0, "vips wrote no restart marker"
    path = os.path.join(d, "jpeg-stray-rst.tif")
    write_tiff(path, 32, 32, 32, 32, [jpeg[:rst] + b"\x00" * 20 + jpeg[rst:]], 7, YCBCR, 3,
               extra=[(530, 3, 2, struct.pack("<HH", 2, 2))])
    with T.open_slide(path) as s:
        with pytest.raises(T.TesseraError) as e:
            s.read_region(0, 0, 0, 32, 32)
    assert e.value.status == T.E_CORRUPT and "extraneous" in str(e.value), str(e.value)


@pytest.mark.parametrize("kind,expect", [
    ("planar-separate", "unsupported separate colour planes"),
    ("16-bit", "unsupported 16 bits per sample"),
    ("float", "unsupported 32 bits per sample"),
])
def test_valid_tiffs_tessera_does_not_read_fail_with_a_message_naming_why(work, lib, cli, kind,
                                                                          expect):
    import numpy as np
    import tifffile
    d, _ = work
    a = (np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    path = os.path.join(d, kind + ".tif")
    if kind == "planar-separate":
        tifffile.imwrite(path, np.moveaxis(a, 2, 0), tile=(32, 32), planarconfig="separate",
                         photometric="rgb")
    elif kind == "16-bit":
        tifffile.imwrite(path, a.astype(np.uint16) * 257, tile=(32, 32), photometric="rgb")
    else:
        tifffile.imwrite(path, a.astype(np.float32), tile=(32, 32), photometric="rgb")
    with T.open_slide(path) as s:
        with pytest.raises(T.TesseraError) as e:
            s.read_region(0, 0, 0, 64, 48)
    assert e.value.status == T.E_UNSUPPORTED and expect in str(e.value), str(e.value)
    r = subprocess.run([cli, "read", path, "--location", "0,0", "--size", "8,8", "--output",
                        path + ".png"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and expect in r.stderr and path in r.stderr, r.stderr


BOMB_CHILD = r"""
import ctypes, json, resource, sys, threading
sys.path.insert(0, HERE)
import numpy as np
import tessera_ctypes as T

lib = T.load()
lib.tessera_decode_budget_set.argtypes = [ctypes.c_uint64]
lib.tessera_decode_budget_get.restype = ctypes.c_uint64
assert lib.tessera_decode_budget_set(BUDGET) == T.OK, T.error_message()
assert lib.tessera_decode_budget_get() == BUDGET
s = T.open_slide(PATH)
info = s.level_info(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = threading.Barrier(4)
got, errors = {}, []

def reader(k):
    start.wait()
    for r in range(3):
        try:
            got[k, r] = s.read_region((k % 2) * info.tile_width + 8 * r, 8 * k, 0, 16, 16)
        except T.TesseraError as e:
            errors.append(str(e))

threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join(120)
    assert not t.is_alive(), "a reader did not finish within 120 s"
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10
same = all(np.array_equal(a, s.read_region((k % 2) * info.tile_width + 8 * r, 8 * k, 0, 16, 16))
           for (k, r), a in got.items())
print(json.dumps({"grown_mib": grown, "errors": errors, "reads": len(got), "same": same}))
"""


def test_deflate_bomb_read_by_threads_stays_within_the_decode_budget(work, lib):
    """A deflate bomb (two 8192 x 4096 RGB tiles of zeros, 96 MiB each decoded, about 200 KB
    on disk) read by 4 threads at once: each thread decodes a whole tile into its own scratch,
    so the process used to hold 4 tiles (~384 MiB). Under a 128 MiB process-wide decode budget
    one tile is decoded at a time: the peak RSS of the child grows by less than the budget and
    a margin. The reads' pixels equal the same reads made one at a time."""
    tifffile = pytest.importorskip("tifffile")
    np = pytest.importorskip("numpy")
    path = os.path.join(work[0], "deflate-bomb.tif")
    tifffile.imwrite(path, np.zeros((4096, 16384, 3), np.uint8), tile=(4096, 8192),
                     compression="zlib", photometric="rgb")
    assert os.path.getsize(path) < 1 << 20
    budget = 128 << 20
    code = (BOMB_CHILD.replace("HERE", repr(os.path.dirname(os.path.abspath(__file__))))
            .replace("BUDGET", str(budget)).replace("PATH", repr(path)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["errors"] == [] and out["reads"] == 12 and out["same"], out
    assert out["grown_mib"] < (budget >> 20) + 64, out


def write_tiny_tiles(path, side, tile=1):
    """An uncompressed RGB side x side TIFF of tile x tile tiles (TIFF asks for multiples of
    16; readers accept others, and so does tessera), of random pixels; returns them."""
    np = pytest.importorskip("numpy")
    img = np.random.default_rng(side).integers(0, 256, (side, side, 3), np.uint8)
    tiles = [img[y:y + tile, x:x + tile].tobytes() for y in range(0, side, tile)
             for x in range(0, side, tile)]
    write_tiff(path, side, side, tile, tile, tiles, 1, RGB, 3)
    return img


TINY_CHILD = r"""
import json, resource, sys
sys.path.insert(0, HERE)
import tessera_ctypes as T

s = T.open_slide(PATH)
# Threads and their tile buffers first, so the limit below is about the batch alone.
for _ in s.batches([[0, 0]], (64, 64), batch_size=1, num_workers=2):
    pass
with open("/proc/self/status") as f:
    size = [int(l.split()[1]) << 10 for l in f if l.startswith("VmSize:")][0]
resource.setrlimit(resource.RLIMIT_AS, (size + (LIMIT_MIB << 20),) * 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
counts, error = [], None
try:
    for a, _ in s.batches([[0, 0], [1, 1], [2, 2], [3, 3]], (SIDE, SIDE), batch_size=2,
                          num_workers=2):
        counts.append(a.shape[0])
    region = s.read_region(0, 0, 0, SIDE, SIDE, num_workers=2).shape
except T.TesseraError as e:
    error, region = str(e), None
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10
print(json.dumps({"counts": counts, "error": error, "grown_mib": grown, "region": region}))
"""


def test_tiny_tiles_batches_cost_bounded_memory(work, lib):
    """1 x 1 tiles: batches of whole-image patches used to schedule each tile of each patch (a
    job of ~200 bytes for 3 bytes of pixels: ~800 MiB for four 1024 x 1024 patches), and under
    an address-space limit glibc aborted the process. Such tiles are now painted patch by
    patch without memory per tile: in a child under a 256 MiB address-space limit (beyond what
    it holds before the batches), the batches come out, as does a region read of the whole
    image with workers, and its peak RSS grows by far less than the bookkeeping used to take."""
    path = os.path.join(work[0], "tiny-tiles-1024.tif")
    write_tiny_tiles(path, 1024)
    code = (TINY_CHILD.replace("HERE", repr(os.path.dirname(os.path.abspath(__file__))))
            .replace("PATH", repr(path)).replace("LIMIT_MIB", "256").replace("SIDE", "1024"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, "child exited %d: %s" % (r.returncode, r.stderr[-3000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["error"] is None and out["counts"] == [2, 2], out
    assert out["region"] == [1024, 1024, 3], out
    assert out["grown_mib"] < 64, out


def test_tiny_tiles_read_like_their_pixels(work, lib):
    """Patches on tiles of 1 and 2 pixels (painted patch by patch) and of 5 (scheduled tile by
    tile) equal the pixels written and single region reads, on the CPU with and without
    workers; a tile past the end of the file fails just the batches that need it, naming it."""
    np = pytest.importorskip("numpy")
    for tile in (1, 2, 5):
        path = os.path.join(work[0], "tiny-tiles-%d.tif" % tile)
        img = write_tiny_tiles(path, 300, tile)
        with T.open_slide(path) as s:
            assert np.array_equal(s.read_region(0, 0, 0, 300, 300), img)
            rng = np.random.default_rng(tile)
            locs = np.stack([rng.integers(-40, 320, 23), rng.integers(-40, 320, 23)], 1)
            for workers in (0, 2):
                seen = 0
                for a, idx in s.batches(locs, (71, 45), batch_size=4, num_workers=workers):
                    for p, i in enumerate(idx):
                        x, y = (int(v) for v in locs[i])
                        assert np.array_equal(a[p], s.read_region(x, y, 0, 71, 45)), (tile, x, y)
                        seen += 1
                assert seen == 23
    # Tile 1000 of the 1-pixel file (row 3, column 100) made to lie past the end of the file.
    path = os.path.join(work[0], "tiny-tiles-1.tif")
    with open(path, "rb") as f:
        data = f.read()
    data = tb.patch_value(data, tb.Tiff(data), 0, "TileOffsets", 1000, len(data) + 64)
    bad = os.path.join(work[0], "tiny-tiles-1-bad.tif")
    with open(bad, "wb") as f:
        f.write(data)
    with T.open_slide(bad) as s:
        for workers in (0, 2):
            it = T.Batches(s.batch_iter([[0, 0], [200, 200], [90, 0]], (20, 20), batch_size=1,
                                        num_workers=workers))
            assert next(it)[0].shape == (1, 20, 20, 3)
            assert next(it)[0].shape == (1, 20, 20, 3)
            with pytest.raises(T.TesseraError, match="tile 1000"):
                next(it)
            it.destroy()


def test_scheduling_memory_counts_against_max_read_bytes(work, lib):
    """The memory that scheduling a batch's tiles takes counts against max_read_bytes with its
    pixels: an 8 x 8 patch (192 bytes) over 1-pixel tiles schedules 81 tiles, more than the
    limit of 1000 bytes, and the iterator is refused saying so."""
    path = os.path.join(work[0], "tiny-tiles-64.tif")
    write_tiny_tiles(path, 64)
    with T.open_slide(path, T.open_options(max_read_bytes=1000)) as s:
        st, msg, it = s.batch_iter_status([[0, 0]], (8, 8), batch_size=1)
        assert st == T.E_LIMIT and "schedule" in msg and "max_read_bytes" in msg, (st, msg)
        assert s.read_region(0, 0, 0, 8, 8).shape == (8, 8, 3)
