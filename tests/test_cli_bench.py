"""`tessera bench`: its checksum (the sum of every R, G and B byte of every patch) equals the
same sum over the same patches read by OpenSlide (or libvips where OpenSlide's downsample
differs), for a locations file and for the grid, random and sliding layouts, at level 0 and 1;
the checksum does not depend on the workers, batch size, prefetch, shuffling or channels; the
JSON report is one object with the results and the parameters; wrong command lines exit 2 and
bad files exit 1 with one line on stderr; a damaged tile stops the run naming the tile.
Through a tile cache (per process, or one shared-memory segment for all the processes) the
checksum stays the same, distinct_tiles equals the tiles the patches touch counted here, and a
cache with room for them all misses each exactly once, however many processes share it; the
shared segment is gone when the command ends.

The layouts are written again here, in Python, from their description in `tessera bench --help`
(and the splitmix64 generator of Steele, Lea and Flood), so their checksums can be compared
with OpenSlide's pixels at the positions this file computes.
"""

import glob
import json
import os
import re
import resource
import shutil
import subprocess
import threading

import numpy as np
import pytest

import tiffbytes as tb
import wsi_fixtures as F
import wsi_refs as R

TIMEOUT = 60
GENERIC = "jpeg-t256-pyr"      # generic TIFF, JPEG 256 x 256 tiles, 2048 x 1536, ds 1, 2, 4, 8
ODD = "odd-jpeg-pyr"           # 1001 x 777: level 1 has a downsample that is not a whole number
APERIO = "aperio-jpeg-CMU-1-Small-Region.svs"   # background 255
M64 = (1 << 64) - 1


# --- running the command ------------------------------------------------------------------

