"""A small ctypes binding of the C API in include/tessera.h, for the Python tests.

Its structs and constants are read from the header when this module is imported (nothing of
them is written here); test_header_mirror.py checks them against the C compiler. The shared
library comes from the environment variable TESSERA_LIB (default:
build/src/libtessera.so beside this folder's parent). Failed calls raise TesseraError, which
carries the status code and the thread's error message.
"""

import ctypes
import os
import re

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LIB = os.path.join(os.path.dirname(_HERE), "build", "src", "libtessera.so")
HEADER = os.path.join(os.path.dirname(_HERE), "include", "tessera.h")


# --- the public structs and enums, read from include/tessera.h ------------------------------
#
# Nothing here is written by hand, so the mirror cannot drift from the header:
# test_header_mirror.py checks every offset and size against a C program compiled with it.

_SCALARS = {
    "size_t": ctypes.c_size_t, "int": ctypes.c_int, "char": ctypes.c_char,
    "double": ctypes.c_double, "float": ctypes.c_float, "int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64,
    "uint8_t": ctypes.c_uint8, "uint32_t": ctypes.c_uint32, "uint64_t": ctypes.c_uint64,
}


def _without_comments(text):
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", text, flags=re.S))


def _parse_header(path):
    """(defines, enum constants, structs) of the header: structs maps each typedef'd struct's
    name to its [(field, C type, pointer depth, array length or None)], in order. Raises
    ValueError for a declaration it cannot read, so a new kind of field fails loudly."""
    text = _without_comments(open(path).read())
    defines = {m.group(1): int(m.group(2)) for m in
               re.finditer(r"^#define\s+(\w+)\s+(\d+)\s*$", text, re.M)}
    enum_types, constants = set(), {}
    for m in re.finditer(r"typedef\s+enum\s+\w+\s*\{(.*?)\}\s*(\w+)\s*;", text, re.S):
        enum_types.add(m.group(2))
        for item in filter(None, (i.strip() for i in m.group(1).split(","))):
            name, value = (x.strip() for x in item.split("="))
            constants[name] = int(value, 0)
    structs = {}
    for m in re.finditer(r"typedef\s+struct\s+\w+\s*\{(.*?)\}\s*(\w+)\s*;", text, re.S):
        fields = []
        for decl in filter(None, (d.strip() for d in m.group(1).split(";"))):
            fn = re.match(r"^(?:const\s+)?\w+\s*\*?\s*\(\s*\*\s*(\w+)\s*\)\s*\(.*\)$", decl, re.S)
            if fn:  # a function pointer: pointer-sized, mirrored as void *
                fields.append((fn.group(1), "void", 1, None))
                continue
            d = re.match(r"^(?:const\s+)?(\w+)\s+(.*)$", decl, re.S)
            if not d:
                raise ValueError("%s: cannot read %r" % (m.group(2), decl))
            ctype = d.group(1)
            if ctype in structs and d.group(2).lstrip().startswith("*"):
                ctype = "void"  # a pointer to another struct of the header: an address here
            if ctype not in _SCALARS and ctype not in enum_types and ctype != "void":
                raise ValueError("%s: unknown type %s" % (m.group(2), ctype))
            for declarator in d.group(2).split(","):
                f = re.match(r"^\s*(\**)\s*(\w+)\s*(?:\[([^\]]+)\])?\s*$", declarator)
                if not f:
                    raise ValueError("%s: cannot read %r" % (m.group(2), declarator))
                length = None
                if f.group(3):
                    expr = re.sub(r"[A-Za-z_]\w*", lambda n: str(defines[n.group(0)]), f.group(3))
                    if not re.fullmatch(r"[\d\s+*()-]+", expr):
                        raise ValueError("%s: array length %r" % (m.group(2), f.group(3)))
                    length = eval(expr)
                fields.append((f.group(2), ctype, len(f.group(1)), length))
        structs[m.group(2)] = fields
    return defines, constants, structs


DEFINES, CONSTANTS, STRUCTS = _parse_header(HEADER)


