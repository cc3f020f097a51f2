"""tessera.torch.PatchDataset under torch.utils.data.DataLoader (in-process, forked and spawned
workers, DDP ranks), and a plain map-style Dataset holding a CuImage.

Expected patches are tessera's own single reads (CuImage.read_region of one location), whose
pixels the differential tests hold equal to OpenSlide's and libvips'. Every location's patch is
distinct, so each patch a loader yields names the location it came from."""

import gc
import os

import numpy as np
import pytest
import torch
import torch.utils.data

import tessera
import tessera.torch
from tessera import CuImage
from tessera.torch import PatchDataset

SLIDE = "jpeg-t128-pyr"  # 1024 x 768 at level 0, 128 x 128 tiles, four levels
SIZE = (48, 40)          # (width, height)
N = 23                   # not a multiple of the batch size nor of the number of workers
BATCH = 4


def make_locations():
    """N level-0 corners, one reaching past the right edge, several sharing tiles, none
    overlapping the source picture's flat red disc (centre (399, 297), radius 150: patches
    inside it would all be alike)."""
    locs = []
    i = 0
    while len(locs) < N - 1:
        x, y = 128 + (97 * i) % 840, 20 + (61 * i) % 700
        i += 1
        if x + SIZE[0] > 249 and x < 550 and y + SIZE[1] > 147 and y < 448:
            continue
        locs.append((x, y))
    locs.append((1000, 300))
    return np.array(locs, dtype=np.int64)


class Case:
    def __init__(self, path):
        self.path = path
        self.locs = make_locations()
        with CuImage(path) as img:
            self.expected = [np.array(img.read_region((int(x), int(y)), SIZE, 0))
                             for x, y in self.locs]
            res = img.resolutions
        self.tile = res["level_tile_sizes"][0]
        self.dims = res["level_dimensions"][0]
        self.index = {e.tobytes(): i for i, e in enumerate(self.expected)}
        assert len(self.index) == N, "the fixture's patches must be distinct"

    def which(self, patch):
        """The location index a (H, W, 3) patch was read at."""
        patch = np.asarray(patch)
        assert patch.shape == (SIZE[1], SIZE[0], 3) and patch.dtype == np.uint8
        i = self.index.get(patch.tobytes())
        assert i is not None, "a patch that is no single read of any location"
        return i

    def indices(self, batch):
        """The location indices of a (B, H, W, 3) uint8 tensor, in order."""
        assert isinstance(batch, torch.Tensor) and batch.dtype == torch.uint8
        assert batch.ndim == 4 and tuple(batch.shape[1:]) == (SIZE[1], SIZE[0], 3)
        return [self.which(p) for p in batch.numpy()]

    def batches(self, indices):
        """The expected (B, H, W, 3) batches of BATCH of these location indices, in order."""
        return [np.stack([self.expected[i] for i in indices[s:s + BATCH]])
                for s in range(0, len(indices), BATCH)]


@pytest.fixture(scope="module")
def case(slides):
    return Case(slides.path(SLIDE))


@pytest.fixture(autouse=True)
def restore_cache():
    """Each test starts and ends with no cache in this process."""
    CuImage.cache("nocache")
    yield
    CuImage.cache("nocache")


