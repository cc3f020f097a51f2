"""The batch iterator (tessera_batch_iter_*) and whole-level reads (tessera_read_level).

Every patch of every batch must equal tessera_read_region of the same location with the same
options, over every option of the iterator: batch sizes 1, 3 and 7 (n not a multiple, so the
last batch is short), drop_last, num_workers 0, 1, 2 and 4, prefetch_factor 1 and 3, 3 and 4
channels, the default and an explicit fill, the seeded shuffle (whose order is recomputed here
from the documented splitmix64 + Fisher-Yates), at every level of a set of fixtures: generated
JPEG 4:2:0, lossless and RGBA pyramids, a sparse one, a strip-organised one, and every real file
in TESSERA_TESTDATA. Patches straight from the iterator on the JPEG files also equal libvips'
decode of the level (which checks the partial JPEG decoding against an independent reader), and
a few equal OpenSlide's on the Aperio file. Whole-level reads with 0, 1 and 3 workers equal a
single read_region of the level and libvips. Argument errors, an injected tile error that must
fail exactly the batches that need the tile, and destroying an iterator at random points while
batches are still held are covered too (the last in a child process, so a crash is a failure
and not a dead pytest).

No expected pixel value is written here: references are tessera's own single-region reads,
libvips (`vips tiffload`) and OpenSlide, computed at test time.
"""

import itertools
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import tessera_ctypes as T
import tiffbytes as tb
import wsi_fixtures as F
import wsi_refs as R

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable or "/usr/bin/python3"
FILL = 77
INT64_MAX = 2 ** 63 - 1
INT64_MIN = -2 ** 63
N_LOCATIONS = 38               # neither a multiple of 3 nor of 7
SPARSE = "sparse-jpeg-t128-pyr"
SPARSE_BASE = "jpeg-t128-pyr"
# (directory, tile) pairs left out of the sparse copy, one by TileOffsets, one by byte count
SPARSE_HOLES = [(0, "TileOffsets", 9), (0, "TileByteCounts", 22), (1, "TileOffsets", 5),
                (2, "TileByteCounts", 0)]

GENERATED = ["jpeg-t128-pyr",       # JPEG YCbCr 4:2:0, 128x128 tiles, 4 levels
             "odd-jpeg-pyr",        # JPEG, partial edge tiles, non-integer downsamples
             "lzw-pred-pyr",        # LZW with the horizontal predictor
             "rgba-deflate-pyr",    # 4 samples, alpha
             "strip-jpeg"]          # JPEG strips
TESTDATA = [n for n, s in F.SPECS.items() if s.kind == "testdata"]
JPEG_SLIDES = ["jpeg-t128-pyr", "odd-jpeg-pyr", "strip-jpeg",
               "aperio-jpeg-CMU-1-Small-Region.svs", "aperio-jpeg-tiny-16x16.svs",
               "generic-jpeg-ycbcr-128tiles.tiff", "hamamatsu-ndpi-DAPI.ndpi"]


def nlevels(name):
    return F.SPECS[SPARSE_BASE if name == SPARSE else name].nlevels


def cases(names):
    return ["%s@L%d" % (n, lv) for n in names for lv in range(nlevels(n))]


def parse_case(case):
    name, lv = case.rsplit("@L", 1)
    return name, int(lv)


# --- fixtures -------------------------------------------------------------------------------

class Paths:
    """Paths of the fixtures, the sparse copy (made here) included."""

    def __init__(self, slides, directory):
        self.slides = slides
        self.dir = directory
        self._sparse = None

    def __call__(self, name):
        if name != SPARSE:
            return self.slides.path(name)
        if self._sparse is None:
            with open(self.slides.path(SPARSE_BASE), "rb") as f:
                data = f.read()
            t = tb.Tiff(data)
            for ifd, tag, k in SPARSE_HOLES:
                data = tb.patch_value(data, t, ifd, tag, k, 0)
            p = os.path.join(self.dir, SPARSE + ".tif")
            with open(p, "wb") as f:
                f.write(data)
            self._sparse = p
        return self._sparse

    def vips_args(self, name, level):
        return F.SPECS[SPARSE_BASE if name == SPARSE else name].vips_load_args(level)


@pytest.fixture(scope="module")
def paths(slides, tmp_path_factory):
    return Paths(slides, str(tmp_path_factory.mktemp("batch")))


_OPEN = {}


def open_cached(path):
    """One tessera handle per file for the whole module (slides are thread-safe and
    immutable)."""
    if path not in _OPEN:
        _OPEN[path] = T.open_slide(path)
    return _OPEN[path]


# --- the documented shuffle, written again from its description -----------------------------

MASK64 = (1 << 64) - 1


def splitmix64(state):
    """One step of splitmix64: (new state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def expected_order(n, shuffle=False, seed=0):
    """The visiting order of n locations: identity, or the Fisher-Yates shuffle from the last
    element down with j uniform in [0, i) drawn by rejection from splitmix64(seed)."""
    order = list(range(n))
    if not shuffle:
        return order
    state = seed & MASK64
    for i in range(n, 1, -1):
        threshold = (1 << 64) % i   # reject the low values that would bias r % i
        while True:
            state, r = splitmix64(state)
            if r >= threshold:
                break
        j = r % i
        order[i - 1], order[j] = order[j], order[i - 1]
    return order


def test_splitmix64_reimplementation():
    """The Python splitmix64 gives the published reference outputs (Vigna's splitmix64.c, as
    also used by rand_xoshiro's tests), so the shuffle expectations rest on the real generator."""
    s, out = 1234567, []
    for _ in range(5):
        s, r = splitmix64(s)
        out.append(r)
    assert out == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                   4593380528125082431, 16408922859458223821]
    # a permutation, and the identity without shuffle
    o = expected_order(100, True, 5)
    assert sorted(o) == list(range(100)) and o != list(range(100))
    assert expected_order(7) == list(range(7))


# --- locations ------------------------------------------------------------------------------

def level0_of(v, ds):
    """The smallest level-0 coordinate whose level coordinate floor(x / ds) is v."""
    if ds == 1.0:
        return v
    x = math.floor(v * ds)
    while math.floor(x / ds) >= v:
        x -= 1
    while math.floor(x / ds) < v:
        x += 1
    return x


def level_coord(x, level, ds):
    return x if level == 0 else math.floor(x / ds)