def _ctype(ctype, pointers, length):
    if ctype in _SCALARS:
        base = _SCALARS[ctype]
    elif ctype == "void":
        base = None
    else:  # an enum: int-sized
        base = ctypes.c_int
    if pointers == 1 and ctype == "char":
        base = ctypes.c_char_p  # a C string
    elif pointers == 1:
        base = ctypes.c_void_p if base is None else ctypes.POINTER(base)
    elif pointers:
        raise ValueError("%s with %d levels of pointer" % (ctype, pointers))
    return base * length if length else base


def _fields(struct):
    return [(name, _ctype(ctype, pointers, length)) for name, ctype, pointers, length in
            STRUCTS[struct]]


def _strip(prefix):
    return {name[len(prefix):]: value for name, value in CONSTANTS.items()
            if name.startswith(prefix)}


globals().update(_strip("TESSERA_"))  # OK, E_ARGUMENT, ..., CACHE_NONE, ..., DEVICE_CPU, ...
SHARED_CACHE_NAME_MAX = DEFINES["TESSERA_SHARED_CACHE_NAME_MAX"]
STATUS_NAMES = {value: name for name, value in _strip("TESSERA_").items()
                if name == "OK" or name.startswith("E_")}


class OpenOptions(ctypes.Structure):
    _fields_ = _fields("tessera_open_options")


class LevelInfo(ctypes.Structure):
    _fields_ = _fields("tessera_level_info")

    def as_dict(self):
        return {name: getattr(self, name) for name, _ in self._fields_ if name != "struct_size"}


class ReadOptions(ctypes.Structure):
    _fields_ = _fields("tessera_read_options")


class BatchOptions(ctypes.Structure):
    _fields_ = _fields("tessera_batch_options")


class Batch(ctypes.Structure):
    _fields_ = _fields("tessera_batch")


class CacheOptions(ctypes.Structure):
    _fields_ = _fields("tessera_cache_options")


class SharedCacheInfo(ctypes.Structure):
    _fields_ = _fields("tessera_shared_cache_info")

    def as_dict(self):
        d = {name: getattr(self, name) for name, _ in self._fields_ if name != "struct_size"}
        d["name"] = _s(self.name)
        return d


class CacheStats(ctypes.Structure):
    _fields_ = _fields("tessera_cache_stats")


class Source(ctypes.Structure):
    _fields_ = _fields("tessera_source")


class IoStats(ctypes.Structure):
    _fields_ = _fields("tessera_io_stats")


class TissueOptions(ctypes.Structure):
    _fields_ = _fields("tessera_tissue_options")


class Mask(ctypes.Structure):
    _fields_ = _fields("tessera_mask")


class GridOptions(ctypes.Structure):
    _fields_ = _fields("tessera_grid_options")


class Grid(ctypes.Structure):
    _fields_ = _fields("tessera_grid")


# Each struct of the header and its mirror here (test_header_mirror checks that none is left out).
MIRRORS = {
    "tessera_open_options": OpenOptions, "tessera_level_info": LevelInfo,
    "tessera_read_options": ReadOptions, "tessera_batch_options": BatchOptions,
    "tessera_batch": Batch, "tessera_cache_options": CacheOptions,
    "tessera_shared_cache_info": SharedCacheInfo, "tessera_cache_stats": CacheStats,
    "tessera_source": Source, "tessera_io_stats": IoStats,


    "tessera_tissue_options": TissueOptions, "tessera_mask": Mask,
    "tessera_grid_options": GridOptions, "tessera_grid": Grid,
}


class TesseraError(Exception):
    def __init__(self, status, message, call=""):
        self.status = status
        self.message = message
        self.call = call
        super().__init__("%s failed: %s (%d): %s" % (call, STATUS_NAMES.get(status, "?"), status, message))


_lib = None


def lib_path():
    return os.environ.get("TESSERA_LIB", DEFAULT_LIB)


def has_test_hooks(path=None):
    """Whether the library was built with the test_hooks option (meson -Dtest_hooks=true, as
    dev.sh builds it): only then does it read TESSERA_TEST_CACHE_STALL."""
    try:
        with open(path or lib_path(), "rb") as f:
            return b"TESSERA_TEST_CACHE_STALL" in f.read()
    except OSError:
        return False  # no library: the tests that load it say so



