"""Slide fixtures for the Python tests, written at test time by real writers.

A deterministic synthetic picture (texture, colour, sharp edges, noise) is made once with
numpy, turned into VIPS images by `vips rawload`, and every fixture is derived from it with
`vips tiffsave` or tifffile. The files in ../shared/testdata are used in place.

Only the shape of each file (how many pyramid levels, which vips page or SubIFD holds each
level) is known here, so tests can be parametrized per level before any file exists. Pixel
values always come from OpenSlide or libvips at test time.
"""

import os
import subprocess
import threading
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TESTDATA = os.environ.get("TESSERA_TESTDATA",
                          os.path.join(os.path.dirname(REPO), "shared", "testdata"))



def cli_path():
    """The `tessera` command under test: $TESSERA_CLI, or build/cli/tessera."""
    return os.environ.get("TESSERA_CLI", os.path.join(REPO, "build", "cli", "tessera"))


JPEG, DEFLATE, LZW, ZSTD, WEBP, PACKBITS, NONE = 7, 8, 5, 50000, 50001, 32773, 1


@dataclass
class SlideSpec:
    name: str
    kind: str                      # "vips", "tifffile" or "testdata"
    source: str = ""               # source picture name (vips), or file name (testdata)
    args: tuple = ()               # vips tiffsave arguments
    levels: list = field(default_factory=list)  # level sizes known before the file exists
    openslide: bool = True         # OpenSlide 3.4.1 opens it
    subifd: bool = False           # levels > 0 are SubIFDs of level 0
    pages: tuple = ()              # testdata: vips page of each level
    background: object = 0         # expected default fill (None: not asserted)
    vendor: str = "generic-tiff"
    bands: int = 3                 # bands of the stored picture (1, 3 or 4)
    compression_tag: int = 0       # vips: rewrite every directory's Compression tag to this
    note: str = ""

    @property
    def nlevels(self):
        return len(self.levels) if self.kind != "testdata" else len(self.pages)

    def vips_load_args(self, level):
        """Arguments of `vips tiffload` that select this level."""
        if self.kind == "testdata":
            return ["--page", str(self.pages[level])]
        if self.subifd and level > 0:
            return ["--subifd", str(level - 1)]
        if self.subifd:
            return ["--page", "0"]
        return ["--page", str(level)]


# --- the synthetic source pictures ---------------------------------------------------------

SOURCES = {
    # name: (width, height, bands, crop of the big picture x, y)
    "rgb2k": (2048, 1536, 3, 0, 0),
    "rgb1k": (1024, 768, 3, 301, 203),
    "odd": (1001, 777, 3, 37, 19),
    "gray": (1024, 768, 1, 517, 411),
    "rgba": (1024, 768, 4, 129, 611),
}


