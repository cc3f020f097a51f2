"""Sakura SVSlide (.svslide), on SQLite slides written at test time (sakura_writer.py) that
Debian's OpenSlide 3.4.1 opens as "sakura": levels, pixels of every level (regions across tile
edges, missing tiles and the slide's border), the middle focal plane, properties (sakura.*,
mpp, objective power, quickhash-1), label/macro/thumbnail, against OpenSlide, tile planes stored
as grayscale or as colour JPEGs (read as their luma, as OpenSlide reads them); the batch reader
and `tessera bench` against single reads; the file is never written; damaged and hostile
copies fail with a message that says what is wrong (under ASan+UBSan too when
TESSERA_CLI_ASAN names a sanitized `tessera`)."""

import json
import os
import pickle
import sqlite3
import subprocess

import numpy as np
import openslide
import pytest

import sakura_writer as SW
import tessera_ctypes as T
import vendor_checks as VC
import vendor_writers as V
import wsi_refs as R

HERE = os.path.dirname(os.path.abspath(__file__))
SO0 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(T.lib_path()))), "openslide",
                   "so0")


@pytest.fixture(scope="module")
def source():
    return np.asarray(V.source_rgb(620, 420, 100, 100))


def _slides(source):
    out = {}
    m = SW.Sakura(source[:227, :301], 64, (1, 2, 4))
    m.skip = {(1, 1, 1), (2, 0, 0)}
    m.skip_colour = {(1, 2, 0, 1), (4, 1, 0, 2)}
    m.label = source[:50, :70]
    m.macro = source[100:160, :200]
    m.thumbnail = source[::4, ::4][:57, :75].copy()
    out["basic"] = m
    # three focal planes: the middle one (1) is shown; levels come from plane 0's tiles
    m = SW.Sakura(source[:333, :517], 100, (1, 2, 4, 8), planes=3)
    m.skip = {(1, 3, 2), (4, 1, 0)}
    m.scan_props["ResolutionMmPerPix"] = 0.000123456789
    m.scan_props["NominalLensMagnification"] = 20.5
    m.label = source[200:280, :90]
    out["planes"] = m
    m = SW.Sakura(source[:65, :129], 16, (1, 2, 4, 8), planes=4)
    m.skip = {(1, 7, 3), (2, 1, 1)}
    m.slide_props["Description"] = ""
    out["small-tiles"] = m
    # levels 1 and 4 only; a level whose tiles are all missing at its right column
    m = SW.Sakura(source[:400, :600], 128, (1, 4))
    m.skip = {(1, 4, r) for r in range(4)}
    m.macro = source[:120, :300]
    out["sparse-levels"] = m
    # colour JPEG planes (red and blue planes; green stays grayscale), which OpenSlide decodes
    # to their luma: 4:2:0 here, 4:4:4 in "colour-444" (odd sizes, a missing tile)
    m = SW.Sakura(source[:211, :297], 64, (1, 2, 4))
    m.colour_planes = {0, 2}
    m.skip = {(1, 2, 1)}
    out["colour"] = m
    m = SW.Sakura(source[50:243, 20:351], 128, (1, 2), planes=2)
    m.colour_planes = {0, 1, 2}
    m.colour_subsampling = 0
    out["colour-444"] = m
    return out


NAMES = ["basic", "planes", "small-tiles", "sparse-levels", "colour", "colour-444"]
LEVELS = {"basic": 3, "planes": 4, "small-tiles": 4, "sparse-levels": 2, "colour": 3,
          "colour-444": 2}


@pytest.fixture(scope="module")
def slides(tmp_path_factory, source):
    d = tmp_path_factory.mktemp("sakura")
    built = _slides(source)
    paths = {name: m.write(str(d / (name + ".svslide"))) for name, m in built.items()}
    return {"paths": paths, "built": built}


def osl(path):
    return R.openslide_open(path)


# ---- what the slide is ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_levels_equal_openslides(lib, slides, name):
    path = slides["paths"][name]
    o = osl(path)
    assert o.properties["openslide.vendor"] == "sakura"
    with T.open_slide(path) as s:
        assert s.vendor == "sakura"
        assert s.level_count == LEVELS[name]
        assert s.level_dimensions() == list(o.level_dimensions)
        assert [s.level_info(i).downsample for i in range(s.level_count)] == \
            list(o.level_downsamples)
        for i in range(s.level_count):
            info = s.level_info(i)
            assert (info.tile_width, info.tile_height) == \
                (int(o.properties["openslide.level[%d].tile-width" % i]),
                 int(o.properties["openslide.level[%d].tile-height" % i]))
        assert s.background == 255


