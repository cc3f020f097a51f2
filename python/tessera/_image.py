"""Slide (tessera's reading API over tessera._tessera.Slide), CuImage (the same, as cuCIM
behaves: its regions, channels and metadata) and the cache object."""

import math
import numbers
import os
import warnings

from . import _tessera
from ._cucim import UINT8, CacheType, default_capacity
from ._tissue import TissueMask, mode_number

def _device(device):
    """(0, 0) for the CPU, (1, N) for CUDA device N: from 'cpu', 'cuda', 'gpu', 'cuda:N', or
    anything whose str() is one of those (a torch.device, cuCIM's Device). RuntimeError
    saying what is missing when CUDA is asked for and cannot be had."""
    name = "cpu" if device is None else str(device).strip().lower()
    if name == "cpu":
        return 0, 0
    if name in ("cuda", "gpu") or name.startswith("cuda:"):
        index = 0
        if name.startswith("cuda:"):
            try:
                index = int(name[5:])
            except ValueError:
                index = -1
            if index < 0:
                raise ValueError("device %r: the CUDA device is a number, cuda:N" % (device,))
        try:
            _tessera.cuda_status()
        except RuntimeError as e:
            raise RuntimeError("device=%r: CUDA is not available: %s" % (device, e)) from None
        return 1, index
    raise ValueError("unknown device %r: use 'cpu' or 'cuda'" % (device,))


_INT32 = (-(1 << 31), (1 << 31) - 1)
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _integer(value, what, bounds=_INT32):
    """An int within bounds (ValueError outside, TypeError for a non-integer)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError("%s must be an integer, not %s" % (what, type(value).__name__))
    value = int(value)
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError("%s %d is out of range (%d .. %d)" % (what, value, *bounds))
    return value


def _coordinate(value):
    """A location coordinate: an integer, or a float holding a whole number (as the batch
    path accepts them)."""
    if isinstance(value, bool):
        raise TypeError("a location coordinate must be an integer, not bool")
    if isinstance(value, numbers.Integral):
        return _integer(value, "location coordinate", _INT64)
    if isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f) or not f.is_integer():
            raise ValueError("a location must be whole pixels, not %r" % (value,))
        return _integer(int(f), "location coordinate", _INT64)
    raise TypeError("a location coordinate must be an integer, not %s" % type(value).__name__)


def _is_single_location(location):
    """True for one (x, y) given as a list, tuple or 1-d array of two numbers (anything else
    is a stream of patches: pairs, or flat x0, y0, x1, y1, ... as cuCIM takes them)."""
    if getattr(location, "ndim", None) == 1:
        return len(location) == 2
    if isinstance(location, (list, tuple)) and len(location) == 2:
        return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in location)
    return False


def _is_empty(location):
    """True for no locations that can say so without being consumed: [], (), an (0, 2) or
    (0,) array."""
    try:
        return len(location) == 0
    except TypeError:
        return False


def _dim_order(dim_order):
    """dim_order (default 'YXC') upper-cased, checked to hold only X, Y and C."""
    order = str(dim_order or "YXC").upper()
    if any(d not in "XYC" for d in order):
        raise ValueError("dim_order %r: the dimensions are X, Y and C" % (dim_order,))
    return order


def _cucim_tiff(props):
    """The keys cuCIM gives metadata['tiff'], from the TIFF properties: model and software
    (str, '' when absent), resolution_unit ('inch', 'centimeter', or '' for none),
    x_resolution and y_resolution (float, 1.0 when absent)."""
    units = {"inch": "inch", "centimeter": "centimeter"}
    return {
        "model": props.get("tiff.Model", ""),
        "software": props.get("tiff.Software", ""),
        "resolution_unit": units.get(props.get("tiff.ResolutionUnit"), ""),
        "x_resolution": _float(props.get("tiff.XResolution"), 1.0),
        "y_resolution": _float(props.get("tiff.YResolution"), 1.0),
    }


def _json_resolutions(resolutions):
    """resolutions as cuCIM's metadata block has them: lists where the property has tuples."""
    return {k: [list(v) if isinstance(v, tuple) else v for v in vals]
            if isinstance(vals, tuple) else vals for k, vals in resolutions.items()}


def _float(text, default):
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def _reopen(cls, path, limits):
    return cls(path, **limits)


def _is_url(path):
    """Whether path is a URL tessera opens remotely (http://, https://, s3://)."""
    prefix = path[:8].lower()
    if isinstance(prefix, bytes):
        prefix = prefix.decode("latin-1")
    return prefix.startswith(("http://", "https://", "s3://"))


def _is_file_object(obj):
    """A file object to read through (read and seek), not a path (str, bytes, os.PathLike)."""
    return (not isinstance(obj, (str, bytes, os.PathLike)) and hasattr(obj, "read")
            and hasattr(obj, "seek"))


