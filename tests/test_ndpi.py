"""Hamamatsu NDPI read by restart intervals.

Each level of an NDPI is one JPEG strip with restart markers. tessera reads such a level as
a grid of tiles, one per restart interval (interval x MCU width by one MCU high, OpenSlide's
grid), seeking to the offsets the file records (McuStarts, tag 65426, relative to the strip,
with their high words in tag 65432) instead of decoding the whole level.

Checked here, byte for byte against OpenSlide 3.4.1 wherever it reads the file, and otherwise
against Pillow's libjpeg decode of the same JPEG data:
- the NDPI sample (fluorescence, YCbCr 4:4:4, one interval per row of MCUs): every level
  whole, regions at edges, across intervals and partly outside, batches, the tile grid;
- that a small region decodes only the intervals it covers (the tile cache's misses), and that
  a damaged first interval does not fail a region below it (a whole-strip decode would);
- NDPI files written here with libjpeg (a small encoder compiled at test time) and NDPI's
  tags: 4:2:2 with several intervals per row (chroma upsampled at tile edges, as OpenSlide
  decodes it), sizes that are not whole intervals, 4:2:0 (which OpenSlide 3.4.1 cannot read;
  each interval is decoded as an image of its own), grayscale, McuStarts high words;
- damaged copies of the sample: McuStarts missing, outside the file, of the wrong count or out
  of order make the level one strip again (same pixels, decoded whole); McuStarts off by a
  byte, damaged entropy data, a strip cut short or a JPEG header that disagrees with the TIFF
  fail the reads that need them with a clear message and leave the others right. Each runs in
  a child process (a crash fails the test, not pytest) and through the command, under
  AddressSanitizer too when TESSERA_CLI_ASAN names such a build.
"""

import io
import json
import math
import os
import random
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tessera_ctypes as T
import tiffbytes as tb
import wsi_fixtures as F
import wsi_refs as R

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "tessera_probe.py")
PYTHON = sys.executable or "/usr/bin/python3"
SAMPLE = os.path.join(F.TESTDATA, "hamamatsu-ndpi-DAPI.ndpi")
MCU_STARTS, MCU_STARTS_HIGH = 65426, 65432
FILL = 77


# --- comparing with OpenSlide -------------------------------------------------------------

def os_level(osl, dims):
    """OpenSlide's level of the given size (it adds levels of its own between NDPI's) and its
    integer downsample."""
    ods = list(osl.level_dimensions)
    assert tuple(dims) in ods, "OpenSlide has no level %r (it has %r)" % (dims, ods)
    k = ods.index(tuple(dims))
    d = osl.level_downsamples[k]
    assert abs(d - round(d)) < 1e-9, d
    return k, int(round(d))


def check_vs_openslide(ts, osl, level, lx, ly, w, h, what, num_workers=0):
    """tessera's RGBA read at level coordinates (lx, ly) equals OpenSlide's where OpenSlide is
    opaque; outside the level it is the fill with alpha 0, inside alpha 255. Returns None or
    a message."""
    info = ts.level_info(level)
    k, d = os_level(osl, (info.width, info.height))
    try:
        got = ts.read_region(lx * d, ly * d, level, w, h, channels=4, fill=FILL,
                             num_workers=num_workers)
    except T.TesseraError as e:
        return "%s: %s" % (what, e)
    exp = R.openslide_region(osl, lx * d, ly * d, k, w, h)
    _, inside = R.crop_fill(np.zeros((info.height, info.width, 1), np.uint8), lx, ly, w, h, 0)
    opaque = exp[..., 3] == 255
    m = R.describe_mismatch(got[..., :3], exp[..., :3], opaque, what, (lx, ly))
    if m:
        return m
    if (got[..., 3] != np.where(inside, 255, 0)).any():
        return "%s: alpha is not 255 inside and 0 outside" % what
    if (got[..., :3][~inside] != FILL).any():
        return "%s: outside the level is not the fill" % what
    return None


