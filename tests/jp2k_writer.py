"""Aperio SVS files with JPEG 2000 tiles, written at test time by real encoders.

Each tile is encoded by OpenJPEG's `opj_compress` (Debian package libopenjp2-tools) into a raw
codestream, as Aperio stores them, and the tiles are written, still encoded, by tifffile (which
stores pre-encoded tiles as they are, but has no encoder for these codes, so the directories
are written as uncompressed and the Compression tag is then set to the code in place):

  33003  YCbCr components (JPEG's full-range BT.601 conversion), no multiple-component
         transform, chroma optionally halved horizontally (4:2:2, Aperio's "J2K/YUV16")
  33005  RGB components, with OpenJPEG's default component transform

PhotometricInterpretation is RGB for both, as Aperio writes it. Directory 0 carries an
Aperio ImageDescription (so OpenSlide opens the file as "aperio"), a stripped thumbnail
follows it, then the smaller levels with the same tiling.
"""

import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

OPJ_COMPRESS = "opj_compress"


def ycbcr_from_rgb(rgb):
    """JPEG/JFIF's full-range YCbCr of an (h, w, 3) uint8 array, as three uint8 planes."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, cb, cr)]


def halve_width(plane):
    """A chroma plane averaged over horizontal pairs (the width must be even)."""
    p = plane.astype(np.uint16)
    return ((p[:, 0::2] + p[:, 1::2] + 1) // 2).astype(np.uint8)


def encode_tile(rgb, mode, lossless, workdir, name):
    """The raw JPEG 2000 codestream of one (th, tw, 3) tile.
    mode: "ycbcr422", "ycbcr444" (both without MCT) or "rgb" (with OpenJPEG's default MCT)."""
    th, tw = rgb.shape[:2]
    if mode == "rgb":
        planes = [rgb[..., i] for i in range(3)]
        sub = "1x1:1x1:1x1"
        mct = []
    else:
        y, cb, cr = ycbcr_from_rgb(rgb)
        if mode == "ycbcr422":
            cb, cr = halve_width(cb), halve_width(cr)
            sub = "1x1:2x1:2x1"
        else:
            sub = "1x1:1x1:1x1"
        planes = [y, cb, cr]
        mct = ["-mct", "0"]
    raw = os.path.join(workdir, name + ".raw")
    out = os.path.join(workdir, name + ".j2k")
    with open(raw, "wb") as f:
        for p in planes:
            f.write(np.ascontiguousarray(p).tobytes())
    quality = [] if lossless else ["-I", "-r", "12"]
    cmd = [OPJ_COMPRESS, "-i", raw, "-o", out, "-F", "%d,%d,3,8,u@%s" % (tw, th, sub)]
    r = subprocess.run(cmd + mct + quality, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(out):
        raise RuntimeError("%s failed: %s%s" % (" ".join(cmd + mct + quality), r.stdout[-800:],
                                                 r.stderr[-800:]))
    with open(out, "rb") as f:
        data = f.read()
    os.remove(raw)
    os.remove(out)
    return data


def encode_level(pixels, tile, mode, lossless, workdir, tag):
    """Every tile of a level, row by row; edge tiles are padded to full size by repeating the
    last row and column (Aperio stores whole tiles)."""
    h, w = pixels.shape[:2]
    th, tw = tile
    down, across = -(-h // th), -(-w // tw)
    padded = np.pad(pixels, ((0, down * th - h), (0, across * tw - w), (0, 0)), mode="edge")
    jobs = [(r, c) for r in range(down) for c in range(across)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
        return list(ex.map(
            lambda rc: encode_tile(padded[rc[0] * th:(rc[0] + 1) * th,
                                          rc[1] * tw:(rc[1] + 1) * tw],
                                   mode, lossless, workdir, "%s-%d-%d" % (tag, rc[0], rc[1])),
            jobs))


def box_downsample(pixels, d):
    """The mean of each d x d block (floor of the size; the rest is dropped), rounded."""
    h, w = pixels.shape[0] // d, pixels.shape[1] // d
    blocks = pixels[:h * d, :w * d].astype(np.uint32).reshape(h, d, w, d, 3)
    return ((blocks.sum(axis=(1, 3)) + d * d // 2) // (d * d)).astype(np.uint8)


def aperio_description(w0, h0, tile, level_size=None, mpp="0.4990"):
    head = "Aperio Image Library v10.0.50\r\n"
    if level_size is None:
        head += "%dx%d [0,0 %dx%d] (%dx%d) J2K/YUV16 Q=70" % (w0, h0, w0, h0, tile[1], tile[0])
    else:
        head += "%dx%d -> %dx%d - " % (w0, h0, level_size[0], level_size[1])
    return head + ("|AppMag = 20|StripeWidth = 2040|ScanScope ID = SS1234|Filename = tessera"
                   "|Date = 01/02/24|Time = 10:20:30|User = tessera|MPP = %s" % mpp)


def write_svs(path, base, downsamples, tile, compression, mode, lossless=False):
    """Writes an SVS of base ((h, w, 3) uint8) and its box-filtered copies at the integer
    downsamples (each level floor(size / d)), tiled tile = (th, tw), every tile encoded as
    mode. Returns the (width, height) of each level."""
    import tifffile
    h0, w0 = base.shape[:2]
    levels = [base] + [box_downsample(base, d) for d in downsamples if d != 1]
    thumb = box_downsample(base, 8)
    with tempfile.TemporaryDirectory(prefix="tessera-j2k-") as work:
        encoded = [encode_level(lv, tile, mode, lossless, work, "L%d" % i)
                   for i, lv in enumerate(levels)]
    common = dict(photometric="rgb", planarconfig="contig", metadata=None, software=False)
    with tifffile.TiffWriter(path) as tw:
        for i, (lv, tiles) in enumerate(zip(levels, encoded)):
            desc = aperio_description(w0, h0, tile, None if i == 0 else
                                      (lv.shape[1], lv.shape[0]))
            tw.write(iter(tiles), shape=lv.shape, dtype=np.uint8, tile=tile, description=desc,
                     **common)
            if i == 0:
                tw.write(thumb, description=aperio_description(
                    w0, h0, tile, (thumb.shape[1], thumb.shape[0])), rowsperstrip=16, **common)
    _set_compression(path, [0] + list(range(2, len(levels) + 1)), compression)
    return [(lv.shape[1], lv.shape[0]) for lv in levels]


def _set_compression(path, directories, compression):
    import tiffbytes
    with open(path, "rb") as f:
        data = f.read()
    t = tiffbytes.Tiff(data)
    for i in directories:
        data = tiffbytes.patch_value(data, t, i, "Compression", 0, compression)
    with open(path, "wb") as f:
        f.write(data)


# --- reading the fixture back, to check that it is what it claims ---------------------------

def codestream_layout(data):
    """(component (dx, dy) list, MCT flag of the main header's COD) of a raw codestream."""
    if data[:4] != b"\xff\x4f\xff\x51":
        raise ValueError("not a raw JPEG 2000 codestream")
    pos = 2
    subs, mct = None, None
    while pos + 4 <= len(data):
        marker = int.from_bytes(data[pos:pos + 2], "big")
        if marker == 0xFF90:  # SOT: the main header is over
            break
        seg = int.from_bytes(data[pos + 2:pos + 4], "big")
        body = data[pos + 4:pos + 2 + seg]
        if marker == 0xFF51:
            ncomp = int.from_bytes(body[34:36], "big")
            subs = [(body[36 + 3 * c + 1], body[36 + 3 * c + 2]) for c in range(ncomp)]
        elif marker == 0xFF52:
            mct = body[4]
        pos += 2 + seg
    return subs, mct