def _absolute(path):
    """path (str or bytes) made absolute against the working directory, without resolving
    '..' (which os.path.abspath would do textually, wrongly after a symbolic link). A URL is
    left as it is."""
    if _is_url(path) or os.path.isabs(path):
        return path
    return os.path.join(os.getcwdb() if isinstance(path, bytes) else os.getcwd(), path)


def _absolute_path(slide):
    """The absolute path of a slide (the file a CuImage opened) or of a path: a process that
    opens it again may have another working directory (Dask workers chdir)."""
    if isinstance(slide, Slide):
        if slide._abspath is None:
            raise TypeError("a slide opened from a file object has no path or URL that another "
                            "process could open: open it by path or URL")
        return slide._abspath
    return _absolute(os.fspath(slide.path if isinstance(slide, _tessera.Slide) else slide))


class SlideNotFoundError(FileNotFoundError, ValueError):
    """The file to open does not exist: an OSError (FileNotFoundError) as Python raises for a
    missing file, and a ValueError as cuCIM raises, so either `except` catches it."""


class Slide(_tessera.Slide):
    """An open whole-slide image, read with cuCIM's method names and tessera's defaults.

    Slide(path) opens the file (SlideNotFoundError, both a FileNotFoundError and a
    ValueError, when it does not exist; OSError when it cannot be read; TesseraError when it
    is not a slide tessera reads). Keyword limits (max_directories, max_dimension,
    max_tile_bytes, max_decoded_tile_bytes, max_read_bytes; see limits()) replace the
    library's safe defaults; a read over max_read_bytes (4 GiB) raises TesseraError. Use it as
    a context manager or call close(). Thread-safe: many threads may read at once. Pickles by
    absolute path (the receiving process opens the file again, whatever its working
    directory), and keeps working in a child after fork(), so it can live in a PyTorch
    Dataset.

    Slide(url) opens an http:// or https:// URL (a presigned object-store URL too) with range
    requests (see README, "Remote slides"); it pickles by URL. Slide(fileobj) reads through any
    object with read() and seek() (a file opened with open(..., "rb"), an fsspec file, so GCS,
    Azure, S3 and whatever fsspec reaches): the library's threads call it with the GIL taken
    for each seek and read only, one at a time per object. identity=str says what the object
    holds, for the tile cache (the same identity must mean the same bytes: e.g. a URL with its
    ETag); without it the slide's tiles are cached for this open only. A slide opened from a
    file object pickles by pickling that object. io_stats() counts the reads made.

    Regions are RGB unless channels=4 is asked for, and come back as plain Arrays; metadata
    has tessera's own properties. CuImage is the same reader with cuCIM's behaviour.
    """

    def __init__(self, path, **limits):
        try:
            super().__init__(path, **limits)
        except FileNotFoundError as e:
            raise SlideNotFoundError(e.errno, "Cannot open the slide (%s)" % os.strerror(
                e.errno), e.filename) from None
        if _is_file_object(path):
            self._abspath = None
            self._fileobj = path  # pickled as it is (an fsspec file pickles; a local one not)
        else:
            self._abspath = _absolute(self.path)  # against the working directory it was opened in
        self._levels = [self.level_info(i) for i in range(self.level_count)]
        self._limits = limits
        self._spacing_xy, self._spacing_unit = self._physical(self.properties())
        self._channels = self._default_channels()

    def _default_channels(self):
        return 3

    @staticmethod
    def _physical(props):
        """(x, y) size of a level-0 pixel and its unit: micrometres where the slide says (its
        tessera.mpp-x/y), else 1 with no unit."""
        try:
            return (float(props["tessera.mpp-x"]), float(props["tessera.mpp-y"])), "micrometer"
        except (KeyError, ValueError):
            return (1.0, 1.0), ""

    def __reduce__(self):
        if self._abspath is None:
            return (_reopen, (type(self), self._fileobj, self._limits))
        return (_reopen, (type(self), self._abspath, self._limits))

    # ---- what the image is -------------------------------------------------------------

    @property
    def is_loaded(self):
        return not self.closed

    @property
    def device(self):
        return "cpu"

    @property
    def ndim(self):
        return 3

    @property
    def dims(self):
        return "YXC"

    @property
    def shape(self):
        """[height, width, channels] of level 0 (a list, as cuCIM gives it)."""
        lv = self._levels[0]
        return [lv["height"], lv["width"], self._channels]

    def size(self, dim_order=""):
        """The size along each dimension of dim_order (default 'YXC'), e.g. size('XY')."""
        lv = self._levels[0]
        sizes = {"X": lv["width"], "Y": lv["height"], "C": self._channels}
        return [sizes[d] for d in _dim_order(dim_order)]

    @property
    def dtype(self):
        """uint8, as cuCIM's DLDataType (code 1, bits 8, lanes 1) that is also NumPy's dtype
        (== np.uint8, numpy.dtype(img.dtype))."""
        return UINT8

    @property
    def typestr(self):
        return "|u1"

    @property
    def channel_names(self):
        return list("RGBA"[:self._channels])

    def spacing(self, dim_order=""):
        """Physical size of a level-0 pixel per dimension: micrometres for X and Y where the
        slide says (1.0 where not), 1.0 for C."""
        x, y = self._spacing_xy
        values = {"X": x, "Y": y, "C": 1.0}
        return [values[d] for d in _dim_order(dim_order)]

    def spacing_units(self, dim_order=""):
        units = {"X": self._spacing_unit, "Y": self._spacing_unit, "C": "color"}
        return [units[d] for d in _dim_order(dim_order)]

    @property
    def origin(self):
        """Where pixel (0, 0) is: [0.0, 0.0, 0.0] (three values, as cuCIM)."""
        return [0.0, 0.0, 0.0]

    @property
    def direction(self):
        """Direction cosines, 3 x 3 (as cuCIM): the identity."""
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

    @property
    def coord_sys(self):
        return "LPS"

    @property
    def resolutions(self):
        """level_count, level_dimensions ((width, height) each), level_downsamples and
        level_tile_sizes ((tile width, tile height) each)."""
        return {
            "level_count": len(self._levels),
            "level_dimensions": tuple((lv["width"], lv["height"]) for lv in self._levels),
            "level_downsamples": tuple(lv["downsample"] for lv in self._levels),
            "level_tile_sizes": tuple((lv["tile_width"], lv["tile_height"])
                                      for lv in self._levels),
        }

    @property
    def raw_metadata(self):
        """The first directory's ImageDescription (Aperio's header, Philips' or OME's XML)."""
        return self.properties().get("tiff.ImageDescription", "")

    @property
    def metadata(self):
        """The properties grouped by prefix ({'aperio': {'AppMag': '20', ...}, 'tessera': {...},
        'tiff': {...}}), the 'tiff' group with cuCIM's keys too (model, software,
        resolution_unit, x_resolution, y_resolution), plus a 'cucim' block describing the
        image as cuCIM does."""
        groups = {}
        props = self.properties()
        for key, value in props.items():
            prefix, dot, rest = key.partition(".")
            if dot:
                groups.setdefault(prefix, {})[rest] = value
            else:
                groups.setdefault("", {})[key] = value
        groups.setdefault("tiff", {}).update(_cucim_tiff(props))
        groups["cucim"] = self._cucim_block()
        return groups

    def _cucim_block(self):
        return {
            "path": os.fsdecode(self.path),
            "ndim": self.ndim,
            "dims": self.dims,
            "shape": self.shape,
            "dtype": {"code": 1, "bits": 8, "lanes": 1},
            "typestr": self.typestr,
            "channel_names": self.channel_names,
            "spacing": self.spacing(),
            "spacing_units": self.spacing_units(),
            "origin": self.origin,
            "direction": self.direction,
            "coord_sys": self.coord_sys,
            "resolutions": _json_resolutions(self.resolutions),
            "associated_images": sorted(self.associated_images),
        }

    @property
    def color_profile(self):
        """The slide's ICC colour profile as a PIL.ImageCms.ImageCmsProfile (its bytes are
        icc_profile), or None when the file has none. Reading pixels does not apply it."""
        icc = self.icc_profile
        if icc is None:
            return None
        from io import BytesIO

        from PIL import ImageCms
        return ImageCms.ImageCmsProfile(BytesIO(icc))

    @property
    def associated_images(self):
        """The names of the associated images (label, macro, thumbnail, ...), as a set."""
        return set(self.associated_names())

    def associated_image(self, name, device="cpu"):
        """The whole associated image `name` as an (height, width, 3) Array (host memory)."""
        if _device(device)[0] != 0:
            raise ValueError("associated images are read into host memory (device='cpu'); "
                             "device='cuda' is for regions and batches")
        if not isinstance(name, str):
            raise TypeError("the associated image name is a str, not %s" % type(name).__name__)
        if name not in self.associated_names():
            raise ValueError("%s has no associated image %r (it has: %s)" % (
                os.fsdecode(self.path), name, ", ".join(self.associated_names()) or "none"))
        return self.read_associated(name)

    # ---- reading ----------------------------------------------------------------------

    def read_region(self, location=None, size=None, level=0, num_workers=0, batch_size=1,
                    drop_last=False, prefetch_factor=2, shuffle=False, seed=0, device="cpu",
                    buf=None, shm_name="", *, channels=None, fill=None, mpp=None,
                    downsample=None, fast=False):
        """Reads one region, or a stream of patches.

        location: one (x, y) in level-0 pixels -> an Array (height, width, channels); from a
        CuImage, a tessera.Region (that Array with cuCIM's image attributes). A list,
        tuple, (n, 2) NumPy array or any iterable of (x, y) pairs, or flat x0, y0, x1, y1, ...
        (as cuCIM) -> an iterator of batches (batch_size, height, width, channels), or of
        (height, width, channels) items when batch_size is 1, with len(); so is one (x, y)
        with batch_size > 1. Locations are converted to int64 once. location and size
        omitted -> the whole level. No locations ([], (), an (0, 2) array, an empty iterator)
        -> an iterator of no batches, len() 0 (cuCIM reads one region at (0, 0) for them
        instead: a loop over the result then ran over its rows).
        size: (width, height) in pixels of `level`.
        num_workers: threads decoding tiles (a region's, or batches ahead of the consumer).
        batch_size, drop_last, prefetch_factor, shuffle, seed: as cuCIM (and PyTorch).
        channels: 3 (RGB) or 4 (RGBA, alpha 0 outside the image); default 3 (CuImage: 4 for
        a file whose pixels are not RGB, as cuCIM). fill: 0..255 outside the image (default:
        the slide's background).
        device: 'cpu', or 'cuda' / 'cuda:N': Arrays in GPU memory (__cuda_array_interface__,
        __dlpack__; .cpu() copies one back), JPEG tiles decoded there by nvJPEG. Where CUDA
        cannot be had, RuntimeError "CUDA is not available: ..." says what is missing.
        mpp: read at that many micrometres per pixel: size is then in pixels at mpp, and the
        level is the coarsest at most that fine (level_for_mpp), each output pixel the exact
        area average of the level pixels it covers (docs/RESOLUTION.md); ValueError for a
        slide without an mpp (give downsample instead). downsample: the same with level-0
        pixels per output pixel. Either replaces level; several locations give an iterator of
        NumPy batches read on num_workers threads (CPU only). fast=True (with mpp or
        downsample): JPEG tiles decoded at 1/2, 1/4 or 1/8 by the reduced-size IDCT where the
        scale allows, close to the exact mode but not equal (docs/RESOLUTION.md).
        """
        if mpp is not None or downsample is not None:
            return self._read_scaled(location, size, level, mpp, downsample, num_workers,
                                     batch_size, drop_last, channels, fill, device, buf,
                                     shm_name, bool(fast), prefetch_factor, shuffle, seed)
        if fast:
            raise ValueError("read_region(fast=True) goes with mpp= or downsample=")
        device, device_id = _device(device)
        if buf is not None:
            raise ValueError("read_region(buf=...) is not supported: tessera allocates each "
                             "result, which stays valid while referenced")
        if shm_name:
            raise ValueError("read_region(shm_name=...) is not supported: use "
                             "CuImage.cache('shared_memory', ...) to share decoded tiles")
        level = _integer(level, "level")
        if not 0 <= level < len(self._levels):
            n = len(self._levels)
            # the words in parentheses are cuCIM's, which code written for it matches
            raise ValueError("level %d does not exist: %s has levels 0..%d ('level' should "
                             "be less than %d)" % (level, os.fsdecode(self.path), n - 1, n))
        fill = -1 if fill is None else _integer(fill, "fill")
        channels = self._channels if channels is None else _integer(channels, "channels")
        num_workers = _integer(num_workers, "num_workers")
        batch_size = _integer(batch_size, "batch_size")
        whole_level = size is None or (isinstance(size, (list, tuple)) and len(size) == 0)
        if location is None or (batch_size == 1 and _is_single_location(location)):
            x, y = (0, 0) if location is None else location
            if whole_level:
                width, height = self._levels[level]["width"], self._levels[level]["height"]
            else:
                width, height = self._size(size)
            if device:
                # One patch made where batches are: a CUDA iterator of one location.
                with self.batches([(x, y)], width, height, level, 1, num_workers, False, 1,
                                  False, 0, channels, fill, device, device_id) as one:
                    return self._region(next(iter(one)), level)
            return self._region(self._read(x, y, width, height, level, channels, fill,
                                           num_workers), level)
        if whole_level and _is_empty(location):
            # no patch is read: the size only has to be one the iterator takes
            width, height = self._levels[level]["width"], self._levels[level]["height"]
        elif whole_level:
            raise ValueError("read_region with several locations needs size=(width, height)")
        else:
            width, height = self._size(size)
        seed = _integer(seed, "seed", (0, (1 << 64) - 1))
        return self.batches(location, width, height, level, batch_size,
                            num_workers, bool(drop_last),
                            _integer(prefetch_factor, "prefetch_factor"), bool(shuffle), seed,
                            channels, fill, device, device_id)

    def tissue_mask(self, mpp=None, downsample=None, *, mode="auto", background_tolerance=10,
                    black_max=40, pen_min_saturation=110, pen_hue=(70.0, 250.0),
                    min_threshold=12, min_tissue_area=10000.0, max_hole_area=40000.0,
                    num_workers=0):
        """The slide's tissue mask, a TissueMask (its .array a (height, width) bool array;
        np.asarray(mask) gives it) with what maps it to level 0 (.downsample, .mpp, .level).

        mpp: micrometres per mask pixel (ValueError for a slide without an mpp), or
        downsample: level-0 pixels per mask pixel; neither: 8 um per pixel, or downsample 32
        without an mpp. The mask is computed on the coarsest level at least as fine, area-
        averaged to the mask's pixels; background (the slide's fill colour, within
        background_tolerance), black (brightest channel <= black_max; -1: no rule) and pen
        (saturation >= pen_min_saturation, 256: no rule, hue within pen_hue degrees) pixels
        are not tissue; the rest is tissue above Otsu's threshold of their saturation (at
        least min_threshold); then tissue pieces smaller than min_tissue_area and holes
        smaller than max_hole_area (square micrometres; square level-0 pixels without an
        mpp) are dropped and filled. mode: 'auto' (dark-field when the median brightness is
        below 64), 'brightfield' or 'darkfield'. docs/TISSUE.md has the details."""
        import numpy as np
        if mpp is not None and downsample is not None:
            raise ValueError("tissue_mask: give mpp or downsample, not both")
        if mpp is not None and not self.properties().get("tessera.mpp-x"):
            raise ValueError("tissue_mask(mpp=%r): %s does not say its microns per pixel; give "
                             "downsample= instead" % (mpp, os.fsdecode(self.path)))
        lo, hi = pen_hue
        array, info = _tessera.Slide.tissue_mask(
            self, mpp=float(mpp or 0.0), downsample=float(downsample or 0.0),
            mode=mode_number(mode), background_tolerance=background_tolerance,
            black_max=black_max, pen_min_saturation=pen_min_saturation,
            pen_hue_min=float(lo), pen_hue_max=float(hi), min_threshold=min_threshold,
            min_tissue_area=float(min_tissue_area), max_hole_area=float(max_hole_area),
            num_workers=num_workers)
        return TissueMask(np.asarray(array).view(np.bool_), info)  # bytes 0 and 1

    def level_for_mpp(self, mpp):
        """(level, scale): the coarsest level whose pixels are at most mpp micrometres (a
        level within 1 % counts), and the level pixels per output pixel (a scale within 1 %
        of a whole number is that number). ValueError for a slide without an mpp."""
        return _tessera.Slide.level_for_mpp(self, float(mpp))

    def level_for_downsample(self, downsample):
        """(level, scale) for downsample level-0 pixels per output pixel: the coarsest level
        whose downsample is at most it (within 1e-6), and downsample / that level's."""
        d = float(downsample)
        if not (d > 0 and math.isfinite(d)):
            raise ValueError("downsample must be a number > 0, not %r" % (downsample,))
        level = 0
        for i, lv in enumerate(self._levels):
            if lv["downsample"] <= d * (1 + 1e-6):
                level = i
        return level, d / self._levels[level]["downsample"]

    def _read_scaled(self, location, size, level, mpp, downsample, num_workers, batch_size,
                     drop_last, channels, fill, device, buf, shm_name, fast, prefetch_factor,
                     shuffle, seed):
        """read_region with mpp= or downsample=."""
        if mpp is not None and downsample is not None:
            raise ValueError("read_region: give mpp or downsample, not both")
        if level not in (0, None):
            raise ValueError("read_region: mpp and downsample pick the level themselves; "
                             "leave level out")
        if _device(device)[0] != 0:
            raise ValueError("read_region(mpp=...) reads into host memory (device='cpu')")
        if buf is not None or shm_name:
            raise ValueError("read_region(mpp=...) takes no buf or shm_name")
        if location is None or size is None:
            raise ValueError("read_region(mpp=...) needs a location and a size (in pixels at "
                             "that resolution)")
        if mpp is not None:
            what = float(mpp)
            if not self.properties().get("tessera.mpp-x"):
                raise ValueError("read_region(mpp=%r): %s does not say its microns per pixel; "
                                 "give level= or downsample= instead" % (
                                     mpp, os.fsdecode(self.path)))
            lv, scale = self.level_for_mpp(what)
        else:
            lv, scale = self.level_for_downsample(downsample)
        width, height = self._size(size)
        channels = self._channels if channels is None else _integer(channels, "channels")
        fill = -1 if fill is None else _integer(fill, "fill")
        workers = _integer(num_workers, "num_workers")
        batch_size = _integer(batch_size, "batch_size")

        def one(xy):
            x, y = xy
            return _tessera.Slide.read_region_scaled(
                self, _coordinate(x), _coordinate(y), width, height, lv, scale, scale,
                channels=channels, fill=fill, fast=fast)

        if batch_size == 1 and _is_single_location(location):
            # an Array (not a Region: a Region's spacing is its level's, not the scale's)
            x, y = location
            return _tessera.Slide.read_region_scaled(
                self, _coordinate(x), _coordinate(y), width, height, lv, scale, scale,
                channels=channels, fill=fill, num_workers=workers, fast=fast)
        if fast:
            return _ScaledBatches(one, location, batch_size, bool(drop_last), workers)
        # The batch reader reads each patch's level pixels (its workers, prefetch and tile
        # sharing), and each batch is area-averaged as it is handed out: the same pixels as
        # one read_region(mpp=) per patch (tessera_resample_area).
        exact = scale == 1.0
        rw = width if exact else int(math.ceil(width * scale)) + 1
        rh = height if exact else int(math.ceil(height * scale)) + 1
        it = self.batches(location, rw, rh, lv, batch_size, workers, bool(drop_last),
                          _integer(prefetch_factor, "prefetch_factor"), bool(shuffle),
                          _integer(seed, "seed", (0, (1 << 64) - 1)), channels, fill, 0, 0)
        return it if exact else _ResampledBatches(it, rw, rh, width, height, scale, batch_size)

    def _region(self, array, level):
        """What read_region gives for one region: the Array itself (CuImage: as an image)."""
        return array

    @staticmethod
    def _size(size):
        try:
            width, height = size
        except (TypeError, ValueError):
            raise ValueError("size must be (width, height), not %r" % (size,)) from None
        return (_integer(width, "width", (1, _INT64[1])),
                _integer(height, "height", (1, _INT64[1])))

    def _read(self, x, y, width, height, level, channels, fill, num_workers):
        return _tessera.Slide.read_region(self, _coordinate(x), _coordinate(y), width, height,
                                          level, channels, fill, num_workers)

    def __repr__(self):
        return "<tessera.%s path:%s%s>" % (type(self).__name__, os.fsdecode(self.path),
                                           " (closed)" if self.closed else "")

    # ---- the cache --------------------------------------------------------------------

    @staticmethod
    def cache(type=None, memory_capacity=None, capacity=None, record_stat=False, *, name=None,
              **cucim_options):
        """Configures the process's decoded-tile cache and returns it; with no type, returns
        the cache configured now.

        type: 'nocache' (or 'no_cache'), 'per_process' or 'shared_memory' (or a CacheType);
        any other name means no cache, as in cuCIM, with a warning. memory_capacity: MiB
        (default 1024). capacity: most tiles held (default: one per 256 x 256 x 3 bytes of
        memory_capacity, as cuCIM). record_stat: count hits and misses. name (shared_memory):
        processes configuring the same name share one segment; without one, processes forked
        afterwards share it. cuCIM's mutex_pool_capacity, list_padding and
        extra_shared_memory_size are accepted and have no use here.
        """
        unknown = set(cucim_options) - {"mutex_pool_capacity", "list_padding",
                                        "extra_shared_memory_size"}
        if unknown:
            raise TypeError("cache() got unexpected keyword arguments: %s" % ", ".join(
                sorted(unknown)))
        if type is None:
            return Cache()
        kind = _cache_type(type)
        mib = 1024 if memory_capacity is None else _integer(memory_capacity, "memory_capacity")
        items = default_capacity(mib) if capacity is None else _integer(capacity, "capacity")
        _tessera.cache_configure(kind.config_name, mib, items, bool(record_stat), name)
        Cache._name = name if kind == CacheType.SharedMemory else None
        return Cache()


