"""PyTorch: an IterableDataset of patch batches read by tessera.

    from tessera.torch import PatchDataset
    ds = PatchDataset("slide.svs", locations, (224, 224), batch_size=64, num_workers=4,
                      cache="shared_memory")
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    for batch in loader:            # uint8 tensors (64, 224, 224, 3)
        ...

Each DataLoader worker (and each DDP rank) reads its own contiguous share of the locations,
through its own batch iterator. Tensors share the batch's memory (no copy); DataLoader worker
processes then send them to the main process as PyTorch does for any tensor.
"""

import os
import uuid

import numpy as np
import torch
import torch.utils.data

from ._image import Slide, _absolute_path

__all__ = ["PatchDataset"]


def _as_tensor(batch):
    """The batch as a uint8 tensor over the same memory; the tensor keeps it alive."""
    return torch.from_numpy(np.asarray(batch))


def _rank_and_world():
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PatchDataset(torch.utils.data.IterableDataset):
    """Batches of patches of one slide, as uint8 tensors (batch_size, height, width, channels)
    (or (height, width, channels) when batch_size is 1).

    slide: a path, a Slide or a CuImage (only its path is kept: each worker opens the file itself).
    locations: (n, 2) level-0 (x, y) corners, anything NumPy turns into that; converted to
    int64 once, here. size: (width, height) of `level`.
    num_workers: tessera's decoding threads in each DataLoader worker (0: in its own thread).
    shuffle, seed: visit each worker's share in a seeded random order; set_epoch(e) changes
    the order every epoch (seed + e), as DistributedSampler does.
    cache: None (leave the process's cache as it is), 'per_process' (one per worker) or
    'shared_memory' (one for all workers, made here, in the process that builds the dataset,
    and attached by name in spawned workers); cache_memory_capacity in MiB; cache_record_stat
    counts hits and misses (Slide.cache() in the main process shows a shared cache's).
    """

    def __init__(self, slide, locations, size, level=0, batch_size=64, *, num_workers=0,
                 prefetch_factor=2, drop_last=False, shuffle=False, seed=0, channels=3,
                 fill=None, cache=None, cache_memory_capacity=1024, cache_name=None,
                 cache_record_stat=False):
        super().__init__()
        self.path = _absolute_path(slide)
        locs = np.asarray(locations)
        if locs.size == 0:
            locs = locs.reshape(0, 2)
        if locs.ndim != 2 or locs.shape[1] != 2:
            raise ValueError("locations must be (n, 2) (x, y) pairs, not shape %s" %
                             (locs.shape,))
        if not np.issubdtype(locs.dtype, np.integer):
            raise TypeError("locations must be integers, not %s" % locs.dtype)
        self.locations = np.ascontiguousarray(locs, dtype=np.int64)
        self.size = (int(size[0]), int(size[1]))
        self.level = int(level)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.prefetch_factor = int(prefetch_factor)
        self.drop_last = bool(drop_last)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.channels = int(channels)
        self.fill = fill
        self.epoch = 0
        if cache not in (None, "per_process", "shared_memory"):
            raise ValueError("cache must be None, 'per_process' or 'shared_memory', not %r" %
                             (cache,))
        self.cache = cache
        self.cache_memory_capacity = int(cache_memory_capacity)
        self.cache_record_stat = bool(cache_record_stat)
        self.cache_name = None
        if cache == "shared_memory":
            self.cache_name = cache_name or "tessera-torch-%d-%s" % (os.getpid(),
                                                                     uuid.uuid4().hex[:12])
            self._configure_cache()
        with Slide(self.path) as img:  # fail here, not in a worker, on a bad file, level,
            self._batches(img, self.locations[:0]).close()  # size or option (reads nothing)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _configure_cache(self):
        """Configures the cache unless this process has it already: a forked DataLoader
        worker inherits the parent's, a spawned one attaches to the shared segment by name."""
        if self.cache is None:
            return
        current = Slide.cache()
        if current.type == self.cache and (self.cache != "shared_memory" or
                                           current.name == self.cache_name):
            return
        Slide.cache(self.cache, memory_capacity=self.cache_memory_capacity,
                    record_stat=self.cache_record_stat, name=self.cache_name)

    def _share(self):
        """This worker's contiguous slice of the locations (DDP rank, then DataLoader worker)."""
        rank, world = _rank_and_world()
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        shares, share = world * workers, rank * workers + worker
        n = len(self.locations)
        return self.locations[n * share // shares:n * (share + 1) // shares]

    def _batches(self, img, locs):
        return img.read_region(locs, self.size, self.level, num_workers=self.num_workers,
                               batch_size=self.batch_size, drop_last=self.drop_last,
                               prefetch_factor=self.prefetch_factor, shuffle=self.shuffle,
                               seed=(self.seed + self.epoch) % (1 << 64),
                               channels=self.channels, fill=self.fill)

    def __iter__(self):
        self._configure_cache()
        locs = self._share()
        with Slide(self.path) as img:
            with self._batches(img, locs) as it:
                for batch in it:
                    yield _as_tensor(batch)
