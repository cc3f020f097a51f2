#!/bin/bash
# Compares tessera's libopenslide.so.1 (OpenSlide 4.0's ABI) with a real OpenSlide 4 built
# here, out of tree: not a CI test, since CI has no network to fetch OpenSlide and Debian 12
# ships only OpenSlide 3.4.1 (against which tests/test_openslide_c.py checks the .so.0).
#
#   tools/check_openslide4.sh OPENSLIDE_CHECKOUT LIBDICOM_CHECKOUT [OUTDIR]
#
# Each checkout may be a work tree or a git directory (a bare mirror). OpenSlide's tag
# $OPENSLIDE_REF (default v4.0.1) is built with libdicom's $LIBDICOM_REF (default HEAD) as
# its subproject, into a prefix under a temporary directory; nothing of either is kept.
# Needs: meson, ninja, vips, /usr/bin/python3 with numpy, the -dev packages OpenSlide asks
# for (libglib2.0-dev libcairo2-dev libgdk-pixbuf-2.0-dev libxml2-dev libsqlite3-dev
# uthash-dev libopenjp2-7-dev libtiff-dev libpng-dev libjpeg-dev zlib1g-dev libzstd-dev), and
# tessera built in build/ (./dev.sh build).
#
# tools/openslide4_dump.c, compiled against OpenSlide 4's own openslide.h, prints everything
# the 4.0 API says about a file; it runs once over each library (LD_LIBRARY_PATH) on every file
# of ../shared/testdata and on pyramids vips writes here, and the two outputs are diffed. The
# summary classifies differing regions: on a level no bigger than one tile (which OpenSlide
# misreads through libtiff), at a fractional level origin (OpenSlide resamples with cairo), or
# elsewhere. docs/OPENSLIDE.md lists the differences kept.
set -euo pipefail

