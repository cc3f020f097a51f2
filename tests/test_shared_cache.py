"""The shared-memory tile cache (TESSERA_CACHE_SHARED_MEMORY), across processes.

Reads through a shared cache equal reads without a cache (a pass that fills it, one that hits
it, one through a cache too small for most tiles) over generated fixtures and every real file,
with 3 and 4 channels. Forked children share the parent's segment; unrelated processes attach
to it by name, with its capacities, and share the tiles any of them caches: the statistics,
global to the segment, are worked out from each process's reads (a tile is cached at a
process's second miss of it: the first only leaves it in that process's ghost). The segment goes away when its last user detaches (a program that a user forks and
execs is no user). Names are checked, a foreign file of the same name is refused, segments
are listed and removed. A process killed (SIGKILL) while
it holds a shard's lock midway through publishing a tile, or while it is loading a tile that
others wait for, leaves the cache usable: the others carry on with correct pixels and
consistent statistics. One stopped holding a lock or loading costs the others a bounded wait,
one stopped in the middle of a hit costs them nothing; a maker killed halfway leaves a name
the next process heals; processes in different pid namespaces share one segment, and see
each other alive until killed.

Expected pixels are tessera's own reads made without a cache in the same test. The killed
processes stop at points chosen through the test-only hook TESSERA_TEST_CACHE_STALL
(POINT:N:PATH, read at tessera_cache_configure). Each test removes the segments it made; a
test that would hang is cut off by a watchdog and fails.
"""

import faulthandler
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

import tessera_ctypes as T
import wsi_fixtures as F
from conftest import needs_test_hooks

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable or "/usr/bin/python3"
SHM = "/dev/shm"
APERIO = "aperio-jpeg-CMU-1-Small-Region.svs"   # 2220 x 2967 in 240 x 240 JPEG tiles
SMALL = "generic-jpeg-ycbcr-128tiles.tiff"
WATCHDOG_S = 200            # a test still running after this long is stuck and fails ...
LAST_RESORT_S = 260         # ... or, stuck inside a C call, the whole run dies
PROCESS_TIMEOUT_S = 120     # most a helper process may take (a hang fails, not blocks)


def shm_path(name):
    return os.path.join(SHM, name.lstrip("/"))


def segment_exists(name):
    return os.path.exists(shm_path(name))


class Segments:
    """Names and helper processes of one test, cleaned up after it."""

    def __init__(self):
        self.names = []
        self.procs = []

    def name(self, tag):
        n = "tessera-pytest-%d-%s" % (os.getpid(), tag)
        self.names.append(n)
        return n

    def add(self, name):
        self.names.append(name.lstrip("/"))
        return name

    def popen(self, *args, **kw):
        p = subprocess.Popen(*args, **kw)
        self.procs.append(p)
        return p


class Stuck(Exception):
    pass


def _stuck(signum, frame):
    raise Stuck("the test is stuck (%d s)" % WATCHDOG_S)


@pytest.fixture(autouse=True)
def shm():
    # SIGALRM interrupts waits in Python (a helper's pipe, a join); a thread stuck in the
    # library is cut off by faulthandler, which ends the run (helpers die with it)
    old = signal.signal(signal.SIGALRM, _stuck)
    signal.alarm(WATCHDOG_S)
    faulthandler.dump_traceback_later(LAST_RESORT_S, exit=True)
    seg = Segments()
    try:
        yield seg
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        faulthandler.cancel_dump_traceback_later()
        for p in seg.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        T.configure_cache(T.CACHE_NONE)
        for n in seg.names:
            if segment_exists(n):
                try:
                    T.shared_cache_remove(n, force=True)
                except T.TesseraError:
                    os.unlink(shm_path(n))


def configure_shared(name, mib=64, items=0):
    T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=mib, item_capacity=items,
                      name=name)


def listed(name):
    """The list entry of a segment, or None."""
    want = "/" + name.lstrip("/")
    found = [i for i in T.shared_cache_list() if i["name"] == want]
    assert len(found) <= 1, found
    return found[0] if found else None


# --- exact tile accounting of single-region reads at level 0 --------------------------------