@pytest.mark.parametrize("name", NAMES)
def test_properties_equal_openslides(lib, slides, name):
    path = slides["paths"][name]
    o = osl(path)
    with T.open_slide(path) as s:
        props = s.properties
    want = {k: v for k, v in o.properties.items() if k.startswith("sakura.")}
    got = {k: v for k, v in props.items() if k.startswith("sakura.")}
    assert len(want) >= 9 and got == want
    for key in ("mpp-x", "mpp-y", "objective-power", "quickhash-1"):
        assert props["tessera." + key] == o.properties["openslide." + key], key


def test_openslide_python_front_gives_openslides_table(slides):
    """tessera.openslide (openslide-python's API over tessera) shows OpenSlide 3.4.1's whole
    property table for a Sakura slide, and its regions."""
    import tessera.openslide
    for name in NAMES:
        path = slides["paths"][name]
        want = dict(openslide.OpenSlide(path).properties)
        t = tessera.openslide.OpenSlide(path)
        got = dict(t.properties)
        assert got == want, (name, set(got.items()) ^ set(want.items()))
        assert np.array_equal(np.asarray(t.read_region((30, 20), 0, (150, 90))),
                              R.openslide_region(osl(path), 30, 20, 0, 150, 90))


def _over_both_libraries(tmp_path, script, args):
    """script's output (pickled) over Debian's OpenSlide 3.4.1 and over libtessera-openslide's
    libopenslide.so.0, each loaded by Debian's openslide-python in a process of its own."""
    runs = {}
    for which, env in (("openslide", {}), ("tessera", {"LD_LIBRARY_PATH": SO0})):
        out = str(tmp_path / (which + ".pickle"))
        subprocess.run(["/usr/bin/python3"] + script + [out] + args, check=True,
                       capture_output=True, timeout=600, env=dict(os.environ, **env))
        with open(out, "rb") as f:
            runs[which] = pickle.load(f)
    assert runs["openslide"]["version"] == "3.4.1"
    assert runs["tessera"]["version"].startswith("3.4.1+tessera-")
    return runs["openslide"], runs["tessera"]


def test_libtessera_openslide_reads_it_as_openslide(slides, tmp_path):
    """openslide-python over libtessera-openslide (OpenSlide's C ABI) reads every written slide
    as over OpenSlide 3.4.1: properties, levels, associated images and regions (openslide_reader
    draws them, edges and outside included), byte for byte."""
    paths = [slides["paths"][n] for n in NAMES]
    real, ours = _over_both_libraries(tmp_path, [os.path.join(HERE, "openslide_reader.py")],
                                      paths)
    for p in paths:
        a, b = real["slides"][p], ours["slides"][p]
        assert "error" not in b, b
        assert b["properties"] == a["properties"], p
        assert b["levels"] == a["levels"] and b["associated"] == a["associated"], p
        assert len(a["regions"]) > 30
        bad = [k for k in a["regions"] if b["regions"].get(k) != a["regions"][k]]
        assert not bad, (p, bad[:5])


# ---- pixels --------------------------------------------------------------------------


def _cases():
    return [(name, level) for name in NAMES for level in range(LEVELS[name])]


@pytest.mark.parametrize("name,level", _cases())
def test_regions_equal_openslides(lib, slides, name, level):
    """Byte-exact wherever OpenSlide has pixels; where it has none (a missing tile, outside the
    level) tessera gives the white background with alpha 0, as OpenSlide gives alpha 0."""
    path = slides["paths"][name]
    tile = slides["built"][name].tile
    o = osl(path)
    with T.open_slide(path) as s:
        W, H = s.level_dimensions()[level]
        ds = s.level_info(level).downsample
        for lx, ly, w, h, label in R.regions_for_level(W, H, tile, tile, seed=level):
            x, y = int(lx * ds), int(ly * ds)
            want = R.openslide_region(o, x, y, level, w, h)
            rgba = s.read_region(x, y, level, w, h, channels=4)
            rgb = s.read_region(x, y, level, w, h, channels=3)
            inside = want[..., 3] == 255
            msg = R.describe_mismatch(rgba[..., :3], want[..., :3], inside, "%s %s" % (name, label))
            assert msg is None, msg
            assert np.array_equal(rgba[..., 3], want[..., 3]), label
            assert np.array_equal(rgb, rgba[..., :3]), label
            assert (rgb[~inside] == 255).all(), label


