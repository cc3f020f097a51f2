"""Independent readers for the differential tests: libvips (the `vips` command) and OpenSlide,
plus the helpers that crop, fill and compare images.
"""

import collections
import math
import os
import re
import struct
import subprocess
import tempfile

import numpy as np

# --- libvips -----------------------------------------------------------------------------

_VIPS_CACHE = collections.OrderedDict()
_VIPS_CACHE_SIZE = 6


def vips_decode(path, load_args=()):
    """Decodes one image of a TIFF with `vips tiffload` (never openslideload) into an
    (height, width, bands) uint8 array."""
    key = (os.path.abspath(path), tuple(load_args))
    if key in _VIPS_CACHE:
        _VIPS_CACHE.move_to_end(key)
        return _VIPS_CACHE[key]
    with tempfile.TemporaryDirectory(prefix="tessera-vips-") as d:
        out = os.path.join(d, "level.v")
        r = subprocess.run(["vips", "tiffload", str(path), out] + [str(a) for a in load_args],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("vips tiffload %s %s failed: %s" % (path, " ".join(load_args),
                                                                  r.stderr[-1500:]))
        with open(out, "rb") as f:
            head = f.read(64)
            magic = head[:4]
            if magic == b"\xb6\xa6\xf2\x08":  # VIPS_MAGIC_INTEL: little-endian fields
                endian = "<"
            elif magic == b"\x08\xf2\xa6\xb6":  # VIPS_MAGIC_SPARC
                endian = ">"
            else:
                raise RuntimeError("not a VIPS file: %r" % magic)
            w, h, bands, _unused, fmt, coding = struct.unpack(endian + "6i", head[4:28])
            if fmt != 0 or coding != 0:
                raise RuntimeError("vips gave format %d coding %d, expected uchar" % (fmt, coding))
            arr = np.frombuffer(f.read(w * h * bands), np.uint8)
        if arr.size != w * h * bands:
            raise RuntimeError("short VIPS file")
        arr = arr.reshape(h, w, bands)
    _VIPS_CACHE[key] = arr
    while len(_VIPS_CACHE) > _VIPS_CACHE_SIZE:
        _VIPS_CACHE.popitem(last=False)
    return arr


def vips_dims(path, load_args=()):
    """(width, height) of one image as libvips' tiffload sees it, without decoding it."""
    opts = []
    args = list(load_args)
    for k, v in zip(args[::2], args[1::2]):
        opts.append("%s=%s" % (k.lstrip("-"), v))
    spec = str(path) + ("[%s]" % ",".join(opts) if opts else "")
    r = subprocess.run(["vipsheader", spec], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("vipsheader %s failed: %s" % (spec, r.stderr[-1000:]))
    m = re.search(r": (\d+)x(\d+) uchar, (\d+) band.*tiffload", r.stdout)
    if not m:
        raise RuntimeError("unexpected vipsheader output %r" % r.stdout)
    return int(m.group(1)), int(m.group(2))


def vips_subifd_count(path):
    """The number of SubIFDs of the first directory, as libvips sees it (0 if none)."""
    r = subprocess.run(["vipsheader", "-f", "n-subifds", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        return 0
    return int(r.stdout.strip() or 0)


def vips_page_count(path):
    r = subprocess.run(["vipsheader", "-f", "n-pages", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("vipsheader failed on %s: %s" % (path, r.stderr))
    return int(r.stdout.strip())


# --- OpenSlide ---------------------------------------------------------------------------

_OS_CACHE = collections.OrderedDict()


def openslide_open(path):
    import openslide
    key = os.path.abspath(path)
    if key in _OS_CACHE:
        _OS_CACHE.move_to_end(key)
        return _OS_CACHE[key]
    s = openslide.OpenSlide(str(path))
    _OS_CACHE[key] = s
    while len(_OS_CACHE) > 4:
        _OS_CACHE.popitem(last=False)[1].close()
    return s


def openslide_region(slide, x, y, level, w, h):
    """OpenSlide's (already un-premultiplied) RGBA region as an (h, w, 4) array."""
    img = slide.read_region((int(x), int(y)), level, (int(w), int(h)))
    arr = np.asarray(img)
    assert arr.shape == (h, w, 4), arr.shape
    return arr


# --- geometry ----------------------------------------------------------------------------

def downsample(l0, lv):
    """The DESIGN rule: mean of the width and height ratios of level 0 to the level."""
    return (l0[0] / lv[0] + l0[1] / lv[1]) / 2.0


def level_origin(x, y, ds):
    return math.floor(x / ds), math.floor(y / ds)


def is_integer_ds(ds):
    return abs(ds - round(ds)) < 1e-12


def crop_fill(level, lx, ly, w, h, fill):
    """The (h, w, bands) crop of a decoded level at level coordinates (lx, ly) with `fill`
    outside, and the boolean mask of the pixels inside the image."""
    H, W, B = level.shape
    out = np.full((h, w, B), fill, np.uint8)
    inside = np.zeros((h, w), bool)
    x0, y0 = max(lx, 0), max(ly, 0)
    x1, y1 = min(lx + w, W), min(ly + h, H)
    if x1 > x0 and y1 > y0:
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = level[y0:y1, x0:x1]
        inside[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = True
    return out, inside


def to_rgb(arr):
    """Grayscale expanded to three equal channels; RGBA with alpha dropped."""
    b = arr.shape[2]
    if b == 1:
        return np.repeat(arr, 3, axis=2)
    if b == 3:
        return arr
    if b == 4:
        return arr[..., :3]
    if b == 2:
        return np.repeat(arr[..., :1], 3, axis=2)
    raise ValueError("unexpected band count %d" % b)


def alpha_of(arr):
    b = arr.shape[2]
    if b in (2, 4):
        return arr[..., -1]
    return np.full(arr.shape[:2], 255, np.uint8)


def regions_for_level(W, H, TW, TH, seed=0):
    """Regions (lx, ly, w, h, label) in level coordinates covering the interesting cases."""
    TW = max(1, min(TW, 4096))
    TH = max(1, min(TH, 4096))
    r = [
        (0, 0, 1, 1, "1x1-origin"),
        (W - 1, H - 1, 1, 1, "1x1-last"),
        (min(TW, W - 1), min(TH, H - 1), 1, 1, "1x1-tile-corner"),
        (TW if TW < W else 0, TH if TH < H else 0, min(TW, W), min(TH, H), "tile-aligned"),
        (0, 0, min(TW, W), min(TH, H), "first-tile"),
        (max(TW - 7, 0), max(TH - 5, 0), 30, 20, "straddle-1"),
        (TW // 2, TH // 2, 2 * TW + 3, TH + 9, "straddle-many"),
        (max(W - 50, 0), min(10, H - 1), min(50, W), min(40, H), "touch-right"),
        (min(5, W - 1), max(H - 33, 0), min(70, W), min(33, H), "touch-bottom"),
        (max(W - 20, 0), min(3, H - 1), 64, 16, "out-right"),
        (min(7, W - 1), max(H - 10, 0), 16, 64, "out-bottom"),
        (max(W - 5, 0), max(H - 6, 0), 20, 20, "out-corner"),
        (-10, -7, 40, 30, "negative"),
        (-3, min(TH + 1, H - 1), 10, 10, "negative-x"),
        (min(TW + 2, W - 1), -4, 12, 9, "negative-y"),
        (W + 5, H + 5, 10, 10, "outside-after"),
        (-100, -100, 50, 50, "outside-before"),
        (W, 0, 7, 5, "outside-right-edge"),
        (0, H, 5, 7, "outside-bottom-edge"),
        (0, 0, W, H, "whole-level"),
        (-2, -3, W + 5, H + 7, "whole-level-margin"),
    ]
    rng = np.random.default_rng(seed)
    for i in range(8):
        w = int(rng.integers(1, min(300, W + 40) + 1))
        h = int(rng.integers(1, min(300, H + 40) + 1))
        x = int(rng.integers(-40, W + 20))
        y = int(rng.integers(-40, H + 20))
        r.append((x, y, w, h, "random-%d" % i))
    return [(int(x), int(y), max(int(w), 1), max(int(h), 1), lab) for x, y, w, h, lab in r]


# --- comparison --------------------------------------------------------------------------

def describe_mismatch(got, exp, mask=None, what="", origin=(0, 0)):
    """None if got == exp where mask is True (everywhere if mask is None); otherwise a message
    with the first differing pixel (region row, column and level coordinates) and both values."""
    assert got.shape[:2] == exp.shape[:2], (got.shape, exp.shape)
    diff = got != exp
    if diff.ndim == 3:
        diff = diff.any(axis=2)
    if mask is not None:
        diff &= mask
    if not diff.any():
        return None
    ys, xs = np.nonzero(diff)
    y, x = int(ys[0]), int(xs[0])
    return ("%s: %d of %d pixels differ; first at region (row %d, col %d) = level (x %d, y %d): "
            "tessera %s, expected %s" % (what, int(diff.sum()), int(diff.size if mask is None
                                                                  else mask.sum()), y, x,
                                         origin[0] + x, origin[1] + y,
                                         got[y, x].tolist(), exp[y, x].tolist()))
