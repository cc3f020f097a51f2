"""CuImage: cuCIM's reading API over tessera._tessera.Slide, and the cache object."""

import math
import numbers
import os

from . import _tessera

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


def _reopen(cls, path, limits):
    return cls(path, **limits)


def _absolute(path):
    """path (str or bytes) made absolute against the working directory, without resolving
    '..' (which os.path.abspath would do textually, wrongly after a symbolic link)."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.getcwdb() if isinstance(path, bytes) else os.getcwd(), path)


def _absolute_path(slide):
    """The absolute path of a slide (the file a CuImage opened) or of a path: a process that
    opens it again may have another working directory (Dask workers chdir)."""
    if isinstance(slide, CuImage):
        return slide._abspath
    return _absolute(os.fspath(slide.path if isinstance(slide, _tessera.Slide) else slide))


class CuImage(_tessera.Slide):
    """An open whole-slide image, with cuCIM's CuImage reading API.

    CuImage(path) opens the file (OSError when it cannot be read, TesseraError when it is
    not a slide tessera reads). Keyword limits (max_directories, max_dimension,
    max_tile_bytes, max_decoded_tile_bytes, max_read_bytes; see limits()) replace the
    library's safe defaults; a read over max_read_bytes (4 GiB) raises TesseraError. Use it as a context manager or call close(). Thread-safe: many
    threads may read at once. Pickles by absolute path (the receiving process opens the file
    again, whatever its working directory), and keeps working in a child after fork(), so it
    can live in a PyTorch Dataset.
    """

    def __init__(self, path, **limits):
        super().__init__(path, **limits)
        self._abspath = _absolute(self.path)  # against the working directory it was opened in
        self._levels = [self.level_info(i) for i in range(self.level_count)]
        self._limits = limits

    def __reduce__(self):
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
        """[height, width, 3] of level 0 (a list, as cuCIM gives it)."""
        lv = self._levels[0]
        return [lv["height"], lv["width"], 3]

    def size(self, dim_order=""):
        """The size along each dimension of dim_order (default 'YXC'), e.g. size('XY')."""
        lv = self._levels[0]
        sizes = {"X": lv["width"], "Y": lv["height"], "C": 3}
        return [sizes[d] for d in self._dim_order(dim_order)]

    @staticmethod
    def _dim_order(dim_order):
        order = str(dim_order or "YXC").upper()
        bad = [d for d in order if d not in "XYC"]
        if bad:
            raise ValueError("dim_order %r: the dimensions are X, Y and C" % (dim_order,))
        return order

    @property
    def dtype(self):
        import numpy as np

        return np.dtype(np.uint8)

    @property
    def typestr(self):
        return "|u1"

    @property
    def channel_names(self):
        return ["R", "G", "B"]

    def _mpp(self):
        props = self.properties()
        try:
            return float(props["tessera.mpp-x"]), float(props["tessera.mpp-y"])
        except (KeyError, ValueError):
            return None

    def spacing(self, dim_order=""):
        """Physical size of a level-0 pixel per dimension: micrometres for X and Y (1.0 when
        the slide does not say), 1.0 for C."""
        mpp = self._mpp()
        x, y = mpp if mpp else (1.0, 1.0)
        values = {"X": x, "Y": y, "C": 1.0}
        return [values[d] for d in self._dim_order(dim_order)]

    def spacing_units(self, dim_order=""):
        unit = "micrometer" if self._mpp() else ""
        units = {"X": unit, "Y": unit, "C": "color"}
        return [units[d] for d in self._dim_order(dim_order)]

    @property
    def origin(self):
        return [0.0, 0.0]

    @property
    def direction(self):
        return [[1.0, 0.0], [0.0, 1.0]]

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
        'tiff': {...}}), plus a 'cucim' block describing the image as cuCIM does."""
        groups = {}
        for key, value in self.properties().items():
            prefix, dot, rest = key.partition(".")
            if dot:
                groups.setdefault(prefix, {})[rest] = value
            else:
                groups.setdefault("", {})[key] = value
        groups["cucim"] = {
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
            "resolutions": {k: [list(v) if isinstance(v, tuple) else v for v in vals]
                            if isinstance(vals, tuple) else vals
                            for k, vals in self.resolutions.items()},
            "associated_images": sorted(self.associated_images),
        }
        return groups

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
                    buf=None, shm_name="", *, channels=3, fill=None):
        """Reads one region, or a stream of patches.

        location: one (x, y) in level-0 pixels -> an Array (height, width, channels). A list,
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
        channels: 3 (RGB) or 4 (RGBA, alpha 0 outside the image); fill: 0..255 outside the
        image (default: the slide's background).
        device: 'cpu', or 'cuda' / 'cuda:N': Arrays in GPU memory (__cuda_array_interface__,
        __dlpack__; .cpu() copies one back), JPEG tiles decoded there by nvJPEG. Where CUDA
        cannot be had, RuntimeError "CUDA is not available: ..." says what is missing.
        """
        device, device_id = _device(device)
        if buf is not None:
            raise ValueError("read_region(buf=...) is not supported: tessera allocates each "
                             "result, which stays valid while referenced")
        if shm_name:
            raise ValueError("read_region(shm_name=...) is not supported: use "
                             "CuImage.cache('shared_memory', ...) to share decoded tiles")
        level = _integer(level, "level")
        if not 0 <= level < len(self._levels):
            raise ValueError("level %d does not exist: %s has levels 0..%d" % (
                level, os.fsdecode(self.path), len(self._levels) - 1))
        fill = -1 if fill is None else _integer(fill, "fill")
        channels = _integer(channels, "channels")
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
                    return next(iter(one))
            return self._read(x, y, width, height, level, channels, fill, num_workers)
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
        return "<tessera.CuImage path:%s%s>" % (os.fsdecode(self.path),
                                                " (closed)" if self.closed else "")

    # ---- the cache --------------------------------------------------------------------

    @staticmethod
    def cache(type=None, memory_capacity=None, capacity=None, record_stat=False, *, name=None,
              **cucim_options):
        """Configures the process's decoded-tile cache and returns it; with no type, returns
        the cache configured now.

        type: 'nocache', 'per_process' or 'shared_memory'. memory_capacity: MiB (default
        1024). capacity: most tiles held (default: no limit but the memory). record_stat:
        count hits and misses. name (shared_memory): processes configuring the same name share
        one segment; without one, processes forked afterwards share it. cuCIM's
        mutex_pool_capacity, list_padding and extra_shared_memory_size are accepted and have
        no use here.
        """
        unknown = set(cucim_options) - {"mutex_pool_capacity", "list_padding",
                                        "extra_shared_memory_size"}
        if unknown:
            raise TypeError("cache() got unexpected keyword arguments: %s" % ", ".join(
                sorted(unknown)))
        if type is None:
            return Cache()
        mib = 1024 if memory_capacity is None else _integer(memory_capacity, "memory_capacity")
        items = 0 if capacity is None else _integer(capacity, "capacity")
        _tessera.cache_configure(type, mib, items, bool(record_stat), name)
        Cache._name = name if type == "shared_memory" else None
        return Cache()


class Cache:
    """The process's decoded-tile cache (cuCIM's ImageCache): statistics and configuration.
    Attributes are read when asked, so one object follows the cache as it changes."""

    _name = None  # the shared-memory name given to the last configure, if any

    @staticmethod
    def _stats():
        return _tessera.cache_stats()

    @property
    def type(self):
        return self._stats()["type"]

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
        """Most tiles held, or None when only the memory limits it."""
        return self._stats()["item_capacity"] or None

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
            "capacity": s["item_capacity"] or None,
            "record_stat": s["record_stats"],
            "name": self._name,
        }

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
