"""Reads slides through openslide-python and pickles what it saw, for test_openslide_c.py.

Run as a program in a process of its own, so that the test can run it once over Debian's
libopenslide.so.0 and once with LD_LIBRARY_PATH pointing at tessera's: which library
openslide-python loads is decided when it is imported.

    openslide_reader.py OUT.pickle SLIDE...

For every slide: its properties, levels, associated images (their pixels), and a fixed set
of regions per level, drawn from the slide's own level sizes (so both runs draw the same
regions for a level they both have): random windows across the level and its edges, windows
left of and above the slide, and the whole level when it is small. Level-0 coordinates of
levels above 0 are whole multiples of the downsample where it is a whole number: elsewhere
OpenSlide interpolates between pixels (see README.md).
"""

import pickle
import random
import sys

import openslide


def regions(name, level, dims, ds):
    w, h = dims
    rnd = random.Random("%s/%d" % (name, level))
    out = []
    for _ in range(10):
        rw, rh = rnd.randint(1, 300), rnd.randint(1, 300)
        lx, ly = rnd.randint(-rw + 1, w + 20), rnd.randint(-rh + 1, h + 20)
        out.append((int(lx * ds), int(ly * ds), rw, rh))
    # level-0 origins between the level's pixels, which OpenSlide resamples
    for _ in range(4 if level > 0 else 0):
        rw, rh = rnd.randint(1, 300), rnd.randint(1, 300)
        out.append((rnd.randint(0, int(w * ds)), rnd.randint(0, int(h * ds)), rw, rh))
    # and between them across only, or down only: a tile then often holds every sample of its
    # part of the region, which pixman computes otherwise where the tile has no alpha (NDPI)
    for _ in range(3 if level > 0 else 0):
        rw, rh = rnd.randint(1, 300), rnd.randint(1, 300)
        lx, ly = rnd.randint(0, w - 1), rnd.randint(0, h - 1)
        out.append((int(lx * ds) + 1, int(ly * ds), rw, rh))
        out.append((int(lx * ds), int(ly * ds) + 1, rw, rh))
    # left of and above the slide: OpenSlide starts at level pixel 0 after (-x / ds) rounded
    # toward zero
    out.append((-int(3 * ds) - 1, -int(5 * ds) - 1, 97, 61))
    out.append((-1, 0, 50, 50))
    out.append((0, 0, min(w, 500), min(h, 500)))
    if w * h <= 4 << 20:
        out.append((0, 0, w, h))
    return out


def main():
    out = {"version": openslide.__library_version__, "slides": {}}
    for path in sys.argv[2:]:
        try:
            s = openslide.OpenSlide(path)
        except openslide.OpenSlideError as e:
            out["slides"][path] = {"error": str(e)}
            continue
        name = path.rsplit("/", 1)[-1]
        info = {
            "vendor": openslide.OpenSlide.detect_format(path),
            "properties": dict(s.properties),
            "levels": list(zip(s.level_dimensions, s.level_downsamples)),
            "associated": {k: (v.size, v.tobytes()) for k, v in s.associated_images.items()},
            "regions": {},
        }
        for level, (dims, ds) in enumerate(info["levels"]):
            for x, y, w, h in regions(name, level, dims, ds):
                info["regions"][(dims, level, x, y, w, h)] = s.read_region((x, y), level,
                                                                           (w, h)).tobytes()
        s.close()
        out["slides"][path] = info
    with open(sys.argv[1], "wb") as f:
        pickle.dump(out, f)


if __name__ == "__main__":
    main()
