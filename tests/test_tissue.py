"""Tissue masks: tessera_tissue_mask through Slide.tissue_mask and `tessera tissue`.

- The sample slide knows where it drew tissue (`tessera sample --tissue-mask`, computed from
  its noise fields, not its pixels): IoU >= 0.95 at two resolutions.
- The real Aperio and NDPI files: the per-pixel rules of docs/TISSUE.md transcribed in NumPy
  (tests/area_ref.py) over the level read by OpenSlide give the same threshold, and agree with
  the mask wherever the connected-component steps left a pixel alone; the tissue fraction lies
  in the range a look at the masks showed.
- A fixture with pen strokes (blue, green, black) and a black border written here.
"""

import os
import subprocess

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

import area_ref
import wsi_fixtures
import tessera

CMU = os.path.join(wsi_fixtures.TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")
NDPI = os.path.join(wsi_fixtures.TESTDATA, "hamamatsu-ndpi-DAPI.ndpi")


def run(cmd, check=True):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check:
        assert p.returncode == 0, (cmd, p.stdout, p.stderr)
    return p


def png(path):
    return np.asarray(Image.open(path))


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.fixture(scope="module")
def sample(cli, tmp_path_factory):
    d = tmp_path_factory.mktemp("tissue-sample")
    path = str(d / "sample.tiff")
    run([cli, "sample", path, "--width", "6000", "--height", "4500", "--quiet"])
    return path


@pytest.mark.parametrize("downsample", [16, 4])
def test_sample_iou(cli, sample, tmp_path, downsample):
    truth_png = str(tmp_path / "truth.png")
    run([cli, "sample", "--width", "6000", "--height", "4500", "--tissue-mask", truth_png,
         "--mask-downsample", str(downsample), "--quiet"])
    truth = png(truth_png) > 0
    with tessera.CuImage(sample) as s:
        m = s.tissue_mask(downsample=downsample)
    assert m.shape == truth.shape == (int(np.ceil(4500 / downsample)),
                                      int(np.ceil(6000 / downsample)))
    assert m.downsample == downsample and m.mpp == pytest.approx(0.5 * downsample)
    # the mask works on the coarsest level at least as fine: level log2(downsample)
    assert m.level == int(np.log2(downsample))
    assert 0.2 < truth.mean() < 0.7, "the sample must hold both tissue and glass"
    assert iou(m.array, truth) >= 0.95, iou(m.array, truth)


def test_sample_mpp_resolution(sample):
    with tessera.CuImage(sample) as s:
        a = s.tissue_mask(mpp=4.0)  # the sample is 0.5 um/px: downsample 8
        b = s.tissue_mask(downsample=8)
    assert a.downsample == 8 and a.mpp == pytest.approx(4.0)
    assert np.array_equal(a.array, b.array)
    assert np.array_equal(np.asarray(a), a.array)


def test_cli_matches_python(cli, sample, tmp_path):
    out = str(tmp_path / "mask.png")
    p = run([cli, "tissue", sample, "--output", out, "--mask-downsample", "16"])
    info = dict(line.split(": ", 1) for line in p.stdout.strip().splitlines())
    with tessera.CuImage(sample) as s:
        m = s.tissue_mask(downsample=16)
    assert np.array_equal(png(out) > 0, m.array)
    assert set(np.unique(png(out))) <= {0, 255}
    assert info["mask"] == "%d x %d" % (m.shape[1], m.shape[0])
    assert int(info["level"]) == m.level and int(info["threshold"]) == m.threshold
    assert float(info["tissue_fraction"]) == pytest.approx(m.array.mean())
    assert info["mode"] == "brightfield"


def test_defaults_are_8um(sample):
    with tessera.CuImage(sample) as s:
        m = s.tissue_mask()
    assert m.mpp == pytest.approx(8.0) and m.downsample == pytest.approx(16.0)


def _reference(path, m, darkfield):
    """The NumPy rules over OpenSlide's pixels of the level the mask used, area-averaged to
    the mask's grid: (tissue before the component steps, threshold)."""
    osr = openslide.OpenSlide(path)
    ds = osr.level_downsamples[m.level]
    scale = m.downsample / ds
    bg = 255 if "aperio" in path else 0

    def read(lx, ly, w, h):
        out = np.full((h, w, 3), bg, np.uint8)
        lw, lh = osr.level_dimensions[m.level]
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        rgba = np.asarray(osr.read_region((int(x0 * ds), int(y0 * ds)), m.level,
                                          (x1 - x0, y1 - y0)))
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = rgba[..., :3]
        return out

    rgb = area_ref.area_average(read, 0, 0, scale, scale, m.shape[1], m.shape[0])
    return area_ref.classes(rgb, bg, darkfield=darkfield)


def test_aperio_mask_pinned():
    with tessera.CuImage(CMU) as s:
        m = s.tissue_mask()
    assert m.mode == "brightfield" and m.level == 0
    ref, t = _reference(CMU, m, darkfield=False)
    assert m.threshold == t
    # Looked at once (docs/TISSUE.md): one section of skin over about a third of the region.
    assert 0.25 < m.tissue_fraction < 0.45
    assert 0.93 < (m.array == ref).mean()
    # The component steps only drop specks and fill holes: every tissue pixel the rules found
    # in a large piece stays, and the mask adds no pixel the rules left out but holes.
    assert (ref & ~m.array).sum() < 0.03 * ref.sum()


def test_ndpi_darkfield_mask_pinned():
    with tessera.CuImage(NDPI) as s:
        m = s.tissue_mask()
    assert m.mode == "darkfield"
    ref, t = _reference(NDPI, m, darkfield=True)
    assert m.threshold == t
    # DAPI nuclei on black: the densely stained part of the section, about 0.3 to 0.6 of it.
    assert 0.3 < m.tissue_fraction < 0.6
    assert 0.85 < (m.array == ref).mean()
    with tessera.CuImage(NDPI) as s:
        bright = s.tissue_mask(mode="brightfield")
    # Taken as bright-field, the blue is ink and the black is border: no tissue.
    assert bright.tissue_fraction < 0.02


def _ink_slide(path, mpp=0.5, border=True, resolution=True):
    """A 4000 x 3000 bright-field slide, 2 levels: pink tissue ellipse (with nuclei-like dots)
    on glass, crossed by a blue and a green pen stroke, a black ink blob on the glass, and a
    black border 200 pixels wide on the left. Returns (tissue, ink) boolean maps of level 0."""
    h, w = 3000, 4000
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(7)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (238, 238, 236)
    img += rng.integers(0, 4, (h, w, 1), dtype=np.uint8)
    tissue = ((xx - 2000) / 1300.0) ** 2 + ((yy - 1500) / 1000.0) ** 2 <= 1
    img[tissue] = (225, 150, 190)
    dots = tissue & ((xx // 12 + yy // 12) % 5 == 0)
    img[dots] = (110, 60, 150)
    blue = (np.abs(yy - 0.4 * xx - 600) < 40) & (xx > 300)
    green = (np.abs(xx - 3300) < 50) & (yy > 200) & (yy < 2800)
    black = ((xx - 600) ** 2 + (yy - 2600) ** 2) < 150 ** 2
    img[blue] = (40, 70, 170)
    img[green] = (40, 150, 70)
    img[black] = (25, 25, 30)
    edge = xx < 200
    if border:
        img[edge] = (5, 5, 5)
    ink = blue | green | black | (edge if border else False)
    kw = dict(tile=(256, 256), photometric="rgb", compression="zlib")
    if resolution:
        kw.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    else:
        kw.update(resolution=(1, 1), resolutionunit="NONE")
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, **kw)
        tw.write(np.ascontiguousarray(img[::2, ::2]), subfiletype=1, **kw)
    return tissue & ~ink, ink


def _at(mask, level0_map, ds):
    """level0_map sampled at the centre of each mask pixel."""
    h, w = mask.shape
    ys = np.minimum(((np.arange(h) + 0.5) * ds).astype(int), level0_map.shape[0] - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * ds).astype(int), level0_map.shape[1] - 1)
    return level0_map[np.ix_(ys, xs)]


def _all(mask, level0_map, ds):
    """Mask pixels whose whole level-0 block is in level0_map (ds a whole number)."""
    h, w = mask.shape
    m = np.zeros((h * ds, w * ds), bool)
    m[:level0_map.shape[0], :level0_map.shape[1]] = level0_map
    return m.reshape(h, ds, w, ds).all(axis=(1, 3))


def test_pen_and_black_border_are_not_tissue(tmp_path):
    path = str(tmp_path / "ink.tiff")
    tissue, ink = _ink_slide(path)
    with tessera.CuImage(path) as s:
        m = s.tissue_mask(downsample=8)
        no_pen_rule = s.tissue_mask(downsample=8, pen_min_saturation=256, black_max=-1)
    t, k = _at(m.array, tissue, 8), _all(m.array, ink, 8)
    assert m.level == 1 and m.mode == "brightfield"
    # mask pixels wholly of ink are never tissue (those mixing ink and tissue may be)
    assert (m.array & k).sum() <= 0.01 * k.sum()
    assert iou(m.array, t) >= 0.9
    # the rules are what keeps them out: without them the strokes count as tissue
    assert (no_pen_rule.array & k).sum() > 0.3 * k.sum()


def test_no_mpp_slide(tmp_path, cli):
    path = str(tmp_path / "nompp.tiff")
    tissue, ink = _ink_slide(path, resolution=False, border=False)
    with tessera.CuImage(path) as s:
        with pytest.raises(ValueError, match="microns per pixel"):
            s.tissue_mask(mpp=4.0)
        m = s.tissue_mask()
    assert m.downsample == 32 and m.mpp == 0.0
    assert iou(m.array, _at(m.array, tissue, 32)) >= 0.85
    p = run([cli, "tissue", path, "--output", str(tmp_path / "m.png"), "--mask-mpp", "4"],
            check=False)
    assert p.returncode == 1 and "microns per pixel" in p.stderr
    # without an mpp the areas are in square level-0 pixels: a limit of a whole ellipse's area
    # drops everything
    with tessera.CuImage(path) as s:
        gone = s.tissue_mask(min_tissue_area=np.pi * 1300 * 1000 * 1.1)
    assert not gone.array.any()


def test_areas_are_micrometres(sample):
    with tessera.CuImage(sample) as s:
        base = s.tissue_mask(downsample=16)
        nofill = s.tissue_mask(downsample=16, max_hole_area=0)
        nodrop = s.tissue_mask(downsample=16, min_tissue_area=0)
        huge = s.tissue_mask(downsample=16, min_tissue_area=1e12)
    assert (nofill.array <= base.array).all() and nofill.array.sum() < base.array.sum()
    assert (nodrop.array >= base.array).all() or nodrop.array.sum() >= base.array.sum()
    assert not huge.array.any()


def test_bad_arguments(sample, cli, tmp_path):
    with tessera.CuImage(sample) as s:
        with pytest.raises(ValueError):
            s.tissue_mask(mode="infrared")
        with pytest.raises(ValueError):
            s.tissue_mask(mpp=2.0, downsample=4)
        with pytest.raises(ValueError):
            s.tissue_mask(pen_hue=(200, 100))
        with pytest.raises(ValueError):
            s.tissue_mask(black_max=300)
    out = str(tmp_path / "m.png")
    for args in (["tissue", sample], ["tissue", "--output", out],
                 ["tissue", sample, "--output", out, "--mask-mpp", "2", "--mask-downsample", "4"],
                 ["tissue", sample, "--output", out, "--mode", "x"],
                 ["tissue", sample, "--output", str(tmp_path / "m.ppm")]):
        p = run([cli] + args, check=False)
        assert p.returncode in (1, 2) and p.stderr.startswith("tessera"), (args, p.stderr)
        assert not os.path.exists(out)
    p = run([cli, "tissue", "--help"])
    for word in ("--mask-mpp", "--max-hole-area", "--pen-hue", "darkfield", "Otsu"):
        assert word in p.stdout


def test_baseline_classification_gives_the_same_masks():
    """The classification has an AVX2 kernel chosen at run time and a baseline one (channels
    copied apart, then SSE2); a test build's TESSERA_TEST_NO_AVX2 forces the baseline: every
    mask, at the level's resolution and averaged, bright- and dark-field, with pen and black
    rules, is the same byte for byte."""
    import sys

    from tessera import _tessera
    with open(_tessera.__file__, "rb") as f:  # else both runs would take the AVX2 path
        assert b"TESSERA_TEST_NO_AVX2" in f.read(), "built without test hooks (dev.sh has them)"
    path, ndpi = CMU, NDPI
    script = (
        "import sys, hashlib, numpy as np, tessera\n"
        "cases = [(%r, {}), (%r, dict(downsample=1)), (%r, dict(downsample=3, mode='darkfield')),\n"
        "         (%r, dict(downsample=2, pen_min_saturation=40, black_max=150)), (%r, {}),\n"
        "         (%r, dict(downsample=32))]\n"
        "for p, kw in cases:\n"
        "    m = tessera.Slide(p).tissue_mask(**kw)\n"
        "    print(m.threshold, hashlib.sha1(np.asarray(m.array).tobytes()).hexdigest())\n"
    ) % (path, path, path, path, ndpi, ndpi)
    package = os.path.dirname(os.path.dirname(tessera.__file__))  # the one under test
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    runs = []
    for no_avx2 in (False, True):
        if no_avx2:
            env["TESSERA_TEST_NO_AVX2"] = "1"
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True)
        runs.append(r.stdout)
    assert runs[0] == runs[1] and len(runs[0].splitlines()) == 6
