"""Associated (premultiplied) alpha comes out straight, as OpenSlide's un-premultiplied reads
and libvips give it; unassociated alpha passes through; an extra sample of unspecified meaning
is not alpha. Files are written at test time by tifffile."""

import os
import subprocess

import numpy as np
import pytest

import tessera_ctypes as T
import wsi_fixtures as F
import wsi_refs as R

W, H = 96, 64


def premultiplied_picture(seed=1):
    rng = np.random.default_rng(seed)
    a = np.zeros((H, W, 4), np.uint8)
    a[..., 3] = rng.integers(0, 256, (H, W))
    a[:4, :4, 3] = 0        # some fully transparent pixels
    a[-4:, -4:, 3] = 255    # and some opaque ones
    for c in range(3):
        a[..., c] = rng.integers(0, 256, (H, W)) * a[..., 3].astype(int) // 255
    return a


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import tifffile
    d = tmp_path_factory.mktemp("alpha")
    a = premultiplied_picture()
    out = {}
    for kind in ("assocalpha", "unassalpha", "unspecified"):
        p = str(d / ("%s.tif" % kind))
        tifffile.imwrite(p, a, tile=(32, 32), photometric="rgb", extrasamples=[kind])
        out[kind] = p
    return a, out


def test_associated_alpha_equals_openslide_unpremultiplied(files, lib):
    stored, paths = files
    with T.open_slide(paths["assocalpha"]) as s:
        got = s.read_region(0, 0, 0, W, H, channels=4)
        rgb = s.read_region(0, 0, 0, W, H, channels=3)
    o = R.openslide_region(R.openslide_open(paths["assocalpha"]), 0, 0, 0, W, H)
    m = R.describe_mismatch(got, o, what="associated alpha vs OpenSlide")
    assert m is None, m
    assert np.array_equal(rgb, got[..., :3])
    assert not np.array_equal(got[..., :3], stored[..., :3]), "colour left premultiplied"


def test_associated_alpha_agrees_with_libvips_but_for_its_rounding(files, lib):
    """libvips un-premultiplies in floating point and turns a colour equal to its alpha into
    254, where the exact value (and OpenSlide's) is 255; everywhere else the two agree."""
    stored, paths = files
    with T.open_slide(paths["assocalpha"]) as s:
        got = s.read_region(0, 0, 0, W, H, channels=4)
    v = R.vips_decode(paths["assocalpha"], ["--page", "0"])
    differ = got != v
    full = np.zeros_like(differ)
    full[..., :3] = stored[..., :3] == stored[..., 3:4]
    where = np.argwhere(differ & ~(full & (got == 255) & (v == 254)))
    assert len(where) == 0, "tessera %s vs libvips %s at %s" % (
        got[tuple(where[0][:2])], v[tuple(where[0][:2])], where[0])


def test_unassociated_alpha_passes_through(files, lib):
    stored, paths = files
    with T.open_slide(paths["unassalpha"]) as s:
        got = s.read_region(0, 0, 0, W, H, channels=4)
    assert np.array_equal(got, stored)


def test_unspecified_extra_sample_is_not_alpha(files, lib):
    stored, paths = files
    with T.open_slide(paths["unspecified"]) as s:
        got = s.read_region(0, 0, 0, W, H, channels=4)
    assert np.array_equal(got[..., :3], stored[..., :3])
    assert (got[..., 3] == 255).all()


def test_level_info_says_how_alpha_is_stored(files, lib):
    """tessera_level_info's alpha (and the Python level_info's) is the level's ExtraSamples:
    what tessera.openslide and libtessera-openslide round by, as OpenSlide's readers do."""
    from tessera import _tessera

    _, paths = files
    d = T.DEFINES
    want = {"assocalpha": (d["TESSERA_ALPHA_ASSOCIATED"], "associated"),
            "unassalpha": (d["TESSERA_ALPHA_UNASSOCIATED"], "unassociated"),
            "unspecified": (d["TESSERA_ALPHA_NONE"], "none")}
    assert len({n for n, _ in want.values()}) == 3
    for kind, (number, name) in want.items():
        with T.open_slide(paths[kind]) as s:
            assert s.level_info(0).alpha == number, kind
        s = _tessera.Slide(paths[kind])
        try:
            assert s.level_info(0)["alpha"] == name, kind
        finally:
            s.close()
    with T.open_slide(os.path.join(F.TESTDATA, "generic-webp-rgba-pyramid.tif")) as s:
        assert s.level_info(0).samples_per_pixel == 4
        assert s.level_info(0).alpha == d["TESSERA_ALPHA_UNASSOCIATED"]
