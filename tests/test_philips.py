"""Philips TIFF, on fixtures written at test time from real slide pixels (vendor_writers.py):
levels, their true sizes from the XML's pixel spacings, pixels, sparse tiles, properties and
the label and macro (as directories or as base64 JPEG in the XML) against OpenSlide 3.4.1,
which reads these files as Philips; damaged and hostile XML fail cleanly (checked with the
ASan+UBSan build of `tessera` as well when TESSERA_CLI_ASAN names one)."""

import io
import os
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import openslide
import pytest
from PIL import Image

import tessera_ctypes as T
import tiffbytes as tb
import vendor_writers as V
import wsi_fixtures as F
import wsi_refs as R

TILE = 256
FACTORS = [1, 2, 4]
SPARSE = (1, 6)  # level-0 tiles stored with byte count 0
ROW_MM, COL_MM = 0.00025, 0.000227  # unequal, so x and y cannot be swapped unseen


def spacings(factors=FACTORS):
    return [(ROW_MM * f, COL_MM * f) for f in factors]


@pytest.fixture(scope="module")
def pieces():
    base = V.source_rgb(1000, 760, 100, 100)
    return dict(
        slide=V.PhilipsSlide(base, TILE, FACTORS),
        label=V.source_rgb(300, 200, 1500, 1800),
        macro=V.source_rgb(400, 160, 200, 2000),
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory, pieces):
    d = tmp_path_factory.mktemp("philips")
    sl, label, macro = pieces["slide"], pieces["label"], pieces["macro"]
    out = {}
    # label as a directory, macro as base64 JPEG in the XML, two sparse tiles
    out["mixed"] = str(d / "mixed.tiff")
    V.write_philips(out["mixed"], sl, V.philips_xml(spacings(), spacings()[0],
                                                    macro_jpeg=V.jpeg_bytes(macro)),
                    sparse=SPARSE, label=label)
    # both in the XML; quotes of the spacings written as entities
    out["xml"] = str(d / "xml.tiff")
    V.write_philips(out["xml"], sl, V.philips_xml(
        spacings(), spacings()[0], label_jpeg=V.jpeg_bytes(label),
        macro_jpeg=V.jpeg_bytes(macro), quote="&quot;"))
    # both as directories (the XML's copies are then not used)
    out["dirs"] = str(d / "dirs.tiff")
    V.write_philips(out["dirs"], sl, V.philips_xml(
        spacings(), spacings()[0], macro_jpeg=V.jpeg_bytes(macro[::2, ::2].copy())),
        label=label, macro=macro)
    return out


NAMES = ["mixed", "xml", "dirs"]


def osl(path):
    return R.openslide_open(path)


# ---- what the file is ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_levels_equal_openslides(lib, files, name):
    o = osl(files[name])
    assert o.properties["openslide.vendor"] == "philips"
    with T.open_slide(files[name]) as s:
        assert s.vendor == "philips"
        assert s.level_dimensions() == list(o.level_dimensions)
        assert [s.level_info(i).downsample for i in range(s.level_count)] == \
            list(o.level_downsamples)
        assert s.background == 255
        # the directories are padded to whole tiles; the levels are not
        stored = _tiled_sizes(files[name])
        assert stored[1:] != s.level_dimensions()[1:]


def _tiled_sizes(path):
    """(ImageWidth, ImageLength) of each tiled directory, read from the bytes (tifffile would
    apply its own Philips correction)."""
    with open(path, "rb") as f:
        t = tb.Tiff(f.read())
    return [(t.values(i, "ImageWidth")[0], t.values(i, "ImageLength")[0])
            for i in range(len(t.ifds)) if 322 in t.ifds[i].entries]


@pytest.mark.parametrize("name", NAMES)
def test_properties_equal_openslides(lib, files, name):
    o = osl(files[name])
    with T.open_slide(files[name]) as s:
        props = s.properties
    want = {k: v for k, v in o.properties.items() if k.startswith("philips.")}
    got = {k: v for k, v in props.items() if k.startswith("philips.")}
    assert want and got == want
    for key in ("mpp-x", "mpp-y"):
        assert float(props["tessera." + key]) == pytest.approx(
            float(o.properties["openslide." + key]), rel=1e-12)
    for key in ("objective-power", "comment"):
        assert props.get("tessera." + key) == o.properties.get("openslide." + key)
    assert props["tessera.background-color"] == "FFFFFF"


