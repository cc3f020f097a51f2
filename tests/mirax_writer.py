"""A writer of MIRAX (3DHistech .mrxs) slides for the tests, made at test time from real pixels.

A MIRAX slide is a `NAME.mrxs` file (OpenSlide reads nothing in it) beside a folder `NAME/`
holding `Slidedat.ini` (an INI file: the grid of camera images, each zoom level's image size,
overlap, format and resolution, the data files), `Index.dat` (where each image's bytes lie)
and `Data*.dat` files (the images' bytes, one after another). The layout written here is the
one OpenSlide 3.4.1's MIRAX reader (openslide-vendor-mirax.c) reads:

- Index.dat starts with "01.02" and the slide's SLIDE_ID, then two little-endian int32: the
  offset of the table of zoom-level pointers (one per level, "hierarchical" records) and the
  offset of the table of pointers to the "non-hierarchical" records (camera positions,
  associated images). A level's pointer leads to [0, first page]; a page is
  [count, next page or 0, count x (image index, offset, length, file number)]. A
  non-hierarchical record's pointer leads to [0, page]; its page is
  [1, 0, 0, 0, offset, length, file number].
- Image index y * IMAGENUMBER_X + x names the camera image at column x, row y of level 0; the
  image of level L at (x, y) (both multiples of 2^L) holds the 2^L x 2^L level-0 images from
  there, each downsampled 2^L times, in one image of the same size as level 0's.
- The camera positions (VIMSLIDE_POSITION_BUFFER): 9 bytes a position, a flag byte then x and y
  (int32) in level-0 pixels; without them OpenSlide places images edge to edge less the
  overlap.

Pixels are whatever the caller gives per image (tests cut them from real slide pixels); which
level-0 images are left out (missing tiles) and the positions (overlapping, jittered) are the
caller's too. JPEG tiles are encoded by PIL.
"""

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

INDEX_VERSION = b"01.02"


def encode(arr, fmt="JPEG", quality=90):
    out = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(arr).save(out, "JPEG", quality=quality)
    elif fmt == "PNG":
        Image.fromarray(arr).save(out, "PNG")
    elif fmt == "BMP24":
        Image.fromarray(arr).save(out, "BMP")
    else:
        raise ValueError(fmt)
    return out.getvalue()


