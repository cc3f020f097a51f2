"""Alpha as openslide-python gives it.

OpenSlide 3.4.1 reads slides with alpha through libtiff's TIFFRGBAImage into premultiplied
ARGB, and openslide-python divides the colour by alpha again, rounding down. tessera gives
straight alpha. So that regions match byte for byte:
- a pixel of alpha 0 has no colour in premultiplied ARGB: it becomes (0, 0, 0, 0);
- unassociated alpha (ExtraSamples 2) is premultiplied by libtiff with rounding to nearest,
  which the division does not undo exactly: the same two steps are applied here;
- associated alpha (ExtraSamples 1) is un-premultiplied by tessera as openslide-python does.

Which kind a level has is tessera's (`level_info(level)["alpha"]`, the level's ExtraSamples).
"""

ASSOCIATED, UNASSOCIATED = "associated", "unassociated"


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
