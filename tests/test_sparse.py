"""Tiles the file leaves out (TileOffsets or TileByteCounts 0, as sparse Philips and
partly-written slides have) read as background: the fill value with alpha 0, while every other
tile of the level equals libvips' decode of the complete file."""

import os

import numpy as np
import pytest

import tessera_ctypes as T
import tiffbytes as tb
import wsi_fixtures as F
import wsi_refs as R

W, H, TILE = 768, 512, 256


@pytest.fixture(scope="module")
def complete(tmp_path_factory, slides):
    d = str(tmp_path_factory.mktemp("sparse"))
    crop = os.path.join(d, "src.v")
    F.run(["vips", "crop", slides.source("rgb1k"), crop, 0, 0, W, H])
    path = os.path.join(d, "complete.tif")
    F.run(["vips", "tiffsave", crop, path, "--tile", "--tile-width", str(TILE),
           "--tile-height", str(TILE), "--compression", "deflate"])
    return d, path


@pytest.mark.parametrize("tag", ["TileOffsets", "TileByteCounts"])
@pytest.mark.parametrize("missing", [0, 4])
def test_missing_tile_is_background(complete, lib, tag, missing):
    d, path = complete
    with open(path, "rb") as f:
        data = f.read()
    sparse = os.path.join(d, "sparse-%s-%d.tif" % (tag, missing))
    with open(sparse, "wb") as f:
        f.write(tb.patch_value(data, tb.Tiff(data), 0, tag, missing, 0))
    ref = R.to_rgb(R.vips_decode(path, ["--page", "0"]))
    with T.open_slide(sparse) as s:
        got = s.read_region(0, 0, 0, W, H, channels=4, fill=77)
    tx, ty = (missing % 3) * TILE, (missing // 3) * TILE
    hole = np.zeros((H, W), bool)
    hole[ty:ty + TILE, tx:tx + TILE] = True
    assert (got[hole] == [77, 77, 77, 0]).all(), "the missing tile is not fill with alpha 0"
    m = R.describe_mismatch(got[..., :3], ref, mask=~hole, what="tiles around the missing one")
    assert m is None, m
    assert (got[~hole][:, 3] == 255).all(), "present tiles must be opaque"