class CuImage(Slide):
    """An open whole-slide image, as cuCIM's CuImage: code written for cuCIM runs on it with
    only its import changed. Opening, limits, pickling and threads as Slide; what differs:

    - read_region of one region gives a region CuImage (tessera.Region): the Array, without a
      copy, with cuCIM's image attributes (shape, dims, size(), dtype, channel_names,
      resolutions, spacing(), metadata, ...);
    - a file whose pixels are not RGB (gray, gray+alpha, RGBA) reads as RGBA by default, and
      says so (shape, channel_names), as cuCIM reads it;
    - spacing() of a file whose ResolutionUnit is none is its resolution, without unit;
    - metadata has the groups cuCIM gives (the vendor's, 'tiff', 'cucim'): tessera's own
      properties are in properties() and Slide.metadata.
    """

    def _default_channels(self):
        return 3 if self._levels[0]["samples_per_pixel"] == 3 else 4

    @staticmethod
    def _physical(props):
        xy, unit = Slide._physical(props)
        if not unit and props.get("tiff.ResolutionUnit") == "none":
            # cuCIM's spacing without a unit: the resolution tags as they are
            t = _cucim_tiff(props)
            xy = (t["x_resolution"], t["y_resolution"])
        return xy, unit

    @property
    def metadata(self):
        """The properties grouped by prefix as cuCIM groups them ({'aperio': {...}, 'tiff':
        {...}}: 'tiff' with cuCIM's keys beside tessera's), plus the 'cucim' block."""
        groups = super().metadata
        del groups["tessera"]
        return groups

    def _region(self, array, level):
        region = Region(array)
        region._image = self
        region._level = level
        return region