@pytest.mark.parametrize("name", NAMES)
def test_whole_levels_are_the_written_pixels(lib, slides, name):
    """Each level, read whole, is the pixels the writer encoded (through JPEG: close, not
    equal) of the focal plane OpenSlide shows, where its tiles are there."""
    m = slides["built"][name]
    shown = m.planes // 2 + m.planes % 2 - 1
    with T.open_slide(slides["paths"][name]) as s:
        for level, ds in enumerate(sorted(m.downsamples)):
            got = s.read_region(0, 0, level, *s.level_dimensions()[level], channels=4)
            there = got[..., 3] == 255
            assert there.mean() > 0.5
            want = m.plane_pixels(ds, shown).astype(float)
            if m.colour_planes:  # a colour plane's luma (JPEG's Y) of the three it holds
                luma = [(255 - want[..., c]) * 0.299 + want[..., (c + 1) % 3] * 0.587 +
                        want[..., (c + 2) % 3] * 0.114 for c in range(3)]
                for c in m.colour_planes:
                    want[..., c] = luma[c]
                    # not the plane's own pixels: what is shown is the luma
                    assert np.abs(got[..., c].astype(int) - m.plane_pixels(ds, shown)[..., c])[
                        there].mean() > 10
            diff = np.abs(got[..., :3].astype(int) - want)[there]
            assert diff.mean() < 4, (level, diff.mean())
            if m.planes > 1:
                other = np.abs(got[..., :3].astype(int) - m.plane_pixels(ds, 0))[there]
                assert other.mean() > 10


def test_missing_tiles_are_transparent_background(lib, slides):
    """Tile (1, 1) of level 0 is left out, and tile (2, 0) has no green plane: both read as
    white with alpha 0, as OpenSlide leaves them transparent; their neighbours are there."""
    path = slides["paths"]["basic"]
    o = osl(path)
    with T.open_slide(path) as s:
        for x, y in ((64, 64), (128, 0)):
            rgba = s.read_region(x, y, 0, 64, 64, channels=4)
            assert (rgba[..., 3] == 0).all() and (rgba[..., :3] == 255).all()
            assert (R.openslide_region(o, x, y, 0, 64, 64)[..., 3] == 0).all()
        assert s.read_region(0, 0, 0, 64, 64, channels=4)[..., 3].min() == 255


@pytest.mark.parametrize("name", ["basic", "planes", "sparse-levels"])
def test_associated_images_equal_openslides(lib, slides, name):
    path = slides["paths"][name]
    o = osl(path)
    with T.open_slide(path) as s:
        assert sorted(s.associated_names) == sorted(o.associated_images)
        for image in s.associated_names:
            want = np.asarray(o.associated_images[image].convert("RGBA"))
            assert s.associated_dimensions(image) == (want.shape[1], want.shape[0])
            assert np.array_equal(s.read_associated(image, channels=4), want), (name, image)
        assert len(s.associated_names) == {"basic": 3, "planes": 1, "sparse-levels": 1}[name]


def test_the_file_is_never_written(lib, slides, tmp_path):
    """Opened and read, the database is unchanged (bytes and mtime) and SQLite leaves no
    journal, WAL or shared-memory file beside it."""
    src = slides["paths"]["basic"]
    path = str(tmp_path / "ro.svslide")
    with open(src, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (1000000000, 1000000000))
    with T.open_slide(path) as s:
        s.read_region(0, 0, 0, *s.level_dimensions()[0])
        s.read_associated("label")
    with open(path, "rb") as f:
        assert f.read() == data
    assert os.stat(path).st_mtime == 1000000000
    assert sorted(os.listdir(tmp_path)) == ["ro.svslide"]


