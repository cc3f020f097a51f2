#!/usr/bin/python3
"""read_region(..., mpp=M) exact versus fast (JPEG reduced-size IDCT) in the same run, and the
fast mode's error against the exact one.

    PYTHONPATH=build/python /usr/bin/python3 bench/resolution.py SLIDE [--mpp 0.5]
        [--size 224] [--count 300] [--repeat 5] [--seed 0] [--clock wall|cpu]

SLIDE should be a JPEG slide at about half the requested mpp with no level at mpp itself
(e.g. `tessera sample s.tiff --width 8000 --height 6000` then `vips tiffsave s.tiff q25.tiff
--tile --tile-width 256 --tile-height 256 --compression jpeg --Q 90 --xres 4000 --yres 4000`:
0.25 um/px, one level). Two workloads: 'random' (uniform level-0 corners, any parity) and
'grid' (the locations tessera.grid gives: corners on whole output pixels, so the reduced
decode needs no averaging). Each is read --repeat times by each mode in turns, one thread, no
tile cache; the table gives the median ms per patch and exact / fast. Errors: the largest and
mean absolute difference per sample over every patch of the random workload.
"""

import argparse
import statistics
import sys
import time

import numpy as np

import tessera

clock = time.perf_counter


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the process's CPU time (user + system) instead of the wall "
                    "clock's: steadier on a machine shared with other work (one thread)")
    a = ap.parse_args()
    global clock
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    tessera.CuImage.cache("nocache")
    with tessera.Slide(a.slide) as s:
        level, scale = s.level_for_mpp(a.mpp)
        w, h = s.level_info(0)["width"], s.level_info(0)["height"]
        span = int(np.ceil(a.size * a.mpp / float(s.properties()["tessera.mpp-x"])))
        rng = np.random.default_rng(a.seed)
        random = np.stack([rng.integers(0, w - span, a.count), rng.integers(0, h - span, a.count)],
                          1)
        grid = tessera.grid(s, a.size, mpp=a.mpp).locations[:a.count]
        print("slide %s: level %d, scale %g, %d x %d patches at %g um/px" % (
            a.slide, level, scale, a.size, a.size, a.mpp))
        print("\n| workload | patches | exact ms/patch | fast ms/patch | exact / fast |")
        print("|---|---|---|---|---|")
        for name, locs in (("random", random), ("grid", grid)):
            times = {False: [], True: []}
            for _ in range(a.repeat):
                for fast in (False, True):
                    t = clock()
                    for x, y in locs:
                        s.read_region((int(x), int(y)), (a.size, a.size), mpp=a.mpp, fast=fast)
                    times[fast].append((clock() - t) / len(locs))
            e, f = statistics.median(times[False]), statistics.median(times[True])
            print("| %s | %d | %.3f | %.3f | **%.2fx** |" % (name, len(locs), 1e3 * e, 1e3 * f,
                                                            e / f))
        worst, total, n = 0, 0, 0
        for x, y in random:
            ex = np.asarray(s.read_region((int(x), int(y)), (a.size, a.size), mpp=a.mpp))
            fa = np.asarray(s.read_region((int(x), int(y)), (a.size, a.size), mpp=a.mpp,
                                          fast=True))
            d = np.abs(ex.astype(np.int16) - fa.astype(np.int16))
            worst = max(worst, int(d.max()))
            total += int(d.sum())
            n += d.size
        print("\nfast vs exact over the random workload: max %d, mean %.4f per sample" % (
            worst, total / n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
