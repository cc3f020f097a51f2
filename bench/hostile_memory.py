"""What careless or hostile inputs cost in memory (issue 15, items 8, 10 and 12): prints, for
each case, the peak address space (VmPeak) and peak resident memory (VmHWM) of a fresh child
process that does only that read, so a library built before a fix and one built after can be
compared by pointing TESSERA_LIB at each:

    TESSERA_LIB=build/src/libtessera.so /usr/bin/python3 bench/hostile_memory.py [WORKDIR]

The fixtures are written into WORKDIR (default: a temporary folder) by the tests' own TIFF
writers: a 1024 x 1024 image of 1-pixel tiles, and a 765 KB deflate file of one
16384 x 16384 tile (768 MiB decoded).

- tiny-tiles: 8 patches of 1024 x 1024 over the 1-pixel tiles, batch_size 4, 2 workers.
- big-batch-size: 2 patches of 224 x 224 with batch_size 40000.
- bomb-4-threads: 4 threads each read an 8 x 8 region of the deflate bomb, 3 times.
"""

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "tests")
TESTDATA = os.environ.get("TESSERA_TESTDATA", os.path.join(HERE, "..", "..", "shared", "testdata"))

CHILD = r"""
import os, sys, threading
sys.path.insert(0, %(tests)r)
import tessera_ctypes as T
T.load(%(lib)r)
case, path = sys.argv[1], sys.argv[2]

def vm():
    out = {}
    for line in open("/proc/self/status"):
        k, v = line.split(":", 1)
        if k in ("VmPeak", "VmHWM"):
            out[k] = int(v.split()[0]) >> 10
    return out

base = vm()
try:
    if case == "tiny-tiles":
        s = T.open_slide(path)
        n = sum(a.shape[0] for a, _ in s.batches([[0, 0]] * 8, (1024, 1024), batch_size=4,
                                                 num_workers=2))
        what = "%%d patches" %% n
    elif case == "big-batch-size":
        s = T.open_slide(path)
        n = sum(a.shape[0] for a, _ in s.batches([[0, 0], [300, 300]], (224, 224),
                                                 batch_size=40000))
        what = "%%d patches" %% n
    else:
        s = T.open_slide(path)
        errors = []
        def work():
            for _ in range(3):
                try:
                    s.read_region(0, 0, 0, 8, 8)
                except T.TesseraError as e:
                    errors.append(str(e))
        ts = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        what = "errors: %%s" %% (errors[:1] or "none")
except T.TesseraError as e:
    what = "error: %%s" %% e
end = vm()
print("%%-15s VmPeak %%6d MiB  VmHWM %%6d MiB (+%%d over start)  %%s" %% (
    case, end["VmPeak"], end["VmHWM"], end["VmHWM"] - base["VmHWM"], what))
"""


def fixtures(work):
    sys.path.insert(0, TESTS)
    import numpy as np
    import tifffile
    from tiffwrite import write_tiff

    tiny = os.path.join(work, "tiny-1px-tiles.tif")
    if not os.path.exists(tiny):
        img = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), np.uint8)
        write_tiff(tiny, 1024, 1024, 1, 1, [img[y, x].tobytes() for y in range(1024)
                                            for x in range(1024)], 1, 2, 3)
    bomb = os.path.join(work, "deflate-bomb.tif")
    if not os.path.exists(bomb):
        tifffile.imwrite(bomb, np.zeros((16384, 16384, 3), np.uint8), tile=(16384, 16384),
                         compression="zlib", photometric="rgb")
    return tiny, bomb


def main():
    lib = os.path.abspath(os.environ.get("TESSERA_LIB", "build/src/libtessera.so"))
    work = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tessera-hostile-")
    os.makedirs(work, exist_ok=True)
    tiny, bomb = fixtures(work)
    plain = os.path.join(TESTDATA, "generic-jpeg-ycbcr-128tiles.tiff")
    print("library:", lib)
    for case, path in (("tiny-tiles", tiny), ("big-batch-size", plain), ("bomb-4-threads", bomb)):
        r = subprocess.run(["/usr/bin/python3", "-c", CHILD % {"tests": TESTS, "lib": lib}, case,
                            path], capture_output=True, text=True, timeout=600)
        print(r.stdout.strip() or "%-15s failed (rc %d): %s" % (case, r.returncode,
                                                                r.stderr.strip()[-300:]))


if __name__ == "__main__":
    main()