def shares(n, parts):
    return [list(range(n * k // parts, n * (k + 1) // parts)) for k in range(parts)]


def loader(ds, workers, context=None):
    """A DataLoader passing PatchDataset's batches through as they are (batch_size=None)."""
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                       multiprocessing_context=context)


def check_worker_batches(case, got, nshares):
    """got: the loader's batches (as location index lists) in the order they came. Each worker
    reads its contiguous share in BATCH-sized batches, in order; the loader interleaves them."""
    want = shares(N, nshares)
    per_share = [[] for _ in want]
    for idx in got:
        owner = [k for k, s in enumerate(want) if idx[0] in s]
        assert len(owner) == 1
        per_share[owner[0]].append(idx)
    for share, batches in zip(want, per_share):
        assert batches == [share[s:s + BATCH] for s in range(0, len(share), BATCH)]
    assert sorted(i for idx in got for i in idx) == list(range(N))  # each location once


# ---- in-process ----------------------------------------------------------------------------


def test_in_process_batches_equal_single_reads_in_order(case):
    ds = PatchDataset(case.path, case.locs, SIZE, batch_size=BATCH, num_workers=2)
    got = list(loader(ds, 0))
    want = case.batches(list(range(N)))
    assert [tuple(b.shape) for b in got] == [w.shape for w in want]
    assert [b.shape[0] for b in got] == [4, 4, 4, 4, 4, 3]
    for b, w in zip(got, want):
        assert b.dtype == torch.uint8
        np.testing.assert_array_equal(b.numpy(), w)


def test_batch_size_1_yields_items(case):
    ds = PatchDataset(case.path, case.locs[:5], SIZE, batch_size=1)
    got = list(ds)
    assert [tuple(t.shape) for t in got] == [(SIZE[1], SIZE[0], 3)] * 5
    assert [case.which(t.numpy()) for t in got] == list(range(5))


def test_level_drop_last_and_rgba(case):
    locs = case.locs[:11]
    with CuImage(case.path) as img:
        want = [np.asarray(img.read_region((int(x), int(y)), (20, 16), 1, channels=4, fill=9))
                for x, y in locs]
    ds = PatchDataset(case.path, locs, (20, 16), level=1, batch_size=BATCH, drop_last=True,
                      channels=4, fill=9, num_workers=1, prefetch_factor=1)
    got = [t.numpy() for t in loader(ds, 0)]
    assert len(got) == 2  # 11 locations: two whole batches of 4, the short one dropped
    np.testing.assert_array_equal(np.concatenate(got), np.stack(want[:8]))


def test_tensors_share_the_batch_memory(case, monkeypatch):
    made = []
    as_tensor = tessera.torch._as_tensor

    def spy(batch):
        t = as_tensor(batch)
        made.append((batch, t))
        return t

    monkeypatch.setattr(tessera.torch, "_as_tensor", spy)
    ds = PatchDataset(case.path, case.locs, SIZE, batch_size=BATCH, num_workers=2)
    got = list(ds)
    assert len(made) == len(got) == 6
    for (batch, t), g in zip(made, got):
        assert g is t
        assert isinstance(batch, tessera.Array)
        assert t.data_ptr() == batch.__array_interface__["data"][0]
        assert t.data_ptr() == np.asarray(batch).ctypes.data
    # the tensors alone keep the pixels alive: later batches (the library reuses released
    # buffers) leave them unchanged
    made.clear()
    del batch, t, g
    gc.collect()
    monkeypatch.undo()
    other = PatchDataset(case.path, case.locs[::-1].copy(), SIZE, batch_size=BATCH)
    assert len(list(other)) == 6
    for t, w in zip(got, case.batches(list(range(N)))):
        np.testing.assert_array_equal(t.numpy(), w)


def test_shuffle_seed_and_epoch(case):
    def order(ds):
        return [case.which(t.numpy()) for t in ds]

    ds = PatchDataset(case.path, case.locs, SIZE, batch_size=1, shuffle=True, seed=7)
    first = order(ds)
    assert sorted(first) == list(range(N))
    assert first != list(range(N))
    assert order(ds) == first  # reproducible
    assert order(PatchDataset(case.path, case.locs, SIZE, batch_size=1, shuffle=True,
                              seed=7)) == first
    ds.set_epoch(1)
    second = order(ds)
    assert sorted(second) == list(range(N)) and second != first
    again = PatchDataset(case.path, case.locs, SIZE, batch_size=1, shuffle=True, seed=7)
    again.set_epoch(1)
    assert order(again) == second
    # epoch e shuffles with seed + e, as documented
    assert order(PatchDataset(case.path, case.locs, SIZE, batch_size=1, shuffle=True,
                              seed=8)) == second
    # the order is the library's seeded shuffle of the locations
    with CuImage(case.path) as img:
        lib = [b.indices[0] for b in img.read_region(case.locs, SIZE, batch_size=1,
                                                     shuffle=True, seed=8)]
    assert second == lib


def test_ddp_ranks_partition_the_locations(case, monkeypatch):
    got = []
    for rank in range(2):
        monkeypatch.setattr(tessera.torch, "_rank_and_world", lambda r=rank: (r, 2))
        ds = PatchDataset(case.path, case.locs, SIZE, batch_size=BATCH)
        got.append([i for b in ds for i in case.indices(b)])
    assert got == shares(N, 2)


# ---- DataLoader worker processes -----------------------------------------------------------


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_yield_each_location_once(case, context):
    ds = PatchDataset(case.path, case.locs, SIZE, batch_size=BATCH, num_workers=2)
    got = []
    for b in loader(ds, 2, context):
        idx = case.indices(b)
        np.testing.assert_array_equal(b.numpy(), case.batches(idx)[0])
        got.append(idx)
    check_worker_batches(case, got, 2)


def test_workers_shuffle_within_their_share(case):
    ds = PatchDataset(case.path, case.locs, SIZE, batch_size=1, shuffle=True, seed=3)
    ds.set_epoch(2)
    got = [case.which(t.numpy()) for t in loader(ds, 2, "fork")]
    assert sorted(got) == list(range(N))
    with CuImage(case.path) as img:
        for share in shares(N, 2):
            mine = [i for i in got if i in share]
            lib = [share[0] + b.indices[0] for b in img.read_region(
                case.locs[share[0]:share[-1] + 1], SIZE, batch_size=1, shuffle=True, seed=5)]
            assert mine == lib
            assert mine != share


def test_ddp_rank_with_workers(case, monkeypatch):
    # rank 1 of 2 with 2 forked workers (which inherit the patched function): shares 2 and 3 of 4
    monkeypatch.setattr(tessera.torch, "_rank_and_world", lambda: (1, 2))
    ds = PatchDataset(case.path, case.locs, SIZE, batch_size=BATCH)
    got = [case.indices(b) for b in loader(ds, 2, "fork")]
    all4 = shares(N, 4)
    assert sorted(i for idx in got for i in idx) == all4[2] + all4[3]
    for share in all4[2:]:
        assert [idx for idx in got if idx[0] in share] == [
            share[s:s + BATCH] for s in range(0, len(share), BATCH)]


def tiles_touched(case, locs):
    """The level-0 tiles (column, row) the patches at locs cover, inside the image."""
    (tw, th), (width, height) = case.tile, case.dims
    out = set()
    for x, y in locs:
        x0, x1 = max(int(x), 0), min(int(x) + SIZE[0], width) - 1
        y0, y1 = max(int(y), 0), min(int(y) + SIZE[1], height) - 1
        if x0 > x1 or y0 > y1:
            continue
        out.update((tx, ty) for ty in range(y0 // th, y1 // th + 1)
                   for tx in range(x0 // tw, x1 // tw + 1))
    return out


def coverable(case, locs):
    """The tiles the patches at locs could cache at a first miss: those three quarters of
    which lie in the bounding box of the patches' parts in them (one job may paint them all,
    and its union is what decides)."""
    (tw, th), (width, height) = case.tile, case.dims
    box = {}
    for x, y in locs:
        for t in tiles_touched(case, [(x, y)]):
            x0, y0 = max(int(x), t[0] * tw), max(int(y), t[1] * th)
            x1 = min(int(x) + SIZE[0], (t[0] + 1) * tw, width)
            y1 = min(int(y) + SIZE[1], (t[1] + 1) * th, height)
            b = box.get(t, (x0, y0, x1, y1))
            box[t] = (min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1))
    out = set()
    for (tx, ty), (x0, y0, x1, y1) in box.items():
        ew, eh = min(tw, width - tx * tw), min(th, height - ty * th)
        if (x1 - x0) * (y1 - y0) * 4 >= ew * eh * 3:
            out.add((tx, ty))
    return out


def test_shared_memory_cache_shares_tiles_across_workers(case):
    # both workers read the same locations twice (the list four times: worker 0 gets the first
    # two copies, worker 1 the last two), so every tile is wanted by both processes, and by
    # each a second time after its first read of it is done
    locs = np.concatenate([case.locs] * 4)
    # the ghost remembers a tenth of the capacity's worth of misses: a copy of the list's
    ds = PatchDataset(case.path, locs, SIZE, batch_size=BATCH, num_workers=1,
                      cache="shared_memory", cache_memory_capacity=256)
    cache = CuImage.cache()
    assert cache.type == "shared_memory" and cache.name == ds.cache_name
    assert [c for c in tessera.shared_caches() if c["name"].lstrip("/") == ds.cache_name]
    assert cache.size == 0  # building the dataset checked its options without reading
    cache.record(True)      # count hits and misses here and in the workers forked from here
    assert (cache.hit_count, cache.miss_count) == (0, 0)
    got = [case.indices(b) for b in loader(ds, 2, "fork")]
    assert sorted(i for idx in got for i in idx) == sorted(list(range(N)) * 4)
    tiles = tiles_touched(case, case.locs)
    assert len(tiles) > 8
    # each tile is cached, once, for both workers (at the second miss of it by one of them:
    # the first only leaves it in that worker's ghost, unless the patches of one job cover
    # three quarters of it); so each was missed twice at least, but for those, and looked up
    # once at least in each copy of the list
    assert cache.size == len(tiles) and cache.evict_count == 0
    assert cache.miss_count >= 2 * len(tiles) - len(coverable(case, case.locs))
    assert cache.hit_count + cache.miss_count >= 4 * len(tiles)


def test_shared_memory_cache_attached_by_name_in_spawned_workers(case):
    name = "tessera-test-torch-spawn-%d" % os.getpid()
    ds = PatchDataset(case.path, case.locs, SIZE, batch_size=BATCH, num_workers=1,
                      cache="shared_memory", cache_memory_capacity=64, cache_name=name,
                      cache_record_stat=True)
    assert CuImage.cache().name == name and CuImage.cache().size == 0
    got = [case.indices(b) for b in loader(ds, 2, "spawn")]
    check_worker_batches(case, got, 2)
    # the spawned workers configured nothing of their own: they used this process's segment,
    # missing each tile once at least (and caching those one of them missed twice)
    tiles = tiles_touched(case, case.locs)
    st = CuImage.cache()
    assert st.miss_count >= len(tiles) and st.size <= len(tiles) and st.evict_count == 0
    CuImage.cache("nocache")  # the last user detaches: the segment goes
    assert not [c for c in tessera.shared_caches() if c["name"].lstrip("/") == name]


# ---- a map-style Dataset holding a CuImage -------------------------------------------------


class RegionDataset(torch.utils.data.Dataset):
    """What users write by hand: a Dataset with an open CuImage (pickled by path for spawned
    workers, inherited by forked ones)."""

    def __init__(self, img, locs):
        self.img = img
        self.locs = locs

    def __len__(self):
        return len(self.locs)

    def __getitem__(self, i):
        x, y = self.locs[i]
        return torch.from_numpy(np.asarray(self.img.read_region((int(x), int(y)), SIZE, 0)))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_map_style_dataset_with_a_cuimage(case, context):
    with CuImage(case.path) as img:
        img.read_region((0, 0), (300, 300), 0, num_workers=2)  # the pool runs before the fork
        ds = RegionDataset(img, case.locs)
        dl = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=2,
                                         multiprocessing_context=context)
        got = [b.numpy() for b in dl]
    want = case.batches(list(range(N)))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ---- bad arguments -------------------------------------------------------------------------


def test_bad_arguments(case):
    with pytest.raises(ValueError, match="locations"):
        PatchDataset(case.path, np.zeros((4, 3), np.int64), SIZE)
    with pytest.raises(ValueError, match="locations"):
        PatchDataset(case.path, [1, 2, 3, 4], SIZE)
    with pytest.raises(TypeError, match="integers"):
        PatchDataset(case.path, case.locs.astype(np.float64), SIZE)
    with pytest.raises(ValueError, match="cache"):
        PatchDataset(case.path, case.locs, SIZE, cache="bogus")
    with pytest.raises(ValueError, match="level"):
        PatchDataset(case.path, case.locs, SIZE, level=9)
    with pytest.raises(OSError):
        PatchDataset(case.path + ".missing", case.locs, SIZE)
    # the rest of the options are checked when the dataset is built, not in a worker
    for size, kw, what in [((0, 8), {}, "width"), ((8, 0), {}, "height"),
                           (SIZE, {"batch_size": 0}, "batch_size"),
                           (SIZE, {"num_workers": -1}, "num_workers"),
                           (SIZE, {"prefetch_factor": 0}, "prefetch_factor"),
                           (SIZE, {"channels": 5}, "channels"), (SIZE, {"fill": 256}, "fill")]:
        with pytest.raises(ValueError, match=what):
            PatchDataset(case.path, case.locs, size, **kw)
    assert CuImage.cache().type == "nocache"  # nothing was configured on the way
