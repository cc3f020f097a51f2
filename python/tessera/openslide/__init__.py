"""openslide-python's API over tessera: change ``import openslide`` to
``from tessera import openslide`` (or ``import tessera.openslide as openslide``).

    from tessera import openslide
    with openslide.OpenSlide("slide.svs") as s:
        region = s.read_region((1000, 2000), 0, (512, 512))   # PIL RGBA image
        thumb = s.get_thumbnail((256, 256))

Results are those of openslide-python over OpenSlide 3.4.1 on the same file: the same
``openslide.*`` properties, level geometry, RGBA regions (not premultiplied; transparent,
all four bytes 0, outside the image), thumbnails and Deep Zoom tiles. Where tessera and
OpenSlide differ: see docs/OPENSLIDE.md. ``color_profile`` is the slide's ICC profile, as
openslide-python 1.3 gives it over OpenSlide 4 (Debian's 1.2 has none). A region whose level
origin is not a whole pixel (level-0 x or y not a multiple of the level's downsample) is
resampled as OpenSlide resamples it, by libtessera-openslide's code in the extension; a
level of placed images (MIRAX, Leica, some Ventana BIFs) is painted by that code on every
region, past the level's edge too, as OpenSlide paints it.

Reads run in tessera with the GIL released, so threads sharing one OpenSlide read in
parallel. Errors latch as OpenSlide's do: once a read fails, every later call on that object
but close() raises the same OpenSlideError.
"""

import ctypes
import math
import numbers
import os
from collections.abc import Mapping

from PIL import Image

from .. import _tessera
from . import _alpha, lowlevel
from .lowlevel import OpenSlideError, OpenSlideUnsupportedFormatError, OpenSlideVersionError

__version__ = _tessera.library_version
__library_version__ = _tessera.library_version

PROPERTY_NAME_COMMENT = "openslide.comment"
PROPERTY_NAME_VENDOR = "openslide.vendor"
PROPERTY_NAME_QUICKHASH1 = "openslide.quickhash-1"
PROPERTY_NAME_BACKGROUND_COLOR = "openslide.background-color"
PROPERTY_NAME_OBJECTIVE_POWER = "openslide.objective-power"
PROPERTY_NAME_MPP_X = "openslide.mpp-x"
PROPERTY_NAME_MPP_Y = "openslide.mpp-y"
PROPERTY_NAME_BOUNDS_X = "openslide.bounds-x"
PROPERTY_NAME_BOUNDS_Y = "openslide.bounds-y"
PROPERTY_NAME_BOUNDS_WIDTH = "openslide.bounds-width"
PROPERTY_NAME_BOUNDS_HEIGHT = "openslide.bounds-height"

# tessera.* properties that are not OpenSlide's: tessera.background is the fill byte of its
# own RGB reads, and tessera.background-color (Aperio, Philips) is a colour OpenSlide does
# not report for those formats.


def _lanczos():
    return getattr(Image, "Resampling", Image).LANCZOS


class AbstractSlide:
    """What OpenSlide and ImageSlide have in common."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.close()
        return False

    @property
    def dimensions(self):
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def color_profile(self):
        """The ICC profile as a PIL.ImageCms.ImageCmsProfile, or None."""
        icc = self._icc()
        if icc is None:
            return None
        from io import BytesIO
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(BytesIO(icc))

    def _icc(self):
        return None

    def get_thumbnail(self, size):
        """An RGB image fitting in size=(width, height): the level best suited, laid on the
        background colour and shrunk with Lanczos filtering (as openslide-python)."""
        downsample = max(d / t for d, t in zip(self.dimensions, size))
        level = self.get_best_level_for_downsample(downsample)
        region = self.read_region((0, 0), level, self.level_dimensions[level])
        color = "#" + self.properties.get(PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
        thumb = Image.new("RGB", region.size, color)
        thumb.paste(region, None, region)
        thumb.thumbnail(size, _lanczos())
        if self._icc() is not None:
            thumb.info["icc_profile"] = self._icc()
        return thumb


def _int64(value, what):
    """value as an int, or ctypes.ArgumentError as openslide-python's C calls raise for a
    value a C int64 cannot take."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ctypes.ArgumentError("%s: an integer is required, not %s" % (
            what, type(value).__name__))
    value = int(value)
    if not -(1 << 63) <= value < (1 << 63):
        raise ctypes.ArgumentError("%s: %d does not fit in 64 bits" % (what, value))
    return value


