"""Writes the seed inputs of a fuzz target into a folder (fuzz/run.sh and fuzz/coverage.sh call it):

  seeds.py fuzz_open  OUT --cli TESSERA   small slides written by `vips tiffsave` (every codec,
                                          tiles of 16 and 64, pyramids as IFD chains and SubIFDs,
                                          strips, BigTIFF, gray, RGBA), one by tifffile
                                          (big-endian), `tessera sample --width 300 --height
                                          200`, two Sakura SVSlide databases, the files
                                          under 2 MB of the test data, and
                                          DICOM WSI instances written with pydicom by
                                          tests/dicom_writer.py (native, implicit VR, JPEG
                                          sparse, fragmented JPEG without an offset table,
                                          JPEG 2000)
  seeds.py fuzz_codec OUT --cli TESSERA   the first tiles of those slides (tiles up to 80x80),
                                          each behind the five bytes fuzz_codec.c reads first
                                          (codec, tile size, samples, photometric, predictor)

fuzz_xml and fuzz_vendor have their seeds checked in (fuzz/corpus/xml, fuzz/corpus/vendor).
"""

import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
import tiffbytes as tb  # noqa: E402

TESTDATA = os.environ.get("TESSERA_TESTDATA", os.path.join(os.path.dirname(REPO), "shared",
                                                           "testdata"))
SMALL = 2 << 20

# fuzz_codec.c's table: the first byte, modulo its length, picks one of these.
CODEC_CODES = [1, 5, 32773, 8, 50000, 7, 50001, 33003, 33004, 33005]
W, H = 160, 120


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("seeds.py: %s failed (%d): %s" % (" ".join(map(str, cmd)),
                                                           r.returncode, r.stderr[-1000:]))


