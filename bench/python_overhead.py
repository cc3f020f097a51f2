#!/usr/bin/python3
"""What the Python layer costs: one stream of patches read by `tessera bench` (C) and by the
Python package (CuImage.read_region(locations, ...) iterated, each batch taken with
np.asarray and summed with the same checksum), side by side, in turns, on the same slide,
locations, batch size, workers and prefetch. Optionally openslide-python on the same patches.

  PYTHONPATH=build/python /usr/bin/python3 bench/python_overhead.py SLIDE \\
      [--count 4000] [--size 224,224] [--batch-size 32] [--workers 2] [--repeat 5] [--openslide]

Prints each run's seconds, the medians, patches/s and the ratio Python / C (time), and checks
that both streams have the same checksum.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import tessera
from tessera import _tessera

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CLI = os.path.join(os.path.dirname(HERE), "build", "cli", "tessera")


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slide")
    p.add_argument("--count", type=int, default=4000, help="random patches (default 4000)")
    p.add_argument("--size", default="224,224", help="patch W,H (default 224,224)")
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5, help="runs of each reader (median)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random locations")
    p.add_argument("--openslide", action="store_true",
                   help="also read the patches with openslide-python on --workers threads")
    p.add_argument("--cli", default=os.environ.get("TESSERA_CLI", DEFAULT_CLI))
    a = p.parse_args()
    a.width, a.height = (int(v) for v in a.size.split(","))
    return a


def make_locations(a):
    with tessera.CuImage(a.slide) as img:
        w, h = img.resolutions["level_dimensions"][0]
    rng = np.random.default_rng(a.seed)
    xs = rng.integers(0, max(1, w - a.width), a.count)
    ys = rng.integers(0, max(1, h - a.height), a.count)
    return np.stack([xs, ys], axis=1).astype(np.int64)


def run_cli(a, locations_file):
    r = subprocess.run([a.cli, "bench", a.slide, "--locations", locations_file, "--size",
                        "%d,%d" % (a.width, a.height), "--level", str(a.level),
                        "--batch-size", str(a.batch_size), "--workers", str(a.workers),
                        "--prefetch", str(a.prefetch), "--json"],
                       capture_output=True, text=True, check=True)
    out = json.loads(r.stdout)
    return out["seconds"], out["checksum"], out["patches"]


def run_python(a, img, locations):
    start = time.perf_counter()
    checksum = patches = 0
    for batch in img.read_region(locations, (a.width, a.height), a.level,
                                 num_workers=a.workers, batch_size=a.batch_size,
                                 prefetch_factor=a.prefetch):
        arr = np.asarray(batch)
        checksum = (checksum + _tessera.checksum(arr)) % (1 << 64)
        patches += 1 if arr.ndim == 3 else arr.shape[0]
    return time.perf_counter() - start, checksum, patches


def run_openslide(a, locations):
    import openslide

    slide = openslide.OpenSlide(a.slide)

    def read(xy):
        region = slide.read_region((int(xy[0]), int(xy[1])), a.level, (a.width, a.height))
        return _tessera.checksum(np.asarray(region.convert("RGB")))

    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, a.workers)) as pool:
        checksum = sum(pool.map(read, locations)) % (1 << 64)
    seconds = time.perf_counter() - start
    slide.close()
    return seconds, checksum, len(locations)


def main():
    a = parse()
    locations = make_locations(a)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join("%d %d\n" % (x, y) for x, y in locations))
        locations_file = f.name
    img = tessera.CuImage(a.slide)
    readers = [("tessera bench (C)", lambda: run_cli(a, locations_file)),
               ("tessera Python", lambda: run_python(a, img, locations))]
    if a.openslide:
        readers.append(("openslide-python", lambda: run_openslide(a, locations)))
    times = {name: [] for name, _ in readers}
    sums = {}
    try:
        for _ in range(a.repeat):
            for name, fn in readers:
                seconds, checksum, patches = fn()
                assert patches == a.count, (name, patches)
                times[name].append(seconds)
                sums.setdefault(name, set()).add(checksum)
    finally:
        os.unlink(locations_file)
    print("slide %s, %d random %dx%d patches at level %d, batch %d, workers %d, prefetch %d, "
          "%d runs each in turns" % (a.slide, a.count, a.width, a.height, a.level,
                                     a.batch_size, a.workers, a.prefetch, a.repeat))
    base = statistics.median(times["tessera bench (C)"])
    print("| reader | runs (s) | median s | patches/s | time / tessera bench | checksum |")
    print("|---|---|---|---|---|---|")
    for name, _ in readers:
        med = statistics.median(times[name])
        print("| %s | %s | %.3f | %.1f | %.3f | %s |" % (
            name, " ".join("%.3f" % t for t in times[name]), med, a.count / med, med / base,
            ",".join(str(s) for s in sorted(sums[name]))))
    agree = len(set().union(*sums.values())) == 1
    overhead = statistics.median(times["tessera Python"]) / base - 1
    print("checksums %s; Python layer overhead %+.1f %%" % ("agree" if agree else "DIFFER",
                                                            100 * overhead))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