def _is_tiff(path):
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    return magic in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _is_url(path):
    """An http://, https:// or s3:// URL, which tessera reads with range requests."""
    p = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
    return p.startswith(("http://", "https://", "s3://"))


def _path(filename):
    if isinstance(filename, (str, bytes, os.PathLike)):
        return os.fspath(filename)
    raise ctypes.ArgumentError("a file name is a str, bytes or path, not %s" % (
        type(filename).__name__,))


_FORMAT = 3  # TESSERA_E_FORMAT: not a TIFF, or its structure is malformed


def _open(path):
    """A tessera Slide, or the error openslide-python raises: no file, or not a TIFF ->
    OpenSlideUnsupportedFormatError (OpenSlide's open returns NULL), and so is a TIFF whose
    structure is malformed (OpenSlide parses the directories before any format claims the
    file, so none does); a TIFF tessera cannot read -> OpenSlideError with tessera's message."""
    try:
        return _tessera.Slide(path)
    except OSError as e:
        if _is_url(path):  # the server's answer (404, 403, ...) is the message
            raise OpenSlideError(str(e)) from None
        raise OpenSlideUnsupportedFormatError("Unsupported or missing image file: %s" % e) \
            from None
    except _tessera.TesseraError as e:
        if _is_url(path) and getattr(e, "status", None) != _FORMAT:
            raise OpenSlideError(str(e)) from None
        if not _is_tiff(path) or getattr(e, "status", None) == _FORMAT:
            raise OpenSlideUnsupportedFormatError("Unsupported or missing image file") \
                from None
        raise OpenSlideError(str(e)) from None


# What OpenSlide 4.0's table has and openslide-python over OpenSlide 3.4.1 does not show
# (libtessera-openslide's .so.1 shows them).
_OPENSLIDE4_ONLY = ("openslide.icc-size", "openslide.associated.")


def _openslide_properties(slide):
    """The core's OpenSlide table (tessera_openslide_properties), as OpenSlide 4.0 computes
    it (so a generic TIFF has its mpp, as cuCIM and OpenSlide 4 agree) less the keys only
    OpenSlide 4.0's ABI adds."""
    props = slide.openslide_properties(4)
    return {k: v for k, v in props.items() if not k.startswith(_OPENSLIDE4_ONLY)}


