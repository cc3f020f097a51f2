"""OME-TIFF, on fixtures written at test time by tifffile from real slide pixels
(vendor_writers.py) with OME-XML of the 2016-06 schema. OpenSlide 3.4.1 does not know the
format, so pixels are compared with libvips' decode of the same directories (tiffload --page /
--subifd), and properties with what Python's own XML parser reads from the description.
Damaged and hostile metadata fail cleanly (checked with the ASan+UBSan build of `tessera` as
well when TESSERA_CLI_ASAN names one)."""

import os
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import tessera_ctypes as T
import tiffbytes as tb
import vendor_writers as V
import wsi_fixtures as F
import wsi_refs as R

W, H, TILE = 1100, 900, 256
NS = {"o": V.OME_NS}
UM_PER = {"µm": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6, "pm": 1e-6}


@pytest.fixture(scope="module")
def pixels():
    base = V.source_rgb(W, H, 50, 60)
    return dict(pyr=V.pyramid_arrays(base, 3),
                gray=[np.ascontiguousarray(base[..., c]) for c in range(3)],
                macro=V.source_rgb(300, 120, 10, 2500),
                label=V.source_rgb(150, 150, 1800, 2400))


def multi_xml(slide_pixels_attrs=None, slide_tiffdata='<TiffData IFD="3" PlaneCount="1"/>',
              prefix="", extra_images=()):
    phys = {"PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 260,
            "PhysicalSizeYUnit": "nm"}
    if slide_pixels_attrs is not None:
        phys = slide_pixels_attrs
    images = [
        V.ome_image("Image:0", "fluorescence", V.ome_pixels(
            "Pixels:0", W, H, 3, [("DAPI", 1), ("FITC", 1), ("TRITC", 1)],
            '<TiffData IFD="0" PlaneCount="3"/>', {"PhysicalSizeX": 0.3})),
        V.ome_image("Image:1", "slide", V.ome_pixels(
            "Pixels:1", W, H, 3, [("Brightfield <RGB> & co", 3)], slide_tiffdata, phys,
            interleaved=True), description="a slide & its \"description\"",
            objective="Objective:0", date="2023-05-01T10:00:00"),
        V.ome_image("Image:2", "macro", V.ome_pixels(
            "Pixels:2", 300, 120, 3, [("RGB", 3)], '<TiffData IFD="4" PlaneCount="1"/>')),
        V.ome_image("Image:3", "Label", V.ome_pixels(
            "Pixels:3", 150, 150, 3, [("RGB", 3)], '<TiffData IFD="5" PlaneCount="1"/>')),
    ] + list(extra_images)
    return V.ome_xml(images, [("Objective:1", "40"), ("Objective:0", "20.0")], prefix=prefix)


def multi_pages(p, tile_comp="zlib"):
    return [(p["gray"][0], None, TILE, "zlib"), (p["gray"][1], None, TILE, "zlib"),
            (p["gray"][2], None, TILE, "zlib"), (p["pyr"][0], p["pyr"][1:], TILE, tile_comp),
            (p["macro"], None, None, None), (p["label"], None, None, "zlib")]


@pytest.fixture(scope="module")
def files(tmp_path_factory, pixels):
    d = tmp_path_factory.mktemp("ome")
    out = {}
    out["multi"] = str(d / "multi.ome.tif")
    V.write_ome(out["multi"], multi_pages(pixels), multi_xml())
    # one RGB image, uncompressed tiles, a namespace prefix, sizes in nanometres
    out["single"] = str(d / "single.ome.tif")
    V.write_ome(out["single"], [(pixels["pyr"][0], pixels["pyr"][1:], 128, None)], V.ome_xml([
        V.ome_image("Image:0", "only", V.ome_pixels(
            "Pixels:0", W, H, 3, [("R", 1), ("G", 1), ("B", 1)], "<TiffData/>",
            {"PhysicalSizeX": 499, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.0005,
             "PhysicalSizeYUnit": "mm"}))], prefix="ome"))
    # a fluorescence stack alone: its first plane is the slide
    out["gray"] = str(d / "gray.ome.tif")
    V.write_ome(out["gray"], [(g, [g[::2, ::2].copy()], TILE, "zlib") for g in pixels["gray"]],
                V.ome_xml([V.ome_image("Image:0", "fluo", V.ome_pixels(
                    "Pixels:0", W, H, 3, [("DAPI", 1), ("FITC", 1), ("TRITC", 1)],
                    '<TiffData IFD="0" PlaneCount="3"/>'))]))
    return out


