"""The `tessera` command: `info --json` agrees with OpenSlide and the C API, `read` writes PNG,
PPM and raw files equal to the C API's and OpenSlide's pixels, `sample` writes a pyramid that
OpenSlide reads, and a wrong command line exits 2 with one line of usage error.
"""

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

import tessera_ctypes as T
import wsi_fixtures as F
import wsi_refs as R

TIMEOUT = 60

INFO_SLIDES = [n for n, s in F.SPECS.items() if s.kind == "testdata"] + [
    "jpeg-t256-pyr", "jpeg-subifd-pyr", "gray-deflate-pyr", "rgba-deflate-pyr", "strip-jpeg",
    "jp2k-pyr", "tf-bigendian-deflate-pyr", "webp-lossless"]


def run(cli, args, timeout=TIMEOUT, cwd=None):
    try:
        return subprocess.run([cli] + [str(a) for a in args], capture_output=True, timeout=timeout,
                              cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError("tessera %s hung" % " ".join(map(str, args)))


def ok(r, args):
    assert r.returncode == 0, "tessera %s -> exit %d, stderr %r" % (
        " ".join(map(str, args)), r.returncode, r.stderr.decode(errors="replace")[-2000:])


@pytest.mark.parametrize("name", INFO_SLIDES)
def test_info_json(cli, lib, slides, name):
    spec = F.SPECS[name]
    path = slides.path(name)
    args = ["info", path, "--json"]
    r = run(cli, args)
    ok(r, args)
    doc = json.loads(r.stdout.decode("utf-8"))
    for key in ("vendor", "background", "levels", "properties", "associated_images"):
        assert key in doc, "key %r missing from %r" % (key, sorted(doc))
    with T.open_slide(path) as ts:
        assert doc["vendor"] == ts.vendor == spec.vendor
        assert doc["background"] == ts.background
        assert doc["properties"] == ts.properties
        assert doc["associated_images"] == ts.associated_names
        assert len(doc["levels"]) == ts.level_count
        for lv, level in enumerate(doc["levels"]):
            info = ts.level_info(lv)
            for k in ("width", "height", "tile_width", "tile_height", "samples_per_pixel"):
                assert level[k] == getattr(info, k), (lv, k, level[k], getattr(info, k))
            assert level["downsample"] == info.downsample, (lv, level["downsample"])
            assert level["tiled"] == bool(info.tiled)
            cname = T.compression_name(info.compression)
            assert level["compression"] == (cname if cname else str(info.compression)), (
                lv, level["compression"], info.compression)
        dims = [(lv["width"], lv["height"]) for lv in doc["levels"]]
    # level sizes as OpenSlide sees them
    if spec.openslide:
        osl = R.openslide_open(path)
        od = list(osl.level_dimensions)
        if spec.subifd:
            assert dims[0] == od[0] and len(od) == 1
        elif spec.vendor == "hamamatsu":
            assert all(d in od for d in dims), (dims, od)
        else:
            assert dims == od, (dims, od)
        assert set(osl.associated_images) <= set(doc["associated_images"])
    else:
        for lv in range(len(dims)):
            assert dims[lv] == R.vips_decode(path, spec.vips_load_args(lv)).shape[1::-1]


@pytest.mark.parametrize("name", ["aperio-jpeg-CMU-1-Small-Region.svs", "jpeg-t256-pyr"])
def test_info_table(cli, lib, slides, name):
    path = slides.path(name)
    r = run(cli, ["info", path])
    ok(r, ["info", path])
    text = r.stdout.decode()
    with T.open_slide(path) as ts:
        assert ts.vendor in text
        for w, h in ts.level_dimensions():
            assert str(w) in text and str(h) in text


def read_output(path, fmt, w, h, channels):
    if fmt == "png":
        img = Image.open(path)
        assert img.mode == ("RGBA" if channels == 4 else "RGB"), img.mode
        arr = np.asarray(img)
    elif fmt == "ppm":
        with open(path, "rb") as f:
            data = f.read()
        head = data.split(maxsplit=4)
        assert head[0] == b"P6", head[:4]
        assert (int(head[1]), int(head[2]), int(head[3])) == (w, h, 255)
        arr = np.frombuffer(data[len(data) - w * h * 3:], np.uint8).reshape(h, w, 3)
    else:
        arr = np.fromfile(path, np.uint8)
        assert arr.size == w * h * channels, (arr.size, w, h, channels)
        arr = arr.reshape(h, w, channels)
    assert arr.shape == (h, w, channels), arr.shape
    return arr


READS = [
    # slide, level, level-0 x, y, w, h
    ("jpeg-t256-pyr", 0, 200, 300, 300, 200),
    ("jpeg-t256-pyr", 1, 1800, 1300, 200, 150),      # partly outside
    ("aperio-jpeg-CMU-1-Small-Region.svs", 0, -20, 2900, 120, 100),
    ("generic-webp-rgba-pyramid.tif", 1, 256, 512, 200, 180),
    ("gray-deflate-pyr", 0, 1000, 700, 40, 90),
    ("hamamatsu-ndpi-DAPI.ndpi", 2, 1024, 2048, 160, 128),
]
READ_CASES = ["%s@L%d-%s-c%d" % (r[0], r[1], fmt, ch) for r in READS
              for fmt, ch in (("png", 3), ("png", 4), ("ppm", 3), ("raw", 3), ("raw", 4))]


@pytest.mark.parametrize("case", READ_CASES)
def test_read_formats(cli, lib, slides, tmp_path, case):
    head, fmt, ch = case.rsplit("-", 2)
    channels = int(ch[1:])
    name, lv = head.rsplit("@L", 1)
    lv = int(lv)
    _, _, x, y, w, h = [r for r in READS if r[0] == name and r[1] == lv][0]
    spec = F.SPECS[name]
    path = slides.path(name)
    out = tmp_path / ("region." + fmt)
    args = ["read", path, "--location", "%d,%d" % (x, y), "--size", "%d,%d" % (w, h),
            "--level", lv, "--channels", channels, "--fill", 77, "--output", out]
    r = run(cli, args)
    ok(r, args)
    got = read_output(str(out), fmt, w, h, channels)
    assert sorted(os.listdir(tmp_path)) == [out.name], os.listdir(tmp_path)
    with T.open_slide(path) as ts:
        exp = ts.read_region(x, y, lv, w, h, channels=channels, fill=77)
        ds = ts.level_info(lv).downsample
    m = R.describe_mismatch(got, exp, what="%s vs the C API" % case)
    assert m is None, m
    # and against libvips and OpenSlide directly
    ref = R.vips_decode(path, spec.vips_load_args(lv))
    olx, oly = R.level_origin(x, y, ds)
    vexp, inside = R.crop_fill(ref, olx, oly, w, h, 77)
    m = R.describe_mismatch(got[..., :3], R.to_rgb(vexp), what="%s vs libvips" % case)
    assert m is None, m
    if spec.openslide and R.is_integer_ds(ds) and x % int(ds) == 0 and y % int(ds) == 0:
        osl = R.openslide_open(path)
        olv = list(osl.level_dimensions).index(tuple(ref.shape[1::-1]))
        o = R.openslide_region(osl, x, y, olv, w, h)
        m = R.describe_mismatch(got[..., :3], o[..., :3], o[..., 3] == 255,
                                what="%s vs OpenSlide" % case)
        assert m is None, m
        if channels == 4:
            m = R.describe_mismatch(got[..., 3], o[..., 3], what="%s alpha vs OpenSlide" % case)
            assert m is None, m


def sample_levels(w, h, tile):
    """What `tessera sample --help` promises: halve, rounding up, down to the first level
    that fits in one tile."""
    sizes = [(w, h)]
    while w > tile or h > tile:
        w, h = (w + 1) // 2, (h + 1) // 2
        sizes.append((w, h))
    return sizes


@pytest.fixture(scope="module")
def sample_file(cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "sample.tiff"
    args = ["sample", out, "--width", 3000, "--height", 2000, "--tile", 256, "--quiet"]
    r = run(cli, args, timeout=240)
    ok(r, args)
    return str(out)


def test_sample_opens_in_openslide(sample_file, lib):
    import openslide
    osl = openslide.OpenSlide(sample_file)
    assert list(osl.level_dimensions) == sample_levels(3000, 2000, 256)
    with T.open_slide(sample_file) as ts:
        assert ts.level_dimensions() == list(osl.level_dimensions)
        for lv in range(ts.level_count):
            info = ts.level_info(lv)
            assert (info.tile_width, info.tile_height, info.tiled) == (256, 256, 1)
            assert info.compression == 7
            assert abs(info.downsample - osl.level_downsamples[lv]) < 1e-9
    osl.close()


def test_sample_regions_equal_openslide(sample_file, lib):
    import openslide
    osl = openslide.OpenSlide(sample_file)
    failures = []
    with T.open_slide(sample_file) as ts:
        for lv in range(ts.level_count):
            W, H = osl.level_dimensions[lv]
            ds = osl.level_downsamples[lv]
            regions = [(0, 0, W, H), (W // 3, H // 4, 300, 200), (W - 100, H - 50, 150, 90)]
            for lx, ly, w, h in regions:
                if R.is_integer_ds(ds):
                    x, y = lx * int(round(ds)), ly * int(round(ds))
                elif (lx, ly) == (0, 0):
                    x, y = 0, 0
                else:
                    continue
                o = R.openslide_region(osl, x, y, lv, w, h)
                got = ts.read_region(x, y, lv, w, h, channels=4, fill=77)
                m = R.describe_mismatch(got[..., :3], o[..., :3], o[..., 3] == 255,
                                        what="sample level %d region %r" % (lv, (x, y, w, h)),
                                        origin=(lx, ly))
                m = m or R.describe_mismatch(got[..., 3], o[..., 3], None,
                                             what="sample alpha level %d" % lv, origin=(lx, ly))
                if m:
                    failures.append(m)
            # and the whole level against libvips
            ref = R.vips_decode(sample_file, ["--page", str(lv)])
            got = ts.read_region(0, 0, lv, W, H)
            m = R.describe_mismatch(got, R.to_rgb(ref), what="sample level %d vs libvips" % lv)
            if m:
                failures.append(m)
    osl.close()
    assert not failures, "\n".join(failures)


def _bad_args(slide, out):
    loc = ["--location", "0,0", "--size", "10,10"]
    return {
        "no-command": [],
        "unknown-command": ["frobnicate"],
        "unknown-top-option": ["--frobnicate"],
        "info-no-slide": ["info"],
        "info-unknown-option": ["info", slide, "--bogus"],
        "info-two-slides": ["info", slide, slide],
        "read-nothing": ["read", slide],
        "read-no-output": ["read", slide] + loc,
        "read-no-location": ["read", slide, "--size", "10,10", "--output", out],
        "read-no-size": ["read", slide, "--location", "0,0", "--output", out],
        "read-location-one-number": ["read", slide, "--location", "5", "--size", "10,10",
                                     "--output", out],
        "read-location-text": ["read", slide, "--location", "a,b", "--size", "10,10",
                               "--output", out],
        "read-size-zero": ["read", slide, "--location", "0,0", "--size", "0,10", "--output", out],
        "read-size-negative": ["read", slide, "--location", "0,0", "--size", "10,-3",
                               "--output", out],
        "read-level-text": ["read", slide] + loc + ["--level", "one", "--output", out],
        "read-level-negative": ["read", slide] + loc + ["--level", "-1", "--output", out],
        "read-channels-5": ["read", slide] + loc + ["--channels", "5", "--output", out],
        "read-fill-256": ["read", slide] + loc + ["--fill", "256", "--output", out],
        "read-fill-text": ["read", slide] + loc + ["--fill", "white", "--output", out],
        "read-output-unknown-extension": ["read", slide] + loc + ["--output", out[:-4] + ".bmp"],
        "read-option-without-value": ["read", slide] + loc + ["--output"],
        "read-unknown-option": ["read", slide] + loc + ["--output", out, "--zoom", "2"],
        "sample-no-output": ["sample"],
        "sample-width-zero": ["sample", out[:-4] + ".tiff", "--width", "0"],
        "sample-tile-not-16": ["sample", out[:-4] + ".tiff", "--tile", "100"],
        "sample-quality-101": ["sample", out[:-4] + ".tiff", "--quality", "101"],
    }


BAD_ARGS = list(_bad_args("S", "O.png"))


@pytest.mark.parametrize("which", BAD_ARGS)
def test_bad_arguments(cli, slides, tmp_path, which):
    slide = slides.path("aperio-jpeg-tiny-16x16.svs")
    outdir = tmp_path / "out"
    outdir.mkdir()
    args = _bad_args(slide, str(outdir / "region.png"))[which]
    r = run(cli, args, timeout=30)
    err = r.stderr.decode(errors="replace")
    desc = "tessera %s -> exit %d, stderr %r" % (" ".join(map(str, args)), r.returncode, err)
    assert r.returncode == 2, desc
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), "expected one line on stderr: " + desc
    assert os.listdir(outdir) == [], "files written by a rejected command: %r" % os.listdir(outdir)


def test_read_level_out_of_range_fails(cli, slides, tmp_path):
    slide = slides.path("aperio-jpeg-tiny-16x16.svs")
    out = tmp_path / "region.png"
    args = ["read", slide, "--location", "0,0", "--size", "4,4", "--level", "7", "--output", out]
    r = run(cli, args)
    err = r.stderr.decode(errors="replace")
    assert r.returncode in (1, 2), err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()


def test_help_and_version(cli):
    for args in (["--help"], ["help"], ["help", "read"], ["read", "--help"], ["--version"]):
        r = run(cli, args)
        ok(r, args)
        assert r.stdout.strip(), args
