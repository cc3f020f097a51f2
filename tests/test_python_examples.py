"""The cuCIM examples in examples/ (cuCIM's own code with only the import changed) run as
programs against a pyramid slide written at test time: the whole-level read prints OpenSlide's
level-1 shape, the batch read prints cuCIM's ten lines, and the GPU read fails with a clear
RuntimeError on a machine without CUDA."""

import os
import subprocess
import sys

import pytest

import tessera

import wsi_fixtures as F
import wsi_refs as R
from conftest import PYTHON_PACKAGE_DIR

EXAMPLES = os.path.join(F.REPO, "examples")
SLIDE = "jpeg-t256-pyr"  # 2048 x 1536, four levels: every example location lies inside it


def run_example(name, slide, cwd):
    env = dict(os.environ, PYTHONPATH=PYTHON_PACKAGE_DIR)
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name), slide],
                          capture_output=True, text=True, cwd=str(cwd), env=env, timeout=120)


@pytest.fixture(scope="module")
def slide(slides):
    return slides.path(SLIDE)


@pytest.mark.parametrize("name", ["cucim_whole_level.py", "cucim_batches.py", "cucim_gpu.py"])
def test_example_is_cucim_code_with_the_import_changed(name):
    with open(os.path.join(EXAMPLES, name)) as f:
        text = f.read()
    code = [line.split("#")[0].strip() for line in text.splitlines()]
    assert "from tessera import CuImage" in code
    imports = [line for line in code if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "cucim" in line], imports
    assert "sys.argv[1]" in text
    doc = text.split('"""')[1]
    assert "PYTHONPATH=build/python /usr/bin/python3 examples/%s" % name in doc


def test_whole_level_prints_the_level_1_shape(slide, tmp_path):
    r = run_example("cucim_whole_level.py", slide, tmp_path)
    assert r.returncode == 0, r.stderr
    w, h = R.openslide_open(slide).level_dimensions[1]
    assert r.stdout.splitlines() == [str((h, w, 3))]


def test_batches_print_cucim_output(slide, tmp_path):
    r = run_example("cucim_batches.py", slide, tmp_path)
    assert r.returncode == 0, r.stderr
    expected = (["(4, 224, 224, 3)"] + ["(224, 224, 3)"] * 4) * 2
    assert r.stdout.splitlines() == expected


def test_gpu_example_fails_clearly_without_cuda(slide, tmp_path):
    r = run_example("cucim_gpu.py", slide, tmp_path)
    assert r.returncode != 0
    assert r.stdout == ""
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError:"), r.stderr
    try:
        tessera._tessera.cuda_status()
    except RuntimeError:
        # this machine: the loader's reason follows (test_gpu_sim runs it on the simulator)
        assert "CUDA is not available" in last, r.stderr
    else:
        pytest.fail("CUDA is there: run gpu/verify.sh, whose run of this example needs CuPy")
