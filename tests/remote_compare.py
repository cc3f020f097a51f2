"""Byte-for-byte comparison of a slide opened some other way (a caller's source, a file
object, a URL) against the same slide opened from its local file, for the remote-source
tests: metadata, whole levels (up to 4 megapixels), random regions at every level (seeded),
associated images, and batches of random patches read by the library's workers."""

import random

import numpy as np


WHOLE_LEVEL_MAX = 1 << 22


def random_locations(rng, width, height, downsample, n, patch):
    """n level-0 (x, y) within (and a little outside) the level."""
    w0, h0 = int(width * downsample), int(height * downsample)
    pad = int(patch * downsample)
    return [(rng.randrange(-pad // 2, max(1, w0 - pad // 2)),
             rng.randrange(-pad // 2, max(1, h0 - pad // 2))) for _ in range(n)]


def compare_ctypes(local, other, seed=7, regions=4, patches=24, batch_size=8):
    """local, other: tessera_ctypes.Slide. Returns how many pixel bytes were compared (so a
    test can check something was); fails on the first difference."""
    assert other.level_count == local.level_count
    assert other.properties == local.properties
    assert other.associated_names == local.associated_names
    rng = random.Random(seed)
    compared = 0
    for level in range(local.level_count):
        info = local.level_info(level).as_dict()
        assert other.level_info(level).as_dict() == info, level
        w, h, ds = info["width"], info["height"], info["downsample"]
        if w * h <= WHOLE_LEVEL_MAX:
            a, b = local.read_level(level, channels=4), other.read_level(level, channels=4)
            assert np.array_equal(a, b), "level %d differs" % level
            compared += a.size
        for x, y in random_locations(rng, w, h, ds, regions, 300):
            rw, rh = rng.randrange(1, 400), rng.randrange(1, 400)
            a = local.read_region(x, y, level, rw, rh, channels=4)
            b = other.read_region(x, y, level, rw, rh, channels=4)
            assert np.array_equal(a, b), "level %d region %d,%d %dx%d differs" % (
                level, x, y, rw, rh)
            compared += a.size
        locs = random_locations(rng, w, h, ds, patches, 224)
        got_a = list(local.batches(locs, (224, 224), level, batch_size=batch_size, num_workers=2))
        got_b = list(other.batches(locs, (224, 224), level, batch_size=batch_size, num_workers=2))
        assert len(got_a) == len(got_b)
        for (pa, ia), (pb, ib) in zip(got_a, got_b):
            assert np.array_equal(ia, ib) and np.array_equal(pa, pb), "level %d batch" % level
            compared += pa.size
    for name in local.associated_names:
        a, b = local.read_associated(name, channels=4), other.read_associated(name, channels=4)
        assert np.array_equal(a, b), name
        compared += a.size
    return compared
