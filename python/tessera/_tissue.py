"""Tissue masks (Slide.tissue_mask; docs/TISSUE.md) and patch grids (tessera.grid;
docs/RESOLUTION.md)."""

_MODES = {"auto": 0, "brightfield": 1, "darkfield": 2}


class TissueMask:
    """A slide's tissue mask and how it maps onto level 0.

    array: (height, width) bool NumPy array, True where there is tissue; np.asarray(mask)
    gives it too. Mask pixel (i, j) (column i, row j) covers level-0 pixels
    [i * downsample, (i + 1) * downsample) x [j * downsample, (j + 1) * downsample).
    downsample: level-0 pixels per mask pixel; mpp: micrometres per mask pixel (0.0 when
    the slide gives none); level: the level it was computed from; mode: 'brightfield' or
    'darkfield'; threshold: the saturation (dark-field: log brightness) threshold used;
    tissue_fraction: the share of mask pixels that are tissue.
    """

    __slots__ = ("array", "downsample", "mpp", "level", "mode", "threshold", "tissue_fraction")

    def __init__(self, array, info):
        self.array = array
        self.downsample = info["downsample"]
        self.mpp = info["mpp"]
        self.level = info["level"]
        self.mode = "darkfield" if info["darkfield"] else "brightfield"
        self.threshold = info["threshold"]
        self.tissue_fraction = info["tissue_fraction"]

    @property
    def shape(self):
        return self.array.shape

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)

    def to_level0(self, i, j):
        """The level-0 (x, y) of the top-left corner of mask pixel (i, j)."""
        return i * self.downsample, j * self.downsample

    def __repr__(self):
        return "<tessera.TissueMask %dx%d, downsample %g, level %d, %s, %.1f%% tissue>" % (
            self.array.shape[1], self.array.shape[0], self.downsample, self.level, self.mode,
            100.0 * self.tissue_fraction)


def mode_number(mode):
    try:
        return _MODES[mode]
    except (KeyError, TypeError):
        raise ValueError("mode %r: use 'auto', 'brightfield' or 'darkfield'" % (mode,)) from None


class Grid:
    """Patch locations at a physical resolution (tessera.grid; docs/RESOLUTION.md).

    locations: (n, 2) int64 array of level-0 top-left corners, row by row: what
    read_region(locations, (read_width, read_height), level=level) takes. tissue: (n,)
    float32 tissue fractions by the slide's tissue mask. level, read_size (width, height in
    pixels of level), size (the patch in output pixels), scale (level pixels per output
    pixel), mpp (micrometres per output pixel, 0.0 without one), stride, mask_downsample.
    len(grid) is the number of patches; iterating gives (x, y) pairs.
    """

    __slots__ = ("locations", "tissue", "level", "read_size", "size", "scale", "mpp",
                 "stride", "mask_downsample")

    def __init__(self, locations, tissue, info):
        import numpy as np
        self.locations = np.frombuffer(locations, dtype=np.int64).reshape(-1, 2).copy()
        self.tissue = np.frombuffer(tissue, dtype=np.float32).copy()
        self.level = info["level"]
        self.read_size = (info["read_width"], info["read_height"])
        self.size = (info["width"], info["height"])
        self.scale = info["scale"]
        self.mpp = info["mpp"]
        self.stride = (info["stride_x"], info["stride_y"])
        self.mask_downsample = info["mask_downsample"]

    def __len__(self):
        return len(self.locations)

    def __iter__(self):
        return iter(self.locations)

    def __repr__(self):
        return "<tessera.Grid %d patches of %dx%d: level %d, read %dx%d, scale %g>" % (
            len(self), self.size[0], self.size[1], self.level, self.read_size[0],
            self.read_size[1], self.scale)


def _pair(value, what):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError("%s must be N or (W, H), not %r" % (what, value))
        return int(value[0]), int(value[1])
    return int(value), int(value)


def grid(slide, size, mpp=None, stride=None, min_tissue=0.0, level=None, *, mask_mpp=None,
         mask_downsample=None, mode="auto", background_tolerance=10, black_max=40,
         pen_min_saturation=110, pen_hue=(70.0, 250.0), min_threshold=12,
         min_tissue_area=10000.0, max_hole_area=40000.0, num_workers=0):
    """A grid of size (N or (W, H)) patches over the slide (a Slide / CuImage or a path) at
    mpp micrometres per pixel (the level and scale as read_region(..., mpp=) picks them), or
    over `level` as it is; patches every `stride` output pixels (default: side by side),
    those with a tissue fraction >= min_tissue. The mask keywords are tissue_mask's
    (mask_mpp, mask_downsample: its resolution). Returns a Grid. Deterministic."""
    from ._image import Slide
    if not isinstance(slide, Slide):
        with Slide(slide) as s:
            return grid(s, size, mpp, stride, min_tissue, level, mask_mpp=mask_mpp,
                        mask_downsample=mask_downsample, mode=mode,
                        background_tolerance=background_tolerance, black_max=black_max,
                        pen_min_saturation=pen_min_saturation, pen_hue=pen_hue,
                        min_threshold=min_threshold, min_tissue_area=min_tissue_area,
                        max_hole_area=max_hole_area, num_workers=num_workers)
    if mpp is not None and level is not None:
        raise ValueError("grid: mpp picks the level itself; give mpp or level, not both")
    width, height = _pair(size, "size")
    sx, sy = (0, 0) if stride is None else _pair(stride, "stride")
    lo, hi = pen_hue
    locations, tissue, info = slide.patch_grid(
        width, height, mpp=float(mpp or 0.0), level=int(level or 0), stride_x=sx, stride_y=sy,
        min_tissue=float(min_tissue), mask_mpp=float(mask_mpp or 0.0),
        mask_downsample=float(mask_downsample or 0.0), mode=mode_number(mode),
        background_tolerance=background_tolerance, black_max=black_max,
        pen_min_saturation=pen_min_saturation, pen_hue_min=float(lo), pen_hue_max=float(hi),
        min_threshold=min_threshold, min_tissue_area=float(min_tissue_area),
        max_hole_area=float(max_hole_area), num_workers=num_workers)
    return Grid(locations, tissue, info)
