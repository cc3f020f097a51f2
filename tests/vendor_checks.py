"""What every vendor's tests check the same way: the batch reader and `tessera bench` read a
slide of the vendor as single reads do (test_leica, test_ventana, test_mirax, test_sakura,
test_dicom)."""

import json
import subprocess

import numpy as np

import tessera_ctypes as T

# `tessera bench` without a cache and through both tile caches
CACHES = ([], ["--cache", "per_process:16"], ["--cache", "shared_memory:16"])


def spread_locations(W, H, ds, n=60, seed=3, inner=(110, 80)):
    """Level-0 corners of patches over a W x H level of downsample ds: across its edges and
    corners, outside it, and n at random."""
    rng = np.random.default_rng(seed)
    pts = [(-20, -10), (W - 30, H - 20), (0, 0), inner]
    pts += [(int(rng.integers(-40, W)), int(rng.integers(-40, H))) for _ in range(n)]
    return [(int(x * ds), int(y * ds)) for x, y in pts]


def level_locations(s, level, **kw):
    """spread_locations over level `level` of the open slide s."""
    W, H = s.level_dimensions()[level]
    return spread_locations(W, H, s.level_info(level).downsample, **kw)


def check_batches_equal_single_reads(path, locs, size, level, batch_size=7, num_workers=2):
    """Every patch of a batch stream equals the same region read alone, and the patches are
    not all one colour (so the check compares pixels, not fill)."""
    with T.open_slide(path) as s:
        got = {}
        for arr, idx in s.batches(locs, size, level, batch_size=batch_size,
                                  num_workers=num_workers):
            for a, i in zip(arr, idx):
                got[int(i)] = a
        assert sorted(got) == list(range(len(locs)))
        want = [s.read_region(x, y, level, *size) for x, y in locs]
    for i, (x, y) in enumerate(locs):
        assert np.array_equal(got[i], want[i]), (i, x, y)
    assert np.stack(want).std() > 0


def check_bench_checksum(cli, path, locs, size, level, tmp_path, workers=2, caches=CACHES):
    """`tessera bench --locations` reports as many patches and the checksum (the sum of every
    RGB byte) of the same regions read one by one, with each cache."""
    with T.open_slide(path) as s:
        want = sum(int(s.read_region(x, y, level, *size).astype(np.int64).sum())
                   for x, y in locs)
    loc = tmp_path / "locations.txt"
    loc.write_text("".join("%d %d\n" % p for p in locs))
    for cache in caches:
        r = subprocess.run([cli, "bench", path, "--locations", str(loc), "--size",
                            "%d,%d" % size, "--level", str(level), "--workers", str(workers),
                            "--json"] + list(cache), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (cache, r.stderr)
        doc = json.loads(r.stdout)
        assert doc["patches"] == len(locs), cache
        assert doc["checksum"] == want, cache


def check_truncated_copy(cli, source, path, fraction):
    """A copy of the slide at `source` cut to `fraction` of its bytes, written at `path`: the
    open fails with a message, or the slide opens and each level's read (up to 4096 x 4096)
    works or fails with a message; `tessera info` exits 0 or 1, never by a signal."""
    with open(source, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * fraction)])
    st, msg, s = T.open_status(path)
    if s is None:
        assert st != T.OK and msg, (st, msg)
    else:
        with s:
            for level in range(s.level_count):
                W, H = s.level_dimensions()[level]
                try:
                    s.read_region(0, 0, level, min(W, 4096), min(H, 4096))
                except T.TesseraError as e:
                    assert str(e)
    r = subprocess.run([cli, "info", path], capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1) and (r.returncode == 0 or r.stderr.strip()), r
