"""device='cuda' from Python and the command, on the CUDA simulator (tests/c/sim_cuda.c, built as
libcudart.so.12 and libnvjpeg.so.12 in build/tests/sim; $TESSERA_SIM_CUDA names another folder).

The simulator runs the GPU path on the CPU: device memory the host cannot touch, work that
runs only when waited for, nvJPEG decoding with libjpeg (so pixels equal the CPU path's). Each
check runs in a fresh Python process with TESSERA_CUDA_PATH naming the simulator (the loader
looks once per process; the other tests need to see this machine's own answer). What it cannot
show is a real GPU's speed or nvJPEG's rounding: those are for gpu/verify.sh on a GPU machine.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import wsi_fixtures as F
from conftest import PYTHON_PACKAGE_DIR

SIM = os.environ.get("TESSERA_SIM_CUDA", os.path.join(F.REPO, "build", "tests", "sim"))
YCBCR = os.path.join(F.TESTDATA, "generic-jpeg-ycbcr-128tiles.tiff")
APERIO = os.path.join(F.TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")

PRELUDE = textwrap.dedent("""
    import ctypes, gc, os, sys
    import numpy as np
    import tessera
    from tessera import CuImage, _tessera
    sim = ctypes.CDLL(os.path.join(os.environ["TESSERA_CUDA_PATH"], "libcudart.so.12"))
    sim.sim_device_bytes.restype = ctypes.c_size_t
    sim.sim_pinned_bytes.restype = ctypes.c_size_t
    sim.sim_failures.restype = ctypes.c_long
    sim.sim_decoded_images.restype = ctypes.c_long

    def cpu_batches(img, locs, size, **kw):
        kw.pop("device", None)
        return [np.asarray(b).copy() for b in img.read_region(locs, size, **kw)]

    def gpu_batches(img, locs, size, **kw):
        return [np.asarray(b.cpu()) for b in img.read_region(locs, size, device="cuda", **kw)]

    # The vendor tests' two reads of locs at level (128 x 96 RGB on the calling thread,
    # 301 x 77 RGBA on two workers, batches of 4): the device's batches equal the CPU's.
    # Returns the CPU's batches of each read.
    def same_batches(img, locs, level):
        wants = []
        for k, size in enumerate([(128, 96), (301, 77)]):
            kw = dict(level=level, batch_size=4, num_workers=2 * k, channels=3 + k)
            want = cpu_batches(img, locs, size, **kw)
            got = gpu_batches(img, locs, size, **kw)
            assert len(got) == len(want)
            for g, c in zip(got, want):
                assert np.array_equal(g, c), (level, k)
            wants.append(want)
        return wants
