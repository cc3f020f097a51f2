"""Hamamatsu VMS (a key file and a grid of JPEG files with restart markers, a map JPEG, an
optional optimisation file, a macro JPEG) and VMU (a key file and NGR files of 16-bit samples),
written here at test time and opened by Debian's OpenSlide 3.4.1 as "hamamatsu": levels (the
scaled ones OpenSlide adds included), pixels of every level over regions crossing tile, file
and slide edges, properties, the macro image, against OpenSlide; the batch reader and
`tessera bench` against single reads; damaged copies fail with a message that says what is
wrong. JPEG files with restart markers are written by test_ndpi's small libjpeg encoder."""

import io
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
from PIL import Image

import tessera_ctypes as T
import vendor_checks as VC
import wsi_refs as R
from test_ndpi import ENCODER_C, encode, jpeg_segments, picture, restart_starts


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    d = tmp_path_factory.mktemp("vms-encoder")
    src, exe = d / "enc.c", d / "enc"
    src.write_text(ENCODER_C)
    r = subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", str(exe), str(src), "-ljpeg"],
                       capture_output=True, text=True)
    assert r.returncode == 0, "cannot build the JPEG writer: %s" % r.stderr
    return str(exe)


def optimisation(jpegs, mcu_h):
    """OpenSlide's reading of the optimisation file: per file, per MCU row, a 40-byte record whose
    first 8 bytes are the offset of the row's first restart interval."""
    out = b""
    for j, h, per_row in jpegs:
        starts = restart_starts(j)
        for row in range(h // mcu_h):
            out += struct.pack("<q", starts[row * per_row]) + b"\0" * 32
    return out


def write_vms(d, encoder, cols, rows, widths, heights, sub, interval, map_size, map_interval,
              opt=True, macro=True, seed=1, extra=()):
    """A VMS slide in folder d: cols x rows JPEG files (column widths, row heights), luma
    sampling sub (h, v), restart interval in MCUs; a map JPEG (4:4:4); returns the key file."""
    os.makedirs(d, exist_ok=True)
    lines = ["[Virtual Microscope Specimen]", "NoLayers=1", "NoJpegColumns=%d" % cols,
             "NoJpegRows=%d" % rows]
    jpegs = []
    for r in range(rows):
        for c in range(cols):
            w, h = widths[c], heights[r]
            j = encode(encoder, picture(w, h, 3, seed + 10 * r + c), sub[0], sub[1], interval)
            name = "img_%d_%d.jpg" % (c, r)
            with open(os.path.join(d, name), "wb") as f:
                f.write(j)
            key = "ImageFile" if (c, r) == (0, 0) else "ImageFile(%d,%d)" % (c, r)
            lines.append("%s=%s" % (key, name))
            per_row = -(-w // (8 * sub[0])) // interval
            jpegs.append((j, h, per_row))
    mw, mh = map_size
    m = encode(encoder, picture(mw, mh, 3, seed + 99), 1, 1, map_interval)
    with open(os.path.join(d, "map.jpg"), "wb") as f:
        f.write(m)
    lines.append("MapFile=map.jpg")
    if opt:
        with open(os.path.join(d, "slide.opt"), "wb") as f:
            f.write(optimisation(jpegs, 8 * sub[1]))
        lines.append("OptimisationFile=slide.opt")
    if macro:
        b = io.BytesIO()
        Image.fromarray(picture(150, 61, 3, seed + 7)).save(b, "JPEG", quality=85)
        with open(os.path.join(d, "macro.jpg"), "wb") as f:
            f.write(b.getvalue())
        lines.append("MacroImage=macro.jpg")
    lines += ["SourceLens=20", "PhysicalWidth=%d" % (sum(widths) * 460),
              "PhysicalHeight=%d" % (sum(heights) * 455), "Reference=slide ref",
              "AuthCode=1234"] + list(extra)
    key = os.path.join(d, "slide.vms")
    with open(key, "w") as f:
        f.write("\n".join(lines) + "\n")
    return key


def ngr(w, h, column, seed):
    """An NGR file: magic, size, column width, data offset 32; then the columns, each its rows
    of RGB 16-bit little-endian samples. Samples over 4095 too (OpenSlide keeps bits 4-11)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
    head = b"GN" + b"\0\0" + struct.pack("<iii", w, h, column) + b"\0" * 8 + \
        struct.pack("<i", 32) + b"\0" * 4
    body = b"".join(a[:, c:c + column].astype("<u2").tobytes() for c in range(0, w, column))
    return head + body


def write_vmu(d, size, column, map_size, map_column, macro=True):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "img.ngr"), "wb") as f:
        f.write(ngr(size[0], size[1], column, 3))
    with open(os.path.join(d, "map.ngr"), "wb") as f:
        f.write(ngr(map_size[0], map_size[1], map_column, 4))
    lines = ["[Uncompressed Virtual Microscope Specimen]", "NoLayers=1", "ImageFile=img.ngr",
             "MapFile=map.ngr", "BitsPerPixel=36", "PixelOrder=RGB", "SourceLens=40",
             "PhysicalWidth=%d" % (size[0] * 230), "PhysicalHeight=%d" % (size[1] * 230)]
    if macro:
        b = io.BytesIO()
        Image.fromarray(picture(90, 40, 3, 5)).save(b, "JPEG", quality=90)
        with open(os.path.join(d, "macro.jpg"), "wb") as f:
            f.write(b.getvalue())
        lines.append("MacroImage=macro.jpg")
    key = os.path.join(d, "slide.vmu")
    with open(key, "w") as f:
        f.write("\n".join(lines) + "\n")
    return key


# name: (kind, arguments)
SLIDES = {
    # 2 x 2 files, 4:2:2 (MCU 16 x 8), intervals of 4 MCUs: tiles 64 x 8; the last column
    # and row odd (250 wide: its intervals overrun its tiles; 71 high: a partial MCU row)
    "grid": ("vms", dict(cols=2, rows=2, widths=[256, 250], heights=[96, 71], sub=(2, 1),
                         interval=4, map_size=(126, 90), map_interval=8)),
    "grid-no-opt": ("vms", dict(cols=2, rows=2, widths=[256, 250], heights=[96, 71], sub=(2, 1),
                                interval=4, map_size=(126, 90), map_interval=8, opt=False,
                                macro=False)),
    # 3 x 1 files, 4:2:2 (MCU 16 x 8), whole-tile sizes
    "row": ("vms", dict(cols=3, rows=1, widths=[192, 192, 96], heights=[120], sub=(2, 1),
                        interval=6, map_size=(96, 40), map_interval=12, seed=5)),
    # one file, 4:4:4 (MCU 8 x 8), odd size
    "single": ("vms", dict(cols=1, rows=1, widths=[333], heights=[157], sub=(1, 1),
                           interval=14, map_size=(80, 35), map_interval=5, seed=9)),
    "vmu": ("vmu", dict(size=(300, 150), column=60, map_size=(75, 40), map_column=25)),
}
NAMES = sorted(SLIDES)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, encoder):
    d = tmp_path_factory.mktemp("vms")
    out = {}
    for name, (kind, args) in SLIDES.items():
        if kind == "vms":
            out[name] = write_vms(str(d / name), encoder, **args)
        else:
            out[name] = write_vmu(str(d / name), **args)
    return out


def osl(path):
    return R.openslide_open(path)


@pytest.mark.parametrize("name", NAMES)
def test_levels_equal_openslides(lib, slides, name):
    o = osl(slides[name])
    assert o.properties["openslide.vendor"] == "hamamatsu"
    with T.open_slide(slides[name]) as s:
        assert s.vendor == "hamamatsu"
        assert s.level_dimensions() == list(o.level_dimensions)
        assert [s.level_info(i).downsample for i in range(s.level_count)] == \
            list(o.level_downsamples)
        assert s.level_count == (2 if name == "vmu" else o.level_count) and s.level_count >= 2


def test_map_replaces_a_scaled_level_of_its_width(lib, slides):
    """grid: level 0 is 506 wide, its 1/4 126; the map is 126 wide: OpenSlide keeps the map."""
    with T.open_slide(slides["grid"]) as s:
        widths = [d[0] for d in s.level_dimensions()]
        assert widths.count(126) == 1 and 506 in widths and 253 in widths and 63 in widths


@pytest.mark.parametrize("name", NAMES)
def test_properties_equal_openslides(lib, slides, name):
    o = osl(slides[name])
    with T.open_slide(slides[name]) as s:
        props = s.properties
    want = {k: v for k, v in o.properties.items() if k.startswith("hamamatsu.")}
    got = {k: v for k, v in props.items() if k.startswith("hamamatsu.")}
    assert len(want) >= 8 and got == want
    for key in ("mpp-x", "mpp-y", "objective-power"):
        assert float(props["tessera." + key]) == float(o.properties["openslide." + key]), key
    assert props.get("tessera.comment") == o.properties.get("openslide.comment")


def _cases():
    return [(name, level) for name in NAMES for level in range(2 if name == "vmu" else 8)]


@pytest.mark.parametrize("name,level", _cases())
def test_regions_equal_openslides(lib, slides, name, level):
    """Byte-exact wherever OpenSlide has pixels: its tiles are whole restart intervals (NGR
    columns by 64 rows), and the level's pixels beyond them (a file's partial interval column
    or MCU row) it leaves transparent; tessera gives them the background there."""
    path = slides[name]
    o = osl(path)
    if level >= o.level_count:
        assert level >= 2
        with T.open_slide(path) as s:
            assert s.level_count == o.level_count
        return
    with T.open_slide(path) as s:
        W, H = s.level_dimensions()[level]
        ds = s.level_info(level).downsample
        tw, th = s.level_info(level).tile_width, s.level_info(level).tile_height
        checked = 0
        for lx, ly, w, h, label in R.regions_for_level(W, H, max(tw, 8), max(th, 8), seed=level):
            # OpenSlide places the region at x / ds of the level: where that is no whole
            # pixel it interpolates; only origins that land on whole pixels are compared
            xs = [x for x in (int(lx * ds), int(lx * ds) + 1) if x / ds == lx]
            ys = [y for y in (int(ly * ds), int(ly * ds) + 1) if y / ds == ly]
            if not xs or not ys:
                continue
            x, y = xs[0], ys[0]
            want = R.openslide_region(o, x, y, level, w, h)
            rgba = s.read_region(x, y, level, w, h, channels=4)
            yy, xx = np.mgrid[ly:ly + h, lx:lx + w]
            in_level = (xx >= 0) & (yy >= 0) & (xx < W) & (yy < H)
            inside = (want[..., 3] == 255) & in_level
            msg = R.describe_mismatch(rgba[..., :3], want[..., :3], inside, "%s %s" % (name, label))
            assert msg is None, msg
            assert (rgba[..., 3][inside] == 255).all(), label
            assert (rgba[..., 3][~in_level] == 0).all(), label
            checked += int(inside.sum())
        assert checked > 0


@pytest.mark.parametrize("name", ["grid", "single", "vmu"])
def test_whole_levels_equal_openslides(lib, slides, name):
    path = slides[name]
    o = osl(path)
    with T.open_slide(path) as s:
        for level in range(s.level_count):
            W, H = s.level_dimensions()[level]
            ds = o.level_downsamples[level]
            want = np.asarray(o.read_region((0, 0), level, (W, H)))
            got = s.read_region(0, 0, level, W, H, channels=4)
            inside = want[..., 3] == 255
            assert inside.sum() > 0.4 * W * H, (level, ds)
            msg = R.describe_mismatch(got[..., :3], want[..., :3], inside, "%s %d" % (name, level))
            assert msg is None, msg


def test_optimisation_file_moves_only_the_odd_column(lib, slides):
    """With the optimisation file, OpenSlide starts each tile row of a file at the interval the
    file records; without it, it counts tiles on from the file's start. The two agree where a
    file's rows hold whole tiles only (column 0, 256 wide), and differ in the 250-wide column,
    whose rows have one interval more than whole tiles (both are OpenSlide's, as the region
    tests show)."""
    with T.open_slide(slides["grid"]) as a, T.open_slide(slides["grid-no-opt"]) as b:
        assert a.level_dimensions() == b.level_dimensions()
        W, H = a.level_dimensions()[0]
        x, y = a.read_region(0, 0, 0, W, H), b.read_region(0, 0, 0, W, H)
        assert np.array_equal(x[:, :256], y[:, :256])
        assert not np.array_equal(x[8:96, 256:], y[8:96, 256:])


@pytest.mark.parametrize("name", ["grid", "row", "vmu"])
def test_macro_equals_openslides(lib, slides, name):
    o = osl(slides[name])
    with T.open_slide(slides[name]) as s:
        assert sorted(s.associated_names) == sorted(o.associated_images) == ["macro"]
        want = np.asarray(o.associated_images["macro"].convert("RGBA"))
        assert s.associated_dimensions("macro") == (want.shape[1], want.shape[0])
        assert np.array_equal(s.read_associated("macro", channels=4), want)


def test_no_macro_without_the_key(lib, slides):
    with T.open_slide(slides["grid-no-opt"]) as s:
        assert s.associated_names == []
    assert list(osl(slides["grid-no-opt"]).associated_images) == []


# ---- the batch reader and `tessera bench` ----------------------------------------------


@pytest.mark.parametrize("name,level", [("grid", 0), ("grid", 1), ("vmu", 0)])
def test_batches_equal_single_reads(lib, slides, name, level):
    with T.open_slide(slides[name]) as s:
        locs = VC.level_locations(s, level, n=50, inner=(60, 14))
    VC.check_batches_equal_single_reads(slides[name], locs, (67, 45), level)


@pytest.mark.parametrize("name", ["grid", "vmu"])
def test_bench_checksum_equals_single_reads(lib, cli, slides, tmp_path, name):
    with T.open_slide(slides[name]) as s:
        locs = VC.level_locations(s, 1, n=40, inner=(60, 14))
    VC.check_bench_checksum(cli, slides[name], locs, (37, 23), 1, tmp_path)


def test_info_command_names_the_format(cli, slides):
    r = subprocess.run([cli, "info", slides["grid"]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "hamamatsu" in r.stdout


# ---- damaged copies ------------------------------------------------------------------------


def _key_edit(old, new):
    def edit(d, key):
        with open(key) as f:
            text = f.read()
        assert old in text
        with open(key, "w") as f:
            f.write(text.replace(old, new))
    return edit


def _remove(name):
    def edit(d, key):
        os.remove(os.path.join(d, name))
    return edit


def _truncate(name, keep):
    def edit(d, key):
        p = os.path.join(d, name)
        with open(p, "rb") as f:
            data = f.read()
        with open(p, "wb") as f:
            f.write(data[:keep(len(data))])
    return edit


def _no_restart(d, key):
    """img_1_1.jpg rewritten without its DRI segment (no restart markers)."""
    p = os.path.join(d, "img_1_1.jpg")
    with open(p, "rb") as f:
        j = f.read()
    _, dri, _ = jpeg_segments(j)
    with open(p, "wb") as f:
        f.write(j[:dri] + j[dri + 6:])


def _huge_sof(d, key):
    """img_0_0.jpg's frame claims 64000 x 60000 pixels: far more intervals than its bytes."""
    p = os.path.join(d, "img_0_0.jpg")
    with open(p, "rb") as f:
        j = bytearray(f.read())
    sof = jpeg_segments(bytes(j))[0]
    j[sof + 5:sof + 9] = struct.pack(">HH", 60000, 64000)
    with open(p, "wb") as f:
        f.write(bytes(j))


def _bad_opt(d, key):
    """The optimisation file's second record points into the middle of an interval."""
    p = os.path.join(d, "slide.opt")
    with open(p, "r+b") as f:
        f.seek(40)
        f.write(struct.pack("<q", 700))


def _ngr_start(d, key):
    with open(os.path.join(d, "img.ngr"), "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<i", 0x7FFFFFF0))


