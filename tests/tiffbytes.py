"""Byte-level TIFF surgery for the damaged-file tests: parse the directories of a classic or
BigTIFF file, patch tag values and entries in place, and lay a file out again with its
directories first and its tile data after them (so truncating inside tile data leaves the
directories whole).
"""

import struct
from dataclasses import dataclass

TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
              13: 4, 16: 8, 17: 8, 18: 8}
INT_FORMATS = {1: "B", 3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q", 6: "b", 8: "h", 9: "i", 17: "q"}

TAG = {"ImageWidth": 256, "ImageLength": 257, "BitsPerSample": 258, "Compression": 259,
       "Photometric": 262, "StripOffsets": 273, "SamplesPerPixel": 277, "RowsPerStrip": 278,
       "StripByteCounts": 279, "TileWidth": 322, "TileLength": 323, "TileOffsets": 324,
       "TileByteCounts": 325, "SubIFDs": 330, "JPEGTables": 347}


@dataclass
class Entry:
    tag: int
    type: int
    count: int
    pos: int          # where the 12- or 20-byte entry starts
    value_pos: int    # where the inline value or the offset of the values is
    data_pos: int     # where the values are (value_pos when inline)

    @property
    def size(self):
        return TYPE_SIZES.get(self.type, 1) * self.count


@dataclass
class Ifd:
    offset: int
    entries: dict      # tag -> Entry
    next_pos: int      # where the next-IFD offset is stored
    next_offset: int


class Tiff:
    def __init__(self, data):
        self.data = bytes(data)
        bo = self.data[:2]
        if bo == b"II":
            self.e = "<"
        elif bo == b"MM":
            self.e = ">"
        else:
            raise ValueError("not a TIFF")
        version = struct.unpack(self.e + "H", self.data[2:4])[0]
        self.big = version == 43
        if self.big:
            self.first_pos = 8
            self.first = struct.unpack(self.e + "Q", self.data[8:16])[0]
        else:
            self.first_pos = 4
            self.first = struct.unpack(self.e + "I", self.data[4:8])[0]
        self.ifds = []
        seen = set()
        off = self.first
        while off and off not in seen and len(self.ifds) < 64:
            seen.add(off)
            ifd = self._read_ifd(off)
            self.ifds.append(ifd)
            off = ifd.next_offset

    def _u(self, fmt, pos):
        return struct.unpack_from(self.e + fmt, self.data, pos)[0]

    def _read_ifd(self, off):
        d = self.data
        if self.big:
            n = self._u("Q", off)
            p = off + 8
            esize, inline, cfmt, ofmt = 20, 8, "Q", "Q"
        else:
            n = self._u("H", off)
            p = off + 2
            esize, inline, cfmt, ofmt = 12, 4, "I", "I"
        entries = {}
        for i in range(n):
            pos = p + i * esize
            tag, typ = struct.unpack_from(self.e + "HH", d, pos)
            count = self._u(cfmt, pos + 4)
            vpos = pos + 4 + struct.calcsize(cfmt)
            size = TYPE_SIZES.get(typ, 1) * count
            dpos = vpos if size <= inline else self._u(ofmt, vpos)
            entries[tag] = Entry(tag, typ, count, pos, vpos, dpos)
        next_pos = p + n * esize
        next_off = self._u(ofmt, next_pos)
        return Ifd(off, entries, next_pos, next_off)

    def sub_ifds(self):
        """The directories that the SubIFDs tags of the chain's directories point to."""
        out = []
        for i, ifd in enumerate(self.ifds):
            if TAG["SubIFDs"] in ifd.entries:
                out += [self._read_ifd(off) for off in self.values(i, "SubIFDs")]
        return out

    def values(self, ifd, tag):
        e = self.ifds[ifd].entries[TAG.get(tag, tag)]
        fmt = INT_FORMATS[e.type]
        return list(struct.unpack_from(self.e + fmt * e.count, self.data, e.data_pos))

    def entry(self, ifd, tag):
        return self.ifds[ifd].entries[TAG.get(tag, tag)]


def patch_value(data, tiff, ifd, tag, index, value):
    """Overwrites one value of an integer tag where it is stored."""
    e = tiff.entry(ifd, tag)
    fmt = INT_FORMATS[e.type]
    b = bytearray(data)
    struct.pack_into(tiff.e + fmt, b, e.data_pos + index * struct.calcsize(fmt), value)
    return bytes(b)


def patch_entry(data, tiff, ifd, tag, typ, count, value):
    """Rewrites a classic-TIFF entry as (typ, count) with an inline value (or an offset)."""
    assert not tiff.big
    e = tiff.entry(ifd, tag)
    b = bytearray(data)
    struct.pack_into(tiff.e + "HI", b, e.pos + 2, typ, count)
    if typ == 3 and count == 1:
        struct.pack_into(tiff.e + "HH", b, e.value_pos, value, 0)
    else:
        struct.pack_into(tiff.e + "I", b, e.value_pos, value)
    return bytes(b)


def patch_next(data, tiff, ifd, value):
    b = bytearray(data)
    struct.pack_into(tiff.e + ("Q" if tiff.big else "I"), b, tiff.ifds[ifd].next_pos, value)
    return bytes(b)


def tile_spans(tiff, ifd):
    """(offset, byte count) of each tile or strip of a directory."""
    ents = tiff.ifds[ifd].entries
    if TAG["TileOffsets"] in ents:
        return list(zip(tiff.values(ifd, "TileOffsets"), tiff.values(ifd, "TileByteCounts")))
    return list(zip(tiff.values(ifd, "StripOffsets"), tiff.values(ifd, "StripByteCounts")))


def relayout_directories_first(data):
    """A classic little-endian TIFF with the same directories (chained by next-IFD offsets,
    no SubIFDs) and the same tile bytes, laid out as: header, every directory with its
    out-of-line values, then the tile data of each directory in order."""
    t = Tiff(data)
    assert not t.big and t.e == "<"
    for ifd in t.ifds:
        assert TAG["SubIFDs"] not in ifd.entries
    pos = 8
    plan = []
    for ifd in t.ifds:
        ifd_pos = pos
        pos += 2 + 12 * len(ifd.entries) + 4
        ext = {}
        for tag in sorted(ifd.entries):
            e = ifd.entries[tag]
            if e.size > 4:
                pos += pos & 1
                ext[tag] = pos
                pos += e.size
        pos += pos & 1
        plan.append((ifd_pos, ext))
    blobs = []
    new_offsets = []
    for i, ifd in enumerate(t.ifds):
        offs = []
        for off, cnt in tile_spans(t, i):
            offs.append(pos)
            blobs.append((pos, data[off:off + cnt]))
            pos += cnt
        new_offsets.append(offs)
    out = bytearray(pos)
    out[0:8] = b"II*\x00" + struct.pack("<I", plan[0][0])
    for i, ifd in enumerate(t.ifds):
        ifd_pos, ext = plan[i]
        tags = sorted(ifd.entries)
        struct.pack_into("<H", out, ifd_pos, len(tags))
        for k, tag in enumerate(tags):
            e = ifd.entries[tag]
            epos = ifd_pos + 2 + 12 * k
            struct.pack_into("<HHI", out, epos, e.tag, e.type, e.count)
            if tag in (TAG["TileOffsets"], TAG["StripOffsets"]):
                raw = struct.pack("<" + INT_FORMATS[e.type] * e.count, *new_offsets[i])
            else:
                raw = data[e.data_pos:e.data_pos + e.size]
            if e.size > 4:
                out[ext[tag]:ext[tag] + e.size] = raw
                struct.pack_into("<I", out, epos + 8, ext[tag])
            else:
                out[epos + 8:epos + 8 + e.size] = raw
        nxt = plan[i + 1][0] if i + 1 < len(t.ifds) else 0
        struct.pack_into("<I", out, ifd_pos + 2 + 12 * len(tags), nxt)
    for p, blob in blobs:
        out[p:p + len(blob)] = blob
    return bytes(out)
