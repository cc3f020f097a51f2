"""A minimal writer of classic little-endian TIFFs with one directory, for hostile test files
whose tile bytes come from real encoders (vips, zstd) but whose tags say something else."""

import struct


def write_tiff(path, width, height, tile_w, tile_h, tiles, compression, photometric, spp,
               extra=()):
    """tiles: the bytes of each tile, in order. extra: (tag, type, count, packed value)."""
    out = bytearray(b"II*\x00" + b"\x00" * 4)
    offsets = []
    for t in tiles:
        offsets.append(len(out))
        out += t + (b"\x00" if len(t) % 2 else b"")

    def arr(fmt, values):
        return b"".join(struct.pack("<" + fmt, v) for v in values)

    entries = [(256, 4, 1, arr("I", [width])), (257, 4, 1, arr("I", [height])),
               (258, 3, spp, arr("H", [8] * spp)), (259, 3, 1, arr("H", [compression])),
               (262, 3, 1, arr("H", [photometric])), (277, 3, 1, arr("H", [spp])),
               (322, 4, 1, arr("I", [tile_w])), (323, 4, 1, arr("I", [tile_h])),
               (324, 4, len(offsets), arr("I", offsets)),
               (325, 4, len(tiles), arr("I", [len(t) for t in tiles]))]
    entries = sorted(entries + list(extra), key=lambda e: e[0])
    places = []
    for e in entries:
        if len(e[3]) > 4:
            places.append(len(out))
            out += e[3] + (b"\x00" if len(e[3]) % 2 else b"")
        else:
            places.append(None)
    ifd = len(out)
    out += struct.pack("<H", len(entries))
    for (tag, typ, count, value), place in zip(entries, places):
        inline = value if place is None else struct.pack("<I", place)
        out += struct.pack("<HHI", tag, typ, count) + inline.ljust(4, b"\x00")
    out += struct.pack("<I", 0)
    out[4:8] = struct.pack("<I", ifd)
    with open(path, "wb") as f:
        f.write(out)