_ARRAY_SHAPE = _tessera.Array.shape


class _ResampledBatches:
    """A batch iterator of level patches, each batch area-averaged as it is handed out: NumPy
    arrays (n, height, width, channels), or (height, width, channels) items for batch_size 1;
    len() as the iterator's."""

    def __init__(self, it, rw, rh, width, height, scale, batch_size):
        self._it, self._rw, self._rh = it, rw, rh
        self._w, self._h, self._scale, self._one = width, height, scale, batch_size == 1

    def __len__(self):
        return len(self._it)

    def __iter__(self):
        import numpy as np
        for batch in self._it:
            a = np.asarray(batch)
            if a.ndim == 3:
                a = a[None]
            out = np.asarray(_tessera.resample(a, a.shape[0], self._rh, self._rw, a.shape[3],
                                               self._w, self._h, self._scale, self._scale))
            yield out[0] if self._one else out


class _ScaledBatches:
    """Batches of patches read at a physical resolution (read_region(locations, size,
    mpp=...)): NumPy arrays (n, height, width, channels), or (height, width, channels) items
    when batch_size is 1, in location order, read on num_workers threads (the GIL is released
    while each patch is read)."""

    def __init__(self, read_one, locations, batch_size, drop_last, workers):
        import numpy as np
        xy = np.asarray(list(locations) if not hasattr(locations, "__len__") else locations,
                        dtype=np.int64)
        if xy.ndim == 1:
            xy = xy.reshape(-1, 2)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError("locations must be (x, y) pairs")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._xy, self._read, self._n = xy, read_one, batch_size
        self._drop, self._workers = drop_last, workers

    def __len__(self):
        full, rest = divmod(len(self._xy), self._n)
        return full + (1 if rest and not self._drop else 0)

    def __iter__(self):
        import numpy as np
        pool = None
        if self._workers > 1:
            from concurrent.futures import ThreadPoolExecutor
            pool = ThreadPoolExecutor(self._workers)
        try:
            for b in range(len(self)):
                part = self._xy[b * self._n:(b + 1) * self._n]
                arrays = list(pool.map(self._read, part) if pool else map(self._read, part))
                batch = np.stack([np.asarray(a) for a in arrays])
                yield batch[0] if self._n == 1 else batch
        finally:
            if pool:
                pool.shutdown()