def test_any_path_reads_the_same(lib, slides, tmp_path):
    """SQLite reads through tessera's byte source, not by path: a name with '?', '#' and '%'
    (which SQLite's URIs would cut) and a /proc/self/fd path of a memfd (which SQLite's own
    file I/O cannot reopen) read what the plain path reads."""
    src = slides["paths"]["basic"]
    with open(src, "rb") as f:
        data = f.read()
    odd = str(tmp_path / "a?b#c%20d.svslide")
    with open(odd, "wb") as f:
        f.write(data)
    fd = os.memfd_create("sakura")
    os.write(fd, data)
    try:
        with T.open_slide(src) as s:
            want = s.read_region(-5, -5, 0, 320, 240, channels=4)
        for path in (odd, "/proc/self/fd/%d" % fd):
            with T.open_slide(path) as s:
                assert s.vendor == "sakura"
                assert np.array_equal(s.read_region(-5, -5, 0, 320, 240, channels=4), want)
                assert s.read_associated("label").shape == (50, 70, 3)
    finally:
        os.close(fd)


# ---- the batch reader and `tessera bench` ----------------------------------------------


@pytest.mark.parametrize("name,level", [("planes", 0), ("planes", 1), ("colour", 0),
                                        ("colour-444", 1)])
def test_batches_equal_single_reads(lib, slides, name, level):
    path = slides["paths"][name]
    with T.open_slide(path) as s:
        locs = VC.level_locations(s, level, inner=(60, 60))
    VC.check_batches_equal_single_reads(path, locs, (67, 45), level, num_workers=4)


def test_many_threads_share_the_connection_pool(lib, slides):
    """24 threads (more than the 16 connections the pool opens, so some wait for one) read
    regions at once; each equals the same region read alone."""
    import threading
    path = slides["paths"]["planes"]
    rng = np.random.default_rng(7)
    regions = [(int(rng.integers(-50, 520)), int(rng.integers(-50, 340)),
                int(rng.integers(0, 3))) for _ in range(96)]
    with T.open_slide(path) as s:
        want = [s.read_region(x, y, lv, 90, 70) for x, y, lv in regions]
    with T.open_slide(path) as s:
        got = [None] * len(regions)
        errors = []

        def work(k):
            try:
                for i in range(k, len(regions), 24):
                    x, y, lv = regions[i]
                    got[i] = s.read_region(x, y, lv, 90, 70)
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for i, w in enumerate(want):
        assert np.array_equal(got[i], w), regions[i]


@pytest.mark.parametrize("name", ["planes", "colour"])
def test_bench_checksum_equals_single_reads(lib, cli, slides, tmp_path, name):
    path = slides["paths"][name]
    with T.open_slide(path) as s:
        locs = VC.level_locations(s, 0, n=50, inner=(60, 60))
    VC.check_bench_checksum(cli, path, locs, (37, 23), 0, tmp_path, workers=3)


def test_python_package_reads_it(slides):
    """CuImage reads a Sakura slide through the same library: its regions equal the C API's."""
    import tessera
    path = slides["paths"]["basic"]
    with T.open_slide(path) as s:
        want = s.read_region(100, 50, 0, 200, 120)
    img = tessera.CuImage(path)
    assert np.array_equal(np.asarray(img.read_region((100, 50), (200, 120), 0))[..., :3], want)


def test_info_command_names_the_format(cli, slides):
    r = subprocess.run([cli, "info", slides["paths"]["basic"]], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "sakura" in r.stdout


# ---- damaged and hostile copies --------------------------------------------------------


def _sql(*statements):
    def edit(path):
        db = sqlite3.connect(path)
        for st in statements:
            db.execute(st)
        db.commit()
        db.close()
    return edit


def _truncate(keep):
    def edit(path):
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[:keep if keep > 1 else int(len(data) * keep)])
    return edit


def _header(fmt_values):
    import struct
    return _sql("UPDATE \"%s\" SET data = x'%s' WHERE id = 'Header'" % (
        SW.TABLE, struct.pack(*fmt_values).hex()))


def _tile(tid, hexdata):
    return _sql("UPDATE \"%s\" SET data = x'%s' WHERE id = '%s'" % (SW.TABLE, hexdata, tid))


T0 = "T;0|0;1;0;0"


def _cmyk_plane(path):
    """The red plane of tile (0, 0) is a CMYK JPEG, which libjpeg makes no grayscale of (nor
    OpenSlide, through it); colour JPEG planes read (the "colour" slides)."""
    from PIL import Image
    import io
    b = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "CMYK").save(b, "JPEG", quality=90)
    data = b.getvalue()
    db = sqlite3.connect(path)
    db.execute("UPDATE \"%s\" SET data = ? WHERE id = ?" % SW.TABLE, (data, T0))
    db.commit()
    db.close()


