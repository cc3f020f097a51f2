"""DICOM whole-slide images, on series written at test time with pydicom (dicom_writer.py) from
known pixels: native frames (explicit and implicit VR) compared exactly, JPEG and JPEG 2000
frames compared with Pillow's decode of the same bytes; TILED_FULL and TILED_SPARSE levels
(frames in any order, missing tiles painted background), concatenations, frames of several
fragments with a Basic Offset Table, an Extended Offset Table or neither; label and overview
images; a file and a folder; dicom.* properties against pydicom's reading of the same files;
the batch reader and `tessera bench` against single reads; damaged and hostile copies fail
with a message that says what is wrong (under ASan+UBSan too when TESSERA_CLI_ASAN names a
sanitized `tessera`). Debian's OpenSlide 3.4.1 reads no DICOM, so it is no reference here."""

import ctypes
import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import features
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import dicom_writer as W
import tessera_ctypes as T
import vendor_checks as VC

SIZE = (500, 340)
TILE = (64, 48)
SKIP1 = {(1, 1), (3, 0)}  # tiles level 1 (sparse) leaves out
ICC = b"not really a profile, but bytes handed on as stored." * 10  # even: no padding


def test_pillow_writes_jpeg_2000():
    """The JPEG 2000 cases need Pillow's OpenJPEG writer (Debian's python3-pil has it)."""
    assert features.check("jpg_2000")


def _build(root):
    """name: (path to open, {level: (Level, skipped tiles)}, {associated name: Level})."""
    img = W.source_image(*SIZE)
    half, quarter = img[::2, ::2].copy(), img[::4, ::4].copy()
    out = {}

    # every kind of level in one folder: native TILED_FULL, JPEG TILED_SPARSE with tiles left
    # out and frames shuffled, JPEG 2000 TILED_FULL; a label and an overview
    d = os.path.join(root, "mixed")
    os.makedirs(d)
    s = W.Series()
    l0, l1, l2 = W.Level(img, TILE), W.Level(half, TILE, "jpeg"), W.Level(quarter, TILE, "j2k")
    label = W.Level(img[:60, :90].copy(), (90, 60), flavor="LABEL")
    macro = W.Level(img[100:180, 200:400].copy(), (200, 80), "jpeg", flavor="OVERVIEW")
    s.write(os.path.join(d, "a-level0.dcm"), l0, extra={"icc": ICC})
    nsparse = l1.across * l1.down - len(SKIP1)
    s.write(os.path.join(d, "b-level1.dcm"), l1, sparse=True, skip=SKIP1,
            order=list(np.random.default_rng(5).permutation(nsparse)))
    s.write(os.path.join(d, "c-level2.dcm"), l2)
    s.write(os.path.join(d, "d-label.dcm"), label)
    s.write(os.path.join(d, "e-macro.dcm"), macro)
    levels = {0: (l0, set()), 1: (l1, SKIP1), 2: (l2, set())}
    out["mixed-folder"] = (d, levels, {"label": label, "macro": macro})
    out["mixed-file"] = (os.path.join(d, "c-level2.dcm"), levels, {"label": label, "macro": macro})

    # concatenations: level 0 in 3 JPEG instances (TILED_FULL, frame offsets), level 1 in 2
    # native sparse instances
    d = os.path.join(root, "concat")
    os.makedirs(d)
    s = W.Series()
    c0, c1 = W.Level(img, TILE, "jpeg"), W.Level(half, TILE)
    s.write(os.path.join(d, "level0"), c0, concat_parts=3)
    s.write(os.path.join(d, "level1"), c1, sparse=True, skip={(0, 0)}, concat_parts=2,
            undefined=True)
    thumb = W.Level(img[::8, ::8].copy(), (63, 43), "jpeg", flavor="THUMBNAIL")
    s.write(os.path.join(d, "thumbnail.dcm"), thumb)
    out["concat"] = (d, {0: (c0, set()), 1: (c1, {(0, 0)})}, {"thumbnail": thumb})

    # implicit VR little endian: sequences (per-frame positions) in implicit VR, of defined
    # lengths (level 0) and undefined ones (level 1)
    d = os.path.join(root, "implicit")
    os.makedirs(d)
    s = W.Series()
    i0, i1 = W.Level(img, TILE, "implicit"), W.Level(half, TILE, "implicit")
    s.write(os.path.join(d, "level0.dcm"), i0, sparse=True, skip={(2, 2)})
    s.write(os.path.join(d, "level1.dcm"), i1, sparse=True, skip={(0, 1)}, undefined=True)
    out["implicit"] = (os.path.join(d, "level0.dcm"), {0: (i0, {(2, 2)}), 1: (i1, {(0, 1)})},
                       {})

    # frames of two fragments: with a Basic Offset Table, with none (frames found by their
    # SOI), with an Extended Offset Table only
    for name, kw in (("fragments-bot", {"bot": True}), ("fragments-nobot", {"bot": False}),
                     ("fragments-eot", {"bot": False, "eot": True})):
        d = os.path.join(root, name)
        os.makedirs(d)
        s = W.Series()
        f0 = W.Level(img, TILE, "jpeg")
        s.write(os.path.join(d, "level0.dcm"), f0, per_frame=2, **kw)
        out[name] = (os.path.join(d, "level0.dcm"), {0: (f0, set())}, {})

    # JPEG 2000 with the reversible colour transform (YBR_RCT), of two fragments
    d = os.path.join(root, "j2k-rct")
    os.makedirs(d)
    s = W.Series()
    j0 = W.Level(half, TILE, "j2k", j2k_mct=1)
    s.write(os.path.join(d, "level0.dcm"), j0, photometric="YBR_RCT", per_frame=2)
    out["j2k-rct"] = (os.path.join(d, "level0.dcm"), {0: (j0, set())}, {})

    # lossy JPEG 2000 (1.2.840.10008.1.2.4.91, the irreversible transform, YBR_ICT)
    d = os.path.join(root, "j2k-ict")
    os.makedirs(d)
    s = W.Series()
    k0 = W.Level(half, TILE, "j2k-lossy", j2k_mct=1)
    s.write(os.path.join(d, "level0.dcm"), k0, photometric="YBR_ICT")
    out["j2k-ict"] = (os.path.join(d, "level0.dcm"), {0: (k0, set())}, {})
    return out


