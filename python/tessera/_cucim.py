"""cuCIM's small types, under tessera: DLDataType and DLDataTypeCode (tessera.clara),
CacheType and preferred_memory_capacity (tessera.clara.cache). Each also keeps the behaviour
tessera gave before (a dtype that is NumPy's, a cache type that is its name), so code written
for either runs."""

import enum

_MIB = 1 << 20


class DLDataTypeCode(enum.IntEnum):
    """DLPack's type codes, as cuCIM names them."""

    DLInt = 0
    DLUInt = 1
    DLFloat = 2
    DLBfloat = 4


_NUMPY_KIND = {DLDataTypeCode.DLInt: "i", DLDataTypeCode.DLUInt: "u", DLDataTypeCode.DLFloat: "f"}


class DLDataType:
    """A pixel type as cuCIM gives it (code, bits, lanes), that is also the matching NumPy
    dtype: it compares equal to it (img.dtype == np.uint8), numpy.dtype(img.dtype) converts it,
    and NumPy's attributes (itemsize, name, str, kind, ...) are there."""

    __slots__ = ("_code", "_bits", "_lanes")

    def __init__(self, code, bits, lanes):
        self._code = DLDataTypeCode(code)
        self._bits = int(bits)
        self._lanes = int(lanes)

    @property
    def code(self):
        return self._code

    @property
    def bits(self):
        return self._bits

    @property
    def lanes(self):
        return self._lanes

    @property
    def dtype(self):
        """The NumPy dtype (what numpy.dtype(this) reads). TypeError for a type NumPy lacks
        (bfloat16, several lanes)."""
        import numpy as np

        kind = _NUMPY_KIND.get(self._code)
        if kind is None or self._lanes != 1 or self._bits % 8:
            raise TypeError("%r has no NumPy dtype" % (self,))
        return np.dtype("%s%d" % (kind, self._bits // 8))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.dtype, name)

    def _key(self):
        return (int(self._code), self._bits, self._lanes)

    def __eq__(self, other):
        if isinstance(other, DLDataType):
            return self._key() == other._key()
        import numpy as np

        try:
            return self.dtype == np.dtype(other)
        except TypeError:
            return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        try:
            return hash(self.dtype)  # equal to the NumPy dtype, so hashed as it is
        except TypeError:
            return hash(self._key())

    def __reduce__(self):
        return (DLDataType, self._key())

    def __repr__(self):
        return "<tessera.clara.DLDataType code:%d(%s) bits:%d lanes:%d>" % (
            int(self._code), self._code.name, self._bits, self._lanes)


UINT8 = DLDataType(DLDataTypeCode.DLUInt, 8, 1)

_CACHE_TYPE_NAMES = ("nocache", "per_process", "shared_memory")


class CacheType(enum.IntEnum):
    """cuCIM's cache types (int(CacheType.PerProcess) == 1). A member also equals its name in
    CuImage.cache() and Cache.config ('per_process'), which Cache.type was before."""

    NoCache = 0
    PerProcess = 1
    SharedMemory = 2

    @property
    def config_name(self):
        return _CACHE_TYPE_NAMES[self]

    def __eq__(self, other):
        if isinstance(other, str):
            return other == _CACHE_TYPE_NAMES[self]
        return int.__eq__(self, other)

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = int.__hash__


def default_capacity(memory_capacity_mib):
    """The most tiles a cache of memory_capacity_mib holds when no capacity is given, as
    cuCIM counts them: one per 256 x 256 x 3 bytes."""
    return (memory_capacity_mib * _MIB) // (256 * 256 * 3)


def _pair(value):
    if value is None:
        return None
    try:
        a, b = value
    except (TypeError, ValueError):
        return None  # as cuCIM: anything but two numbers is "not given"
    return int(a), int(b)


def preferred_memory_capacity(img=None, image_size=None, tile_size=None, patch_size=None,
                              bytes_per_pixel=3):
    """The cache size in MiB (rounded up) that holds every tile a row of patch_size patches
    across the image touches, as cuCIM computes it: (tiles across) x (tiles a patch spans
    down, plus one) tiles of tile_size, bytes_per_pixel each.

    img: a CuImage, whose level-0 size, tile size and bytes per pixel are used (then
    image_size, tile_size and bytes_per_pixel are not); otherwise image_size (width, height)
    is needed, tile_size defaults to 256 x 256. patch_size defaults to 256 x 256.
    """
    if img is not None:
        width, height = img.size("XY")
        tile_w, tile_h = img.resolutions["level_tile_sizes"][0]
        bytes_per_pixel = (img.dtype.bits * img.size("C")[0] + 7) // 8
    else:
        size = _pair(image_size)
        if size is None:
            raise ValueError("Please specify 'image_size' parameter (e.g., "
                             "'image_size=(100000, 100000)'): without an image, "
                             "preferred_memory_capacity needs the image's (width, height)")
        width, height = size
        tile_w, tile_h = _pair(tile_size) or (256, 256)
    # a row of patches spans the whole width: of the patch, only its height counts
    _, patch_h = _pair(patch_size) or (256, 256)
    if min(width, height, tile_w, tile_h, patch_h) <= 0 or bytes_per_pixel <= 0:
        raise ValueError("preferred_memory_capacity: sizes and bytes_per_pixel must be "
                         "positive")
    across = (width + tile_w - 1) // tile_w
    down = min(height + tile_h - 1, patch_h + tile_h - 1) // tile_h + 1
    needed = across * tile_w * tile_h * down * int(bytes_per_pixel)
    return -(-needed // _MIB)
