"""Alpha as openslide-python gives it.

OpenSlide 3.4.1 reads slides with alpha through libtiff's TIFFRGBAImage into premultiplied
ARGB, and openslide-python divides the colour by alpha again, rounding down. tessera gives
straight alpha. So that regions match byte for byte:
- a pixel of alpha 0 has no colour in premultiplied ARGB: it becomes (0, 0, 0, 0);
- unassociated alpha (ExtraSamples 2) is premultiplied by libtiff with rounding to nearest,
  which the division does not undo exactly: the same two steps are applied here;
- associated alpha (ExtraSamples 1) is un-premultiplied by tessera as openslide-python does.

Which kind a file has is read from its first directory's ExtraSamples tag here: tessera's
level information says how many samples a level has but not what the extra one means, and
every writer seen (libvips, tifffile, GDAL) writes the same kind in each directory.
"""

import struct

ASSOCIATED, UNASSOCIATED = 1, 2
_EXTRA_SAMPLES = 338


def alpha_kind(path):
    """The first value of the first directory's ExtraSamples tag (0 when the file has none or
    cannot be parsed)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None:
                return 0
            version = struct.unpack(order + "H", head[2:4])[0]
            if version == 42:
                first, count_fmt, entry_fmt, entry_size = (
                    struct.unpack(order + "I", head[4:8])[0], "H", "HHI4s", 12)
            elif version == 43:
                first, count_fmt, entry_fmt, entry_size = (
                    struct.unpack(order + "Q", head[8:16])[0], "Q", "HHQ8s", 20)
            else:
                return 0
            f.seek(first)
            count_size = struct.calcsize(count_fmt)
            count = struct.unpack(order + count_fmt, f.read(count_size))[0]
            if count > 4096:  # more entries than any tag set: not a directory
                return 0
            entries = f.read(count * entry_size)
    except (OSError, struct.error):
        return 0
    for i in range(len(entries) // entry_size):
        tag, kind, n, value = struct.unpack(order + entry_fmt,
                                            entries[i * entry_size:(i + 1) * entry_size])
        if tag == _EXTRA_SAMPLES and n >= 1 and kind == 3:  # SHORT, held inline
            return struct.unpack(order + "H", value[:2])[0]
    return 0


def as_openslide(pixels, kind):
    """RGBA pixels (an (h, w, 4) buffer of straight alpha) as openslide-python returns them
    for a file whose alpha is `kind`: a new NumPy array."""
    import numpy as np

    a = np.array(pixels, copy=True)
    alpha = a[..., 3]
    if kind == UNASSOCIATED:
        partial = (alpha > 0) & (alpha < 255)
        if partial.any():
            colour = a[partial][:, :3].astype(np.uint32)
            part_alpha = alpha[partial].astype(np.uint32)[:, None]
            premultiplied = (colour * part_alpha + 127) // 255
            a[partial, :3] = (premultiplied * 255 // part_alpha).astype(np.uint8)
    a[alpha == 0] = 0
    return a