NAMES = ["mixed-folder", "mixed-file", "concat", "implicit", "fragments-bot",
         "fragments-nobot", "fragments-eot", "j2k-rct", "j2k-ict"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return _build(str(tmp_path_factory.mktemp("dicom")))


# ---- what the slide is ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_levels_are_the_volume_instances(lib, slides, name):
    path, levels, assoc = slides[name]
    with T.open_slide(path) as s:
        assert s.vendor == "dicom"
        assert s.level_count == len(levels)
        w0, h0 = levels[0][0].image.shape[1], levels[0][0].image.shape[0]
        for i, (lv, _) in levels.items():
            h, w = lv.image.shape[:2]
            info = s.level_info(i)
            assert (info.width, info.height) == (w, h)
            assert (info.tile_width, info.tile_height) == lv.tile
            assert info.downsample == (1.0 if i == 0 else (w0 / w + h0 / h) / 2)
        assert sorted(s.associated_names) == sorted(assoc)
        assert s.background == 255


@pytest.mark.parametrize("name", NAMES)
def test_every_level_equals_its_frames(lib, slides, name):
    """Whole levels: native frames exactly, JPEG and JPEG 2000 as Pillow decodes them; tiles
    a sparse level leaves out are background (white)."""
    path, levels, _ = slides[name]
    with T.open_slide(path) as s:
        for i, (lv, skip) in levels.items():
            h, w = lv.image.shape[:2]
            got = s.read_level(i)
            assert np.array_equal(got[..., :3], lv.expected(skip)), (name, i)
            if lv.codec in ("native", "implicit") or (lv.codec == "j2k"):
                # lossless: the source pixels themselves, where a frame is
                want = lv.image.copy()
                ok = np.ones(want.shape[:2], bool)
                for c, r in skip:
                    ok[r * lv.tile[1]:(r + 1) * lv.tile[1], c * lv.tile[0]:(c + 1) * lv.tile[0]] = 0
                assert np.array_equal(got[..., :3][ok], want[ok]), (name, i)


@pytest.mark.parametrize("name", ["mixed-folder", "concat", "implicit"])
def test_regions_across_tile_edges_and_the_border(lib, slides, name):
    path, levels, _ = slides[name]
    rng = np.random.default_rng(11)
    with T.open_slide(path) as s:
        for i, (lv, skip) in levels.items():
            h, w = lv.image.shape[:2]
            want = lv.expected(skip)
            ds = s.level_info(i).downsample
            for _ in range(12):
                x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
                rw, rh = int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1))
                got = s.read_region(int(x * ds), int(y * ds), i, rw, rh)
                assert np.array_equal(got[..., :3], want[y:y + rh, x:x + rw]), (i, x, y, rw, rh)