def load(path=None):
    """Loads the library once and declares every function's signature."""
    global _lib
    if _lib is not None and path is None:
        return _lib
    lib = ctypes.CDLL(path or lib_path())
    P = ctypes.c_void_p
    sigs = {
        "tessera_version": (ctypes.c_char_p, []),
        "tessera_status_string": (ctypes.c_char_p, [ctypes.c_int]),
        "tessera_error_message": (ctypes.c_char_p, []),
        "tessera_open_options_init_sized": (None, [ctypes.POINTER(OpenOptions), ctypes.c_size_t]),
        "tessera_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(P)]),
        "tessera_open_ex": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(OpenOptions), ctypes.POINTER(P)]),
        "tessera_close": (None, [P]),
        "tessera_source_init_sized": (None, [ctypes.POINTER(Source), ctypes.c_size_t]),
        "tessera_open_source": (ctypes.c_int, [ctypes.POINTER(Source), ctypes.POINTER(OpenOptions), ctypes.POINTER(P)]),
        "tessera_slide_io_stats": (ctypes.c_int, [P, ctypes.POINTER(IoStats)]),
        "tessera_level_count": (ctypes.c_int32, [P]),
        "tessera_level_info_get": (ctypes.c_int, [P, ctypes.c_int32, ctypes.POINTER(LevelInfo)]),
        "tessera_compression_name": (ctypes.c_char_p, [ctypes.c_uint32]),
        "tessera_vendor": (ctypes.c_char_p, [P]),
        "tessera_background": (ctypes.c_uint8, [P]),
        "tessera_property_count": (ctypes.c_size_t, [P]),
        "tessera_property_key": (ctypes.c_char_p, [P, ctypes.c_size_t]),
        "tessera_property_value": (ctypes.c_char_p, [P, ctypes.c_char_p]),
        "tessera_associated_image_count": (ctypes.c_size_t, [P]),
        "tessera_associated_image_name": (ctypes.c_char_p, [P, ctypes.c_size_t]),
        "tessera_icc_profile_size": (ctypes.c_size_t, [P]),
        "tessera_icc_profile_read": (ctypes.c_int, [P, ctypes.c_void_p, ctypes.c_size_t]),
        "tessera_associated_image_dimensions": (
            ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64),
                           ctypes.POINTER(ctypes.c_int64)],
        ),
        "tessera_read_associated_image": (
            ctypes.c_int, [P, ctypes.c_char_p, ctypes.POINTER(ReadOptions), ctypes.c_void_p,
                           ctypes.c_size_t],
        ),
        "tessera_read_options_init_sized": (None, [ctypes.POINTER(ReadOptions), ctypes.c_size_t]),
        "tessera_read_region": (
            ctypes.c_int,
            [P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64,
             ctypes.POINTER(ReadOptions), ctypes.c_void_p, ctypes.c_size_t],
        ),
        "tessera_read_level": (
            ctypes.c_int, [P, ctypes.c_int32, ctypes.POINTER(ReadOptions), ctypes.c_void_p,
                           ctypes.c_size_t],
        ),
        "tessera_batch_options_init_sized": (None, [ctypes.POINTER(BatchOptions), ctypes.c_size_t]),
        "tessera_batch_iter_create": (
            ctypes.c_int,
            [P, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32,
             ctypes.POINTER(BatchOptions), ctypes.POINTER(P)],
        ),
        "tessera_batch_iter_length": (ctypes.c_size_t, [P]),
        "tessera_batch_iter_next": (ctypes.c_int, [P, ctypes.POINTER(ctypes.POINTER(Batch))]),
        "tessera_batch_release": (None, [ctypes.POINTER(Batch)]),
        "tessera_batch_iter_destroy": (None, [P]),
        "tessera_cache_options_init_sized": (None, [ctypes.POINTER(CacheOptions), ctypes.c_size_t]),
        "tessera_cache_configure": (ctypes.c_int, [ctypes.POINTER(CacheOptions)]),
        "tessera_cache_stats_get": (ctypes.c_int, [ctypes.POINTER(CacheStats)]),
        "tessera_cache_stats_reset": (None, [ctypes.c_int32]),
        "tessera_cache_reserve": (ctypes.c_int, [ctypes.c_uint64, ctypes.c_uint64]),
        "tessera_shared_cache_list": (
            ctypes.c_int, [ctypes.POINTER(SharedCacheInfo), ctypes.c_size_t,
                           ctypes.POINTER(ctypes.c_size_t)],
        ),
        "tessera_shared_cache_remove": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_int32]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    if path is None:
        _lib = lib
    return lib