def picture(path, bands):
    """A small PPM/PGM-like picture with gradients and edges, loaded by vips as a raw image."""
    px = bytearray()
    for y in range(H):
        for x in range(W):
            v = [(x * 3 + y) & 255, (y * 5 ^ x) & 255, ((x // 8 + y // 8) % 2) * 200 + 20,
                 255 if (x // 16 + y // 16) % 3 else (x * 7) & 255]
            px += bytes(v[:bands] if bands != 1 else v[:1])
    raw = path + ".raw"
    with open(raw, "wb") as f:
        f.write(px)
    run(["vips", "rawload", raw, path, W, H, bands])
    os.remove(raw)


def vips_slides(out, tmp):
    """name -> vips tiffsave arguments, each written from one of three pictures."""
    pics = {}
    for bands in (1, 3, 4):
        p = os.path.join(tmp, "pic%d.v" % bands)
        picture(p, bands)
        pics[bands] = p
    slides = []
    for comp in ("none", "jpeg", "deflate", "lzw", "packbits", "zstd", "webp", "jp2k"):
        for tile in (16, 64) if comp != "jp2k" else (64,):  # vips writes no JPEG 2000
            args = ["--tile", "--tile-width", tile, "--tile-height", tile, "--compression", comp]
            if tile == 64:
                args += ["--pyramid"]
            slides.append(("vips-%s-t%d%s.tif" % (comp, tile, "-pyramid" if tile == 64 else ""),
                           3, args))
    slides += [
        ("vips-jpeg-strips.tif", 3, ["--compression", "jpeg"]),
        ("vips-deflate-strips-gray.tif", 1, ["--compression", "deflate"]),
        ("vips-jpeg-t16-pyramid-bigtiff.tif", 3,
         ["--tile", "--tile-width", 16, "--tile-height", 16, "--compression", "jpeg", "--pyramid",
          "--bigtiff"]),
        ("vips-deflate-t32-subifd.tif", 3,
         ["--tile", "--tile-width", 32, "--tile-height", 32, "--compression", "deflate",
          "--pyramid", "--subifd"]),
        ("vips-webp-t32-rgba.tif", 4,
         ["--tile", "--tile-width", 32, "--tile-height", 32, "--compression", "webp"]),
        ("vips-lzw-t16-rgba.tif", 4,
         ["--tile", "--tile-width", 16, "--tile-height", 16, "--compression", "lzw"]),
        ("vips-zstd-t16-gray.tif", 1,
         ["--tile", "--tile-width", 16, "--tile-height", 16, "--compression", "zstd"]),
    ]
    for name, bands, args in slides:
        run(["vips", "tiffsave", pics[bands], os.path.join(out, name)] + args)


def tifffile_slide(out):
    import numpy as np
    import tifffile
    y, x = np.mgrid[0:96, 0:128]
    img = np.stack([x * 2, y * 2, (x ^ y) & 255], -1).astype(np.uint8)
    with tifffile.TiffWriter(os.path.join(out, "tifffile-be-deflate-t16.tif"), byteorder=">") as w:
        w.write(img, tile=(16, 16), compression="zlib", photometric="rgb")
        w.write(img[::2, ::2], tile=(16, 16), compression="zlib", photometric="rgb",
                subfiletype=1)


def sakura_slides(out):
    """Two small Sakura SVSlide databases (tests/sakura_writer.py): tiles of 16 over three
    levels with a missing tile and a label; and three focal planes."""
    import numpy as np
    import sakura_writer as sw
    y, x = np.mgrid[0:50, 0:70]
    img = np.stack([x * 3, y * 4, (x ^ y) & 255], -1).astype(np.uint8)
    m = sw.Sakura(img, 16, (1, 2, 4))
    m.skip = {(1, 1, 1)}
    m.label = img[:20, :30]
    m.write(os.path.join(out, "sakura-t16.svslide"))
    sw.Sakura(img[:33, :40], 16, (1, 2), planes=3).write(
        os.path.join(out, "sakura-planes.svslide"))


def dicom_seeds(out):
    """Small DICOM WSI files of one instance each (a file opens as a slide on its own)."""
    import dicom_writer as dw
    img = dw.source_image(96, 72)
    cases = [("native", {}, {}), ("implicit", {"sparse": True, "skip": {(1, 1)}}, {}),
             ("jpeg", {"sparse": True, "skip": {(0, 1)}}, {}),
             ("jpeg", {"per_frame": 2, "bot": False}, {}), ("j2k", {}, {})]
    for i, (codec, kw, _) in enumerate(cases):
        dw.Series().write(os.path.join(out, "dicom-%d-%s.dcm" % (i, codec)),
                          dw.Level(img, (32, 32), codec), **kw)


def open_seeds(out, cli, tmp):
    dicom_seeds(out)
    vips_slides(out, tmp)
    tifffile_slide(out)
    sakura_slides(out)
    run([cli, "sample", os.path.join(out, "tessera-sample-300x200.tiff"), "--width", 300,
         "--height", 200])
    for name in sorted(os.listdir(TESTDATA)):
        p = os.path.join(TESTDATA, name)
        with open(p, "rb") as f:
            magic = f.read(4)
        if os.path.getsize(p) < SMALL and magic[:2] in (b"II", b"MM"):
            shutil.copyfile(p, os.path.join(out, "testdata-" + name))


def jpeg_with_tables(tables, tile):
    """An abbreviated JPEG tile made whole: the tables' segments spliced in after its SOI."""
    if tables and tables[:2] == b"\xff\xd8" and tables[-2:] == b"\xff\xd9":
        return tile[:2] + tables[2:-2] + tile[2:]
    return tile


def codec_seeds(out, cli, tmp):
    slides = os.path.join(tmp, "slides")
    os.makedirs(slides, exist_ok=True)
    open_seeds(slides, cli, tmp)
    count = 0
    for name in sorted(os.listdir(slides)):
        with open(os.path.join(slides, name), "rb") as f:
            data = f.read()
        t = tb.Tiff(data)
        ents = t.ifds[0].entries
        if 322 not in ents:
            continue

        def tag(code, default):
            return t.values(0, code)[0] if code in ents else default

        comp = tag(259, 1)
        tw, th = tag(322, 0), tag(323, 0)
        spp, photometric, predictor = tag(277, 1), tag(262, 2), tag(317, 1)
        if comp not in CODEC_CODES or not 1 <= tw <= 80 or not 1 <= th <= 80 or spp > 4:
            continue
        tables = bytes(data[ents[347].data_pos:ents[347].data_pos + ents[347].count]) \
            if 347 in ents else b""
        flags = (1 if photometric in (6, 0) else 0) | (2 if predictor == 2 else 0)
        # vips's JPEG 2000 tiles (33004) are bare codestreams, as 33003 and 33005 hold too
        codes = [33003, 33004, 33005] if comp == 33004 else [comp]
        for k, (off, cnt) in enumerate(tb.tile_spans(t, 0)[:2]):
            tile = data[off:off + cnt]
            if comp == 7:
                tile = jpeg_with_tables(tables, tile)
            for code in codes:
                head = bytes([CODEC_CODES.index(code), tw - 1, th - 1, spp - 1, flags])
                with open(os.path.join(out, "%s-%d-tile%d" % (name, code, k)), "wb") as f:
                    f.write(head + tile)
                count += 1
    if count < 20:
        raise SystemExit("seeds.py: only %d codec seeds" % count)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target", choices=["fuzz_open", "fuzz_codec"])
    ap.add_argument("out")
    ap.add_argument("--cli", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tmp = a.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    (open_seeds if a.target == "fuzz_open" else codec_seeds)(a.out, a.cli, tmp)
    shutil.rmtree(tmp)
    print("%s: %d seeds in %s" % (a.target, len(os.listdir(a.out)), a.out))


if __name__ == "__main__":
    main()