def test_mpp_is_column_then_row_spacing(lib, files):
    with T.open_slide(files["mixed"]) as s:
        props = s.properties
    spacing = props["philips.DICOM_PIXEL_SPACING"].replace('"', "").split()
    assert float(props["tessera.mpp-x"]) == pytest.approx(1e3 * float(spacing[1]), rel=1e-12)
    assert float(props["tessera.mpp-y"]) == pytest.approx(1e3 * float(spacing[0]), rel=1e-12)


# ---- pixels --------------------------------------------------------------------------


def _cases():
    return [(name, level) for name in ("mixed", "xml") for level in range(len(FACTORS))]


@pytest.mark.parametrize("name,level", _cases())
def test_regions_equal_openslides(lib, files, name, level):
    """Byte-exact where OpenSlide has pixels; where it has none (outside the level, in a
    sparse tile, in the padding the XML clips off) tessera gives the white background with
    alpha 0."""
    o = osl(files[name])
    with T.open_slide(files[name]) as s:
        W, H = s.level_dimensions()[level]
        ds = s.level_info(level).downsample
        checked_empty = 0
        for lx, ly, w, h, label in R.regions_for_level(W, H, TILE, TILE, seed=level):
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
            checked_empty += int((~inside).sum())
        assert checked_empty > 0


