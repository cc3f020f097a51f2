#!/usr/bin/python3
"""How fast `tessera view` serves Deep Zoom tiles: every tile of one Deep Zoom level fetched
over HTTP from the server (as a browser would, with C connections at once), beside the same
tiles made in this process by openslide-python's DeepZoomGenerator over Debian's OpenSlide and
encoded the same way (JPEG quality 90, no chroma subsampling), with as many threads.

  PYTHONPATH=build/python /usr/bin/python3 bench/viewer_tiles.py SLIDE [--level N]
      [--clients 1,4] [--repeat 3] [--cli build/cli/tessera]

--level defaults to the finest Deep Zoom level (level 0's pixels). Prints each run's tiles/s,
the medians and the ratio server / OpenSlide in process (above 1: the server is faster, HTTP
included), and checks that the first served tiles decode to the pixels of the reference tiles encoded
the same way.
"""

import argparse
import io
import os
import select
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CLI = os.path.join(os.path.dirname(HERE), "build", "cli", "tessera")


def jpeg(tile):
    out = io.BytesIO()
    tile.save(out, "JPEG", quality=90, subsampling=0)
    return out.getvalue()


def timed(fn, items, clients):
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(fn, items))
    return time.perf_counter() - start, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--level", type=int)
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cli", default=DEFAULT_CLI)
    a = ap.parse_args()

    ref_slide = openslide.OpenSlide(a.slide)
    ref = DeepZoomGenerator(ref_slide, 254, 1, limit_bounds=False)
    level = ref.level_count - 1 if a.level is None else a.level
    cols, rows = ref.level_tiles[level]
    tiles = [(c, r) for r in range(rows) for c in range(cols)]

    server = subprocess.Popen([a.cli, "view", a.slide, "--port", "0"], stdout=subprocess.PIPE,
                              text=True)
    ready, _, _ = select.select([server.stdout], [], [], 60)
    line = server.stdout.readline() if ready else ""
    if not line.startswith("Serving "):
        server.kill()
        sys.exit("the server printed no address: %r" % line)
    url = line.split(" at ", 1)[1].split(" ")[0]

    def fetch(t):
        with urllib.request.urlopen("%sslide_files/%d/%d_%d.jpeg" % (url, level, *t)) as r:
            return r.read()

    def make(t):
        return jpeg(ref.get_tile(level, t))

    try:
        print("%s: Deep Zoom level %d, %d tiles (%d x %d)" % (a.slide, level, len(tiles),
                                                              cols, rows))
        print("%-8s %-28s %s" % ("clients", "reader", "tiles/s per run"))
        for clients in [int(c) for c in a.clients.split(",")]:
            rates = {}
            for name, fn in (("tessera view (HTTP)", fetch), ("openslide-python, in process", make)):
                runs = []
                for _ in range(a.repeat):
                    seconds, out = timed(fn, tiles, clients)
                    runs.append(len(tiles) / seconds)
                rates[name] = statistics.median(runs)
                print("%-8d %-28s %s  median %.1f" % (clients, name,
                                                       " ".join("%.1f" % r for r in runs),
                                                       rates[name]))
                if fn is fetch:
                    served = out
            same = all(np.array_equal(np.asarray(Image.open(io.BytesIO(b))),
                                      np.asarray(Image.open(io.BytesIO(make(t)))))
                       for b, t in zip(served[:8], tiles[:8]))
            print("%-8d ratio server / openslide-python: %.2f  (first 8 tiles' pixels equal "
                  "the reference: %s)" % (clients, rates["tessera view (HTTP)"] /
                                          rates["openslide-python, in process"], same))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
        ref_slide.close()


if __name__ == "__main__":
    main()
