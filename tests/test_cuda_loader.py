"""The GPU path's run-time loading, on a machine without a GPU.

Nothing from CUDA is linked into the library, the command or the Python extension. What
device="cuda" says comes from the library's loader (src/gpu/cuda_loader.c): stand-in
libraries compiled here from tests/c/fake_cuda.c are placed in a folder named by
TESSERA_CUDA_PATH, in a fresh Python process each time (the loader looks once per process),
for every answer: no runtime, a runtime lacking a function, no device, no nvJPEG, and
everything there (then nvJPEG itself is called, and its answer is the error).
This machine's own answer is checked against what is installed on it.
"""

import ctypes
import glob
import os
import subprocess
import sys

import pytest

import wsi_fixtures as F
from conftest import PYTHON_PACKAGE_DIR

FAKE_SOURCE = os.path.join(F.REPO, "tests", "c", "fake_cuda.c")
SLIDE = os.path.join(F.TESTDATA, "aperio-jpeg-tiny-16x16.svs")
CUDA_LIBRARIES = ("libcudart", "libnvjpeg", "libcufile", "libcuda.")
BUILD = os.environ.get("TESSERA_BUILD_DIR", os.path.join(F.REPO, "build"))

# What the program below prints, one line per device, then the cuda_status() answer.
PROGRAM = r"""
import sys
from tessera import CuImage, _tessera
img = CuImage(sys.argv[1])
for device in ("cuda", "cuda:0"):
    try:
        img.read_region((0, 0), (8, 8), device=device)
        print("read without error")
    except Exception as e:
        print(type(e).__name__, e)
try:
    print("cuda_status", _tessera.cuda_status())
except RuntimeError as e:
    print("cuda_status", type(e).__name__, e)
"""


def built_files():
    lib = os.environ.get("TESSERA_LIB", os.path.join(F.REPO, "build", "src", "libtessera.so"))
    ext = glob.glob(os.path.join(PYTHON_PACKAGE_DIR, "tessera", "_tessera*.so"))
    assert os.path.isfile(lib), lib
    assert len(ext) == 1, ext
    return [lib, ext[0], F.cli_path()]


@pytest.mark.parametrize("index", range(3), ids=["library", "extension", "command"])
def test_nothing_links_cuda(index):
    path = built_files()[index]
    dynamic = subprocess.run(["readelf", "-dW", path], capture_output=True, text=True, check=True)
    needed = [line for line in dynamic.stdout.splitlines() if "(NEEDED)" in line]
    assert needed, dynamic.stdout
    assert not [n for n in needed if any(c in n for c in CUDA_LIBRARIES)], needed
    ldd = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    assert not [line for line in ldd.splitlines() if any(c in line for c in CUDA_LIBRARIES)], ldd
    # no CUDA symbol is left for the dynamic linker to find: they come from dlsym
    undefined = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True,
                               text=True, check=True).stdout.split()
    assert not [s for s in undefined if s.startswith(("cuda", "nvjpeg", "cuFile"))], undefined
    if index != 2:  # the command only reads on the CPU; the library and extension can load CUDA
        assert "dlopen" in {s.split("@")[0] for s in undefined}


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """The stand-in libraries, compiled once: name -> path."""
    out = tmp_path_factory.mktemp("fake-cuda")
    built = {}
    for name, flags in [("cudart", ["-DFAKE_CUDART"]),
                        ("cudart-partial", ["-DFAKE_CUDART", "-DFAKE_PARTIAL"]),
                        ("nvjpeg", ["-DFAKE_NVJPEG"])]:
        path = str(out / ("libfake-%s.so" % name))
        subprocess.run(["cc", "-shared", "-fPIC", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Werror",
                        "-I" + os.path.join(F.REPO, "src"), "-I" + os.path.join(F.REPO, "include"),
                        "-I" + os.path.join(BUILD, "include"),  # tessera_version.h
                        *flags, "-o", path, FAKE_SOURCE], check=True)
        built[name] = path
    return built


def folder(tmp_path, fakes, **placed):
    """tmp_path/cuda holding fakes under the real libraries' names (as="fake")."""
    d = tmp_path / "cuda"
    d.mkdir()
    for as_name, fake in placed.items():
        os.symlink(fakes[fake], str(d / as_name.replace("_", ".")))
    return str(d)