class _Shape(tuple):
    """A shape: a tuple, as NumPy's, that also equals the list cuCIM gives."""

    __slots__ = ()

    def __eq__(self, other):
        return tuple.__eq__(self, tuple(other) if isinstance(other, list) else other)

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = tuple.__hash__


class Region(_tessera.Array):
    """One region CuImage.read_region read: an Array (np.asarray, DLPack, the buffer protocol
    and, on a GPU, __cuda_array_interface__ show its memory without a copy) with the image
    attributes cuCIM gives a region: one level the size of the region, spacing divided by
    the level's downsample (as cuCIM divides it), no associated images, no raw metadata."""

    __slots__ = ("_image", "_level")

    @property
    def shape(self):
        return _Shape(_ARRAY_SHAPE.__get__(self))

    @property
    def dims(self):
        return "YXC"

    def size(self, dim_order=""):
        height, width, channels = _ARRAY_SHAPE.__get__(self)
        sizes = {"X": width, "Y": height, "C": channels}
        return [sizes[d] for d in _dim_order(dim_order)]

    @property
    def dtype(self):
        return UINT8

    @property
    def channel_names(self):
        return list("RGBA"[:3 if _ARRAY_SHAPE.__get__(self)[2] == 3 else 4])

    @property
    def resolutions(self):
        height, width = _ARRAY_SHAPE.__get__(self)[:2]
        return {"level_count": 1, "level_dimensions": ((width, height),),
                "level_downsamples": (1.0,), "level_tile_sizes": ((width, height),)}

    def spacing(self, dim_order=""):
        downsample = self._image._levels[self._level]["downsample"]
        x, y = self._image._spacing_xy
        values = {"X": x / downsample, "Y": y / downsample, "C": 1.0}
        return [values[d] for d in _dim_order(dim_order)]

    def spacing_units(self, dim_order=""):
        return self._image.spacing_units(dim_order)

    @property
    def origin(self):
        return self._image.origin

    @property
    def direction(self):
        return self._image.direction

    @property
    def coord_sys(self):
        return self._image.coord_sys

    @property
    def path(self):
        return self._image.path

    @property
    def is_loaded(self):
        return True

    @property
    def raw_metadata(self):
        return ""

    @property
    def associated_images(self):
        return set()

    @property
    def metadata(self):
        """{'cucim': {...}}: a region has cuCIM's block only."""
        return {"cucim": {
            "path": os.fsdecode(self.path),
            "ndim": self.ndim,
            "dims": self.dims,
            "shape": list(self.shape),
            "dtype": {"code": 1, "bits": 8, "lanes": 1},
            "typestr": self.typestr,
            "channel_names": self.channel_names,
            "spacing": self.spacing(),
            "spacing_units": self.spacing_units(),
            "origin": self.origin,
            "direction": self.direction,
            "coord_sys": self.coord_sys,
            "resolutions": _json_resolutions(self.resolutions),
            "associated_images": [],
        }}