def configure_cache(type=CACHE_NONE, memory_capacity_mib=1024, item_capacity=0,
                    record_stats=True, name=None):
    """tessera_cache_configure for the whole process; raises TesseraError on failure. name
    (str or bytes; None for a NULL pointer) is the shared-memory segment's."""
    o = CacheOptions()
    o.struct_size = ctypes.sizeof(CacheOptions)
    load().tessera_cache_options_init_sized(ctypes.byref(o), ctypes.sizeof(o))
    o.type, o.memory_capacity_mib = type, memory_capacity_mib
    o.item_capacity, o.record_stats = item_capacity, int(record_stats)
    encoded = os.fsencode(name) if isinstance(name, str) else name
    o.name = encoded  # `encoded` keeps the bytes alive through the call
    st = load().tessera_cache_configure(ctypes.byref(o))
    if st != OK:
        raise TesseraError(st, error_message(), "tessera_cache_configure")


def cache_stats():
    t = CacheStats()
    t.struct_size = ctypes.sizeof(CacheStats)
    st = load().tessera_cache_stats_get(ctypes.byref(t))
    if st != OK:
        raise TesseraError(st, error_message(), "tessera_cache_stats_get")
    return {name: getattr(t, name) for name, _ in t._fields_ if name != "struct_size"}


def shared_cache_list():
    """tessera_shared_cache_list: a dict (see SharedCacheInfo) per tessera segment in
    /dev/shm."""
    lib = load()
    count = ctypes.c_size_t(0)
    st = lib.tessera_shared_cache_list(None, 0, ctypes.byref(count))
    if st != OK:
        raise TesseraError(st, error_message(), "tessera_shared_cache_list")
    while True:
        capacity = count.value + 8  # room for segments made meanwhile
        infos = (SharedCacheInfo * capacity)()
        for info in infos:
            info.struct_size = ctypes.sizeof(SharedCacheInfo)
        st = lib.tessera_shared_cache_list(infos, capacity, ctypes.byref(count))
        if st != OK:
            raise TesseraError(st, error_message(), "tessera_shared_cache_list")
        if count.value <= capacity:
            return [infos[i].as_dict() for i in range(count.value)]


def shared_cache_remove(name, force=False):
    """tessera_shared_cache_remove; raises TesseraError on failure."""
    encoded = os.fsencode(name) if isinstance(name, str) else name
    st = load().tessera_shared_cache_remove(encoded, int(force))
    if st != OK:
        raise TesseraError(st, error_message(), "tessera_shared_cache_remove(%r)" % (name,))


def _s(b):
    return None if b is None else b.decode("utf-8", "replace")


def version():
    return _s(load().tessera_version())


def status_string(status):
    return _s(load().tessera_status_string(status))


def error_message():
    return _s(load().tessera_error_message())


def compression_name(code):
    return _s(load().tessera_compression_name(code))


def open_options(**kw):
    """Default open options with the given fields changed."""
    opts = OpenOptions()
    opts.struct_size = ctypes.sizeof(OpenOptions)
    load().tessera_open_options_init_sized(ctypes.byref(opts), ctypes.sizeof(opts))
    for k, v in kw.items():
        setattr(opts, k, v)
    return opts


def read_options(channels=None, fill=None, stride=None, num_workers=None):
    opts = ReadOptions()
    opts.struct_size = ctypes.sizeof(ReadOptions)
    load().tessera_read_options_init_sized(ctypes.byref(opts), ctypes.sizeof(opts))
    if channels is not None:
        opts.channels = channels
    if fill is not None:
        opts.fill = fill
    if stride is not None:
        opts.stride = stride
    if num_workers is not None:
        opts.num_workers = num_workers
    return opts