def run_program(**env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("TESSERA_CUDA_PATH", "LD_LIBRARY_PATH")
            and not k.startswith("TESSERA_FAKE_CUDA_")}
    full.update(env, PYTHONPATH=PYTHON_PACKAGE_DIR)
    r = subprocess.run([sys.executable, "-c", PROGRAM, SLIDE], capture_output=True, text=True,
                       env=full, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    return lines


def test_no_device(tmp_path, fakes):
    d = folder(tmp_path, fakes, libcudart_so_12="cudart", libnvjpeg_so_12="nvjpeg")
    lines = run_program(TESSERA_CUDA_PATH=d, TESSERA_FAKE_CUDA_DEVICES="-100")
    reason = ("no CUDA device: no CUDA-capable device is detected (cudaGetDeviceCount returned "
              "error 100; CUDA runtime 12.4 from %s/libcudart.so.12; no NVIDIA driver found)" % d)
    assert lines == [
        "RuntimeError device='cuda': CUDA is not available: " + reason,
        "RuntimeError device='cuda:0': CUDA is not available: " + reason,
        "cuda_status RuntimeError " + reason]


def test_no_runtime(tmp_path, fakes):
    d = folder(tmp_path, fakes)
    lines = run_program(TESSERA_CUDA_PATH=d)
    reason = ("CUDA runtime not found (tried libcudart.so.13, libcudart.so.12, libcudart.so.11.0, "
              "libcudart.so in %s, the folders TESSERA_CUDA_PATH names)" % d)
    assert lines[0] == "RuntimeError device='cuda': CUDA is not available: " + reason
    assert lines[2] == "cuda_status RuntimeError " + reason


def test_runtime_lacking_a_function(tmp_path, fakes):
    d = folder(tmp_path, fakes, libcudart_so_12="cudart-partial")
    lines = run_program(TESSERA_CUDA_PATH=d, TESSERA_FAKE_CUDA_DEVICES="1")
    assert lines[0] == ("RuntimeError device='cuda': CUDA is not available: CUDA runtime "
                        "%s/libcudart.so.12 lacks cudaGetDeviceCount" % d)


def test_no_nvjpeg(tmp_path, fakes):
    d = folder(tmp_path, fakes, libcudart_so_12="cudart")
    lines = run_program(TESSERA_CUDA_PATH=d, TESSERA_FAKE_CUDA_DEVICES="1")
    assert lines[0].startswith("RuntimeError device='cuda': CUDA is not available: nvJPEG not "
                               "found (tried libnvjpeg.so.12, "), lines
    assert lines[0].endswith(" in %s, the folders TESSERA_CUDA_PATH names)" % d), lines


def test_everything_there_goes_on_to_decode(tmp_path, fakes):
    """With the runtime, a device and nvJPEG found, device='cuda' goes past the loader to
    nvJPEG itself, whose failure (these stand-ins do no work) is then the error."""
    d = folder(tmp_path, fakes, libcudart_so_12="cudart", libnvjpeg_so_12="nvjpeg")
    lines = run_program(TESSERA_CUDA_PATH=d, TESSERA_FAKE_CUDA_DEVICES="1")
    assert lines[2] == "cuda_status None"
    for line in lines[:2]:
        assert line == ("TesseraError nvJPEG could not start (default back end): not "
                        "initialized (1)"), line


def _loadable(name):
    try:
        ctypes.CDLL(name, mode=os.RTLD_LOCAL | os.RTLD_NOW)
        return True
    except OSError:
        return False


def test_this_machine():
    """What the real search says here, against what is installed: no runtime anywhere the
    loader looks -> not found; a runtime but no driver (no libcuda.so.1) -> no device."""
    names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"]
    folders = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
               "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/opt/cuda/lib64"] + [
                   os.path.join(PYTHON_PACKAGE_DIR, "nvidia", wheel, "lib")
                   for wheel in ("cu13", "cuda_runtime")]
    runtime = any(_loadable(n) for n in names) or any(
        os.path.exists(os.path.join(f, n)) for f in folders for n in names)
    driver = _loadable("libcuda.so.1")
    lines = run_program()
    print("this machine:", lines[2])
    if not runtime:
        assert lines[0].startswith("RuntimeError device='cuda': CUDA is not available: CUDA "
                                   "runtime not found (tried libcudart.so.13,"), lines
    elif not driver:
        assert lines[0].startswith("RuntimeError device='cuda': CUDA is not available: no CUDA "
                                   "device: "), lines
        assert lines[0].endswith("; no NVIDIA driver found)"), lines
    else:
        # a driver: a GPU may be there or not, nvJPEG too; either way a documented answer
        assert lines[2] == "cuda_status None" or lines[2].startswith(
            ("cuda_status RuntimeError no CUDA device: ",
             "cuda_status RuntimeError nvJPEG not found (tried ")), lines
