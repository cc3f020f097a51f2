"""What a stopped, foreign, namespaced or killed process costs the users of a shared cache
(issue 15, items 1, 2, 4, 5): prints one line per case.

    TESSERA_LIB=build/src/libtessera.so /usr/bin/python3 bench/shared_cache_hostile.py \
        ../shared/testdata/aperio-jpeg-CMU-1-Small-Region.svs

Each case runs in helper processes with a time limit, so a hang shows as "> LIMIT s".
Run as root (it chowns a segment and makes pid namespaces with unshare).
"""

import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import tessera_ctypes as T  # noqa: E402

PY = "/usr/bin/python3"
LIMIT = 60

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, %(tests)r)
import tessera_ctypes as T
T.load(%(lib)r)
job = json.loads(sys.argv[1])
try:
    T.configure_cache(T.CACHE_SHARED_MEMORY, memory_capacity_mib=job.get("mib", 64),
                      name=job["name"])
except T.TesseraError as e:
    print(json.dumps({"error": str(e)}), flush=True)
    sys.exit(0)
print(json.dumps({"attached": T.cache_stats()}), flush=True)
times = []
with T.open_slide(job["path"]) as s:
    for x, y, w, h in job["regions"]:
        t = time.monotonic()
        s.read_region(x, y, 0, w, h)
        times.append(time.monotonic() - t)
print(json.dumps({"times": times, "stats": T.cache_stats(),
                  "users": [i["users"] for i in T.shared_cache_list()
                            if i["name"] == "/" + job["name"]]}), flush=True)
if job.get("hold"):
    sys.stdin.readline()
"""


def child(name, path, regions, env=None, ns=False, **job):
    job.update(name=name, path=path, regions=regions)
    code = CHILD % {"tests": os.path.join(HERE, "..", "tests"), "lib": T.lib_path()}
    e = dict(os.environ)
    e.pop("TESSERA_TEST_CACHE_STALL", None)
    e.update(env or {})
    cmd = [PY, "-c", code, json.dumps(job)]
    if ns:
        cmd = ["unshare", "--pid", "--fork", "--mount-proc"] + cmd
    return subprocess.Popen(cmd, env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def result(p, limit=LIMIT):
    try:
        out, err = p.communicate("\n", timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return lines[-1] if lines else {"error": err[-300:]}


def wait_file(path, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        time.sleep(0.02)
    raise SystemExit("no stall in %s" % path)


def cleanup(name):
    if os.path.exists("/dev/shm/" + name):
        os.unlink("/dev/shm/" + name)


def stopped(path, point, regions, label, staller_regions=((10, 10, 100, 100),) * 2):
    """A process stops at the test hook `point` while it reads staller_regions (a part of a
    tile is cached at its second miss, a whole tile at its first); another then reads
    `regions`. The hits printed are the segment's, of both."""
    name = "tessera-fig-%d-%s" % (os.getpid(), point)
    pidf = "/tmp/%s.pid" % name
    if os.path.exists(pidf):
        os.unlink(pidf)
    staller = child(name, path, [list(r) for r in staller_regions],
                    env={"TESSERA_TEST_CACHE_STALL": "%s:1:%s" % (point, pidf)}, hold=True)
    wait_file(pidf)
    os.kill(staller.pid, signal.SIGSTOP)
    t = time.monotonic()
    r = result(child(name, path, regions))
    took = time.monotonic() - t
    os.kill(staller.pid, signal.SIGKILL)
    staller.wait()
    cleanup(name)
    os.unlink(pidf)
    if r is None:
        print("%-58s > %d s (hung)" % (label, LIMIT))
    else:
        t = r["times"]
        print("%-58s %.2f s in all; reads %s; %d hits" % (
            label, took, " ".join("%.3f" % x for x in t) if len(t) <= 5 else
            "%.2f s together, the slowest %.2f s" % (sum(t), max(t)), r["stats"]["hits"]))


def main():
    path = sys.argv[1]
    T.load()
    with T.open_slide(path) as s:
        info = s.level_info(0)
    tiles = [[x, y, 1, 1] for y in range(0, info.height, info.tile_height)
             for x in range(0, info.width, info.tile_width)]
    # item 2: a loader stopped while it loads tile 0; a reader reads it 3 times
    stopped(path, "loading", [[10, 10, 100, 100]] * 3,
            "2. stopped loader: 3 reads of its tile")
    # item 2: a process stopped holding a shard lock; a reader reads every tile once
    stopped(path, "locked", tiles, "2. stopped lock holder: %d tiles, one read each" % len(tiles))
    # item 2: a loader stopped halfway through copying tile 0 into the cache; a reader reads
    # every tile whole twice in a row (its first read of tile 0 waits for the loader, once)
    whole = [[x, y, info.tile_width, info.tile_height] for x, y, _, _ in tiles]
    stopped(path, "stopcopying", [r for r in whole for _ in range(2)],
            "2. loader stopped in its copy: %d tiles, two reads each" % len(tiles))
    # item 2: a reader stopped in the middle of a hit on tile 0 (the whole tile, read twice:
    # cached, then hit); another reads that tile 5 times
    tile0 = (0, 0, info.tile_width, info.tile_height)
    stopped(path, "reading", [list(tile0)] * 5, "2. reader stopped in a hit: 5 reads of its tile",
            staller_regions=(tile0, tile0))

    # item 1: a segment open to all (0666), and one owned by another user
    for what, change in (("mode 0666", lambda p: os.chmod(p, 0o666)),
                         ("owned by nobody", lambda p: os.chown(p, 65534, 65534))):
        name = "tessera-fig-%d-foreign" % os.getpid()
        maker = child(name, path, [], hold=True)
        maker.stdout.readline()
        change("/dev/shm/" + name)
        r = result(child(name, path, [[0, 0, 10, 10]], mib=8))
        print("%-58s %s" % ("1. attach to a segment " + what,
                           "refused: " + r["error"][:90] if "error" in r else
                           "attached (capacity %d MiB)" % (r["stats"]["memory_capacity"] >> 20)))
        maker.communicate("\n")
        cleanup(name)

    # item 4: two pid namespaces share a named cache
    name = "tessera-fig-%d-ns" % os.getpid()
    a = child(name, path, [[0, 0, 300, 300]], ns=True, hold=True)
    a.stdout.readline()
    b = result(child(name, path, [[0, 0, 300, 300]], ns=True))
    exists = os.path.exists("/dev/shm/" + name)
    a_res = result(a)
    print("%-58s users seen by b %s, hits of b %d, segment after b left: %s" % (
        "4. a, b in two pid namespaces", b["users"], b["stats"]["hits"],
        "there" if exists else "unlinked (a still uses it)"))
    del a_res
    cleanup(name)

    # item 5: a maker killed while making a segment (a big one, killed during fallocate)
    name = "tessera-fig-%d-maker" % os.getpid()
    maker = child(name, path, [], mib=4096)
    deadline = time.monotonic() + 20
    while not os.path.exists("/dev/shm/" + name) and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)
    os.killpg(maker.pid, signal.SIGKILL)
    maker.wait()
    half = os.path.exists("/dev/shm/" + name)
    t = time.monotonic()
    r = result(child(name, path, [[0, 0, 10, 10]], mib=8))
    print("%-58s %s (%.2f s)" % ("5. configure after a maker was killed" +
                                 (" (half-made)" if half else " (nothing left)"),
                                 "refused: " + r["error"][:80] if "error" in r else "works",
                                 time.monotonic() - t))
    cleanup(name)


if __name__ == "__main__":
    main()