def batch_options(**kw):
    """Default batch options (from tessera_batch_options_init) with the given fields changed;
    a value of None leaves the default. Booleans are stored as 0/1."""
    opts = BatchOptions()
    opts.struct_size = ctypes.sizeof(BatchOptions)
    load().tessera_batch_options_init_sized(ctypes.byref(opts), ctypes.sizeof(opts))
    names = {name for name, _ in BatchOptions._fields_}
    for k, v in kw.items():
        if k not in names:
            raise TypeError("unknown batch option %r" % k)
        if v is not None:
            setattr(opts, k, int(v))
    return opts


def as_locations(locations):
    """Locations as a C-contiguous (n, 2) int64 array."""
    a = np.ascontiguousarray(np.asarray(locations, dtype=np.int64))
    if a.size == 0:
        return np.zeros((0, 2), np.int64)
    return a.reshape(-1, 2)


def open_status(path, options=None):
    """Tries to open; returns (status, message, Slide or None) and never raises."""
    lib = load()
    handle = ctypes.c_void_p()
    p = os.fsencode(path)
    if options is None:
        st = lib.tessera_open(p, ctypes.byref(handle))
    else:
        st = lib.tessera_open_ex(p, ctypes.byref(options), ctypes.byref(handle))
    if st != OK:
        msg = error_message()
        if handle.value:
            raise AssertionError("tessera_open failed (%d) but set *out to %#x" % (st, handle.value))
        return st, msg, None
    if not handle.value:
        raise AssertionError("tessera_open returned OK with a NULL slide")
    return st, "", Slide(handle, path)


