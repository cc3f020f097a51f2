"""The first directory's ICC profile, read from the file itself: the one thing of a slide's
TIFF directories that tessera.openslide shows and tessera's public API does not give yet.
OpenSlide's properties (quickhash-1, the tiff.* tags as OpenSlide prints them) come from the
core (`Slide.openslide_properties`, tessera_openslide_properties), as libtessera-openslide's do.
Every size comes from the file and is checked before use; a file this cannot parse gives
nothing, never an exception.
"""

import os
import struct

_MAX_DIRECTORIES = 4096
_MAX_ENTRIES = 4096
_ICC_PROFILE = 34675


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


def _open(path):
    f = open(path, "rb")
    try:
        return _Tiff(f, os.fstat(f.fileno()).st_size)
    except BaseException:
        f.close()
        raise


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
