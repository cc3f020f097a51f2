"""tessera_open_source (a caller's read callback) through ctypes, and Slide/CuImage(fileobj)
(a Python file object read through the same callback API): every slide of the test data and a
vips-written pyramid read through them equal the same file opened by path, byte for byte
(whole levels, regions, batches, associated images); a callback that fails gives TESSERA_E_IO
(OSError in Python) with its message, during open and during reads, and fails only the batch
that needs it; the source's arguments are checked and its close is called exactly once."""

import ctypes
import io
import os
import pickle
import threading

import numpy as np
import pytest

import remote_compare
import tessera_ctypes as T
import wsi_fixtures

TESTDATA = wsi_fixtures.TESTDATA
SLIDES = sorted(f for f in os.listdir(TESTDATA) if not f.endswith(".md"))

READ_AT = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
CLOSE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class BytesSource:
    """A caller's source over bytes in memory, through ctypes callbacks; fail_after makes every
    read at or past that offset fail, with a message."""

    def __init__(self, data, identity="bytes", fail_after=None):
        self.data = data
        self.fail_after = fail_after
        self.closed = 0
        self.reads = 0
        self.read_cb = READ_AT(self._read)
        self.close_cb = CLOSE(self._close)
        self.src = T.Source()
        T.load().tessera_source_init_sized(ctypes.byref(self.src), ctypes.sizeof(self.src))
        self.src.read_at = ctypes.cast(self.read_cb, ctypes.c_void_p)
        self.src.close = ctypes.cast(self.close_cb, ctypes.c_void_p)
        self.src.size = len(data)
        self.src.identity = identity.encode()
        self.src.name = b"test-source"

    def _read(self, user, offset, length, buffer, message, message_size):
        self.reads += 1
        if self.fail_after is not None and offset + length > self.fail_after:
            text = b"the test source fails past %d" % self.fail_after
            ctypes.memmove(message, text + b"\0", min(len(text) + 1, message_size))
            return -1
        chunk = self.data[offset:offset + length]
        ctypes.memmove(buffer, chunk, len(chunk))
        return len(chunk)

    def _close(self, user):
        self.closed += 1

    def open(self):
        handle = ctypes.c_void_p()
        st = T.load().tessera_open_source(ctypes.byref(self.src), None, ctypes.byref(handle))
        if st != T.OK:
            return st, T.error_message(), None
        return st, "", T.Slide(handle, "test-source")


def local(path):
    return T.open_slide(path)


@pytest.mark.parametrize("name", SLIDES + ["vips:jpeg-t256-pyr"])
def test_callback_source_reads_the_files_pixels(name, slides):
    path = slides.path(name[5:]) if name.startswith("vips:") else os.path.join(TESTDATA, name)
    with open(path, "rb") as f:
        data = f.read()
    src = BytesSource(data, identity="test:" + name)
    st, msg, slide = src.open()
    assert st == T.OK, msg
    with local(path) as ref, slide:
        assert remote_compare.compare_ctypes(ref, slide) > 0
        stats = T.IoStats()
        stats.struct_size = ctypes.sizeof(stats)
        assert T.load().tessera_slide_io_stats(slide._h, ctypes.byref(stats)) == T.OK
        assert stats.requests == src.reads > 0 and 0 < stats.bytes
    assert src.closed == 1