def ome_doc(path):
    with T.open_slide(path) as s:
        return ET.fromstring(s.properties["tiff.ImageDescription"].encode())


def expected_slide_image(doc):
    """The first image whose channel holds three samples, else the first image."""
    images = doc.findall("o:Image", NS)
    for i, im in enumerate(images):
        chans = im.findall("o:Pixels/o:Channel", NS)
        if chans and chans[0].get("SamplesPerPixel") == "3":
            return i, im
    return 0, images[0]


def tiffdata_ifd(image):
    return int(image.find("o:Pixels/o:TiffData", NS).get("IFD", "0"))


# ---- levels and pixels ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["multi", "single", "gray"])
def test_levels_are_the_slide_images_subifds(lib, files, name):
    doc = ome_doc(files[name])
    index, image = expected_slide_image(doc)
    page = tiffdata_ifd(image)
    with open(files[name], "rb") as f:
        t = tb.Tiff(f.read())
    nsub = len(t.values(page, "SubIFDs")) if 330 in t.ifds[page].entries else 0
    want = [R.vips_dims(files[name], ["--page", str(page)])]
    want += [R.vips_dims(files[name], ["--page", str(page), "--subifd", str(k)])
             for k in range(nsub)]
    assert len(want) > 1 or name == "gray"
    with T.open_slide(files[name]) as s:
        assert s.vendor == "ome-tiff"
        assert s.level_dimensions() == want
        assert s.properties["ome.image-index"] == str(index)
        assert s.background == 0


def _level_cases():
    return [(n, lv) for n in ("multi", "single", "gray") for lv in range(3 if n != "gray" else 2)]


def _vips_level(path, level):
    doc = ome_doc(path)
    page = tiffdata_ifd(expected_slide_image(doc)[1])
    args = ["--page", str(page)] + (["--subifd", str(level - 1)] if level else [])
    return R.to_rgb(R.vips_decode(path, args))


@pytest.mark.parametrize("name,level", _level_cases())
def test_levels_equal_vips(lib, files, name, level):
    want = _vips_level(files[name], level)
    with T.open_slide(files[name]) as s:
        got = s.read_level(level)
    msg = R.describe_mismatch(got, want, what="%s level %d" % (name, level))
    assert msg is None, msg


@pytest.mark.parametrize("name,level", _level_cases())
def test_regions_equal_vips(lib, files, name, level):
    lvl = _vips_level(files[name], level)
    with T.open_slide(files[name]) as s:
        Wl, Hl = s.level_dimensions()[level]
        ds = s.level_info(level).downsample
        for lx, ly, w, h, label in R.regions_for_level(Wl, Hl, TILE, TILE, seed=level + 7):
            x, y = int(lx * ds), int(ly * ds)
            ox, oy = R.level_origin(x, y, ds)
            want, inside = R.crop_fill(lvl, ox, oy, w, h, 0)
            got = s.read_region(x, y, level, w, h, channels=4)
            msg = R.describe_mismatch(got[..., :3], want, what="%s %s" % (name, label))
            assert msg is None, msg
            assert np.array_equal(got[..., 3] == 255, inside), label


def test_jpeg_tiles(lib, tmp_path, pixels):
    """JPEG (YCbCr 4:2:0) tiles equal libvips' decode to the byte."""
    import tifffile
    path = str(tmp_path / "jpeg.ome.tif")
    xml = V.ome_xml([V.ome_image("Image:0", "jpeg", V.ome_pixels(
        "Pixels:0", W, H, 3, [("RGB", 3)], '<TiffData IFD="0"/>'))])
    with tifffile.TiffWriter(path) as tw:
        V.write_jpeg_tiled(tw, pixels["pyr"][0], TILE, description=xml.encode(), subifds=1)
        V.write_jpeg_tiled(tw, pixels["pyr"][1], TILE, subfiletype=1)
    with T.open_slide(path) as s:
        assert s.vendor == "ome-tiff" and s.level_count == 2
        for level in range(2):
            args = ["--page", "0"] + (["--subifd", "0"] if level else [])
            msg = R.describe_mismatch(s.read_level(level), R.vips_decode(path, args),
                                      what="level %d" % level)
            assert msg is None, msg


