"""`pip install --no-build-isolation .` from the repository root, with Debian's python3 and
python3-mesonpy, into a scratch virtual environment (seeing the system's numpy): the installed
package is the Python package alone (no command, no C header), imports from anywhere, and reads
the same pixels as the package in the build tree (tessera.openslide's resampled regions too,
painted by libtessera-openslide's code built into the extension)."""

import os
import subprocess
import sys

import pytest

import wsi_fixtures as F
from conftest import PYTHON_PACKAGE_DIR

READ = r"""
import sys, hashlib, numpy as np, tessera
img = tessera.CuImage(sys.argv[1])
a = np.asarray(img.read_region((100, 150), (300, 200)))
batches = img.read_region([[0, 0], [500, 700], [-50, 900]], (64, 48), batch_size=2, num_workers=2)
b = np.concatenate([np.asarray(x) for x in batches])
from tessera import openslide
with openslide.OpenSlide(sys.argv[1]) as s:  # level 1 from between its pixels: resampled
    c = np.asarray(s.read_region((301, 221), 1, (170, 130)))
print(tessera.__file__)
print(hashlib.sha256(a.tobytes() + b.tobytes() + c.tobytes()).hexdigest())
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    env_dir = str(root / "env")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", env_dir],
                   check=True, capture_output=True)
    r = subprocess.run([os.path.join(env_dir, "bin", "pip"), "install", "--no-build-isolation",
                        "--no-input", "--quiet", F.REPO], capture_output=True, text=True,
                       cwd=str(root), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return env_dir


def run_read(python, slide, cwd, env=None):
    r = subprocess.run([python, "-c", READ, slide], capture_output=True, text=True, cwd=cwd,
                       env=env, check=True)
    return r.stdout.split()


def test_installed_package_reads_like_the_build_tree(venv, slides, tmp_path):
    slide = slides.path("jpeg-t256-pyr")
    where, digest = run_read(os.path.join(venv, "bin", "python"), slide, str(tmp_path))
    assert where.startswith(venv), where  # the installed copy, not the build tree's
    env = dict(os.environ, PYTHONPATH=PYTHON_PACKAGE_DIR)
    where_build, digest_build = run_read(sys.executable, slide, str(tmp_path), env)
    assert where_build.startswith(PYTHON_PACKAGE_DIR), where_build
    assert digest == digest_build


def test_installed_files_are_the_package_alone(venv):
    files = []
    for root, _, names in os.walk(venv):
        files += [os.path.relpath(os.path.join(root, n), venv) for n in names]
    package = sorted(f for f in files if "site-packages/tessera/" in f and "__pycache__" not in f)
    names = {os.path.basename(f) for f in package}
    assert {"__init__.py", "_image.py", "_tissue.py", "torch.py", "dask.py"} <= names, package
    assert {"tessera/openslide/" + n for n in ("__init__.py", "_alpha.py",
                                               "deepzoom.py", "lowlevel.py")} <= {
        f.split("site-packages/", 1)[1] for f in package}, package
    assert {"tessera/viewer/" + n for n in ("__init__.py", "__main__.py", "static/index.html",
                                            "static/viewer.js", "static/viewer.css")} <= {
        f.split("site-packages/", 1)[1] for f in package}, package
    assert any(n.startswith("_tessera.") and n.endswith(".so") for n in names), package
    assert not any(os.path.basename(f) in ("tessera.h", "tessera_version.h", "tessera.pc")
                   for f in files)
    assert not os.path.exists(os.path.join(venv, "bin", "tessera"))
    # the extension carries the library: it does not need libtessera.so at run time
    ext = [f for f in package if f.endswith(".so")][0]
    deps = subprocess.run(["ldd", os.path.join(venv, ext)], capture_output=True, text=True,
                          check=True).stdout
    assert "libtessera" not in deps, deps
    assert "libjpeg" in deps and "libtiff" in deps, deps


def test_build_tree_package_is_this_checkout():
    import tessera

    assert os.path.realpath(tessera.__file__).startswith(os.path.realpath(PYTHON_PACKAGE_DIR))
    assert tessera.CuImage.__mro__[1:3] == (tessera.Slide, tessera._tessera.Slide)


def test_installed_package_version_is_the_build_files(venv):
    """pip's metadata (meson-python takes meson.build's version) and tessera.__version__ (the
    library's) agree with the build file."""
    from test_version import build_file_version

    r = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                        "import importlib.metadata, tessera; "
                        "print(importlib.metadata.version('tessera'), tessera.__version__)"],
                       capture_output=True, text=True, check=True, cwd=venv)
    assert r.stdout.split() == [build_file_version()] * 2, r.stdout


def test_installed_package_serves_the_viewer(venv, slides):
    """`python -m tessera.viewer` from the install (which has no `tessera` command) serves the
    page and the slide's tiles, and stops on Ctrl-C."""
    import select
    import signal
    import urllib.request

    path = slides.path("jpeg-t256-pyr")
    p = subprocess.Popen([os.path.join(venv, "bin", "python"), "-m", "tessera.viewer", path],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=venv)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 120)  # a deadline against a hang
        line = p.stdout.readline() if ready else ""
        assert line.startswith("Serving ") and "http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split(" ")[0]
        with urllib.request.urlopen(url, timeout=60) as r:
            assert b"/viewer.js" in r.read()
        with urllib.request.urlopen(url + "slide_files/0/0_0.jpeg", timeout=60) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read()[:2] == b"\xff\xd8"
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