def tiles_of(region, info):
    """The tiles a level-0 region read looks up: one lookup per tile it overlaps."""
    x, y, w, h = region
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, info.width), min(y + h, info.height)
    if x0 >= x1 or y0 >= y1:
        return []
    tw, th = info.tile_width, info.tile_height
    return [(tx, ty) for ty in range(y0 // th, (y1 - 1) // th + 1)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1)]


def covers(region, tile, info):
    """Whether a region read paints at least three quarters of a tile's extent, which admits
    the tile at its first miss."""
    x, y, w, h = region
    tw, th = info.tile_width, info.tile_height
    tx0, ty0 = tile[0] * tw, tile[1] * th
    tx1, ty1 = min(tx0 + tw, info.width), min(ty0 + th, info.height)
    ow = min(x + w, tx1) - max(x, tx0)
    oh = min(y + h, ty1) - max(y, ty0)
    return ow * oh * 4 >= (tx1 - tx0) * (ty1 - ty0) * 3


def accounting(regions, info):
    """(accesses, distinct tiles) of reading `regions` once each."""
    touched = [t for r in regions for t in tiles_of(r, info)]
    return len(touched), len(set(touched))


def ghost_tiles(mib, info, items=0):
    """How many misses of level-0 tiles a process's ghost remembers, for a cache of `mib`
    MiB (and `items` items): a tenth of the capacity's worth (the tiles of these tests are
    all whole)."""
    tile = info.tile_width * info.tile_height * 3
    return min(mib << 20, items * tile if items else mib << 20) // 10 // tile


def admission(regions, info, mib, cached=None, items=0, per_process=False):
    """(hits, misses, cached tiles) of one process reading `regions` once each, in order,
    through a cache of `mib` MiB with room for every tile, which already holds `cached`: a
    tile held is a hit; one not held is a miss, and it is cached if the read covers most of
    it or this process missed it before with at most ghost_tiles(mib) other misses in
    between; otherwise its ghost remembers this miss. A per-process cache (with a slide just
    opened) also caches a tile at its first miss when the level is within a tenth of the
    capacity, or when the tiles of the level's last whole epoch of 32 misses lie in a
    rectangle within half of it."""
    window = ghost_tiles(mib, info, items)
    tile = info.tile_width * info.tile_height * 3
    across = -(-info.width // info.tile_width)
    down = -(-info.height // info.tile_height)
    level_small = across * down * tile <= (mib << 20) // 10 and \
        (not items or across * down <= items // 10)
    epoch, last = [], None
    cached, noted, hits, misses = set(cached or ()), {}, 0, 0
    for r in regions:
        for t in tiles_of(r, info):
            if t in cached:
                hits += 1
                continue
            small = per_process and (level_small or (
                last is not None and last * tile <= (mib << 20) // 2 and
                (not items or last <= items // 2)))
            if covers(r, t, info) or (t in noted and misses - noted[t] - 1 <= window) or small:
                cached.add(t)
            else:
                noted[t] = misses
            misses += 1
            epoch.append(t)
            if len(epoch) == 32:
                xs, ys = [x for x, _ in epoch], [y for _, y in epoch]
                last = (max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1)
                epoch = []
    return hits, misses, cached


def twice_by_one(reads, info):
    """The tiles that one of the processes reading `reads` (a list of region lists) reads
    twice, or that one read covers most of: the only ones any of them can cache."""
    out = set()
    for regions in reads:
        seen = set()
        for r in regions:
            for t in tiles_of(r, info):
                (out if t in seen or covers(r, t, info) else seen).add(t)
    return out


def random_regions(info, n, seed, size=320, margin=40):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = int(rng.integers(1, size)), int(rng.integers(1, size))
        out.append((int(rng.integers(-margin, info.width)), int(rng.integers(-margin, info.height)),
                    w, h))
    return out


def plain_reads(path, regions, channels=3):
    """Reads without a cache (the process's cache is set to none first)."""
    T.configure_cache(T.CACHE_NONE)
    with T.open_slide(path) as s:
        return [s.read_region(x, y, 0, w, h, channels=channels) for x, y, w, h in regions]


def tile_bytes(path):
    """Bytes one cached tile of level 0 takes, as a shared cache counts them (an unnamed
    segment, gone when this process configures no cache; read twice, the tile is cached)."""
    T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=64)
    with T.open_slide(path) as s:
        for _ in range(2):
            s.read_region(0, 0, 0, 1, 1)
    st = T.cache_stats()
    T.configure_cache(T.CACHE_NONE)
    assert st["items"] == 1 and st["bytes"] > 0, st
    return st["bytes"]


# --- helper processes ----------------------------------------------------------------------

WORKER = r"""
import ctypes, json, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the test
sys.path.insert(0, %(here)r)
import numpy as np
import tessera_ctypes as T
job = json.loads(sys.argv[1])

def say(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=job.get("mib", 64),
                  item_capacity=job.get("items", 0), name=job["name"])
say(event="attached", stats=T.cache_stats())
if job.get("wait"):
    sys.stdin.readline()
want = np.load(job["want"]) if job.get("want") else None
bad = []
with T.open_slide(job["path"]) as s:
    say(event="reading")
    for i, (x, y, w, h) in enumerate(job["regions"]):
        got = s.read_region(x, y, 0, w, h, channels=job.get("channels", 3))
        if want is not None and not np.array_equal(got, want["r%%d" %% i]):
            bad.append(i)
say(event="done", bad=bad, stats=T.cache_stats())
if job.get("hold"):
    sys.stdin.readline()
if job.get("detach"):
    T.configure_cache(T.CACHE_NONE)
say(event="exit")
""" % {"here": HERE}


def save_want(tmp_path, arrays, tag="want"):
    p = str(tmp_path / ("%s.npz" % tag))
    np.savez(p, **{"r%d" % i: a for i, a in enumerate(arrays)})
    return p


def worker(seg, name, path, regions, want=None, env=None, **job):
    """Starts a helper process that attaches to `name` and reads `regions` (comparing them
    with the arrays in the .npz file `want`); its stdout is one JSON line per event."""
    job.update(name=name, path=path, regions=[list(r) for r in regions], want=want)
    e = dict(os.environ)
    e.pop("TESSERA_TEST_CACHE_STALL", None)
    e.update(env or {})
    return seg.popen([PYTHON, "-c", WORKER, json.dumps(job)], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)


def next_event(p, event):
    """Reads the worker's lines up to the one of `event`; fails if it exits first."""
    while True:
        line = p.stdout.readline()
        if not line:
            p.wait(PROCESS_TIMEOUT_S)
            raise AssertionError("worker exited (%s) before %r: %s"
                                 % (p.returncode, event, p.stderr.read()[-3000:]))
        msg = json.loads(line)
        if msg["event"] == event:
            return msg


def finish(p, release=False):
    """Waits for a worker to end (telling it to go on first if `release`); returns its events
    by name, and fails unless it exited 0."""
    try:
        out, err = p.communicate("\n\n" if release else None, timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError("worker stuck for %d s: %s" % (PROCESS_TIMEOUT_S, err[-3000:]))
    assert p.returncode == 0, (p.returncode, err[-3000:])
    return {m["event"]: m for m in map(json.loads, out.splitlines())}


def wait_for_pid_file(path, p, timeout=60):
    """Waits until the stalling process `p` has written its pid into `path`."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().strip()
            if text == str(p.pid):
                return
        if p.poll() is not None:
            raise AssertionError("the process to stall exited (%s) without stalling: %s"
                                 % (p.returncode, p.stderr.read()[-3000:]))
        time.sleep(0.02)
    raise AssertionError("no pid in %s after %d s (it holds %r; pid %d)" % (path, timeout, text,
                                                                          p.pid))


def kill9(p):
    p.send_signal(signal.SIGKILL)
    p.wait(PROCESS_TIMEOUT_S)
    assert p.returncode == -signal.SIGKILL, p.returncode


# --- reads through a shared cache equal plain reads ----------------------------------------

SUBSET = {"jpeg-t240-pyr", "jpeg-q50-sub", "odd-jpeg-pyr", "deflate-pred-pyr", "lzw-nopred-pyr",
          "webp-lossy-pyr", "gray-jpeg-pyr", "rgba-deflate-pyr", "rgba-webp-lossless-pyr",
          "strip-jpeg", "tf-bigendian-deflate-pyr", "jp2k-pyr"}
CASES = [c for c in F.level_cases()
         if c[0] in SUBSET or F.SPECS[c[0]].kind == "testdata"]


def regions(w, h, rng):
    """A few regions of a level: whole tiles' worth, straddling, partly outside, tiny."""
    out = [(0, 0, min(w, 300), min(h, 200)), (w - 50, h - 40, 90, 70), (-20, -10, 60, 50)]
    for _ in range(5):
        rw, rh = int(rng.integers(1, 260)), int(rng.integers(1, 260))
        out.append((int(rng.integers(-40, w)), int(rng.integers(-40, h)), rw, rh))
    return out


@pytest.mark.parametrize("name,level", CASES, ids=["%s-L%d" % c for c in CASES])
def test_shared_cached_reads_equal_plain_reads(slides, shm, name, level):
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
            configure_shared(shm.name("c%d" % mib), mib=mib)
            seen = []
            for p in range(passes):
                for (r, c), w in want.items():
                    got = s.read_region(int(r[0] * ds), int(r[1] * ds), level, r[2], r[3],
                                        channels=c)
                    assert np.array_equal(got, w), (name, level, r, c, mib, p)
                st = T.cache_stats()
                assert st["type"] == T.CACHE_SHARED_MEMORY, st
                assert st["bytes"] <= st["memory_capacity"] == mib << 20, st
                seen.append(st)
            if mib == 256 and info.tile_width * info.tile_height * 4 < (8 << 20):
                first, second = seen
                # the first pass reads each region twice in a row (3 then 4 channels): each
                # tile it needs is cached at its first miss where the region covers most of it,
                # else at its second; the second pass hits
                hits, misses, cached = admission([r for r, c in want], info, 256)
                assert first["misses"] > 0 and first["evictions"] == 0, first
                assert (first["hits"], first["misses"], first["items"]) == \
                    (hits, misses, len(cached)), (first, hits, misses, len(cached))
                assert second["misses"] == first["misses"], (first, second)
                assert second["hits"] - first["hits"] == first["hits"] + first["misses"], \
                    (first, second)
                assert second["items"] == first["items"] and second["bytes"] == first["bytes"]


# --- forked children share the parent's segment --------------------------------------------

def _child(body):
    """Runs body() in a forked child, which exits with its result (never returns)."""
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        signal.alarm(PROCESS_TIMEOUT_S)
        code = body()
    except BaseException as e:  # noqa: BLE001 - report anything, never return to pytest
        try:
            sys.stderr.write("child %d: %r\n" % (os.getpid(), e))
            sys.stderr.flush()
        except BaseException:
            pass
        code = 2
    finally:
        os._exit(code)


def wait_children(pids, timeout=PROCESS_TIMEOUT_S + 30):
    """Exit statuses of forked children (killed and reported as -9 if still running after
    timeout)."""
    deadline = time.monotonic() + timeout
    status = {}
    while len(status) < len(pids):
        for pid in pids:
            if pid in status:
                continue
            got, st = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                status[pid] = os.waitstatus_to_exitcode(st)
        if time.monotonic() > deadline:
            for pid in pids:
                if pid not in status:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    status[pid] = -9
        time.sleep(0.01)
    return [status[p] for p in pids]


def own_unnamed_segments():
    prefix = "/tessera-%d-" % os.getpid()
    return [i for i in T.shared_cache_list() if i["name"].startswith(prefix)]


def test_forked_children_share_one_segment(shm):
    path = os.path.join(F.TESTDATA, APERIO)
    with T.open_slide(path) as s:
        info = s.level_info(0)
    common = random_regions(info, 30, seed=1)
    own = [random_regions(info, 8, seed=10 + k) for k in range(3)]
    want_common = plain_reads(path, common)
    want_own = [plain_reads(path, r) for r in own]
    # the accounting model, checked on the per-process cache first
    T.configure_cache(T.CACHE_PER_PROCESS, memory_capacity_mib=128)
    with T.open_slide(path) as s:
        for x, y, w, h in common:
            s.read_region(x, y, 0, w, h)
    hits, misses, cached = admission(common, info, 128, per_process=True)
    st = T.cache_stats()
    assert (st["misses"], st["hits"], st["items"]) == (misses, hits, len(cached)), st

    assert own_unnamed_segments() == []
    T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=128)
    segs = own_unnamed_segments()
    assert len(segs) == 1, segs
    name = shm.add(segs[0]["name"])
    assert segs[0]["users"] == 1 and segs[0]["ready"] == 1, segs[0]
    assert segs[0]["memory_capacity"] == 128 << 20, segs[0]
    order = [np.random.default_rng(k).permutation(len(common)) for k in range(3)]

    def round1(k):
        def body():
            bad = 0
            with T.open_slide(path) as s:
                for i in order[k]:
                    x, y, w, h = common[i]
                    bad += not np.array_equal(s.read_region(x, y, 0, w, h), want_common[i])
                for (x, y, w, h), want in zip(own[k], want_own[k]):
                    bad += not np.array_equal(s.read_region(x, y, 0, w, h), want)
            st = T.cache_stats()
            bad += st["type"] != T.CACHE_SHARED_MEMORY
            if k == 0:
                T.configure_cache(T.CACHE_NONE)   # detaches explicitly; the others just exit
            return min(bad, 100)
        return body

    pids = [_child(round1(k)) for k in range(3)]
    assert wait_children(pids) == [0, 0, 0]
    reads = [[common[i] for i in order[k]] + own[k] for k in range(3)]
    accesses, distinct = accounting([r for rs in reads for r in rs], info)
    alone = [admission(rs, info, 128) for rs in reads]
    st = T.cache_stats()
    # a tile is cached once, for all three, when one of them missed it twice close enough:
    # at least the tiles each would have cached alone (a tile another one cached is a hit,
    # which brings its next misses closer), at most those one of them reads twice; each
    # process misses at most as often as alone; every tile was missed once at least, and
    # those cached twice
    assert len(set().union(*(c for _, _, c in alone))) <= st["items"], (st, alone)
    assert st["items"] <= len(twice_by_one(reads, info)), st
    assert st["hits"] + st["misses"] == accesses and st["evictions"] == 0, (st, accesses)
    assert distinct + st["items"] <= st["misses"] <= sum(m for _, m, _ in alone), (st, alone)
    assert st["bytes"] <= st["memory_capacity"], st
    assert segment_exists(name)
    assert listed(name)["users"] == 1, listed(name)

    # round 2: batches (their tile accesses are not exact, but the decodes are)
    rng = np.random.default_rng(99)
    xy = [np.array([(int(rng.integers(-30, info.width)), int(rng.integers(-30, info.height)))
                    for _ in range(20)], np.int64) for _ in range(3)]
    size = (150, 110)
    patches = [plain_reads(path, [(int(x), int(y), size[0], size[1]) for x, y in locs])
               for locs in xy]
    # plain_reads configured no cache: this process, the last user alive, detached
    assert T.cache_stats()["type"] == T.CACHE_NONE
    assert not segment_exists(name), "the last user detached but the segment is still there"

    T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=128)
    name = shm.add(own_unnamed_segments()[0]["name"])
    with T.open_slide(path) as s:        # cache the round-1 tiles again (missed twice each)
        for _ in range(2):
            for x, y, w, h in common:
                s.read_region(x, y, 0, w, h)
    before = T.cache_stats()

    def round2(k):
        def body():
            bad, seen = 0, 0
            with T.open_slide(path) as s:
                for _ in range(2):
                    with s.batches(xy[k], size, 0, batch_size=4, num_workers=2) as it:
                        for arr, idx in it:
                            for j, i in enumerate(idx):
                                bad += not np.array_equal(arr[j], patches[k][i])
                                seen += 1
            return min(bad + (seen != 2 * len(xy[k])), 100)
        return body

    pids = [_child(round2(k)) for k in range(3)]
    assert wait_children(pids) == [0, 0, 0]
    after = T.cache_stats()
    old = {t for r in common for t in tiles_of(r, info)}
    new = {t for locs in xy for x, y in locs for t in tiles_of((x, y) + size, info)}
    # each child streams its batches twice, so every tile it needs is cached by the end of its
    # second stream; a new tile is missed at least once (twice, not cached then cached, unless
    # the patches of one job, which vary with how the workers merge them, cover three quarters
    # of it: it is then cached at its first miss), old ones hit
    assert after["items"] == len(new | old) and after["evictions"] == 0, after
    assert after["misses"] - before["misses"] >= len(new - old), (before, after)
    assert after["hits"] - before["hits"] >= 2 * len(new & old), (before, after)
    T.configure_cache(T.CACHE_NONE)
    assert not segment_exists(name)


def test_a_shared_cache_admits_a_tile_missed_twice(shm):
    """Admission is the same for a shared cache as for a per-process one: a scan reading every
    tile once leaves it empty (each tile decoded in part, as without a cache); a tile this
    process misses twice in a row is cached (missed again only after the rest of the scan, it
    was forgotten), and another process hits it at its first read."""
    path = os.path.join(F.TESTDATA, APERIO)
    name = shm.name("admit")
    configure_shared(name, mib=64)
    with T.open_slide(path) as s:
        info = s.level_info(0)
        tw, th = info.tile_width, info.tile_height
        tiles = [(tx * tw, ty * th) for ty in range(-(-info.height // th))
                 for tx in range(-(-info.width // tw))]
        for x, y in tiles:
            s.read_region(x, y, 0, 1, 1)
        st = T.cache_stats()
        assert (st["items"], st["misses"], st["hits"]) == (0, len(tiles), 0), st
        for _ in range(2):
            s.read_region(0, 0, 0, 1, 1)
        st = T.cache_stats()
        assert (st["items"], st["misses"], st["hits"]) == (1, len(tiles) + 2, 0), st
    ev = finish(worker(shm, name, path, [(0, 0, 1, 1)]))
    assert (ev["done"]["stats"]["misses"], ev["done"]["stats"]["hits"]) == (len(tiles) + 2, 1)


# --- unrelated processes attach by name ----------------------------------------------------

def test_processes_attach_by_name(shm, tmp_path):
    path = os.path.join(F.TESTDATA, APERIO)
    with T.open_slide(path) as s:
        info = s.level_info(0)
    regs = random_regions(info, 25, seed=5)
    want = save_want(tmp_path, plain_reads(path, regs))
    accesses, distinct = accounting(regs, info)
    name = shm.name("attach")
    assert not segment_exists(name)
    configure_shared(name, mib=64)
    assert segment_exists(name)
    info_ = listed(name)
    assert info_ and info_["users"] == 1 and info_["items"] == 0, info_

    first = finish(worker(shm, name, path, regs, want, mib=64))
    assert first["done"]["bad"] == []
    st = first["done"]["stats"]
    hits, misses, cached = admission(regs, info, 64)
    assert (st["misses"], st["hits"], st["items"]) == (misses, hits, len(cached)), st
    # each later process hits every tile the first one cached, and misses the others, which
    # come closer together now (the hits between them do not count), so it may cache more
    _, later_misses, later_cached = admission(regs, info, 64, cached)

    later = [worker(shm, name, path, regs, want, mib=64) for _ in range(3)]
    for p in later:
        ev = finish(p)
        assert ev["done"]["bad"] == []
        assert ev["done"]["stats"]["items"] >= len(cached), ev["done"]["stats"]
    st = T.cache_stats()
    assert st["type"] == T.CACHE_SHARED_MEMORY
    # the three together: what one would cache alone at least, the tiles read twice at most;
    # each misses at most as often as alone
    assert len(later_cached) <= st["items"] <= len(twice_by_one([regs], info)), st
    assert st["hits"] + st["misses"] == 4 * accesses, st
    assert misses < st["misses"] <= misses + 3 * later_misses, (st, misses, later_misses)
    assert st["bytes"] <= st["memory_capacity"], st
    assert listed(name)["users"] == 1
    T.configure_cache(T.CACHE_NONE)
    assert not segment_exists(name)
    assert listed(name) is None


def test_concurrent_creators_make_one_segment(shm, tmp_path):
    path = os.path.join(F.TESTDATA, APERIO)
    with T.open_slide(path) as s:
        info = s.level_info(0)
    regs = random_regions(info, 20, seed=6)
    want = save_want(tmp_path, plain_reads(path, regs))
    accesses, distinct = accounting(regs, info)
    name = shm.name("race")
    ps = [worker(shm, name, path, regs, want, mib=48, wait=True, hold=True) for _ in range(4)]
    for p in ps:
        next_event(p, "attached")
    seg = listed(name)
    assert seg is not None and seg["users"] == 4 and seg["ready"] == 1, seg
    assert seg["memory_capacity"] == 48 << 20, seg
    for p in ps:
        p.stdin.write("\n")
        p.stdin.flush()
    for p in ps:
        assert next_event(p, "done")["bad"] == []
    configure_shared(name, mib=8)      # attaches: the segment's capacity stays
    st = T.cache_stats()
    assert st["memory_capacity"] == 48 << 20, st
    # the four read together: a tile is cached when one of them misses it twice close enough
    # (at least the tiles one alone would cache, at most those read twice), unless another
    # did first; each misses at most as often as alone
    hits, misses, cached = admission(regs, info, 48)
    assert len(cached) <= st["items"] <= len(twice_by_one([regs], info)), (st, len(cached))
    assert st["hits"] + st["misses"] == 4 * accesses, st
    assert distinct + st["items"] <= st["misses"] <= 4 * misses, (st, misses)
    assert listed(name)["users"] == 5
    for p in ps:
        finish(p, release=True)
    assert listed(name)["users"] == 1
    T.configure_cache(T.CACHE_NONE)
    assert not segment_exists(name)


def test_attach_keeps_the_segments_capacities(shm, tmp_path):
    path = os.path.join(F.TESTDATA, APERIO)
    with T.open_slide(path) as s:
        info = s.level_info(0)
    regs = random_regions(info, 12, seed=7)
    plain = plain_reads(path, regs)
    want = save_want(tmp_path, plain)
    accesses, distinct = accounting(regs, info)
    name = shm.name("caps")
    p = worker(shm, name, path, regs, want, mib=32, items=distinct + 50, hold=True)
    done = next_event(p, "done")
    assert done["bad"] == []
    configure_shared(name, mib=8, items=3)
    st = T.cache_stats()
    assert st["memory_capacity"] == 32 << 20 and st["item_capacity"] == distinct + 50, st
    _, _, cached = admission(regs, info, 32, items=distinct + 50)
    assert st["items"] == len(cached), st
    with T.open_slide(path) as s:
        for (x, y, w, h), wnt in zip(regs, plain):
            assert np.array_equal(s.read_region(x, y, 0, w, h), wnt)
    # this process hits what the creator cached and misses the rest (its ghost is sized by
    # the capacities it asked for)
    hits, misses, _ = admission(regs, info, 8, cached, items=3)
    st2 = T.cache_stats()
    assert (st2["misses"] - st["misses"], st2["hits"] - st["hits"]) == (misses, hits), (st, st2)
    finish(p, release=True)          # the creator exits; the segment stays for this process
    assert segment_exists(name)
    assert T.cache_stats()["items"] == len(cached)
    T.configure_cache(T.CACHE_NONE)
    assert not segment_exists(name)


# --- names, foreign files, listing, removal ------------------------------------------------

def test_bad_names_are_refused(shm):
    long_ok = "tessera-pytest-%d-" % os.getpid()
    long_ok += "x" * (T.SHARED_CACHE_NAME_MAX - len(long_ok))
    bads = ["", "/", "a/b", "/a/b", "a/", "x" * (T.SHARED_CACHE_NAME_MAX + 1),
            "/" + "x" * (T.SHARED_CACHE_NAME_MAX + 1), long_ok + "y", ".hidden", "/.hidden"]
    for bad in bads:
        with pytest.raises(T.TesseraError) as e:
            configure_shared(bad)
        assert e.value.status == T.E_ARGUMENT, (bad, e.value)
        assert T.cache_stats()["type"] != T.CACHE_SHARED_MEMORY
    for made in ["a", "b", "x" * (T.SHARED_CACHE_NAME_MAX + 1), long_ok + "y", ".hidden"]:
        assert not segment_exists(made), made
    # the longest name allowed, given with its leading '/'
    shm.add(long_ok)
    configure_shared("/" + long_ok, mib=8)
    assert segment_exists(long_ok) and listed(long_ok)["users"] == 1
    T.configure_cache(T.CACHE_NONE)
    assert not segment_exists(long_ok)


def test_a_foreign_file_is_refused(shm):
    name = shm.name("foreign")
    content = b"this is not a tessera cache segment\n" * 4096
    with open(shm_path(name), "wb") as f:
        f.write(content)
    for n in (name, "/" + name):
        with pytest.raises(T.TesseraError) as e:
            configure_shared(n)
        assert e.value.status == T.E_ARGUMENT, e.value
    with pytest.raises(T.TesseraError) as e:
        T.shared_cache_remove(name, force=True)
    assert e.value.status == T.E_ARGUMENT, e.value
    assert listed(name) is None
    with open(shm_path(name), "rb") as f:
        assert f.read() == content
    # nor is an empty file that nobody is making into one: refused, in time, and left alone
    os.unlink(shm_path(name))
    open(shm_path(name), "wb").close()
    with pytest.raises(T.TesseraError):
        configure_shared(name)
    assert os.path.getsize(shm_path(name)) == 0 and listed(name) is None


def test_list_and_remove(shm, tmp_path):
    path = os.path.join(F.TESTDATA, SMALL)
    regs = [(0, 0, 200, 200)] * 2       # four tiles read twice in a row: cached
    want = save_want(tmp_path, plain_reads(path, regs))
    name = shm.name("list")
    configure_shared(name, mib=16, items=40)
    seg = listed(name)
    assert seg is not None, T.shared_cache_list()
    assert seg["name"] == "/" + name and seg["ready"] == 1 and seg["users"] == 1, seg
    assert seg["memory_capacity"] == 16 << 20 and seg["item_capacity"] == 40, seg
    assert seg["items"] == 0 and seg["bytes"] == 0, seg
    assert seg["segment_bytes"] == os.path.getsize(shm_path(name)), seg
    p = worker(shm, name, path, regs, want, hold=True)
    done = next_event(p, "done")
    assert done["bad"] == []
    seg = listed(name)
    assert seg["users"] == 2 and seg["items"] == done["stats"]["items"] > 0, seg
    assert seg["misses"] == done["stats"]["misses"] and seg["bytes"] == done["stats"]["bytes"]
    # live users: refused unless forced
    with pytest.raises(T.TesseraError) as e:
        T.shared_cache_remove(name)
    assert e.value.status == T.E_ARGUMENT, e.value
    assert segment_exists(name)
    T.shared_cache_remove("/" + name, force=True)
    assert not segment_exists(name) and listed(name) is None
    # the users keep the removed segment until they detach
    st = T.cache_stats()
    assert st["items"] == done["stats"]["items"], st
    with T.open_slide(path) as s:
        assert np.array_equal(s.read_region(0, 0, 0, 200, 200), np.load(want)["r0"])
    assert T.cache_stats()["misses"] == st["misses"]
    finish(p, release=True)
    with pytest.raises(T.TesseraError) as e:
        T.shared_cache_remove(name)
    assert e.value.status == T.E_IO, e.value
    # the name is free again: another process makes a new, empty segment by it, which the
    # last user of the removed one leaves alone when it detaches
    p = worker(shm, name, path, [], mib=8, hold=True)
    assert next_event(p, "attached")["stats"]["items"] == 0
    assert listed(name)["users"] == 1 and listed(name)["memory_capacity"] == 8 << 20
    T.configure_cache(T.CACHE_NONE)
    assert segment_exists(name), "detaching from a removed segment unlinked its successor"
    assert listed(name)["users"] == 1
    finish(p, release=True)
    assert not segment_exists(name)


def test_a_segment_whose_users_were_killed_stays_until_removed(shm, tmp_path):
    path = os.path.join(F.TESTDATA, SMALL)
    name = shm.name("orphan")
    p = worker(shm, name, path, [(0, 0, 200, 200)] * 2, hold=True)   # twice: cached
    next_event(p, "done")
    kill9(p)
    assert segment_exists(name)
    seg = listed(name)
    assert seg is not None and seg["users"] == 0 and seg["items"] > 0, seg
    T.shared_cache_remove(name)     # no live user: no force needed
    assert not segment_exists(name)


def test_a_program_started_by_a_user_is_not_a_user(shm):
    """A process using the cache that forks and execs another program (subprocess with a
    preexec_fn, or fork + exec in C) does not make that program a user: the segment goes when
    the process detaches, although the program still runs."""
    name = shm.name("spawn")
    configure_shared(name, mib=8)
    progs = [shm.popen(["sleep", "100"], preexec_fn=lambda: None)]   # fork, then exec
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/sleep", ["sleep", "100"])
        finally:
            os._exit(127)
    try:
        users = listed(name)["users"]
        T.configure_cache(T.CACHE_NONE)
        assert not segment_exists(name), \
            "a program that only ran beside it kept the segment (%d users listed)" % users
        assert users == 1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for p in progs:
            p.kill()
            p.wait()


# --- processes killed in the middle --------------------------------------------------------

@needs_test_hooks
def test_killed_while_holding_a_lock(shm, tmp_path):
    path = os.path.join(F.TESTDATA, APERIO)
    with T.open_slide(path) as s:
        info = s.level_info(0)
    regs = random_regions(info, 40, seed=11)
    plain = plain_reads(path, regs)
    want = save_want(tmp_path, plain)
    per_tile = tile_bytes(path)
    accesses, distinct = accounting(regs, info)
    _, _, cached = admission(regs, info, 64)
    assert len(cached) > 5, "too few tiles cached for the staller to reach its fifth publish"
    name = shm.name("locked")
    configure_shared(name, mib=64)
    pid_file = str(tmp_path / "stalled.pid")
    staller = worker(shm, name, path, regs, want,
                     env={"TESSERA_TEST_CACHE_STALL": "locked:5:%s" % pid_file})
    wait_for_pid_file(pid_file, staller)
    # another process starts while the lock is held (it blocks on the lock as soon as it
    # needs that shard); it must get through after the kill
    waiter = worker(shm, name, path, regs, want)
    time.sleep(1.0)
    kill9(staller)
    ev = finish(waiter)
    assert ev["done"]["bad"] == []

    # this process, attached all along
    with T.open_slide(path) as s:
        for r, wnt in zip(regs, plain):
            assert np.array_equal(s.read_region(r[0], r[1], 0, r[2], r[3]), wnt), r
    st = T.cache_stats()
    assert st["bytes"] <= st["memory_capacity"], st
    # held once each: at least what the waiter would have cached alone (what the staller
    # cached, the waiter hit), at most the tiles it read twice
    assert len(cached) <= st["items"] <= len(twice_by_one([regs], info)), (st, len(cached))
    assert st["bytes"] == st["items"] * per_tile, (st, per_tile)
    # this process reads each region twice in a row: every tile is cached by the second
    with T.open_slide(path) as s:
        for r in regs:
            for _ in range(2):
                s.read_region(r[0], r[1], 0, r[2], r[3])
    st2 = T.cache_stats()
    assert st2["items"] == distinct and st2["evictions"] == 0, st2
    # and a fresh process as well
    ev = finish(worker(shm, name, path, regs, want))
    assert ev["done"]["bad"] == []
    st3 = ev["done"]["stats"]
    assert st3["misses"] == st2["misses"] and st3["hits"] - st2["hits"] == accesses, (st2, st3)
    assert listed(name)["users"] == 1
    T.configure_cache(T.CACHE_NONE)
    assert not segment_exists(name)


@needs_test_hooks
def test_killed_while_loading_a_tile_others_wait_for(shm, tmp_path):
    path = os.path.join(F.TESTDATA, APERIO)
    region = (10, 20, 100, 90)            # inside tile 0
    plain = plain_reads(path, [region])
    want = save_want(tmp_path, plain)
    per_tile = tile_bytes(path)
    name = shm.name("loading")
    configure_shared(name, mib=64)
    pid_file = str(tmp_path / "loader.pid")
    # read twice: the second miss loads the tile (and stalls)
    loader = worker(shm, name, path, [region] * 2,
                    env={"TESSERA_TEST_CACHE_STALL": "loading:1:%s" % pid_file})
    wait_for_pid_file(pid_file, loader)
    waiter = worker(shm, name, path, [region], want)
    next_event(waiter, "reading")
    result = {}

    def read_here():
        with T.open_slide(path) as s:
            result["got"] = s.read_region(*region[:2], 0, *region[2:])

    t = threading.Thread(target=read_here, daemon=True)
    t.start()
    time.sleep(1.0)
    # the loader is alive and never finishes: both still wait for it
    assert waiter.poll() is None, finish(waiter)
    assert t.is_alive()
    kill9(loader)
    ev = finish(waiter)
    assert ev["done"]["bad"] == []
    t.join(PROCESS_TIMEOUT_S)
    assert not t.is_alive(), "a thread waiting for the killed loader never woke"
    assert np.array_equal(result["got"], plain[0])
    # the dead loader's entry is gone, and both waiters missed the tile for the first time, so
    # neither cached it; this process's next read is its second miss, which caches it
    st = T.cache_stats()
    assert st["items"] == 0, st
    for k in range(2):
        with T.open_slide(path) as s:
            assert np.array_equal(s.read_region(*region[:2], 0, *region[2:]), plain[0])
        st2 = T.cache_stats()
        assert st2["items"] == 1 and st2["bytes"] == per_tile, st2
        assert (st2["misses"], st2["hits"]) == (st["misses"] + 1, st["hits"] + k), (st, st2)
    assert listed(name)["users"] == 1
    T.configure_cache(T.CACHE_NONE)
    assert not segment_exists(name)


def process_state(pid):
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    return stat[stat.rfind(")") + 2]


@needs_test_hooks
def test_a_reader_stopped_in_a_hit_holds_no_lock(shm, tmp_path):
    """A process stopped (SIGSTOP) in the middle of a hit, its rows found and not yet painted:
    another process reading that tile is served from the cache every time, with right pixels
    (before, the stopped reader held the shard's lock: the other's first wait for it ran out,
    and every read went around the cache, counting no hit). Continued, the stopped reader's
    read is right too."""
    path = os.path.join(F.TESTDATA, APERIO)
    tile0 = (0, 0, 240, 240)                  # a whole tile: cached at its first miss
    want = save_want(tmp_path, plain_reads(path, [tile0] * 5))
    name = shm.name("stopread")
    configure_shared(name, mib=8)             # one shard: every tile shares its lock
    pid_file = str(tmp_path / "reader.pid")
    # the first read caches the tile, the second hits it and stops there
    stopped = worker(shm, name, path, [tile0] * 2, want=want, hold=True,
                     env={"TESSERA_TEST_CACHE_STALL": "stopreading:1:%s" % pid_file})
    wait_for_pid_file(pid_file, stopped)
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while process_state(stopped.pid) != "T":
        assert time.monotonic() < deadline, "the reader did not stop in its hit"
        time.sleep(0.02)
    ev = finish(worker(shm, name, path, [tile0] * 5, want=want))
    assert ev["done"]["bad"] == []
    hits = ev["done"]["stats"]["hits"] - ev["attached"]["stats"]["hits"]
    misses = ev["done"]["stats"]["misses"] - ev["attached"]["stats"]["misses"]
    assert (hits, misses) == (5, 0), ev
    os.kill(stopped.pid, signal.SIGCONT)
    assert finish(stopped, release=True)["done"]["bad"] == []
    T.configure_cache(T.CACHE_NONE)
    assert not segment_exists(name)


# --- found in review: a pid used again, a remover that died between flag and unlink --------

PIDNS_READER = r"""
import json, os, sys
sys.path.insert(0, %(tests)r)
import tessera_ctypes as T
T.load(%(lib)r)
T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=64, name=%(name)r)
with T.open_slide(%(path)r) as s:
    for _ in range(3):
        s.read_region(0, 0, 0, 200, 200)
        print(json.dumps(T.cache_stats()), flush=True)
T.configure_cache(T.CACHE_NONE)
"""


def run_in_pid_namespace(code, env=None, **kw):
    """python3 -c code as pid 1 of a new pid namespace (with its own /proc)."""
    return subprocess.Popen(["unshare", "--fork", "--pid", "--mount-proc", PYTHON, "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, **kw)


@needs_test_hooks
def test_a_dead_loaders_pid_used_again_is_not_taken_for_the_loader(shm, tmp_path):
    """A process killed while loading a tile, and a later one that gets the same pid (both
    pid 1 of their own pid namespace, as containers restarted over one /dev/shm would): the
    later one must see the entry as a dead loader's and load the tile itself, so it ends up
    cached (taken for its own, it would wait for itself and then read around the cache)."""
    name = shm.name("pidreuse")
    path = os.path.join(F.TESTDATA, APERIO)
    code = PIDNS_READER % {"tests": HERE, "lib": T.lib_path(), "name": name, "path": path}
    stall = str(tmp_path / "stalled")
    env = dict(os.environ, TESSERA_TEST_CACHE_STALL="loading:1:" + stall)
    first = run_in_pid_namespace(code, env=env)
    shm.procs.append(first)
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while not os.path.exists(stall) or not open(stall).read().strip():
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline, "the first reader never reached the stall"
        time.sleep(0.05)
    assert open(stall).read().strip() == "1", "not pid 1 of its namespace"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = run_in_pid_namespace(code)
    shm.procs.append(second)
    out, err = second.communicate(timeout=PROCESS_TIMEOUT_S)
    assert second.returncode == 0, err
    _, after_second, after_third = [json.loads(line) for line in out.splitlines()]
    # the second pass over the same region caches what the first missed; the third is all
    # hits: every tile it needs is cached
    assert after_third["misses"] == after_second["misses"], (after_second, after_third)
    assert after_third["hits"] > after_second["hits"]
    assert after_third["items"] == after_second["items"] > 0


def test_a_remover_killed_between_flag_and_unlink_does_not_block_the_name(shm, tmp_path):
    """A segment marked removed whose name is still there (its remover died in between): the
    next process configuring that name removes the stale name and makes a new segment."""
    name = shm.name("halfremoved")
    configure_shared(name)
    with open(shm_path(name), "r+b") as f:
        head = f.read(24)
        assert head[:8] == b"TSCACHE1", head[:8]  # the segment's magic
        f.seek(20)  # magic 8, version 4, header_bytes 4, ready 4, then unlinked
        f.write((1).to_bytes(4, "little"))
    # this process's own configure must not be refused either
    code = ("import sys; sys.path.insert(0, %r); import tessera_ctypes as T; T.load(%r); "
            "T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=16, name=%r); "
            "print(T.cache_stats()['memory_capacity'])") % (HERE, T.lib_path(), name)
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                       timeout=PROCESS_TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 16 << 20  # a new segment of its own capacity, not the old one


# --- pid namespaces, and reconfiguring without room for two segments ----------------------

PIDNS_USER = r"""
import json, os, sys
sys.path.insert(0, %(tests)r)
import tessera_ctypes as T
T.load(%(lib)r)
T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=64, name=%(name)r)
with T.open_slide(%(path)r) as s:
    for _ in range(2):              # missed twice, the tile is cached (or hit twice)
        s.read_region(0, 0, 0, 200, 200)
users = [i["users"] for i in T.shared_cache_list() if i["name"] == "/" + %(name)r]
print(json.dumps(dict(T.cache_stats(), pid=os.getpid(), users=users)), flush=True)
sys.stdin.readline()
T.configure_cache(T.CACHE_NONE)
"""


def test_pid_namespaces_share_one_segment(shm):
    """Users in different pid namespaces over one /dev/shm (containers of a pod), each pid 1
    of its own: each sees the others alive, the one that leaves first does not remove the
    segment of one still using it, a third finds that segment (not a new one), and one
    killed is seen dead (before, each took the others for dead: pids are not shared)."""
    name = shm.name("pidns")
    code = PIDNS_USER % {"tests": HERE, "lib": T.lib_path(), "name": name,
                         "path": os.path.join(F.TESTDATA, APERIO)}

    def user():
        p = run_in_pid_namespace(code, stdin=subprocess.PIPE)
        shm.procs.append(p)
        line = p.stdout.readline()
        assert line, p.stderr.read()
        return p, json.loads(line)

    a, first = user()
    assert first["pid"] == 1 and first["users"] == [1] and first["misses"] > 0, first
    b, second = user()
    assert second["pid"] == 1 and second["users"] == [2], second
    assert second["misses"] == first["misses"] and second["hits"] > first["hits"], second
    b.communicate("\n", timeout=PROCESS_TIMEOUT_S)
    assert b.returncode == 0
    assert segment_exists(name), "the user that left removed the segment another one uses"
    c, third = user()
    assert third["users"] == [2] and third["misses"] == first["misses"], third
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    deadline = time.monotonic() + PROCESS_TIMEOUT_S   # its python, pid 1 inside, dies after
    while listed(name)["users"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listed(name)["users"] == 1, listed(name)
    c.communicate("\n", timeout=PROCESS_TIMEOUT_S)
    assert c.returncode == 0
    assert not segment_exists(name), "the last user left the segment behind"


def test_reconfiguring_says_both_segments_need_room(shm):
    """A process using a shared cache that configures another one where /dev/shm has room
    for only one: refused, saying that the old one goes only after the new one is made."""
    code = ("import sys; sys.path.insert(0, %r); import tessera_ctypes as T; T.load(%r)\n"
            "T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=8, name='first')\n"
            "try:\n"
            "    T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=8, name='second')\n"
            "except T.TesseraError as e:\n"
            "    print(e.status, str(e))\n"
            "T.configure_cache(T.CACHE_NONE)\n"
            "T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=8, name='second')\n"
            "print('then', T.cache_stats()['memory_capacity'])\n") % (HERE, T.lib_path())
    r = subprocess.run(["unshare", "--mount", "sh", "-c",
                        "mount -t tmpfs -o size=12m tmpfs /dev/shm && exec %s -c \"$0\"" % PYTHON,
                        code], capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    refusal, then = r.stdout.splitlines()
    assert refusal.startswith("%d " % T.E_NOMEM) and "both need room" in refusal, refusal
    assert then == "then %d" % (8 << 20), r.stdout


def ns_worker(seg, name, path, regions, env=None, **job):
    """worker() in a new pid namespace, under a shell as its pid 1 (a namespace's init
    cannot stop itself), in a process group of its own."""
    job.update(name=name, path=path, regions=[list(r) for r in regions], want=None)
    e = dict(os.environ)
    e.pop("TESSERA_TEST_CACHE_STALL", None)
    e.update(env or {})
    return seg.popen(["unshare", "--fork", "--pid", "--mount-proc", "sh", "-c", '"$@"; exit $?',
                      "sh", PYTHON, "-c", WORKER, json.dumps(job)], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                     start_new_session=True)


def wait_until_stopped(p, deadline):
    """Waits until a process of worker p's group is stopped (state T)."""
    while True:
        for pid in os.listdir("/proc"):
            try:
                with open("/proc/%s/stat" % pid) as f:
                    stat = f.read()
            except (OSError, ValueError):
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] == "T" and int(fields[2]) == p.pid:   # state, pgrp
                return
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
        time.sleep(0.02)


@needs_test_hooks
def test_a_loader_in_another_pid_namespace_is_not_swept(shm, tmp_path):
    """A loader in one pid namespace, stopped while it loads a tile; a process in a second
    one dies holding the shard's lock; a third repairs the shard and must keep the loader's
    entry (before, judged by a pid that means another process there, it was dropped): when
    the loader goes on, its tile is published, and a later read of it is a hit."""
    path = os.path.join(F.TESTDATA, APERIO)
    tile0, other, third = (10, 20, 100, 90), (600, 600, 10, 10), (1000, 1000, 10, 10)
    want = plain_reads(path, [tile0])[0]
    name = shm.name("nsloader")
    configure_shared(name, mib=8)                 # one shard: every tile shares its lock
    loading, locked = str(tmp_path / "loading.pid"), str(tmp_path / "locked.pid")
    # each reads its region twice: the second miss of a tile loads it
    a = ns_worker(shm, name, path, [tile0] * 2, hold=True,
                  env={"TESSERA_TEST_CACHE_STALL": "stoploading:1:" + loading})
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    wait_until_stopped(a, deadline)
    b = ns_worker(shm, name, path, [other] * 2,
                  env={"TESSERA_TEST_CACHE_STALL": "locked:1:" + locked})
    wait_for_file = time.monotonic() + PROCESS_TIMEOUT_S
    while not (os.path.exists(locked) and open(locked).read().strip()):
        assert b.poll() is None and time.monotonic() < wait_for_file, b.stderr.read()
        time.sleep(0.02)
    os.killpg(b.pid, signal.SIGKILL)
    b.wait()
    while listed(name)["users"] != 2:             # this process and the stopped loader
        assert time.monotonic() < deadline, listed(name)
        time.sleep(0.02)
    c = ns_worker(shm, name, path, [third] * 2)
    ev = finish(c)
    assert ev["done"]["stats"]["items"] >= 2, ev    # the loader's entry outlived the repair
    os.killpg(a.pid, signal.SIGCONT)
    done = next_event(a, "done")
    before = T.cache_stats()
    with T.open_slide(path) as s:
        assert np.array_equal(s.read_region(*tile0[:2], 0, *tile0[2:]), want)
    after = T.cache_stats()
    assert after["misses"] == before["misses"] and after["hits"] == before["hits"] + 1, \
        (done, before, after)
    finish(a, release=True)