# ---- properties ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["multi", "single", "gray"])
def test_properties_are_the_xmls(lib, files, name):
    doc = ome_doc(files[name])
    index, image = expected_slide_image(doc)
    pix = image.find("o:Pixels", NS)
    with T.open_slide(files[name]) as s:
        props = s.properties
    for k, v in pix.attrib.items():
        assert props["ome." + k] == v, k
    chans = pix.findall("o:Channel", NS)
    assert props["ome.channel-count"] == str(len(chans))
    for i, c in enumerate(chans):
        assert props["ome.channel[%d].name" % i] == c.get("Name")
        assert props["ome.channel[%d].samples-per-pixel" % i] == c.get("SamplesPerPixel")
    assert props["ome.image.name"] == image.get("Name")
    assert props["ome.image-count"] == str(len(doc.findall("o:Image", NS)))
    assert props["ome.creator"] == doc.get("Creator")
    for axis in "XY":
        size = pix.get("PhysicalSize" + axis)
        key = "tessera.mpp-" + axis.lower()
        if size is None:
            assert key not in props
        else:
            unit = pix.get("PhysicalSize%sUnit" % axis, "µm")
            assert float(props[key]) == pytest.approx(float(size) * UM_PER[unit], rel=1e-12)
    desc = image.find("o:Description", NS)
    assert props.get("tessera.comment") == (desc.text if desc is not None else None)
    assert props.get("ome.image.description") == (desc.text if desc is not None else None)


def test_objective_power_is_the_named_objectives(lib, files):
    doc = ome_doc(files["multi"])
    _, image = expected_slide_image(doc)
    ref = image.find("o:ObjectiveSettings", NS).get("ID")
    obj = [o for o in doc.iter("{%s}Objective" % V.OME_NS) if o.get("ID") == ref][0]
    with T.open_slide(files["multi"]) as s:
        props = s.properties
    assert float(props["tessera.objective-power"]) == float(obj.get("NominalMagnification"))
    assert props["ome.objective.nominal-magnification"] == obj.get("NominalMagnification")
    assert props["ome.image.acquisition-date"] == image.find("o:AcquisitionDate", NS).text


# ---- associated images ---------------------------------------------------------------


def test_named_images_are_associated(lib, files):
    doc = ome_doc(files["multi"])
    with T.open_slide(files["multi"]) as s:
        assert sorted(s.associated_names) == ["label", "macro"]
        for name in ("label", "macro"):
            im = [i for i in doc.findall("o:Image", NS) if i.get("Name").lower() == name][0]
            want = R.vips_decode(files["multi"], ["--page", str(tiffdata_ifd(im))])
            assert np.array_equal(s.read_associated(name), want), name


# ---- damaged metadata ----------------------------------------------------------------


def _damaged():
    ok = multi_xml()
    return {
        # name: (description, status or "generic-tiff" / "opens", message part)
        "truncated": (ok[:-30], T.E_FORMAT, "XML line"),
        "bad-entity": (ok.replace("&amp; co", "& co"), T.E_FORMAT, "XML line"),
        "lying-size": (ok.replace('SizeX="%d"' % W, 'SizeX="%d"' % (W + 1), 2), T.E_FORMAT,
                       "directory"),
        "ifd-past-the-end": (multi_xml(slide_tiffdata='<TiffData IFD="60"/>'), T.E_FORMAT,
                             "IFD 60"),
        "ifd-not-a-number": (multi_xml(slide_tiffdata='<TiffData IFD="3x"/>'), T.E_FORMAT,
                             "not a number"),
        "no-size": (ok.replace('SizeY="%d"' % H, "", 1), T.E_FORMAT, "SizeY"),
        "image-without-pixels": (V.ome_xml(['<Image ID="Image:0"/>']), T.E_FORMAT, "Pixels"),
        "no-image-in-file": (V.ome_xml([V.ome_image("Image:0", "x", V.ome_pixels(
            "Pixels:0", W, H, 3, [("RGB", 3)], ""))]), T.E_FORMAT, "no image"),
        "binary-only": ('<OME xmlns="%s"><BinaryOnly MetadataFile="x.companion.ome" '
                        'UUID="urn:uuid:1"/></OME>' % V.OME_NS, "generic-tiff", ""),
        "unknown-unit": (multi_xml({"PhysicalSizeX": 1, "PhysicalSizeXUnit": "parsec"}),
                         "opens", ""),
        "negative-size": (multi_xml({"PhysicalSizeX": -0.25}), "opens", ""),
    }


