"""What OpenSlide 3.4.1 reports from a slide's TIFF directories that tessera's native API does
not give byte for byte: openslide.quickhash-1, and the tiff.* properties OpenSlide prints
otherwise than tessera or that tessera leaves out. This file reads the directories itself; every size comes from the file
and is checked before use, and a file it cannot parse gives nothing, never an exception.

quickhash-1, for the TIFF formats tessera and OpenSlide both read (Aperio, generic tiled TIFF,
Hamamatsu NDPI): SHA-256 over the raw bytes of every tile (or strip) of the smallest stored
level's directory, in file order (NDPI's levels decoded at 1/2, 1/4 and 1/8 have no directory
of their own and are not hashed), then, for nine string tags of the first directory, the property
name and the tag's text, each followed by a NUL (a missing tag counts as the empty string).
No hash when those tiles hold more than 5 MiB (OpenSlide leaves the property out then).
"""

import hashlib
import math
import os
import struct

VENDORS = ("aperio", "generic-tiff", "hamamatsu")
_MAX_HASHED = 5 << 20  # OpenSlide's limit on the bytes of the level hashed
_MAX_DIRECTORIES = 4096
_MAX_ENTRIES = 4096
_STRINGS = (("tiff.ImageDescription", 270), ("tiff.Make", 271), ("tiff.Model", 272),
            ("tiff.Software", 305), ("tiff.DateTime", 306), ("tiff.Artist", 315),
            ("tiff.HostComputer", 316), ("tiff.Copyright", 33432),
            ("tiff.DocumentName", 269))
_WIDTH, _LENGTH = 256, 257
_STRIP_OFFSETS, _STRIP_BYTES, _TILE_OFFSETS, _TILE_BYTES = 273, 279, 324, 325
_TILE_WIDTH = 322
_FLOATS = (("tiff.XResolution", 282), ("tiff.YResolution", 283), ("tiff.XPosition", 286),
           ("tiff.YPosition", 287))
_RESOLUTION_UNIT, _DOCUMENT_NAME, _ICC_PROFILE = 296, 269, 34675
_UNITS = {1: "none", 2: "inch", 3: "centimeter"}
# TIFF type -> struct format of one value, for the number types OpenSlide reads as floats
_REALS = {5: "II", 10: "ii", 11: "f", 12: "d"}
# TIFF type -> (struct format, size), for the integer types offsets, counts and sizes use
_INTEGERS = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


class _Bad(Exception):
    pass


class _Tiff:
    def __init__(self, f, size):
        self.f, self.size = f, size
        head = self.read(0, 16 if size >= 16 else 8)
        self.e = {b"II": "<", b"MM": ">"}.get(head[:2])
        if self.e is None:
            raise _Bad()
        version = struct.unpack(self.e + "H", head[2:4])[0]
        if version == 42:
            self.big, first = False, struct.unpack(self.e + "I", head[4:8])[0]
        elif version == 43 and len(head) == 16:
            self.big, first = True, struct.unpack(self.e + "Q", head[8:16])[0]
        else:
            raise _Bad()
        self.dirs = []
        seen = set()
        while first and first not in seen and len(self.dirs) < _MAX_DIRECTORIES:
            seen.add(first)
            entries, first = self._directory(first)
            self.dirs.append(entries)

    def read(self, offset, n):
        if offset < 0 or n < 0 or offset + n > self.size:
            raise _Bad()
        self.f.seek(offset)
        data = self.f.read(n)
        if len(data) != n:
            raise _Bad()
        return data

    def _directory(self, offset):
        """{tag: (type, count, value field bytes)}, and the next directory's offset."""
        count_fmt, entry_fmt, entry_size, next_fmt = (
            ("Q", "HHQ8s", 20, "Q") if self.big else ("H", "HHI4s", 12, "I"))
        count_size = struct.calcsize(count_fmt)
        n = struct.unpack(self.e + count_fmt, self.read(offset, count_size))[0]
        if n > _MAX_ENTRIES:
            raise _Bad()
        raw = self.read(offset + count_size, n * entry_size + struct.calcsize(next_fmt))
        entries = {}
        for i in range(n):
            tag, kind, count, value = struct.unpack(
                self.e + entry_fmt, raw[i * entry_size:(i + 1) * entry_size])
            entries.setdefault(tag, (kind, count, value))
        return entries, struct.unpack(self.e + next_fmt, raw[n * entry_size:])[0]

    def _bytes(self, entry, item_size):
        """The bytes of an entry's values: held in the entry or at the offset it holds."""
        kind, count, value = entry
        total = count * item_size
        if total <= len(value):
            return value[:total]
        offset = struct.unpack(self.e + ("Q" if self.big else "I"), value)[0]
        return self.read(offset, total)

    def integers(self, d, tag):
        entry = self.dirs[d].get(tag)
        if entry is None or entry[0] not in _INTEGERS:
            return None
        fmt, item = _INTEGERS[entry[0]]
        if entry[1] * item > self.size:
            raise _Bad()
        data = self._bytes(entry, item)
        return list(struct.unpack(self.e + fmt * entry[1], data))

    def number(self, d, tag):
        """The first value of a RATIONAL, SRATIONAL, FLOAT or DOUBLE tag as a float (a
        rational as OpenSlide divides it, in double), or None."""
        entry = self.dirs[d].get(tag)
        if entry is None or entry[0] not in _REALS or entry[1] < 1:
            return None
        fmt = _REALS[entry[0]]
        size = struct.calcsize(fmt)
        if entry[1] * size > self.size:
            raise _Bad()
        # where the values are depends on all of them, even though one is used
        values = struct.unpack(self.e + fmt, self._bytes(entry, size)[:size])
        if len(values) == 2:
            return values[0] / values[1] if values[1] else None
        return float(values[0])

    def text(self, d, tag):
        """A tag's bytes up to the first NUL, or None when the directory lacks it."""
        entry = self.dirs[d].get(tag)
        if entry is None:
            return None
        if entry[1] > self.size:
            raise _Bad()
        return self._bytes(entry, 1).split(b"\0", 1)[0]