def test_sparse_tiles_read_as_background(lib, files, pieces):
    """The tiles stored with byte count 0 are white with alpha 0 (OpenSlide: transparent);
    the tile beside them is the slide's."""
    o = osl(files["mixed"])
    with T.open_slide(files["mixed"]) as s:
        W = s.level_dimensions()[0][0]
        across = -(-W // TILE)
        for index in SPARSE:
            x, y = (index % across) * TILE, (index // across) * TILE
            w = min(TILE, W - x)
            rgba = s.read_region(x, y, 0, w, TILE, channels=4)
            assert (rgba[..., :3] == 255).all() and (rgba[..., 3] == 0).all()
            assert (R.openslide_region(o, x, y, 0, w, TILE)[..., 3] == 0).all()
        with T.open_slide(files["xml"]) as full:  # the same tile where it is stored
            x = (SPARSE[0] % across) * TILE
            assert full.read_region(x, 0, 0, TILE, TILE).std() > 0
        rgba = s.read_region(0, 0, 0, TILE, TILE, channels=4)
        assert (rgba[..., 3] == 255).all() and rgba.std() > 0


# ---- associated images ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_associated_images_equal_openslides(lib, files, name):
    o = osl(files[name])
    with T.open_slide(files[name]) as s:
        assert sorted(s.associated_names) == sorted(o.associated_images) == ["label", "macro"]
        for image in ("label", "macro"):
            want = np.asarray(o.associated_images[image].convert("RGBA"))
            assert s.associated_dimensions(image) == (want.shape[1], want.shape[0])
            assert np.array_equal(s.read_associated(image, channels=4), want), (name, image)
            assert np.array_equal(s.read_associated(image), want[..., :3]), (name, image)


def test_xml_associated_image_is_the_decoded_jpeg(lib, files, pieces):
    """The base64 JPEG of the XML, decoded by PIL (libjpeg), independently of OpenSlide."""
    for image in ("label", "macro"):
        want = np.asarray(Image.open(io.BytesIO(V.jpeg_bytes(pieces[image]))).convert("RGB"))
        with T.open_slide(files["xml"]) as s:
            assert np.array_equal(s.read_associated(image), want)


def test_directory_wins_over_the_xml(lib, files, pieces):
    with T.open_slide(files["dirs"]) as s:
        w, h = s.associated_dimensions("macro")
        assert (h, w) == pieces["macro"].shape[:2]
        assert np.array_equal(s.read_associated("macro"), pieces["macro"])  # lossless strips


def test_read_associated_from_the_xml_with_the_command(cli, files, tmp_path, pieces):
    out = tmp_path / "macro.png"
    r = subprocess.run([cli, "read", files["xml"], "--associated", "macro", "--output",
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = np.asarray(Image.open(io.BytesIO(V.jpeg_bytes(pieces["macro"]))).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out)), want)


# ---- damaged metadata ----------------------------------------------------------------


def _xml(**kw):
    args = dict(level_spacings=spacings(), top_spacing=spacings()[0])
    args.update(kw)
    return V.philips_xml(**args)


DAMAGED = {
    # name: (description, what the message must say)
    "truncated-xml": (_xml()[:-40], "XML line"),
    "unclosed-element": (_xml().replace("</DataObject>\n", "", 1).replace(
        "</Attribute>", "", 1), "XML line"),
    "bad-entity": (_xml().replace("PHILIPS", "PHIL&IPS;"), "XML line"),
    "too-few-spacings": (_xml(level_spacings=spacings()[:2]), "pixel spacing"),
    "too-many-spacings": (_xml(level_spacings=spacings(FACTORS + [8])), "pixel spacing"),
    "unreadable-spacing": (_xml().replace(repr(ROW_MM * 2), "half"), "pixel spacing"),
    "one-number-spacing": (_xml().replace('"%r" "%r"' % (ROW_MM * 4, COL_MM * 4),
                                          '"%r"' % (ROW_MM * 4)), "pixel spacing"),
    "lying-spacing": (_xml(level_spacings=spacings([1, 1, 4])), "holds"),
    "zero-spacing": (_xml(level_spacings=[(0.0, 0.0)] + spacings()[1:]), "pixel spacing"),
    "two-wsi": (_xml(wsi_count=2), "WSI"),
    "no-wsi": (_xml().replace(">WSI<", ">OTHER<"), "WSI"),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, pieces):
    d = tmp_path_factory.mktemp("philips-damaged")
    out = {}
    for name, (xml, _) in DAMAGED.items():
        out[name] = str(d / (name + ".tiff"))
        V.write_philips(out[name], pieces["slide"], xml)
    return out


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_metadata_fails_clearly(lib, cli, damaged, name):
    st, msg, s = T.open_status(damaged[name])
    assert s is None and st == T.E_FORMAT, (st, msg)
    assert DAMAGED[name][1] in msg and "Philips" in msg, msg
    r = subprocess.run([cli, "info", damaged[name]], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and DAMAGED[name][1] in r.stderr, \
        r.stderr


def test_damaged_xml_is_malformed_for_expat_too():
    """The XML cases above are malformed by another parser's judgement, not only ours."""
    for name in ("truncated-xml", "unclosed-element", "bad-entity"):
        with pytest.raises(ET.ParseError):
            ET.fromstring(DAMAGED[name][0].encode())


def test_not_reduced_level_fails(lib, tmp_path, pieces):
    import tifffile
    path = str(tmp_path / "not-reduced.tiff")
    sl = pieces["slide"]
    with tifffile.TiffWriter(path) as tw:
        V.write_jpeg_tiled(tw, sl.levels[0], TILE, description=_xml(), software="Philips DP")
        for i in (1, 2):
            V.write_jpeg_tiled(tw, sl.padded(i), TILE, software="Philips DP")
    st, msg, s = T.open_status(path)
    assert s is None and st == T.E_FORMAT and "reduced-resolution" in msg, msg
    with pytest.raises(openslide.OpenSlideError):
        openslide.OpenSlide(path)


@pytest.mark.parametrize("case", ["other-xml", "not-xml"])
def test_not_a_philips_document_is_generic_tiff_as_for_openslide(lib, tmp_path, pieces, case):
    desc = ('<?xml version="1.0"?><DataObject ObjectType="Other"><Attribute Name="A">1'
            '</Attribute></DataObject>' if case == "other-xml" else "Philips slide, level 0")
    path = str(tmp_path / (case + ".tiff"))
    V.write_philips(path, pieces["slide"], desc)
    assert openslide.OpenSlide(path).properties["openslide.vendor"] == "generic-tiff"
    with T.open_slide(path) as s:
        assert s.vendor == "generic-tiff"
        assert not any(k.startswith("philips.") for k in s.properties)


@pytest.mark.parametrize("data", ["!!not base64!!", "QUJD", ""])
def test_undecodable_xml_image_is_left_out_as_by_openslide(lib, tmp_path, pieces, data):
    """A label whose base64 or JPEG is bad is left out; the slide opens."""
    path = str(tmp_path / "bad-label.tiff")
    V.write_philips(path, pieces["slide"], _xml(label_jpeg=data,
                                                macro_jpeg=V.jpeg_bytes(pieces["macro"])))
    assert sorted(openslide.OpenSlide(path).associated_images) == ["macro"]
    with T.open_slide(path) as s:
        assert s.associated_names == ["macro"]
        assert s.level_count == len(FACTORS)


def test_truncated_jpeg_in_the_xml_fails_its_read_only(lib, tmp_path, pieces):
    """A JPEG whose header is whole but whose data is cut: the slide opens, reading the label
    fails with a message, the rest reads."""
    jpeg = V.jpeg_bytes(pieces["label"])
    path = str(tmp_path / "cut-label.tiff")
    V.write_philips(path, pieces["slide"], _xml(label_jpeg=jpeg[:len(jpeg) // 2]))
    with T.open_slide(path) as s:
        assert "label" in s.associated_names
        with pytest.raises(T.TesseraError) as e:
            s.read_associated("label")
        assert e.value.status in (T.E_CORRUPT, T.E_FORMAT), str(e.value)
        assert s.read_region(0, 0, 0, 64, 64).std() > 0


# ---- XML against libxml2 (OpenSlide's parser) ----------------------------------------


def test_xml_text_decoding_equals_libxml2(lib, tmp_path, pieces):
    """Entities, character references, CDATA, comments, processing instructions and line ends
    in attribute text come out as libxml2 (through OpenSlide) gives them."""
    extra = [
        V._attr("T_ENTITIES", "a&lt;b&gt;c&amp;d&quot;e&apos;f"),
        V._attr("T_NUMERIC", "caf&#233; &#x1F600; &#9;tab &#x41;"),
        V._attr("T_CDATA", "x<![CDATA[<not> & markup]]>y"),
        V._attr("T_COMMENT", "a<!-- hidden -->b<?pi ignored?>c"),
        V._attr("T_CRLF", "line1\r\nline2\rline3"),
        V._attr("T_UTF8", "µm Ångström 顕微鏡"),
        V._attr("T_SPACE", "  padded  "),
        V._attr("T_EMPTY", ""),
        '<Attribute Name="T_SELFCLOSED"/>',
        "<Attribute Name='T_SQUOTE'>single</Attribute>",
        V._attr("T_REPLACED", "first"), V._attr("T_REPLACED", "second"),
        '<!-- a comment between attributes -->',
        '<Attribute Name="T_NESTED"><Inner>skipped: has an element child</Inner></Attribute>',
        '<Attribute Group="0x1">no name</Attribute>',
    ]
    path = str(tmp_path / "text.tiff")
    V.write_philips(path, pieces["slide"], _xml(extra_top=extra))
    want = {k: v for k, v in osl(path).properties.items() if k.startswith("philips.")}
    with T.open_slide(path) as s:
        got = {k: v for k, v in s.properties.items() if k.startswith("philips.")}
    assert "philips.T_NUMERIC" in want and "philips.T_NESTED" not in want
    assert got == want


# ---- hostile XML ---------------------------------------------------------------------


def _hostile():
    """name: (description, whether it opens). The well-formed ones carry a whole Philips
    document, so that they reach the property walk."""
    head = '<?xml version="1.0"?>\n<DataObject ObjectType="DPUfsImport">'
    ok_tail = V._array("PIM_DP_SCANNED_IMAGES", []) + "</DataObject>"

    def doc(*extra):
        return _xml(extra_top=list(extra))

    return {
        "deep-nesting": (doc("<a>" * 200000 + "</a>" * 200000), False),
        "deep-unclosed": (head + "<a>" * 500000, False),
        "huge-attribute-value": (doc('<Attribute Name="X" Junk="' + "A" * (8 << 20) + '">v'
                                     "</Attribute>"), True),
        "huge-attribute-name": (doc('<Attribute Name="' + "N" * 100000 + '">v</Attribute>'),
                                False),
        "huge-text": (doc(V._attr("X", "B" * (8 << 20))), True),
        "many-attributes": (doc("<Attribute " + " ".join('a%d="1"' % i for i in range(5000))
                                + ">v</Attribute>"), False),
        "many-leaf-attributes": (doc('<Attribute Name="L">v</Attribute>' * 300000), False),
        "many-elements": (doc('<Attribute Name="L"><x/></Attribute>' * 100000), True),
        "too-many-elements": (doc("<x/>" * 300000), False),
        "billion-laughs": ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                           '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
                           '<DataObject ObjectType="DPUfsImport">&lol2;</DataObject>', False),
        "external-entity": ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM '
                            '"file:///etc/passwd">]><DataObject ObjectType="DPUfsImport">&x;'
                            '</DataObject>', False),
        "huge-char-ref": (doc(V._attr("X", "&#99999999999;")), False),
        "surrogate-char-ref": (doc(V._attr("X", "&#xD800;")), False),
        "nul-char-ref": (doc(V._attr("X", "a&#0;b")), False),
        "unterminated-comment": (head + "<!-- " + "x" * 100000, False),
        "unterminated-cdata": (head + "<Attribute><![CDATA[" + "x" * 100000, False),
        "unterminated-attribute": (head + '<Attribute Name="' + "x" * 100000, False),
        "unterminated-reference": (doc(V._attr("X", "&#x41")), False),
        "lt-in-attribute": (head + '<Attribute Name="a<b">v</Attribute>' + ok_tail, False),
        "duplicate-attribute": (head + '<Attribute Name="a" Name="b">v</Attribute>' + ok_tail,
                                False),
        "mismatched-tags": (head + "<a><b></a></b>" + ok_tail, False),
        "two-roots": (head + ok_tail + "<DataObject/>", False),
        "binary-garbage": ("<" + "".join(chr(c) for c in range(1, 256)) * 50, False),
    }


HOSTILE = _hostile()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, pieces):
    d = tmp_path_factory.mktemp("philips-hostile")
    out = {}
    for name, (xml, _) in HOSTILE.items():
        out[name] = str(d / (name + ".tiff"))
        V.write_philips(out[name], pieces["slide"], xml)
    return out


def _clis():
    clis = [F.cli_path()]
    if os.environ.get("TESSERA_CLI_ASAN"):
        clis.append(os.environ["TESSERA_CLI_ASAN"])
    return clis


ASAN_ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=99",
                UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_xml_fails_cleanly(lib, hostile, name):
    """Malformed or past a limit: exit 1 with one line naming the problem. Well-formed and
    within the limits however absurd: it opens. Never a crash (the ASan build would say)."""
    opens = HOSTILE[name][1]
    for cli in _clis():
        r = subprocess.run([cli, "info", hostile[name]], capture_output=True, text=True,
                           env=ASAN_ENV, timeout=300)
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-3000:]
        if opens:
            assert r.returncode == 0 and "philips" in r.stdout, (cli, r.stderr[-500:])
        else:
            assert r.returncode == 1 and r.stderr.count("\n") == 1, (cli, r.stderr[-500:])
    st, msg, s = T.open_status(hostile[name])
    if opens:
        assert s is not None and s.vendor == "philips", msg
        s.close()
    else:
        assert s is None and st in (T.E_FORMAT, T.E_LIMIT) and msg, (st, msg)
        assert "XML" in msg or "attribute" in msg, msg


def test_commands_read_what_the_library_reads(lib, files, tmp_path):
    """`tessera read` (and its ASan+UBSan build when given) on every level, across the padding
    the XML clips and the sparse tiles, and on the label and macro the XML holds."""
    with T.open_slide(files["mixed"]) as s:
        cases = []
        for level in range(s.level_count):
            W, H = s.level_dimensions()[level]
            ds = int(s.level_info(level).downsample)
            cases.append((files["mixed"], ["--location", "%d,%d" % (-5 * ds, -3 * ds), "--size",
                                           "%d,%d" % (W + 40, H + 30), "--level", str(level),
                                           "--channels", "4"],
                          s.read_region(-5 * ds, -3 * ds, level, W + 40, H + 30, channels=4)))
    with T.open_slide(files["xml"]) as s:
        for image in ("label", "macro"):
            cases.append((files["xml"], ["--associated", image], s.read_associated(image)))
    for cli in _clis():
        for i, (path, args, want) in enumerate(cases):
            out = str(tmp_path / ("%d.raw" % i))
            r = subprocess.run([cli, "read", path] + args + ["--output", out],
                               capture_output=True, text=True, env=ASAN_ENV, timeout=300)
            assert r.returncode == 0 and "Sanitizer" not in r.stderr, (cli, r.stderr[-3000:])
            got = np.fromfile(out, np.uint8).reshape(want.shape)
            assert np.array_equal(got, want), (cli, args)
