#!/usr/bin/python3
"""The format layer's cost on DICOM: the same 256 x 256 JPEG tiles as a generic TIFF (written
by `vips tiffsave`) and as a DICOM WSI instance (each TIFF tile made a whole JPEG with the
TIFF's JPEGTables and stored as one frame, by tests/dicom_writer.py), read by `tessera bench`
with the same random patches, in turns. The checksums must agree (same pixels); the table
gives each run's seconds and the medians.

    /usr/bin/python3 bench/dicom_vs_tiff.py [--cli build/cli/tessera] [--runs 6]
        [--count 4000] [--workers 1] [--dir /tmp/dicom-vs-tiff]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import tifffile
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import dicom_writer as W  # noqa: E402


def write(folder):
    img = W.source_image(4096, 3072)
    png, tif, dcm = (os.path.join(folder, n) for n in ("src.png", "generic.tif", "slide.dcm"))
    Image.fromarray(img).save(png)
    subprocess.run(["vips", "tiffsave", png, tif, "--tile", "--tile-width", "256",
                    "--tile-height", "256", "--compression", "jpeg", "--Q", "85"], check=True)
    with tifffile.TiffFile(tif) as t:
        page = t.pages[0]
        lv = W.Level(np.zeros((1, 1, 3), np.uint8), (256, 256))  # replaced below
        lv.image, lv.codec = img, "jpeg"
        lv.across, lv.down = -(-img.shape[1] // 256), -(-img.shape[0] // 256)
        lv.frames, lv.decoded = {}, {}
        tables = page.jpegtables
        for k, (off, n) in enumerate(zip(page.dataoffsets, page.databytecounts)):
            t.filehandle.seek(off)
            data = t.filehandle.read(n)
            if tables:
                data = data[:2] + tables[2:-2] + data[2:]
            lv.frames[k % lv.across, k // lv.across] = data
        photometric = "YBR_FULL_422" if page.photometric == 6 else "RGB"
    W.Series().write(dcm, lv, photometric=photometric)
    return tif, dcm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", default=os.path.join(HERE, "..", "build", "cli", "tessera"))
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dir", default="/tmp/dicom-vs-tiff")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    paths = write(a.dir)
    times = {p: [] for p in paths}
    print("| run | generic TIFF s | DICOM s | checksum |\n|---|---|---|---|")
    for run in range(a.runs):
        sums = set()
        for p in paths:
            r = subprocess.run([a.cli, "bench", p, "--layout", "random", "--count",
                                str(a.count), "--size", "224,224", "--workers", str(a.workers),
                                "--seed", str(run + 1), "--json"], capture_output=True,
                               text=True, check=True)
            doc = json.loads(r.stdout)
            times[p].append(doc["seconds"])
            sums.add(doc["checksum"])
        assert len(sums) == 1, "checksums differ: %s" % sums
        print("| %d | %.3f | %.3f | %d |" % (run + 1, times[paths[0]][-1], times[paths[1]][-1],
                                          sums.pop()))
    g, d = (statistics.median(times[p]) for p in paths)
    print("\nmedian: generic TIFF %.3f s, DICOM %.3f s: DICOM takes %.1f %% of the TIFF's time"
          % (g, d, 100 * d / g))


if __name__ == "__main__":
    main()