# name: (slide, edit, words in the message)
DAMAGED = {
    "missing-image": ("grid", _remove("img_1_0.jpg"), "img_1_0.jpg"),
    "missing-map": ("grid", _remove("map.jpg"), "map.jpg"),
    "truncated-jpeg": ("grid", _truncate("img_0_1.jpg", lambda n: n // 2), "restart intervals"),
    "truncated-header": ("grid", _truncate("img_1_1.jpg", lambda n: 100), "img_1_1.jpg"),
    "no-restart-markers": ("grid", _no_restart, "no restart markers"),
    "no-columns": ("grid", _key_edit("NoJpegColumns=2", "NoJpegColumns=0"), "grid of 0 x 2"),
    "huge-grid": ("grid", _key_edit("NoJpegColumns=2", "NoJpegColumns=2000000"), "grid of"),
    "column-outside": ("grid", _key_edit("ImageFile(1,0)", "ImageFile(5,0)"), "outside the"),
    "path-escape": ("grid", _key_edit("MapFile=map.jpg", "MapFile=../map.jpg"),
                    "not a file in the slide's folder"),
    "no-map": ("grid", _key_edit("MapFile=map.jpg", "Map=map.jpg"), "no MapFile"),
    "too-many-dims": ("grid", _key_edit("ImageFile(1,1)", "ImageFile(0,1,1,1)"),
                      "more than three"),
    "missing-macro": ("grid", _remove("macro.jpg"), "macro"),
    "huge-frame": ("grid", _huge_sof, "cannot fit"),
    "bad-optimisation": ("grid", _bad_opt, "optimisation file"),
    "vmu-data-offset": ("vmu", _ngr_start, "do not fit"),
    "vmu-bits": ("vmu", _key_edit("BitsPerPixel=36", "BitsPerPixel=48"), "BitsPerPixel"),
    "vmu-truncated": ("vmu", _truncate("img.ngr", lambda n: n - 1000), "do not fit"),
    "vmu-magic": ("vmu", lambda d, k: _truncate("map.ngr", lambda n: n)(d, k) or
                  open(os.path.join(d, "map.ngr"), "r+b").write(b"XX"), "not an NGR file"),
    "vmu-column": ("vmu", lambda d, k: open(os.path.join(d, "img.ngr"), "r+b").write(
        b"GN\0\0" + struct.pack("<iii", 300, 150, 70)), "multiple of the column width"),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, slides):
    d = tmp_path_factory.mktemp("vms-damaged")
    out = {}
    for name, (slide, edit, _) in DAMAGED.items():
        folder = str(d / name)
        shutil.copytree(os.path.dirname(slides[slide]), folder)
        key = os.path.join(folder, os.path.basename(slides[slide]))
        edit(folder, key)
        out[name] = key
    return out


def _fails(path):
    st, msg, s = T.open_status(path)
    if s is None:
        assert st != T.OK
        return msg
    with s:
        try:
            for level in range(s.level_count):
                W, H = s.level_dimensions()[level]
                s.read_region(0, 0, level, W, H)
            for name in s.associated_names:
                s.read_associated(name)
        except T.TesseraError as e:
            return str(e)
    return None


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_copies_fail_clearly(lib, cli, damaged, name, tmp_path):
    words = DAMAGED[name][2]
    msg = _fails(damaged[name])
    assert msg is not None, "%s opened and read" % name
    assert words in msg, msg
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=99",
               UBSAN_OPTIONS="halt_on_error=1:exitcode=98:print_stacktrace=1")
    for exe in [cli] + ([os.environ["TESSERA_CLI_ASAN"]] if os.environ.get("TESSERA_CLI_ASAN")
                        else []):
        for cmd in (["info", damaged[name]],
                    ["read", damaged[name], "--location", "0,0", "--size", "506,167",
                     "--output", os.path.join(str(tmp_path), "out.raw")]):
            r = subprocess.run([exe] + cmd, capture_output=True, text=True, timeout=120, env=env)
            assert r.returncode in (0, 1) and "Sanitizer" not in r.stderr, (exe, r.stderr)
        assert r.returncode == 1 and words in r.stderr, (exe, r.stderr)


@pytest.mark.parametrize("name", NAMES)
def test_cli_reads_every_level(cli, slides, name, tmp_path):
    """`tessera read` of every level whole (under ASan+UBSan too when TESSERA_CLI_ASAN names a
    sanitized `tessera`) equals the library's read."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=99",
               UBSAN_OPTIONS="halt_on_error=1:exitcode=98:print_stacktrace=1")
    with T.open_slide(slides[name]) as s:
        for level in range(s.level_count):
            W, H = s.level_dimensions()[level]
            want = s.read_region(0, 0, level, W, H)
            for exe in [cli] + ([os.environ["TESSERA_CLI_ASAN"]]
                                if os.environ.get("TESSERA_CLI_ASAN") else []):
                out = str(tmp_path / "level.raw")
                r = subprocess.run([exe, "read", slides[name], "--location", "0,0", "--size",
                                    "%d,%d" % (W, H), "--level", str(level), "--output", out],
                                   capture_output=True, text=True, timeout=120, env=env)
                assert r.returncode == 0, (exe, r.stderr)
                with open(out, "rb") as f:
                    got = np.frombuffer(f.read(), np.uint8)
                assert got.size == W * H * 3 and np.array_equal(got.reshape(H, W, 3), want)


# ---- OpenSlide's API over tessera ----------------------------------------------------------


def test_openslide_fronts_equal_openslide(lib, slides, tmp_path):
    """openslide-python over libtessera-openslide (a process of its own,
    tests/openslide_reader.py) and tessera.openslide give every property OpenSlide 3.4.1 gives
    (quickhash-1 of the key file and the map, tile sizes, mpp, objective power, comment), its
    levels, its macro and its regions (those whose origin is a whole pixel of the level; inside
    the level: pixels beyond a file's whole tiles are transparent through both)."""
    import openslide_dropin as D
    import tessera.openslide
    paths = [slides[n] for n in NAMES]
    got = D.reads(paths, tmp_path)
    compared = 0
    for path in paths:
        real, ours = got[path]
        assert "error" not in real and "error" not in ours, (real.get("error"), ours.get("error"))
        assert "openslide.quickhash-1" in real["properties"]
        assert ours["properties"] == real["properties"], path
        assert dict(tessera.openslide.OpenSlide(path).properties) == real["properties"], path
        assert ours["levels"] == real["levels"] and ours["associated"] == real["associated"]
        for (dims, level, x, y, w, h), want in real["regions"].items():
            ds = real["levels"][level][1]
            if x / ds != x // ds or y / ds != y // ds:
                continue  # between pixels: OpenSlide interpolates
            lx, ly = int(x // ds), int(y // ds)
            yy, xx = np.mgrid[ly:ly + h, lx:lx + w]
            inside = (xx >= 0) & (yy >= 0) & (xx < dims[0]) & (yy < dims[1])
            g = np.frombuffer(ours["regions"][(dims, level, x, y, w, h)], np.uint8).reshape(h, w, 4)
            o = np.frombuffer(want, np.uint8).reshape(h, w, 4)
            assert np.array_equal(g[inside], o[inside]), (path, level, x, y, w, h)
            compared += 1
    assert compared > 50


def test_python_package_reads_it(slides):
    import tessera
    import tessera.openslide
    path = slides["grid"]
    with T.open_slide(path) as s:
        want = s.read_region(100, 50, 0, 200, 120, channels=4)
    img = tessera.CuImage(path)
    got = np.asarray(img.read_region((100, 50), (200, 120), 0))
    assert np.array_equal(got[..., :3], want[..., :3])
    o = tessera.openslide.OpenSlide(path)
    assert o.properties["openslide.vendor"] == "hamamatsu"
    # through OpenSlide's API the pixels beyond the last whole tiles are transparent black
    front = np.asarray(o.read_region((100, 50), 0, (200, 120)))
    shown = front[..., 3] == 255
    assert 0 < shown.sum() < shown.size
    assert np.array_equal(front[shown], want[shown])
    assert (front[~shown] == 0).all()
