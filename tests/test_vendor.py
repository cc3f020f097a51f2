"""Vendor conventions on the real scanner files of ../shared/testdata: the standard properties
(tessera.vendor, mpp, objective power, comment, background colour) and the vendor's own keys
equal what OpenSlide reports for the same file; associated images (label, macro, thumbnail)
equal OpenSlide's, byte for byte, through the C API and `tessera read --associated`, and
`tessera info` lists them with their sizes."""

import json
import os
import subprocess

import numpy as np
import openslide
import pytest
from PIL import Image

import tessera_ctypes as T
import wsi_fixtures as F

SVS = "aperio-jpeg-CMU-1-Small-Region.svs"
TINY = "aperio-jpeg-tiny-16x16.svs"
NDPI = "hamamatsu-ndpi-DAPI.ndpi"
REAL = [SVS, TINY, NDPI, "generic-webp-rgba-pyramid.tif", "generic-jpeg-ycbcr-128tiles.tiff",
        "generic-zstd-1024tiles-pyramid.tiff"]


def path_of(name):
    return os.path.join(F.TESTDATA, name)


def osl_rgba(img):
    """An OpenSlide associated image (PIL RGBA, un-premultiplied) as an array."""
    return np.asarray(img.convert("RGBA"))


# ---- properties ------------------------------------------------------------------------


def openslide4_generic_mpp(props, axis):
    """A generic TIFF's mpp as OpenSlide 4 gives it (Debian's OpenSlide 3.4 gives none), from
    the resolution tags OpenSlide reads: micrometres from centimetres or inches; none for no
    unit or a zero resolution."""
    per_unit = {"centimeter": 10000.0, "inch": 25400.0}.get(props.get("tiff.ResolutionUnit"))
    res = {a: float(props.get("tiff.%sResolution" % a.upper(), 0)) for a in "xy"}
    if per_unit is None or res["x"] <= 0 or res["y"] <= 0:
        return None
    return repr(per_unit / res[axis])


@pytest.mark.parametrize("name", REAL)
def test_standard_properties_equal_openslides(lib, name):
    osl = openslide.OpenSlide(path_of(name))
    with T.open_slide(path_of(name)) as s:
        props = s.properties
        assert props["tessera.vendor"] == osl.properties["openslide.vendor"]
        assert s.vendor == osl.properties["openslide.vendor"]
        for key in ("mpp-x", "mpp-y", "objective-power", "comment"):
            want = osl.properties.get("openslide." + key)
            if key.startswith("mpp") and props["tessera.vendor"] == "generic-tiff":
                want = openslide4_generic_mpp(osl.properties, key[-1])
            got = props.get("tessera." + key)
            if key.startswith("mpp") and want is not None:
                assert got is not None and float(got) == pytest.approx(float(want), rel=1e-12), (
                    key, got, want)
            else:
                assert got == want, (key, got, want)


@pytest.mark.parametrize("name,prefix", [(SVS, "aperio."), (TINY, "aperio."), (NDPI, "hamamatsu.")])
def test_vendor_keys_equal_openslides(lib, name, prefix):
    osl = openslide.OpenSlide(path_of(name))
    with T.open_slide(path_of(name)) as s:
        got = {k: v for k, v in s.properties.items() if k.startswith(prefix)}
    want = {k: v for k, v in osl.properties.items() if k.startswith(prefix)}
    assert want, "OpenSlide has no %s keys for %s" % (prefix, name)
    assert got == want


def test_cmu_small_region_reports_what_the_issue_names(lib):
    """mpp 0.499, vendor aperio, its label, macro and thumbnail (against OpenSlide, and the
    numbers as the file's description spells them)."""
    with T.open_slide(path_of(SVS)) as s:
        props = s.properties
        desc = props["tiff.ImageDescription"]
        mpp = [p.split("=")[1].strip() for p in desc.split("|") if p.split("=")[0].strip() == "MPP"]
        assert len(mpp) == 1 and float(props["tessera.mpp-x"]) == float(mpp[0])
        assert props["tessera.mpp-x"] == "0.499" == openslide.OpenSlide(
            path_of(SVS)).properties["openslide.mpp-x"]
        assert props["tessera.vendor"] == "aperio"
        assert sorted(s.associated_names) == ["label", "macro", "thumbnail"]
        assert props["tessera.background-color"] == "FFFFFF" and s.background == 255


def test_ndpi_source_lens_and_mpp(lib):
    osl = openslide.OpenSlide(path_of(NDPI))
    with T.open_slide(path_of(NDPI)) as s:
        props = s.properties
    assert props["hamamatsu.SourceLens"] == osl.properties["hamamatsu.SourceLens"]
    assert props["tessera.objective-power"] == osl.properties["openslide.objective-power"]
    assert float(props["tessera.mpp-x"]) == float(osl.properties["openslide.mpp-x"])


# ---- associated images -----------------------------------------------------------------


ASSOCIATED = [(n, a) for n in (SVS, TINY, NDPI)
              for a in openslide.OpenSlide(path_of(n)).associated_images]


