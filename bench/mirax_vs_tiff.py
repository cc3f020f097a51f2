"""MIRAX against a generic TIFF of the same tiles (issue 20's target: a MIRAX slide's batch
throughput within 20% of the same workload on a generic TIFF).

    /usr/bin/python3 bench/mirax_vs_tiff.py [--cli build/cli/tessera] [--repeat 5]
        [--workers 1,2] [--count 3000] [--size 224]

Writes, in a temporary folder, a 4096 x 3072 slide of real pixels (the Aperio sample of the
test data, mirrored to size) twice with the same 256 x 256 JPEG tiles: a MIRAX slide (16 x 12
camera images, no overlap, tests/mirax_writer.py) and a generic tiled TIFF (tifffile). Then
runs `tessera bench --layout random` on both, alternating, and prints each run's patches per
second, the CPU seconds the command took, and the median of each. The two checksums must be
equal (the same pixels): the script exits 1 when they are not.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402

import mirax_writer as MW  # noqa: E402
import vendor_writers as V  # noqa: E402


def write(folder):
    src = np.asarray(V.source_rgb(2048, 2048, 0, 0))[..., :3]
    big = np.concatenate([np.concatenate([src, src[:, ::-1]], 1)] * 2, 0)[:3072, :4096]
    mrxs = os.path.join(folder, "bench.mrxs")
    MW.build(big, 16, 12, 256, 256, 1).write(mrxs)
    tiff = os.path.join(folder, "bench.tiff")
    with tifffile.TiffWriter(tiff) as tw:
        V.write_jpeg_tiled(tw, np.ascontiguousarray(big), 256)
    return {"mirax": mrxs, "tiff": tiff}


def run(cli, path, args):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([cli, "bench", path] + args + ["--json"], capture_output=True, text=True,
                       check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    doc = json.loads(r.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return doc["patches"] / doc["seconds"], cpu, doc["checksum"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", default=os.path.join(os.path.dirname(HERE), "build", "cli",
                                                  "tessera"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as d:
        paths = write(d)
        for workers in a.workers.split(","):
            args = ["--layout", "random", "--count", str(a.count), "--size",
                    "%d,%d" % (a.size, a.size), "--workers", workers]
            res = {k: [] for k in paths}
            for _ in range(a.repeat):
                for k, p in paths.items():
                    res[k].append(run(a.cli, p, args))
            sums = {r[2] for k in res for r in res[k]}
            ok &= len(sums) == 1
            print("workers %s, %d random %dx%d patches, checksums %s" % (
                workers, a.count, a.size, a.size, "agree" if len(sums) == 1 else "DIFFER"))
            med = {}
            for k in paths:
                rates = [r[0] for r in res[k]]
                cpus = [r[1] for r in res[k]]
                med[k] = statistics.median(rates)
                print("  %-6s patches/s %s  median %.0f; CPU s %s  median %.2f" % (
                    k, " ".join("%.0f" % x for x in rates), med[k],
                    " ".join("%.2f" % x for x in cpus), statistics.median(cpus)))
            print("  mirax / tiff: %.2f" % (med["mirax"] / med["tiff"]))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
