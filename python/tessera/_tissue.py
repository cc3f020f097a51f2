"""Tissue masks (Slide.tissue_mask; docs/TISSUE.md)."""

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