def test_associated_image_of_several_frames(lib, tmp_path):
    """A label stored as tiles (2 x 2 frames, sparse with one left out) reads whole, where
    OpenSlide 4 decodes only an associated image's first frame and fails on this one."""
    img = W.source_image(200, 150)
    s = W.Series()
    s.write(str(tmp_path / "level0.dcm"), W.Level(img, TILE))
    label = W.Level(img[:63, :43].copy(), (32, 32), "jpeg", flavor="LABEL")
    s.write(str(tmp_path / "label.dcm"), label, sparse=True, skip={(1, 1)})
    with T.open_slide(str(tmp_path)) as sl:
        assert sl.associated_dimensions("label") == (43, 63)
        assert np.array_equal(sl.read_associated("label")[..., :3], label.expected({(1, 1)}))


@pytest.mark.parametrize("name", ["mixed-folder", "mixed-file", "concat"])
def test_label_overview_and_thumbnail_are_associated_images(lib, slides, name):
    """LABEL, OVERVIEW and THUMBNAIL instances: label, macro and thumbnail."""
    path, _, assoc = slides[name]
    with T.open_slide(path) as s:
        for key, lv in assoc.items():
            h, w = lv.image.shape[:2]
            assert s.associated_dimensions(key) == (w, h)
            assert np.array_equal(s.read_associated(key)[..., :3], lv.expected()), key


def test_file_and_folder_are_the_same_slide(lib, slides):
    """A file opens its series with the other instances of the folder, as the folder does."""
    with T.open_slide(slides["mixed-folder"][0]) as a, T.open_slide(slides["mixed-file"][0]) as b:
        assert a.level_dimensions() == b.level_dimensions()
        assert a.properties == b.properties
        assert a.icc_profile == b.icc_profile == ICC  # level 0's, whichever file was opened
        for i in range(a.level_count):
            assert np.array_equal(a.read_level(i), b.read_level(i))


def test_folder_picks_the_first_volume_instances_series(lib, tmp_path):
    """Two series, a file that is no DICOM and a DICOM of another SOP class in one folder: the
    folder is the series of the first VOLUME instance by name; a file opens its own."""
    img = W.source_image(200, 150)
    a, b = W.Series(), W.Series()
    la, lb = W.Level(img, TILE), W.Level(img[::2, ::2].copy(), TILE)
    (tmp_path / "0-notes.txt").write_text("not a slide")
    W.Series().write(str(tmp_path / "1-label-of-c.dcm"), W.Level(img[:40, :40].copy(), (40, 40),
                                                                 flavor="LABEL"))
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(str(tmp_path / "2-other.dcm"), write_like_original=False)
    a.write(str(tmp_path / "3-a.dcm"), la)
    b.write(str(tmp_path / "4-b.dcm"), lb)
    with T.open_slide(str(tmp_path)) as s:
        assert s.level_dimensions() == [(200, 150)]
        assert s.properties["dicom.SeriesInstanceUID"] == a.series
    with T.open_slide(str(tmp_path / "4-b.dcm")) as s:
        assert s.level_dimensions() == [(100, 75)]
        assert s.properties["dicom.SeriesInstanceUID"] == b.series
    st, msg, _ = T.open_status(str(tmp_path / "2-other.dcm"))
    assert st != T.OK and "not a whole-slide image" in msg, msg


def test_folder_without_dicom_fails_clearly(lib, tmp_path):
    (tmp_path / "a.txt").write_text("x")
    st, msg, _ = T.open_status(str(tmp_path))
    assert st != T.OK and "is a directory, not a slide file, and holds no DICOM whole-slide image" in msg, msg


# ---- properties ----------------------------------------------------------------------