class Mirax:
    """One slide's contents, written by write().

    images: {level: {(x, y): ndarray HxWx3}} with (x, y) the level-0 column and row of the
    image's first camera image (multiples of 2^level).
    positions: None, or [(x, y)] per camera position (row-major, IMAGENUMBER_X across), written
    as VIMSLIDE_POSITION_BUFFER (or compressed, as StitchingIntensityLayer, when stitching).
    associated: {"macro"|"label"|"thumbnail": ndarray} (JPEG).
    """

    def __init__(self, across, down, image_w, image_h, levels, overlap=(0, 0), fmt="JPEG",
                 mpp=(0.2425, 0.2431), magnification="20", fill_bgr=0xFFFFFF, divisions=1):
        self.across, self.down = across, down
        self.image_w, self.image_h = image_w, image_h
        self.levels = levels
        self.overlap = overlap
        self.fmt = fmt
        self.mpp = mpp
        self.magnification = magnification
        self.fill_bgr = fill_bgr
        self.images = {lv: {} for lv in range(levels)}
        self.positions = None
        self.stitching = False
        self.associated = {}
        self.slide_id = "a7c8ee6c-54b0-4bd0-9b1a-7d5c2f9e1a22"
        self.files = 2  # images alternate between Data0000.dat and Data0001.dat
        self.page = 3  # index entries per data page, so levels span several pages
        self.extra_ini = ""
        self.divisions = divisions

    # ---- what OpenSlide computes from the INI (for the tests' expectations) ----
    def ini(self, nonhier):
        g = ["[GENERAL]",
             "SLIDE_VERSION=01.02",
             "SLIDE_ID=%s" % self.slide_id,
             "SLIDE_NAME=tessera-test",
             "IMAGENUMBER_X=%d" % self.across,
             "IMAGENUMBER_Y=%d" % self.down,
             "OBJECTIVE_MAGNIFICATION=%s" % self.magnification,
             "CameraImageDivisionsPerSide=%d" % self.divisions,
             "",
             "[HIERARCHICAL]",
             "HIER_COUNT=1",
             "NONHIER_COUNT=%d" % len(nonhier),
             "INDEXFILE=Index.dat",
             "HIER_0_NAME=Slide zoom level",
             "HIER_0_COUNT=%d" % self.levels]
        for lv in range(self.levels):
            g.append("HIER_0_VAL_%d=ZoomLevel_%d" % (lv, lv))
            g.append("HIER_0_VAL_%d_SECTION=LAYER_0_LEVEL_%d_SECTION" % (lv, lv))
        sections = []
        for i, (name, vals) in enumerate(nonhier):
            g.append("NONHIER_%d_NAME=%s" % (i, name))
            g.append("NONHIER_%d_COUNT=%d" % (i, len(vals)))
            for j, (val, section, keys) in enumerate(vals):
                g.append("NONHIER_%d_VAL_%d=%s" % (i, j, val))
                g.append("NONHIER_%d_VAL_%d_SECTION=%s" % (i, j, section))
                sections.append("[%s]" % section)
                sections += ["%s=%s" % kv for kv in keys]
                sections.append("")
        g += ["", "[DATAFILE]", "FILE_COUNT=%d" % self.files]
        g += ["FILE_%d=Data%04d.dat" % (i, i) for i in range(self.files)]
        g.append("")
        for lv in range(self.levels):
            g += ["[LAYER_0_LEVEL_%d_SECTION]" % lv,
                  "OVERLAP_X=%g" % (self.overlap[0] / 2 ** lv),
                  "OVERLAP_Y=%g" % (self.overlap[1] / 2 ** lv),
                  "MICROMETER_PER_PIXEL_X=%r" % (self.mpp[0] * 2 ** lv),
                  "MICROMETER_PER_PIXEL_Y=%r" % (self.mpp[1] * 2 ** lv),
                  "IMAGE_FILL_COLOR_BGR=%d" % self.fill_bgr,
                  "DIGITIZER_WIDTH=%d" % self.image_w,
                  "DIGITIZER_HEIGHT=%d" % self.image_h,
                  "IMAGE_CONCAT_FACTOR=%d" % (0 if lv == 0 else 1),
                  "IMAGE_FORMAT=%s" % self.fmt,
                  ""]
        return "\r\n".join(g + sections + [self.extra_ini]) + "\r\n"

    def write(self, path):
        """Writes PATH (ending in .mrxs) and its folder; returns the folder."""
        assert path.endswith(".mrxs")
        folder = path[:-5]
        os.makedirs(folder, exist_ok=True)
        with open(path, "wb"):
            pass
        data = [bytearray(b"tessera mirax data file %d\0" % i) for i in range(self.files)]
        counter = [0]

        def put(blob):
            n = counter[0] % self.files
            counter[0] += 1
            off = len(data[n])
            data[n] += blob
            return off, len(blob), n

        # non-hierarchical records: positions first, then the associated images
        nonhier, records = [], []
        if self.positions is not None:
            buf = b"".join(struct.pack("<Bii", 1, x, y) for x, y in self.positions)
            if self.stitching:
                nonhier.append(("StitchingIntensityLayer",
                                [("StitchingIntensityLevel", "NONHIERLAYER_0_VAL_0_SECTION",
                                  [("COMPRESSSION", "zlib")])]))
                records.append(put(zlib.compress(buf)))
            else:
                nonhier.append(("VIMSLIDE_POSITION_BUFFER",
                                [("default", "NONHIERLAYER_0_VAL_0_SECTION", [])]))
                records.append(put(buf))
        keys = {"macro": ("ScanDataLayer_SlideThumbnail", "THUMBNAIL_IMAGE_TYPE"),
                "label": ("ScanDataLayer_SlideBarcode", "BARCODE_IMAGE_TYPE"),
                "thumbnail": ("ScanDataLayer_SlidePreview", "PREVIEW_IMAGE_TYPE")}
        vals = []
        for name in ("macro", "label", "thumbnail"):
            if name in self.associated:
                val, key = keys[name]
                vals.append((val, "NONHIERLAYER_%d_VAL_%d_SECTION" % (len(nonhier), len(vals)),
                             [(key, "JPEG")]))
                records.append(put(encode(self.associated[name], "JPEG")))
        if vals:
            nonhier.append(("Scan data layer", vals))
        # hierarchical: each level's images, in pages of self.page entries
        level_entries = []
        for lv in range(self.levels):
            entries = []
            for (x, y), arr in sorted(self.images[lv].items(), key=lambda kv: kv[0][::-1]):
                assert arr.shape == (self.image_h, self.image_w, 3), arr.shape
                off, n, f = put(encode(arr, self.fmt))
                entries.append((y * self.across + x, off, n, f))
            level_entries.append(entries)

        index = bytearray(INDEX_VERSION + self.slide_id.encode())
        root = len(index)
        index += b"\0" * 8  # hier table pointer, nonhier table pointer

        def i32(*v):
            return struct.pack("<%di" % len(v), *v)

        def patch(at, value):
            index[at:at + 4] = i32(value)

        hier_table = len(index)
        index += b"\0" * 4 * self.levels
        patch(root, hier_table)
        for lv, entries in enumerate(level_entries):
            head = len(index)
            patch(hier_table + 4 * lv, head)
            index += i32(0, 0)
            pages = [entries[i:i + self.page] for i in range(0, len(entries), self.page)] or [[]]
            prev = head + 4
            for page in pages:
                at = len(index)
                patch(prev, at)
                index += i32(len(page), 0)
                prev = at + 4
                for e in page:
                    index += i32(*e)
        nonhier_table = len(index)
        index += b"\0" * 4 * max(1, len(records))
        patch(root + 4, nonhier_table)
        for r, (off, n, f) in enumerate(records):
            head = len(index)
            patch(nonhier_table + 4 * r, head)
            index += i32(0, head + 8)
            index += i32(1, 0, 0, 0, off, n, f)

        with open(os.path.join(folder, "Slidedat.ini"), "wb") as f:
            f.write(b"\xef\xbb\xbf" + self.ini(nonhier).encode())
        with open(os.path.join(folder, "Index.dat"), "wb") as f:
            f.write(index)
        for i, d in enumerate(data):
            with open(os.path.join(folder, "Data%04d.dat" % i), "wb") as f:
                f.write(d)
        return folder