def _wrong_size_plane(path):
    data = SW.gray_jpeg(np.zeros((32, 64), np.uint8))
    db = sqlite3.connect(path)
    db.execute("UPDATE \"%s\" SET data = ? WHERE id = ?" % SW.TABLE, (data, T0))
    db.commit()
    db.close()


def _big_plane(path):
    """A 3 MB blob for one plane (over the 1 MiB max_tile_bytes the test opens with)."""
    db = sqlite3.connect(path)
    db.execute("UPDATE \"%s\" SET data = zeroblob(3000000) WHERE id = ?" % SW.TABLE, (T0,))
    db.commit()
    db.close()


def _slow_table(path):
    """The unique table's name points at a view that would count to 10^12: views are not run."""
    _sql("CREATE VIEW slow AS WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c "
         "WHERE n < 1000000000000) SELECT 'T;0|0;1;0;0' AS id, n AS data FROM c",
         "UPDATE DataManagerSQLiteConfigXPO SET TableName = 'slow'")(path)


# name: (edit, what the message must say, whether the failure comes at read time)
DAMAGED = {
    "truncated-half": (_truncate(0.5), "malformed", False),
    "truncated-head": (_truncate(4096), "malformed", False),
    "empty-database": (_sql("DROP TABLE DataManagerSQLiteConfigXPO"),
                       "DataManagerSQLiteConfigXPO", False),
    "two-unique-tables": (_sql("INSERT INTO DataManagerSQLiteConfigXPO (TableName) VALUES ('x')"),
                          "more than one table", False),
    "no-unique-table": (_sql("UPDATE DataManagerSQLiteConfigXPO SET TableName = 'missing'"),
                        "missing", False),
    "null-table-name": (_sql("UPDATE DataManagerSQLiteConfigXPO SET TableName = NULL"),
                        "TableName", False),
    "wrong-magic": (_sql("UPDATE \"%s\" SET data = 'SVOtherImage' WHERE id = '++MagicBytes'"
                         % SW.TABLE), "MagicBytes", False),
    "no-header": (_sql("DELETE FROM \"%s\" WHERE id = 'Header'" % SW.TABLE), "Header", False),
    "short-header": (_header(("<III", 64, 301, 227)), "Header is 12 bytes", False),
    "zero-tile-size": (_header(("<IIIII", 0, 301, 227, 0, 1)), "tile size 0", False),
    "huge-tile-size": (_header(("<IIIII", 0xFFFFFFFF, 301, 227, 0, 1)), "tile size", False),
    "huge-image": (_header(("<IIIII", 64, 0xFFFFFFFF, 0xFFFFFFFF, 0, 1)), "over the", False),
    "empty-level": (_header(("<IIIII", 64, 3, 3, 0, 1)), "is empty", False),
    "bad-tile-id": (_sql("INSERT INTO \"%s\" VALUES ('T;0|0;1;0;00', x'00')" % SW.TABLE),
                    "bad Sakura tile id", False),
    "bad-colour": (_sql("INSERT INTO \"%s\" VALUES ('T;0|0;1;3;0', x'00')" % SW.TABLE),
                   "bad Sakura tile id", False),
    "huge-field": (_sql("INSERT INTO \"%s\" VALUES ('T;99999999999999999999|0;1;0;0', x'00')"
                        % SW.TABLE), "bad Sakura tile id", False),
    "odd-downsample": (_sql("INSERT INTO \"%s\" VALUES ('T;0|0;3;0;0', x'00')" % SW.TABLE),
                       "power of two", False),
    "no-tiles": (_sql("DELETE FROM \"%s\" WHERE id LIKE 'T;%%'" % SW.TABLE), "no tiles", False),
    "slow-view": (_slow_table, "not a Sakura slide", False),
    "not-jpeg-plane": (_tile(T0, "00112233445566778899"), "red plane", True),
    "truncated-jpeg-plane": (_tile(T0, "ffd8ffe000104a464946"), "red plane", True),
    "empty-plane": (_tile(T0, ""), "empty", True),
    "cmyk-plane": (_cmyk_plane, "4 components", True),
    "wrong-size-plane": (_wrong_size_plane, "JPEG data is 64x32", True),
    "big-plane": (_big_plane, "over the 1048576 allowed", True),
}