STOP = {0x00480200, 0x52009230, 0x7FE00001, 0x7FE00010, 0x7FE00008, 0x7FE00009}
MULTI = {"AE", "CS", "DS", "DT", "PN", "SH", "TM", "UI", "UC"}
SINGLE = {"AS", "DA", "IS", "LO", "LT", "ST", "UT", "UR"}
NUMBERS = {"FL": "<f", "FD": "<d", "SL": "<i", "SS": "<h", "UL": "<I", "US": "<H", "AT": "<H",
           "SV": "<q", "UV": "<Q"}


def _dicom_properties(ds, prefix, out):
    """OpenSlide 4's dicom.* keys and values (as libdicom's value classes give them) from
    pydicom's reading of the file; False when a tag that ends them was met."""
    for tag in sorted(ds.keys()):
        if prefix == "dicom" and int(tag) in STOP:
            return False
        kw = keyword_for_tag(tag)
        if not kw or tag.element == 0:  # libdicom keeps no group length
            continue
        raw = ds.get_item(tag)
        vr = raw.VR or dictionary_VR(tag)
        if vr == "SQ":
            for i, item in enumerate(ds[tag].value):
                _dicom_properties(item, "%s.%s[%d]" % (prefix, kw, i), out)
            continue
        value = raw.value
        if isinstance(value, int):  # the file meta group, which pydicom reads converted
            value = struct.pack(NUMBERS[vr], value)
        if isinstance(value, str):
            value = value.encode()
        if vr in MULTI or vr in SINGLE:
            text = value.split(b"\0")[0].decode()
            if text and vr != "UI" and text[-1].isspace():
                text = text[:-1]
            parts = text.split("\\") if vr in MULTI else [text]
        elif vr in NUMBERS:
            size = struct.calcsize(NUMBERS[vr])
            nums = [struct.unpack(NUMBERS[vr], value[i:i + size])[0]
                    for i in range(0, len(value), size)]
            parts = ["%.17g" % n if vr in ("FL", "FD") else "%d" % n for n in nums]
        else:
            continue
        if len(parts) == 1:
            out["%s.%s" % (prefix, kw)] = parts[0]
        else:
            for i, p in enumerate(parts):
                out["%s.%s[%d]" % (prefix, kw, i)] = p
    return True


@pytest.mark.parametrize("name", ["mixed-folder", "concat", "implicit"])
def test_properties_are_level_0s_first_instance(lib, slides, name):
    path, levels, _ = slides[name]
    with T.open_slide(path) as s:
        props = s.properties
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    # level 0's first instance (in concatenation order)
    w, h = levels[0][0].image.shape[1], levels[0][0].image.shape[0]
    first = None
    for f in sorted(os.listdir(folder)):
        ds = pydicom.dcmread(os.path.join(folder, f))
        if ds.TotalPixelMatrixColumns == w and ds.ImageType[2] == "VOLUME" and \
                int(ds.get("InConcatenationNumber", 1)) == 1:
            first = os.path.join(folder, f)
    ds = pydicom.dcmread(first)
    want = {}
    _dicom_properties(ds.file_meta, "dicom", want)
    _dicom_properties(ds, "dicom", want)
    got = {k: v for k, v in props.items() if k.startswith("dicom.")}
    assert len(want) > 40 and got == want
    assert float(props["tessera.mpp-x"]) == 1000 * float(ds.SharedFunctionalGroupsSequence[0]
                                                         .PixelMeasuresSequence[0].PixelSpacing[1])
    assert float(props["tessera.mpp-y"]) == 1000 * float(ds.SharedFunctionalGroupsSequence[0]
                                                         .PixelMeasuresSequence[0].PixelSpacing[0])
    assert float(props["tessera.objective-power"]) == float(ds.OpticalPathSequence[0]
                                                            .ObjectiveLensPower)
    assert props["tessera.barcode"] == "BC-42"
    assert not any(k.startswith("dicom.PerFrameFunctionalGroupsSequence") for k in props)


# ---- the batch reader and `tessera bench` ----------------------------------------------


@pytest.mark.parametrize("level", [0, 1])
def test_batches_equal_single_reads(lib, slides, level):
    path = slides["concat"][0]
    with T.open_slide(path) as s:
        locs = VC.level_locations(s, level)
    VC.check_batches_equal_single_reads(path, locs, (67, 45), level)


@pytest.mark.parametrize("name", ["concat", "mixed-folder"])
def test_bench_checksum_equals_single_reads(lib, cli, slides, tmp_path, name):
    path = slides[name][0]
    with T.open_slide(path) as s:
        locs = VC.level_locations(s, 1, n=40)
    VC.check_bench_checksum(cli, path, locs, (37, 23), 1, tmp_path)