class OpenSlide(AbstractSlide):
    """An open whole-slide image, read by tessera.

    OpenSlide(filename): OpenSlideUnsupportedFormatError when no file is there or it is not a
    TIFF, OpenSlideError when tessera cannot read it. `filename` may also be an http://,
    https:// or s3:// URL (tessera's remote slides; what the server answers, a 404 say, is an
    OpenSlideError naming the URL). Use as a context manager or call
    close(). Once OpenSlideError is raised by a read, every later call but close() raises it
    again (OpenSlide's latching errors). Thread-safe for reads.
    """

    def __init__(self, filename):
        self._filename = filename
        self._slide = _open(_path(filename))
        self._error = None
        info = [self._slide.level_info(i) for i in range(self._slide.level_count)]
        self._dims = tuple((lv["width"], lv["height"]) for lv in info)
        self._downsamples = tuple(lv["downsample"] for lv in info)
        self._alpha = tuple(lv["samples_per_pixel"] == 4 for lv in info)
        self._alpha_kind = tuple(lv["alpha"] for lv in info)
        # placed images (MIRAX, some Ventana BIFs): OpenSlide paints each from its position,
        # past the level's edge too, in ways that depend on the region: the extension paints
        # every region of such a level as OpenSlide would (source/mosaic_tiles.c). Leica's
        # images likewise: OpenSlide starts each at its own whole pixel (the origin truncated
        # image by image) and paints it past the level's edge (region.c)
        leica = self._slide.vendor == "leica"
        self._placed = tuple(leica or lv["compression_name"] == "mosaic" for lv in info)
        self._props = None
        self._max_read = self._slide.limits()["max_read_bytes"]
        self._profile = self._slide.icc_profile

    def __repr__(self):
        return "%s(%r)" % (self.__class__.__name__, self._filename)

    def _icc(self):
        """Read at open, as openslide-python 1.3 reads it over OpenSlide 4."""
        return self._profile

    @classmethod
    def detect_format(cls, filename):
        """The vendor ('aperio', 'generic-tiff', 'hamamatsu', ...) of a file tessera reads,
        or None."""
        try:
            path = _path(filename)
        except ctypes.ArgumentError:
            return None
        return lowlevel.detect_vendor(path)

    def _live(self):
        """The tessera slide; ctypes.ArgumentError once closed (as openslide-python),
        OpenSlideError once a read failed."""
        if self._slide is None:
            raise ctypes.ArgumentError("Passing closed slide object")
        if self._error is not None:
            raise OpenSlideError(self._error)
        return self._slide

    def _fail(self, error):
        self._error = str(error)
        raise OpenSlideError(self._error) from None

    def close(self):
        """Closes the slide; a second close raises ctypes.ArgumentError (as
        openslide-python). Images already read stay valid."""
        if self._slide is None:
            raise ctypes.ArgumentError("Passing closed slide object")
        self._slide.close()
        self._slide = None

    def __del__(self):
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()

    @property
    def level_count(self):
        self._live()
        return len(self._dims)

    @property
    def level_dimensions(self):
        """((width, height), ...) of each level."""
        self._live()
        return self._dims

    @property
    def level_downsamples(self):
        self._live()
        return self._downsamples

    @property
    def properties(self):
        """A mapping of the slide's properties (read when asked; OpenSlide's names)."""
        self._live()
        return _PropertyMap(self)

    def _properties(self):
        slide = self._live()
        if self._props is None:
            try:
                self._props = _openslide_properties(slide)
            except (_tessera.TesseraError, OSError) as e:
                self._fail(e)
        return self._props

    @property
    def associated_images(self):
        """A mapping name -> RGBA PIL.Image, each read when asked."""
        self._live()
        return _AssociatedImageMap(self)

    def _associated_names(self):
        return self._live().associated_names()

    def _associated(self, name):
        slide = self._live()
        try:
            pixels = slide.read_associated(name, channels=4)
        except (_tessera.TesseraError, OSError) as e:
            self._fail(e)
        height, width = pixels.shape[0], pixels.shape[1]
        return Image.frombuffer("RGBA", (width, height), pixels, "raw", "RGBA", 0, 1)

    def get_best_level_for_downsample(self, downsample):
        """The level of largest downsample not over `downsample` (OpenSlide's rule)."""
        self._live()
        if isinstance(downsample, bool) or not isinstance(downsample, numbers.Real):
            raise ctypes.ArgumentError("downsample: a number is required, not %s" % (
                type(downsample).__name__,))
        ds = self._downsamples
        if downsample < ds[0]:
            return 0
        for i in range(1, len(ds)):
            if downsample < ds[i]:
                return i - 1
        return len(ds) - 1

    def read_region(self, location, level, size):
        """An RGBA PIL.Image of size=(width, height) pixels of `level`, its top-left corner
        at location=(x, y) in level-0 pixels. Not premultiplied; transparent (0, 0, 0, 0)
        outside the image and for a level the slide does not have, as openslide-python.
        The GIL is released while tessera reads."""
        slide = self._live()
        x, y = _int64(location[0], "x"), _int64(location[1], "y")
        level = _int64(level, "level")
        width, height = _int64(size[0], "width"), _int64(size[1], "height")
        if width < 0 or height < 0:
            raise OpenSlideError(
                "negative width (%d) or negative height (%d) not allowed" % (width, height))
        if width == 0 or height == 0 or not 0 <= level < len(self._dims):
            return Image.new("RGBA", (width, height))
        if width * height * 4 > self._max_read:
            # refused for its size before anything is read: the slide is not at fault, so
            # the error does not latch
            raise OpenSlideError("a %dx%d region is over the limit of %d bytes for one read "
                                 "(tessera's max_read_bytes)" % (width, height, self._max_read))
        ds = self._downsamples[level]
        if self._placed[level] or (level and _resampled(x, y, width, height, ds)):
            # OpenSlide resamples: libtessera-openslide's code, in the extension, paints it
            try:
                pixels = slide.read_region_openslide(
                    x, y, width, height, level, self._alpha_kind[level] == _alpha.ASSOCIATED)
            except (_tessera.TesseraError, OSError) as e:
                self._fail(e)
            return Image.frombuffer("RGBA", (width, height), pixels, "raw", "RGBA", 0, 1)
        # Left of or above the image, OpenSlide starts the level at the whole level pixel
        # -(-x / ds) truncated, i.e. rounded up, where tessera takes floor(x / ds): for a
        # level-0 coordinate that is not a multiple of the downsample, pass tessera one that
        # floors to the same level pixel.
        if x < 0 and level:
            x = _level0_at(-int(-x / ds), ds)
        if y < 0 and level:
            y = _level0_at(-int(-y / ds), ds)
        try:
            pixels = slide.read_region(x, y, width, height, level, 4, 0)
        except (_tessera.TesseraError, OSError) as e:
            self._fail(e)
        if self._alpha[level]:
            pixels = _alpha.as_openslide(pixels, self._alpha_kind[level])
        return Image.frombuffer("RGBA", (width, height), pixels, "raw", "RGBA", 0, 1)

    def set_cache(self, cache):
        """Gives the slide the cache `cache` (an OpenSlideCache). tessera has one decoded-tile
        cache per process, shared by all slides: this sets its capacity to the cache's."""
        self._live()
        if not isinstance(cache, OpenSlideCache):
            raise TypeError("Not a cache object")
        cache._apply()