@pytest.mark.parametrize("name,image", ASSOCIATED, ids=["%s-%s" % c for c in ASSOCIATED])
def test_associated_images_equal_openslides(lib, name, image):
    want = osl_rgba(openslide.OpenSlide(path_of(name)).associated_images[image])
    with T.open_slide(path_of(name)) as s:
        assert image in s.associated_names
        assert s.associated_dimensions(image) == (want.shape[1], want.shape[0])
        rgba = s.read_associated(image, channels=4)
        rgb = s.read_associated(image, channels=3)
    assert np.array_equal(rgba, want)
    assert np.array_equal(rgb, want[:, :, :3])


@pytest.mark.parametrize("name,image", ASSOCIATED[:3], ids=["%s-%s" % c for c in ASSOCIATED[:3]])
def test_read_associated_command(cli, tmp_path, name, image):
    out = tmp_path / ("%s.png" % image)
    r = subprocess.run([cli, "read", path_of(name), "--associated", image, "--output", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = osl_rgba(openslide.OpenSlide(path_of(name)).associated_images[image])[:, :, :3]
    assert np.array_equal(np.asarray(Image.open(out)), want)


def test_ndpi_map_is_listed_beside_the_macro(lib):
    """OpenSlide 3.4.1 lists only the macro; the map (source lens -2) is readable too."""
    with T.open_slide(path_of(NDPI)) as s:
        assert {"macro", "map"} <= set(s.associated_names)
        w, h = s.associated_dimensions("map")
        img = s.read_associated("map")
    assert img.shape == (h, w, 3) and img.std() > 0


def test_associated_errors(lib, cli, tmp_path):
    with T.open_slide(path_of(SVS)) as s:
        with pytest.raises(T.TesseraError) as e:
            s.associated_dimensions("nope")
        assert e.value.status == T.E_ARGUMENT and "nope" in str(e.value)
        with pytest.raises(T.TesseraError) as e:
            s.read_associated("label", channels=5)
        assert e.value.status == T.E_ARGUMENT
    out = tmp_path / "x.png"
    r = subprocess.run([cli, "read", path_of(SVS), "--associated", "nope", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "nope" in r.stderr and not out.exists()
    r = subprocess.run([cli, "read", path_of(SVS), "--associated", "label", "--level", "1",
                        "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "--associated" in r.stderr and not out.exists()
    r = subprocess.run([cli, "read", path_of(SVS), "--associated", "label", "--channels", "4",
                        "-o", str(tmp_path / "x.ppm")], capture_output=True, text=True)
    assert r.returncode == 2 and "alpha" in r.stderr


@pytest.mark.parametrize("name", [SVS, NDPI])
def test_info_lists_associated_images_with_sizes(cli, name):
    r = subprocess.run([cli, "info", path_of(name), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    osl = openslide.OpenSlide(path_of(name))
    for image, img in osl.associated_images.items():
        assert doc["associated_image_sizes"][image] == [img.size[0], img.size[1]]
    assert set(doc["associated_image_sizes"]) == set(doc["associated_images"])
    text = subprocess.run([cli, "info", path_of(name)], capture_output=True, text=True).stdout
    for image, img in osl.associated_images.items():
        assert "%s (%dx%d)" % (image, img.size[0], img.size[1]) in text


# ---- damaged vendor metadata -------------------------------------------------------------


def aperio_pairs(desc):
    """The documented rule, independently: the parts after the first '|' with an '=' become
    aperio.KEY = VALUE, stripped; an empty key is no key; a repeated key keeps its last value."""
    out = {}
    for part in desc.split("|")[1:]:
        if "=" not in part:
            continue
        k, v = part.split("=", 1)
        k, v = k.strip(" \t\r\n"), v.strip(" \t\r\n")
        if k and len(k) < 200:
            out["aperio." + k] = v
    return out


DAMAGED_DESCRIPTIONS = [
    "Aperio X|a=1|=2|b|c = 3 = 4| d =  |MPP = abc|AppMag = twenty",
    "Aperio with no pairs at all",
    "Aperio|||||",
    "Aperio|MPP=0.25|MPP=|AppMag=40|AppMag=",
    "Aperio|MPP = 1e400|AppMag = nan",
    "Aperio|" + "k" * 5000 + "=v|x=" + "y" * 100000,
]


@pytest.mark.parametrize("desc", DAMAGED_DESCRIPTIONS, ids=range(len(DAMAGED_DESCRIPTIONS)))
def test_damaged_aperio_description(lib, tmp_path, desc):
    import tifffile
    path = str(tmp_path / "damaged.svs")
    with open(path_of(TINY), "rb") as f, open(path, "wb") as g:
        g.write(f.read())
    tifffile.tiffcomment(path, desc)
    with T.open_slide(path) as s:
        props = s.properties
        pixels = s.read_region(0, 0, 0, 16, 16)
    assert props["tiff.ImageDescription"] == desc and props["tessera.vendor"] == "aperio"
    assert {k: v for k, v in props.items() if k.startswith("aperio.")} == aperio_pairs(desc)
    pairs = aperio_pairs(desc)
    for key, src in (("tessera.mpp-x", "aperio.MPP"), ("tessera.objective-power", "aperio.AppMag")):
        try:
            want = float(pairs[src])
            ok = want == want and abs(want) != float("inf")
        except (KeyError, ValueError):
            ok = False
        if ok:
            assert float(props[key]) == want
        else:
            assert key not in props, (key, props.get(key))
    with T.open_slide(path_of(TINY)) as s:
        assert np.array_equal(pixels, s.read_region(0, 0, 0, 16, 16))
