"""openslide-python (Debian's python3-openslide) reading random patches over Debian's OpenSlide
and over tessera's libopenslide.so.0 (LD_LIBRARY_PATH), side by side in one run.

    /usr/bin/python3 bench/libopenslide.py SLIDE [--lib DIR] [--patches 2000]
        [--size 224] [--threads 1 2] [--repeat 5]

Each measurement is a fresh process (which library openslide-python loads is fixed at import):
it opens the slide once, then reads --patches read_region calls of --size x --size at level 0,
at random places (seed = the repeat number, the same for both libraries), split over
--threads threads sharing the one handle, as a data loader does (the patches are made and
dropped: what is timed is openslide-python's read_region, PIL image included). The two
libraries are run in turns, --repeat times each; the table gives medians (patches per second)
and the ratio of the medians. A second, untimed pass reads the same patches again for a
checksum of their bytes, which must agree between the libraries.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LIB = os.path.join(os.path.dirname(HERE), "build", "openslide", "so0")


def worker(path, patches, size, threads, seed):
    import random
    from concurrent.futures import ThreadPoolExecutor

    import openslide

    s = openslide.OpenSlide(path)
    w, h = s.dimensions
    rnd = random.Random(seed)
    places = [(rnd.randrange(0, w - size), rnd.randrange(0, h - size)) for _ in range(patches)]

    def run(chunk):
        for x, y in chunk:
            s.read_region((x, y), 0, (size, size))

    chunks = [places[i::threads] for i in range(threads)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, chunks))
    dt = time.perf_counter() - t0
    # the checksum of what was read, in a pass of its own, untimed
    sums = [0]
    for x, y in places:
        sums[0] = zlib.crc32(s.read_region((x, y), 0, (size, size)).tobytes(), sums[0])
    print("%.6f %s %s" % (dt, ",".join("%08x" % c for c in sums), openslide.__library_version__))


def measure(path, lib, args, threads, seed):
    env = dict(os.environ)
    env.pop("LD_LIBRARY_PATH", None)
    if lib:
        env["LD_LIBRARY_PATH"] = lib
    out = subprocess.run([sys.executable, __file__, "--worker", path, str(args.patches),
                          str(args.size), str(threads), str(seed)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), out[1], out[2]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], *map(int, sys.argv[3:7]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("slide")
    ap.add_argument("--lib", default=DEFAULT_LIB)
    ap.add_argument("--patches", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print("| threads | OpenSlide p/s | tessera p/s | tessera / OpenSlide | checksums |")
    print("|---|---|---|---|---|")
    runs = []
    for threads in args.threads:
        rates = {"openslide": [], "tessera": []}
        agree = True
        versions = set()
        for seed in range(args.repeat):
            got = {}
            for which, lib in (("openslide", None), ("tessera", args.lib)):
                dt, sums, version = measure(args.slide, lib, args, threads, seed)
                rates[which].append(args.patches / dt)
                got[which] = sums
                versions.add(version)
            agree = agree and got["openslide"] == got["tessera"]
        o, t = statistics.median(rates["openslide"]), statistics.median(rates["tessera"])
        print("| %d | %.1f | %.1f | **%.2fx** | %s |" % (threads, o, t, t / o,
                                                        "agree" if agree else "DIFFER"))
        runs.append("%d thread(s): OpenSlide %s; tessera %s" % (
            threads, " ".join("%.0f" % r for r in rates["openslide"]),
            " ".join("%.0f" % r for r in rates["tessera"])))
    print("\nlibraries: %s" % ", ".join(sorted(versions)))
    print("single runs (patches/s, in turns):\n  " + "\n  ".join(runs))


if __name__ == "__main__":
    main()
