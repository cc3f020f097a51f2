"""Damaged files, made at test time from small valid vips-written tiled TIFFs (JPEG and
deflate, three pyramid levels, laid out again with the directories first so truncation can hit
tile data while the directories stay whole).

Each case runs through the C API in a child process (a crash is a failure, not a dead pytest)
and through the `tessera` command with a timeout (a hang is a failure). Opening must fail with
a status and a message, or, where the damage is in tile data, the reads that need the damaged
tiles must fail cleanly (buffer left as fill, alpha 0) while the other tiles still read right
on the same handle.
"""

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

import tessera_ctypes as T
import tiffbytes as tb
import wsi_fixtures as F
import wsi_refs as R

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "tessera_probe.py")
PYTHON = sys.executable or "/usr/bin/python3"
TIMEOUT = 30
CLI_TIMEOUT = 20
TILE = 256
BASE_W, BASE_H = 768, 512          # 3 x 2 tiles of 256 at level 0; levels 384x256, 192x128

BASE_ARGS = {
    "jpeg": ["--tile", "--tile-width", "256", "--tile-height", "256", "--compression", "jpeg",
             "--Q", "80", "--pyramid"],
    "deflate": ["--tile", "--tile-width", "256", "--tile-height", "256", "--compression",
                "deflate", "--pyramid"],
}

FMT = {T.E_FORMAT}
TILE_BAD = {T.E_FORMAT, T.E_CORRUPT, T.E_IO}