def reduce(arr, factor):
    """A box-filtered reduction by factor (dimensions divisible by it)."""
    if factor == 1:
        return arr
    h, w = arr.shape[0] // factor, arr.shape[1] // factor
    a = arr[:h * factor, :w * factor].reshape(h, factor, w, factor, -1).astype(np.uint32)
    return (a.mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def build(source, across, down, image_w, image_h, levels, overlap=(0, 0), jitter=None,
          skip=(), tint=False, **kw):
    """A Mirax of real pixels: camera image (x, y) of level 0 is cut from source at its camera
    position; an image of a higher level is its 2^L x 2^L level-0 images, each reduced 2^L
    times, side by side (as the scanner concatenates them). jitter: {(x, y): (dx, dy)} moves
    camera positions (pictures: divisions x divisions images each) from the nominal grid (then
    written as a position buffer). skip: level-0
    images left out (and, as OpenSlide reads it, the parts of higher levels only they cover).
    tint: each camera image brightened by its own amount, so that where images overlap, which
    one shows is plain to see."""
    m = Mirax(across, down, image_w, image_h, levels, overlap, **kw)
    div = m.divisions
    ax, ay = div * image_w - overlap[0], div * image_h - overlap[1]
    pos = {}  # by camera position (picture), which holds div x div images
    for y in range(down // div):
        for x in range(across // div):
            dx, dy = (jitter or {}).get((x, y), (0, 0))
            pos[(x, y)] = (x * ax + dx, y * ay + dy)
    if jitter is not None:
        m.positions = [pos[(x, y)] for y in range(down // div) for x in range(across // div)]
    cam = {}
    for y in range(down // div * div):
        for x in range(across // div * div):
            px, py = pos[(x // div, y // div)]
            px, py = px + image_w * (x % div), py + image_h * (y % div)
            part = source[py:py + image_h, px:px + image_w]
            assert part.shape[:2] == (image_h, image_w), "source too small"
            if tint:
                part = np.clip(part.astype(np.int16) + 9 * ((x + 2 * y) % 5) - 18, 0, 255)
            cam[(x, y)] = part.astype(np.uint8)
    for (x, y) in cam:
        if (x, y) not in skip:
            m.images[0][(x, y)] = np.ascontiguousarray(cam[(x, y)])
    for lv in range(1, levels):
        k = 2 ** lv
        sw, sh = image_w // k, image_h // k
        for y in range(0, down, k):
            for x in range(0, across, k):
                parts = [(x + i, y + j) for j in range(k) for i in range(k)
                         if (x + i, y + j) in cam and (x + i, y + j) not in skip]
                if not parts:
                    continue
                img = np.zeros((image_h, image_w, 3), np.uint8)
                for (cx, cy) in parts:
                    i, j = cx - x, cy - y
                    img[j * sh:(j + 1) * sh, i * sw:(i + 1) * sw] = reduce(cam[(cx, cy)], k)
                m.images[lv][(x, y)] = img
    return m
