"""Reading at a physical resolution: read_region(..., mpp=) / (downsample=), tessera_read_region_scaled.

The exact mode must equal, bit for bit, the area average of docs/RESOLUTION.md transcribed in
NumPy (tests/area_ref.py) over the level's pixels as OpenSlide reads them; the level must be
the one the rule picks (0.5 um/px on a 0.25 um/px slide: level 0 at 2x; with a 0.5 um/px
level: that level as it is). Fixtures with set resolutions are written here (tifffile, vips).
"""

import json
import os
import subprocess

import numpy as np
import openslide
import pytest
import tifffile

import area_ref
import wsi_fixtures
import tessera

CMU = os.path.join(wsi_fixtures.TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("resolution")
    rng = np.random.default_rng(11)
    # smooth structure plus noise: averages of any window differ
    yy, xx = np.mgrid[0:1200, 0:1600]
    img = np.stack([(xx * 7 + yy * 3) % 256, (xx * yy // 50) % 256,
                    (128 + 100 * np.sin(xx / 37.0) * np.cos(yy / 23.0))], -1).astype(np.int64)
    img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    res = dict(resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    no_half = str(d / "no-half.tiff")
    with tifffile.TiffWriter(no_half) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", compression="zlib", **res)
        tw.write(np.ascontiguousarray(img[::4, ::4]), tile=(256, 256), photometric="rgb",
                 compression="zlib", subfiletype=1, **res)
    flat = str(d / "flat.tiff")
    tifffile.imwrite(flat, img, photometric="rgb")
    vips = str(d / "vips.tiff")
    subprocess.run(["vips", "tiffsave", flat, vips, "--tile", "--tile-width", "256",
                    "--tile-height", "256", "--pyramid", "--compression", "jpeg",
                    "--xres", "4000", "--yres", "4000"], check=True)
    nompp = str(d / "nompp.tiff")
    tifffile.imwrite(nompp, img, tile=(256, 256), photometric="rgb", resolution=(1, 1),
                     resolutionunit="NONE")
    return {"no_half": no_half, "vips": vips, "nompp": nompp, "cmu": CMU}


def reference(path, level, x, y, scale, width, height, fill):
    """The NumPy area average over OpenSlide's pixels of `level`."""
    osr = openslide.OpenSlide(path)
    ds = osr.level_downsamples[level]
    lw, lh = osr.level_dimensions[level]

    def read(lx, ly, w, h):
        out = np.full((h, w, 3), fill, np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x1 > x0 and y1 > y0:
            rgba = np.asarray(osr.read_region((int(round(x0 * ds)), int(round(y0 * ds))), level,
                                              (x1 - x0, y1 - y0)))
            out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = rgba[..., :3]
        return out

    lx0, ly0 = int(np.floor(x / ds)), int(np.floor(y / ds))
    return area_ref.area_average(read, lx0, ly0, scale, scale, width, height)


CASES = [
    # slide, mpp, (x, y), (w, h), expected level, expected scale
    ("no_half", 0.5, (100, 37), (224, 224), 0, 2.0),
    ("no_half", 0.5, (-61, 1000), (224, 224), 0, 2.0),      # past the top-left and bottom
    ("no_half", 0.37, (333, 201), (150, 97), 0, 0.37 / 0.25),
    ("no_half", 1.9, (0, 0), (64, 80), 1, 1.9),             # level 1 is 1.0 um/px
    ("no_half", 0.1, (777, 555), (50, 40), 0, 0.4),         # finer than level 0: upsampled
    ("vips", 0.5, (101, 37), (224, 224), 1, 1.0),
    ("vips", 0.8, (1200, 900), (200, 150), 1, 1.6),
    ("vips", 1.5, (333, 444), (120, 90), 2, 1.5),
    ("cmu", 0.5, (1000, 1500), (224, 224), 0, 1.0),         # 0.499 um/px is 0.5 within 1 %
    ("cmu", 0.7, (900, 1400), (131, 77), 0, 0.7 / 0.499),
    ("cmu", 2.3, (2000, 2800), (100, 100), 0, 2.3 / 0.499),  # past the right and bottom
]


@pytest.mark.parametrize("name,mpp,xy,size,level,scale", CASES)
def test_exact_mode_equals_numpy(slides, name, mpp, xy, size, level, scale):
    path = slides[name]
    with tessera.Slide(path) as s:
        got_level, got_scale = s.level_for_mpp(mpp)
        assert got_level == level and got_scale == pytest.approx(scale, rel=1e-12)
        got = np.asarray(s.read_region(xy, size, mpp=mpp))
        fill = s.background
    assert got.shape == (size[1], size[0], 3)
    want = reference(path, level, xy[0], xy[1], got_scale, size[0], size[1], fill)
    assert np.array_equal(got, want), np.abs(got.astype(int) - want).max()


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("downsample,xy", [(2, (100, 37)), (2, (-61, 1001)), (3, (777, 555)),
                                           (3, (1500, -7)), (8, (90, 91)), (2.5, (333, 201))])
def test_downsample_reads_equal_numpy(slides, channels, downsample, xy):
    """read_region(downsample=): whole-number scales (2 and 3 at level 0, 8 as 2 at level 1:
    every output pixel a k x k block, averaged without weights) and a fractional one, RGB and
    RGBA, inside the level and past its edges, equal the NumPy area average of OpenSlide's
    pixels (alpha 255 inside the level, 0 outside)."""
    path = slides["no_half"]
    with tessera.Slide(path) as s:
        level, scale = s.level_for_downsample(downsample)
        got = np.asarray(s.read_region(xy, (75, 61), downsample=downsample, channels=channels))
        fill = s.background
    osr = openslide.OpenSlide(path)
    ds = osr.level_downsamples[level]
    lw, lh = osr.level_dimensions[level]

    def read(lx, ly, w, h):
        out = np.full((h, w, channels), fill, np.uint8)
        if channels == 4:
            out[..., 3] = 0
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x1 > x0 and y1 > y0:
            rgba = np.asarray(osr.read_region((int(round(x0 * ds)), int(round(y0 * ds))), level,
                                              (x1 - x0, y1 - y0)))
            out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = rgba[..., :channels]
        return out

    lx0, ly0 = int(np.floor(xy[0] / ds)), int(np.floor(xy[1] / ds))
    want = area_ref.area_average(read, lx0, ly0, scale, scale, 75, 61)
    assert got.shape == (61, 75, channels)
    assert np.array_equal(got, want), np.abs(got.astype(int) - want).max()


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("scale", [2.0, 3.0, 4.0, 2.5, 1.98, 0.75])
def test_resample_equals_numpy(channels, scale):
    """tessera_resample_area (the batch reader's averaging) on random pixels: whole-number
    scales (blocks without weights) and others equal the NumPy area average."""
    rng = np.random.default_rng(int(scale * 100) + channels)
    h, w = 61, 83
    out_w, out_h = int(w // scale) - 1, int(h // scale) - 1
    src = rng.integers(0, 256, (2, h, w, channels), dtype=np.uint8)
    got = np.asarray(tessera._tessera.resample(src, 2, h, w, channels, out_w, out_h, scale,
                                               scale))
    assert got.shape == (2, out_h, out_w, channels)
    for b in range(2):
        want = area_ref.area_average(lambda lx, ly, ww, hh: src[b, ly:ly + hh, lx:lx + ww], 0,
                                     0, scale, scale, out_w, out_h)
        assert np.array_equal(got[b], want), (b, np.abs(got[b].astype(int) - want).max())


@pytest.mark.parametrize("scale", [1 / 1024, 0.001, 1 / 3, 0.999, 1.0000001, 1.9999999,
                                   2.0000001, 7.0, 63.0, 64.0, 65.0, 500.0, 1024.0])
def test_resample_at_extreme_scales_equals_numpy(scale):
    """tessera_resample_area at the ends of its range and beside whole numbers (where the
    sums are largest, the weights most uneven, or the block path stops), on random pixels and
    on all 255 (the largest sums), RGB and RGBA, equals the NumPy area average."""
    rng = np.random.default_rng(int(scale * 1000) % 997)
    out_w = max(1, min(23, int(1100 / scale)))
    out_h = max(1, min(17, int(900 / scale)))
    need_w = -(-int(np.floor(out_w * (scale * 4096) + 0.5)) // 4096)
    need_h = -(-int(np.floor(out_h * (scale * 4096) + 0.5)) // 4096)
    for channels in (3, 4):
        for src in (rng.integers(0, 256, (1, need_h + 1, need_w + 2, channels), dtype=np.uint8),
                    np.full((1, need_h, need_w, channels), 255, np.uint8)):
            h, w = src.shape[1:3]
            got = np.asarray(tessera._tessera.resample(src, 1, h, w, channels, out_w, out_h,
                                                       scale, scale))[0]
            want = area_ref.area_average(lambda lx, ly, ww, hh: src[0, ly:ly + hh, lx:lx + ww],
                                         0, 0, scale, scale, out_w, out_h)
            assert np.array_equal(got, want), (channels, int(src[0, 0, 0, 0]))


def test_half_um_from_quarter_um_is_the_2x2_mean(slides):
    with tessera.Slide(slides["no_half"]) as s:
        got = np.asarray(s.read_region((200, 300), (224, 224), mpp=0.5)).astype(np.int64)
        src = np.asarray(s.read_region((200, 300), (448, 448), level=0)).astype(np.int64)
    blocks = src.reshape(224, 2, 224, 2, 3).sum(axis=(1, 3))
    assert np.array_equal(got, (blocks + 2) // 4)


def test_half_um_level_is_read_as_it_is(slides):
    with tessera.Slide(slides["vips"]) as s:
        got = np.asarray(s.read_region((201, 303), (224, 224), mpp=0.5))
        plain = np.asarray(s.read_region((201, 303), (224, 224), level=1))
    assert np.array_equal(got, plain)


def test_batches_at_mpp_equal_single_reads(slides):
    locs = [(0, 0), (400, 300), (-50, 900), (1500, 1100), (10, 20)]
    with tessera.Slide(slides["no_half"]) as s:
        singles = [np.asarray(s.read_region(xy, (96, 64), mpp=0.6)) for xy in locs]
        it = s.read_region(locs, (96, 64), mpp=0.6, batch_size=2, num_workers=2)
        assert len(it) == 3
        batches = list(it)
        dropped = list(s.read_region(np.array(locs), (96, 64), mpp=0.6, batch_size=2,
                                     drop_last=True))
    assert [b.shape for b in batches] == [(2, 64, 96, 3), (2, 64, 96, 3), (1, 64, 96, 3)]
    assert np.array_equal(np.concatenate(batches), np.stack(singles))
    assert len(dropped) == 2


def test_no_mpp_fails_clearly_unless_downsample(slides):
    with tessera.Slide(slides["nompp"]) as s:
        with pytest.raises(ValueError, match="microns per pixel"):
            s.read_region((0, 0), (64, 64), mpp=0.5)
        with pytest.raises(ValueError, match="microns per pixel"):
            s.level_for_mpp(0.5)
        got = np.asarray(s.read_region((10, 10), (64, 64), downsample=2))
        src = np.asarray(s.read_region((10, 10), (128, 128), level=0)).astype(np.int64)
    assert np.array_equal(got, (src.reshape(64, 2, 64, 2, 3).sum(axis=(1, 3)) + 2) // 4)


def test_bad_arguments(slides):
    with tessera.Slide(slides["vips"]) as s:
        with pytest.raises(ValueError):
            s.read_region((0, 0), (64, 64), level=1, mpp=0.5)
        with pytest.raises(ValueError):
            s.read_region((0, 0), (64, 64), mpp=0.5, downsample=2)
        with pytest.raises(ValueError):
            s.read_region(None, None, mpp=0.5)
        with pytest.raises(ValueError):
            s.read_region((0, 0), (64, 64), mpp=-1)
        with pytest.raises(ValueError):
            s.read_region((0, 0), (64, 64), mpp=1e-6)  # a scale below 1/1024


@pytest.fixture(scope="module")
def jpeg_quarter_um(cli, tmp_path_factory):
    """A JPEG slide at 0.25 um/px with one level: `tessera sample`'s picture re-saved by vips
    with its resolution set."""
    d = tmp_path_factory.mktemp("fast")
    sample, out = str(d / "sample.tiff"), str(d / "q25.tiff")
    subprocess.run([cli, "sample", sample, "--width", "3000", "--height", "2400", "--quiet"],
                   check=True)
    subprocess.run(["vips", "tiffsave", sample, out, "--tile", "--tile-width", "256",
                    "--tile-height", "256", "--compression", "jpeg", "--Q", "90", "--xres",
                    "4000", "--yres", "4000"], check=True)
    return out


def test_fast_mode_is_close_to_exact(jpeg_quarter_um):
    rng = np.random.default_rng(5)
    locs = [(int(x), int(y)) for x, y in rng.integers(0, 2400 - 448, (12, 2))] + [(800, 600)]
    diffs = []
    with tessera.Slide(jpeg_quarter_um) as s:
        assert s.level_for_mpp(0.5) == (0, 2.0)
        for xy in locs:
            exact = np.asarray(s.read_region(xy, (224, 224), mpp=0.5)).astype(np.int16)
            fast = np.asarray(s.read_region(xy, (224, 224), mpp=0.5, fast=True)).astype(np.int16)
            assert fast.shape == exact.shape
            diffs.append(np.abs(fast - exact))
        # scale 5: decoded at 1/4, then averaged by 1.25
        e5 = np.asarray(s.read_region((100, 100), (120, 90), mpp=1.25)).astype(np.int16)
        f5 = np.asarray(s.read_region((100, 100), (120, 90), mpp=1.25, fast=True)).astype(np.int16)
    d = np.stack(diffs)
    # the reduced-size IDCT is not the exact average (bench/RESULTS.md records the error), but
    # it is the same picture: a misplaced or mis-scaled tile would be far off
    assert d.mean() < 1.5 and np.percentile(d, 99) <= 12, (d.mean(), np.percentile(d, 99))
    assert d.max() > 0, "fast mode gave the exact result: the reduced decode was not used"
    assert np.abs(f5 - e5).mean() < 2.0


def test_fast_mode_odd_corner_is_the_mean_of_reduced_pixels(jpeg_quarter_um):
    """Fast mode at 1/2 (docs/RESOLUTION.md): at an even level-0 corner its pixels are the
    reduced decode's; at an odd corner each is the rounded-half-up mean of the two (or four)
    reduced pixels it straddles, the same reduced pixels an even corner one pixel before gives."""
    with tessera.Slide(jpeg_quarter_um) as s:
        for x, y, w, h in ((301, 200, 224, 224), (300, 201, 100, 37), (257, 511, 224, 224),
                           (2175, 1, 50, 60)):
            x0, y0 = x - x % 2, y - y % 2
            red = np.asarray(s.read_region((x0, y0), (w + 1, h + 1), mpp=0.5,
                                           fast=True)).astype(np.int32)
            ax, ay = x % 2, y % 2
            p = red[:h, :w] + red[ay:ay + h, ax:ax + w]
            q = red[:h, ax:ax + w] + red[ay:ay + h, :w]
            want = ((p + q + 2) >> 2).astype(np.uint8)
            got = np.asarray(s.read_region((x, y), (w, h), mpp=0.5, fast=True))
            assert np.array_equal(got, want), (x, y)
            got4 = np.asarray(s.read_region((x, y), (w, h), mpp=0.5, fast=True, channels=4))
            assert np.array_equal(got4[..., :3], want) and (got4[..., 3] == 255).all()


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("xy", [(400, 300), (2800, 2200)])
def test_fast_mode_at_another_scale_averages_the_reduced_pixels(jpeg_quarter_um, channels, xy):
    """Fast mode at scale 5 decodes at 1/4 and area-averages by 1.25 (docs/RESOLUTION.md): the
    same bytes as the NumPy area average of the 1/4 decode, which a fast read at scale 4 on
    a corner divisible by 4 gives as it is (inside the level and past its edge)."""
    with tessera.Slide(jpeg_quarter_um) as s:
        got = np.asarray(s.read_region(xy, (120, 90), mpp=1.25, fast=True, channels=channels))

        def reduced(lx, ly, w, h):
            return np.asarray(s.read_region((lx * 4, ly * 4), (w, h), mpp=1.0, fast=True,
                                            channels=channels))

        want = area_ref.area_average(reduced, xy[0] // 4, xy[1] // 4, 1.25, 1.25, 120, 90)
    assert got.shape == (90, 120, channels)
    assert np.array_equal(got, want), np.abs(got.astype(int) - want).max()


def test_fast_mode_falls_back_to_exact_off_jpeg(slides):
    with tessera.Slide(slides["no_half"]) as s:  # zlib tiles: read exactly
        exact = np.asarray(s.read_region((123, 45), (100, 80), mpp=0.6))
        fast = np.asarray(s.read_region((123, 45), (100, 80), mpp=0.6, fast=True))
        with pytest.raises(ValueError):
            s.read_region((0, 0), (10, 10), fast=True)
    assert np.array_equal(exact, fast)


def test_cli_read_at_mpp(cli, slides, jpeg_quarter_um, tmp_path):
    from PIL import Image
    out = str(tmp_path / "p.png")
    for path, fast in ((slides["no_half"], False), (jpeg_quarter_um, False),
                       (jpeg_quarter_um, True)):
        cmd = [cli, "read", path, "--location", "301,203", "--size", "150,100", "--mpp", "0.6",
               "--output", out] + (["--fast"] if fast else [])
        subprocess.run(cmd, check=True, capture_output=True)
        with tessera.Slide(path) as s:
            want = np.asarray(s.read_region((301, 203), (150, 100), mpp=0.6, fast=fast))
        assert np.array_equal(np.asarray(Image.open(out)), want)
    p = subprocess.run([cli, "read", slides["nompp"], "--location", "0,0", "--size", "8,8",
                        "--mpp", "0.5", "--output", out], capture_output=True, text=True)
    assert p.returncode == 1 and "microns per pixel" in p.stderr
    for extra in (["--mpp", "0.5", "--level", "1"], ["--fast"]):
        p = subprocess.run([cli, "read", slides["vips"], "--location", "0,0", "--size", "8,8",
                            "--output", out] + extra, capture_output=True, text=True)
        assert p.returncode == 2, (extra, p.stderr)


def test_batches_at_mpp_other_paths(slides, jpeg_quarter_um):
    locs = [(0, 0), (401, 303), (1001, 777)]
    with tessera.Slide(slides["vips"]) as s:  # 0.5 um/px is level 1 as it is
        got = [np.asarray(b) for b in s.read_region(locs, (64, 48), mpp=0.5, batch_size=3)]
        plain = [np.asarray(s.read_region(xy, (64, 48), level=1)) for xy in locs]
    assert np.array_equal(got[0], np.stack(plain))
    with tessera.Slide(jpeg_quarter_um) as s:  # fast: each patch read on its own
        got = list(s.read_region(locs, (64, 48), mpp=0.5, fast=True, num_workers=2))
        singles = [np.asarray(s.read_region(xy, (64, 48), mpp=0.5, fast=True)) for xy in locs]
        shuffled = np.concatenate(list(s.read_region(locs, (64, 48), mpp=0.5, batch_size=2,
                                                     shuffle=True, seed=3, num_workers=2)))
        exact = [np.asarray(s.read_region(xy, (64, 48), mpp=0.5)) for xy in locs]
    assert all(np.array_equal(a, b) for a, b in zip(got, singles))
    # shuffled batches hold the same patches, in another order
    assert sorted(p.tobytes() for p in shuffled) == sorted(p.tobytes() for p in exact)


def test_resample_area_arguments():
    src = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="needs a source"):
        tessera._tessera.resample(src, 1, 10, 10, 3, 5, 5, 2.5, 2.5)
    out = np.asarray(tessera._tessera.resample(src + 7, 1, 10, 10, 3, 5, 5, 2.0, 2.0))
    assert out.shape == (1, 5, 5, 3) and (out == 7).all()


def test_cli_bench_fast_on_workers_says_which_patch_failed(cli, jpeg_quarter_um, tmp_path):
    """`tessera bench --mpp --fast` reads patches on --workers threads: with one tile's JPEG
    data overwritten, every thread count fails with the first patch over it named, and the
    patches before it read (no hang, no partial result passed off as good)."""
    bad = str(tmp_path / "bad.tiff")
    with open(jpeg_quarter_um, "rb") as f:
        data = bytearray(f.read())
    with tifffile.TiffFile(jpeg_quarter_um) as t:
        page = t.pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        index = 2 * across + 3  # the tile at column 3, row 2: level pixels 768.., 512..
        at, n = page.dataoffsets[index], page.databytecounts[index]
    data[at + n // 3:at + n] = b"\x00" * (n - n // 3)
    with open(bad, "wb") as f:
        f.write(data)
    # patches of 448 x 448 level pixels; the fourth and the sixth lie over the damaged tile
    locs = [(0, 0), (1500, 1500), (0, 1800), (800, 550), (2000, 100), (700, 500), (10, 10)]
    loc_file = tmp_path / "locations.txt"
    loc_file.write_text("".join("%d %d\n" % xy for xy in locs))
    for workers in ("0", "1", "2", "3"):
        p = subprocess.run([cli, "bench", bad, "--locations", str(loc_file), "--size",
                            "224,224", "--mpp", "0.5", "--fast", "--workers", workers],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1, (workers, p.stdout, p.stderr)
        assert "patch 4 of 7:" in p.stderr and "JPEG" in p.stderr, (workers, p.stderr)
        assert "checksum" not in p.stdout, (workers, p.stdout)
    p = subprocess.run([cli, "bench", jpeg_quarter_um, "--locations", str(loc_file), "--size",
                        "224,224", "--mpp", "0.5", "--fast", "--workers", "3", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["patches"] == len(locs), p.stderr


def test_cli_bench_at_mpp(cli, slides, jpeg_quarter_um, tmp_path):
    """`tessera bench --mpp` reads what `tessera read --mpp` reads one patch at a time: the
    same checksum (the sum of the R, G, B bytes of every patch), exact and --fast; a scale of
    1 (0.5 um/px is the vips slide's level 1) reads the level as it is."""
    from PIL import Image
    locs = [(0, 0), (301, 203), (1001, 777), (77, 1001), (1399, 31)]
    loc_file = tmp_path / "locations.txt"
    loc_file.write_text("".join("%d %d\n" % xy for xy in locs))
    out = str(tmp_path / "p.png")
    cases = ((slides["no_half"], "0.6", False), (slides["vips"], "0.5", False),
             (jpeg_quarter_um, "0.6", False), (jpeg_quarter_um, "0.6", True))
    seen = set()
    for path, mpp, fast in cases:
        extra = ["--fast"] if fast else []
        want = 0
        for x, y in locs:
            subprocess.run([cli, "read", path, "--location", "%d,%d" % (x, y), "--size",
                            "150,100", "--mpp", mpp, "--output", out] + extra,
                           check=True, capture_output=True)
            want += int(np.asarray(Image.open(out))[..., :3].astype(np.uint64).sum())
        p = subprocess.run([cli, "bench", path, "--locations", str(loc_file), "--size",
                            "150,100", "--mpp", mpp, "--batch-size", "2", "--workers", "2",
                            "--json"] + extra, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        assert doc["patches"] == len(locs) and doc["size"] == [150, 100]
        assert doc["mpp"] == float(mpp) and doc["fast"] is fast
        assert doc["checksum"] == want, (path, mpp, fast)
        seen.add(want)
    assert len(seen) == len(cases)  # the cases read different pixels
    bad = [(["--mpp", "0.5", "--level", "1"], 2), (["--fast"], 2)]
    for extra, rc in bad:
        p = subprocess.run([cli, "bench", slides["vips"], "--locations", str(loc_file),
                            "--size", "8,8"] + extra, capture_output=True, text=True)
        assert p.returncode == rc, (extra, p.stderr)
    p = subprocess.run([cli, "bench", slides["nompp"], "--locations", str(loc_file), "--size",
                        "8,8", "--mpp", "0.5"], capture_output=True, text=True)
    assert p.returncode == 1 and "microns per pixel" in p.stderr
    p = subprocess.run([cli, "bench", "--help"], capture_output=True, text=True)
    assert "--mpp M" in p.stdout and "--fast" in p.stdout