_CACHE_TYPES = {"nocache": CacheType.NoCache, "no_cache": CacheType.NoCache,
                "per_process": CacheType.PerProcess, "shared_memory": CacheType.SharedMemory}


def _cache_type(value):
    """The CacheType a cache() type argument names."""
    if isinstance(value, CacheType):
        return value
    if not isinstance(value, str):
        raise TypeError("the cache type is a str ('nocache', 'per_process' or "
                        "'shared_memory'), not %s" % type(value).__name__)
    kind = _CACHE_TYPES.get(value)
    if kind is None:
        # cuCIM takes any other name for no cache, without a word: so does this, with one
        warnings.warn("unknown cache type %r: no cache is used (the types are 'nocache', "
                      "'per_process' and 'shared_memory')" % (value,), stacklevel=3)
        kind = CacheType.NoCache
    return kind


class Cache:
    """The process's decoded-tile cache (cuCIM's ImageCache): statistics and configuration.
    Attributes are read when asked, so one object follows the cache as it changes."""

    _name = None  # the shared-memory name given to the last configure, if any

    @staticmethod
    def _stats():
        return _tessera.cache_stats()

    @property
    def type(self):
        """A CacheType (int(cache.type): 0 none, 1 per_process, 2 shared_memory), which also
        equals its name ('per_process')."""
        return CacheType(_CACHE_TYPES[self._stats()["type"]])

    @property
    def hit_count(self):
        return self._stats()["hits"]

    @property
    def miss_count(self):
        return self._stats()["misses"]

    @property
    def evict_count(self):
        return self._stats()["evictions"]

    @property
    def size(self):
        """Tiles held now."""
        return self._stats()["items"]

    @property
    def capacity(self):
        """Most tiles held (0 for no cache)."""
        return self._stats()["item_capacity"]

    @property
    def memory_size(self):
        """Bytes held now."""
        return self._stats()["bytes"]

    @property
    def memory_capacity(self):
        """The byte budget."""
        return self._stats()["memory_capacity"]

    @property
    def free_memory(self):
        s = self._stats()
        return s["memory_capacity"] - s["bytes"]

    @property
    def name(self):
        return self._name

    def record(self, value=None):
        """record() -> whether hits and misses are counted; record(True/False) zeroes the
        statistics and turns counting on or off."""
        if value is None:
            return self._stats()["record_stats"]
        _tessera.cache_reset(bool(value))
        return None

    @property
    def config(self):
        s = self._stats()
        return {
            "type": s["type"],
            "memory_capacity": s["memory_capacity"] >> 20,
            "capacity": s["item_capacity"],
            "record_stat": s["record_stats"],
            "name": self._name,
        }

    def reserve(self, memory_capacity, capacity=None):
        """Grows the cache to memory_capacity MiB and capacity tiles (default: as cache()
        computes it from memory_capacity), as cuCIM's ImageCache.reserve: a smaller value
        leaves that limit as it is. A per-process cache grows in place, keeping its tiles and
        statistics; a shared-memory segment's size is fixed when it is made, so it is refused
        there (ValueError); no cache stays none."""
        mib = _integer(memory_capacity, "memory_capacity")
        items = default_capacity(mib) if capacity is None else _integer(capacity, "capacity")
        s = self._stats()
        kind = CacheType(_CACHE_TYPES[s["type"]])
        if kind == CacheType.NoCache:
            return
        new_bytes = max(s["memory_capacity"], mib << 20)
        new_items = max(s["item_capacity"], items)
        if new_bytes == s["memory_capacity"] and new_items == s["item_capacity"]:
            return
        if kind == CacheType.SharedMemory:
            raise ValueError("reserve() cannot grow a shared_memory cache: its segment's size "
                             "is fixed when made; configure a larger one with "
                             "CuImage.cache('shared_memory', memory_capacity=...)")
        _tessera.cache_reserve(new_bytes >> 20, new_items)

    def __repr__(self):
        s = self._stats()
        return "<tessera.Cache %s: %d tiles, %d / %d bytes, %d hits, %d misses>" % (
            s["type"], s["items"], s["bytes"], s["memory_capacity"], s["hits"], s["misses"])


def shared_caches():
    """The shared-memory caches of this machine (as `tessera cache list` shows them)."""
    return _tessera.shared_cache_list()


def remove_shared_cache(name, force=False):
    """Removes a shared-memory cache left behind (as `tessera cache remove`); refuses one with
    live users unless force."""
    _tessera.shared_cache_remove(name, force=force)