class Slide:
    """An open tessera slide. Use open_slide() to make one."""

    def __init__(self, handle, path):
        self._h = handle
        self.path = path
        self._lib = load()

    def close(self):
        if self._h is not None and self._h.value:
            self._lib.tessera_close(self._h)
        self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def level_count(self):
        return self._lib.tessera_level_count(self._h)

    def level_info(self, level):
        info = LevelInfo()
        info.struct_size = ctypes.sizeof(LevelInfo)
        st = self._lib.tessera_level_info_get(self._h, level, ctypes.byref(info))
        if st != OK:
            raise TesseraError(st, error_message(), "tessera_level_info_get")
        return info

    def level_dimensions(self):
        return [(self.level_info(i).width, self.level_info(i).height) for i in range(self.level_count)]

    @property
    def vendor(self):
        return _s(self._lib.tessera_vendor(self._h))

    @property
    def background(self):
        return self._lib.tessera_background(self._h)

    def property_keys(self):
        n = self._lib.tessera_property_count(self._h)
        return [_s(self._lib.tessera_property_key(self._h, i)) for i in range(n)]

    def property_value(self, key):
        return _s(self._lib.tessera_property_value(self._h, key.encode()))

    @property
    def properties(self):
        return {k: self.property_value(k) for k in self.property_keys()}

    @property
    def icc_profile(self):
        """The ICC profile's bytes, or None; raises TesseraError when the read fails."""
        n = self._lib.tessera_icc_profile_size(self._h)
        if n == 0:
            return None
        buf = ctypes.create_string_buffer(n)
        st = self._lib.tessera_icc_profile_read(self._h, buf, n)
        if st != OK:
            raise TesseraError(st, error_message(), "tessera_icc_profile_read")
        return buf.raw

    @property
    def associated_names(self):
        n = self._lib.tessera_associated_image_count(self._h)
        return [_s(self._lib.tessera_associated_image_name(self._h, i)) for i in range(n)]

    def associated_dimensions(self, name):
        """(width, height) of an associated image; raises TesseraError."""
        w, h = ctypes.c_int64(), ctypes.c_int64()
        st = self._lib.tessera_associated_image_dimensions(
            self._h, name.encode(), ctypes.byref(w), ctypes.byref(h))
        if st != OK:
            raise TesseraError(st, error_message(), "tessera_associated_image_dimensions")
        return w.value, h.value

    def read_associated(self, name, channels=3):
        """The whole associated image as an H x W x C array; raises TesseraError."""
        w, h = self.associated_dimensions(name)
        buf = np.zeros((h, w, channels), np.uint8)
        opts = read_options(channels=channels)
        st = self._lib.tessera_read_associated_image(
            self._h, name.encode(), ctypes.byref(opts), buf.ctypes.data, buf.nbytes)
        if st != OK:
            raise TesseraError(st, error_message(), "tessera_read_associated_image")
        return buf

    def read_into(self, buf, x, y, level, width, height, channels=3, fill=-1, stride=0, dst_size=None,
                  num_workers=None):
        """Low level: reads into a writable numpy uint8 buffer; returns (status, message)."""
        opts = read_options(channels=channels, fill=fill, stride=stride, num_workers=num_workers)
        assert buf.dtype == np.uint8 and buf.flags["C_CONTIGUOUS"]
        size = buf.nbytes if dst_size is None else dst_size
        st = self._lib.tessera_read_region(
            self._h, x, y, level, width, height, ctypes.byref(opts),
            buf.ctypes.data_as(ctypes.c_void_p), size)
        return st, (error_message() if st != OK else "")

    def read_region(self, x, y, level, width, height, channels=3, fill=-1, num_workers=None):
        """Reads a region; returns a (height, width, channels) uint8 array or raises."""
        buf = np.empty(int(height) * int(width) * channels, np.uint8)
        st, msg = self.read_into(buf, x, y, level, width, height, channels=channels, fill=fill,
                                 num_workers=num_workers)
        if st != OK:
            raise TesseraError(st, msg, "tessera_read_region(%d, %d, level %d, %dx%d)"
                               % (x, y, level, width, height))
        return buf.reshape(height, width, channels)

    def read_level_into(self, buf, level, channels=3, fill=-1, stride=0, num_workers=0,
                        dst_size=None, options=None):
        """Low level: tessera_read_level into a writable numpy uint8 buffer; returns (status,
        message). options (a ReadOptions, or the string "null" for a NULL pointer) overrides
        the keyword options."""
        if options is None:
            options = read_options(channels=channels, fill=fill, stride=stride,
                                   num_workers=num_workers)
        assert buf.dtype == np.uint8 and buf.flags["C_CONTIGUOUS"]
        size = buf.nbytes if dst_size is None else dst_size
        optp = None if isinstance(options, str) else ctypes.byref(options)
        st = self._lib.tessera_read_level(self._h, level, optp,
                                          buf.ctypes.data_as(ctypes.c_void_p), size)
        return st, (error_message() if st != OK else "")

    def read_level(self, level, channels=3, num_workers=0, fill=-1):
        """Reads a whole level; returns a (height, width, channels) uint8 array or raises."""
        info = self.level_info(level)
        buf = np.empty(int(info.height) * int(info.width) * channels, np.uint8)
        st, msg = self.read_level_into(buf, level, channels=channels, fill=fill,
                                       num_workers=num_workers)
        if st != OK:
            raise TesseraError(st, msg, "tessera_read_level(level %d)" % level)
        return buf.reshape(info.height, info.width, channels)

    def batch_iter_status(self, locations, size, level=0, options=None, n=None, **kw):
        """Low level: tessera_batch_iter_create; returns (status, message, BatchIter or None)
        and never raises for a failed call. options: a BatchOptions, None (the keyword
        options over the defaults) or the string "null" (a NULL options pointer). n
        overrides the count passed (with locations None, a NULL locations pointer)."""
        if locations is None:
            locs, ptr = None, None
            count = 0 if n is None else n
        else:
            locs = as_locations(locations)
            ptr = locs.ctypes.data_as(ctypes.c_void_p) if locs.size else None
            count = len(locs) if n is None else n
        if options is None:
            options = batch_options(**kw)
        optp = None if isinstance(options, str) else ctypes.byref(options)
        width, height = size
        handle = ctypes.c_void_p()
        st = self._lib.tessera_batch_iter_create(self._h, ptr, count, width, height, level, optp,
                                                 ctypes.byref(handle))
        if st != OK:
            msg = error_message()
            if handle.value:
                raise AssertionError("tessera_batch_iter_create failed (%d) but set *out" % st)
            return st, msg, None
        if not handle.value:
            raise AssertionError("tessera_batch_iter_create returned OK with a NULL iterator")
        return st, "", BatchIter(handle, self, locs)

    def batch_iter(self, locations, size, level=0, options=None, **kw):
        """A low-level BatchIter (raw batches, released by hand), or raises."""
        st, msg, it = self.batch_iter_status(locations, size, level, options, **kw)
        if st != OK:
            raise TesseraError(st, msg, "tessera_batch_iter_create")
        return it

    def batches(self, locations, size, level=0, **options):
        """An iterator of (batch array (count, height, width, channels), indices) copies;
        see Batches."""
        return Batches(self.batch_iter(locations, size, level, **options))