def _resampled(x, y, width, height, ds):
    """Whether OpenSlide paints some of the region from between the level's pixels: its
    origin (level-0 x or y, inside the image, not on a level pixel), or, for a region over
    4096 pixels, which OpenSlide paints in 4096 x 4096 pieces each from its own origin
    truncated to level 0, possibly a later piece's."""
    if width > 4096 or height > 4096:
        return True
    return any(v > 0 and v / ds != math.floor(v / ds) for v in (x, y))


def _level0_at(level_pixel, ds):
    """The level-0 coordinate whose floor(x / ds) is level_pixel (<= 0)."""
    return math.ceil(level_pixel * ds)


class _SlideMap(Mapping):
    """A read-only mapping that asks its slide on every access (as openslide-python's):
    after close() or a failed read, using it raises as the slide does."""

    def __init__(self, slide):
        self._osr = slide

    def __repr__(self):
        return "<%s %r>" % (self.__class__.__name__, dict(self))

    def __len__(self):
        return len(self._keys())

    def __iter__(self):
        return iter(self._keys())

    def __contains__(self, key):
        # Mapping's own would read an associated image to answer
        return key in self._keys()


class _PropertyMap(_SlideMap):
    def _keys(self):
        return list(self._osr._properties())

    def __getitem__(self, key):
        return self._osr._properties()[key]


class _AssociatedImageMap(_SlideMap):
    def _keys(self):
        return self._osr._associated_names()

    def __getitem__(self, key):
        if key not in self._keys():
            raise KeyError(key)
        return self._osr._associated(key)