""")


def run_checks(code, env=None, timeout=300):
    """Runs PRELUDE + code in a fresh process on the simulator; returns its stdout."""
    assert os.path.isfile(os.path.join(SIM, "libcudart.so.12")), "build the simulator: " + SIM
    full_env = dict(os.environ, PYTHONPATH=PYTHON_PACKAGE_DIR, TESSERA_CUDA_PATH=SIM)
    full_env.update(env or {})
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=full_env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sim_cuda:" not in r.stderr, r.stderr  # a misuse the simulator reported
    return r.stdout


# Generated JPEG slides whose levels go to nvJPEG (YCbCr), and some that must not.
GPU_SPECS = ["jpeg-t128-pyr", "jpeg-t240-pyr", "jpeg-t256x128-pyr", "jpeg-q50-sub",
             "jpeg-subifd-pyr", "odd-jpeg-pyr"]
CPU_SPECS = {"jpeg-q95-nosub": "cpu+copy", "gray-jpeg-pyr": "cpu+copy",
             "deflate-t512-pyr": "cpu+copy"}


@pytest.mark.parametrize("name", GPU_SPECS + sorted(CPU_SPECS))
def test_cuda_batches_equal_cpu_batches(slides, name):
    """Every level, every edge: patches inside, across tile seams and edges, outside; RGB and
    RGBA; fill; workers or not; shuffled. Byte-equal to the CPU's batches (the simulator decodes
    as libjpeg does)."""
    path = slides.path(name)
    expected = CPU_SPECS.get(name, "nvjpeg-default")
    out = run_checks("""
        img = CuImage(SLIDE)
        rng = np.random.default_rng(5)
        decoders = set()
        before = sim.sim_decoded_images()
        for level in range(img.resolutions["level_count"]):
            w, h = img.resolutions["level_dimensions"][level]
            ds = img.resolutions["level_downsamples"][level]
            for k, (pw, ph) in enumerate([(224, 224), (67, 131), (300, 20)]):
                xs = rng.integers(-pw, w + 10, 17)
                ys = rng.integers(-ph, h + 10, 17)
                locs = np.stack([(xs * ds).astype(np.int64), (ys * ds).astype(np.int64)], 1)
                kw = dict(level=level, batch_size=1 + k * 3, num_workers=k % 2 * 2,
                          channels=3 + k % 2, fill=None if k < 2 else 9, shuffle=k == 2,
                          seed=k)
                want = cpu_batches(img, locs, (pw, ph), **kw)
                got = gpu_batches(img, locs, (pw, ph), **kw)
                assert len(got) == len(want)
                for g, c in zip(got, want):
                    assert g.shape == c.shape and np.array_equal(g, c), (level, k)
            with img.read_region([(0, 0)], (16, 16), level=level, device="cuda") as it:
                decoders.add(it.decoder)
        print(sorted(decoders), sim.sim_decoded_images() - before, sim.sim_failures())
    """.replace("SLIDE", repr(path)))
    decoders, decoded, failures = out.split("] ")[0] + "]", *out.split("] ")[1].split()
    assert decoders == repr([expected])
    assert int(failures) == 0
    if expected == "cpu+copy":
        assert int(decoded) == 0, out
    else:
        assert int(decoded) > 0, out


def test_single_regions_and_whole_levels_on_cuda(slides):
    out = run_checks("""
        img = CuImage(SLIDE)
        a = img.read_region((100, 50), (256, 200), level=0, device="cuda")
        assert a.device == "cuda:0" and a.shape == (200, 256, 3), a
        assert np.array_equal(np.asarray(a.cpu()), np.asarray(img.read_region((100, 50), (256, 200))))
        whole = img.read_region(level=1, device="cuda")
        assert np.array_equal(np.asarray(whole.cpu()), np.asarray(img.read_region(level=1)))
        print("ok")
    """.replace("SLIDE", repr(slides.path("jpeg-t256-pyr"))))
    assert out.strip() == "ok"


def test_device_arrays_refuse_host_access_and_export_cuda():
    """No path reads device memory on the host (it would crash: the simulator maps it
    PROT_NONE): the buffer protocol, NumPy, iteration down to ints, pickling all refuse with
    the way out. __cuda_array_interface__ and __dlpack__ describe the device memory."""
    out = run_checks("""
        import pickle
        img = CuImage(SLIDE)
        it = img.read_region([(0, 0), (130, 40), (256, 256)], (64, 32), batch_size=3, device="cuda")
        b = next(iter(it))
        for attempt in (lambda: memoryview(b), lambda: np.asarray(b), lambda: bytes(b),
                        lambda: b[0][0][0][0], lambda: pickle.dumps(b),
                        lambda: b.__array_interface__):
            try:
                attempt()
            except (TypeError, BufferError) as e:
                assert "CUDA" in str(e) and ("cpu()" in str(e) or "cupy" in str(e)), e
            else:
                raise AssertionError("host access to a CUDA Array was allowed")
        cai = b.__cuda_array_interface__
        assert cai["shape"] == (3, 32, 64, 3) and cai["typestr"] == "|u1" and cai["version"] == 3
        assert cai["stream"] is None and cai["data"][1] is False
        assert b[1].__cuda_array_interface__["data"][0] == cai["data"][0] + 32 * 64 * 3
        assert b.__dlpack_device__() == (2, 0) and b[2].__dlpack_device__() == (2, 0)
        assert b.device == "cuda:0" and "device=cuda:0" in repr(b)
        # The DLPack capsule: kDLCUDA, the same pointer, and it keeps the batch alive.
        class Device(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int32), ("id", ctypes.c_int32)]
        class Tensor(ctypes.Structure):
            _fields_ = [("data", ctypes.c_void_p), ("device", Device), ("ndim", ctypes.c_int32),
                        ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                        ("lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
                        ("strides", ctypes.POINTER(ctypes.c_int64)), ("offset", ctypes.c_uint64)]
        cap = b.__dlpack__(stream=1)
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        t = Tensor.from_address(get(cap, b"dltensor"))
        assert (t.device.type, t.device.id, t.ndim) == (2, 0, 4) and t.data == cai["data"][0]
        assert [t.shape[i] for i in range(4)] == [3, 32, 64, 3]
        for bad in (dict(stream=0), dict(dl_device=(1, 0))):
            try:
                b.__dlpack__(**bad)
            except (ValueError, BufferError):
                pass
            else:
                raise AssertionError(bad)
        host = b.cpu()
        assert host.device == "cpu" and np.asarray(host).shape == (3, 32, 64, 3)
        assert host.cpu() is host
        held = _tessera._live()["batches_held"]
        del b
        gc.collect()
        assert _tessera._live()["batches_held"] == held, "the capsule let its batch go"
        del cap
        gc.collect()
        assert _tessera._live()["batches_held"] == held - 1
        print("ok", sim.sim_failures())
    """.replace("SLIDE", repr(YCBCR)))
    assert out.split() == ["ok", "0"]


def test_device_memory_flat_and_freed():
    """A long stream allocates its device buffers once; dropping iterators and arrays (at any
    point, in any order) gives all of it back."""
    out = run_checks("""
        img = CuImage(SLIDE)
        base, pinned = sim.sim_device_bytes(), sim.sim_pinned_bytes()
        rng = np.random.default_rng(1)
        locs = np.stack([rng.integers(0, 450, 3000), rng.integers(0, 330, 3000)], 1)
        seen = []
        for i, b in enumerate(img.read_region(locs, (60, 50), batch_size=30, num_workers=2,
                                              device="cuda")):
            if i >= 5:
                seen.append(sim.sim_device_bytes())
        assert max(seen) == min(seen), (min(seen), max(seen))
        assert sim.sim_device_bytes() > base  # the last batch, still held by `b`
        del b
        gc.collect()
        assert sim.sim_device_bytes() == base and sim.sim_pinned_bytes() == pinned
        # Abandoned: iterators dropped mid-stream, arrays kept past them, then dropped.
        kept = []
        for n in range(4):
            it = iter(img.read_region(locs[:200], (60, 50), batch_size=8, device="cuda",
                                      num_workers=n % 2, prefetch_factor=3))
            for _ in range(n):
                kept.append(next(it))
            del it
            gc.collect()
        assert all(np.asarray(k.cpu()).shape == (8, 50, 60, 3) for k in kept)
        assert sim.sim_device_bytes() > base
        del kept
        gc.collect()
        assert sim.sim_device_bytes() == base, (sim.sim_device_bytes(), base)
        print("ok", sim.sim_failures())
    """.replace("SLIDE", repr(YCBCR)))
    assert out.split() == ["ok", "0"]


def test_device_buffers_sized_by_the_patches_there_are():
    """A huge batch_size over two locations allocates buffers for two patches, on the device
    and in pinned host memory (one patch inside the level, made on the GPU; one over its edge,
    painted on the CPU and staged in pinned memory): 40000 of 224 x 224 used to be 6 GB each."""
    out = run_checks("""
        img = CuImage(SLIDE)
        base, pinned = sim.sim_device_bytes(), sim.sim_pinned_bytes()
        sim.sim_device_peak.restype = ctypes.c_size_t
        for workers in (0, 2):
            batches = list(img.read_region([[0, 0], [-10, -10]], (224, 224), batch_size=40000,
                                           num_workers=workers, prefetch_factor=4,
                                           device="cuda"))
            assert [b.shape for b in batches] == [(2, 224, 224, 3)], batches
            held_pinned = sim.sim_pinned_bytes() - pinned
            del batches
            gc.collect()
            print((sim.sim_device_peak() - base) >> 20, held_pinned >> 20)
    """.replace("SLIDE", repr(YCBCR)))
    for line in out.split("\n")[:-1]:
        device_mib, pinned_mib = map(int, line.split())
        assert device_mib < 64 and pinned_mib < 64, out


def test_tiny_tiles_on_cuda(tmp_path):
    """Tiles of a pixel or two are painted patch by patch on the CPU and copied (nothing per
    tile is listed): CUDA batches equal the CPU's, edges, outside and RGBA included."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_hostile import write_tiny_tiles
    paths = []
    for tile in (1, 2):
        paths.append(str(tmp_path / ("tiny-%d.tif" % tile)))
        write_tiny_tiles(paths[-1], 200, tile)
    out = run_checks("""
        rng = np.random.default_rng(3)
        for path in PATHS:
            img = CuImage(path)
            locs = np.stack([rng.integers(-30, 210, 13), rng.integers(-30, 210, 13)], 1)
            for k in range(2):
                kw = dict(batch_size=5, num_workers=2 * k, channels=3 + k)
                want = cpu_batches(img, locs, (57, 33), **kw)
                got = gpu_batches(img, locs, (57, 33), **kw)
                assert len(got) == len(want) == 3
                assert all(np.array_equal(g, c) for g, c in zip(got, want)), (path, k)
            with img.read_region([(0, 0)], (57, 33), device="cuda") as it:
                assert it.decoder == "cpu+copy", it.decoder
        print("ok", sim.sim_failures())
    """.replace("PATHS", repr(paths)))
    assert out.split() == ["ok", "0"]


@pytest.mark.parametrize("env,expected", [
    ({}, "nvjpeg-default"),
    ({"SIM_NVJPEG_HARDWARE": "1"}, "nvjpeg-hardware"),
    ({"SIM_NVJPEG_HARDWARE": "1", "TESSERA_NVJPEG_BACKEND": "gpu"}, "nvjpeg-gpu-hybrid"),
    ({"TESSERA_NVJPEG_BACKEND": "hybrid"}, "nvjpeg-hybrid"),
], ids=["default", "hardware", "forced-gpu", "forced-hybrid"])
def test_backend_choice(env, expected):
    out = run_checks("""
        img = CuImage(SLIDE)
        with img.read_region([(0, 0)], (16, 16), device="cuda") as it:
            print(it.decoder)
        with CuImage(APERIO).read_region([(0, 0)], (16, 16), device="cuda") as it:
            print(it.decoder)
    """.replace("SLIDE", repr(YCBCR)).replace("APERIO", repr(APERIO)), env=env)
    assert out.split() == [expected, "cpu+copy"]


def test_backend_errors():
    out = run_checks("""
        img = CuImage(SLIDE)
        for env in ({"TESSERA_NVJPEG_BACKEND": "fast"},):
            try:
                img.read_region([(0, 0)], (16, 16), device="cuda")
            except Exception as e:
                print(type(e).__name__, e)
        try:
            img.read_region([(0, 0)], (16, 16), device="cuda:3")
        except ValueError as e:
            print("ValueError", e)
        try:
            CuImage(APERIO).associated_image("label", device="cuda")
        except ValueError as e:
            print("ValueError associated")
    """.replace("SLIDE", repr(YCBCR)).replace("APERIO", repr(APERIO)),
                     env={"TESSERA_NVJPEG_BACKEND": "fast"})
    lines = out.splitlines()
    assert lines[0] == ('ValueError TESSERA_NVJPEG_BACKEND is "fast", not hardware, gpu, hybrid '
                        'or default'), out
    assert lines[1] == "ValueError device_id 3: there are 1 CUDA devices (0 .. 0)", out
    assert lines[2] == "ValueError associated", out


def bench(*args, env=None):
    full = dict(os.environ, TESSERA_CUDA_PATH=SIM, **(env or {}))
    return subprocess.run([F.cli_path(), "bench", *args], capture_output=True, text=True,
                          env=full, timeout=300)


def test_bench_cuda_compare_and_checksum(slides):
    path = slides.path("jpeg-t256-pyr")
    common = ["--layout", "random", "--count", "300", "--size", "224,224", "--batch-size", "16",
              "--seed", "3", "--json"]
    cpu = bench(path, *common, "--workers", "2")
    gpu = bench(path, *common, "--device", "cuda", "--compare")
    assert cpu.returncode == 0 and gpu.returncode == 0, cpu.stderr + gpu.stderr
    c, g = json.loads(cpu.stdout), json.loads(gpu.stdout)
    assert (c["device"], c["decoder"]) == ("cpu", "cpu")
    assert (g["device"], g["device_id"], g["decoder"]) == ("cuda", 0, "nvjpeg-default")
    assert g["checksum"] == c["checksum"] and g["patches"] == c["patches"] == 300
    assert (g["max_difference"], g["differing_samples"]) == (0, 0)
    quiet = bench(path, *common, "--device", "cuda:0", "--no-checksum")
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["checksum"] is None, quiet.stderr
    table = bench(path, *common[:-1], "--device", "cuda", "--compare")
    assert "device:         cuda:0 (decoder: nvjpeg-default)" in table.stdout
    assert "vs the CPU:     largest difference 0, mean 0.0000, 0 samples differ" in table.stdout


@pytest.mark.parametrize("args,message", [
    (["--compare"], "--compare goes with --device cuda"),
    (["--device", "cuda", "--gds"], "unknown option '--gds'"),  # GPUDirect Storage is not done
    (["--device", "tpu"], "--device: 'tpu' is not cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device cuda:N"),
    (["--device", "cuda", "--processes", "2"], "--device cuda reads in one process"),
])
def test_bench_device_usage_errors(args, message):
    r = bench(YCBCR, "--layout", "grid", "--size", "64,64", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_gpu_example_runs_until_cupy(tmp_path):
    """The design's example (c) on the simulator: the CUDA batches are made; printing them
    needs CuPy, which this machine lacks (Debian has no package), so it stops saying so."""
    env = dict(os.environ, PYTHONPATH=PYTHON_PACKAGE_DIR, TESSERA_CUDA_PATH=SIM)
    r = subprocess.run([sys.executable, os.path.join(F.REPO, "examples", "cucim_gpu.py"), APERIO],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1].startswith("cupy is not installed"), r.stderr


def test_forked_child_is_told_cuda_cannot_be_used_there():
    """CUDA started in a parent does not work in a child it forks; the child's CUDA iterator
    says so (and what to do) instead of failing inside CUDA. The parent goes on."""
    out = run_checks("""
        img = CuImage(SLIDE)
        first = img.read_region((0, 0), (32, 32), device="cuda")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                img.read_region((0, 0), (32, 32), device="cuda")
                os.write(w, b"no error")
            except Exception as e:
                os.write(w, ("%s %s" % (type(e).__name__, e)).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(r, 4096).decode())
        again = img.read_region((0, 0), (32, 32), device="cuda")
        print(np.array_equal(np.asarray(again.cpu()), np.asarray(first.cpu())))
    """.replace("SLIDE", repr(YCBCR)))
    lines = out.splitlines()
    assert lines[0].startswith("TesseraError CUDA was started in this process's parent before "
                               "it forked"), out
    assert "spawn" in lines[0] and lines[1] == "True", out


def test_gpu_verification_script_runs_on_the_simulator(tmp_path):
    """gpu/verify.sh (what a GPU machine runs) and its checker gpu/check_gpu.py, end to end on
    the simulator with a small slide, so they are known to work before a GPU is at hand."""
    env = dict(os.environ, TESSERA_CUDA_PATH=SIM, TESSERA_VERIFY_SIZE="3000x2000",
               TESSERA_VERIFY_COUNT="300", TESSERA_VERIFY_STREAM="1000",
               PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([os.path.join(F.REPO, "gpu", "verify.sh"), str(tmp_path)], cwd=F.REPO,
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    report = json.load(open(tmp_path / "check_gpu.json"))
    assert report["ok"] and report["stream"]["ok"] and report["abandoned"]["ok"], report
    assert [p["max_difference"] for p in report["pixels"]] == [0, 0, 0], report
    assert report["pixels"][0]["decoders"] == ["nvjpeg-default"], report
    assert "median patches/s: cpu (16 workers)" in r.stdout and "cuda / cpu = " in r.stdout


def test_nvjpeg_without_interpolation_leaves_subsampled_tiles_to_the_cpu(slides):
    """nvJPEG before 12.1 replicates chroma (libjpeg interpolates): 4:2:0 tiles then stay on
    the CPU, so the pixels are still the CPU's. (The simulator replicates too without the
    flag, so forgetting to ask for interpolation fails the other tests.)"""
    code = """
        img = CuImage(SLIDE)
        before = sim.sim_decoded_images()
        locs = [(0, 0), (300, 200), (700, 500)]
        want = cpu_batches(img, locs, (200, 150), batch_size=3)
        got = gpu_batches(img, locs, (200, 150), batch_size=3)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
        print(sim.sim_decoded_images() - before)
    """.replace("SLIDE", repr(slides.path("jpeg-q50-sub")))
    assert run_checks(code, env={"SIM_NVJPEG_VERSION": "12.0"}).split() == ["0"]
    assert int(run_checks(code).split()[0]) > 0