[ $# -ge 2 ] || { sed -n 5,6p "$0" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
SO1="$REPO/build/openslide/so1"
[ -e "$SO1/libopenslide.so.1" ] || { echo "build tessera first (./dev.sh build)" >&2; exit 2; }
TESTDATA=${TESSERA_TESTDATA:-$REPO/../shared/testdata}
WORK=$(mktemp -d /tmp/check-openslide4.XXXXXX)
OUT=${3:-$WORK/out}
mkdir -p "$OUT"
echo "working in $WORK"

# export REF of a checkout or git directory into DEST
export_tree() {
  local src=$1 ref=$2 dest=$3 gitdir=$1
  [ -d "$src/.git" ] && gitdir="$src/.git"
  mkdir -p "$dest"
  git --git-dir="$gitdir" archive "$ref" | tar -x -C "$dest"
}

OS="$WORK/openslide"
export_tree "$1" "${OPENSLIDE_REF:-v4.0.1}" "$OS"
# libdicom goes where OpenSlide's wrap file says, as a plain directory, so that meson uses it
# without downloading.
dicomdir=$(sed -n 's/^directory *= *//p' "$OS/subprojects/libdicom.wrap")
D="$OS/subprojects/$dicomdir"
export_tree "$2" "${LIBDICOM_REF:-HEAD}" "$D"
want=$(sed -n "/'libdicom'/,/)/s/.*version *: *'>=\([0-9.]*\)'.*/\1/p" "$OS/meson.build")
have=$(sed -n "s/^ *version *: *'\([0-9.]*\)'.*/\1/p" "$D/meson.build" | head -1)
if [ -n "$want" ] && [ "$want" != "$have" ]; then
  # An older libdicom than the wrap names (e.g. a mirror without the release): accept its
  # version, and give it the one call OpenSlide 4.0.1 needs that 1.2 lacks. The shim answers
  # as libdicom 1.3 does, so that tools/check_openslide4_dicom.py can compare DICOM with it.
  echo "libdicom $have where OpenSlide asks >= $want: building with a shim" >&2
  sed -i "s/version : '>=$want'/version : '>=$have'/" "$OS/meson.build"
  if ! grep -rq dcm_filehandle_find_frame_number "$D/src"; then
    cat >> "$D/src/dicom-file.c" <<'EOF'

/* check_openslide4.sh's shim: the lookup of libdicom 1.3, a missing frame reported as 0 */
DCM_EXTERN bool dcm_filehandle_find_frame_number(DcmError **error, DcmFilehandle *fh,
                                                 uint32_t column, uint32_t row,
                                                 uint32_t *frame_number);
bool dcm_filehandle_find_frame_number(DcmError **error, DcmFilehandle *fh,
                                      uint32_t column, uint32_t row,
                                      uint32_t *frame_number)
{
    DcmError *e = NULL;
    if (dcm_filehandle_get_frame_number(&e, fh, column, row, frame_number))
        return true;
    if (dcm_error_get_code(e) == DCM_ERROR_CODE_MISSING_FRAME) {
        dcm_error_clear(&e);
        *frame_number = 0;
        return true;
    }
    if (error)
        *error = e;
    else
        dcm_error_clear(&e);
    return false;
}
EOF
  fi
fi
PREFIX="$WORK/prefix"
meson setup "$OS/build" "$OS" --prefix="$PREFIX" --libdir=lib -Dtest=disabled -Ddoc=disabled \
  --wrap-mode=nodownload -Dbuildtype=release > "$WORK/openslide-setup.log"
ninja -C "$OS/build" install > "$WORK/openslide-build.log"
LIB="$PREFIX/lib"

DUMP="$WORK/openslide4_dump"
cc -O2 -Wall -Wextra -Werror -I"$PREFIX/include/openslide" "$REPO/tools/openslide4_dump.c" \
  -o "$DUMP" -L"$LIB" -Wl,-rpath-link,"$LIB" -lopenslide

# Fixtures: pyramids of one RGB image in each codec, grey, RGBA, with an ICC profile, with a
# resolution; graded alpha, associated and not; damaged copies; a text file; a missing file.
FX="$WORK/fixtures"
mkdir -p "$FX"
src="$TESTDATA/aperio-jpeg-CMU-1-Small-Region.svs"
vips extract_band "$src" "$FX/src.v" 0 --n 3
for c in jpeg deflate lzw zstd webp; do
  vips tiffsave "$FX/src.v" "$FX/v-$c.tif" --tile --pyramid --compression $c \
    --tile-width 256 --tile-height 256
done
vips colourspace "$FX/src.v" "$FX/gray.v" b-w
vips tiffsave "$FX/gray.v" "$FX/v-gray.tif" --tile --pyramid --compression deflate
vips bandjoin_const "$FX/src.v" "$FX/rgba.v" 200
vips tiffsave "$FX/rgba.v" "$FX/v-rgba.tif" --tile --pyramid --compression lzw
vips tiffsave "$FX/src.v" "$FX/v-icc.tif" --tile --pyramid --compression jpeg --profile srgb
vips tiffsave "$FX/src.v" "$FX/v-res.tif" --tile --pyramid --compression deflate \
  --xres 3.5 --yres 4.25 --resunit inch
rm -f "$FX"/*.v
head -c 30000 "$FX/v-jpeg.tif" > "$FX/damaged-truncated.tif"
/usr/bin/python3 - "$FX/v-deflate.tif" "$FX/damaged-tiles.tif" <<'EOF'
import sys, tifffile
b = bytearray(open(sys.argv[1], "rb").read())
with tifffile.TiffFile(sys.argv[1]) as t:  # level 0's first tile: not deflate any more
    off, n = t.pages[0].dataoffsets[0], t.pages[0].databytecounts[0]
b[off:off + n] = b"\xff" * n
open(sys.argv[2], "wb").write(b)
EOF
echo "not a slide" > "$FX/not-a-slide.txt"
# graded alpha, stored associated and unassociated (the picture tests/test_alpha.py writes)
/usr/bin/python3 - "$REPO/tests" "$FX" <<'EOF'
import sys, tifffile
sys.path.insert(0, sys.argv[1])
from test_alpha import premultiplied_picture
for kind in ("assocalpha", "unassalpha"):
    tifffile.imwrite("%s/t-%s.tif" % (sys.argv[2], kind), premultiplied_picture(),
                     tile=(32, 32), photometric="rgb", extrasamples=[kind])
EOF

shopt -s nullglob
files=("$TESTDATA"/*.svs "$TESTDATA"/*.tif "$TESTDATA"/*.tiff "$TESTDATA"/*.ndpi "$FX"/*.tif \
       "$FX/not-a-slide.txt" "$FX/missing.tif")
for f in "${files[@]}"; do
  b=$(basename "$f")
  for side in openslide4:"$LIB" tessera:"$SO1"; do
    name=${side%%:*} dir=${side#*:}
    { LD_LIBRARY_PATH="$dir" timeout 600 "$DUMP" "$f"
      LD_LIBRARY_PATH="$dir" timeout 600 "$DUMP" --sticky "$f"; } \
      > "$OUT/$b.$name" 2> "$OUT/$b.$name.stderr" || echo "$b: $name exited $?" >&2
  done
done

/usr/bin/python3 - "$OUT" "${files[@]}" <<'EOF'
import os, re, sys
out = sys.argv[1]
total = 0
for path in sys.argv[2:]:
    b = os.path.basename(path)
    a = open(os.path.join(out, b + ".openslide4")).read().splitlines()
    t = open(os.path.join(out, b + ".tessera")).read().splitlines()
    ds = {int(m.group(1)): float(m.group(2)) for m in
          (re.search(r"\tlevel (\d+): \S+ downsample=(\S+)", l) for l in a) if m}
    prop = dict(m.groups() for m in (re.search(r"\tprop (openslide\.level[^=]*)=(.*)", l)
                                     for l in a) if m)
    def one_tile(level):  # OpenSlide misreads such a level unless it is JPEG (docs/OPENSLIDE.md)
        g = lambda k: int(prop.get("openslide.level[%d].%s" % (level, k), 0))
        return g("tile-width") and g("width") <= g("tile-width") and g("height") <= g("tile-height")
    region = lambda lines: {l.split("\t")[1]: l for l in lines if "\tregion L" in l}
    ra, rt = region(a), region(t)
    small, frac, other = [], [], []
    for k in ra:
        if ra[k] == rt.get(k):
            continue
        m = re.match(r"region L(\d+) \((-?\d+),(-?\d+)\)", k)
        level = int(m.group(1))
        d = ds.get(level, 1.0)
        fractional = any(v > 0 and v / d != int(v / d) for v in (int(m.group(2)), int(m.group(3))))
        (small if one_tile(level) else frac if fractional else other).append(k)
    rest = sorted(set(l for l in a if "\tregion L" not in l) ^ set(l for l in t if "\tregion L" not in l))
    total += len(small) + len(frac) + len(other) + len(rest)
    print("%-36s regions differing: %d on a level within one tile, %d at a fractional origin, "
          "%d elsewhere; other lines: %d" % (b, len(small), len(frac), len(other), len(rest)))
    for k in frac:
        print("    region", k[7:])
    for k in other:
        print("    region", k[7:])
    for l in rest:
        print("    " + ("openslide4 " if l in a else "tessera    ") + l.split("\t", 1)[1][:150])
print("differences:", total, "(outputs in %s)" % out)
EOF