def test_failing_callback_fails_the_open_with_its_message():
    path = os.path.join(TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")
    data = open(path, "rb").read()
    src = BytesSource(data, fail_after=4096)
    st, msg, slide = src.open()
    assert slide is None and st == T.E_IO
    assert "test-source" in msg and "the test source fails past 4096" in msg, msg
    assert src.closed == 1


def test_failing_callback_fails_only_the_reads_that_need_it():
    path = os.path.join(TESTDATA, "generic-zstd-1024tiles-pyramid.tiff")
    data = open(path, "rb").read()
    with local(path) as ref:
        # the offsets of level 0's tiles: fail everything past the first tile's end
        info = ref.level_info(0).as_dict()
    src = BytesSource(data)
    st, msg, slide = src.open()
    assert st == T.OK, msg
    with slide:
        good = slide.read_region(0, 0, 0, 16, 16, channels=4)
        src.fail_after = 0  # from now on, every read fails
        with pytest.raises(T.TesseraError) as e:
            slide.read_region(info["width"] // 2, info["height"] // 2, 0, 64, 64)
        assert e.value.status == T.E_IO and "the test source fails" in str(e.value)
        it = slide.batches([(0, 0), (info["width"] - 64, info["height"] - 64)], (64, 64), 0,
                           batch_size=1)
        with pytest.raises(T.TesseraError):
            next(it)
        with pytest.raises(T.TesseraError):
            next(it)
        it.destroy()
        src.fail_after = None  # it recovers: nothing is stuck
        assert np.array_equal(slide.read_region(0, 0, 0, 16, 16, channels=4), good)


def test_source_arguments_are_checked_and_close_is_called_once():
    lib = T.load()
    data = open(os.path.join(TESTDATA, "aperio-jpeg-tiny-16x16.svs"), "rb").read()
    src = BytesSource(data)
    src.src.identity = b""
    st, msg, slide = src.open()
    assert st == T.E_ARGUMENT and "identity" in msg and src.closed == 1
    src = BytesSource(data)
    src.src.read_at = None
    st, msg, slide = src.open()
    assert st == T.E_ARGUMENT and "read_at" in msg and src.closed == 1
    src = BytesSource(b"not a tiff at all")
    st, msg, slide = src.open()
    assert st == T.E_FORMAT and src.closed == 1
    handle = ctypes.c_void_p()
    assert lib.tessera_open_source(None, None, ctypes.byref(handle)) == T.E_ARGUMENT


def test_identity_keys_the_tile_cache():
    """Two sources with one identity share cached tiles; a changed identity does not."""
    path = os.path.join(TESTDATA, "generic-zstd-1024tiles-pyramid.tiff")
    data = open(path, "rb").read()
    T.configure_cache(T.CACHE_PER_PROCESS, memory_capacity_mib=512)
    try:
        first = BytesSource(data, identity="same")
        _, _, a = first.open()
        info = a.level_info(0).as_dict()
        a.read_level(0)
        a.read_level(0)  # a second read puts the tiles in the cache
        a.close()
        again = BytesSource(data, identity="same")
        _, _, b = again.open()
        before = again.reads
        b.read_level(0)
        hits = again.reads - before
        b.close()
        other = BytesSource(data, identity="changed")
        _, _, c = other.open()
        before = other.reads
        c.read_level(0)
        misses = other.reads - before
        c.close()
        assert info["width"] > 0 and hits == 0 and misses > 0, (hits, misses)
    finally:
        T.configure_cache(T.CACHE_NONE)


# ---- Python: Slide(fileobj), CuImage(fileobj) ------------------------------------------------


def compare_python(ref, other):
    """ref, other: tessera Slides (the C type's methods, so cuCIM's read_region is not in the
    way): every level's pixels (small levels whole, regions of the others), batches."""
    import tessera
    S = tessera._tessera.Slide
    assert other.level_count == ref.level_count and other.properties() == ref.properties()
    compared = 0
    for level in range(ref.level_count):
        info = ref.level_info(level)
        w, h = min(info["width"], 2048), min(info["height"], 2048)
        a = np.asarray(S.read_region(ref, 0, 0, w, h, level, channels=4))
        b = np.asarray(S.read_region(other, 0, 0, w, h, level, channels=4))
        assert np.array_equal(a, b), level
        locs = [(i * 97 % max(1, w), i * 61 % max(1, h)) for i in range(12)]
        ba = [np.asarray(x) for x in S.batches(ref, locs, 128, 128, level, batch_size=4,
                                               num_workers=2)]
        bb = [np.asarray(x) for x in S.batches(other, locs, 128, 128, level, batch_size=4,
                                               num_workers=2)]
        assert len(ba) == len(bb) and all(np.array_equal(x, y) for x, y in zip(ba, bb))
        compared += a.size + sum(x.size for x in ba)
    return compared


@pytest.mark.parametrize("name", SLIDES + ["vips:jpeg-t256-pyr"])
def test_python_file_object_reads_the_files_pixels(name, slides):
    import tessera
    path = slides.path(name[5:]) if name.startswith("vips:") else os.path.join(TESTDATA, name)
    with tessera.Slide(path) as ref, open(path, "rb") as f, tessera.Slide(f) as other:
        assert other.path == path  # the file object's name
        assert compare_python(ref, other) > 0
        assert other.io_stats()["requests"] > 0


def test_cuimage_from_bytesio_and_fsspec(slides):
    import fsspec
    import tessera
    path = os.path.join(TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")
    data = open(path, "rb").read()
    ref = tessera.CuImage(path)
    want = np.asarray(ref.read_region((100, 200), (300, 250), 0))
    img = tessera.CuImage(io.BytesIO(data))
    assert np.array_equal(np.asarray(img.read_region((100, 200), (300, 250), 0)), want)
    meta, want_meta = img.metadata, ref.metadata
    assert meta["cucim"].pop("path") != want_meta["cucim"].pop("path")  # the object's repr
    assert meta == want_meta
    # a BytesIO pickles: the copy reads the same
    copy = pickle.loads(pickle.dumps(img))
    assert np.array_equal(np.asarray(copy.read_region((100, 200), (300, 250), 0)), want)
    with fsspec.open("file://" + path, "rb") as f:
        img = tessera.CuImage(f)
        assert np.array_equal(np.asarray(img.read_region((100, 200), (300, 250), 0)), want)
        img.close()
    fs = fsspec.filesystem("memory")
    fs.pipe("/slides/a.svs", data)
    with fs.open("/slides/a.svs", "rb") as f:
        img = tessera.CuImage(f)
        assert np.array_equal(np.asarray(img.read_region((100, 200), (300, 250), 0)), want)


def test_file_object_from_many_threads():
    """Seek+read pairs from the library's workers and several Python threads at once never
    interleave: every read is right."""
    import tessera
    path = os.path.join(TESTDATA, "hamamatsu-ndpi-DAPI.ndpi")
    ref = tessera.Slide(path)
    S = tessera._tessera.Slide
    with open(path, "rb") as f:
        other = tessera.Slide(f)
        errors = []

        def work(k):
            try:
                for i in range(6):
                    x, y = (k * 131 + i * 577) % 3000, (k * 71 + i * 313) % 2000
                    a = np.asarray(S.read_region(ref, x, y, 256, 256, 0, num_workers=2))
                    b = np.asarray(S.read_region(other, x, y, 256, 256, 0, num_workers=2))
                    if not np.array_equal(a, b):
                        errors.append((k, i))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


class FailingFile(io.BytesIO):
    def __init__(self, data, fail_from):
        super().__init__(data)
        self.fail_from = fail_from

    def read(self, n=-1):
        if self.tell() + (n if n > 0 else 1) > self.fail_from:
            raise ConnectionResetError("peer reset the test's connection")
        return super().read(n)


def test_failing_file_object_raises_oserror_with_its_message():
    import tessera
    path = os.path.join(TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")
    data = open(path, "rb").read()
    with pytest.raises(OSError) as e:
        tessera.Slide(FailingFile(data, 1000))
    assert "peer reset the test's connection" in str(e.value)
    assert "ConnectionResetError" in str(e.value)
    f = FailingFile(data, len(data))
    s = tessera.Slide(f)
    f.fail_from = 0
    with pytest.raises(OSError) as e:
        tessera._tessera.Slide.read_region(s, 0, 0, 500, 500, 0)
    assert "peer reset the test's connection" in str(e.value)
    f.fail_from = len(data) + 1
    assert np.asarray(tessera._tessera.Slide.read_region(s, 0, 0, 500, 500, 0)).any()


def test_identity_is_only_for_file_objects():
    import tessera
    path = os.path.join(TESTDATA, "aperio-jpeg-tiny-16x16.svs")
    with pytest.raises(TypeError):
        tessera.Slide(path, identity="x")
    with open(path, "rb") as f:
        with pytest.raises(TypeError):
            tessera.Slide(f, identity=3)
        assert tessera.Slide(f, identity="tiny").level_count >= 1