DAMAGED = _damaged()


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, pixels):
    d = tmp_path_factory.mktemp("ome-damaged")
    out = {}
    for name, (xml, _, _) in DAMAGED.items():
        out[name] = str(d / (name + ".ome.tif"))
        V.write_ome(out[name], multi_pages(pixels, tile_comp=None), xml)
    return out


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_metadata(lib, cli, damaged, name):
    _, want, part = DAMAGED[name]
    st, msg, s = T.open_status(damaged[name])
    if want == "generic-tiff":
        assert s is not None and s.vendor == "generic-tiff", msg
        s.close()
        return
    if want == "opens":
        assert s is not None and s.vendor == "ome-tiff", msg
        assert "tessera.mpp-x" not in s.properties and "ome.PhysicalSizeX" in s.properties
        s.close()
        return
    assert s is None and st == want and part in msg and "OME-TIFF" in msg, (st, msg)
    r = subprocess.run([cli, "info", damaged[name]], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and part in r.stderr, r.stderr


def test_damaged_xml_is_malformed_for_expat_too():
    for name in ("truncated", "bad-entity"):
        with pytest.raises(ET.ParseError):
            ET.fromstring(DAMAGED[name][0].encode())


# ---- hostile XML ---------------------------------------------------------------------


HOSTILE = {
    "deep-nesting": '<OME xmlns="%s">' % V.OME_NS + "<a>" * 300000 + "</a>" * 300000 + "</OME>",
    "huge-attribute": '<OME xmlns="%s" Creator="%s"></OME>' % (V.OME_NS, "C" * (8 << 20)),
    "many-channels": V.ome_xml([V.ome_image("Image:0", "x", V.ome_pixels(
        "Pixels:0", W, H, 3, [("c%d" % i, 1) for i in range(100000)], "<TiffData/>"))]),
    "doctype": '<!DOCTYPE OME [<!ENTITY e "x">]><OME>&e;</OME>',
    "unclosed": '<OME xmlns="%s"><Image ID="a"><Pixels SizeX="1' % V.OME_NS,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_xml_never_crashes(lib, tmp_path, pixels, name):
    path = str(tmp_path / (name + ".ome.tif"))
    V.write_ome(path, [(pixels["pyr"][0], None, TILE, None)], HOSTILE[name])
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=99",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")
    clis = [F.cli_path()] + ([os.environ["TESSERA_CLI_ASAN"]]
                             if os.environ.get("TESSERA_CLI_ASAN") else [])
    st, msg, s = T.open_status(path)
    for cli in clis:
        r = subprocess.run([cli, "info", path], capture_output=True, text=True, env=env,
                           timeout=300)
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-3000:]
        assert r.returncode == (0 if s is not None else 1), (cli, r.stderr[-500:])
    if name == "many-channels":  # well-formed: opens, listing the first channels
        assert s is not None and s.properties["ome.channel-count"] == "100000"
        assert "ome.channel[255].name" in s.properties
        assert "ome.channel[256].name" not in s.properties
    elif name == "huge-attribute":  # well-formed, but no image in it
        assert s is None and "no image" in msg
    else:
        assert s is None and st in (T.E_FORMAT, T.E_LIMIT) and "XML" in msg, (st, msg)
    if s is not None:
        s.close()


def test_commands_read_what_the_library_reads(lib, files, tmp_path):
    """`tessera read` (and its ASan+UBSan build when given) on every level and associated
    image of the multi-image file."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=99",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")
    clis = [F.cli_path()] + ([os.environ["TESSERA_CLI_ASAN"]]
                             if os.environ.get("TESSERA_CLI_ASAN") else [])
    path = files["multi"]
    cases = []
    with T.open_slide(path) as s:
        for level in range(s.level_count):
            W, H = s.level_dimensions()[level]
            ds = int(s.level_info(level).downsample)
            cases.append((["--location", "%d,%d" % (-2 * ds, -2 * ds), "--size",
                           "%d,%d" % (W + 4, H + 4), "--level", str(level)],
                          s.read_region(-2 * ds, -2 * ds, level, W + 4, H + 4)))
        for image in s.associated_names:
            cases.append((["--associated", image], s.read_associated(image)))
    for cli in clis:
        for i, (args, want) in enumerate(cases):
            out = str(tmp_path / ("%d.raw" % i))
            r = subprocess.run([cli, "read", path] + args + ["--output", out],
                               capture_output=True, text=True, env=env, timeout=300)
            assert r.returncode == 0 and "Sanitizer" not in r.stderr, (cli, r.stderr[-3000:])
            assert np.array_equal(np.fromfile(out, np.uint8).reshape(want.shape), want), args
