"""A small ctypes binding of the C API in include/tessera.h, for the Python tests.

The shared library comes from the environment variable TESSERA_LIB (default:
build/src/libtessera.so beside this folder's parent). Failed calls raise TesseraError, which
carries the status code and the thread's error message.
"""

import ctypes
import os

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LIB = os.path.join(os.path.dirname(_HERE), "build", "src", "libtessera.so")

OK = 0
E_ARGUMENT = 1
E_IO = 2
E_FORMAT = 3
E_UNSUPPORTED = 4
E_CORRUPT = 5
E_NOMEM = 6
E_LIMIT = 7

STATUS_NAMES = {
    OK: "OK",
    E_ARGUMENT: "E_ARGUMENT",
    E_IO: "E_IO",
    E_FORMAT: "E_FORMAT",
    E_UNSUPPORTED: "E_UNSUPPORTED",
    E_CORRUPT: "E_CORRUPT",
    E_NOMEM: "E_NOMEM",
    E_LIMIT: "E_LIMIT",
}


class OpenOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("max_directories", ctypes.c_uint32),
        ("max_dimension", ctypes.c_int64),
        ("max_tile_bytes", ctypes.c_uint64),
        ("max_decoded_tile_bytes", ctypes.c_uint64),
    ]


class LevelInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("width", ctypes.c_int64),
        ("height", ctypes.c_int64),
        ("downsample", ctypes.c_double),
        ("tile_width", ctypes.c_int32),
        ("tile_height", ctypes.c_int32),
        ("tiled", ctypes.c_int32),
        ("compression", ctypes.c_uint32),
        ("samples_per_pixel", ctypes.c_int32),
    ]

    def as_dict(self):
        return {name: getattr(self, name) for name, _ in self._fields_ if name != "struct_size"}


class ReadOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("channels", ctypes.c_int32),
        ("fill", ctypes.c_int32),
        ("stride", ctypes.c_size_t),
    ]


class TesseraError(Exception):
    def __init__(self, status, message, call=""):
        self.status = status
        self.message = message
        self.call = call
        super().__init__("%s failed: %s (%d): %s" % (call, STATUS_NAMES.get(status, "?"), status, message))


_lib = None


def lib_path():
    return os.environ.get("TESSERA_LIB", DEFAULT_LIB)


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
        "tessera_open_options_init": (None, [ctypes.POINTER(OpenOptions)]),
        "tessera_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(P)]),
        "tessera_open_ex": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(OpenOptions), ctypes.POINTER(P)]),
        "tessera_close": (None, [P]),
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
        "tessera_read_options_init": (None, [ctypes.POINTER(ReadOptions)]),
        "tessera_read_region": (
            ctypes.c_int,
            [P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64,
             ctypes.POINTER(ReadOptions), ctypes.c_void_p, ctypes.c_size_t],
        ),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    if path is None:
        _lib = lib
    return lib


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
    load().tessera_open_options_init(ctypes.byref(opts))
    for k, v in kw.items():
        setattr(opts, k, v)
    return opts


def read_options(channels=None, fill=None, stride=None):
    opts = ReadOptions()
    opts.struct_size = ctypes.sizeof(ReadOptions)
    load().tessera_read_options_init(ctypes.byref(opts))
    if channels is not None:
        opts.channels = channels
    if fill is not None:
        opts.fill = fill
    if stride is not None:
        opts.stride = stride
    return opts


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
    def associated_names(self):
        n = self._lib.tessera_associated_image_count(self._h)
        return [_s(self._lib.tessera_associated_image_name(self._h, i)) for i in range(n)]

    def read_into(self, buf, x, y, level, width, height, channels=3, fill=-1, stride=0, dst_size=None):
        """Low level: reads into a writable numpy uint8 buffer; returns (status, message)."""
        opts = read_options(channels=channels, fill=fill, stride=stride)
        assert buf.dtype == np.uint8 and buf.flags["C_CONTIGUOUS"]
        size = buf.nbytes if dst_size is None else dst_size
        st = self._lib.tessera_read_region(
            self._h, x, y, level, width, height, ctypes.byref(opts),
            buf.ctypes.data_as(ctypes.c_void_p), size)
        return st, (error_message() if st != OK else "")

    def read_region(self, x, y, level, width, height, channels=3, fill=-1):
        """Reads a region; returns a (height, width, channels) uint8 array or raises."""
        buf = np.empty(int(height) * int(width) * channels, np.uint8)
        st, msg = self.read_into(buf, x, y, level, width, height, channels=channels, fill=fill)
        if st != OK:
            raise TesseraError(st, msg, "tessera_read_region(%d, %d, level %d, %dx%d)"
                               % (x, y, level, width, height))
        return buf.reshape(height, width, channels)


def open_slide(path, options=None):
    st, msg, slide = open_status(path, options)
    if st != OK:
        raise TesseraError(st, msg, "tessera_open(%r)" % str(path))
    return slide
