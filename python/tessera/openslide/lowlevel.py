"""The part of openslide-python's ``openslide.lowlevel`` that code outside it uses: the
error classes, detect_vendor, get_version, cache_create, and the ``available`` flag by which
callers ask whether an optional OpenSlide function exists. tessera.openslide is not a ctypes
binding, so the rest of lowlevel (the raw C calls on handles) is not here.

Each function has ``available``: True where tessera does what it does; False (calling it
raises OpenSlideVersionError) for OpenSlide 4's ICC-profile functions, which tessera does not
have.
"""

import ctypes as _ctypes
import numbers as _numbers

from .. import _tessera


class OpenSlideError(Exception):
    """A slide could not be read (tessera's message). Import it from tessera.openslide."""


class OpenSlideVersionError(OpenSlideError):
    """The function asked for is not available here."""

    def __init__(self, minimum_version):
        super().__init__("OpenSlide >= %s required" % minimum_version)
        self.minimum_version = minimum_version


class OpenSlideUnsupportedFormatError(OpenSlideError):
    """No file there, or not a format tessera reads."""


def _available(flag):
    def mark(function):
        function.available = flag
        return function
    return mark


@_available(True)
def detect_vendor(filename):
    """The vendor name of a slide tessera opens, or None for anything else."""
    try:
        with _tessera.Slide(filename) as slide:
            return slide.vendor
    except (OSError, ValueError, TypeError, _tessera.TesseraError):
        return None


@_available(True)
def get_version():
    """tessera's version."""
    return _tessera.library_version


@_available(True)
def cache_create(capacity):
    """Checks a cache capacity (bytes, an int >= 0) as OpenSlide's binding does, raising
    ctypes.ArgumentError for anything else; returns it."""
    if isinstance(capacity, bool) or not isinstance(capacity, _numbers.Integral):
        raise _ctypes.ArgumentError("capacity: an integer is required, not %s" % (
            type(capacity).__name__,))
    if capacity < 0:
        raise _ctypes.ArgumentError("capacity: %d is negative" % capacity)
    return int(capacity)


def _unavailable(name):
    @_available(False)
    def function(*args):
        raise OpenSlideVersionError("4.0.0")
    function.__name__ = name
    function.__doc__ = "Not available: tessera reads no ICC profiles."
    return function


read_icc_profile = _unavailable("read_icc_profile")
get_icc_profile_size = _unavailable("get_icc_profile_size")
read_associated_image_icc_profile = _unavailable("read_associated_image_icc_profile")
get_associated_image_icc_profile_size = _unavailable("get_associated_image_icc_profile_size")