def tile_rect(k, level=0):
    """Level-0 rectangle (x, y, w, h, level) of tile k of level 0 (3 tiles a row)."""
    return (TILE * (k % 3), TILE * (k // 3), TILE, TILE, level)


@dataclass
class Expect:
    kind: str                      # "open": open fails; "tile": open fails or bad reads fail;
    #                                "tile-open-ok": open succeeds and bad reads fail;
    #                                "either": open fails, or it succeeds and good reads are right
    statuses: set
    bad: list = field(default_factory=list)     # (x, y, w, h, level) that must fail
    good: list = field(default_factory=list)    # (x, y, w, h, level) that must read right
    message_contains: str = ""
    # damage no decoder can see: a bad read may succeed if its pixels equal libvips' decode
    # of the same damaged file
    bad_may_match_vips: bool = False

    def cli_region(self):
        """(x, y, level) of the 300 x 300 region `tessera read` is asked for."""
        if self.bad:
            return self.bad[0][0], self.bad[0][1], self.bad[0][4]
        return 0, 0, 0


class Base:
    def __init__(self, directory, slides, name):
        self.name = name
        src = slides.source("rgb1k")
        crop = os.path.join(directory, "base-src.v")
        if not os.path.exists(crop):
            F.run(["vips", "crop", src, crop, 0, 0, BASE_W, BASE_H])
        self.orig = os.path.join(directory, "base-%s-vips.tif" % name)
        F.run(["vips", "tiffsave", crop, self.orig] + BASE_ARGS[name])
        with open(self.orig, "rb") as f:
            self.data = tb.relayout_directories_first(f.read())
        self.path = os.path.join(directory, "base-%s.tif" % name)
        with open(self.path, "wb") as f:
            f.write(self.data)
        self.t = tb.Tiff(self.data)
        self.spans = tb.tile_spans(self.t, 0)
        assert len(self.t.ifds) == 3 and len(self.spans) == 6

    def level0(self):
        return R.vips_decode(self.orig, ["--page", "0"])


def _jpeg_marker_pos(b, k, marker):
    off, cnt = b.spans[k]
    i = b.data.find(marker, off, off + cnt)
    assert i >= 0, "marker %r not in tile %d" % (marker, k)
    return i


def _overwrite(data, pos, new):
    return data[:pos] + new + data[pos + len(new):]


def _all_ifds(b, fn):
    d = b.data
    for i in range(len(b.t.ifds)):
        d = fn(d, i)
    return d


GOOD_ALL = [tile_rect(k) for k in range(6)]


def _cases():
    """name -> (bases, builder(base) -> (bytes or ("path", p), Expect))."""
    c = {}

    def case(name, bases=("jpeg", "deflate")):
        def deco(fn):
            c[name] = (bases, fn)
            return fn
        return deco

    @case("trunc-in-header")
    def _(b):
        return b.data[:5], Expect("open", FMT)

    @case("trunc-after-header")
    def _(b):
        return b.data[:8], Expect("open", FMT)

    @case("trunc-in-first-ifd")
    def _(b):
        return b.data[:b.t.ifds[0].offset + 2 + 12 * 4 + 5], Expect("open", FMT)

    @case("trunc-in-tile-offsets")
    def _(b):
        e = b.t.entry(0, "TileOffsets")
        return b.data[:e.data_pos + 10], Expect("open", FMT)

    @case("trunc-in-tile-data")
    def _(b):
        off, cnt = b.spans[3]
        return b.data[:off + cnt // 2], Expect("tile", TILE_BAD, bad=[tile_rect(3), tile_rect(5)],
                                               good=[tile_rect(k) for k in (0, 1, 2)])

    @case("trunc-before-last-tile-end")
    def _(b):
        off, cnt = b.spans[5]
        return b.data[:off + cnt - 1], Expect("tile", TILE_BAD, bad=[tile_rect(5)],
                                              good=[tile_rect(k) for k in range(5)])

    @case("trunc-last-byte")
    def _(b):
        return b.data[:-1], Expect("tile", TILE_BAD, bad=[(0, 0, 192, 128, 2)], good=GOOD_ALL)

    @case("tile-offset-past-eof")
    def _(b):
        d = tb.patch_value(b.data, b.t, 0, "TileOffsets", 2, len(b.data) + 4096)
        return d, Expect("tile", TILE_BAD, bad=[tile_rect(2)],
                         good=[tile_rect(k) for k in (0, 1, 3, 4, 5)])

    @case("tile-offset-fffffff0")
    def _(b):
        d = tb.patch_value(b.data, b.t, 0, "TileOffsets", 2, 0xFFFFFFF0)
        return d, Expect("tile", TILE_BAD, bad=[tile_rect(2)],
                         good=[tile_rect(k) for k in (0, 1, 3, 4, 5)])

    # (offset 0 or byte count 0 is how sparse files mark a missing tile, so it is not here)

    @case("bytecount-past-eof")
    def _(b):
        d = tb.patch_value(b.data, b.t, 0, "TileByteCounts", 4, len(b.data))
        return d, Expect("tile", TILE_BAD, bad=[tile_rect(4)],
                         good=[tile_rect(k) for k in (0, 1, 2, 3, 5)])

    @case("bytecount-ffffffff")
    def _(b):
        d = tb.patch_value(b.data, b.t, 0, "TileByteCounts", 4, 0xFFFFFFFF)
        return d, Expect("tile", TILE_BAD | {T.E_LIMIT}, bad=[tile_rect(4)],
                         good=[tile_rect(k) for k in (0, 1, 2, 3, 5)])

    @case("width-zero")
    def _(b):
        return tb.patch_entry(b.data, b.t, 0, "ImageWidth", 3, 1, 0), Expect("open", FMT)

    @case("height-zero")
    def _(b):
        return tb.patch_entry(b.data, b.t, 0, "ImageLength", 3, 1, 0), Expect("open", FMT)

    @case("size-2e31-1")
    def _(b):
        d = tb.patch_entry(b.data, b.t, 0, "ImageWidth", 4, 1, 0x7FFFFFFF)
        d = tb.patch_entry(d, b.t, 0, "ImageLength", 4, 1, 0x7FFFFFFF)
        return d, Expect("open", {T.E_LIMIT, T.E_FORMAT})

    @case("tiles-2e40")
    def _(b):
        # 2^24 x 2^24 pixels in 16 x 16 tiles: 2^40 tiles, but six tile offsets
        d = tb.patch_entry(b.data, b.t, 0, "ImageWidth", 4, 1, 1 << 24)
        d = tb.patch_entry(d, b.t, 0, "ImageLength", 4, 1, 1 << 24)
        d = tb.patch_entry(d, b.t, 0, "TileWidth", 3, 1, 16)
        d = tb.patch_entry(d, b.t, 0, "TileLength", 3, 1, 16)
        return d, Expect("open", {T.E_LIMIT, T.E_FORMAT})

    @case("tile-offsets-count-7fffffff")
    def _(b):
        # arrays that claim 2^31 - 1 entries running far past the end of the file; a reader
        # may refuse the file or use the six entries the image needs (libtiff does)
        e = b.t.entry(0, "TileOffsets")
        d = tb.patch_entry(b.data, b.t, 0, "TileOffsets", e.type, 0x7FFFFFFF, e.data_pos)
        e = b.t.entry(0, "TileByteCounts")
        d = tb.patch_entry(d, b.t, 0, "TileByteCounts", e.type, 0x7FFFFFFF, e.data_pos)
        return d, Expect("either", {T.E_LIMIT, T.E_FORMAT}, good=GOOD_ALL)

    @case("tile-width-zero")
    def _(b):
        return tb.patch_entry(b.data, b.t, 0, "TileWidth", 3, 1, 0), Expect("open", FMT)

    @case("tile-size-2e30")
    def _(b):
        d = tb.patch_entry(b.data, b.t, 0, "TileWidth", 4, 1, 1 << 30)
        d = tb.patch_entry(d, b.t, 0, "TileLength", 4, 1, 1 << 30)
        return d, Expect("tile", {T.E_LIMIT, T.E_FORMAT, T.E_CORRUPT}, bad=[tile_rect(0)])

    @case("ifd-loop-self")
    def _(b):
        return tb.patch_next(b.data, b.t, 0, b.t.ifds[0].offset), Expect("open", FMT)

    @case("ifd-loop-to-first")
    def _(b):
        return tb.patch_next(b.data, b.t, 2, b.t.ifds[0].offset), Expect("open", FMT)

    @case("ifd-loop-last-self")
    def _(b):
        return tb.patch_next(b.data, b.t, 2, b.t.ifds[2].offset), Expect("open", FMT)

    @case("compression-34712")
    def _(b):
        d = _all_ifds(b, lambda d, i: tb.patch_entry(d, b.t, i, "Compression", 3, 1, 34712))
        return d, Expect("tile", {T.E_UNSUPPORTED}, bad=[tile_rect(0)],
                         message_contains="unsupported compression 34712")

    @case("first-ifd-offset-zero")
    def _(b):
        return b.data[:4] + struct.pack("<I", 0) + b.data[8:], Expect("open", FMT)

    @case("first-ifd-offset-past-eof")
    def _(b):
        return b.data[:4] + struct.pack("<I", len(b.data) + 64) + b.data[8:], Expect("open", FMT)

    @case("bigtiff-version-classic-body")
    def _(b):
        return b.data[:2] + struct.pack("<H", 43) + b.data[4:], Expect("open", FMT)

    # --- tile data that cannot be decoded ---

    def corrupt_tile(name, fn, bases, statuses=frozenset({T.E_CORRUPT})):
        @case(name, bases)
        def _(b):
            return fn(b), Expect("tile-open-ok", set(statuses), bad=[tile_rect(4)],
                                 good=[tile_rect(k) for k in (0, 1, 2, 3, 5)])

    def mid(b, k):
        off, cnt = b.spans[k]
        return off + cnt // 2

    corrupt_tile("jpeg-entropy-eoi", lambda b: _overwrite(b.data, mid(b, 4), b"\xff\xd9" * 32),
                 ("jpeg",))
    corrupt_tile("jpeg-soi", lambda b: _overwrite(b.data, b.spans[4][0], b"\x00\x00"), ("jpeg",))
    corrupt_tile("jpeg-sof", lambda b: _overwrite(b.data, _jpeg_marker_pos(b, 4, b"\xff\xc0"),
                                                  b"\x00\x00"), ("jpeg",))
    corrupt_tile("jpeg-sos", lambda b: _overwrite(b.data, _jpeg_marker_pos(b, 4, b"\xff\xda"),
                                                  b"\x00\x00"), ("jpeg",))
    corrupt_tile("deflate-zlib-header", lambda b: _overwrite(b.data, b.spans[4][0], b"\x00\x00"),
                 ("deflate",))
    corrupt_tile("deflate-adler32", lambda b: _overwrite(
        b.data, sum(b.spans[4]) - 4, bytes(x ^ 0x5A for x in b.data[sum(b.spans[4]) - 4:
                                                                    sum(b.spans[4])])),
        ("deflate",))

    @case("deflate-garbage", ("deflate",))
    def _(b):
        # 64 bytes of 0xff inside the stream: zlib (libvips, OpenSlide) decodes it without a
        # word; a reader that sees it must fail, one that does not must give libvips' pixels
        return _overwrite(b.data, mid(b, 4), b"\xff" * 64), Expect(
            "tile-open-ok", {T.E_CORRUPT}, bad=[tile_rect(4)],
            good=[tile_rect(k) for k in (0, 1, 2, 3, 5)], bad_may_match_vips=True)
    corrupt_tile("deflate-short-stream", lambda b: tb.patch_value(
        b.data, b.t, 0, "TileByteCounts", 4, b.spans[4][1] // 2), ("deflate",))

    @case("jpeg-tables-dqt", ("jpeg",))
    def _(b):
        e = b.t.entry(0, "JPEGTables")
        i = b.data.find(b"\xff\xdb", e.data_pos, e.data_pos + e.count)
        return _overwrite(b.data, i, b"\x00\x00"), Expect(
            "tile", {T.E_CORRUPT, T.E_FORMAT}, bad=[tile_rect(0), tile_rect(4)])

    # --- not TIFF files at all ---

    @case("not-a-tiff", ("file",))
    def _(b):
        return b"This is a text file, not a TIFF.\n" * 40, Expect("open", FMT)

    @case("png-file", ("file",))
    def _(b):
        import io
        from PIL import Image
        bio = io.BytesIO()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bio, "PNG")
        return bio.getvalue(), Expect("open", FMT)

    @case("empty-file", ("file",))
    def _(b):
        return b"", Expect("open", FMT)

    @case("directory", ("file",))
    def _(b):
        return ("dir", None), Expect("open", {T.E_IO, T.E_FORMAT, T.E_ARGUMENT})

    @case("missing-file", ("file",))
    def _(b):
        return ("missing", None), Expect("open", {T.E_IO})

    return c


CASES = _cases()
CASE_IDS = ["%s-%s" % (base, name) for name, (bases, _) in CASES.items() for base in bases]


class Damaged:
    def __init__(self, directory, slides):
        self.dir = directory
        self.slides = slides
        self.bases = {}
        self.made = {}
        self.probes = {}

    def base(self, name):
        if name not in self.bases:
            self.bases[name] = Base(self.dir, self.slides, name)
        return self.bases[name]

    def make(self, case_id):
        """(path, Expect, base or None) of a case, writing its file once."""
        if case_id in self.made:
            return self.made[case_id]
        base_name, name = case_id.split("-", 1)
        b = self.base(base_name) if base_name != "file" else None
        content, expect = CASES[name][1](b)
        d = os.path.join(self.dir, case_id)
        os.makedirs(d, exist_ok=True)
        if isinstance(content, tuple):
            kind = content[0]
            path = os.path.join(d, "a-directory.tif" if kind == "dir" else "no-such-file.tif")
            if kind == "dir":
                os.makedirs(path, exist_ok=True)
        else:
            path = os.path.join(d, "damaged-%s.tif" % case_id)
            with open(path, "wb") as f:
                f.write(content)
        self.made[case_id] = (path, expect, b)
        return self.made[case_id]

    def probe(self, case_id):
        """Runs the C API on the case in a child process; returns its JSON answer with the
        reads split into "bad", "good", "bad_again" and "cli"."""
        if case_id in self.probes:
            return self.probes[case_id]
        path, expect, b = self.make(case_id)
        d = os.path.dirname(path)
        reads = []
        # bad reads first, then good ones: the handle must survive the errors
        for i, (x, y, w, h, lv) in enumerate(expect.bad):
            reads.append(dict(x=x, y=y, level=lv, w=w, h=h, channels=4, fill=77,
                              save=os.path.join(d, "bad-%d.npy" % i)))
        for i, (x, y, w, h, lv) in enumerate(expect.good):
            reads.append(dict(x=x, y=y, level=lv, w=w, h=h, channels=3, fill=77,
                              save=os.path.join(d, "good-%d.npy" % i)))
        for x, y, w, h, lv in expect.bad[:1]:
            reads.append(dict(x=x, y=y, level=lv, w=w, h=h, channels=3, fill=77,
                              save=os.path.join(d, "bad-again.npy")))
        cx, cy, clv = expect.cli_region()
        reads.append(dict(x=cx, y=cy, level=clv, w=300, h=300, channels=3, fill=-1))
        job = {"path": path, "reads": reads}
        try:
            r = subprocess.run([PYTHON, PROBE, json.dumps(job)], capture_output=True, text=True,
                               timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError("the C API hung on %s (no answer within %d s)" % (case_id,
                                                                                  TIMEOUT))
        assert r.returncode == 0, (
            "the C API crashed or failed on %s: exit %d\nstderr: %s" % (
                case_id, r.returncode, r.stderr[-3000:]))
        out = json.loads(r.stdout)
        if out["open"]["status"] == T.OK:
            rs = out["reads"]
            nb, ng = len(expect.bad), len(expect.good)
            assert len(rs) == nb + ng + min(nb, 1) + 1
            out["bad"], out["good"] = rs[:nb], rs[nb:nb + ng]
            out["bad_again"], out["cli"] = rs[nb + ng:-1], rs[-1]
        self.probes[case_id] = out
        return out


@pytest.fixture(scope="session")
def damaged(tmp_path_factory, slides):
    return Damaged(str(tmp_path_factory.mktemp("damaged")), slides)


def test_bases_are_valid(damaged, lib):
    """The undamaged bases (after the relayout) read right, so every failure below comes from
    the damage."""
    for name in BASE_ARGS:
        b = damaged.base(name)
        ref = b.level0()
        with T.open_slide(b.path) as ts:
            assert ts.level_count == 3
            got = ts.read_region(0, 0, 0, BASE_W, BASE_H)
        m = R.describe_mismatch(got, R.to_rgb(ref), what="base %s" % name)
        assert m is None, m


def _check_failed_read(case_id, expect, rect, r, statuses):
    assert r["status"] in expect.statuses, (
        "%s: read of %r: status %s (%d), expected one of %s; message %r" % (
            case_id, rect, T.STATUS_NAMES.get(r["status"]), r["status"], statuses, r["message"]))
    assert r["message"].strip(), "read of %r failed with an empty message" % (rect,)
    assert expect.message_contains in r["message"], (r["message"], expect.message_contains)
    assert r["buffer_is_fill"], ("read of %r failed but left pixels other than the fill (and "
                                 "alpha 0) in the buffer" % (rect,))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_damaged_c_api(damaged, lib, case_id):
    path, expect, b = damaged.make(case_id)
    out = damaged.probe(case_id)
    st, msg = out["open"]["status"], out["open"]["message"]
    statuses = sorted(T.STATUS_NAMES[s] for s in expect.statuses)
    if expect.kind == "open":
        assert st != T.OK, "opening %s succeeded: %r" % (case_id, out.get("levels"))
    if expect.kind == "tile-open-ok":
        assert st == T.OK, "opening %s failed: %d %s" % (case_id, st, msg)
    if st != T.OK:
        assert st in expect.statuses, "open status %s (%d), expected one of %s; message %r" % (
            T.STATUS_NAMES.get(st), st, statuses, msg)
        assert msg and msg.strip(), "open failed with an empty message"
        assert expect.message_contains in msg, "message %r lacks %r" % (msg, expect.message_contains)
        return
    damaged_ref = None
    for rect, r in zip(expect.bad + expect.bad[:1], out["bad"] + out["bad_again"]):
        if r["status"] == T.OK and expect.bad_may_match_vips and r.get("saved"):
            if damaged_ref is None:
                damaged_ref = R.vips_decode(path, ["--page", "0"])
            x, y, w, h, lv = rect
            exp, inside = R.crop_fill(damaged_ref, x, y, w, h, 77)
            got = np.load(r["saved"])
            m = R.describe_mismatch(got[..., :3], R.to_rgb(exp), what="%s: damaged region %r "
                                    "read without an error, but not as libvips decodes it"
                                    % (case_id, rect), origin=(x, y))
            assert m is None, m
            continue
        assert r["status"] != T.OK, "reading damaged region %r of %s succeeded" % (rect, case_id)
        _check_failed_read(case_id, expect, rect, r, statuses)
    if expect.bad and not expect.bad_may_match_vips:
        assert out["cli"]["status"] != T.OK, "the 300x300 region over the damage read fine"
    if expect.good:
        ref = b.level0()
        for rect, r in zip(expect.good, out["good"]):
            assert r["status"] == T.OK, "undamaged region %r of %s failed after the error: %s" % (
                rect, case_id, r["message"])
            got = np.load(r["saved"])
            x, y, w, h, lv = rect
            exp, _ = R.crop_fill(ref, x, y, w, h, 77)
            m = R.describe_mismatch(got, R.to_rgb(exp), what="%s good region %r" % (case_id, rect),
                                    origin=(x, y))
            assert m is None, m


# --- the command line ---------------------------------------------------------------------

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error:", "ERROR: ", "SUMMARY: ")

CLIS = [("cli", None)]
if os.environ.get("TESSERA_CLI_ASAN"):
    CLIS.append(("asan", os.environ["TESSERA_CLI_ASAN"]))

CLI_CASES = ["%s-%s-%s" % (which, cmd, cid) for which, _ in CLIS for cmd in ("info", "read")
             for cid in CASE_IDS]


def run_cli(exe, args, asan, cwd, timeout=CLI_TIMEOUT):
    env = dict(os.environ)
    if asan:
        env["ASAN_OPTIONS"] = "detect_leaks=1:exitcode=99"
        env["UBSAN_OPTIONS"] = "halt_on_error=1:exitcode=98:print_stacktrace=1"
    try:
        return subprocess.run([exe] + args, capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError("tessera %s hung (no exit within %d s)" % (" ".join(args), timeout))


@pytest.mark.parametrize("cli_case", CLI_CASES)
def test_damaged_cli(damaged, lib, cli_case, tmp_path):
    which, cmd, case_id = cli_case.split("-", 2)
    exe = dict(CLIS)[which] or F.cli_path()
    assert os.path.isfile(exe), "tessera command not found: %s" % exe
    path, expect, b = damaged.make(case_id)
    out = damaged.probe(case_id)
    opened = out["open"]["status"] == T.OK
    outdir = tmp_path / "out"
    outdir.mkdir()
    if cmd == "info":
        args = ["info", path]
        want = 0 if opened else 1
    else:
        x, y, lv = expect.cli_region()
        args = ["read", path, "--location", "%d,%d" % (x, y), "--size", "300,300",
                "--output", str(outdir / "out.png")]
        if lv:
            args += ["--level", str(lv)]
        # the command fails exactly when the C API fails on the same region
        want = 1 if not opened or out["cli"]["status"] != T.OK else 0
    r = run_cli(exe, args, which == "asan", str(tmp_path))
    desc = "tessera %s -> exit %d\nstderr: %r" % (" ".join(args), r.returncode, r.stderr[-3000:])
    assert r.returncode >= 0, "killed by signal %d: %s" % (-r.returncode, desc)
    for marker in SANITIZER_MARKERS[:4]:
        assert marker not in r.stderr, "sanitizer report: " + desc
    assert r.returncode == want, desc
    if want == 1:
        lines = r.stderr.splitlines()
        assert len(lines) == 1, "expected exactly one line on stderr: " + desc
        name = os.path.basename(path)
        assert name in lines[0], "the error line does not name the file %r: %s" % (name, desc)
    if cmd == "read":
        left = sorted(os.listdir(outdir))
        if want == 1:
            assert left == [], "files left behind after a failed read: %r" % left
        else:
            assert left == ["out.png"], left