def synth_picture(width=2560, height=2048, seed=20240601):
    """A deterministic RGB picture with texture, colour, edges and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0)
    g = 128 + 90 * np.sin((x + y) / 71.0) + 30 * np.sin(x / 5.0)
    b = x * 255.0 / width * 0.6 + y * 255.0 / height * 0.4
    img = np.stack([r, g, b], -1)
    img += rng.normal(0, 10, img.shape).astype(np.float32)
    img[((x // 97 + y // 89) % 5) == 0] *= 0.5
    img[((x - 700) ** 2 + (y - 500) ** 2) < 150 ** 2] = (250, 30, 60)
    return np.clip(img, 0, 255).astype(np.uint8)


def alpha_pattern(height, width):
    """Alpha with fully transparent, fully opaque and graded squares."""
    y, x = np.mgrid[0:height, 0:width]
    a = np.full((height, width), 255, np.uint8)
    a[((x // 64 + y // 64) % 4) == 1] = 0
    m = ((x // 64 + y // 64) % 4) == 2
    a[m] = ((x + y) % 256)[m].astype(np.uint8)
    return a


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s" % (r.returncode, " ".join(map(str, cmd)),
                                                            r.stderr[-2000:]))
    return r


# --- the fixture list ---------------------------------------------------------------------

def vips_pyramid_sizes(w, h, tw, th):
    """Level sizes `vips tiffsave --pyramid` writes (depth onetile): halve, rounding down,
    until the level fits in one tile."""
    sizes = [(w, h)]
    while w > tw or h > th:
        w, h = w // 2, h // 2
        sizes.append((w, h))
    return sizes


def _tile(tw, th=None):
    th = tw if th is None else th
    return ("--tile", "--tile-width", str(tw), "--tile-height", str(th))


def _vips(name, source, tile, comp, pyramid=False, extra=(), openslide=True, subifd=False, note=""):
    w, h, bands = SOURCES[source][:3]
    args = []
    if tile:
        args += _tile(*tile)
    args += ["--compression", comp] + list(extra)
    if pyramid:
        args += ["--pyramid"]
        if subifd:
            args += ["--subifd"]
        levels = vips_pyramid_sizes(w, h, tile[0], tile[-1])
    else:
        levels = [(w, h)]
    return SlideSpec(name=name, kind="vips", source=source, args=tuple(args), levels=levels,
                     openslide=openslide, subifd=subifd, bands=bands, note=note)


def _relabel(spec, compression):
    spec.compression_tag = compression
    return spec


def _tifffile(name, levels, bands=3, openslide=True, subifd=False, note=""):
    return SlideSpec(name=name, kind="tifffile", levels=levels, openslide=openslide,
                     subifd=subifd, bands=bands, note=note)


def all_specs():
    q = lambda n: ("--Q", str(n))
    nopred = ("--predictor", "none")
    pred = ("--predictor", "horizontal")
    specs = [
        # tile sizes
        _vips("jpeg-t128-pyr", "rgb1k", (128,), "jpeg", True),
        _vips("jpeg-t240-pyr", "rgb1k", (240,), "jpeg", True),
        _vips("jpeg-t256-pyr", "rgb2k", (256,), "jpeg", True),
        _vips("jpeg-t512-pyr", "rgb2k", (512,), "jpeg", True),
        _vips("deflate-t512-pyr", "rgb2k", (512,), "deflate", True),
        _vips("jpeg-t256x128-pyr", "rgb1k", (256, 128), "jpeg", True),
        _vips("deflate-t128x256-pyr", "rgb1k", (128, 256), "deflate", True),
        # JPEG qualities; vips 8.14 subsamples chroma (YCbCr 4:2:0) below Q 90 and writes
        # RGB JPEG without subsampling at Q >= 90 or with --rgbjpeg
        _vips("jpeg-q50-sub", "rgb1k", (256,), "jpeg", extra=q(50)),
        _vips("jpeg-q75-sub", "rgb1k", (256,), "jpeg", extra=q(75)),
        _vips("jpeg-q85-sub", "rgb1k", (256,), "jpeg", extra=q(85)),
        _vips("jpeg-q50-nosub", "rgb1k", (256,), "jpeg", extra=q(50) + ("--rgbjpeg",)),
        _vips("jpeg-q75-nosub", "rgb1k", (256,), "jpeg", extra=q(75) + ("--rgbjpeg",)),
        _vips("jpeg-q95-nosub", "rgb1k", (256,), "jpeg", extra=q(95)),
        # lossless codecs
        _vips("deflate-nopred-pyr", "rgb1k", (256,), "deflate", True, nopred),
        _vips("deflate-pred-pyr", "rgb1k", (256,), "deflate", True, pred),
        _vips("lzw-nopred-pyr", "rgb1k", (256,), "lzw", True, nopred),
        _vips("lzw-pred-pyr", "rgb1k", (256,), "lzw", True, pred),
        _vips("zstd-pred-pyr", "rgb1k", (256,), "zstd", True, pred),
        _vips("zstd-nopred", "rgb1k", (256,), "zstd", False, nopred),
        _vips("webp-lossy-pyr", "rgb1k", (256,), "webp", True, q(80)),
        _vips("webp-lossless", "rgb1k", (256,), "webp", False, ("--lossless",)),
        _vips("packbits-pyr", "rgb1k", (256,), "packbits", True),
        _vips("none-pyr", "rgb1k", (256,), "none", True),
        # pyramid layouts, BigTIFF
        _vips("jpeg-subifd-pyr", "rgb2k", (256,), "jpeg", True, subifd=True),
        _vips("deflate-subifd-pyr", "rgb1k", (256,), "deflate", True, subifd=True),
        _vips("jpeg-bigtiff-pyr", "rgb1k", (256,), "jpeg", True, ("--bigtiff",)),
        _vips("deflate-bigtiff-subifd-pyr", "rgb1k", (128,), "deflate", True, ("--bigtiff",),
              subifd=True),
        # odd sizes: partial edge tiles and non-integer downsamples
        _vips("odd-jpeg-pyr", "odd", (256,), "jpeg", True),
        _vips("odd-deflate-t240-pyr", "odd", (240,), "deflate", True),
        # grayscale and RGBA (vips 8.14 crashes writing 1-band WebP; JPEG drops alpha)
        _vips("gray-jpeg-pyr", "gray", (256,), "jpeg", True),
        _vips("gray-deflate-pyr", "gray", (256,), "deflate", True),
        _vips("gray-zstd", "gray", (128,), "zstd"),
        _vips("rgba-deflate-pyr", "rgba", (256,), "deflate", True),
        _vips("rgba-webp-lossless-pyr", "rgba", (256,), "webp", True, ("--lossless",)),
        _vips("rgba-webp-lossy", "rgba", (256,), "webp", False, q(80)),
        _vips("rgba-zstd", "rgba", (256,), "zstd"),
        # read by libvips only: OpenSlide 3.4.1 has no JPEG 2000 in generic TIFF, nor strips
        _vips("jp2k-pyr", "rgb1k", (256,), "jp2k", True, openslide=False),
        # the same tiles labelled 33003 (Aperio's YCbCr JPEG 2000), which libvips decodes alike
        _relabel(_vips("jp2k33003-pyr", "rgb1k", (256,), "jp2k", True, openslide=False), 33003),
        _vips("strip-deflate", "rgb1k", None, "deflate", openslide=False),
        _vips("strip-jpeg", "rgb1k", None, "jpeg", openslide=False),
        _vips("strip-odd-none", "odd", None, "none", openslide=False),
        # tifffile writers (OpenSlide 3.4.1 does not open big-endian TIFF)
        _tifffile("tf-bigendian-deflate-pyr", [(900, 700), (450, 350), (225, 175)],
                  openslide=False),
        _tifffile("tf-bigendian-none", [(333, 257)], openslide=False),
        _tifffile("tf-bigtiff-pyr", [(900, 700), (450, 350), (225, 175)]),
        _tifffile("tf-subifd-pyr", [(900, 700), (450, 350), (225, 175)], subifd=True),
        _tifffile("tf-deflate-pred", [(777, 555)]),
        # compression 32946 (the old "PKZIP" deflate code), same stream as 8
        _tifffile("tf-deflate32946-pyr", [(640, 480), (320, 240)]),
        # a big-endian BigTIFF, deflate with the horizontal predictor (tifffile has no LZW writer
        # without imagecodecs)
        _tifffile("tf-bigendian-bigtiff-deflate", [(500, 300)], openslide=False),
    ]
    specs += [
        SlideSpec("aperio-jpeg-CMU-1-Small-Region.svs", "testdata",
                  "aperio-jpeg-CMU-1-Small-Region.svs", pages=(0,), background=255,
                  vendor="aperio"),
        SlideSpec("aperio-jpeg-tiny-16x16.svs", "testdata", "aperio-jpeg-tiny-16x16.svs",
                  pages=(0,), background=255, vendor="aperio"),
        SlideSpec("hamamatsu-ndpi-DAPI.ndpi", "testdata", "hamamatsu-ndpi-DAPI.ndpi",
                  pages=(0, 1, 2, 3), background=None, vendor="hamamatsu"),
        SlideSpec("generic-webp-rgba-pyramid.tif", "testdata", "generic-webp-rgba-pyramid.tif",
                  pages=(0, 1, 2), bands=4),
        SlideSpec("generic-jpeg-ycbcr-128tiles.tiff", "testdata",
                  "generic-jpeg-ycbcr-128tiles.tiff", pages=(0,)),
        SlideSpec("generic-zstd-1024tiles-pyramid.tiff", "testdata",
                  "generic-zstd-1024tiles-pyramid.tiff", pages=(0, 1, 2, 3, 4)),
    ]
    return specs


SPECS = {s.name: s for s in all_specs()}


def level_cases(pred=None):
    """(slide name, level) pairs, optionally filtered by pred(spec, level)."""
    out = []
    for s in SPECS.values():
        for lv in range(s.nlevels):
            if pred is None or pred(s, lv):
                out.append((s.name, lv))
    return out


# --- making the files ---------------------------------------------------------------------

class SlideFactory:
    """Writes fixtures on demand into one directory, each at most once per session."""

    def __init__(self, directory):
        self.dir = directory
        self._lock = threading.Lock()
        self._big = None
        self._done = {}

    def _picture(self):
        if self._big is None:
            self._big = synth_picture()
        return self._big

    def source(self, name):
        """Path of the .v file of a source picture."""
        path = os.path.join(self.dir, "src-%s.v" % name)
        if path in self._done:
            return path
        w, h, bands, x0, y0 = SOURCES[name]
        rgb = self._picture()[y0:y0 + h, x0:x0 + w]
        if bands == 1:
            pix = np.ascontiguousarray(rgb[..., 1])
            interp = "b-w"
        elif bands == 4:
            pix = np.dstack([rgb, alpha_pattern(h, w)])
            interp = "srgb"
        else:
            pix = np.ascontiguousarray(rgb)
            interp = "srgb"
        raw = path + ".raw"
        pix.tofile(raw)
        tmp = path + ".tmp.v"
        run(["vips", "rawload", raw, tmp, w, h, bands])
        run(["vips", "copy", tmp, path, "--interpretation", interp])
        os.unlink(raw)
        os.unlink(tmp)
        self._done[path] = True
        return path

    def source_array(self, name):
        w, h, bands, x0, y0 = SOURCES[name]
        rgb = self._picture()[y0:y0 + h, x0:x0 + w]
        if bands == 1:
            return rgb[..., 1:2]
        if bands == 4:
            return np.dstack([rgb, alpha_pattern(h, w)])
        return rgb

    def path(self, name):
        """Path of fixture `name`, writing it first if needed."""
        spec = SPECS[name]
        if spec.kind == "testdata":
            p = os.path.join(TESTDATA, spec.source)
            if not os.path.isfile(p):
                raise FileNotFoundError("test data file missing: %s" % p)
            return p
        with self._lock:
            if name in self._done:
                return self._done[name]
            out = os.path.join(self.dir, name + ".tif")
            if spec.kind == "vips":
                run(["vips", "tiffsave", self.source(spec.source), out] + list(spec.args))
                if spec.compression_tag:
                    _relabel_compression(out, spec.compression_tag)
            else:
                TIFFFILE_WRITERS[name](self, out)
            self._done[name] = out
            return out


def _relabel_compression(path, compression):
    import tiffbytes
    with open(path, "rb") as f:
        data = f.read()
    t = tiffbytes.Tiff(data)
    for i in range(len(t.ifds)):
        data = tiffbytes.patch_value(data, t, i, "Compression", 0, compression)
    with open(path, "wb") as f:
        f.write(data)


def _halve(a):
    return np.ascontiguousarray(a[::2, ::2])


def _tf_pyramid(factory, out, sizes, tile, byteorder="<", bigtiff=False, compression=None,
                subifd=False, predictor=None):
    import tifffile
    w, h = sizes[0]
    a = np.ascontiguousarray(factory._picture()[150:150 + h, 250:250 + w])
    arrays = [a]
    for (lw, lh) in sizes[1:]:
        arrays.append(_halve(arrays[-1])[:lh, :lw])
    kw = dict(tile=tile, photometric="rgb", compression=compression, predictor=predictor)
    with tifffile.TiffWriter(out, byteorder=byteorder, bigtiff=bigtiff) as tw:
        if subifd:
            tw.write(arrays[0], subifds=len(arrays) - 1, **kw)
        else:
            tw.write(arrays[0], **kw)
        for arr in arrays[1:]:
            tw.write(arr, subfiletype=1, **kw)
    for arr, (lw, lh) in zip(arrays, sizes):
        assert arr.shape[:2] == (lh, lw)


TIFFFILE_WRITERS = {
    "tf-deflate32946-pyr": lambda f, o: _tf_pyramid(
        f, o, SPECS["tf-deflate32946-pyr"].levels, (128, 128), compression=32946),
    "tf-bigendian-bigtiff-deflate": lambda f, o: _tf_pyramid(
        f, o, SPECS["tf-bigendian-bigtiff-deflate"].levels, (64, 64), byteorder=">", bigtiff=True,
        compression="zlib", predictor=True),
    "tf-bigendian-deflate-pyr": lambda f, o: _tf_pyramid(
        f, o, SPECS["tf-bigendian-deflate-pyr"].levels, (256, 256), byteorder=">",
        compression="zlib"),
    "tf-bigendian-none": lambda f, o: _tf_pyramid(
        f, o, SPECS["tf-bigendian-none"].levels, (128, 128), byteorder=">"),
    "tf-bigtiff-pyr": lambda f, o: _tf_pyramid(
        f, o, SPECS["tf-bigtiff-pyr"].levels, (128, 128), bigtiff=True),
    "tf-subifd-pyr": lambda f, o: _tf_pyramid(
        f, o, SPECS["tf-subifd-pyr"].levels, (256, 256), compression="zlib", subifd=True),
    "tf-deflate-pred": lambda f, o: _tf_pyramid(
        f, o, SPECS["tf-deflate-pred"].levels, (256, 256), compression="zlib", predictor=True),
}
