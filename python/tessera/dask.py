"""Dask: slides as dask arrays, and patch batches of many slides as dask tasks.

    import tessera.dask
    level1 = tessera.dask.to_dask_array("slide.svs", level=1)          # (H, W, 3) uint8
    patches = tessera.dask.read_patches([("a.svs", locs_a), ("b.svs", locs_b)], (224, 224))
    patches.sum(axis=(1, 2)).compute()      # on a dask.distributed cluster: its workers read

Tasks carry the slide's path, not an open slide: each worker process opens a slide once and
keeps it (a few per process) for the tasks that follow.
"""

import collections
import math
import numbers
import os
import threading
import uuid

import dask
import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from ._image import Slide, _absolute_path, _is_url

__all__ = ["to_dask_array", "read_patches"]

_OPEN_MAX = 16
_open = collections.OrderedDict()  # path -> Slide, most recently used last
_open_lock = threading.Lock()


def _slide(path):
    """An open slide for path, shared by the tasks of this process."""
    with _open_lock:
        img = _open.pop(path, None)
        if img is None:
            img = Slide(path)
        _open[path] = img
        while len(_open) > _OPEN_MAX:  # not closed: a task may still hold it; it closes
            _open.popitem(last=False)      # when the last one lets it go
        return img


def _path(slide):
    return os.fsdecode(_absolute_path(slide))


def _level0(coord, downsample):
    """The smallest level-0 coordinate whose level pixel (floor(c / downsample), as the
    library computes it) is `coord`."""
    if downsample == 1.0:
        return coord
    x = int(math.floor(coord * downsample))
    while math.floor(x / downsample) < coord:
        x += 1
    while x > 0 and math.floor((x - 1) / downsample) >= coord:
        x -= 1
    return x


def _read_block(path, level, downsample, lx, ly, width, height, channels, fill):
    img = _slide(path)
    arr = img.read_region((_level0(lx, downsample), _level0(ly, downsample)), (width, height),
                          level, channels=channels, fill=fill)
    return np.asarray(arr)


def _split(total, step):
    return tuple(min(step, total - i) for i in range(0, total, step)) or (0,)


def _chunk_sizes(chunks):
    if isinstance(chunks, int):
        chunks = (chunks, chunks)
    if len(chunks) not in (2, 3):
        raise ValueError("chunks is (rows, columns), not %r" % (chunks,))
    rows, cols = int(chunks[0]), int(chunks[1])
    if rows < 1 or cols < 1:
        raise ValueError("chunks must be at least 1 x 1, not %r" % (chunks,))
    return rows, cols


def to_dask_array(slide, level=0, chunks=(2048, 2048), *, channels=3, fill=None):
    """Level `level` of a slide (a path or a Slide or CuImage) as a lazy dask array (height, width,
    channels) of uint8, chunked (rows, columns) = chunks; each chunk is one tessera read."""
    path = _path(slide)
    rows, cols = _chunk_sizes(chunks)
    if isinstance(level, bool) or not isinstance(level, numbers.Integral):
        raise TypeError("level must be an integer, not %s" % type(level).__name__)
    level = int(level)
    with Slide(path) as img:
        nlevels = img.level_count
        if not 0 <= level < nlevels:
            raise ValueError("level %r does not exist: %s has levels 0..%d" % (
                level, path, nlevels - 1))
        info = img.level_info(level)
    if channels not in (3, 4):
        raise ValueError("channels must be 3 or 4, not %r" % (channels,))
    row_sizes, col_sizes = _split(info["height"], rows), _split(info["width"], cols)
    if _is_url(path):
        # Nothing here says what the object is now (its ETag stays inside the library): a
        # name of its own, so that a graph is never taken for one over an older object.
        version = (uuid.uuid4().hex,)
    else:
        st = os.stat(path)
        version = (st.st_size, st.st_mtime_ns)
    name = "tessera-level-" + dask.base.tokenize(path, *version, level, row_sizes, col_sizes,
                                                 channels, fill)
    ds = info["downsample"]
    graph = {}
    y = 0
    for i, h in enumerate(row_sizes):
        x = 0
        for j, w in enumerate(col_sizes):
            graph[(name, i, j, 0)] = (_read_block, path, level, ds, x, y, w, h, channels, fill)
            x += w
        y += h
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=())
    return da.Array(hlg, name, chunks=(row_sizes, col_sizes, (channels,)), dtype=np.uint8)


def _read_batch(path, locations, width, height, level, channels, fill, num_workers):
    img = _slide(path)
    it = img.read_region(locations, (width, height), level, num_workers=num_workers,
                         batch_size=len(locations), channels=channels, fill=fill)
    with it:
        batch = next(iter(it))
    return np.asarray(batch).reshape(len(locations), height, width, channels)


def read_patches(slides, size, level=0, batch_size=256, *, channels=3, fill=None,
                 num_workers=0):
    """Patches of many slides as one dask array (N, height, width, channels) of uint8.

    slides: an iterable of (slide, locations) with slide a path, a Slide or a CuImage and locations
    (n, 2) level-0 (x, y) corners. Each task reads one batch of up to batch_size patches of
    one slide (with num_workers tessera threads); chunks along the first axis are those
    batches, in order: slide by slide, location by location.
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError("size must be at least 1 x 1, not %r" % (size,))
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1, not %r" % (batch_size,))
    parts = []
    for slide, locations in slides:
        path = _path(slide)
        locs = np.asarray(locations)
        if locs.size == 0:
            continue
        if locs.ndim != 2 or locs.shape[1] != 2 or not np.issubdtype(locs.dtype, np.integer):
            raise ValueError("the locations of %s must be (n, 2) integers, not %s %s" % (
                path, locs.dtype, locs.shape))
        locs = np.ascontiguousarray(locs, dtype=np.int64)
        for start in range(0, len(locs), batch_size):
            chunk = locs[start:start + batch_size]
            task = dask.delayed(_read_batch, pure=True)(path, chunk, width, height, level,
                                                       channels, fill, num_workers)
            parts.append(da.from_delayed(task, shape=(len(chunk), height, width, channels),
                                         dtype=np.uint8))
    if not parts:
        return da.zeros((0, height, width, channels), dtype=np.uint8)
    return da.concatenate(parts, axis=0)
