"""What painting MIRAX images placed between pixels costs (issue 20): the same slide twice,
its camera positions moved by multiples of 4 (every level on whole pixels) or by odd amounts
(every level above 0 between pixels, painted as OpenSlide paints it: codec/mosaic.c).

    /usr/bin/python3 bench/mirax_between.py [--cli build/cli/tessera] [--repeat 7]
        [--workers 1] [--count 300] [--size 256] [--level 1]

Writes, in a temporary folder, two 12 x 12 camera-image slides of 256 x 192 JPEG images, 3
levels, overlap 8 (tests/mirax_writer.py, the pixels of tests/vendor_writers.source_rgb),
then runs `tessera bench --layout random --cache nocache` on both, alternating, and prints
each run's patches per second and the median of each, and the ratio of the medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import numpy as np  # noqa: E402

import mirax_writer as MW  # noqa: E402
import vendor_writers as V  # noqa: E402


def write(folder):
    source = np.asarray(V.source_rgb(3400, 2600, 100, 100))
    odd = {(x, y): ((x * 7 + y * 3) % 9, (x * 5 + y) % 7) for x in range(12) for y in range(12)}
    whole = {k: (4 * (v[0] // 4), 4 * (v[1] // 4)) for k, v in odd.items()}
    paths = {}
    for name, jitter in (("whole", whole), ("between", odd)):
        paths[name] = os.path.join(folder, name + ".mrxs")
        MW.build(source, 12, 12, 256, 192, 3, overlap=(8, 8), jitter=jitter).write(paths[name])
    return paths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", default="build/cli/tessera")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--level", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        paths = write(d)
        rates = {k: [] for k in paths}
        for _ in range(a.repeat):
            for name, path in paths.items():
                r = subprocess.run([a.cli, "bench", path, "--layout", "random", "--count",
                                    str(a.count), "--size", "%d,%d" % (a.size, a.size),
                                    "--level", str(a.level), "--workers", str(a.workers),
                                    "--cache", "nocache", "--json"],
                                   capture_output=True, text=True, check=True)
                rates[name].append(json.loads(r.stdout)["patches_per_s"])
        for name, v in rates.items():
            print("%-8s %s  median %.1f patches/s" % (name, " ".join("%.1f" % x for x in v),
                                                     statistics.median(v)))
        print("between / whole: %.2f" % (statistics.median(rates["between"])
                                         / statistics.median(rates["whole"])))


if __name__ == "__main__":
    main()
