"""The C API's promises that need no reference reader: status names, argument
checks, open limits and the per-thread error message."""

import ctypes
import threading

import numpy as np
import pytest

import tessera_ctypes as T


def test_status_strings(lib):
    names = set()
    for st in T.STATUS_NAMES:
        s = T.status_string(st)
        assert s, st
        names.add(s)
    assert len(names) == len(T.STATUS_NAMES), "status strings are not distinct"


def test_compression_names(lib):
    assert T.compression_name(7) == "jpeg"
    assert T.compression_name(50000) == "zstd"
    assert T.compression_name(12345) is None


def test_open_missing_sets_message_and_null(lib, tmp_path):
    st, msg, slide = T.open_status(str(tmp_path / "nope.tif"))
    assert st == T.E_IO and slide is None
    assert msg.strip(), "empty message"
    assert T.error_message() == msg


def test_null_arguments(lib):
    h = ctypes.c_void_p()
    assert lib.tessera_open(None, ctypes.byref(h)) == T.E_ARGUMENT
    assert T.error_message()
    assert lib.tessera_open(b"/x", None) == T.E_ARGUMENT
    lib.tessera_close(None)  # does nothing


@pytest.fixture
def small(slides, lib):
    with T.open_slide(slides.path("jpeg-t128-pyr")) as ts:
        yield ts


def _read(ts, buf, *args, **kw):
    return ts.read_into(buf, *args, **kw)[0]


def test_read_argument_checks(small):
    ts = small
    buf = np.zeros(64 * 64 * 4, np.uint8)
    n = ts.level_count
    bad = [
        dict(args=(0, 0, n, 8, 8)),           # level out of range
        dict(args=(0, 0, -1, 8, 8)),
        dict(args=(0, 0, 0, 0, 8)),           # empty region
        dict(args=(0, 0, 0, 8, -1)),
        dict(args=(0, 0, 0, 8, 8), channels=5),
        dict(args=(0, 0, 0, 8, 8), channels=2),
        dict(args=(0, 0, 0, 8, 8), fill=256),
        dict(args=(0, 0, 0, 8, 8), fill=-2),
        dict(args=(0, 0, 0, 8, 8), stride=8 * 3 - 1),   # stride < width * channels
        dict(args=(0, 0, 0, 8, 8), dst_size=8 * 8 * 3 - 1),  # buffer too small
        dict(args=(0, 0, 0, 8, 8), channels=4, stride=40, dst_size=40 * 7 + 31),
        dict(args=(0, 0, 0, 1 << 40, 1 << 40)),         # sizes whose product overflows
        dict(args=(0, 0, 0, 1 << 62, 4)),
        dict(args=(0, 0, 0, 4, 4), stride=1 << 62),      # stride * height overflows
    ]
    for b in bad:
        kw = {k: v for k, v in b.items() if k != "args"}
        st, msg = ts.read_into(buf, *b["args"], **kw)
        assert st == T.E_ARGUMENT, (b, st, msg)
        assert msg, b
    # the smallest legal buffer with a stride is accepted
    st, msg = ts.read_into(buf, 0, 0, 0, 8, 8, channels=4, stride=40, dst_size=40 * 7 + 32)
    assert st == T.OK, msg


def test_level_info_out_of_range(small):
    with pytest.raises(T.TesseraError) as e:
        small.level_info(small.level_count)
    assert e.value.status == T.E_ARGUMENT


def test_properties_and_missing_key(small):
    keys = small.property_keys()
    assert keys == sorted(keys)
    assert small.property_value("no.such.key") is None
    assert small.property_value("tessera.vendor") == "generic-tiff"


def test_open_limits(slides, lib):
    path = slides.path("jpeg-t256-pyr")  # 2048 x 1536, 4 levels
    st, msg, s = T.open_status(path, T.open_options(max_dimension=1000))
    assert st == T.E_LIMIT and s is None, (st, msg)
    assert msg
    st, msg, s = T.open_status(path, T.open_options(max_directories=2))
    assert st == T.E_LIMIT and s is None, (st, msg)
    st, msg, s = T.open_status(path, T.open_options(max_dimension=2048, max_directories=4))
    assert st == T.OK, msg
    s.close()


def test_tile_byte_limits_fail_reads_or_open(slides, lib):
    path = slides.path("deflate-nopred-pyr")  # 256x256 RGB tiles: 196608 bytes decoded
    for opts in (T.open_options(max_decoded_tile_bytes=1000), T.open_options(max_tile_bytes=100)):
        st, msg, s = T.open_status(path, opts)
        if st != T.OK:
            assert st == T.E_LIMIT, (st, msg)
            continue
        buf = np.zeros(16 * 16 * 3, np.uint8)
        st, msg = s.read_into(buf, 0, 0, 0, 16, 16)
        assert st == T.E_LIMIT, (st, msg)
        s.close()


def test_error_message_is_per_thread(small, tmp_path):
    st, msg, _ = T.open_status(str(tmp_path / "main-thread.tif"))
    assert st != T.OK and msg
    seen = {}

    def worker():
        seen["before"] = T.error_message()
        st2, msg2, _ = T.open_status(str(tmp_path / "worker-thread.tif"))
        seen["after"] = msg2

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["before"] == "", seen
    assert seen["after"], seen
    assert T.error_message() == msg


def test_concurrent_reads_match(small):
    """One slide read from several threads at once gives the same pixels as one thread."""
    ts = small
    info = ts.level_info(0)
    locs = [(x, y) for x in range(0, info.width, 96) for y in range(0, info.height, 96)]
    expect = {loc: ts.read_region(loc[0], loc[1], 0, 100, 100) for loc in locs}
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for i in rng.permutation(len(locs)):
            loc = locs[i]
            got = ts.read_region(loc[0], loc[1], 0, 100, 100)
            if not np.array_equal(got, expect[loc]):
                errors.append(loc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_far_away_regions_are_fill(small):
    """Regions far outside the image, at every level, are all fill with alpha 0 (no overflow
    in the level-origin arithmetic)."""
    for lv in range(small.level_count):
        for x, y in ((1 << 40, 0), (0, -(1 << 40)), (-(1 << 62), 1 << 62), ((1 << 62), -5)):
            px = small.read_region(x, y, lv, 5, 4, channels=4, fill=33)
            assert (px[..., :3] == 33).all() and (px[..., 3] == 0).all(), (lv, x, y)
