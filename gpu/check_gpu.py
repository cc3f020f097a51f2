"""Checks of tessera's CUDA batches on a real GPU (or on the simulator, for its own test).

    PYTHONPATH=build/python python3 gpu/check_gpu.py SLIDE [SLIDE ...] [--patches N]

For each slide: every CUDA batch against the CPU batch of the same locations and options
(levels 0-2; patches inside, across tile seams, across edges and outside; RGB and RGBA; the
default fill and another; with and without workers): the largest and mean absolute difference
per sample (nvJPEG rounds differently from libjpeg-turbo; the target is at most 2). Then, on
the first slide: device memory over a stream of N patches (default 10 000) must not grow after
the first batches; iterators abandoned at every point, with batches held past them, must give
all their device memory back. Device memory is read with cudaMemGetInfo from the CUDA runtime
tessera loaded. Prints one JSON object; exits 1 when a check fails.
"""
import argparse
import ctypes
import gc
import json
import sys

import numpy as np

from tessera import CuImage

MAX_DIFFERENCE = 2


def runtime():
    """The libcudart tessera loaded (it is in the process after the first CUDA read)."""
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libcudart.so" in line}
    rt = ctypes.CDLL(sorted(paths)[0])
    rt.cudaMemGetInfo.argtypes = [ctypes.POINTER(ctypes.c_size_t)] * 2
    return rt


def device_used(rt):
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    assert rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0
    return total.value - free.value


def locations(rng, w, h, ds, pw, ph, n):
    kind = rng.integers(0, 4, n)
    x = np.where(kind == 0, rng.integers(0, max(w - pw, 1), n), rng.integers(-pw, w + 5, n))
    y = np.where(kind == 0, rng.integers(0, max(h - ph, 1), n), rng.integers(-ph, h + 5, n))
    x = np.where(kind == 3, -2 * pw, x)  # wholly outside
    return np.stack([(x * ds).astype(np.int64), (y * ds).astype(np.int64)], 1)


def compare(path, rng):
    img = CuImage(path)
    res = img.resolutions
    worst, total, samples, cases, decoders = 0, 0.0, 0, 0, set()
    for level in range(min(res["level_count"], 3)):
        w, h = res["level_dimensions"][level]
        ds = res["level_downsamples"][level]
        for k, (pw, ph) in enumerate([(224, 224), (256, 256), (97, 301), (512, 64)]):
            locs = locations(rng, w, h, ds, pw, ph, 48)
            kw = dict(level=level, batch_size=(16, 7, 1, 32)[k], num_workers=(0, 4)[k % 2],
                      channels=3 + k % 2, fill=None if k < 2 else 200)
            cpu = img.read_region(locs, (pw, ph), **kw)
            gpu = img.read_region(locs, (pw, ph), device="cuda", **kw)
            decoders.add(gpu.decoder)
            for c, g in zip(cpu, gpu):
                c = np.asarray(c).astype(np.int16)
                g = np.asarray(g.cpu()).astype(np.int16)
                assert c.shape == g.shape, (c.shape, g.shape)
                d = np.abs(c - g)
                worst = max(worst, int(d.max()))
                total += float(d.sum())
                samples += d.size
            cases += 1
    return {"slide": path, "cases": cases, "decoders": sorted(decoders),
            "max_difference": worst, "mean_difference": total / max(samples, 1),
            "ok": worst <= MAX_DIFFERENCE}


def stream(path, n, rt):
    img = CuImage(path)
    w, h = img.resolutions["level_dimensions"][0]
    rng = np.random.default_rng(1)
    locs = np.stack([rng.integers(0, w - 224, n), rng.integers(0, h - 224, n)], 1)
    used = []
    for i, b in enumerate(img.read_region(locs, (224, 224), batch_size=64, num_workers=4,
                                          device="cuda")):
        if i >= 4 and i % 8 == 0:
            used.append(device_used(rt))
    del b
    return {"patches": n, "device_used_first": used[0], "device_used_last": used[-1],
            "device_used_max": max(used), "ok": max(used) <= used[0]}


def abandon(path, rt):
    img = CuImage(path)
    w, h = img.resolutions["level_dimensions"][0]
    rng = np.random.default_rng(2)
    locs = np.stack([rng.integers(-100, w, 400), rng.integers(-100, h, 400)], 1)
    for b in img.read_region(locs[:64], (224, 224), batch_size=16, device="cuda"):
        pass  # warm: nvJPEG's own buffers, made once per process
    del b
    gc.collect()
    base = device_used(rt)
    kept = []
    for taken in range(6):
        for workers in (0, 4):
            it = iter(img.read_region(locs, (224, 224), batch_size=16, num_workers=workers,
                                      prefetch_factor=3, device="cuda"))
            for _ in range(taken):
                kept.append(next(it))
            del it
            gc.collect()
    held = device_used(rt)
    del kept
    gc.collect()
    after = device_used(rt)
    return {"device_used_before": base, "while_batches_held": held, "after": after,
            "ok": after <= base}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slides", nargs="+")
    ap.add_argument("--patches", type=int, default=10000)
    a = ap.parse_args()
    rng = np.random.default_rng(7)
    report = {"pixels": [compare(p, rng) for p in a.slides]}
    rt = runtime()
    report["stream"] = stream(a.slides[0], a.patches, rt)
    report["abandoned"] = abandon(a.slides[0], rt)
    ok = all(r["ok"] for r in report["pixels"]) and report["stream"]["ok"] and \
        report["abandoned"]["ok"]
    report["ok"] = ok
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