def test_info_command_names_the_format(cli, slides):
    r = subprocess.run([cli, "info", slides["mixed-folder"][0]], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "dicom" in r.stdout


# ---- damaged and hostile copies ------------------------------------------------------


def _find(data, tag, start=132):
    """Offset of the first element header of tag (explicit VR) at or after start."""
    needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    at = data.find(needle, start)
    assert at > 0, hex(tag)
    return at


def _edit(data, tag, fn):
    data = bytearray(data)
    fn(data, _find(bytes(data), tag))
    return bytes(data)


def _set_long_length(n):
    def fn(data, at):
        data[at + 8:at + 12] = struct.pack("<I", n)
    return fn


def _set_ul(n):
    def fn(data, at):
        data[at + 8:at + 12] = struct.pack("<I", n)
    return fn


def _nesting_bomb(path, depth, undefined):
    """A good instance with a sequence nested depth deep."""
    ds = pydicom.dcmread(path)
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    if undefined:
        W.undefined_lengths(ds)
    ds.save_as(path, write_like_original=False)


# name: (how the good file is damaged, words the failure has, fails when read (else at open))
DAMAGED = {
    "truncated-in-meta": (lambda d: d[:150], "truncated", False),
    "truncated-in-data-set": (lambda d: d[:700], "truncated", False),
    "truncated-in-pixels": (lambda d: d[:-100], "truncated", False),
    # no DICM: no DICOM file, so read as a TIFF, which it is not either
    "no-dicm": (lambda d: d[:128] + b"DICX" + d[132:], "not a readable TIFF file", False),
    "pixel-length-past-end": (lambda d: _edit(d, 0x7FE00010, _set_long_length(0x7FFFFFF0)),
                              "past the end", False),
    "sequence-length-past-end": (lambda d: _edit(d, 0x00480105, _set_long_length(0x7FFFFFF0)),
                                 "past the end", False),
    "huge-total-columns": (lambda d: _edit(d, 0x00480006, _set_ul(0xFFFFFFF0)), "limit", False),
    "no-vr": (lambda d: _edit(d, 0x00100010, lambda b, at: b.__setitem__(slice(at + 4, at + 6),
                                                                            b"\x01\x02")),
              "has no VR", False),
    "big-endian": (lambda d: d.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.2\0", 1),
                   "big endian", False),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom-damaged")
    img = W.source_image(200, 150)
    good = str(root / "good.dcm")
    W.Series().write(good, W.Level(img, TILE))
    data = open(good, "rb").read()
    out = {}
    for name, (fn, _, _) in DAMAGED.items():
        d = root / name
        d.mkdir()
        p = d / "slide.dcm"
        p.write_bytes(fn(data))
        out[name] = str(p)
    # a sequence nested 100 deep, and one 11 deep (within the limit: opens)
    for name, depth, undefined in (("nesting-bomb", 100, False),
                                   ("nesting-bomb-undefined", 100, True),
                                   ("nested-11", 10, True)):
        d = root / name
        d.mkdir()
        shutil.copy(good, d / "slide.dcm")
        _nesting_bomb(str(d / "slide.dcm"), depth, undefined)
        out[name] = str(d / "slide.dcm")
    # a frame count far beyond the frames there are
    d = root / "huge-frame-count"
    d.mkdir()
    ds = pydicom.dcmread(good)
    ds.NumberOfFrames = 2147483647
    ds.save_as(str(d / "slide.dcm"), write_like_original=False)
    out["huge-frame-count"] = str(d / "slide.dcm")
    # a concatenation missing its second instance
    d = root / "concat-missing"
    d.mkdir()
    paths = W.Series().write(str(d / "level0"), W.Level(img, TILE, "jpeg"), concat_parts=3)
    os.remove(paths[1])
    out["concat-missing"] = paths[0]
    # a sparse frame off the tile grid, and one outside the image
    for name, (col, row) in (("sparse-off-grid", (5, 1)), ("sparse-outside", (64 * 9 + 1, 1))):
        d = root / name
        d.mkdir()
        p = str(d / "slide.dcm")
        W.Series().write(p, W.Level(img, TILE), sparse=True)
        ds = pydicom.dcmread(p)
        pos = ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSlideSequence[0]
        pos.ColumnPositionInTotalImagePixelMatrix = col
        pos.RowPositionInTotalImagePixelMatrix = row
        ds.save_as(p, write_like_original=False)
        out[name] = p
    # encapsulated Pixel Data damaged: a Basic Offset Table longer than the file, a fragment
    # that is no item, an offset table whose frames start at no fragment
    jgood = str(root / "good-jpeg.dcm")
    W.Series().write(jgood, W.Level(img, TILE, "jpeg"), per_frame=2)
    jdata = open(jgood, "rb").read()
    pix = jdata.index(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12
    nbot = struct.unpack("<I", jdata[pix + 4:pix + 8])[0]
    first = pix + 8 + nbot  # the first fragment's item
    for name, edit in (
            ("bot-past-end", lambda b: b.__setitem__(slice(pix + 4, pix + 8),
                                                     struct.pack("<I", 0x7FFFFFF0))),
            ("fragment-no-item", lambda b: b.__setitem__(slice(first, first + 4),
                                                         b"\x10\x00\x10\x00")),
            ("bot-off-fragment", lambda b: b.__setitem__(slice(pix + 12, pix + 16),
                                                         struct.pack("<I", 3)))):
        b = bytearray(jdata)
        edit(b)
        d = root / name
        d.mkdir()
        (d / "slide.dcm").write_bytes(bytes(b))
        out[name] = str(d / "slide.dcm")
    # a JPEG frame whose bytes are no JPEG (fails when read)
    d = root / "bad-jpeg-frame"
    d.mkdir()
    lv = W.Level(img, TILE, "jpeg")
    lv.frames[1, 1] = b"\xff\xd8" + b"\x00" * 64
    p = str(d / "slide.dcm")
    W.Series().write(p, lv)
    out["bad-jpeg-frame"] = p
    return out


DAMAGED_MORE = {
    "nesting-bomb": ("nested more than 12 deep", False),
    "nesting-bomb-undefined": ("nested more than 12 deep", False),
    "huge-frame-count": ("2147483647 frames", False),
    "concat-missing": ("instance 2 of 3 is missing", False),
    "sparse-off-grid": ("not on the 64x48 tile grid", False),
    "sparse-outside": ("lies outside", False),
    "bad-jpeg-frame": ("JPEG", True),
    "bot-past-end": ("past the end", False),
    "fragment-no-item": ("is no item", False),
    "bot-off-fragment": ("the offset table's frame 2 starts at no fragment", False),
}


def _fails(path):
    st, msg, s = T.open_status(path)
    if s is None:
        assert st != T.OK
        return msg
    with s:
        try:
            for level in range(s.level_count):
                s.read_level(level)
            for name in s.associated_names:
                s.read_associated(name)
        except T.TesseraError as e:
            return str(e)
    return None


def _cases():
    out = {k: (v[1], v[2]) for k, v in DAMAGED.items()}
    out.update(DAMAGED_MORE)
    return out


@pytest.mark.parametrize("name", sorted(_cases()))
def test_damaged_copies_fail_clearly(lib, cli, damaged, name, tmp_path):
    words, at_read = _cases()[name]
    msg = _fails(damaged[name])
    assert msg is not None, "%s opened and read" % name
    assert words in msg, msg
    clis = [("cli", cli)]
    if os.environ.get("TESSERA_CLI_ASAN"):
        clis.append(("asan", os.environ["TESSERA_CLI_ASAN"]))
    for which, exe in clis:
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=99",
                   UBSAN_OPTIONS="halt_on_error=1:exitcode=98:print_stacktrace=1")
        out = str(tmp_path / ("%s.raw" % which))
        cmd = [exe, "info", damaged[name]] if not at_read else \
            [exe, "read", damaged[name], "--location", "0,0", "--size", "200,150", "--output",
             out]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 1, (which, r.returncode, r.stderr)
        assert words in r.stderr and "Sanitizer" not in r.stderr, (which, r.stderr)


def test_nesting_within_the_limit_opens(lib, damaged):
    """The nesting limit leaves room for real files' nesting (11 deep here)."""
    with T.open_slide(damaged["nested-11"]) as s:
        assert s.level_dimensions() == [(200, 150)]
        assert "dicom.ContentSequence[0].ContentSequence[0].ContentSequence[0]." \
               "ContentSequence[0].ContentSequence[0].ContentSequence[0].ContentSequence[0]." \
               "ContentSequence[0].ContentSequence[0].ContentSequence[0].CodeValue" in s.properties


def test_python_package_and_openslide_front_read_it(slides):
    """CuImage and tessera.openslide over a DICOM folder: the C API's pixels; OpenSlide 4's
    standard keys, and its quickhash-1 (SHA-256 of the SeriesInstanceUID and its NUL)."""
    import hashlib

    import tessera
    import tessera.openslide
    path = slides["mixed-folder"][0]
    with T.open_slide(path) as s:
        want = s.read_region(100, 50, 0, 200, 120, channels=4)
        series = s.properties["dicom.SeriesInstanceUID"]
    img = tessera.CuImage(path)
    got = np.asarray(img.read_region((100, 50), (200, 120), 0))
    assert np.array_equal(got[..., :3], want[..., :3])
    o = tessera.openslide.OpenSlide(path)
    p = o.properties
    assert p["openslide.vendor"] == "dicom"
    assert p["openslide.quickhash-1"] == hashlib.sha256(series.encode() + b"\0").hexdigest()
    assert (p["openslide.mpp-x"], p["openslide.objective-power"]) == ("0.25", "20")
    assert p["dicom.SeriesInstanceUID"] == series
    assert sorted(o.associated_images) == ["label", "macro"]
    assert np.array_equal(np.asarray(o.read_region((100, 50), 0, (200, 120))), want)


@pytest.mark.parametrize("name", ["concat", "fragments-bot"])
def test_cuda_batches_equal_cpu_batches(slides, name):
    """device='cuda' on the CUDA simulator (tests/test_gpu_sim.py's): the JPEG frames go to
    nvJPEG (frames of several fragments joined first), byte-equal to the CPU's batches."""
    import test_gpu_sim as G
    path = slides[name][0]
    out = G.run_checks("""
        img = CuImage(SLIDE)
        rng = np.random.default_rng(5)
        before = sim.sim_decoded_images()
        w, h = img.resolutions["level_dimensions"][0]
        xs, ys = rng.integers(-60, w + 10, 25), rng.integers(-60, h + 10, 25)
        locs = np.stack([xs, ys], 1).astype(np.int64)
        kw = dict(level=0, batch_size=5, num_workers=2, channels=3)
        want = cpu_batches(img, locs, (67, 45), **kw)
        got = gpu_batches(img, locs, (67, 45), **kw)
        assert len(got) == len(want)
        for g, c in zip(got, want):
            assert np.array_equal(g, c)
        with img.read_region([(0, 0)], (16, 16), level=0, device="cuda") as it:
            print(it.decoder, sim.sim_decoded_images() - before, sim.sim_failures())
    """.replace("SLIDE", repr(path)))
    decoder, decoded, failures = out.split()
    assert decoder == "nvjpeg-default" and int(decoded) > 0 and int(failures) == 0, out


def test_icc_profile_of_the_first_optical_path(lib, cli, tmp_path):
    """The ICC Profile (0028,2000) of level 0's first optical path, as the file holds it, through
    the C API, `tessera info` and both openslide fronts' color profile (OpenSlide 4 gives
    it); a slide without one has none."""
    import tessera
    icc = bytes(range(256)) * 3 + b"icc-end!"  # any bytes: tessera hands them on unread
    img = W.source_image(200, 150)
    s = W.Series()
    s.write(str(tmp_path / "level0.dcm"), W.Level(img, TILE), extra={"icc": icc})
    s.write(str(tmp_path / "level1.dcm"), W.Level(img[::2, ::2].copy(), TILE),
            extra={"icc": b"other profile!"})
    with T.open_slide(str(tmp_path)) as sl:
        assert sl.icc_profile == icc
    assert pydicom.dcmread(str(tmp_path / "level0.dcm")).OpticalPathSequence[0].ICCProfile == icc
    r = subprocess.run([cli, "info", str(tmp_path), "--json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["icc_profile_size"] == len(icc), r.stderr
    assert tessera.CuImage(str(tmp_path)).icc_profile == icc
    # libtessera-openslide's OpenSlide 4.0 ABI
    so1 = ctypes.CDLL(os.path.join(os.path.dirname(T.lib_path()), "..", "openslide", "so1",
                                   "libopenslide.so.1"))
    so1.openslide_open.restype = ctypes.c_void_p
    so1.openslide_open.argtypes = [ctypes.c_char_p]
    so1.openslide_get_icc_profile_size.restype = ctypes.c_int64
    so1.openslide_get_icc_profile_size.argtypes = [ctypes.c_void_p]
    so1.openslide_read_icc_profile.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    so1.openslide_get_property_value.restype = ctypes.c_char_p
    so1.openslide_get_property_value.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    so1.openslide_close.argtypes = [ctypes.c_void_p]
    o = so1.openslide_open(str(tmp_path / "level1.dcm").encode())
    assert o and so1.openslide_get_icc_profile_size(o) == len(icc)
    buf = ctypes.create_string_buffer(len(icc))
    so1.openslide_read_icc_profile(o, buf)
    assert buf.raw == icc
    assert so1.openslide_get_property_value(o, b"openslide.icc-size") == str(len(icc)).encode()
    so1.openslide_close(o)
    so1.openslide_detect_vendor.restype = ctypes.c_char_p
    so1.openslide_detect_vendor.argtypes = [ctypes.c_char_p]
    assert so1.openslide_detect_vendor(str(tmp_path / "level1.dcm").encode()) == b"dicom"
    # the OpenSlide 3.4 ABI reads no DICOM, as OpenSlide 3.4.1 does not
    so0 = ctypes.CDLL(os.path.join(os.path.dirname(T.lib_path()), "..", "openslide",
                                   "so0", "libopenslide.so.0"))
    so0.openslide_open.restype = ctypes.c_void_p
    so0.openslide_open.argtypes = [ctypes.c_char_p]
    assert not so0.openslide_open(str(tmp_path / "level1.dcm").encode())
    other = tmp_path / "none"
    other.mkdir()
    W.Series().write(str(other / "level0.dcm"), W.Level(img, TILE))
    with T.open_slide(str(other)) as sl:
        assert sl.icc_profile is None or sl.icc_profile == b""


@pytest.mark.parametrize("cache", ["per_process", "shared_memory"])
def test_tile_caches_keep_levels_and_images_apart(lib, slides, cache):
    """Through a tile cache, every level and associated image reads as without one, whichever
    is read first: tile i of one level is never served for tile i of another."""
    path, levels, assoc = slides["mixed-folder"]
    kind = {"per_process": T.CACHE_PER_PROCESS, "shared_memory": T.CACHE_SHARED_MEMORY}[cache]
    T.configure_cache(kind, memory_capacity_mib=64,
                      name="/tessera-test-dicom-%d" % os.getpid() if cache == "shared_memory"
                      else None)
    try:
        with T.open_slide(path) as s:
            for _ in range(2):
                for i in sorted(levels, reverse=True) + sorted(levels):
                    lv, skip = levels[i]
                    assert np.array_equal(s.read_level(i)[..., :3], lv.expected(skip)), i
                for name, lv in assoc.items():
                    assert np.array_equal(s.read_associated(name)[..., :3], lv.expected()), name
    finally:
        T.configure_cache(T.CACHE_NONE)


def test_damaged_instance_of_the_series_fails_the_folder(lib, tmp_path):
    """A truncated instance of the slide's own series fails the open (naming the file) rather
    than leaving its level out; a damaged file of another series beside it is passed over."""
    img = W.source_image(200, 150)
    s, other = W.Series(), W.Series()
    s.write(str(tmp_path / "a-level0.dcm"), W.Level(img, TILE))
    s.write(str(tmp_path / "b-level1.dcm"), W.Level(img[::2, ::2].copy(), TILE))
    other.write(str(tmp_path / "c-other.dcm"), W.Level(img, TILE))
    for name in ("c-other.dcm", "b-level1.dcm"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[:-100])
        st, msg, sl = T.open_status(str(tmp_path))
        if name == "c-other.dcm":
            assert sl is not None, msg
            with sl:
                assert sl.level_dimensions() == [(200, 150), (100, 75)]
        else:
            assert sl is None and "b-level1.dcm" in msg and "truncated" in msg, msg
    # opened by its level-0 file, the same
    st, msg, sl = T.open_status(str(tmp_path / "a-level0.dcm"))
    assert sl is None and "b-level1.dcm" in msg, msg