def _open(path):
    f = open(path, "rb")
    try:
        return _Tiff(f, os.fstat(f.fileno()).st_size)
    except BaseException:
        f.close()
        raise


def tags(path):
    """The tiff.* properties OpenSlide stores from the first directory, as it prints them,
    where tessera's differ or are missing: XResolution, YResolution, XPosition, YPosition
    (the first value, 17 significant digits as GLib's g_ascii_dtostr prints it),
    ResolutionUnit (none, inch, centimeter or unknown; inch when absent) and DocumentName.
    {} where the file cannot tell."""
    out = {}
    try:
        tiff = _open(path)
        with tiff.f:
            if not tiff.dirs:
                return {}
            for name, tag in _FLOATS:
                value = tiff.number(0, tag)
                if value is not None and math.isfinite(value):
                    out[name] = "%.17g" % value
            unit = tiff.integers(0, _RESOLUTION_UNIT)
            out["tiff.ResolutionUnit"] = _UNITS.get(unit[0] if unit else 2, "unknown")
            entry = tiff.dirs[0].get(_DOCUMENT_NAME)
            if entry is not None and entry[0] in (2, 7):
                out["tiff.DocumentName"] = tiff.text(0, _DOCUMENT_NAME).decode(
                    "utf-8", "replace")
    except (OSError, _Bad, struct.error):
        return {}
    return out


def icc(path):
    """The first directory's ICC profile (tag 34675, UNDEFINED or BYTE values): the profile
    OpenSlide 4 gives a slide (libtessera-openslide's .so.1 reads the same tag), or None."""
    try:
        tiff = _open(path)
        with tiff.f:
            entry = tiff.dirs[0].get(_ICC_PROFILE) if tiff.dirs else None
            if entry is None or entry[0] not in (1, 7) or entry[1] == 0:
                return None
            if entry[1] > tiff.size:
                return None
            return tiff._bytes(entry, 1)
    except (OSError, _Bad, struct.error):
        return None


def quickhash1(path, vendor, levels):
    """openslide.quickhash-1 of the slide at path, whose levels have the sizes levels=((width,
    height), ...) (largest first) and vendor tessera's vendor name; None where OpenSlide gives
    none or this cannot tell."""
    if vendor not in VENDORS:
        return None
    try:
        tiff = _open(path)
        with tiff.f:
            return _hash(tiff, levels, tiled=vendor != "hamamatsu")
    except (OSError, _Bad, struct.error):
        return None


def _stored_level(tiff, levels, tiled):
    """The directory of the smallest level stored in one of its own: the last of levels that a
    directory of that size and layout holds. An NDPI level decoded at a JPEG scale has none,
    so the smallest stored level is hashed, as OpenSlide hashes it."""
    sizes = {}
    for d in range(len(tiff.dirs)):
        dims = (tiff.integers(d, _WIDTH), tiff.integers(d, _LENGTH))
        if None in dims or not dims[0] or not dims[1]:
            continue
        if tiled == (_TILE_WIDTH in tiff.dirs[d]):
            sizes.setdefault((dims[0][0], dims[1][0]), d)
    for size in reversed(levels):
        if tuple(size) in sizes:
            return sizes[tuple(size)]
    return None


def _hash(tiff, levels, tiled):
    level = _stored_level(tiff, levels, tiled)
    if level is None:
        return None
    offsets = tiff.integers(level, _TILE_OFFSETS)
    counts = tiff.integers(level, _TILE_BYTES)
    if offsets is None:
        offsets = tiff.integers(level, _STRIP_OFFSETS)
        counts = tiff.integers(level, _STRIP_BYTES)
    if not offsets or counts is None or len(offsets) != len(counts):
        return None
    if sum(counts) > _MAX_HASHED:
        return None
    h = hashlib.sha256()
    for offset, count in zip(offsets, counts):
        h.update(tiff.read(offset, count))
    for name, tag in _STRINGS:
        h.update(name.encode() + b"\0")
        h.update((tiff.text(0, tag) or b"") + b"\0")
    return h.hexdigest()
