"""Hostile files made at test time that once cost gigabytes or undefined behaviour, and the
limits that now stop them with a clear error (the small fixed inputs are in tests/crashers):

- a progressive JPEG tile whose coefficients (2 bytes a sample, held whole while the scans
  are read) would pass 256 MiB, while a baseline tile of the same size reads row by row;
- a Philips level with a downsample of exactly 1.0 read at x = 2^63 - 1 (the level
  coordinate's conversion back to an integer overflowed: UBSan's float-cast-overflow);
- the library's limits reached through the Python package and the command;
- a FIFO given as the slide, which blocked the open for ever (open(2) ran before the check that
  the path is a regular file), and the other paths that are no regular file.
"""

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

import vendor_writers  # noqa: F401  (lets tifffile write tiles that are JPEG already)
import wsi_fixtures as F
from conftest import PYTHON_PACKAGE_DIR

ASAN_CLI = os.environ.get("TESSERA_CLI_ASAN", "")
SANITIZERS = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=99",
                  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")


def one_jpeg_tile(path, side, progressive, mode="RGB"):
    """A TIFF of one side x side JPEG tile written by PIL (flat grey: small however large)."""
    buf = io.BytesIO()
    Image.new(mode, (side, side), 128).save(buf, "JPEG", quality=90, progressive=progressive,
                                            subsampling=0)
    bands = 3 if mode == "RGB" else 1
    with tifffile.TiffWriter(path) as tw:
        tw.write(iter([buf.getvalue()]), shape=(side, side, bands) if bands == 3 else (side, side),
                 dtype=np.uint8, tile=(side, side), compression=7,
                 photometric="ycbcr" if bands == 3 else "minisblack",
                 subsampling=(1, 1) if bands == 3 else None, metadata=None)
    return path


def read(cli, path, *args):
    return subprocess.run([cli, "read", path, "--location", "0,0", "--size", "64,64",
                           "--output", os.devnull + ".png", *args], capture_output=True,
                          text=True, timeout=120)


def test_progressive_tile_over_the_coefficient_budget_is_refused(cli, tmp_path):
    # 6800 x 6800 4:4:4: 6800^2 x 3 x 2 bytes = 265 MiB of coefficients
    big = one_jpeg_tile(str(tmp_path / "prog-big.tif"), 6800, True)
    r = read(cli, big)
    assert r.returncode == 1, r
    assert "progressive JPEG tile of 6800x6800 needs 264 MiB" in r.stderr, r.stderr
    # the same size in baseline JPEG is read (row by row), and so is a smaller progressive tile
    assert read(cli, one_jpeg_tile(str(tmp_path / "base-big.tif"), 6800, False)).returncode == 0
    small = one_jpeg_tile(str(tmp_path / "prog-small.tif"), 4096, True)
    r = read(cli, small)
    assert r.returncode == 0, r.stderr


def philips_two_equal_levels(path):
    """A Philips TIFF whose second level has the first's size and spacing: downsample 1.0."""
    spacing = ('<DataObject ObjectType="PixelDataRepresentation"><Attribute '
               'Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" '
               'PMSVR="IDoubleArray">"0.00025" "0.00025"</Attribute></DataObject>')
    xml = ('<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">'
           '<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x0000" Element="0x0000" '
           'PMSVR="IDataObjectArray"><Array><DataObject ObjectType="DPScannedImage">'
           '<Attribute Name="PIM_DP_IMAGE_TYPE" Group="0x0000" Element="0x0000" '
           'PMSVR="IString">WSI</Attribute><Attribute '
           'Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x0000" Element="0x0000" '
           'PMSVR="IDataObjectArray"><Array>' + spacing + spacing +
           '</Array></Attribute></DataObject></Array></Attribute></DataObject>\n')
    a = np.full((64, 64, 3), 200, np.uint8)
    with tifffile.TiffWriter(path) as tw:
        tw.write(a, tile=(16, 16), photometric="rgb", description=xml.encode(),
                 software="Philips DP v1.0", metadata=None)
        tw.write(a, tile=(16, 16), photometric="rgb", subfiletype=1,
                 software="Philips DP v1.0", metadata=None)
    return path


@pytest.mark.parametrize("x", ["9223372036854775807", "-9223372036854775808"])
def test_far_location_on_a_level_of_downsample_one(cli, tmp_path, x):
    path = philips_two_equal_levels(str(tmp_path / "philips-ds1.tif"))
    info = json.loads(subprocess.run([cli, "info", path, "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["vendor"] == "philips" and len(info["levels"]) == 2, info
    assert info["levels"][1]["downsample"] == 1 and info["levels"][1]["width"] == 64, info
    assert ASAN_CLI, "TESSERA_CLI_ASAN is not set: the sanitized command is needed here"
    for command in (cli, ASAN_CLI):
        r = subprocess.run([command, "read", path, "--level", "1", "--location", x + ",0",
                            "--size", "4,4", "--output", str(tmp_path / "far.ppm")],
                           capture_output=True, text=True, timeout=120, env=SANITIZERS)
        assert r.returncode == 0 and "runtime error" not in r.stderr, (command, r.stderr)
        # wholly outside: the background (Philips scans on white)
        data = open(str(tmp_path / "far.ppm"), "rb").read()
        assert data.endswith(bytes([255]) * 48), data[-48:]


@pytest.fixture
def special_files(tmp_path):
    """(path, what the message calls it) for paths that are no regular file."""
    fifo = str(tmp_path / "slide.svs")  # a FIFO nobody writes to
    os.mkfifo(fifo)
    sock_path = str(tmp_path / "slide.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(sock_path)
    yield [(fifo, "is a FIFO (named pipe), not a slide file"),
           (sock_path, "is a socket, not a slide file"),
           ("/dev/zero", "is a character device, not a slide file"),
           (str(tmp_path), "is a directory, not a slide file")]
    sock.close()


def test_special_files_are_refused_without_blocking(cli, special_files):
    """From the command and from Python, each in a process of its own whose timeout is only a
    hang guard: a FIFO used to block in open(2) until a writer came."""
    code = ("import sys, tessera\n"
            "try:\n    tessera.CuImage(sys.argv[1])\n"
            "except OSError as e:\n    print(e)\n    sys.exit(3)\n")
    env = dict(os.environ, PYTHONPATH=PYTHON_PACKAGE_DIR)
    for path, message in special_files:
        for argv in ([cli, "info", path], [sys.executable, "-c", code, path]):
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                                   stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise AssertionError("%s hung on %s" % (argv[0], path)) from None
            out = r.stderr if argv[0] == cli else r.stdout
            assert r.returncode == (1 if argv[0] == cli else 3), (argv, r)
            assert message in out, (argv, out, r.stderr)
