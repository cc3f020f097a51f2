"""One version, written once in meson.build: the library's tessera_version(), the macros of the
header it was built with (the command prints both), the pkg-config file and the Python package
all say the build file's version. (test_python_install checks the installed package's
metadata.)"""

import json
import os
import subprocess
import sys

import tessera_ctypes as T
import wsi_fixtures as F
from conftest import PYTHON_PACKAGE_DIR

BUILD = os.environ.get("TESSERA_BUILD_DIR", os.path.join(F.REPO, "build"))


def build_file_version():
    r = subprocess.run(["meson", "introspect", "--projectinfo", BUILD], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout)["version"]


def test_library_version_is_the_build_files(lib):
    assert T.version() == build_file_version()


def test_command_prints_the_header_and_library_versions():
    version = build_file_version()
    r = subprocess.run([F.cli_path(), "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.startswith("tessera %s (library %s;" % (version, version)), r.stdout


def test_pkg_config_version_is_the_build_files():
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(BUILD, "meson-private"))
    r = subprocess.run(["pkg-config", "--modversion", "tessera"], capture_output=True, text=True,
                       env=env, check=True)
    assert r.stdout.strip() == build_file_version()


def test_python_package_version_is_the_build_files():
    r = subprocess.run([sys.executable, "-c", "import tessera; print(tessera.__version__)"],
                       capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=PYTHON_PACKAGE_DIR))
    assert r.stdout.strip() == build_file_version()