def run(cli, args, timeout=TIMEOUT):
    try:
        return subprocess.run([cli] + [str(a) for a in args], capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError("tessera %s hung" % " ".join(map(str, args)))


def describe(args, r):
    return "tessera %s -> exit %d, stdout %r, stderr %r" % (
        " ".join(map(str, args)), r.returncode, r.stdout.decode(errors="replace")[-1500:],
        r.stderr.decode(errors="replace")[-1500:])


def bench(cli, path, *args):
    """Runs `tessera bench PATH ARGS --json`; the parsed report. It must succeed and say
    nothing on stderr (which is a pipe here, so there is no progress either)."""
    full = ["bench", path] + [str(a) for a in args] + ["--json"]
    r = run(cli, full)
    assert r.returncode == 0, describe(full, r)
    assert r.stderr == b"", describe(full, r)
    doc = json.loads(r.stdout.decode("utf-8"))
    assert isinstance(doc, dict), describe(full, r)
    return doc


def checksum(cli, path, *args):
    doc = bench(cli, path, *args)
    c = doc["checksum"]
    assert isinstance(c, int) and not isinstance(c, bool), doc
    return c, doc["patches"]


def write_locations(path, xy, style=0):
    """One 'x y' line per location; style 1 adds commas, comments and blank lines."""
    with open(path, "w") as f:
        if style:
            f.write("# level-0 corners\n\n")
        for i, (x, y) in enumerate(xy):
            if style and i % 3 == 1:
                f.write("  %d , %d   # patch %d\n" % (x, y, i))
            elif style and i % 3 == 2:
                f.write("%d,%d\r\n\n" % (x, y))
            else:
                f.write("%d %d\n" % (x, y))
    return str(path)


# --- reference sums -----------------------------------------------------------------------

class LevelSums:
    """The RGB byte sum of any rectangle of one decoded level, through a summed-area table;
    0 outside the level (the generic-TIFF fill, and OpenSlide's transparent black)."""

    def __init__(self, rgb):
        self.h, self.w = rgb.shape[:2]
        s = rgb[..., :3].astype(np.int64).sum(axis=2)
        self.sat = np.zeros((self.h + 1, self.w + 1), np.int64)
        self.sat[1:, 1:] = s.cumsum(0).cumsum(1)

    def rect(self, lx, ly, w, h):
        x0, y0 = min(max(lx, 0), self.w), min(max(ly, 0), self.h)
        x1, y1 = min(max(lx + w, 0), self.w), min(max(ly + h, 0), self.h)
        if x1 <= x0 or y1 <= y0:
            return 0
        t = self.sat
        return int(t[y1, x1] - t[y0, x1] - t[y1, x0] + t[y0, x0])

    def total(self, positions, w, h):
        return sum(self.rect(lx, ly, w, h) for lx, ly in positions)


_SUMS = {}


def openslide_level(path, level):
    """LevelSums of a whole level as OpenSlide reads it (every pixel must be opaque)."""
    key = ("openslide", path, level)
    if key not in _SUMS:
        osl = R.openslide_open(path)
        W, H = osl.level_dimensions[level]
        a = R.openslide_region(osl, 0, 0, level, W, H)
        assert (a[..., 3] == 255).all(), "OpenSlide left pixels inside level %d transparent" % level
        _SUMS[key] = LevelSums(a)
    return _SUMS[key]


def vips_level(path, spec, level):
    key = ("vips", path, level)
    if key not in _SUMS:
        _SUMS[key] = LevelSums(R.to_rgb(R.vips_decode(path, spec.vips_load_args(level))))
    return _SUMS[key]


def openslide_patch_sum(path, x, y, level, w, h, fill=0):
    """The RGB sum of one patch read by OpenSlide itself, with `fill` in each channel of the
    pixels outside the image (where OpenSlide gives (0, 0, 0, 0); inside, alpha is 255)."""
    osl = R.openslide_open(path)
    o = R.openslide_region(osl, x, y, level, w, h)
    ds = int(round(osl.level_downsamples[level]))
    W, H = osl.level_dimensions[level]
    _, inside = R.crop_fill(np.zeros((H, W, 1), np.uint8), x // ds, y // ds, w, h, 0)
    assert (o[..., 3][inside] == 255).all() and (o[..., :4][~inside] == 0).all(), (x, y, level)
    return int(o[..., :3].astype(np.int64).sum()) + 3 * fill * int((~inside).sum())


# --- the layouts, written again from their description ------------------------------------

def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def uniform_below(state, n):
    """Uniform in [0, n) without modulo bias: draws below 2^64 mod n are rejected."""
    threshold = (1 << 64) % n
    while True:
        state, r = splitmix64(state)
        if r >= threshold:
            return state, r % n


def random_layout(W, H, w, h, count, seed):
    """Level positions of the random layout: x then y of each patch from one generator."""
    state, out = seed & M64, []
    for _ in range(count):
        state, lx = uniform_below(state, W - w + 1)
        state, ly = uniform_below(state, H - h + 1)
        out.append((lx, ly))
    return out


def window_layout(W, H, w, h, sx, sy, count=None):
    """Row after row of windows every (sx, sy) pixels that fit wholly in the level."""
    out = [(x, y) for y in range(0, H - h + 1, sy) for x in range(0, W - w + 1, sx)]
    return out if count is None else out[:count]


# --- checksums against OpenSlide ----------------------------------------------------------

def test_locations_file_equals_openslide(cli, slides, tmp_path):
    """Patches inside, across the edges and wholly outside a generic TIFF (fill 0, like
    OpenSlide's transparent black), at level 0 and level 1, each read by OpenSlide."""
    path = slides.path(GENERIC)
    W, H = 2048, 1536
    cases = {
        0: (77, 53, [(0, 0), (1000, 700), (129, 257), (-30, -20), (W - 40, 10), (5, H - 9),
                     (W - 3, H - 2), (-77, 400), (W + 10, 5), (-200, -200), (1971, 1483),
                     (513, 1024)]),
        1: (61, 45, [(0, 0), (600, 410), (-40, -30), (2 * 1024 - 50, 100), (300, 2 * 768 - 20),
                     (2 * 1024, 2 * 768), (-200, 900), (1234, 888)]),
    }
    for level, (w, h, xy) in cases.items():
        # the comma, comment and blank-line forms must give the same list as the plain one
        plain = write_locations(tmp_path / ("plain%d.txt" % level), xy)
        fancy = write_locations(tmp_path / ("fancy%d.txt" % level), xy, style=1)
        expected = sum(openslide_patch_sum(path, x, y, level, w, h) for x, y in xy)
        assert expected > 0
        for f in (plain, fancy):
            got, n = checksum(cli, path, "--locations", f, "--size", "%d,%d" % (w, h),
                              "--level", level, "--workers", 2)
            assert n == len(xy), (f, n, len(xy))
            assert got == expected, "level %d %s: tessera %d, OpenSlide %d" % (
                level, os.path.basename(f), got, expected)


@pytest.mark.parametrize("level,size", [(0, (96, 80)), (1, (61, 47))])
def test_grid_equals_openslide(cli, slides, level, size):
    path = slides.path(GENERIC)
    osl = R.openslide_open(path)
    W, H = osl.level_dimensions[level]
    w, h = size
    pos = window_layout(W, H, w, h, w, h)
    ref = openslide_level(path, level)
    got, n = checksum(cli, path, "--layout", "grid", "--size", "%d,%d" % size, "--level", level)
    assert n == len(pos) == (W // w) * (H // h), (n, len(pos))
    assert got == ref.total(pos, w, h)
    # --count takes the first patches, row by row
    got, n = checksum(cli, path, "--layout", "grid", "--size", "%d,%d" % size, "--level", level,
                      "--count", 25)
    assert n == 25 and got == ref.total(pos[:25], w, h)


@pytest.mark.parametrize("level,size,stride", [(0, (128, 96), "64"), (1, (100, 70), "64"),
                                               (1, (100, 70), "64,30"), (0, (90, 60), None)])
def test_sliding_equals_openslide(cli, slides, level, size, stride):
    path = slides.path(GENERIC)
    osl = R.openslide_open(path)
    W, H = osl.level_dimensions[level]
    w, h = size
    if stride is None:
        sx, sy = w // 2, h // 2          # the default: half the patch
        extra = []
    else:
        parts = [int(s) for s in stride.split(",")]
        sx, sy = parts[0], parts[-1]
        extra = ["--stride", stride]
    pos = window_layout(W, H, w, h, sx, sy)
    got, n = checksum(cli, path, "--layout", "sliding", "--size", "%d,%d" % size,
                      "--level", level, *extra)
    assert n == len(pos), (n, len(pos))
    assert got == openslide_level(path, level).total(pos, w, h)


@pytest.mark.parametrize("level,size", [(0, (100, 80)), (1, (64, 77))])
def test_random_equals_openslide(cli, slides, tmp_path, level, size):
    path = slides.path(GENERIC)
    osl = R.openslide_open(path)
    W, H = osl.level_dimensions[level]
    ds = int(round(osl.level_downsamples[level]))
    w, h = size
    args = ["--layout", "random", "--size", "%d,%d" % size, "--level", level, "--count", 50]
    pos = random_layout(W, H, w, h, 50, 3)
    assert all(0 <= x <= W - w and 0 <= y <= H - h for x, y in pos)
    expected = openslide_level(path, level).total(pos, w, h)
    got, n = checksum(cli, path, *args, "--seed", 3)
    assert n == 50 and got == expected, (got, expected)
    # the same corners given as a file give the same sum
    loc = write_locations(tmp_path / "random.txt", [(x * ds, y * ds) for x, y in pos])
    assert checksum(cli, path, "--locations", loc, "--size", "%d,%d" % size,
                    "--level", level)[0] == expected
    # the same seed again gives the same patches; other seeds other ones
    assert checksum(cli, path, *args, "--seed", 3)[0] == expected
    for seed in (4, 1 << 40):
        other = openslide_level(path, level).total(random_layout(W, H, w, h, 50, seed), w, h)
        assert other != expected
        assert checksum(cli, path, *args, "--seed", seed)[0] == other, seed


def test_aperio_level0_equals_openslide(cli, slides, tmp_path):
    """A real Aperio slide (background 255, so only patches inside it)."""
    path = slides.path(APERIO)
    osl = R.openslide_open(path)
    W, H = osl.level_dimensions[0]
    ref = openslide_level(path, 0)
    w, h = 200, 150
    grid = window_layout(W, H, w, h, w, h)
    got, n = checksum(cli, path, "--layout", "grid", "--size", "200,150")
    assert n == len(grid) and got == ref.total(grid, w, h)
    slide = window_layout(W, H, w, h, 64, 64)
    got, n = checksum(cli, path, "--layout", "sliding", "--stride", 64, "--size", "200,150")
    assert n == len(slide) and got == ref.total(slide, w, h)
    rnd = random_layout(W, H, w, h, 50, 3)
    got, n = checksum(cli, path, "--layout", "random", "--seed", 3, "--count", 50,
                      "--size", "200,150")
    assert n == 50 and got == ref.total(rnd, w, h)
    # a file of corners inside the slide, summed patch by patch through OpenSlide
    xy = [(0, 0), (W - w, H - h), (777, 1234), (1, 2801), (2019, 5)]
    loc = write_locations(tmp_path / "aperio.txt", xy)
    expected = sum(openslide_patch_sum(path, x, y, 0, w, h) for x, y in xy)
    assert checksum(cli, path, "--locations", loc, "--size", "200,150")[0] == expected
    # across the edges the fill is the slide's background, 255 (OpenSlide: transparent)
    xy = [(-50, 100), (1, 2901), (W - 20, H - 30), (W + 5, 7)]
    loc = write_locations(tmp_path / "aperio-edges.txt", xy)
    expected = sum(openslide_patch_sum(path, x, y, 0, w, h, fill=255) for x, y in xy)
    assert checksum(cli, path, "--locations", loc, "--size", "200,150")[0] == expected


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("layout", ["grid", "random", "sliding"])
def test_layouts_on_fractional_downsample_equal_libvips(cli, slides, layout, level):
    """Levels 1 and 2 of a 1001 x 777 pyramid (downsamples about 2.0023 and 4.0046, which
    OpenSlide computes otherwise): every layout position, mapped to level 0 and back by
    tessera, must land on the level pixel the layout names. Reference pixels from libvips."""
    spec = F.SPECS[ODD]
    path = slides.path(ODD)
    ref = vips_level(path, spec, level)
    W, H = ref.w, ref.h
    assert abs(R.downsample((1001, 777), (W, H)) - 2 ** level) > 1e-3, (W, H)
    w, h = 33, 29
    if layout == "grid":
        pos, extra = window_layout(W, H, w, h, w, h), []
    elif layout == "sliding":
        pos, extra = window_layout(W, H, w, h, 7, 5), ["--stride", "7,5"]
    else:
        pos, extra = random_layout(W, H, w, h, 300, 11), ["--count", 300, "--seed", 11]
    got, n = checksum(cli, path, "--layout", layout, "--level", level, "--size", "%d,%d" % (w, h),
                      *extra)
    assert n == len(pos)
    assert got == ref.total(pos, w, h)


# --- the checksum does not depend on how the patches are read -----------------------------

READ_OPTIONS = [
    ["--workers", 0], ["--workers", 1], ["--workers", 3],
    ["--batch-size", 1], ["--batch-size", 7], ["--batch-size", 64],
    ["--prefetch", 1], ["--prefetch", 4],
    ["--shuffle"], ["--shuffle", "--seed", 1], ["--shuffle", "--seed", 987654321],
    ["--channels", 4], ["--channels", 3],
    ["--workers", 0, "--batch-size", 7, "--channels", 4, "--shuffle", "--seed", 5],
    ["--workers", 3, "--batch-size", 1, "--prefetch", 4, "--channels", 4],
    ["--workers", 3, "--batch-size", 64, "--prefetch", 1, "--shuffle", "--seed", 2],
]


@pytest.fixture(scope="module")
def mixed_locations(slides, tmp_path_factory):
    """A generic slide, 101 level-1 corners (inside, across the edges, outside) and the
    OpenSlide sum of their 37 x 23 patches (odd sizes leave partial blocks in the checksum)."""
    path = slides.path(GENERIC)
    osl = R.openslide_open(path)
    W, H = osl.level_dimensions[1]
    rng = np.random.default_rng(17)
    pos = [(int(x), int(y)) for x, y in zip(rng.integers(-40, W + 10, 101),
                                             rng.integers(-30, H + 10, 101))]
    loc = write_locations(tmp_path_factory.mktemp("loc") / "mixed.txt",
                          [(2 * x, 2 * y) for x, y in pos])
    return path, loc, openslide_level(path, 1).total(pos, 37, 23)


@pytest.mark.parametrize("opts", READ_OPTIONS, ids=lambda o: "_".join(map(str, o)))
def test_checksum_independent_of_read_options(cli, mixed_locations, opts):
    path, loc, expected = mixed_locations
    doc = bench(cli, path, "--locations", loc, "--size", "37,23", "--level", 1, *opts)
    assert doc["patches"] == 101
    assert doc["checksum"] == expected, (opts, doc["checksum"], expected)


def test_short_options(cli, mixed_locations):
    path, loc, expected = mixed_locations
    doc = bench(cli, path, "-i", loc, "-s", "37,23", "-L", 1, "-b", 5, "-w", 2, "-c", 4)
    assert (doc["checksum"], doc["batch_size"], doc["workers"], doc["channels"]) == (
        expected, 5, 2, 4)
    r = run(cli, ["bench", path, "--layout", "random", "-n", 9, "-s", "37,23", "-j"])
    assert r.returncode == 0 and json.loads(r.stdout)["patches"] == 9, describe([], r)


# --- the report ---------------------------------------------------------------------------

def test_json_report(cli, mixed_locations, tmp_path):
    path, loc, expected = mixed_locations
    args = ["bench", path, "--locations", loc, "--size", "37,23", "--level", 1, "--batch-size", 10,
            "--workers", 2, "--prefetch", 3, "--shuffle", "--seed", 9, "--channels", 4, "--json"]
    r = run(cli, args)
    assert r.returncode == 0 and r.stderr == b"", describe(args, r)
    text = r.stdout.decode("utf-8")
    doc = json.loads(text)           # exactly one JSON value: anything after it is an error
    assert isinstance(doc, dict) and text.strip().startswith("{"), text
    num = (int, float)
    for key in ("seconds", "patches_per_s", "megapixels_per_s", "peak_rss_mib"):
        assert isinstance(doc[key], num) and not isinstance(doc[key], bool), (key, doc[key])
        assert doc[key] >= 0, (key, doc[key])
    assert doc["peak_rss_mib"] > 0
    assert isinstance(doc["checksum"], int) and doc["checksum"] == expected
    assert isinstance(doc["patches"], int) and doc["patches"] == 101
    assert doc["batches"] == 11
    if doc["seconds"] > 0:
        assert abs(doc["patches_per_s"] - 101 / doc["seconds"]) <= 1e-6 * doc["patches_per_s"]
        assert abs(doc["megapixels_per_s"] - 101 * 37 * 23 / 1e6 / doc["seconds"]) <= (
            1e-6 * doc["megapixels_per_s"])
    params = {"slide": path, "level": 1, "level_size": [1024, 768], "size": [37, 23],
              "channels": 4, "batch_size": 10, "workers": 2, "prefetch": 3, "shuffle": True,
              "seed": 9, "layout": "file", "locations": loc, "stride": None, "count": 101}
    for k, v in params.items():
        assert k in doc, (k, sorted(doc))
        assert doc[k] == v and type(doc[k]) is type(v), (k, doc[k], v)
    # a layout names itself, its stride and its count
    doc = bench(cli, path, "--layout", "sliding", "--size", "100,70", "--stride", "64,30",
                "--count", 12)
    assert (doc["layout"], doc["locations"], doc["stride"], doc["count"], doc["patches"]) == (
        "sliding", None, [64, 30], 12, 12)
    assert (doc["shuffle"], doc["seed"], doc["channels"], doc["batch_size"]) == (False, 0, 3, 32)
    doc = bench(cli, path, "--layout", "sliding", "--size", "100,70")
    assert doc["stride"] == [50, 35]
    # names that need escaping come back as they were
    odd = str(tmp_path / 'a "quoted"\\ name\twith\x01 \u00e9.tif')
    os.symlink(path, odd)
    oloc = str(tmp_path / "loc\\\"s.txt")
    shutil.copy(loc, oloc)
    doc = bench(cli, odd, "--locations", oloc, "--size", "37,23", "--level", 1)
    assert (doc["slide"], doc["locations"], doc["checksum"]) == (odd, oloc, expected)
    # the text report gives the same numbers
    r = run(cli, args[:-1])
    assert r.returncode == 0 and r.stderr == b"", describe(args[:-1], r)
    out = r.stdout.decode()
    assert re.search(r"^checksum:\s+%d$" % expected, out, re.M), out
    assert re.search(r"^patches:\s+101$", out, re.M), out


def _run_on_pty(cli, args):
    """Runs with stderr on a terminal and stdout on a pipe: (exit status, stdout, stderr)."""
    import pty
    master, slave = pty.openpty()
    chunks = []

    def drain():
        while True:
            try:
                b = os.read(master, 4096)
            except OSError:
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        p = subprocess.run([cli] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=slave,
                           stdin=subprocess.DEVNULL, timeout=TIMEOUT)
    finally:
        os.close(slave)
    t.join(10)
    os.close(master)
    return p.returncode, p.stdout, b"".join(chunks)


def test_progress_only_on_a_terminal(cli, slides):
    """A run long enough to show progress on a terminal shows none on a pipe or with --json.
    The run is made longer until it lasts more than a second by its own report."""
    path = slides.path(GENERIC)
    count = 1000
    for _ in range(6):
        base = ["bench", path, "--layout", "random", "--count", count, "--size", "256,256",
                "--workers", 0, "--batch-size", 4]
        rc, out, err = _run_on_pty(cli, base)
        assert rc == 0, (rc, out, err)
        seconds = float(re.search(rb"^seconds:\s+([0-9.]+)$", out, re.M).group(1))
        if seconds > 1.0:
            break
        count *= 2
    assert seconds > 1.0, "could not make a run last a second"
    assert b"patches/s" in err and b"\r" in err, err[-500:]
    assert err.endswith(b"\r\x1b[K"), err[-200:]       # the line is cleared at the end
    r = run(cli, base)
    assert r.returncode == 0 and r.stderr == b"", describe(base, r)
    rc, out, err = _run_on_pty(cli, base + ["--json"])
    assert rc == 0 and err == b"", (rc, err[-500:])
    assert json.loads(out)["patches"] == count


# --- errors -------------------------------------------------------------------------------

def _error_cases(slide, tmp):
    bad = os.path.join(tmp, "bad.txt")
    with open(bad, "w") as f:
        f.write("0 0\n# a comment\n\n10,20\n5 x\n7 7\n")
    loc = os.path.join(tmp, "loc.txt")
    with open(loc, "w") as f:
        f.write("0 0\n")
    empty = os.path.join(tmp, "empty.txt")
    open(empty, "w").close()
    missing = os.path.join(tmp, "nope.txt")
    grid = ["--layout", "grid", "--size", "8,8"]
    # name: (args, exit status, texts the one line must hold)
    return {
        "no-slide": (["bench"] + grid, 2, []),
        "missing-size": (["bench", slide, "--layout", "grid"], 2, ["--size"]),
        "no-locations-or-layout": (["bench", slide, "--size", "8,8"], 2, []),
        "locations-and-layout": (["bench", slide, "--locations", loc] + grid, 2,
                                 ["--locations", "--layout"]),
        "layout-unknown": (["bench", slide, "--layout", "diagonal", "--size", "8,8"], 2,
                           ["diagonal"]),
        "random-without-count": (["bench", slide, "--layout", "random", "--size", "8,8"], 2,
                                 ["--count"]),
        "stride-without-sliding": (["bench", slide, "--stride", "4"] + grid, 2, ["--stride"]),
        "count-with-locations": (["bench", slide, "--locations", loc, "--size", "8,8",
                                  "--count", "1"], 2, ["--count"]),
        "workers-negative": (["bench", slide, "--workers", "-1"] + grid, 2, ["--workers"]),
        "batch-size-zero": (["bench", slide, "--batch-size", "0"] + grid, 2, ["--batch-size"]),
        "prefetch-zero": (["bench", slide, "--prefetch", "0"] + grid, 2, ["--prefetch"]),
        "channels-2": (["bench", slide, "--channels", "2"] + grid, 2, ["--channels"]),
        "size-zero": (["bench", slide, "--layout", "grid", "--size", "0,8"], 2, ["--size"]),
        "size-one-number": (["bench", slide, "--layout", "grid", "--size", "8"], 2, ["--size"]),
        "level-negative": (["bench", slide, "--level", "-1"] + grid, 2, ["--level"]),
        "seed-text": (["bench", slide, "--seed", "x"] + grid, 2, ["--seed"]),
        "unknown-option": (["bench", slide, "--zoom", "2"] + grid, 2, ["--zoom"]),
        "option-without-value": (["bench", slide] + grid + ["--level"], 2, ["--level"]),
        "two-slides": (["bench", slide, slide] + grid, 2, []),
        "bad-locations-line": (["bench", slide, "--locations", bad, "--size", "8,8"], 1,
                               [bad, "line 5", "5 x"]),
        "missing-locations-file": (["bench", slide, "--locations", missing, "--size", "8,8"], 1,
                                   [missing]),
        "empty-locations-file": (["bench", slide, "--locations", empty, "--size", "8,8"], 1,
                                 [empty]),
        "missing-slide": (["bench", os.path.join(tmp, "nope.tif")] + grid, 1, ["nope.tif"]),
        "level-out-of-range": (["bench", slide, "--level", "4"] + grid, 1, ["level 4"]),
        "patch-larger-than-level": (["bench", slide, "--layout", "grid", "--size", "300,8",
                                     "--level", "3"], 1, []),
        "count-past-grid": (["bench", slide, "--layout", "grid", "--size", "256,256",
                             "--count", "49"], 1, ["49"]),
    }


ERROR_CASES = list(_error_cases("S", "/tmp"))


@pytest.mark.parametrize("which", ERROR_CASES)
def test_errors(cli, slides, tmp_path, which):
    slide = slides.path(GENERIC)
    args, status, texts = _error_cases(slide, str(tmp_path))[which]
    r = run(cli, args, timeout=30)
    err = r.stderr.decode(errors="replace")
    desc = describe(args, r)
    assert r.returncode == status, desc
    assert r.stdout == b"", desc
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tessera: "), "one line on stderr: " + desc
    for t in texts:
        assert t in lines[0], (t, desc)


BAD_LINES = ["1 2 3", "12-3", "5", "x 5", "5 x", "99999999999999999999 0", "1.5 2", "5,,3",
             "5 3,", "- 5 3", "0x10 4"]


@pytest.mark.parametrize("line", BAD_LINES)
def test_bad_locations_line(cli, slides, tmp_path, line):
    """The line is named by its number, counting blank and comment lines; nothing is read."""
    slide = slides.path(GENERIC)
    f = str(tmp_path / "loc.txt")
    with open(f, "w") as fh:
        fh.write("0 0\n\n# comment\n4,4\n%s\n8 8\n" % line)
    args = ["bench", slide, "--locations", f, "--size", "8,8"]
    r = run(cli, args)
    desc = describe(args, r)
    assert r.returncode == 1 and r.stdout == b"", desc
    lines = r.stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1 and f in lines[0] and re.search(r"\bline 5\b", lines[0]), desc


def _address_space_limit():
    """A safety net for the machine: a reader that grows without bound fails instead."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_locations_lines_are_bounded(cli, slides, tmp_path):
    """A line costs at most 4096 bytes: /dev/zero (one endless line, which used to grow the
    process until memory ran out) and a long line are refused, naming the file and the line;
    a NUL byte is no text; a line of exactly 4096 bytes is read."""
    slide = slides.path(GENERIC)
    long_line = str(tmp_path / "long.txt")
    with open(long_line, "w") as fh:
        fh.write("0 0\n4 4 #" + "x" * 5000 + "\n8 8\n")
    nul = str(tmp_path / "nul.txt")
    with open(nul, "wb") as fh:
        fh.write(b"0 0\n\n4 4\0 9\n")
    for f, line, what in (("/dev/zero", 1, "longer than 4096 bytes"),
                          (long_line, 2, "longer than 4096 bytes"),
                          (nul, 3, "NUL byte")):
        args = ["bench", slide, "--locations", f, "--size", "8,8"]
        try:
            r = subprocess.run([cli] + args, capture_output=True, timeout=TIMEOUT,
                               stdin=subprocess.DEVNULL, preexec_fn=_address_space_limit)
        except subprocess.TimeoutExpired:
            raise AssertionError("tessera %s hung" % " ".join(args)) from None
        desc = describe(args, r)
        assert r.returncode == 1 and r.stdout == b"", desc
        lines = r.stderr.decode(errors="replace").splitlines()
        assert len(lines) == 1 and lines[0].startswith("tessera: %s: line %d: " % (f, line)), desc
        assert what in lines[0], desc
    exact = tmp_path / "exact.txt"
    exact.write_text("5 7" + " " * 4093 + "\n")
    plain = write_locations(tmp_path / "plain.txt", [(5, 7)])
    assert checksum(cli, slide, "--locations", exact, "--size", "8,8") == checksum(
        cli, slide, "--locations", plain, "--size", "8,8")


def test_many_locations_cost_about_their_own_memory(cli, slides, tmp_path):
    """Two million valid lines are read, and the process grows by a few times the 16 bytes
    each location takes, not by the file's lines."""
    slide = slides.path(GENERIC)
    n = 2_000_000
    rng = np.random.default_rng(3)
    xy = rng.integers(-50, 2100, (n, 2))
    big = tmp_path / "big.txt"
    np.savetxt(big, xy, fmt="%d")
    small = write_locations(tmp_path / "small.txt", [(0, 0)])
    args = ("--size", "1,1", "--batch-size", "4096", "--workers", "1")
    few = bench(cli, slide, "--locations", small, *args)
    many = bench(cli, slide, "--locations", big, *args)
    assert many["patches"] == n, many
    grew = (many["peak_rss_mib"] - few["peak_rss_mib"]) * (1 << 20)
    assert grew < 4 * 16 * n, (few["peak_rss_mib"], many["peak_rss_mib"])


def test_locations_line_forms(cli, slides, tmp_path):
    """Signs, tabs, commas with blanks, comments after the pair and CRLF endings are one
    pair each, equal to the plain form."""
    slide = slides.path(GENERIC)
    forms = "+5 -3\n\t700\t9   \n 40 , 1200# x\n-16,+2\r\n   \n#only a comment\n1999 1500"
    f = tmp_path / "forms.txt"
    f.write_text(forms)
    xy = [(5, -3), (700, 9), (40, 1200), (-16, 2), (1999, 1500)]
    plain = write_locations(tmp_path / "plain.txt", xy)
    a = checksum(cli, slide, "--locations", f, "--size", "64,64")
    b = checksum(cli, slide, "--locations", plain, "--size", "64,64")
    expected = sum(openslide_patch_sum(slide, x, y, 0, 64, 64) for x, y in xy)
    assert a == b == (expected, 5), (a, b, expected)


def test_error_status_matches_read(cli, slides, tmp_path):
    """A level that does not exist and a slide that cannot be opened fail the same way as
    `tessera read` does; a bad option value the same way too."""
    slide = slides.path(GENERIC)
    out = tmp_path / "r.png"
    pairs = [
        (["read", slide, "--location", "0,0", "--size", "8,8", "--level", 4, "--output", out],
         ["bench", slide, "--layout", "grid", "--size", "8,8", "--level", 4]),
        (["read", tmp_path / "nope.tif", "--location", "0,0", "--size", "8,8", "--output", out],
         ["bench", tmp_path / "nope.tif", "--layout", "grid", "--size", "8,8"]),
        (["read", slide, "--location", "0,0", "--size", "0,8", "--output", out],
         ["bench", slide, "--layout", "grid", "--size", "0,8"]),
    ]
    for read_args, bench_args in pairs:
        a, b = run(cli, read_args), run(cli, bench_args)
        assert a.returncode != 0 and a.returncode == b.returncode, (describe(read_args, a),
                                                                     describe(bench_args, b))
    assert not out.exists()


def test_help(cli):
    for args in (["bench", "--help"], ["bench", "-h"], ["help", "bench"]):
        r = run(cli, args)
        assert r.returncode == 0 and r.stderr == b"", describe(args, r)
        text = r.stdout.decode()
        assert text.startswith("Usage: tessera bench"), text[:200]
        for opt in ("--locations", "--layout", "--count", "--stride", "--size", "--level",
                    "--batch-size", "--workers", "--prefetch", "--shuffle", "--seed",
                    "--channels", "--cache", "--processes", "--json", "--help", "grid",
                    "random", "sliding", "per_process", "shared_memory", "distinct_tiles",
                    "tessera cache remove"):
            assert opt in text, (opt, args)
        for short, long_ in (("-i", "--locations"), ("-n", "--count"), ("-s", "--size"),
                             ("-L", "--level"), ("-b", "--batch-size"), ("-w", "--workers"),
                             ("-c", "--channels"), ("-j", "--json"), ("-h", "--help")):
            assert re.search(r"%s, %s\b" % (re.escape(short), re.escape(long_)), text), short
    # every long option the help names is one the command knows
    text = run(cli, ["bench", "--help"]).stdout.decode()
    for opt in sorted(set(re.findall(r"(--[a-z][a-z-]*)", text))):
        r = run(cli, ["bench", "x", opt])
        assert b"unknown option" not in r.stderr, (opt, r.stderr)


# --- a damaged tile -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def damaged(slides, tmp_path_factory):
    """A copy of the generic JPEG slide with the first 16 bytes of level-0 tiles 9 and 30
    (of 8 x 6) zeroed."""
    src = slides.path(GENERIC)
    out = str(tmp_path_factory.mktemp("damaged") / "damaged.tif")
    with open(src, "rb") as f:
        data = bytearray(f.read())
    t = tb.Tiff(bytes(data))
    spans = tb.tile_spans(t, 0)
    assert len(spans) == 48 and tb.Tiff(bytes(data)).values(0, "ImageWidth") == [2048]
    for k in (9, 30):
        off, cnt = spans[k]
        assert cnt > 16
        data[off:off + 16] = bytes(16)
    with open(out, "wb") as f:
        f.write(bytes(data))
    return src, out


@pytest.mark.parametrize("opts", [["--workers", 0], ["--workers", 3, "--batch-size", 5],
                                  ["--workers", 1, "--shuffle", "--batch-size", 64]],
                         ids=["w0", "w3b5", "w1-shuffle"])
def test_damaged_tile_stops_the_run(cli, damaged, tmp_path, opts):
    src, path = damaged
    args = ["bench", path, "--layout", "grid", "--size", "256,256"] + opts
    r = run(cli, args)
    desc = describe(args, r)
    assert r.returncode == 1 and r.stdout == b"", desc
    lines = r.stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1 and path in lines[0], desc
    assert re.search(r"\blevel 0\b", lines[0]) and re.search(r"\btile (9|30)\b", lines[0]), desc
    # one patch over tile 30 alone names tile 30
    loc = write_locations(tmp_path / "t30.txt", [(0, 0), (6 * 256 + 10, 3 * 256 + 20)])
    args = ["bench", path, "--locations", loc, "--size", "100,100"] + opts
    r = run(cli, args)
    desc = describe(args, r)
    assert r.returncode == 1 and r.stdout == b"", desc
    lines = r.stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1 and re.search(r"\btile 30\b", lines[0]), desc
    # the patches that miss both tiles read as in the undamaged file; so does level 1
    good = [(x, y) for y in range(0, 1536, 256) for x in range(0, 2048, 256)
            if (y // 256) * 8 + x // 256 not in (9, 30)]
    loc = write_locations(tmp_path / "good.txt", good)
    assert checksum(cli, path, "--locations", loc, "--size", "256,256", *opts)[0] == (
        openslide_level(src, 0).total(good, 256, 256))
    assert checksum(cli, path, "--layout", "grid", "--size", "256,256", "--level", 1, *opts) == (
        checksum(cli, src, "--layout", "grid", "--size", "256,256", "--level", 1))


# --- the tile cache and several processes ------------------------------------------------

def distinct_tiles(pos, w, h, tw, th, W, H):
    """The tiles a list of level positions of w x h patches touch, clipped to the level."""
    tiles = set()
    for x, y in pos:
        for ty in range(max(y, 0) // th, (min(y + h, H) - 1) // th + 1):
            for tx in range(max(x, 0) // tw, (min(x + w, W) - 1) // tw + 1):
                tiles.add((tx, ty))
    return tiles


def shares(pos, processes):
    """The parts of the locations each of `processes` processes reads: in order, equal."""
    n = len(pos)
    return [pos[n * k // processes:n * (k + 1) // processes] for k in range(processes)]


@pytest.mark.parametrize("opts", [["--cache", "per_process:64"],
                                  ["--cache", "per_process:64", "--processes", 2],
                                  ["--processes", 3, "--workers", 0],
                                  ["--cache", "per_process:1", "--processes", 2, "--shuffle"],
                                  ["--cache", "shared_memory:64"],
                                  ["--cache", "shared_memory:64", "--processes", 2],
                                  ["--cache", "shared_memory:64", "--processes", 3,
                                   "--workers", 1]],
                         ids=lambda o: "_".join(map(str, o)))
def test_cache_and_processes_keep_the_checksum(cli, slides, opts):
    """A shuffled sliding window through a cache, and split over processes, reads the same
    pixels as OpenSlide. With room for everything, each tile is missed once at least (a tile
    is cached at the second miss of it by one process, if the two are close enough): in the
    one cache shared by all the processes, or in each process's own cache (the tiles of its
    share)."""
    path = slides.path(GENERIC)
    osl = R.openslide_open(path)
    W, H = osl.level_dimensions[0]
    w, h = 96, 80
    pos = window_layout(W, H, w, h, 48, 40)
    doc = bench(cli, path, "--layout", "sliding", "--size", "%d,%d" % (w, h), "--shuffle",
                *opts)
    assert doc["patches"] == len(pos), doc
    assert doc["checksum"] == openslide_level(path, 0).total(pos, w, h)
    procs = int(opts[opts.index("--processes") + 1]) if "--processes" in opts else 1
    cache = opts[opts.index("--cache") + 1] if "--cache" in opts else "nocache"
    assert doc["processes"] == procs and doc["cache"] == cache.split(":")[0], doc
    touched = len(distinct_tiles(pos, w, h, 256, 256, W, H))
    assert doc["distinct_tiles"] == touched, doc
    per_share = [len(distinct_tiles(part, w, h, 256, 256, W, H)) for part in shares(pos, procs)]
    if cache == "nocache":
        assert doc["cache_hits"] == 0 and doc["cache_misses"] == 0, doc
    elif cache.startswith("shared_memory") or procs == 1:
        # with processes, the shares overlap, so separate caches would miss more
        assert procs == 1 or sum(per_share) > touched, per_share
        assert touched <= doc["cache_misses"], (doc, per_share)
        assert doc["cache_hits"] > 0, doc
    elif cache == "per_process:64":
        assert sum(per_share) <= doc["cache_misses"], (doc, per_share)
        assert doc["cache_hits"] > 0, doc
    else:
        assert doc["cache_hits"] + doc["cache_misses"] > 0, doc


def bench_pid(cli, args):
    """Runs `tessera bench ARGS --json`: its process id and parsed report."""
    full = [cli, "bench"] + [str(a) for a in args] + ["--json"]
    p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("tessera bench %s hung" % " ".join(map(str, args)))
    assert p.returncode == 0 and err == b"", (args, p.returncode, err)
    return p.pid, json.loads(out.decode("utf-8"))


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_shared_memory_cache_between_processes(cli, slides, processes):
    """Random patches (overlapping, and overlapping between the processes' shares) through
    one shared cache with room for all: the checksum of the nocache run, one miss per tile
    touched at least, and the segment ("/tessera-PID-N", made by the command's process) removed at the
    end."""
    path = slides.path(GENERIC)
    W, H, w, h = 2048, 1536, 300, 200
    args = [path, "--layout", "random", "--count", 120, "--seed", 5, "--size", "%d,%d" % (w, h),
            "--batch-size", 8, "--workers", 2]
    pos = random_layout(W, H, w, h, 120, 5)
    touched = len(distinct_tiles(pos, w, h, 256, 256, W, H))
    plain = bench(cli, *args)
    assert plain["distinct_tiles"] == touched and plain["cache_misses"] == 0, plain
    pid, doc = bench_pid(cli, args + ["--cache", "shared_memory:64", "--processes", processes])
    assert (doc["cache"], doc["cache_mib"], doc["processes"]) == (
        "shared_memory", 64, processes), doc
    assert doc["checksum"] == plain["checksum"] and doc["patches"] == 120, (doc, plain)
    assert doc["distinct_tiles"] == touched, doc
    assert touched <= doc["cache_misses"], doc
    if processes > 1:
        per_share = [len(distinct_tiles(p, w, h, 256, 256, W, H)) for p in shares(pos, processes)]
        assert sum(per_share) > touched, per_share
    assert doc["cache_hits"] > 0, doc
    left = glob.glob(os.path.join("/dev/shm", "tessera-%d-*" % pid))
    for f in left:
        os.unlink(f)
    assert left == [], "the bench left its segment: %s" % left


def test_distinct_tiles_clips_to_the_level(cli, slides, mixed_locations, tmp_path):
    """Patches across the edges touch only the tiles inside; patches wholly outside touch
    none. At level 0 and (through the level-1 corners of mixed_locations, downsample 2) at
    level 1; the text report shows the same number; a cache with room misses each once (the
    patches make one batch, which looks each tile up once)."""
    path = slides.path(GENERIC)
    W, H, w, h = 2048, 1536, 100, 90
    xy = [(-50, -40), (-99, 500), (-100, 500), (2047, 1535), (2048, 10), (1000, 1446),
          (1000, 1447), (700, -89), (700, -90), (-5000, -5000), (255, 255), (300, 300),
          (300, 301), (1900, 700)]
    tiles = distinct_tiles(xy, w, h, 256, 256, W, H)
    assert 0 < len(tiles) < 48
    loc = write_locations(tmp_path / "edges.txt", xy)
    doc = bench(cli, path, "--locations", loc, "--size", "%d,%d" % (w, h), "--cache",
                "per_process:64")
    assert doc["distinct_tiles"] == len(tiles), (doc["distinct_tiles"], sorted(tiles))
    assert doc["cache_misses"] == len(tiles), doc
    r = run(cli, ["bench", path, "--locations", loc, "--size", "%d,%d" % (w, h)])
    assert r.returncode == 0, describe([], r)
    assert re.search(r"^tiles:\s+%d distinct touched$" % len(tiles), r.stdout.decode(), re.M), (
        r.stdout.decode())
    path1, loc1, _ = mixed_locations
    with open(loc1) as f:
        level1 = [tuple(int(v) // 2 for v in line.split()) for line in f]
    tiles1 = distinct_tiles(level1, 37, 23, 256, 256, 1024, 768)
    doc = bench(cli, path1, "--locations", loc1, "--size", "37,23", "--level", 1)
    assert doc["distinct_tiles"] == len(tiles1), (doc["distinct_tiles"], sorted(tiles1))


@pytest.mark.parametrize("value,status", [("bogus", 2), ("per_process", 2), ("per_process:0", 2),
                                          ("nocache:5", 2), ("shared_memory", 2),
                                          ("shared_memory:0", 2)])
def test_cache_option_errors(cli, slides, value, status):
    args = ["bench", slides.path(GENERIC), "--layout", "grid", "--size", "64,64", "--cache", value]
    r = run(cli, args)
    assert r.returncode == status and r.stdout == b"", describe(args, r)
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tessera: ") and "cache" in lines[0], lines
