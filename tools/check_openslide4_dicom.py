#!/usr/bin/python3
"""Compares tessera with a real OpenSlide 4 on DICOM series, out of tree (CI has no OpenSlide 4:
Debian 12 ships 3.4.1, which reads no DICOM). The series are the ones tests/test_dicom.py
writes; for each, OpenSlide 4 opens its first file and tessera the same path, and the two must
agree on every dicom.* property, openslide.quickhash-1 (tessera's openslide front computes it
from the SeriesInstanceUID), mpp, objective power, barcode, the levels, the associated images'
pixels, and every level's pixels wherever OpenSlide paints one (it leaves missing tiles
transparent where tessera paints its background, white, which is checked too). Series
OpenSlide refuses (implicit VR, fragmented frames without an offset table) are reported.

    LD_LIBRARY_PATH=PREFIX/lib TESSERA_LIB=build/src/libtessera.so \
        /usr/bin/python3 tools/check_openslide4_dicom.py PREFIX/lib/libopenslide.so.1 [WORKDIR]

PREFIX is an OpenSlide 4 install with libdicom, built as tools/check_openslide4.sh builds it.
"""
import ctypes
import hashlib
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import tessera_ctypes as T  # noqa: E402
import test_dicom as TD  # noqa: E402

if len(sys.argv) < 2:
    raise SystemExit(__doc__)
T.load()
L = ctypes.CDLL(sys.argv[1])
root = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="dicom-os4-")
shutil.rmtree(root, ignore_errors=True)
os.makedirs(root)
L.openslide_open.restype = ctypes.c_void_p
L.openslide_open.argtypes = [ctypes.c_char_p]
L.openslide_close.argtypes = [ctypes.c_void_p]
L.openslide_get_error.restype = ctypes.c_char_p
L.openslide_get_error.argtypes = [ctypes.c_void_p]
L.openslide_get_property_names.restype = ctypes.POINTER(ctypes.c_char_p)
L.openslide_get_property_names.argtypes = [ctypes.c_void_p]
L.openslide_get_property_value.restype = ctypes.c_char_p
L.openslide_get_property_value.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
L.openslide_get_level_count.argtypes = [ctypes.c_void_p]
L.openslide_get_level_dimensions.argtypes = [ctypes.c_void_p, ctypes.c_int32,
                                             ctypes.POINTER(ctypes.c_int64),
                                             ctypes.POINTER(ctypes.c_int64)]
L.openslide_read_region.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                    ctypes.c_int64, ctypes.c_int64, ctypes.c_int32,
                                    ctypes.c_int64, ctypes.c_int64]
L.openslide_get_associated_image_names.restype = ctypes.POINTER(ctypes.c_char_p)
L.openslide_get_associated_image_names.argtypes = [ctypes.c_void_p]
L.openslide_get_associated_image_dimensions.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                        ctypes.POINTER(ctypes.c_int64),
                                                        ctypes.POINTER(ctypes.c_int64)]
L.openslide_read_associated_image.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                              ctypes.POINTER(ctypes.c_uint32)]
slides = TD._build(root)
bad = refused = 0


def names(pp):
    out = []; i = 0
    while pp[i]: out.append(pp[i].decode()); i += 1
    return out

for name, (path, levels, assoc) in slides.items():
    opath = path
    if os.path.isdir(path):
        opath = os.path.join(path, sorted(os.listdir(path))[0])
    o = L.openslide_open(opath.encode())
    err = L.openslide_get_error(o) if o else b'open failed'
    if not o or err:
        print(name, "OpenSlide 4 refuses it:", err.decode())
        refused += 1
        continue
    op = {k: L.openslide_get_property_value(o, k.encode()).decode() for k in names(L.openslide_get_property_names(o))}
    with T.open_slide(path) as s:
        tp = s.properties
        td = {k: v for k, v in tp.items() if k.startswith('dicom.')}
        od = {k: v for k, v in op.items() if k.startswith('dicom.')}
        if td != od:
            bad += 1
            print(name, 'dicom.* differ:')
            for k in sorted(set(td) | set(od)):
                if td.get(k) != od.get(k): print('   ', k, repr(td.get(k)), repr(od.get(k)))
        want = dict(tp)
        want["tessera.quickhash-1"] = hashlib.sha256(
            tp["dicom.SeriesInstanceUID"].encode() + b"\0").hexdigest()
        for k in ("mpp-x", "mpp-y", "objective-power", "quickhash-1", "barcode"):
            same = op.get("openslide." + k) == want.get("tessera." + k)
            print("  ", name, k, op.get("openslide." + k), "same" if same else "DIFFERS")
            bad += not same
        L.openslide_get_icc_profile_size.restype = ctypes.c_int64
        L.openslide_get_icc_profile_size.argtypes = [ctypes.c_void_p]
        L.openslide_read_icc_profile.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        n = L.openslide_get_icc_profile_size(o)
        icc = b""
        if n > 0:
            buf = ctypes.create_string_buffer(n)
            L.openslide_read_icc_profile(o, buf)
            icc = buf.raw
        same = icc == (s.icc_profile or b"")
        print("  ", name, "ICC profile of", len(icc), "bytes", "same" if same else "DIFFERS")
        bad += not same
        n = L.openslide_get_level_count(o)
        dims = []
        for i in range(n):
            w, h = ctypes.c_int64(), ctypes.c_int64()
            L.openslide_get_level_dimensions(o, i, w, h); dims.append((w.value, h.value))
        if dims != s.level_dimensions():
            bad += 1; print(name, 'levels differ', dims, s.level_dimensions())
        if sorted(names(L.openslide_get_associated_image_names(o))) != sorted(s.associated_names):
            bad += 1; print(name, 'associated differ', names(L.openslide_get_associated_image_names(o)), s.associated_names)
        for an in s.associated_names:
            w, h = ctypes.c_int64(), ctypes.c_int64()
            L.openslide_get_associated_image_dimensions(o, an.encode(), w, h)
            buf = (ctypes.c_uint32 * (w.value * h.value))()
            L.openslide_read_associated_image(o, an.encode(), buf)
            a = np.frombuffer(buf, np.uint32).reshape(h.value, w.value)
            rgb = np.stack([(a >> 16) & 255, (a >> 8) & 255, a & 255], -1).astype(np.uint8)
            eq = np.array_equal(rgb, s.read_associated(an)[..., :3])
            print('  ', name, 'associated', an, (w.value, h.value), s.associated_dimensions(an), 'equal', eq)
            if not eq: bad += 1
        for i, (w, h) in enumerate(dims):
            buf = (ctypes.c_uint32 * (w * h))()
            ds = s.level_info(i).downsample
            L.openslide_read_region(o, buf, 0, 0, i, w, h)
            e = L.openslide_get_error(o)
            if e:
                print(name, i, "OpenSlide 4 fails to read it:", e.decode())
                refused += 1
                break
            a = np.frombuffer(buf, np.uint32).reshape(h, w)
            alpha = a >> 24
            rgb = np.stack([(a >> 16) & 255, (a >> 8) & 255, a & 255], -1).astype(np.uint8)
            t = s.read_level(i)[..., :3]
            ok = alpha == 255
            diff = int((rgb[ok] != t[ok]).any(-1).sum())
            missing = int((~ok).sum())
            tmiss = (t[~ok] == 255).all() if missing else True
            print('  ', name, 'level', i, 'differing px', diff, 'transparent px', missing, 'tessera white there', tmiss)
            if diff or not tmiss: bad += 1
    L.openslide_close(o)
print("differences: %d; series OpenSlide 4 refuses: %d" % (bad, refused))
sys.exit(1 if bad else 0)
