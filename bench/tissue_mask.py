#!/usr/bin/python3
"""Tissue mask cost beside reading the level it works on, in the same run (issue 21's target:
a mask costs at most 1.5x reading that level, so masking many slides is bounded by reading
their thumbnails).

    PYTHONPATH=build/python /usr/bin/python3 bench/tissue_mask.py SLIDE... [--repeat N]
        [--downsample D | --mpp M] [--workers W] [--clock wall|cpu]

For each slide: the median over N turns (default 7) of (a) Slide.read_region(level=L) of the
mask's level L, whole, and (b) Slide.tissue_mask(...), which reads that level itself (area-
averaged to the mask's pixels in bands) and classifies, thresholds, drops specks and fills
holes. The turns alternate, after one warm-up of each, with the file in the page cache and no
tile cache. Prints a table with the ratio mask / read.
"""

import argparse
import statistics
import sys
import time

import tessera

clock = time.perf_counter


def timed(fn):
    t = clock()
    fn()
    return clock() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slides", nargs="+")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--downsample", type=float)
    ap.add_argument("--mpp", type=float)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the process's CPU time (user + system) instead of the wall "
                    "clock's: steadier on a machine shared with other work (one thread)")
    a = ap.parse_args()
    global clock
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    tessera.CuImage.cache("nocache")
    kw = dict(mpp=a.mpp, downsample=a.downsample, num_workers=a.workers)
    print("| slide | level read | level pixels | mask | read level ms | mask ms | mask / read |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for path in a.slides:
        with tessera.Slide(path) as s:
            m = s.tissue_mask(**kw)
            lv = s.level_info(m.level)

            def read():
                s.read_region(level=m.level, num_workers=a.workers)

            def mask():
                s.tissue_mask(**kw)

            read(), mask()
            reads, masks = [], []
            for _ in range(a.repeat):
                reads.append(timed(read))
                masks.append(timed(mask))
            r, k = statistics.median(reads), statistics.median(masks)
            worst = max(worst, k / r)
            print("| %s | %d | %dx%d | %dx%d | %.2f | %.2f | **%.2fx** |" % (
                path.rsplit("/", 1)[-1], m.level, lv["width"], lv["height"], m.shape[1],
                m.shape[0], 1e3 * r, 1e3 * k, k / r))
    print("\nworst mask / read: %.2fx (target <= 1.5x)" % worst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