def regions(W, H, TW, TH, seed, n_random=30):
    """Regions (lx, ly, w, h, label): the shared edge and tile cases, interval boundaries,
    and random ones, some partly outside."""
    r = R.regions_for_level(W, H, TW, TH, seed)
    rng = random.Random(seed)
    for i in range(n_random):
        w, h = rng.randint(1, min(400, W + 30)), rng.randint(1, min(200, H + 30))
        x, y = rng.randint(-w // 2, W - 1), rng.randint(-h // 2, H - 1)
        r.append((x, y, w, h, "random-%d" % i))
    for i in range(6):  # straddling interval boundaries, up to the last row of tiles
        y = rng.randrange(1, max(2, H // TH)) * TH - rng.randint(1, TH)
        x = rng.randrange(0, max(1, -(-W // TW))) * TW - rng.randint(0, 5)
        r.append((x, y, rng.randint(5, 2 * TW + 9), rng.randint(2, 3 * TH), "interval-edge-%d" % i))
    return r


def check_regions(ts, osl, level, seed):
    info = ts.level_info(level)
    fails = []
    for lx, ly, w, h, label in regions(info.width, info.height, info.tile_width,
                                       info.tile_height, seed):
        if w * h > 6_000_000:
            continue
        m = check_vs_openslide(ts, osl, level, lx, ly, w, h,
                               "level %d region %s (%d, %d) %dx%d" % (level, label, lx, ly, w, h))
        if m:
            fails.append(m)
    assert not fails, "\n".join(fails[:10])


# --- the sample -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample():
    assert os.path.isfile(SAMPLE), "test data file missing: %s" % SAMPLE
    return SAMPLE


def mcu_starts(path, page):
    """McuStarts of a directory, as tifffile reads them."""
    import tifffile
    with tifffile.TiffFile(path) as tf:
        return [int(v) for v in tf.pages[page].tags[MCU_STARTS].value]


def test_sample_grid_is_openslides(sample, lib, cli):
    """Every level of the sample is a grid of restart intervals: the tile size OpenSlide
    reports, one tile per McuStarts entry; `tessera info --json` says the same. The levels are
    OpenSlide's: the 4 stored ones, and the smallest decoded at 1/2, 1/4 and 1/8 by libjpeg's
    scaled IDCT (one tile per interval of the stored level)."""
    ts = T.open_slide(sample)
    osl = R.openslide_open(sample)
    r = subprocess.run([cli, "info", sample, "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert ts.level_count == len(osl.level_dimensions) == 7
    for lv in range(ts.level_count):
        info = ts.level_info(lv)
        k, _ = os_level(osl, (info.width, info.height))
        tw = int(osl.properties["openslide.level[%d].tile-width" % k])
        th = int(osl.properties["openslide.level[%d].tile-height" % k])
        assert (info.tile_width, info.tile_height) == (tw, th), (lv, info.as_dict(), tw, th)
        assert th < info.height
        stored = min(lv, 3)  # levels 4-6 are level 3 scaled
        assert -(-info.width // tw) * -(-info.height // th) == len(mcu_starts(sample, stored))
        assert (doc["levels"][lv]["tile_width"], doc["levels"][lv]["tile_height"]) == (tw, th)
    ts.close()


@pytest.mark.parametrize("num_workers", [0, 4])
def test_sample_whole_levels(sample, lib, num_workers):
    """Every level read whole equals OpenSlide's."""
    ts = T.open_slide(sample)
    osl = R.openslide_open(sample)
    for lv in range(ts.level_count):
        info = ts.level_info(lv)
        m = check_vs_openslide(ts, osl, lv, 0, 0, info.width, info.height,
                               "level %d whole" % lv, num_workers=num_workers)
        assert m is None, m
    ts.close()


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4, 5, 6])
def test_sample_regions(sample, lib, level):
    """Regions at the edges, across intervals, partly and wholly outside, and random ones."""
    ts = T.open_slide(sample)
    check_regions(ts, R.openslide_open(sample), level, 100 + level)
    ts.close()


@pytest.mark.parametrize("num_workers", [0, 3])
def test_sample_batches(sample, lib, num_workers):
    """Patches through the batch iterator equal OpenSlide's regions."""
    ts = T.open_slide(sample)
    osl = R.openslide_open(sample)
    rng = random.Random(num_workers)
    for lv in range(ts.level_count):
        info = ts.level_info(lv)
        k, d = os_level(osl, (info.width, info.height))
        pw, ph = 97, 61
        lvl = [(rng.randint(-40, info.width - 20), rng.randint(-30, info.height - 10))
               for _ in range(22)]
        lvl += [(info.width - 50, info.height - 30), (0, 0), (5, info.tile_height - 3)]
        locs = [(x * d, y * d) for x, y in lvl]
        seen = 0
        with ts.batches(locs, (pw, ph), lv, batch_size=4, num_workers=num_workers,
                        channels=4, fill=FILL) as bb:
            for arr, idx in bb:
                for patch, i in zip(arr, idx):
                    x, y = lvl[int(i)]
                    exp = R.openslide_region(osl, x * d, y * d, k, pw, ph)
                    _, inside = R.crop_fill(np.zeros((info.height, info.width, 1), np.uint8),
                                            x, y, pw, ph, 0)
                    m = R.describe_mismatch(patch[..., :3], exp[..., :3], inside,
                                            "level %d batch patch %d" % (lv, i), (x, y))
                    assert m is None, m
                    assert (patch[..., 3] == np.where(inside, 255, 0)).all()
                    seen += 1
        assert seen == len(locs)
    ts.close()


def test_small_region_decodes_only_its_intervals(sample, lib):
    """A 256 x 256 region decodes the intervals it covers and no others: with a tile cache,
    each decoded interval is one miss, and the cache holds those intervals only, a small part
    of the level (a whole-level decode would be one item the size of the level). Whether an
    interval is kept at its first miss or its second is the admission policy's choice (the
    ghost, or the rectangle of the level's last misses: test_cache.c tests those); either
    way, after two reads every covered interval is cached and no other."""
    ts = T.open_slide(sample)
    info = ts.level_info(0)
    tile_bytes = info.tile_width * info.tile_height * 3
    try:
        T.configure_cache(T.CACHE_PER_PROCESS, memory_capacity_mib=256, record_stats=True)
        for x, y in [(1000, 1003), (3968 - 256, 4864 - 256), (0, 0)]:
            before = T.cache_stats()
            got = ts.read_region(x, y, 0, 256, 256)
            mid = T.cache_stats()
            want = (y + 255) // info.tile_height - y // info.tile_height + 1
            assert mid["misses"] - before["misses"] == want, (x, y, before, mid)
            kept = mid["items"] - before["items"]
            assert 0 <= kept <= want, (x, y, before, mid)
            assert np.array_equal(ts.read_region(x, y, 0, 256, 256), got)
            after = T.cache_stats()
            # The intervals kept at their first miss are hits now; the others are missed again.
            assert after["misses"] - mid["misses"] == want - kept, (x, y, mid, after)
            assert after["hits"] - mid["hits"] == kept, (x, y, mid, after)
            assert after["items"] - before["items"] == want
            assert after["bytes"] - before["bytes"] <= want * tile_bytes + want * 4096
            assert after["bytes"] < info.width * info.height * 3 // 10
            T.configure_cache(T.CACHE_NONE)
            assert np.array_equal(got, ts.read_region(x, y, 0, 256, 256))
            T.configure_cache(T.CACHE_PER_PROCESS, memory_capacity_mib=256, record_stats=True)
    finally:
        T.configure_cache(T.CACHE_NONE)
    ts.close()


# --- damaged copies of the sample -----------------------------------------------------------

def _u32(data, pos, value):
    return data[:pos] + struct.pack("<I", value) + data[pos + 4:]


def _mcu_entry(t, ifd):
    return t.ifds[ifd].entries[MCU_STARTS]


def _damage(data, name):
    """The damaged copy `name` of the sample and what reading it must give:
    (bytes, level 0 read as one strip?, regions that must fail, open must fail?)."""
    t = tb.Tiff(data)
    e = _mcu_entry(t, 0)
    starts = t.values(0, MCU_STARTS)
    strip = t.values(0, "StripOffsets")[0]
    count_pos = t.ifds[0].entries[279].data_pos
    if name == "mcu-starts-outside":
        return _u32(data, e.data_pos + 4 * 300, 0xFFFFFF00), True, [], False
    if name == "mcu-starts-count":
        return _u32(data, e.pos + 4, e.count - 1), True, [], False
    if name == "mcu-starts-unordered":
        d = _u32(data, e.data_pos + 4 * 10, starts[11])
        return _u32(d, e.data_pos + 4 * 11, starts[10]), True, [], False
    if name == "mcu-starts-missing":  # retagged 65427, still in ascending order
        return data[:e.pos] + struct.pack("<H", MCU_STARTS + 1) + data[e.pos + 2:], True, [], False
    if name == "mcu-starts-off-by-one":  # in order and in the file, but not at RST199
        d = _u32(data, e.data_pos + 4 * 200, starts[200] + 1)
        return d, False, [(0, 199 * 8 + 3, 64, 4), (100, 200 * 8, 50, 8)], False
    if name == "interval-0-damaged":  # a marker in the middle of the first interval
        pos = strip + (starts[0] + starts[1]) // 2
        return data[:pos] + b"\xff\xd9" + data[pos + 2:], False, [(3900, 0, 68, 8)], False
    if name == "strip-cut-short":  # the last McuStarts lie past the strip's end
        bad = [(0, 4700, 100, 100), (3900, 4800, 100, 100)]
        return _u32(data, count_pos, starts[500] - 100), True, bad, False
    if name == "sof-lies":  # the JPEG says 3960 wide, the TIFF 3968
        pos = strip + data[strip:strip + 1000].find(b"\xff\xc0") + 7
        d = data[:pos] + struct.pack(">H", 3960) + data[pos + 2:]
        return d, True, [(0, 0, 10, 10), (1000, 2000, 64, 64)], False
    if name == "dri-lies":  # restart markers every 248 MCUs, says the header
        pos = strip + data[strip:strip + 1000].find(b"\xff\xdd") + 4
        d = data[:pos] + struct.pack(">H", 248) + data[pos + 2:]
        return d, True, [(0, 0, 10, 10)], False
    if name == "header-segment-lies":  # the first DQT claims 65535 bytes
        pos = strip + data[strip:strip + 1000].find(b"\xff\xdb") + 2
        d = data[:pos] + b"\xff\xff" + data[pos + 2:]
        return d, True, [(0, 0, 10, 10)], False
    if name == "file-cut":  # inside level 0's strip, before every directory
        return data[:2_000_000], None, [], True
    raise KeyError(name)


DAMAGED = ["mcu-starts-outside", "mcu-starts-count", "mcu-starts-unordered",
           "mcu-starts-missing", "mcu-starts-off-by-one", "interval-0-damaged",
           "strip-cut-short", "sof-lies", "dri-lies", "header-segment-lies", "file-cut"]
GOOD_REGIONS = [(0, 100, 256, 256), (3000, 2500, 300, 200), (3900, 4800, 100, 100)]


@pytest.fixture(scope="module")
def damaged_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ndpi-damaged")


def make_damaged(directory, name):
    with open(SAMPLE, "rb") as f:
        data, strip, bad, open_fails = _damage(f.read(), name)
    path = os.path.join(str(directory), "%s.ndpi" % name)
    with open(path, "wb") as f:
        f.write(data)
    return path, strip, bad, open_fails


def probe(path, reads, tmp):
    job = {"path": path, "reads": []}
    for i, (x, y, w, h) in enumerate(reads):
        job["reads"].append({"x": x, "y": y, "level": 0, "w": w, "h": h, "channels": 4,
                             "fill": FILL, "save": os.path.join(tmp, "r%d.npy" % i)})
    r = subprocess.run([PYTHON, PROBE, json.dumps(job)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, "the probe died (%d): %s" % (r.returncode, r.stderr[-3000:])
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_sample(sample, lib, damaged_dir, tmp_path, name):
    """A damaged McuStarts tag makes level 0 one strip again, with the same pixels; damage
    that only reading shows fails exactly the reads that need it, with a message naming the
    level and the interval, and the other regions still equal OpenSlide's read of the intact
    file. Nothing crashes."""
    path, strip, bad, open_fails = make_damaged(damaged_dir, name)
    good = [r for r in GOOD_REGIONS if not any(
        r[0] < b[0] + b[2] and b[0] < r[0] + r[2] and r[1] < b[1] + b[3] and b[1] < r[1] + r[3]
        for b in bad)]
    if name in ("sof-lies", "dri-lies", "header-segment-lies"):
        good = []  # level 0 cannot be decoded at all
    out = probe(path, bad + good, str(tmp_path))
    if open_fails:
        assert out["open"]["status"] != T.OK and out["open"]["message"], out["open"]
        return
    assert out["open"]["status"] == T.OK, out["open"]
    lv0 = out["levels"][0]
    assert (lv0["tile_height"] == lv0["height"]) == strip, lv0
    osl = R.openslide_open(sample)
    for (x, y, w, h), res in zip(bad, out["reads"][:len(bad)]):
        assert res["status"] in (T.E_CORRUPT, T.E_FORMAT), (name, (x, y, w, h), res)
        assert res["message"].startswith("level 0, "), res["message"]
        assert res.get("buffer_is_fill"), res
        if not strip:
            assert "restart interval" in res["message"], res["message"]
    for (x, y, w, h), res in zip(good, out["reads"][len(bad):]):
        assert res["status"] == T.OK, (name, (x, y, w, h), res)
        got = np.load(res["saved"])
        exp = R.openslide_region(osl, x, y, 0, w, h)
        m = R.describe_mismatch(got[..., :3], exp[..., :3], exp[..., 3] == 255,
                                "%s region %r" % (name, (x, y, w, h)), (x, y))
        assert m is None, m
    assert out["level_count"] == 7  # 4 stored, 3 decoded from the smallest at 1/2, 1/4, 1/8


SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error:")
CLIS = [("cli", None)]
if os.environ.get("TESSERA_CLI_ASAN"):
    CLIS.append(("asan", os.environ["TESSERA_CLI_ASAN"]))


@pytest.mark.parametrize("which", [w for w, _ in CLIS])
@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_sample_cli(sample, damaged_dir, tmp_path, which, name):
    """`tessera info` and `tessera read` on each damaged copy: exit 0, or 1 with one line on
    stderr naming the file; never a signal, a hang or a sanitizer report."""
    exe = dict(CLIS)[which] or F.cli_path()
    path, _, bad, open_fails = make_damaged(damaged_dir, name)
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:exitcode=99"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:exitcode=98:print_stacktrace=1"
    x, y, w, h = bad[0] if bad else GOOD_REGIONS[0]
    for args, want in [(["info", path], 1 if open_fails else 0),
                       (["read", path, "--location", "%d,%d" % (x, y), "--size", "%d,%d" % (w, h),
                         "--output", str(tmp_path / "out.png")],
                        1 if open_fails or bad else 0)]:
        try:
            r = subprocess.run([exe] + args, capture_output=True, text=True, timeout=60, env=env,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise AssertionError("tessera %s hung" % " ".join(args))
        desc = "tessera %s -> %d: %r" % (" ".join(args), r.returncode, r.stderr[-2000:])
        assert r.returncode >= 0, "killed by a signal: " + desc
        for marker in SANITIZER_MARKERS:
            assert marker not in r.stderr, desc
        assert r.returncode == want, desc
        if want:
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and os.path.basename(path) in lines[0], desc


# --- NDPI files written here ----------------------------------------------------------------

ENCODER_C = r"""
/* Raw samples on stdin -> a baseline JPEG on stdout, through libjpeg:
 * enc WIDTH HEIGHT COMPONENTS LUMA_H LUMA_V RESTART_INTERVAL QUALITY */
#include <stdio.h>
#include <stdlib.h>
#include <jpeglib.h>

int main(int argc, char **argv) {
  if (argc != 8)
    return 2;
  int w = atoi(argv[1]), h = atoi(argv[2]), nc = atoi(argv[3]);
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr e;
  c.err = jpeg_std_error(&e);
  jpeg_create_compress(&c);
  jpeg_stdio_dest(&c, stdout);
  c.image_width = (JDIMENSION)w;
  c.image_height = (JDIMENSION)h;
  c.input_components = nc;
  c.in_color_space = nc == 3 ? JCS_RGB : JCS_GRAYSCALE;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, atoi(argv[7]), TRUE);
  c.comp_info[0].h_samp_factor = atoi(argv[4]);
  c.comp_info[0].v_samp_factor = atoi(argv[5]);
  for (int i = 1; i < nc; i++)
    c.comp_info[i].h_samp_factor = c.comp_info[i].v_samp_factor = 1;
  c.restart_interval = (unsigned)atoi(argv[6]);
  jpeg_start_compress(&c, TRUE);
  JSAMPROW row = malloc((size_t)w * (size_t)nc);
  while (c.next_scanline < c.image_height) {
    if (fread(row, 1, (size_t)w * (size_t)nc, stdin) != (size_t)w * (size_t)nc)
      return 3;
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  return 0;
}
"""


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ndpi-encoder")
    src, exe = d / "enc.c", d / "enc"
    src.write_text(ENCODER_C)
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, "-O2", "-o", str(exe), str(src), "-ljpeg"], capture_output=True,
                       text=True)
    assert r.returncode == 0, "cannot build the JPEG writer: %s" % r.stderr
    return str(exe)


def picture(w, h, components, seed):
    """Smooth colour structure (so chroma subsampling matters) plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    g = 128 + 100 * np.sin((x + y) / 13.0)
    b = (x * 3 + y * 5) % 256
    a = np.stack([r, g, b], 2) + rng.integers(-20, 21, (h, w, 3))
    a = np.clip(a, 0, 255).astype(np.uint8)
    return a if components == 3 else a[..., 1].copy()


def encode(encoder, arr, hs, vs, interval, quality=90):
    h, w = arr.shape[:2]
    nc = 1 if arr.ndim == 2 else arr.shape[2]
    r = subprocess.run([encoder, str(w), str(h), str(nc), str(hs), str(vs), str(interval),
                        str(quality)], input=arr.tobytes(), capture_output=True, check=True)
    return r.stdout


def jpeg_segments(j):
    """(SOF position, DRI position or None, end of the header) of a JPEG."""
    pos, sof, dri = 2, None, None
    while True:
        assert j[pos] == 0xFF
        m = j[pos + 1]
        n = struct.unpack(">H", j[pos + 2:pos + 4])[0]
        if m in (0xC0, 0xC1):
            sof = pos
        if m == 0xDD:
            dri = pos
        pos += 2 + n
        if m == 0xDA:
            return sof, dri, pos


def restart_starts(j):
    """Offsets in the JPEG of each restart interval's first entropy-coded byte: what NDPI's
    McuStarts lists (the first one, right after the header, included)."""
    starts = [jpeg_segments(j)[2]]
    i, n = starts[0], len(j)
    while i < n - 1:
        if j[i] == 0xFF:
            m = j[i + 1]
            if 0xD0 <= m <= 0xD7:
                starts.append(i + 2)
            elif m == 0xD9:
                break
            i += 2
        else:
            i += 1
    return starts


def write_ndpi(path, levels):
    """A classic little-endian TIFF laid out as NDP.scan does: the strips, then per directory
    its values and entries with a 64-bit next-directory offset, and NDPI's tags (format flag,
    source lens, focal plane, McuStarts and optionally their high words). levels: dicts with
    jpeg, w, h, components, sub (YCbCr subsampling), lens, starts, high (or None)."""
    out = bytearray(b"II*\x00" + b"\x00" * 12)
    strips = []
    for lv in levels:
        strips.append(len(out))
        out += lv["jpeg"] + (b"\x00" if len(lv["jpeg"]) % 2 else b"")

    def arr(fmt, vals):
        return b"".join(struct.pack("<" + fmt, v) for v in vals)

    next_pos = 4
    for k, lv in enumerate(levels):
        nc = lv["components"]
        entries = [(256, 4, 1, arr("I", [lv["w"]])), (257, 4, 1, arr("I", [lv["h"]])),
                   (258, 3, nc, arr("H", [8] * nc)), (259, 3, 1, arr("H", [7])),
                   (262, 3, 1, arr("H", [6 if nc == 3 else 1])), (271, 2, 10, b"Hamamatsu\x00"),
                   (272, 2, 9, b"C9600-12\x00"),
                   (273, 4, 1, arr("I", [strips[k]])), (277, 3, 1, arr("H", [nc])),
                   (278, 4, 1, arr("I", [lv["h"]])), (279, 4, 1, arr("I", [len(lv["jpeg"])])),
                   (282, 5, 1, arr("I", [40000 >> k, 1])), (283, 5, 1, arr("I", [40000 >> k, 1])),
                   (296, 3, 1, arr("H", [3])), (305, 2, 16, b"NDP.scan 2.5.89\x00"),
                   (65420, 3, 1, arr("H", [1])), (65421, 11, 1, arr("f", [lv["lens"]])),
                   (65424, 9, 1, arr("i", [0]))]
        if nc == 3:
            entries.append((530, 3, 2, arr("H", lv["sub"])))
        if lv["starts"] is not None:
            entries.append((MCU_STARTS, 4, len(lv["starts"]), arr("I", lv["starts"])))
        if lv["high"] is not None:
            entries.append((MCU_STARTS_HIGH, 4, len(lv["high"]), arr("I", lv["high"])))
        entries.sort(key=lambda e: e[0])
        places = []
        for e in entries:
            if len(e[3]) > 4:
                places.append(len(out))
                out += e[3] + (b"\x00" if len(e[3]) % 2 else b"")
            else:
                places.append(None)
        out[next_pos:next_pos + 4] = struct.pack("<I", len(out))
        out += struct.pack("<H", len(entries))
        for (tag, typ, count, value), place in zip(entries, places):
            inline = value if place is None else struct.pack("<I", place)
            out += struct.pack("<HHI", tag, typ, count) + inline.ljust(4, b"\x00")
        next_pos = len(out)
        out += b"\x00" * 8
    with open(path, "wb") as f:
        f.write(out)


# name -> levels of (width, height, components, luma h, luma v sampling, restart interval)
SYNTH = {
    # 4:2:2, eight intervals of 8 MCUs (128 px) per row: chroma at tile edges
    "c422": [(1024, 768, 3, 2, 1, 8), (512, 384, 3, 2, 1, 4)],
    # 4:4:4, 1002 x 770: a last column of tiles 162 px wide and a last row 2 px high
    "c444-partial": [(1002, 770, 3, 1, 1, 21), (501, 385, 3, 1, 1, 21)],
    # 4:2:0, 80 x 16 tiles: OpenSlide 3.4.1 fails on these ("found marker 0xd9 instead of RST0")
    "c420": [(640, 480, 3, 2, 2, 5), (320, 240, 3, 2, 2, 5)],
    # one component, 64 x 8 tiles, partial last column and row
    "gray": [(700, 500, 1, 1, 1, 8)],
    # McuStarts with high words (zero): read as intervals
    "c444-high": [(512, 384, 3, 1, 1, 8)],
    # high words of the wrong count, or one that puts an interval past the file: one strip
    "c444-high-count": [(512, 384, 3, 1, 1, 8)],
    "c444-high-outside": [(512, 384, 3, 1, 1, 8)],
}
OPENSLIDE_READS = {"c422", "c444-high"}


class Synth:
    def __init__(self, name, path, levels):
        self.name, self.path, self.levels = name, path, levels


@pytest.fixture(scope="module")
def synth(encoder, tmp_path_factory):
    d = tmp_path_factory.mktemp("ndpi-synth")
    made = {}

    def make(name):
        if name in made:
            return made[name]
        levels = []
        for k, (w, h, nc, hs, vs, interval) in enumerate(SYNTH[name]):
            img = picture(w, h, nc, k + 7)
            j = encode(encoder, img, hs, vs, interval)
            starts = restart_starts(j)
            high = None
            if name.startswith("c444-high"):
                high = [0] * len(starts)
                if name == "c444-high-count":
                    high = high[:-1]
                elif name == "c444-high-outside":
                    high[len(starts) // 2] = 1
            mcu_w, mcu_h = (8 * hs, 8 * vs) if nc == 3 else (8, 8)
            levels.append({"jpeg": j, "w": w, "h": h, "components": nc, "sub": (hs, vs),
                           "lens": 40.0 / (1 << k), "starts": starts, "high": high,
                           "tile": (mcu_w * interval, mcu_h)})
        path = os.path.join(str(d), name + ".ndpi")
        write_ndpi(path, levels)
        made[name] = Synth(name, path, levels)
        return made[name]

    return make


def decode_whole(j):
    img = Image.open(io.BytesIO(j))
    return np.asarray(img.convert("RGB" if img.mode != "L" else "L"))


def decode_by_interval(lv):
    """The level as tessera reads it, built independently: each interval decoded by Pillow
    as a JPEG of its own (the strip's header, the SOF's size made the tile's, the interval's
    entropy-coded bytes, EOI) and put in its place."""
    j, starts = lv["jpeg"], lv["starts"]
    sof, _, end = jpeg_segments(j)
    tw, th = lv["tile"]
    W, H = lv["w"], lv["h"]
    across = -(-W // tw)
    out = np.zeros((H, W, 3 if lv["components"] == 3 else 1), np.uint8)
    for i, s in enumerate(starts):
        e = starts[i + 1] - 2 if i + 1 < len(starts) else len(j) - 2
        x, y = (i % across) * tw, (i // across) * th
        w, h = min(tw, W - x), min(th, H - y)
        head = bytearray(j[:end])
        head[sof + 5:sof + 9] = struct.pack(">HH", h, w)
        tile = decode_whole(bytes(head) + j[s:e] + b"\xff\xd9")
        out[y:y + h, x:x + w] = tile.reshape(h, w, -1)
    return out


def check_against(ts, level, ref, what, mask=None):
    """Whole level and regions of tessera equal ref (an (H, W, bands) array) where mask."""
    info = ts.level_info(level)
    H, W = ref.shape[:2]
    assert (info.width, info.height) == (W, H)
    fails = []
    for lx, ly, w, h, label in regions(W, H, info.tile_width, info.tile_height, 300 + level):
        ds = info.downsample  # a level-0 location whose level origin is (lx, ly)
        got = ts.read_region(math.ceil(lx * ds), math.ceil(ly * ds), level, w, h, channels=4,
                             fill=FILL)
        exp, inside = R.crop_fill(ref, lx, ly, w, h, FILL)
        m_in = inside if mask is None else inside & R.crop_fill(mask[..., None], lx, ly, w, h,
                                                                 0)[0][..., 0].astype(bool)
        m = R.describe_mismatch(got[..., :3], R.to_rgb(exp), m_in, "%s %s" % (what, label),
                                (lx, ly))
        if m:
            fails.append(m)
        if (got[..., 3] != np.where(inside, 255, 0)).any():
            fails.append("%s %s: alpha" % (what, label))
    assert not fails, "\n".join(fails[:10])


@pytest.mark.parametrize("name", sorted(OPENSLIDE_READS))
def test_synthetic_vs_openslide(synth, lib, name):
    """Files OpenSlide 3.4.1 reads: tessera's grid is OpenSlide's, and every level whole and
    in regions equals OpenSlide's reads (4:2:2 tiles have their chroma upsampled at the tile
    edges in both) and the per-interval decode. The levels are OpenSlide's: the stored ones and
    those it decodes from them at 1/2, 1/4 and 1/8, which equal OpenSlide's too."""
    s = synth(name)
    ts = T.open_slide(s.path)
    osl = R.openslide_open(s.path)
    assert ts.vendor == "hamamatsu"
    dims = [(ts.level_info(k).width, ts.level_info(k).height) for k in range(ts.level_count)]
    assert dims == [tuple(d) for d in osl.level_dimensions]
    stored = [(lv["w"], lv["h"]) for lv in s.levels]
    for k in range(ts.level_count):
        if dims[k] not in stored:
            m = check_vs_openslide(ts, osl, k, 0, 0, *dims[k], "%s level %d (scaled) whole" % (
                name, k))
            assert m is None, m
            check_regions(ts, osl, k, 400 + k)
    for lv in s.levels:
        k = dims.index((lv["w"], lv["h"]))
        info = ts.level_info(k)
        assert (info.tile_width, info.tile_height) == lv["tile"], (k, info.as_dict())
        ok, _ = os_level(osl, (lv["w"], lv["h"]))
        if lv["w"] % lv["tile"][0] == 0 and lv["h"] % lv["tile"][1] == 0:
            assert (int(osl.properties["openslide.level[%d].tile-width" % ok]),
                    int(osl.properties["openslide.level[%d].tile-height" % ok])) == lv["tile"]
        m = check_vs_openslide(ts, osl, k, 0, 0, lv["w"], lv["h"], "%s level %d whole" % (name, k),
                               num_workers=3)
        assert m is None, m
        check_regions(ts, osl, k, 200 + k)
        check_against(ts, k, decode_by_interval(lv), "%s level %d" % (name, k))
    ts.close()


def test_synthetic_422_differs_from_a_whole_decode(synth, lib):
    """The 4:2:2 file really tests tile edges: decoding its JPEG whole gives other chroma in
    the columns at the tile edges (and the same everywhere else)."""
    lv = synth("c422").levels[0]
    whole, tiles = decode_whole(lv["jpeg"]), decode_by_interval(lv)
    differ = (whole != tiles).any(2)
    tw = lv["tile"][0]
    edge = np.zeros(lv["w"], bool)
    edge[0::tw] = edge[tw - 1::tw] = True
    assert differ.any()
    assert not differ[:, ~edge].any()


def test_synthetic_partial_tiles(synth, lib):
    """Sizes that are not whole intervals: the last column and row of tiles are partial, and
    read right (4:4:4, so every pixel equals a whole decode of the JPEG). OpenSlide 3.4.1 is no
    reference here: it counts only whole tiles per row (width / tile width), so it takes the
    intervals of later rows for earlier ones and leaves the partial ones transparent."""
    s = synth("c444-partial")
    ts = T.open_slide(s.path)
    for k, lv in enumerate(s.levels):
        info = ts.level_info(k)
        assert info.width % info.tile_width and info.height % info.tile_height
        check_against(ts, k, decode_whole(lv["jpeg"]), "c444-partial level %d" % k)
    ts.close()


def decode_by_interval_scaled(lv, k):
    """The stored level lv decoded at 1/k as tessera reads a level OpenSlide makes of it,
    built independently: each interval decoded by Pillow's JPEG draft mode (libjpeg's scaled
    IDCT) as a JPEG of its own at its stored size, put at its place divided by k, and the
    level cut to the stored size divided by k, rounded down (OpenSlide's size)."""
    j, starts = lv["jpeg"], lv["starts"]
    sof, _, end = jpeg_segments(j)
    tw, th = lv["tile"]
    W, H = lv["w"], lv["h"]
    across = -(-W // tw)
    bands = 3 if lv["components"] == 3 else 1
    out = np.zeros((-(-H // th) * th // k, across * tw // k, bands), np.uint8)
    for i, s in enumerate(starts):
        e = starts[i + 1] - 2 if i + 1 < len(starts) else len(j) - 2
        x, y = (i % across) * tw, (i // across) * th
        w, h = min(tw, W - x), min(th, H - y)
        if w < k or h < k:  # its scaled pixels lie past the level's rounded-down size
            continue
        head = bytearray(j[:end])
        head[sof + 5:sof + 9] = struct.pack(">HH", h, w)
        img = Image.open(io.BytesIO(bytes(head) + j[s:e] + b"\xff\xd9"))
        img.draft(img.mode, (w // k, h // k))  # Pillow scales by the largest 1/2^n it can
        assert img.size == (-(-w // k), -(-h // k)), (img.size, w, h, k)
        tile = np.asarray(img.convert("RGB" if bands == 3 else "L")).reshape(
            img.size[1], img.size[0], bands)
        out[y // k:y // k + tile.shape[0], x // k:x // k + tile.shape[1]] = tile
    return out[:H // k, :W // k]


def test_synthetic_partial_tiles_scaled_levels(synth, lib):
    """Levels whose size is not whole intervals get OpenSlide's levels decoded at 1/2, 1/4 and
    1/8 too (OpenSlide asks only that the scale divide the interval's size): the same sizes as
    OpenSlide 3.4.1's, and pixels equal to each interval decoded at the scale by Pillow (not to
    OpenSlide's, which misplaces partial intervals: see test_synthetic_partial_tiles), its
    partial last column and row included."""
    s = synth("c444-partial")
    ts = T.open_slide(s.path)
    osl = R.openslide_open(s.path)
    dims = [(ts.level_info(k).width, ts.level_info(k).height) for k in range(ts.level_count)]
    assert dims == [tuple(d) for d in osl.level_dimensions]
    stored = [(lv["w"], lv["h"]) for lv in s.levels]
    scaled = [d for d in dims if d not in stored]
    assert len(scaled) >= 3, dims
    for k, d in enumerate(dims):
        if d in stored:
            continue
        # the stored level it comes from: the smallest one it divides to
        lv, scale = next((lv, f) for lv in reversed(s.levels) for f in (2, 4, 8)
                         if (lv["w"] // f, lv["h"] // f) == d)
        ref = decode_by_interval_scaled(lv, scale)
        assert ts.level_info(k).tile_width == lv["tile"][0] // scale
        check_against(ts, k, ref, "c444-partial level %d (1/%d of %dx%d)" % (
            k, scale, lv["w"], lv["h"]))
    ts.close()


def test_synthetic_420(synth, lib):
    """4:2:0: each interval is decoded as an image of its own (there is no OpenSlide reference:
    3.4.1 fails on such files), so the chroma of each tile's outer rows and columns is
    upsampled as at an image edge; every other pixel equals a whole decode of the JPEG."""
    s = synth("c420")
    ts = T.open_slide(s.path)
    for k, lv in enumerate(s.levels):
        check_against(ts, k, decode_by_interval(lv), "c420 level %d" % k)
        tw, th = lv["tile"]
        yy, xx = np.mgrid[0:lv["h"], 0:lv["w"]]
        interior = ((yy % th != 0) & (yy % th != th - 1) & (xx % tw != 0) & (xx % tw != tw - 1))
        check_against(ts, k, decode_whole(lv["jpeg"]), "c420 level %d interior" % k, interior)
    ts.close()


def test_synthetic_gray(synth, lib):
    s = synth("gray")
    ts = T.open_slide(s.path)
    info = ts.level_info(0)
    assert (info.tile_width, info.tile_height) == (64, 8)
    check_against(ts, 0, decode_whole(s.levels[0]["jpeg"])[..., None], "gray")
    ts.close()


@pytest.mark.parametrize("name,tiled", [("c444-high", True), ("c444-high-count", False),
                                        ("c444-high-outside", False)])
def test_synthetic_high_words(synth, lib, name, tiled):
    """McuStarts' high words (tag 65432) are used; high words of the wrong count, or ones that
    put an interval past the strip, make the level one strip: same pixels."""
    s = synth(name)
    ts = T.open_slide(s.path)
    info = ts.level_info(0)
    assert (info.tile_height < info.height) == tiled, info.as_dict()
    check_against(ts, 0, decode_whole(s.levels[0]["jpeg"]), name)
    ts.close()


def test_synthetic_without_mcu_starts(synth, lib, tmp_path):
    """An NDPI level without McuStarts is one strip, decoded whole."""
    s = synth("c444-partial")
    levels = [dict(lv, starts=None) for lv in s.levels]
    path = str(tmp_path / "no-starts.ndpi")
    write_ndpi(path, levels)
    ts = T.open_slide(path)
    for k, lv in enumerate(levels):
        info = ts.level_info(k)
        assert (info.tile_width, info.tile_height) == (lv["w"], lv["h"])
        check_against(ts, k, decode_whole(lv["jpeg"]), "no McuStarts level %d" % k)
    ts.close()
