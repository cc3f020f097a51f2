"""Patch grids at a physical resolution: tessera.grid, `tessera grid`, tessera_patch_grid.

Fixtures with set resolutions are written here: a 0.25 um/px slide whose levels are 1x and 4x
(tifffile: no 0.5 um/px level, so 0.5 um/px reads level 0 at scale 2) and a vips pyramid of
the same picture (`vips tiffsave --pyramid --xres/--yres`: levels 1x, 2x, 4x..., so 0.5 um/px
reads level 1 as it is). Tissue fractions are recomputed from the slide's own mask by the rule
docs/RESOLUTION.md states.
"""

import os
import subprocess

import numpy as np
import pytest
import tifffile

import tessera

W, H = 3000, 2400


def picture():
    yy, xx = np.mgrid[0:H, 0:W]
    rng = np.random.default_rng(3)
    img = np.empty((H, W, 3), np.uint8)
    img[:] = (240, 240, 238)
    img += rng.integers(0, 4, (H, W, 1), dtype=np.uint8)
    tissue = (((xx - 1300) / 900.0) ** 2 + ((yy - 1100) / 700.0) ** 2) <= 1
    img[tissue] = (220, 140, 185)
    img[tissue & ((xx // 10 + yy // 10) % 4 == 0)] = (120, 70, 150)
    return img


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("grid")
    img = picture()
    mpp = 0.25
    res = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    no_half = str(d / "quarter-um-no-half-level.tiff")
    with tifffile.TiffWriter(no_half) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", compression="zlib", **res)
        tw.write(np.ascontiguousarray(img[::4, ::4]), tile=(256, 256), photometric="rgb",
                 compression="zlib", subfiletype=1, **res)
    flat = str(d / "flat.tiff")
    tifffile.imwrite(flat, img, photometric="rgb")
    vips = str(d / "quarter-um-vips-pyramid.tiff")
    subprocess.run(["vips", "tiffsave", flat, vips, "--tile", "--tile-width", "256",
                    "--tile-height", "256", "--pyramid", "--compression", "jpeg",
                    "--xres", str(1e3 / mpp), "--yres", str(1e3 / mpp)], check=True)
    nompp = str(d / "no-mpp.tiff")
    tifffile.imwrite(nompp, img, tile=(256, 256), photometric="rgb", resolution=(1, 1),
                     resolutionunit="NONE")
    return {"no_half": no_half, "vips": vips, "nompp": nompp}


def test_fixture_resolutions(slides):
    for key in ("no_half", "vips"):
        with tessera.Slide(slides[key]) as s:
            assert float(s.properties()["tessera.mpp-x"]) == pytest.approx(0.25)
    with tessera.Slide(slides["vips"]) as s:
        assert [round(s.level_info(i)["downsample"]) for i in range(3)] == [1, 2, 4]
    with tessera.Slide(slides["no_half"]) as s:
        assert [round(s.level_info(i)["downsample"]) for i in range(2)] == [1, 4]


def test_half_um_on_quarter_um_slide_reads_level0_at_2x(slides, cli):
    g = tessera.grid(slides["no_half"], 224, mpp=0.5)
    assert (g.level, g.read_size, g.scale, g.size) == (0, (448, 448), 2.0, (224, 224))
    assert g.mpp == pytest.approx(0.5)
    # side by side: every 448 level-0 pixels, all patches inside the level
    xs, ys = np.unique(g.locations[:, 0]), np.unique(g.locations[:, 1])
    assert list(xs) == list(range(0, W - 448 + 1, 448))
    assert list(ys) == list(range(0, H - 448 + 1, 448))
    assert len(g) == len(xs) * len(ys)
    p = subprocess.run([cli, "grid", slides["no_half"], "--size", "224", "--mpp", "0.5"],
                       capture_output=True, text=True, check=True)
    assert "# level 0 read_size 448,448 scale 2 " in p.stdout


def test_half_um_reads_the_half_um_level_directly(slides):
    g = tessera.grid(slides["vips"], 224, mpp=0.5)
    assert (g.level, g.read_size, g.scale) == (1, (224, 224), 1.0)
    with tessera.Slide(slides["vips"]) as s:
        ds = s.level_info(1)["downsample"]
        lw, lh = s.level_info(1)["width"], s.level_info(1)["height"]
    lx, ly = np.floor(g.locations / ds).astype(np.int64).T
    # each corner maps to the level pixel the grid meant, patches inside the level
    assert set(np.unique(lx)) == set(range(0, lw - 224 + 1, 224))
    assert set(np.unique(ly)) == set(range(0, lh - 224 + 1, 224))
    # 1 um/px: the 4x level (1.0 um/px) directly; 0.7 um/px: the 2x level at scale 1.4
    assert tessera.grid(slides["vips"], 100, mpp=1.0).level == 2
    g = tessera.grid(slides["vips"], 100, mpp=0.7)
    assert (g.level, g.scale, g.read_size) == (1, pytest.approx(1.4), (140, 140))


def mask_fractions(slide, grid):
    """Tissue fraction of each patch from the slide's default mask, by the documented rule:
    the mask pixels whose centres lie in the patch's level-0 footprint (else the one under its
    centre)."""
    with tessera.Slide(slide) as s:
        m = s.tissue_mask()
        ds = s.level_info(grid.level)["downsample"]
    md = m.downsample
    h, w = m.shape
    out = []
    for x, y in grid.locations:
        lx, ly = np.floor(x / ds), np.floor(y / ds)
        x0, y0 = lx * ds, ly * ds
        x1, y1 = (lx + grid.read_size[0]) * ds, (ly + grid.read_size[1]) * ds
        i0, i1 = [int(np.clip(np.ceil(v / md - 0.5), 0, w)) for v in (x0, x1)]
        j0, j1 = [int(np.clip(np.ceil(v / md - 0.5), 0, h)) for v in (y0, y1)]
        if i1 > i0 and j1 > j0:
            out.append(m.array[j0:j1, i0:i1].mean())
        else:
            out.append(float(m.array[int((y0 + y1) / 2 // md), int((x0 + x1) / 2 // md)]))
    return np.array(out)


@pytest.mark.parametrize("min_tissue", [0.0, 0.5, 0.9])
def test_min_tissue_by_the_mask(slides, min_tissue):
    every = tessera.grid(slides["vips"], 128, mpp=0.5)
    g = tessera.grid(slides["vips"], 128, mpp=0.5, min_tissue=min_tissue)
    ref = mask_fractions(slides["vips"], every)
    assert np.allclose(every.tissue, ref, atol=1e-6)
    assert (g.tissue >= min_tissue).all()
    # exactly the patches of the full grid that have enough tissue, in the same order
    keep = ref >= min_tissue
    assert np.array_equal(g.locations, every.locations[keep])
    if min_tissue > 0:
        assert 0 < len(g) < len(every)
    assert (ref > 0.99).any() and (ref < 0.01).any()


def test_deterministic_and_cli_agrees(slides, cli, tmp_path):
    a = tessera.grid(slides["vips"], 200, mpp=0.5, stride=150, min_tissue=0.3)
    b = tessera.grid(slides["vips"], 200, mpp=0.5, stride=150, min_tissue=0.3)
    assert np.array_equal(a.locations, b.locations) and np.array_equal(a.tissue, b.tissue)
    assert a.stride == (150, 150)
    out = tmp_path / "loc.txt"
    p = subprocess.run([cli, "grid", slides["vips"], "--size", "200", "--mpp", "0.5",
                        "--stride", "150", "--min-tissue", "0.3"], capture_output=True,
                       text=True, check=True)
    out.write_text(p.stdout)
    assert np.array_equal(np.loadtxt(str(out), dtype=np.int64).reshape(-1, 2), a.locations)
    fractions = [float(line.split("#")[1]) for line in p.stdout.splitlines()
                 if line and not line.startswith("#")]
    assert np.allclose(fractions, a.tissue, atol=1e-4)
    # `tessera bench --locations` takes the file as it is
    r = subprocess.run([cli, "bench", slides["vips"], "--locations", str(out), "--level",
                        str(a.level), "--size", "%d,%d" % a.read_size, "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '"patches": %d' % len(a) in r.stdout
    # and the batch reader reads them
    with tessera.Slide(slides["vips"]) as s:
        n = sum(len(np.asarray(batch)) for batch in s.read_region(
            a.locations, a.read_size, level=a.level, batch_size=8))
    assert n == len(a)


def test_level_grid_and_no_mpp(slides, cli):
    g = tessera.grid(slides["nompp"], 256, level=0)
    assert (g.level, g.scale, g.mpp, g.read_size) == (0, 1.0, 0.0, (256, 256))
    with pytest.raises(ValueError, match="microns per pixel"):
        tessera.grid(slides["nompp"], 256, mpp=0.5)
    p = subprocess.run([cli, "grid", slides["nompp"], "--size", "256", "--mpp", "0.5"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "microns per pixel" in p.stderr
    for args in (["--mpp", "0.5", "--level", "1"], ["--min-tissue", "2"], []):
        p = subprocess.run([cli, "grid", slides["vips"]] + (["--size", "64"] if args else [])
                           + args, capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.startswith("tessera: grid: "), (args, p.stderr)
    with pytest.raises(ValueError):
        tessera.grid(slides["vips"], 64, mpp=0.5, level=1)
    with pytest.raises(ValueError):
        tessera.grid(slides["vips"], 64, mpp=0.5, min_tissue=1.5)
    help_text = subprocess.run([cli, "grid", "--help"], capture_output=True, text=True).stdout
    for word in ("--mpp", "--min-tissue", "--stride", "tessera bench", "within 1 %"):
        assert word in help_text


def test_limits(slides):
    with tessera.Slide(slides["vips"], max_read_bytes=100000) as s:
        with pytest.raises(tessera.TesseraError, match="max_read_bytes"):
            tessera.grid(s, 16, level=0)
        with pytest.raises(tessera.TesseraError, match="max_read_bytes"):
            s.tissue_mask(downsample=1)
        assert len(tessera.grid(s, 256, level=0, mask_downsample=64)) > 0