@pytest.fixture(scope="module")
def damaged(tmp_path_factory, slides):
    d = tmp_path_factory.mktemp("sakura-damaged")
    with open(slides["paths"]["basic"], "rb") as f:
        good = f.read()
    out = {}
    for name, (edit, _, _) in DAMAGED.items():
        path = str(d / (name + ".svslide"))
        with open(path, "wb") as f:
            f.write(good)
        edit(path)
        out[name] = path
    return out


def _fails(path):
    """(message, at open) of the first failure opening the slide (with at most 1 MiB a tile)
    or reading every level and associated image."""
    st, msg, s = T.open_status(path, T.open_options(max_tile_bytes=1 << 20))
    if s is None:
        assert st != T.OK
        return msg, True
    with s:
        try:
            for level in range(s.level_count):
                W, H = s.level_dimensions()[level]
                s.read_region(0, 0, level, W, H)
            for name in s.associated_names:
                s.read_associated(name)
        except T.TesseraError as e:
            return str(e), False
    return None, False


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_copies_fail_clearly(lib, cli, damaged, name, tmp_path):
    _, words, at_read = DAMAGED[name]
    msg, at_open = _fails(damaged[name])
    assert msg is not None, "%s opened and read" % name
    assert words in msg, msg
    assert len(msg) > 10, msg
    assert at_open != at_read, (at_open, msg)
    clis = [("cli", cli)]
    if os.environ.get("TESSERA_CLI_ASAN"):
        clis.append(("asan", os.environ["TESSERA_CLI_ASAN"]))
    for which, exe in clis:
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=99",
                   UBSAN_OPTIONS="halt_on_error=1:exitcode=98:print_stacktrace=1")
        out = str(tmp_path / ("%s.raw" % which))
        cmd = [exe, "info", damaged[name]] if not at_read else \
            [exe, "read", damaged[name], "--location", "0,0", "--size", "301,227", "--output",
             out]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        if name == "big-plane":  # the command's 256 MiB limit lets it read the blob: no JPEG
            assert r.returncode == 1 and "red plane" in r.stderr, (which, r.stderr)
            continue
        assert r.returncode == 1, (which, r.returncode, r.stderr)
        assert words in r.stderr and "Sanitizer" not in r.stderr, (which, r.stderr)


def test_openslide_rejects_the_damaged_metadata_too(damaged):
    """The copies damaged at open are no slide for OpenSlide either (so the cases are
    damage, not tessera's taste)."""
    for name in ("empty-database", "two-unique-tables", "no-unique-table", "wrong-magic",
                 "no-header", "short-header", "zero-tile-size", "bad-tile-id", "bad-colour",
                 "huge-field", "odd-downsample", "no-tiles", "truncated-half"):
        with pytest.raises(openslide.OpenSlideError):
            openslide.OpenSlide(damaged[name])


OUTCOME = """
import pickle, sys, openslide
out = {"version": openslide.__library_version__, "slides": {}}
for p in sys.argv[2:]:
    try:
        openslide.OpenSlide(p).close()
        out["slides"][p] = "opened"
    except openslide.OpenSlideUnsupportedFormatError:
        out["slides"][p] = "not a slide"
    except openslide.OpenSlideError:
        out["slides"][p] = "failed"
pickle.dump(out, open(sys.argv[1], "wb"))
"""


def test_libtessera_openslide_claims_what_openslide_claims(damaged, tmp_path):
    """Over the C ABI, a damaged copy is "not a slide" (NULL) where OpenSlide 3.4.1 finds no
    Sakura slide, a slide that fails (a handle in error state) where OpenSlide's open fails, and
    opens where OpenSlide's does (the damage is in the tiles)."""
    names = sorted(damaged)
    real, ours = _over_both_libraries(tmp_path, ["-c", OUTCOME], [damaged[n] for n in names])
    want = {n: real["slides"][damaged[n]] for n in names}
    got = {n: ours["slides"][damaged[n]] for n in names}
    assert set(want.values()) == {"opened", "not a slide", "failed"}
    # tessera refuses at open what OpenSlide opens and fails later or never: bounds of its own
    own = {"huge-image", "empty-level"}
    assert {n: v for n, v in got.items() if n not in own} == \
        {n: v for n, v in want.items() if n not in own}


def test_other_sqlite_databases_are_not_sakura(lib, tmp_path):
    path = str(tmp_path / "other.db")
    _sql("CREATE TABLE t (a)", "INSERT INTO t VALUES (1)")(path)
    st, msg, s = T.open_status(path)
    assert s is None and st == T.E_FORMAT and "not a Sakura slide" in msg, msg


