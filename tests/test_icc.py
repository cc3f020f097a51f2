"""ICC profiles (TIFF tag 34675 of level 0's directory): tessera_icc_profile_size/read, the
Python Slide.icc_profile / CuImage.color_profile, and `tessera info`, against the bytes
tifffile reads from the same files (written at test time by vips with its sRGB profile, and by
tifffile with a profile PIL makes); a file without one says so everywhere; pixels are the same
with and without the profile (reads never apply it)."""

import ctypes
import io
import json
import subprocess

import numpy as np
import pytest
import tifffile
from PIL import ImageCms

import tessera
import tessera_ctypes as T


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("icc")
    src = str(d / "src.v")
    subprocess.run(["vips", "xyz", src, "700", "500"], check=True)
    subprocess.run(["vips", "cast", src, str(d / "src8.v"), "uchar"], check=True)
    src8 = str(d / "src8.v")
    out = {"vips": str(d / "vips.tif"), "plain": str(d / "plain.tif"),
           "tifffile": str(d / "tifffile.tif")}
    for name, extra in (("vips", ["--profile", "srgb"]), ("plain", [])):
        subprocess.run(["vips", "tiffsave", src8, out[name], "--tile", "--pyramid",
                        "--compression", "deflate", "--tile-width", "128", "--tile-height", "128"]
                       + extra, check=True)
    # a profile of another size and content, on a file with a second, different profile on
    # its reduced level: the slide's is level 0's
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rng = np.random.default_rng(5)
    base = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    with tifffile.TiffWriter(out["tifffile"]) as tw:
        tw.write(base, tile=(128, 128), compression="zlib",
                 extratags=[(34675, 7, len(lab), lab, True)])
        tw.write(base[::2, ::2].copy(), tile=(128, 128), compression="zlib", subfiletype=1,
                 extratags=[(34675, 7, len(srgb), srgb, True)])
    return out


def _tag(path, page=0):
    with tifffile.TiffFile(path) as t:
        tag = t.pages[page].tags.get("InterColorProfile")
        return None if tag is None else bytes(tag.value)


@pytest.mark.parametrize("name", ["vips", "tifffile"])
def test_c_api_gives_level0s_profile(lib, files, name):
    want = _tag(files[name])
    assert want and len(want) > 100
    if name == "tifffile":
        assert _tag(files[name], 1) not in (None, want)  # the reduced level's is another
    with T.open_slide(files[name]) as s:
        assert lib.tessera_icc_profile_size(s._h) == len(want)
        assert s.icc_profile == want
        # too small a buffer: refused, untouched
        buf = ctypes.create_string_buffer(b"\x5a" * (len(want) - 1), len(want) - 1)
        assert lib.tessera_icc_profile_read(s._h, buf, len(want) - 1) == T.E_ARGUMENT
        assert "bytes" in T.error_message()
        assert buf.raw == b"\x5a" * (len(want) - 1)


def test_no_profile(lib, files):
    assert _tag(files["plain"]) is None
    with T.open_slide(files["plain"]) as s:
        assert lib.tessera_icc_profile_size(s._h) == 0
        assert s.icc_profile is None
        buf = ctypes.create_string_buffer(16)
        assert lib.tessera_icc_profile_read(s._h, buf, 16) == T.E_ARGUMENT
        assert "no ICC profile" in T.error_message()
    assert lib.tessera_icc_profile_size(None) == 0


def test_python_icc_profile_and_color_profile(files):
    want = _tag(files["vips"])
    for cls in (tessera.Slide, tessera.CuImage):
        with cls(files["vips"]) as s:
            assert s.icc_profile == want
            profile = s.color_profile
            assert isinstance(profile, ImageCms.ImageCmsProfile)
            # PIL writes a profile back its own way: compare what it reads from each
            direct = ImageCms.ImageCmsProfile(io.BytesIO(want))
            assert ImageCms.getProfileDescription(profile) == \
                ImageCms.getProfileDescription(direct) != ""
        with cls(files["plain"]) as s:
            assert s.icc_profile is None and s.color_profile is None
    with tessera.CuImage(files["tifffile"]) as s:
        assert s.icc_profile == _tag(files["tifffile"])
        assert ImageCms.getProfileName(s.color_profile).strip() == \
            ImageCms.getProfileName(ImageCms.ImageCmsProfile(
                ImageCms.createProfile("LAB"))).strip()


def test_pixels_do_not_apply_the_profile(files):
    with tessera.Slide(files["vips"]) as a, tessera.Slide(files["plain"]) as b:
        for level in range(a.level_count):
            assert np.array_equal(np.asarray(a.read_region(level=level)),
                                  np.asarray(b.read_region(level=level)))


def test_cli_info_says_whether_there_is_one(cli, files):
    want = _tag(files["vips"])
    r = subprocess.run([cli, "info", files["vips"]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "icc profile: %d bytes\n" % len(want) in r.stdout
    r = subprocess.run([cli, "info", files["plain"]], capture_output=True, text=True)
    assert r.returncode == 0 and "icc profile: none\n" in r.stdout, r.stdout
    for name, size in (("vips", len(want)), ("plain", 0)):
        r = subprocess.run([cli, "info", "--json", files[name]], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["icc_profile_size"] == size
    r = subprocess.run([cli, "info", "--help"], capture_output=True, text=True)
    assert "icc_profile_size" in r.stdout and "ICC" in r.stdout