class OpenSlideCache:
    """A decoded-tile cache of `capacity` bytes, for OpenSlide.set_cache. tessera keeps one
    cache per process: giving it to a slide sets the process's cache to this capacity
    (rounded up to whole MiB; 0 turns caching off)."""

    def __init__(self, capacity):
        lowlevel.cache_create(capacity)  # raises ctypes.ArgumentError for a bad capacity
        self._capacity = capacity

    def __repr__(self):
        return "%s(%r)" % (self.__class__.__name__, self._capacity)

    def _apply(self):
        if self._capacity == 0:
            _tessera.cache_configure("nocache", 0)
        else:
            _tessera.cache_configure("per_process", (self._capacity + (1 << 20) - 1) >> 20)


class ImageSlide(AbstractSlide):
    """An ordinary image (anything PIL opens) with the slide interface: one level."""

    def __init__(self, file):
        self._file_arg = file
        if isinstance(file, Image.Image):
            self._owned = False
            self._image = file
        else:
            self._owned = True
            self._image = Image.open(file)
        self._profile = self._image.info.get("icc_profile")

    def __repr__(self):
        return "%s(%r)" % (self.__class__.__name__, self._file_arg)

    @classmethod
    def detect_format(cls, filename):
        """PIL's name for the file's format ('PNG', 'JPEG', ...), or None."""
        try:
            with Image.open(filename) as img:
                return img.format
        except OSError:
            return None

    def close(self):
        """Closes the image, unless it was given as a PIL.Image (its owner closes it)."""
        if self._owned and self._image is not None:
            self._image.close()
        self._image = None

    def _live(self):
        if self._image is None:
            raise ValueError("Cannot read from a closed slide")
        return self._image

    def _icc(self):
        return self._profile

    @property
    def level_count(self):
        return 1

    @property
    def level_dimensions(self):
        return (self._live().size,)

    @property
    def level_downsamples(self):
        return (1.0,)

    @property
    def properties(self):
        return {}

    @property
    def associated_images(self):
        return {}

    def get_best_level_for_downsample(self, downsample):
        return 0

    def read_region(self, location, level, size):
        """As OpenSlide.read_region; level must be 0."""
        image = self._live()
        if level != 0:
            raise OpenSlideError("Invalid level")
        if size[0] < 0 or size[1] < 0:
            raise OpenSlideError("Size %s must be non-negative" % (size,))
        region = Image.new("RGBA", tuple(size), (0, 0, 0, 0))
        # the part of the image inside the region, in image coordinates
        left, top = max(location[0], 0), max(location[1], 0)
        right = min(location[0] + size[0], image.size[0])
        bottom = min(location[1] + size[1], image.size[1])
        if right > left and bottom > top:
            part = image.crop((left, top, right, bottom))
            region.paste(part, (left - location[0], top - location[1]))
        if self._profile is not None:
            region.info["icc_profile"] = self._profile
        return region

    def set_cache(self, cache):
        """ImageSlide has no tile cache: this does nothing."""


def open_slide(filename):
    """An OpenSlide for a slide tessera reads, an ImageSlide for any other image."""
    try:
        return OpenSlide(filename)
    except OpenSlideUnsupportedFormatError:
        return ImageSlide(filename)


__all__ = [
    "AbstractSlide",
    "ImageSlide",
    "OpenSlide",
    "OpenSlideCache",
    "OpenSlideError",
    "OpenSlideUnsupportedFormatError",
    "OpenSlideVersionError",
    "PROPERTY_NAME_BACKGROUND_COLOR",
    "PROPERTY_NAME_BOUNDS_HEIGHT",
    "PROPERTY_NAME_BOUNDS_WIDTH",
    "PROPERTY_NAME_BOUNDS_X",
    "PROPERTY_NAME_BOUNDS_Y",
    "PROPERTY_NAME_COMMENT",
    "PROPERTY_NAME_MPP_X",
    "PROPERTY_NAME_MPP_Y",
    "PROPERTY_NAME_OBJECTIVE_POWER",
    "PROPERTY_NAME_QUICKHASH1",
    "PROPERTY_NAME_VENDOR",
    "open_slide",
]