REPLAY_ASAN = os.environ.get("TESSERA_FUZZ_OPEN_REPLAY_ASAN",
                             os.path.join(os.path.dirname(HERE), "build-asan", "fuzz",
                                          "fuzz_open_replay"))

PROBE = """
import json, sys
import tessera_ctypes as T
out = {}
for p in json.loads(sys.argv[1]):
    st, msg, s = T.open_status(p)
    if s is None:
        out[p] = ("open", msg)
        continue
    with s:
        try:
            for level in range(s.level_count):
                s.read_region(0, 0, level, *s.level_dimensions()[level])
            for name in s.associated_names:
                s.read_associated(name)
            out[p] = ("read", "")
        except T.TesseraError as e:
            out[p] = ("fail", str(e))
print(json.dumps(out))
"""


def _damaged_copies(good, d, n=240, seed=20261207):
    """n copies of good: bytes flipped (anywhere, and in the first page, the schema), a page
    zeroed or filled with 0xFF, truncated at random lengths."""
    rng = np.random.default_rng(seed)
    with open(good, "rb") as f:
        data = f.read()
    pages = len(data) // 4096
    paths = []
    for i in range(n):
        b = bytearray(data)
        kind = i % 5
        if kind == 0:
            for _ in range(int(rng.integers(1, 9))):
                b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        elif kind == 1:
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(16, 4096))] ^= int(rng.integers(1, 256))
        elif kind == 2:
            p = int(rng.integers(1, pages))
            b[p * 4096:(p + 1) * 4096] = (b"\0" if i % 2 else b"\xff") * 4096
        elif kind == 3:
            b = b[:int(rng.integers(100, len(b)))]
        else:
            at = int(rng.integers(0, len(b) - 4))
            b[at:at + 4] = bytes(rng.integers(0, 256, 4, dtype=np.uint8))
        path = os.path.join(d, "copy-%03d.svslide" % i)
        with open(path, "wb") as f:
            f.write(bytes(b))
        paths.append(path)
    return paths


def test_damaged_copies_under_sanitizers(lib, slides, tmp_path):
    """240 randomly damaged copies of a written slide, opened and read at up to four levels by
    the ASan+UBSan fuzz_open replay program (each within its 30 s alarm: no hang), with no
    sanitizer report; read through the plain library in a child process, each either reads
    or fails with a message, and the damage shows (some fail, some still read)."""
    assert os.path.isfile(REPLAY_ASAN) and os.access(REPLAY_ASAN, os.X_OK), (
        "sanitized fuzz_open replay program not found: %s (set TESSERA_FUZZ_OPEN_REPLAY_ASAN)"
        % REPLAY_ASAN)
    d = tmp_path / "copies"
    d.mkdir()
    paths = _damaged_copies(slides["paths"]["basic"], str(d))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=99",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98",
               FUZZ_REPLAY_TIMEOUT="30", FUZZ_REPLAY_VERBOSE="1")
    r = subprocess.run([REPLAY_ASAN, str(d)], capture_output=True, text=True, timeout=600,
                       env=env, stdin=subprocess.DEVNULL)
    last = [ln for ln in r.stderr.splitlines() if ln.startswith("replay: ")][-1:]
    assert r.returncode == 0, (r.returncode, last, r.stderr[-3000:])
    for marker in ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:"):
        assert marker not in r.stderr, r.stderr[-3000:]
    assert "replayed %d inputs" % len(paths) in r.stdout
    probe = subprocess.run(["/usr/bin/python3", "-c", PROBE, json.dumps(paths)],
                           capture_output=True, text=True, timeout=600, cwd=HERE,
                           env=dict(os.environ, PYTHONPATH=HERE))
    assert probe.returncode == 0, probe.stderr[-3000:]
    got = json.loads(probe.stdout)
    kinds = {k for k, _ in got.values()}
    assert {"open", "read"} <= kinds, kinds
    assert all(len(msg) > 10 for k, msg in got.values() if k != "read")


def test_openslide_fails_the_cmyk_plane_too(damaged):
    """The CMYK plane that tessera fails on is no plane for OpenSlide either: its read of that
    tile fails (libjpeg makes no grayscale of CMYK)."""
    o = openslide.OpenSlide(damaged["cmyk-plane"])
    with pytest.raises(openslide.OpenSlideError):
        o.read_region((0, 0), 0, (64, 64))