class RawBatch:
    """A tessera_batch handed out by tessera_batch_iter_next and not yet released. Its data
    is the library's until release(); view() is only valid until then."""

    def __init__(self, ptr):
        self._p = ptr
        b = ptr.contents
        self.count = b.count
        self.number = b.number
        self.size = b.size
        self.width = b.width
        self.height = b.height
        self.channels = b.channels

    @property
    def released(self):
        return self._p is None

    def _check(self):
        if self._p is None:
            raise RuntimeError("batch %d was released" % self.number)

    def indices(self):
        self._check()
        b = self._p.contents
        if b.count == 0:
            return np.zeros(0, np.uint64)
        return np.ctypeslib.as_array(b.indices, shape=(b.count,)).copy()

    def view(self):
        """The batch buffer in place, shaped (count, height, width, channels); no copy."""
        self._check()
        b = self._p.contents
        shape = (int(b.count), int(b.height), int(b.width), int(b.channels))
        if b.size == 0:
            return np.zeros(shape, np.uint8)
        flat = np.ctypeslib.as_array(b.data, shape=(int(b.size),))
        return flat.reshape(shape)

    def array(self):
        """A copy of the batch buffer, shaped (count, height, width, channels)."""
        return self.view().copy()

    def release(self):
        """tessera_batch_release (once; later calls do nothing)."""
        if self._p is not None:
            load().tessera_batch_release(self._p)
            self._p = None


class BatchIter:
    """A tessera_batch_iter. next_raw() hands out RawBatch objects the caller releases;
    destroy() may come before or after they are released."""

    def __init__(self, handle, slide, locations):
        self._h = handle
        self.slide = slide          # keeps the slide open while the iterator lives
        self.locations = locations  # the caller's (n, 2) array (the library keeps its copy)
        self._lib = load()

    @property
    def destroyed(self):
        return self._h is None

    def length(self):
        return self._lib.tessera_batch_iter_length(self._h)

    def __len__(self):
        return self.length()

    def next_raw(self):
        """tessera_batch_iter_next: (status, message, RawBatch or None); at the end
        (OK, "", None)."""
        out = ctypes.POINTER(Batch)()
        st = self._lib.tessera_batch_iter_next(self._h, ctypes.byref(out))
        if st != OK:
            msg = error_message()
            if out:
                raise AssertionError("tessera_batch_iter_next failed (%d) but set *out" % st)
            return st, msg, None
        if not out:
            return st, "", None
        return st, "", RawBatch(out)

    def destroy(self):
        if self._h is not None:
            self._lib.tessera_batch_iter_destroy(self._h)
            self._h = None

    def __del__(self):
        try:
            self.destroy()
        except Exception:
            pass


class Batches:
    """Python iteration over a BatchIter: yields (copy of the batch array (count, height,
    width, channels), indices as uint64), releasing each batch at once. A failed batch
    raises TesseraError; iterating again goes on with the batch after it. len() is
    tessera_batch_iter_length. destroy() (or leaving a with block) frees the iterator."""

    def __init__(self, it):
        self.iter = it
        self.last = None  # (number, count, width, height, channels) of the last good batch

    def __len__(self):
        return self.iter.length()

    def __iter__(self):
        return self

    def __next__(self):
        st, msg, b = self.iter.next_raw()
        if st != OK:
            raise TesseraError(st, msg, "tessera_batch_iter_next")
        if b is None:
            raise StopIteration
        try:
            self.last = (b.number, b.count, b.width, b.height, b.channels)
            return b.array(), b.indices()
        finally:
            b.release()

    def destroy(self):
        self.iter.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()


def open_slide(path, options=None):
    st, msg, slide = open_status(path, options)
    if st != OK:
        raise TesseraError(st, msg, "tessera_open(%r)" % str(path))
    return slide
