"""NumPy transcriptions of tessera's exact area average (docs/RESOLUTION.md) and of the tissue
mask's per-pixel rules (docs/TISSUE.md), written from the documents, for the tests to compare
tessera's output with."""

import numpy as np

UNIT = 4096  # the sub-pixel lattice of the output pixels' edges


def edges(origin, scale, n):
    """The n + 1 edges of n output pixels along one axis, in 1/UNIT level pixels."""
    q = scale * UNIT
    return origin * UNIT + np.floor(np.arange(n + 1, dtype=np.float64) * q + 0.5).astype(np.int64)


def weights(e, lo, hi):
    """(n, hi - lo) int64 matrix: the covered length (1/UNIT pixels) of level pixel lo + k
    inside output pixel i."""
    k = np.arange(lo, hi, dtype=np.int64)
    a = np.maximum(e[:-1, None], k[None, :] * UNIT)
    b = np.minimum(e[1:, None], (k[None, :] + 1) * UNIT)
    return np.maximum(b - a, 0)


def source_span(e):
    """The level pixels [lo, hi) under edges e."""
    return int(e[0] // UNIT), int((e[-1] - 1) // UNIT + 1)


def area_average(read, lx0, ly0, sx, sy, width, height):
    """The exact area average: read(lx, ly, w, h) gives the level's pixels (h, w, c) uint8 of
    the rectangle with top-left level pixel (lx, ly) (the fill outside)."""
    ex, ey = edges(lx0, sx, width), edges(ly0, sy, height)
    x0, x1 = source_span(ex)
    y0, y1 = source_span(ey)
    src = read(x0, y0, x1 - x0, y1 - y0).astype(np.int64)
    wx, wy = weights(ex, x0, x1), weights(ey, y0, y1)
    # Exact integers: sum over rows then columns of w_y * w_x * pixel.
    across = np.einsum("ik,jkc->jic", wx, src)          # (rows, width, c)
    total = np.einsum("yj,jic->yic", wy, across)        # (height, width, c)
    den = (np.diff(ex)[None, :] * np.diff(ey)[:, None])[..., None]
    return ((total + den // 2) // den).astype(np.uint8)


def otsu(hist):
    """Otsu's threshold of a 256-bin histogram: the first t maximising the between-class
    variance of {v <= t} and {v > t} (as tessera_tissue_mask documents it)."""
    h = hist.astype(np.float64)
    total, sumall = h.sum(), (np.arange(256) * h).sum()
    w0 = np.cumsum(h)[:255]
    s0 = np.cumsum(np.arange(256) * h)[:255]
    w1 = total - w0
    ok = (w0 > 0) & (w1 > 0)
    d = s0 * total - sumall * w0
    between = np.where(ok, d * d / np.where(ok, w0 * w1, 1), -1.0)
    return int(np.argmax(between)) if ok.any() else 0


def classes(rgb, background, tolerance=10, black_max=40, pen_min_saturation=110,
            pen_hue=(70.0, 250.0), min_threshold=12, darkfield=False):
    """tessera's per-pixel rules before the connected-component steps: (tissue bool array,
    threshold)."""
    a = rgb[..., :3].astype(np.int64)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    mx, mn = a.max(-1), a.min(-1)
    sat = np.where(mx > 0, 255 * (mx - mn) // np.maximum(mx, 1), 0)
    excluded = (np.abs(a - background) <= tolerance).all(-1)
    if darkfield:
        lut = np.floor(255.0 * np.log1p(np.arange(256)) / np.log(256.0) + 0.5).astype(np.int64)
        value = lut[mx]
        hist = np.bincount(value.ravel(), minlength=256)
    else:
        d = np.maximum(mx - mn, 1).astype(np.float64)
        h = np.where(mx == r, (g - b) / d, np.where(mx == g, (b - r) / d + 2.0, (r - g) / d + 4.0))
        h = h * 60.0
        h = np.where(h < 0, h + 360.0, h)
        pen = (sat >= pen_min_saturation) & (mx > mn) & (h >= pen_hue[0]) & (h <= pen_hue[1])
        excluded |= (mx <= black_max) | pen
        value = sat
        hist = np.bincount(value[~excluded].ravel(), minlength=256)
    t = max(otsu(hist), min_threshold)
    return (~excluded) & (value > t), t
