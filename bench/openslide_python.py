#!/usr/bin/python3
"""tessera.openslide against openslide-python (over the OpenSlide the system has): the same
random read_region((x, y), 0, (224, 224)) calls, one by one, on 1 thread and then on 2
threads sharing one slide object, in turns, a fresh slide object per run: openslide-python
(OpenSlide's default cache: 32 MiB per slide), tessera.openslide with tessera's default (no
tile cache) and tessera.openslide with a fresh 32 MiB per-process cache, as OpenSlide's.

  PYTHONPATH=build/python /usr/bin/python3 bench/openslide_python.py SLIDE \\
      [--count 2000] [--size 224,224] [--repeat 5] [--seed 0]

Prints each run's seconds, the medians, calls/s and the ratio openslide-python / tessera
(time), and checks that all read the same pixels (the RGBA bytes of every call, summed).
"""

import argparse
import statistics
import sys
import threading
import time

import numpy as np


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slide")
    p.add_argument("--count", type=int, default=2000, help="read_region calls (default 2000)")
    p.add_argument("--size", default="224,224", help="region W,H (default 224,224)")
    p.add_argument("--repeat", type=int, default=5, help="runs of each library (median)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random locations")
    a = p.parse_args()
    a.width, a.height = (int(v) for v in a.size.split(","))
    return a


def run(module, path, locations, size, threads, cache_mib=None):
    """Seconds for all the calls, and the sum of every region's bytes. cache_mib: tessera's
    process cache, made anew (None: none)."""
    from tessera import _tessera

    if cache_mib is None:
        _tessera.cache_configure("nocache", 0)
    else:
        _tessera.cache_configure("per_process", cache_mib)
    slide = module.OpenSlide(path)
    parts = [locations[i::threads] for i in range(threads)]
    sums = [0] * threads
    start = threading.Barrier(threads + 1)

    def work(i):
        start.wait()
        total = 0
        for x, y in parts[i]:
            total += int(np.asarray(slide.read_region((int(x), int(y)), 0, size)).sum(
                dtype=np.uint64))
        sums[i] = total

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    slide.close()
    return seconds, sum(sums)


def main():
    import openslide
    from tessera import openslide as tos

    a = parse()
    with tos.OpenSlide(a.slide) as s:
        w, h = s.dimensions
    rng = np.random.default_rng(a.seed)
    locations = np.stack([rng.integers(0, max(1, w - a.width), a.count),
                          rng.integers(0, max(1, h - a.height), a.count)], axis=1)
    size = (a.width, a.height)
    print("%s: %dx%d, %d random %dx%d read_region calls, %d runs each, in turns" % (
        a.slide, w, h, a.count, a.width, a.height, a.repeat))
    print("openslide-python %s over OpenSlide %s; tessera %s" % (
        openslide.__version__, openslide.__library_version__, tos.__library_version__))
    readers = (("openslide-python", openslide, None), ("tessera.openslide", tos, None),
               ("tessera.openslide, 32 MiB cache", tos, 32))
    rows = []
    for threads in (1, 2):
        times = {name: [] for name, _, _ in readers}
        sums = set()
        for _ in range(a.repeat):
            for name, module, cache in readers:
                seconds, total = run(module, a.slide, locations, size, threads, cache)
                times[name].append(seconds)
                sums.add(total)
        for name, _, _ in readers:
            print("%d thread(s), %s: %s s" % (threads, name,
                                              " ".join("%.3f" % v for v in times[name])))
        rows.append((threads, [statistics.median(times[n]) for n, _, _ in readers],
                     len(sums) == 1))
    print()
    print("| threads | " + " | ".join("%s s (calls/s)" % n for n, _, _ in readers) +
          " | openslide-python / tessera.openslide (no cache, 32 MiB) | same pixels |")
    print("|---|---|---|---|---|---|")
    for threads, medians, same in rows:
        o = medians[0]
        print("| %d | %s | %s | %s |" % (
            threads, " | ".join("%.3f (%.0f)" % (m, a.count / m) for m in medians),
            ", ".join("%.2fx" % (o / m) for m in medians[1:]), "yes" if same else "NO"))
    return 0 if all(r[2] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