def make_locations(info, level0_dims, level, pw, ph, seed, n=N_LOCATIONS):
    """n level-0 locations of pw x ph patches of one level: random unaligned ones, aligned to
    tiles, straddling tile corners, partly and wholly outside, negative, and far away (up to
    the int64 limits), in a seeded random order."""
    W, H = info.width, info.height
    tw, th = info.tile_width, info.tile_height
    ds = info.downsample
    W0, H0 = level0_dims
    rng = random.Random(seed)
    across, down = -(-W // tw), -(-H // th)
    lv = []   # level coordinates, converted below
    for _ in range(3):
        lv.append((rng.randrange(across) * tw, rng.randrange(down) * th))           # aligned
    for _ in range(4):
        kx = rng.randrange(1, across) if across > 1 else 0
        ky = rng.randrange(1, down) if down > 1 else 0
        lv.append((kx * tw - pw // 2, ky * th - ph // 2))                          # straddling
    lv += [(W - max(pw // 2, 1), 3 % H), (-(pw // 2) - 1, H // 2), (W // 2, H - max(ph // 3, 1)),
           (W - 2, H - 2), (-3, -3), (max(W - pw, 0), max(H - ph, 0))]             # partly out
    lv += [(W, 0), (0, H), (W + 1000, H + 5), (-pw, 0), (0, -ph), (-pw - 50, -ph - 7)]  # out
    locs = [(level0_of(x, ds), level0_of(y, ds)) for x, y in lv]
    locs += [(-1, -1), (-2, 5), (7, -37)]                                           # negative
    locs += [(2 ** 40, -2 ** 40), (2 ** 62, 5), (INT64_MIN, INT64_MIN),
             (2 ** 61 - 1, -2 ** 61)]                       # far away (see also test_far_away)
    while len(locs) < n:
        if len(locs) % 4 == 3:   # random, with a margin around the image
            locs.append((rng.randrange(-int(pw * ds) - 5, W0 + 10),
                         rng.randrange(-int(ph * ds) - 5, H0 + 10)))
        else:                    # random unaligned, inside
            locs.append((rng.randrange(W0), rng.randrange(H0)))
    locs = locs[:n]
    rng.shuffle(locs)
    return np.array(locs, np.int64).reshape(-1, 2)


def wholly_outside(x, y, level, info, pw, ph):
    lx, ly = level_coord(x, level, info.downsample), level_coord(y, level, info.downsample)
    return lx >= info.width or ly >= info.height or lx + pw <= 0 or ly + ph <= 0


# --- the option matrix ----------------------------------------------------------------------

FACTORS = {
    "batch_size": [1, 3, 7],
    "num_workers": [0, 1, 2, 4],
    "prefetch_factor": [1, 3],
    "channels": [3, 4],
    "fill": [None, FILL],       # None: the default (-1, the slide's background)
    "size": ["small", "big", "thin"],
    "drop_last": [0, 1],
    "shuffle": [0, 1],
}


def pairwise(factors):
    """A small set of rows in which every pair of values of every two factors appears
    (greedy, deterministic)."""
    names = list(factors)
    uncovered = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for va in range(len(factors[names[a]])):
            for vb in range(len(factors[names[b]])):
                uncovered.add((a, va, b, vb))
    cands = list(itertools.product(*[range(len(factors[n])) for n in names]))
    rows = []
    while uncovered:
        def gain(c):
            return sum((a, c[a], b, c[b]) in uncovered
                       for a, b in itertools.combinations(range(len(names)), 2))
        best = max(cands, key=gain)
        for a, b in itertools.combinations(range(len(names)), 2):
            uncovered.discard((a, best[a], b, best[b]))
        rows.append({n: factors[n][best[i]] for i, n in enumerate(names)})
    return rows


MATRIX = pairwise(FACTORS)


def test_matrix_covers_every_pair():
    for a, b in itertools.combinations(FACTORS, 2):
        seen = {(r[a], r[b]) for r in MATRIX}
        assert seen == set(itertools.product(FACTORS[a], FACTORS[b])), (a, b)


def patch_sizes(info, level):
    tw, th = info.tile_width, info.tile_height
    big = (min(tw + tw // 2 + 3, 400), min(th // 2 + th // 3 + 5, 300))
    return {"small": (37, 29), "big": big, "thin": (31, 1) if level % 2 else (1, 23)}


class Refs:
    """tessera_read_region of each location, computed once per (location, size, channels,
    fill)."""

    def __init__(self, slide, level, locations):
        self.s = slide
        self.level = level
        self.locs = locations
        self.memo = {}

    def get(self, i, size, channels, fill):
        key = (int(i), size, channels, fill)
        if key not in self.memo:
            x, y = self.locs[i]
            self.memo[key] = self.s.read_region(int(x), int(y), self.level, size[0], size[1],
                                                channels=channels,
                                                fill=-1 if fill is None else fill)
        return self.memo[key]


def check_batch_against_refs(what, arr, idx, refs, size, channels, fill):
    """Each patch of a batch equals read_region of its location; returns a message or None."""
    for k, i in enumerate(idx):
        exp = refs.get(i, size, channels, fill)
        if not np.array_equal(arr[k], exp):
            x, y = refs.locs[i]
            m = R.describe_mismatch(arr[k], exp, what="%s: patch %d (location %d = (%d, %d)) vs "
                                    "read_region" % (what, k, i, x, y))
            return m or "%s: patch %d differs" % (what, k)
    return None


def run_iterator(slide, locs, size, level, row, seed):
    """Runs one iterator to its end through the raw API; returns (length, [(fields, data
    copy, indices)], statuses after the end)."""
    opts = dict(batch_size=row["batch_size"], num_workers=row["num_workers"],
                prefetch_factor=row["prefetch_factor"], channels=row["channels"],
                fill=row["fill"], drop_last=row["drop_last"], shuffle=row["shuffle"], seed=seed)
    it = slide.batch_iter(locs, size, level, **opts)
    out = []
    try:
        length = it.length()
        for _ in range(length + 2):
            st, msg, b = it.next_raw()
            assert st == T.OK, "batch %d failed: %s (%d)" % (len(out), msg, st)
            if b is None:
                break
            fields = dict(number=b.number, count=b.count, size=b.size, width=b.width,
                          height=b.height, channels=b.channels)
            out.append((fields, b.array(), b.indices()))
            b.release()
        # the end stays the end
        after = [it.next_raw() for _ in range(2)]
    finally:
        it.destroy()
    return length, out, after


@pytest.mark.parametrize("case", cases(GENERATED + [SPARSE] + TESTDATA))
def test_batches_equal_read_region(paths, lib, case):
    """For each row of the option matrix: the number of batches equals
    tessera_batch_iter_length and ceil (or, with drop_last, floor) of n / batch_size; batch k
    has number k, batch_size patches (the last one fewer, or dropped with drop_last), the
    patch size and channels asked for, size = count * height * width * channels, indices the
    next entries of the (shuffled) visiting order, and each patch equals tessera_read_region of
    its location with the same channels and fill; a patch wholly outside the level is the fill
    with alpha 0."""
    name, level = parse_case(case)
    s = open_cached(paths(name))
    assert level < s.level_count
    info = s.level_info(level)
    l0 = s.level_info(0)
    background = s.background
    sizes = patch_sizes(info, level)
    seed0 = sum(map(ord, case))
    locsets = {k: make_locations(info, (l0.width, l0.height), level, w, h, seed0 + j)
               for j, (k, (w, h)) in enumerate(sorted(sizes.items()))}
    refs = {k: Refs(s, level, locsets[k]) for k in sizes}
    failures = []
    for r, row in enumerate(MATRIX):
        size = sizes[row["size"]]
        locs = locsets[row["size"]]
        n = len(locs)
        bs = row["batch_size"]
        seed = (seed0 * 1000003 + r) & MASK64
        what = "%s level %d patch %dx%d %s" % (name, level, size[0], size[1],
                                                ", ".join("%s=%s" % kv for kv in row.items()))
        length, got, after = run_iterator(s, locs, size, level, row, seed)
        want = n // bs if row["drop_last"] else -(-n // bs)
        if length != want:
            failures.append("%s: length %d, expected %d" % (what, length, want))
            continue
        if len(got) != length:
            failures.append("%s: %d batches came out, length says %d" % (what, len(got), length))
            continue
        if any(a[0] != T.OK or a[2] is not None for a in after):
            failures.append("%s: next after the end gave %r" % (what, [a[:2] for a in after]))
        order = expected_order(n, row["shuffle"], seed)
        fill = background if row["fill"] is None else row["fill"]
        ch = row["channels"]
        for k, (fields, arr, idx) in enumerate(got):
            count = min(bs, n - k * bs)
            exp_fields = dict(number=k, count=count, size=count * size[0] * size[1] * ch,
                              width=size[0], height=size[1], channels=ch)
            if fields != exp_fields:
                failures.append("%s: batch %d has %r, expected %r" % (what, k, fields,
                                                                       exp_fields))
                break
            if list(idx) != order[k * bs:k * bs + count]:
                failures.append("%s: batch %d indices %r, expected %r" % (
                    what, k, list(idx), order[k * bs:k * bs + count]))
                break
            m = check_batch_against_refs("%s batch %d" % (what, k), arr, idx, refs[row["size"]],
                                         size, ch, row["fill"])
            if m:
                failures.append(m)
                break
            for p, i in enumerate(idx):
                x, y = locs[i]
                if wholly_outside(int(x), int(y), level, info, *size):
                    if not ((arr[p][..., :3] == fill).all() and
                            (ch == 3 or (arr[p][..., 3] == 0).all())):
                        failures.append("%s batch %d: patch at (%d, %d) lies outside the level "
                                        "but is not fill %d / alpha 0" % (what, k, x, y, fill))
                        break
    assert not failures, "%d of %d option rows failed:\n  " % (len(failures), len(MATRIX)) + \
        "\n  ".join(failures[:6])


FAR = [(INT64_MAX, INT64_MAX), (INT64_MAX, 0), (0, INT64_MAX), (INT64_MAX - 5, 3),
       (INT64_MIN, INT64_MAX), (INT64_MAX, INT64_MIN), (INT64_MIN, INT64_MIN),
       (2 ** 62, 2 ** 62), (-2 ** 62, -2 ** 62), (2 ** 61 - 1, 2 ** 61 - 1), (-2 ** 61, 1),
       (2 ** 61 - 40, -2 ** 61 + 3)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_far_away_patches_are_fill(paths, lib, num_workers):
    """Patches at level-0 locations up to the int64 limits, at every level, are all fill
    (alpha 0), from the iterator and from read_region alike (no overflow in the level-origin
    or patch-end arithmetic)."""
    s = open_cached(paths("jpeg-t128-pyr"))
    failures = []
    for level in range(s.level_count):
        for ch in (3, 4):
            for size in ((37, 29), (1, 1)):
                with s.batches(FAR, size, level, batch_size=5, num_workers=num_workers,
                               channels=ch, fill=FILL) as b:
                    for arr, idx in b:
                        for k, i in enumerate(idx):
                            if not ((arr[k][..., :3] == FILL).all() and
                                    (ch == 3 or (arr[k][..., 3] == 0).all())):
                                failures.append("batch: level %d channels %d %r at %r" % (
                                    level, ch, size, FAR[i]))
                for x, y in FAR:
                    # a buffer that is not already fill, so an untouched one shows
                    buf = np.full(size[0] * size[1] * ch, 0xC3, np.uint8)
                    st, msg = s.read_into(buf, x, y, level, size[0], size[1], channels=ch,
                                          fill=FILL)
                    px = buf.reshape(size[1], size[0], ch)
                    if st != T.OK or not ((px[..., :3] == FILL).all() and
                                          (ch == 3 or (px[..., 3] == 0).all())):
                        failures.append("read_region: level %d channels %d %r at %r: status "
                                        "%d, first pixel %r" % (level, ch, size, (x, y), st,
                                                                px[0, 0].tolist()))
    assert not failures, "%d patches far away are not fill:\n  " % len(failures) + \
        "\n  ".join(failures[:12])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sparse_batches(paths, lib, num_workers):
    """Patches over the tiles the sparse copy leaves out are the fill with alpha 0 there, and
    elsewhere equal libvips' decode of the complete file (and read_region of the sparse one)."""
    path = paths(SPARSE)
    s = open_cached(path)
    full = paths(SPARSE_BASE)
    for ifd, _, k in SPARSE_HOLES:
        level = ifd
        info = s.level_info(level)
        across = -(-info.width // info.tile_width)
        hx, hy = (k % across) * 128, (k // across) * 128
        ref = R.vips_decode(full, paths.vips_args(SPARSE_BASE, level))
        lv = [(hx + 10, hy + 20), (hx - 30, hy - 20), (hx + 100, hy + 110), (hx, hy),
              (hx + 127, hy + 127), (hx - 59, hy + 50)]
        locs = np.array([(level0_of(x, info.downsample), level0_of(y, info.downsample))
                         for x, y in lv], np.int64)
        refs = Refs(s, level, locs)
        size = (60, 45)
        with s.batches(locs, size, level, batch_size=4, num_workers=num_workers, channels=4,
                       fill=FILL) as b:
            for arr, idx in b:
                m = check_batch_against_refs("sparse", arr, idx, refs, size, 4, FILL)
                assert m is None, m
                for a, i in zip(arr, idx):
                    x, y = lv[i]
                    exp, inside = R.crop_fill(ref, x, y, size[0], size[1], FILL)
                    hole = np.zeros(size[::-1], bool)
                    hole[max(hy - y, 0):max(hy + 128 - y, 0),
                         max(hx - x, 0):max(hx + 128 - x, 0)] = True
                    assert hole.any()
                    assert (a[hole] == [FILL, FILL, FILL, 0]).all(), (level, k, x, y)
                    m = R.describe_mismatch(a[..., :3], R.to_rgb(exp), ~hole,
                                            "sparse level %d around tile %d" % (level, k), (x, y))
                    assert m is None, m
                    assert (a[..., 3][~hole & inside] == 255).all()


# --- n = 0, short batches, defaults ---------------------------------------------------------

@pytest.mark.parametrize("num_workers", [0, 1, 2, 4])
def test_no_locations(paths, lib, num_workers):
    """n = 0 (with or without a locations pointer) is allowed: length 0, no batches, and
    next keeps answering the end."""
    s = open_cached(paths("jpeg-t128-pyr"))
    for locs in (np.zeros((0, 2), np.int64), None):
        for drop_last in (0, 1):
            for bs in (1, 7):
                st, msg, it = s.batch_iter_status(locs, (16, 16), 1, batch_size=bs,
                                                  num_workers=num_workers,
                                                  drop_last=drop_last, shuffle=1, seed=3)
                assert st == T.OK, msg
                try:
                    assert it.length() == 0
                    for _ in range(3):
                        st, msg, b = it.next_raw()
                        assert (st, b) == (T.OK, None), (st, msg)
                finally:
                    it.destroy()
    with s.batches([], (16, 16)) as b:
        assert len(b) == 0 and list(b) == []


def test_drop_last_and_short_batches(paths, lib):
    """Every n from 0 to 16 with batch sizes 1 to 6 and 16: the counts of the batches are
    exactly the chunks of n, the short last one dropped only with drop_last, and
    tessera_batch_iter_length agrees."""
    s = open_cached(paths("odd-jpeg-pyr"))
    rng = random.Random(11)
    all_locs = np.array([(rng.randrange(-50, 1050), rng.randrange(-50, 800)) for _ in range(16)],
                        np.int64)
    refs = Refs(s, 1, all_locs)
    for n in range(17):
        for bs in (1, 2, 3, 4, 5, 6, 16):
            for drop_last in (0, 1):
                nw = (n + bs) % 3
                with s.batches(all_locs[:n], (9, 5), 1, batch_size=bs, drop_last=drop_last,
                               num_workers=nw, prefetch_factor=1 + n % 2) as b:
                    length = len(b)
                    counts, seen = [], []
                    for arr, idx in b:
                        counts.append(len(idx))
                        assert arr.shape == (len(idx), 5, 9, 3)
                        seen += list(idx)
                        m = check_batch_against_refs("n %d bs %d" % (n, bs), arr, idx, refs,
                                                     (9, 5), 3, None)
                        assert m is None, m
                full, rest = divmod(n, bs)
                want = [bs] * full + ([rest] if rest and not drop_last else [])
                assert counts == want, (n, bs, drop_last, counts)
                assert length == len(want), (n, bs, drop_last, length)
                assert seen == list(range(sum(want)))


def test_default_options(paths, lib):
    """NULL options are the documented defaults (batch_size 1, 3 channels, the slide's
    background, no shuffle); tessera_batch_options_init fills them; a struct_size that stops
    before channels and fill leaves those at their defaults."""
    import ctypes
    d = T.batch_options()
    assert (d.struct_size, d.batch_size, d.num_workers, d.drop_last, d.prefetch_factor,
            d.shuffle, d.seed, d.channels, d.fill) == (
        ctypes.sizeof(T.BatchOptions), 1, 0, 0, 2, 0, 0, 3, -1)
    s = open_cached(paths("aperio-jpeg-CMU-1-Small-Region.svs"))
    locs = np.array([(-5, -5), (100, 200), (2200, 2950), (1000, 1000)], np.int64)
    refs = Refs(s, 0, locs)
    it = s.batch_iter(locs, (30, 20), 0, options="null")
    try:
        assert it.length() == 4
        for k in range(4):
            st, msg, b = it.next_raw()
            assert st == T.OK and b is not None, msg
            assert (b.count, b.channels, b.number) == (1, 3, k)
            assert list(b.indices()) == [k]
            m = check_batch_against_refs("defaults", b.view(), b.indices(), refs, (30, 20), 3,
                                         None)
            b.release()
            assert m is None, m
    finally:
        it.destroy()
    # struct_size up to (not including) seed: channels 4 and fill 9 beyond it are not read
    o = T.batch_options(batch_size=2, channels=4, fill=9)
    o.struct_size = T.BatchOptions.seed.offset
    with T.Batches(s.batch_iter(locs, (30, 20), 0, options=o)) as b:
        got = list(b)
    assert [a.shape for a, _ in got] == [(2, 20, 30, 3)] * 2
    for arr, idx in got:
        m = check_batch_against_refs("short struct_size", arr, idx, refs, (30, 20), 3, None)
        assert m is None, m


# --- the shuffle ----------------------------------------------------------------------------

def run_order(slide, locs, size, level, **opts):
    with slide.batches(locs, size, level, **opts) as b:
        return [int(i) for _, idx in b for i in idx]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shuffle_order(paths, lib, num_workers):
    """The visiting order is exactly the documented Fisher-Yates shuffle driven by
    splitmix64(seed) for any n and seed (batch size not mattering); the same seed gives the
    same order twice; different seeds give different orders; shuffle off (whatever the seed)
    is the identity; and each shuffled patch still shows its own location."""
    s = open_cached(paths("jpeg-t128-pyr"))
    rng = random.Random(5)
    locs = np.array([(rng.randrange(-20, 1030), rng.randrange(-20, 780)) for _ in range(300)],
                    np.int64)
    size = (3, 2)
    for n in (1, 2, 3, 10, 300):
        for seed in (0, 1, 42, 2 ** 32 + 7, 2 ** 63, MASK64):
            for bs in (1, 7):
                got = run_order(s, locs[:n], size, 2, batch_size=bs, shuffle=1, seed=seed,
                                num_workers=num_workers, prefetch_factor=3)
                assert got == expected_order(n, True, seed), (n, seed, bs, got[:20])
    a = run_order(s, locs, size, 2, batch_size=4, shuffle=1, seed=99, num_workers=num_workers)
    b = run_order(s, locs, size, 2, batch_size=4, shuffle=1, seed=99, num_workers=num_workers)
    assert a == b
    orders = {tuple(run_order(s, locs, size, 2, batch_size=5, shuffle=1, seed=sd,
                              num_workers=num_workers)) for sd in range(8)}
    assert len(orders) == 8, "8 seeds gave only %d different orders" % len(orders)
    assert tuple(range(300)) not in orders
    for seed in (0, 12345):
        assert run_order(s, locs, size, 2, batch_size=3, shuffle=0, seed=seed,
                         num_workers=num_workers) == list(range(300))
    # patches follow their indices
    refs = Refs(s, 1, locs)
    with s.batches(locs[:50], (20, 20), 1, batch_size=6, shuffle=1, seed=8,
                   num_workers=num_workers) as bb:
        for arr, idx in bb:
            m = check_batch_against_refs("shuffled", arr, idx, refs, (20, 20), 3, None)
            assert m is None, m


# --- against libvips and OpenSlide ----------------------------------------------------------

def vips_sizes(info):
    tw, th = info.tile_width, info.tile_height
    W, H = info.width, info.height
    several = (min(2 * tw + 5, W + 7, 700), min(th + th // 2 + 3, H + 5, 600))
    return [(1, 1), (1, 57), (63, 1), (33, 17), several]


def vips_locations(info, level0, size, seed):
    """Level-0 locations of unaligned patches (random inside, near tile corners, over the
    edges) and a cluster of patches inside one tile (so one batch decodes the union of their
    parts of that tile)."""
    W, H = info.width, info.height
    tw, th = info.tile_width, info.tile_height
    ds = info.downsample
    pw, ph = size
    rng = random.Random(seed)
    lv = []
    for _ in range(9):
        lv.append((rng.randrange(-pw // 2, W), rng.randrange(-ph // 2, H)))
    for _ in range(4):
        kx, ky = rng.randrange(W // tw + 1) * tw, rng.randrange(H // th + 1) * th
        lv.append((kx + rng.choice([-pw + 1, -1, 1, 3]), ky + rng.choice([-ph + 1, -1, 2])))
    lv += [(W - pw + 1, H - ph + 1), (W - 1, 0), (0, H - 1)]
    cx, cy = rng.randrange(W // tw + 1) * tw, rng.randrange(H // th + 1) * th
    for _ in range(7):
        lv.append((min(cx + rng.randrange(max(tw - pw, 1)), W - 1),
                   min(cy + rng.randrange(max(th - ph, 1)), H - 1)))
    return np.array([(level0_of(x, ds), level0_of(y, ds)) for x, y in lv], np.int64)


@pytest.mark.parametrize("case", cases(JPEG_SLIDES))
def test_jpeg_batches_equal_libvips(paths, lib, case):
    """Patches from the iterator (1-pixel-wide and -high ones, patches over several tiles,
    unaligned patches, several patches of one tile in one batch) equal, byte for byte, libvips'
    decode of the level (with the fill outside and alpha 255 inside, 0 outside): a check of
    the partial (cropped) JPEG decoding against an independent reader."""
    name, level = parse_case(case)
    path = paths(name)
    s = open_cached(path)
    info = s.level_info(level)
    assert info.compression == F.JPEG
    ref = R.vips_decode(path, paths.vips_args(name, level))
    assert ref.shape[:2] == (info.height, info.width)
    failures = []
    for j, size in enumerate(vips_sizes(info)):
        locs = vips_locations(info, s.level_info(0), size, sum(map(ord, case)) + j)
        for bs, nw, ch in ((7, 2, 3), (3, 0, 4), (1, 4, 3)):
            with s.batches(locs, size, level, batch_size=bs, num_workers=nw, channels=ch,
                           fill=FILL, prefetch_factor=2) as b:
                for arr, idx in b:
                    for k, i in enumerate(idx):
                        x, y = (int(v) for v in locs[i])
                        lx, ly = level_coord(x, level, info.downsample), level_coord(
                            y, level, info.downsample)
                        exp, inside = R.crop_fill(ref, lx, ly, size[0], size[1], FILL)
                        what = "%s level %d patch %dx%d at level (%d, %d), batch_size %d, " \
                            "num_workers %d, channels %d" % (name, level, size[0], size[1], lx,
                                                             ly, bs, nw, ch)
                        m = R.describe_mismatch(arr[k][..., :3], R.to_rgb(exp), what=what,
                                                origin=(lx, ly))
                        if m is None and ch == 4:
                            alpha = np.where(inside, 255, 0).astype(np.uint8)
                            m = R.describe_mismatch(arr[k][..., 3], alpha, what=what + " alpha",
                                                    origin=(lx, ly))
                        if m:
                            failures.append(m)
    assert not failures, "%d patches differ from libvips:\n  " % len(failures) + \
        "\n  ".join(failures[:6])


def test_aperio_batches_equal_openslide(paths, lib):
    """A handful of level-0 patches of the real Aperio file, straight from the iterator, equal
    OpenSlide's read_region where OpenSlide is opaque, and are the fill outside."""
    name = "aperio-jpeg-CMU-1-Small-Region.svs"
    path = paths(name)
    s = open_cached(path)
    osl = R.openslide_open(path)
    W, H = s.level_dimensions()[0]
    assert tuple(osl.level_dimensions[0]) == (W, H)
    locs = np.array([(0, 0), (239, 239), (1001, 1333), (W - 40, H - 30), (-10, 500), (479, 3),
                     (1200, 2100), (2000, 17)], np.int64)
    size = (97, 61)
    with s.batches(locs, size, 0, batch_size=3, num_workers=2, channels=4, fill=FILL) as b:
        n = 0
        for arr, idx in b:
            for k, i in enumerate(idx):
                x, y = (int(v) for v in locs[i])
                o = R.openslide_region(osl, x, y, 0, *size)
                _, inside = R.crop_fill(np.zeros((H, W, 1), np.uint8), x, y, size[0], size[1], 0)
                opaque = o[..., 3] == 255
                what = "patch at (%d, %d)" % (x, y)
                m = R.describe_mismatch(arr[k][..., :3], o[..., :3], opaque, what, (x, y))
                m = m or R.describe_mismatch(arr[k][..., 3], np.where(inside, 255, 0).astype(
                    np.uint8), None, what + " alpha", (x, y))
                m = m or R.describe_mismatch(arr[k][..., :3], np.full_like(arr[k][..., :3], FILL),
                                             ~inside, what + " fill", (x, y))
                assert m is None, m
                assert opaque[inside].all() or not inside.any()
                n += 1
    assert n == len(locs)


# --- whole levels ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases(["jpeg-t128-pyr", "odd-jpeg-pyr", "rgba-deflate-pyr"]))
def test_read_level(paths, lib, case):
    """tessera_read_level with num_workers 0, 1 and 3, with 3 and 4 channels, equals
    tessera_read_region of the whole level and libvips' decode of it (alpha included); a row
    stride larger than a row leaves the padding alone; a destination one byte too small, a
    missing level or a negative num_workers is E_ARGUMENT and leaves the buffer alone."""
    name, level = parse_case(case)
    path = paths(name)
    s = open_cached(path)
    info = s.level_info(level)
    W, H = info.width, info.height
    ref = R.vips_decode(path, paths.vips_args(name, level))
    assert ref.shape[:2] == (H, W)
    for ch in (3, 4):
        whole = s.read_region(0, 0, level, W, H, channels=ch)
        exp = R.to_rgb(ref)
        m = R.describe_mismatch(whole[..., :3], exp, what="read_region of the level vs libvips")
        assert m is None, m
        if ch == 4:
            m = R.describe_mismatch(whole[..., 3], R.alpha_of(ref), what="alpha vs libvips")
            assert m is None, m
        for nw in (0, 1, 3):
            got = s.read_level(level, channels=ch, num_workers=nw)
            assert got.shape == (H, W, ch)
            m = R.describe_mismatch(got, whole, what="%s level %d read_level num_workers %d "
                                    "channels %d vs read_region" % (name, level, nw, ch))
            assert m is None, m
        # stride
        stride = W * ch + 11
        need = stride * (H - 1) + W * ch
        buf = np.full(stride * H, 0xA5, np.uint8)
        st, msg = s.read_level_into(buf, level, channels=ch, stride=stride, num_workers=3,
                                    dst_size=need)
        assert st == T.OK, msg
        rows = buf.reshape(H, stride)
        assert (rows[:, W * ch:] == 0xA5).all(), "stride padding was written"
        assert np.array_equal(rows[:, :W * ch].reshape(H, W, ch), whole)
        # too small
        buf = np.full(W * H * ch, 0x5A, np.uint8)
        for nw in (0, 3):
            st, msg = s.read_level_into(buf, level, channels=ch, num_workers=nw,
                                        dst_size=W * H * ch - 1)
            assert st == T.E_ARGUMENT and msg, (st, msg)
            assert (buf == 0x5A).all(), "a rejected read_level wrote into the buffer"
    buf = np.full(W * H * 3, 0x5A, np.uint8)
    for lv, kw in ((-1, {}), (s.level_count, {}), (level, dict(num_workers=-1)),
                   (level, dict(channels=5)), (level, dict(fill=300))):
        st, msg = s.read_level_into(buf, lv, **kw)
        assert st == T.E_ARGUMENT and msg, (lv, kw, st, msg)
        assert (buf == 0x5A).all()


def test_read_level_null_arguments(paths, lib):
    s = open_cached(paths("jpeg-t128-pyr"))
    info = s.level_info(3)
    buf = np.zeros(info.width * info.height * 3, np.uint8)
    st = lib.tessera_read_level(None, 0, None, buf.ctypes.data_as(T.ctypes.c_void_p), buf.nbytes)
    assert st == T.E_ARGUMENT and T.error_message()
    st = lib.tessera_read_level(s._h, 3, None, None, buf.nbytes)
    assert st == T.E_ARGUMENT and T.error_message()
    # NULL options are the defaults
    st, msg = s.read_level_into(buf, 3, options="null")
    assert st == T.OK, msg
    assert np.array_equal(buf.reshape(info.height, info.width, 3), s.read_level(3))


def test_region_num_workers_equal(paths, lib):
    """A large single region read with num_workers 0, 2 and 5 gives the same pixels."""
    s = open_cached(paths("generic-zstd-1024tiles-pyramid.tiff"))
    a = s.read_region(-300, 700, 1, 2900, 1300, channels=4, fill=FILL, num_workers=0)
    for nw in (2, 5):
        b = s.read_region(-300, 700, 1, 2900, 1300, channels=4, fill=FILL, num_workers=nw)
        assert np.array_equal(a, b), nw


# --- argument errors ------------------------------------------------------------------------

def test_batch_argument_errors(paths, lib):
    """Each bad argument of tessera_batch_iter_create is E_ARGUMENT with a message naming it,
    and leaves *out NULL (checked by the binding)."""
    s = open_cached(paths("jpeg-t128-pyr"))
    locs = np.array([(0, 0), (5, 5)], np.int64)
    bad = [
        (dict(batch_size=0), "batch_size"), (dict(batch_size=-3), "batch_size"),
        (dict(num_workers=-1), "num_workers"), (dict(prefetch_factor=0), "prefetch_factor"),
        (dict(prefetch_factor=-1, num_workers=2), "prefetch_factor"),
        (dict(channels=5), "channels"), (dict(channels=2), "channels"),
        (dict(channels=0), "channels"), (dict(fill=300), "fill"), (dict(fill=-2), "fill"),
    ]
    for kw, word in bad:
        st, msg, it = s.batch_iter_status(locs, (8, 8), 0, **kw)
        assert st == T.E_ARGUMENT and it is None, (kw, st, msg)
        assert word in msg, (kw, msg)
    for level in (-1, s.level_count, 1000):
        st, msg, it = s.batch_iter_status(locs, (8, 8), level)
        assert st == T.E_ARGUMENT and "level" in msg, (level, st, msg)
    for size in ((0, 8), (8, 0), (-1, 8), (8, -5), (2 ** 31 + 1, 1), (1, 2 ** 40)):
        st, msg, it = s.batch_iter_status(locs, size, 0)
        assert st == T.E_ARGUMENT and msg, (size, st, msg)
    # locations NULL with n > 0
    st, msg, it = s.batch_iter_status(None, (8, 8), 0, n=3)
    assert st == T.E_ARGUMENT and msg
    # options without struct_size
    o = T.batch_options()
    o.struct_size = 0
    st, msg, it = s.batch_iter_status(locs, (8, 8), 0, options=o)
    assert st == T.E_ARGUMENT and msg
    # a batch too large to allocate is refused, not attempted
    st, msg, it = s.batch_iter_status(locs, (2 ** 31, 2 ** 31), 0, batch_size=2 ** 30)
    assert st in (T.E_ARGUMENT, T.E_NOMEM) and msg, (st, msg)
    # NULL slide, NULL out
    P = T.ctypes.c_void_p
    out = P()
    buf = locs.ctypes.data_as(P)
    st = lib.tessera_batch_iter_create(None, buf, 2, 8, 8, 0, None, T.ctypes.byref(out))
    assert st == T.E_ARGUMENT and not out.value and T.error_message()
    st = lib.tessera_batch_iter_create(s._h, buf, 2, 8, 8, 0, None, None)
    assert st == T.E_ARGUMENT and T.error_message()
    # next / length / release / destroy with NULL
    pb = T.ctypes.POINTER(T.Batch)()
    st = lib.tessera_batch_iter_next(None, T.ctypes.byref(pb))
    assert st == T.E_ARGUMENT and not pb and T.error_message()
    it = s.batch_iter(locs, (8, 8), 0)
    try:
        st = lib.tessera_batch_iter_next(it._h, None)
        assert st == T.E_ARGUMENT and T.error_message()
        # the iterator is still whole after that
        with T.Batches(it) as b:
            assert len(list(b)) == 2
    finally:
        it.destroy()
    assert lib.tessera_batch_iter_length(None) == 0
    lib.tessera_batch_release(None)
    lib.tessera_batch_iter_destroy(None)


# --- an injected tile error -----------------------------------------------------------------

DAMAGE_BASE = "jpeg-t128-pyr"   # level 0: 8 x 6 tiles of 128; level 1: 4 x 3


@pytest.fixture(scope="module")
def damaged(paths):
    """A copy of the JPEG pyramid with level 0 tile 13 pointing past the end of the file,
    level 0 tile 30 and level 1 tile 5 with their SOS marker destroyed."""
    with open(paths(DAMAGE_BASE), "rb") as f:
        data = f.read()
    t = tb.Tiff(data)
    data = tb.patch_value(data, t, 0, "TileOffsets", 13, len(data) + 100000)
    for ifd, k in ((0, 30), (1, 5)):
        off, cnt = tb.tile_spans(t, ifd)[k]
        i = data.find(b"\xff\xda", off, off + cnt)
        assert i >= 0
        data = data[:i] + b"\x00\x00" + data[i + 2:]
    p = os.path.join(paths.dir, "damaged-batch.tif")
    with open(p, "wb") as f:
        f.write(data)
    return p


def tile_box(k, across, tw=128, th=128):
    return (k % across) * tw, (k // across) * th


def touches(lx, ly, w, h, box, tw=128, th=128):
    bx, by = box
    return lx < bx + tw and bx < lx + w and ly < by + th and by < ly + h


def test_batch_without_memory_is_skipped(paths, lib):
    """A batch whose buffer cannot be allocated fails with E_NOMEM and is skipped, like a
    batch with a bad tile: the next call goes on (here: to the end), never retrying forever."""
    s = T.open_slide(paths("generic-jpeg-ycbcr-128tiles.tiff"),
                     T.open_options(max_read_bytes=2 ** 64 - 1))
    locs = np.array([[0, 0], [10, 10], [20, 20]], dtype=np.int64)
    # 3 patches of 2^24 x 2^24 RGB: ~2.5 PB, more than any address space holds.
    st, msg, it = s.batch_iter_status(locs, (2 ** 24, 2 ** 24), 0, batch_size=3)
    assert st == T.OK, msg
    try:
        assert it.length() == 1
        st, msg, b = it.next_raw()
        assert st == T.E_NOMEM and b is None and "memory" in msg, (st, msg)
        st, msg, b = it.next_raw()
        assert st == T.OK and b is None, (st, msg)
    finally:
        it.destroy()


def _vm_peak_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmPeak in /proc/self/status")


def _few_locations_child(path, workers):
    """Run in a child process by test_buffers_sized_by_the_patches_there_are: the growth of
    the process's peak address space while a huge batch size runs over two locations."""
    s = T.open_slide(path)
    locs = [[0, 0], [300, 300]]
    # The same iterator with batch_size 2 first, so the threads, their malloc arenas and the
    # tile buffers exist before the peak is taken.
    for _ in s.batches(locs, (224, 224), batch_size=2, num_workers=workers):
        pass
    before = _vm_peak_mib()
    counts = [a.shape[0] for a, _ in s.batches(locs, (224, 224), batch_size=40000,
                                               num_workers=workers, prefetch_factor=4)]
    grown = _vm_peak_mib() - before
    s.close()
    print(json.dumps({"grown": grown, "counts": counts}))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_buffers_sized_by_the_patches_there_are(paths, lib, num_workers):
    """Batch buffers hold min(batch_size, n) patches: batch_size 40000 over 2 locations of
    224 x 224 used to reserve 40000 patches (5.9 GB) per buffer. Measured as the growth of the
    child's peak address space (VmPeak: malloc'd memory never touched does not show in RSS),
    against a bound far below one such buffer; one child per case, as VmPeak never falls."""
    out = run_child("_few_locations_child", paths("generic-jpeg-ycbcr-128tiles.tiff"),
                    num_workers)
    assert out["counts"] == [2], out
    assert out["grown"] < 512, out


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("level", [0, 1])
def test_tile_error_reaches_its_batch(damaged, lib, num_workers, level):
    """Batches whose patches need a damaged tile fail with that tile's status and a message
    naming the level and tile; every other batch (before, between and after them, also those
    sharing good tiles with a failed one) succeeds and equals read_region on the damaged
    file; iteration goes on to the end; the same holds a second time on the same slide."""
    s = T.open_slide(damaged)
    try:
        across = 8 if level == 0 else 4
        bad_tiles = [13, 30] if level == 0 else [5]
        ds = s.level_info(level).downsample
        size = (40, 30)
        pw, ph = size
        groups = []   # batches of 3 level-coordinate patches, alternately good and bad
        for k in bad_tiles:
            bx, by = tile_box(k, across)
            nx, ny = tile_box(k + 1, across)        # the good tile right of the damaged one
            ax, ay = tile_box(k - across, across)   # the good tile above it
            groups += [
                [(nx + 10, ny + 10), (ax + 5, ay + 7), (nx + 60, ny + 70)],
                [(nx + 20, ny + 20), (bx + 60, by + 60), (ax + 1, ay + 1)],        # inside
                [(nx + 30, ny + 5), (ax + 50, ay + 80), (nx + 1, ny + 1)],
                [(bx + 127, by + 5), (nx + 60, ny + 60), (ax + 20, ay + 20)],      # 1 column
                [(nx, ny + 97), (ax, ay + 97), (ax + 88, ay + 98)],
                [(bx + 5, by + 127), (nx + 5, ny + 90), (ax + 90, ay + 5)],        # 1 row
                [(bx - 39, by - 29), (nx + 40, ny + 40), (bx - 40, by + 20)],      # 1 pixel
            ]
        groups.append([(-10, -10), (3, 3)])   # a short last batch
        lvl = [p for g in groups for p in g]
        locs = np.array([(level0_of(x, ds), level0_of(y, ds)) for x, y in lvl], np.int64)
        boxes = {k: tile_box(k, across) for k in bad_tiles}
        # which tile each batch must fail on (None: it must succeed)
        expect = []
        for g in groups:
            hit = [k for k in bad_tiles if any(touches(x, y, pw, ph, boxes[k]) for x, y in g)]
            assert len(hit) <= 1
            expect.append(hit[0] if hit else None)
        assert expect == [e for k in bad_tiles for e in (None, k, None, k, None, k, k)] + [None]
        # read_region on the damaged file agrees with the geometry, patch by patch
        single = {}
        for k in bad_tiles:
            bx, by = boxes[k]
            st, msg = s.read_into(np.empty(8 * 8 * 3, np.uint8), level0_of(bx + 60, ds),
                                  level0_of(by + 60, ds), level, 8, 8)
            assert st in (T.E_IO, T.E_FORMAT, T.E_CORRUPT), (k, st, msg)
            assert "level %d, tile %d" % (level, k) in msg, msg
            single[k] = st
        refs = Refs(s, level, locs)
        for i, (x, y) in enumerate(lvl):
            needs = any(touches(x, y, pw, ph, boxes[k]) for k in bad_tiles)
            try:
                refs.get(i, size, 3, None)
                assert not needs, "read_region at level (%d, %d) needs a damaged tile but " \
                    "succeeded" % (x, y)
            except T.TesseraError:
                assert needs, "read_region at level (%d, %d) failed" % (x, y)
        for rnd in range(2):
            with s.batches(locs, size, level, batch_size=3, num_workers=num_workers,
                           prefetch_factor=3) as b:
                assert len(b) == len(groups)
                results = []
                for _ in range(len(groups) + 3):
                    try:
                        arr, idx = next(b)
                        results.append(("ok", arr, idx))
                    except T.TesseraError as e:
                        results.append(("error", e.status, e.message))
                    except StopIteration:
                        break
            assert len(results) == len(groups), "%d results for %d batches" % (len(results),
                                                                                len(groups))
            for bn, (res, want) in enumerate(zip(results, expect)):
                if want is None:
                    assert res[0] == "ok", "batch %d failed: %s" % (bn, res[1:])
                    assert list(res[2]) == list(range(3 * bn, 3 * bn + len(groups[bn])))
                    m = check_batch_against_refs("batch %d" % bn, res[1], res[2], refs, size, 3,
                                                 None)
                    assert m is None, m
                else:
                    assert res[0] == "error", "batch %d needs damaged tile %d but came out" % (
                        bn, want)
                    assert res[1] == single[want], (bn, res[1], single[want], res[2])
                    assert "level %d, tile %d" % (level, want) in res[2], res[2]
    finally:
        s.close()


def test_iterators_in_threads(paths, lib):
    """Iterators on the same slide consumed from four threads at once (each its own, with
    workers), while a fifth thread reads regions, give the same batches as one alone."""
    import threading
    s = open_cached(paths("lzw-pred-pyr"))
    rng = random.Random(17)
    locs = np.array([(rng.randrange(-60, 1050), rng.randrange(-60, 790)) for _ in range(40)],
                    np.int64)
    size = (45, 35)
    refs = Refs(s, 0, locs)
    for i in range(len(locs)):
        refs.get(i, size, 3, None)
    errors = []

    def consume(t):
        try:
            with s.batches(locs, size, 0, batch_size=1 + t, num_workers=t % 3, shuffle=t % 2,
                           seed=t, prefetch_factor=1 + t % 3) as b:
                seen = []
                for arr, idx in b:
                    m = check_batch_against_refs("thread %d" % t, arr, idx, refs, size, 3, None)
                    if m:
                        errors.append(m)
                        return
                    seen += [int(i) for i in idx]
                if sorted(seen) != list(range(len(locs))):
                    errors.append("thread %d saw %r" % (t, seen))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append("thread %d: %r" % (t, e))

    def regions():
        try:
            for i in range(len(locs)):
                x, y = (int(v) for v in locs[i])
                if not np.array_equal(s.read_region(x, y, 0, *size), refs.get(i, size, 3, None)):
                    errors.append("read_region at %r differs while iterators run" % ((x, y),))
        except Exception as e:  # noqa: BLE001
            errors.append("regions: %r" % e)

    threads = [threading.Thread(target=consume, args=(t,)) for t in range(4)]
    threads.append(threading.Thread(target=regions))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a thread did not finish within 120 s"
    assert not errors, errors[:5]


# --- raw batches held, released late, and destroy at random points ---------------------------

def run_child(fn, *args, timeout=120):
    """Runs test_batch.fn(*args) in a child process (a crash there is a failed test, not a
    dead pytest; a hang is a failure after `timeout` seconds); returns the JSON object it
    prints last."""
    code = "import sys; sys.path.insert(0, %r); import test_batch; test_batch.%s(*%r)" % (
        HERE, fn, args)
    try:
        r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=timeout,
                           cwd=HERE)
    except subprocess.TimeoutExpired:
        raise AssertionError("%s%r hung (no exit within %d s)" % (fn, args, timeout))
    assert r.returncode == 0, "%s%r: child exited %d:\n%s" % (fn, args, r.returncode,
                                                            r.stderr[-4000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _held_child(path):
    """Run in a child process by test_held_batches_stay_valid."""
    s = T.open_slide(path)
    rng = random.Random(3)
    locs = np.array([(rng.randrange(-100, 1100), rng.randrange(-100, 800)) for _ in range(61)],
                    np.int64)
    size = (70, 50)
    refs = Refs(s, 0, locs)
    checked = 0
    for nw, pf in ((0, 1), (2, 3), (4, 1)):
        it = s.batch_iter(locs, size, 0, batch_size=4, num_workers=nw, prefetch_factor=pf)
        held = []
        n = 0
        while True:
            st, msg, b = it.next_raw()
            assert st == T.OK, msg
            if b is None:
                break
            held.append(b)
            n += 1
            if n % 5 == 0:   # give back some, out of order
                for h in (held.pop(1), held.pop(0)):
                    m = check_batch_against_refs("before release", h.view(), h.indices(), refs,
                                                 size, 3, None)
                    assert m is None, m
                    checked += 1
                    h.release()
        assert n == it.length()
        it.destroy()
        rng.shuffle(held)
        for h in held:
            m = check_batch_against_refs("held past destroy (num_workers %d)" % nw, h.view(),
                                         h.indices(), refs, size, 3, None)
            assert m is None, m
            checked += 1
            h.release()
    s.close()
    print(json.dumps({"checked": checked}))


def test_held_batches_stay_valid(paths, lib):
    """Batches held unreleased while the iteration goes on keep their pixels (buffers are only
    reused once released); released out of order, their buffers serve later batches right; a
    batch may be released after its iterator is destroyed."""
    out = run_child("_held_child", paths("lzw-pred-pyr"))
    assert out["checked"] == 3 * 16, out


def _destroy_child(path, nseeds):
    """Run in a child process: for each seed, an iterator (mostly num_workers 2, prefetch 3)
    is advanced a random number of batches, some held, then destroyed; the held ones must
    still show read_region's pixels, and are released after the destroy."""
    s = T.open_slide(path)
    info = s.level_info(0)
    checked = 0
    for seed in range(nseeds):
        rng = random.Random(seed)
        n = rng.randrange(0, 60)
        size = (rng.randrange(1, 300), rng.randrange(1, 300))
        locs = np.array([(rng.randrange(-200, info.width + 50),
                          rng.randrange(-200, info.height + 50)) for _ in range(n)],
                        np.int64).reshape(-1, 2)
        nw, pf = (2, 3) if seed % 4 else rng.choice([(4, 1), (1, 2), (2, 1), (4, 3)])
        bs = rng.randrange(1, 9)
        shuffle = rng.randrange(2)
        ch = rng.choice([3, 4])
        it = s.batch_iter(locs, size, 0, batch_size=bs, num_workers=nw, prefetch_factor=pf,
                          shuffle=shuffle, seed=seed, channels=ch)
        length = it.length()
        k = rng.randrange(0, length + 2)
        held = []
        for _ in range(k):
            st, msg, b = it.next_raw()
            assert st == T.OK, msg
            if b is None:
                break
            if rng.random() < 0.5:
                held.append(b)
            else:
                b.release()
            if held and rng.random() < 0.2:
                held.pop(rng.randrange(len(held))).release()
        it.destroy()
        refs = Refs(s, 0, locs)
        rng.shuffle(held)
        for b in held:
            m = check_batch_against_refs("seed %d held batch %d" % (seed, b.number), b.view(),
                                         b.indices(), refs, size, ch, None)
            assert m is None, m
            checked += 1
            b.release()
    s.close()
    print(json.dumps({"checked": checked}))


@pytest.mark.parametrize("name", ["lzw-pred-pyr", "jpeg-t128-pyr"])
def test_destroy_at_random_points(paths, lib, name):
    """Destroying iterators at random points (before any batch, mid-stream with batches
    decoding ahead, after the end) with batches held and released afterwards neither crashes
    nor hangs, and the held batches keep their pixels."""
    out = run_child("_destroy_child", paths(name), 40)
    assert out["checked"] > 20, out
