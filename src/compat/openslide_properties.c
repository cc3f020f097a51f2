/* OpenSlide's property table for a slide tessera opened.
 *
 * tessera names its standard keys tessera.* where OpenSlide says openslide.*; the rest are
 * what OpenSlide does for the TIFF-based formats (its "tifflike" code, read for the
 * semantics): the tiff.* tags of the first directory, openslide.comment from its
 * ImageDescription, and openslide.quickhash-1, a SHA-256 over the raw bytes of the smallest
 * level's tiles followed by the name and value of nine string tags of the first directory. */
#include "compat/openslide_properties.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>

#include "alloc.h"
#include "error.h"
#include "compat/sha256.h"
#include "slide_internal.h"
#include "source/tile_source.h"
#include "tiff/client.h"

/* OpenSlide refuses to hash a smallest level bigger than this (so that opening a slide with
 * one huge level stays quick), and then reports no quickhash at all. */
#define QUICKHASH_MAX_BYTES ((uint64_t)5 << 20)

/* The string tags OpenSlide stores as tiff.*, in the order it hashes them. */
static const struct {
  const char *key;
  uint32_t tag;
} string_tags[] = {
    {"tiff.ImageDescription", TIFFTAG_IMAGEDESCRIPTION},
    {"tiff.Make", TIFFTAG_MAKE},
    {"tiff.Model", TIFFTAG_MODEL},
    {"tiff.Software", TIFFTAG_SOFTWARE},
    {"tiff.DateTime", TIFFTAG_DATETIME},
    {"tiff.Artist", TIFFTAG_ARTIST},
    {"tiff.HostComputer", TIFFTAG_HOSTCOMPUTER},
    {"tiff.Copyright", TIFFTAG_COPYRIGHT},
    {"tiff.DocumentName", TIFFTAG_DOCUMENTNAME},
};

/* The keys of tessera's own table that OpenSlide does not have for these formats: the fill
 * byte, and a background colour, which OpenSlide reports for none of the vendors tessera
 * reads; tessera.comment is replaced by the first directory's description, as OpenSlide's; a
 * generic TIFF's resolution is set here as each OpenSlide version sets it (generic_mpp). */
static bool skipped(const tessera_slide *s, const char *key) {
  /* A level whose image is placed in it (Leica, a Ventana BIF) has no tile size in OpenSlide:
   * its tiles do not tile the level; nor has a MIRAX level whose images OpenSlide places off
   * a grid of their size. (A Hamamatsu VMS level whose whole restart intervals stop short of
   * its edge keeps its tile size: OpenSlide's tiles are those intervals.) */
  int level, end = 0;
  if (sscanf(key, "tessera.level[%d].tile-%*[a-z]%n", &level, &end) == 1 && end &&
      !key[end] && level >= 0 && level < s->nlevels &&
      ((s->levels[level].image_w != 0 && strcmp(s->vendor, "hamamatsu") != 0) ||
       (s->levels[level].source == &tsr_mosaic_tiles &&
        !((const struct tsr_mosaic *)s->levels[level].source_data)->openslide_tile_size)))
    return true;
  /* MIRAX is the one format read here whose background colour OpenSlide reports. */
  if (strcmp(key, "tessera.background-color") == 0 && strcmp(s->vendor, "mirax") == 0)
    return false;
  return strcmp(key, "tessera.background") == 0 || strcmp(key, "tessera.background-color") == 0 ||
         strcmp(key, "tessera.comment") == 0 ||
         (strcmp(s->vendor, "generic-tiff") == 0 &&
          (strcmp(key, "tessera.mpp-x") == 0 || strcmp(key, "tessera.mpp-y") == 0));
}


/* Hashes every tile (or strip) of the smallest level's directory as stored, with the offsets
 * and byte counts its tags give (for NDPI, OpenSlide hashes the whole strip, not the restart
 * intervals tessera reads); false when OpenSlide would not hash it (too big, or no tile
 * table), with *st the failure if reading failed. */
static bool hash_level(const tessera_slide *s, TIFF *tif, struct tsr_sha256 *h,
                       tessera_status *st) {
  const struct tsr_level *lv = &s->levels[s->nlevels - 1];
  tdir_t dir = s->quickhash_dir ? (tdir_t)(s->quickhash_dir - 1) : (tdir_t)lv->directory;
  if (!TIFFSetDirectory(tif, dir))
    return false;
  bool tiled = TIFFIsTiled(tif);
  uint64_t *offsets = NULL, *counts = NULL;
  uint64_t n = tiled ? TIFFNumberOfTiles(tif) : TIFFNumberOfStrips(tif);
  if (!TIFFGetField(tif, tiled ? TIFFTAG_TILEOFFSETS : TIFFTAG_STRIPOFFSETS, &offsets) ||
      !TIFFGetField(tif, tiled ? TIFFTAG_TILEBYTECOUNTS : TIFFTAG_STRIPBYTECOUNTS, &counts) ||
      !offsets || !counts || n == 0)
    return false;
  uint64_t total = 0;
  for (uint64_t i = 0; i < n; i++) {
    total += counts[i];
    if (total > QUICKHASH_MAX_BYTES)
      return false;
  }
  uint8_t buf[1 << 16];
  for (uint64_t i = 0; i < n; i++) {
    uint64_t off = offsets[i], left = counts[i];
    while (left > 0) {
      size_t want = left < sizeof buf ? (size_t)left : sizeof buf, got = 0;
      *st = tsr_bytes_read_at(s->source, off, want, buf, &got);
      if (*st == TESSERA_OK && got != want)
        *st = tsr_error(TESSERA_E_IO, "cannot hash tile %llu of the smallest level: file too short",
                        (unsigned long long)i);
      if (*st != TESSERA_OK)
        return false;
      tsr_sha256_update(h, buf, got);
      off += got;
      left -= got;
    }
  }
  return true;
}

static void hash_string(struct tsr_sha256 *h, const char *s) {
  if (!s)
    s = "";
  tsr_sha256_update(h, s, strlen(s) + 1);
}

/* A number as OpenSlide writes it (GLib's g_ascii_dtostr, in 3.4 and 4.0): 17 significant
 * digits, trailing zeros dropped ("0.499", "28.340000152587891", and "88.900001525878906"
 * where 15 digits would also read back the same). */
static void set_number(struct tsr_props *p, const char *key, double v) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.17g", v);
  tsr_props_set_bytes(p, key, buf, strlen(buf));
}

/* Values as the file holds them, of the directory libtiff has current: libtiff hands rationals
 * back as floats, where OpenSlide divides numerator by denominator as doubles. */
struct raw_dir {
  uint8_t *entries; /* the directory's entries as stored (owned), or NULL */
  uint64_t n;
  bool big, be;
};

#define RAW_MAX_ENTRIES 4096 /* more than any directory has: a bigger count reads nothing */

static uint64_t get_uint(const uint8_t *p, int bytes, bool be) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++)
    v |= (uint64_t)p[be ? i : bytes - 1 - i] << (8 * (bytes - 1 - i));
  return v;
}

static bool read_exact(const tessera_slide *s, uint64_t off, size_t len, void *buf) {
  size_t got = 0;
  return tsr_bytes_read_at(s->source, off, len, buf, &got) == TESSERA_OK && got == len;
}

static void raw_dir_read(const tessera_slide *s, TIFF *tif, struct raw_dir *d) {
  *d = (struct raw_dir){.big = TIFFIsBigTIFF(tif), .be = TIFFIsBigEndian(tif)};
  uint64_t off = TIFFCurrentDirOffset(tif);
  uint8_t head[8];
  int count_bytes = d->big ? 8 : 2;
  if (!read_exact(s, off, (size_t)count_bytes, head))
    return;
  uint64_t n = get_uint(head, count_bytes, d->be);
  size_t entry = d->big ? 20 : 12;
  if (n == 0 || n > RAW_MAX_ENTRIES || !(d->entries = tsr_malloc(n * entry)))
    return;
  if (!read_exact(s, off + (uint64_t)count_bytes, n * entry, d->entries)) {
    tsr_free(d->entries);
    d->entries = NULL;
    return;
  }
  d->n = n;
}

/* The first value of a RATIONAL, SRATIONAL, FLOAT or DOUBLE tag, as a double. */
static bool raw_number(const tessera_slide *s, const struct raw_dir *d, uint32_t tag, double *v) {
  size_t entry = d->big ? 20 : 12, field = d->big ? 8 : 4;
  for (uint64_t i = 0; d->entries && i < d->n; i++) {
    const uint8_t *e = d->entries + i * entry;
    if (get_uint(e, 2, d->be) != tag)
      continue;
    uint64_t type = get_uint(e + 2, 2, d->be), count = get_uint(e + 4, (int)field, d->be);
    size_t size = type == 5 || type == 10 || type == 12 ? 8 : type == 11 ? 4 : 0;
    if (size == 0 || count == 0)
      return false;
    const uint8_t *value = e + 4 + field;
    uint8_t buf[8];
    if (size > field) { /* stored elsewhere: the field is its offset */
      if (!read_exact(s, get_uint(value, (int)field, d->be), size, buf))
        return false;
      value = buf;
    }
    if (type == 5 || type == 10) {
      uint64_t num = get_uint(value, 4, d->be), den = get_uint(value + 4, 4, d->be);
      *v = type == 5 ? (double)num / (double)den : (double)(int32_t)num / (double)(int32_t)den;
    } else if (type == 11) {
      uint32_t bits = (uint32_t)get_uint(value, 4, d->be);
      float f;
      memcpy(&f, &bits, sizeof f);
      *v = f;
    } else {
      uint64_t bits = get_uint(value, 8, d->be);
      memcpy(v, &bits, sizeof *v);
    }
    return true;
  }
  return false;
}

static void add_number_tag(const tessera_slide *s, const struct raw_dir *d, struct tsr_props *p,
                           const char *key, uint32_t tag) {
  double v;
  if (raw_number(s, d, tag, &v))
    set_number(p, key, v);
}

/* OpenSlide 4.0 gives a generic TIFF the micrometres per pixel its first directory's
 * resolution says (inch or centimetre units only, both axes nonzero); 3.4 gives none. */
static void generic_mpp(const tessera_slide *s, TIFF *tif, const struct raw_dir *d,
                        struct tsr_props *p) {
  uint16_t unit = RESUNIT_INCH;
  double x, y;
  TIFFGetField(tif, TIFFTAG_RESOLUTIONUNIT, &unit);
  if ((unit != RESUNIT_INCH && unit != RESUNIT_CENTIMETER) ||
      !raw_number(s, d, TIFFTAG_XRESOLUTION, &x) || !raw_number(s, d, TIFFTAG_YRESOLUTION, &y) ||
      x == 0 || y == 0)
    return;
  double dividend = unit == RESUNIT_INCH ? 25400 : 10000;
  set_number(p, "openslide.mpp-x", dividend / x);
  set_number(p, "openslide.mpp-y", dividend / y);
}

/* tessera writes its numbers as the shortest decimal that reads back the same; the ones
 * OpenSlide computes are rewritten its way. */
static bool computed_number(const char *key) {
  return strcmp(key, "openslide.mpp-x") == 0 || strcmp(key, "openslide.mpp-y") == 0 ||
         (strncmp(key, "openslide.level[", 16) == 0 && strstr(key, "].downsample"));
}

/* The quickhash and the first directory's tags as OpenSlide stores them (replacing tessera's
 * values, which it formats its own way). */
static tessera_status from_tiff(tessera_slide *s, int version, struct tsr_props *p) {
  struct tsr_tiff_file f;
  TIFF *tif;
  tessera_status st = tsr_tiff_client_open(&f, s->source, (uint64_t)64 << 20, &tif);
  if (st != TESSERA_OK)
    return st;
  struct tsr_sha256 hash, *h = &hash;
  tsr_sha256_init(h);
  bool hashed = hash_level(s, tif, h, &st);
  /* OpenSlide takes the tags of level 0's directory: the first one, but for Leica and Ventana,
   * whose level 0 may come after a macro (both keep their levels in the main chain). */
  bool leica = strcmp(s->vendor, "leica") == 0;
  tdir_t props_dir = leica || strcmp(s->vendor, "ventana") == 0 ? (tdir_t)s->levels[0].directory
                                                                 : 0;
  if (st != TESSERA_OK || !TIFFSetDirectory(tif, props_dir)) {
    TIFFClose(tif);
    return st != TESSERA_OK ? st
                            : tsr_error(TESSERA_E_FORMAT, "cannot read the first directory again");
  }
  for (size_t i = 0; i < sizeof string_tags / sizeof string_tags[0]; i++) {
    const char *v = NULL;
    if (TIFFGetField(tif, string_tags[i].tag, &v) != 1)
      v = NULL;
    if (v && !(leica && i == 0)) { /* Leica's description, the XML, is left out */
      tsr_props_set_bytes(p, string_tags[i].key, v, strlen(v));
      if (i == 0)
        tsr_props_set_bytes(p, "openslide.comment", v, strlen(v));
    }
    if (hashed) {
      hash_string(h, string_tags[i].key);
      hash_string(h, v);
    }
  }
  struct raw_dir raw;
  raw_dir_read(s, tif, &raw);
  add_number_tag(s, &raw, p, "tiff.XResolution", TIFFTAG_XRESOLUTION);
  add_number_tag(s, &raw, p, "tiff.YResolution", TIFFTAG_YRESOLUTION);
  add_number_tag(s, &raw, p, "tiff.XPosition", TIFFTAG_XPOSITION);
  add_number_tag(s, &raw, p, "tiff.YPosition", TIFFTAG_YPOSITION);
  if (version >= 4 && strcmp(s->vendor, "generic-tiff") == 0)
    generic_mpp(s, tif, &raw, p);
  tsr_free(raw.entries);
  TIFFClose(tif);
  if (st == TESSERA_OK && hashed) {
    char hex[65];
    tsr_sha256_hex(h, hex);
    tsr_props_add_string(p, "openslide.quickhash-1", hex);
  }
  return st;
}

/* DICOM, which is no TIFF: OpenSlide 4 hashes the series' SeriesInstanceUID alone. */
static void from_dicom(const tessera_slide *s, struct tsr_props *p) {
  struct tsr_sha256 h;
  tsr_sha256_init(&h);
  hash_string(&h, tessera_property_value(s, "dicom.SeriesInstanceUID"));
  char hex[65];
  tsr_sha256_hex(&h, hex);
  tsr_props_add_string(p, "openslide.quickhash-1", hex);
}

/* Whether the slide's byte source starts as a TIFF does (II*, MM*, or BigTIFF's +). */
static bool tiff_based(const tessera_slide *s) {
  uint8_t m[4];
  return read_exact(s, 0, sizeof m, m) &&
         ((m[0] == 'I' && m[1] == 'I' && (m[2] == 42 || m[2] == 43) && m[3] == 0) ||
          (m[0] == 'M' && m[1] == 'M' && m[2] == 0 && (m[3] == 42 || m[3] == 43)));
}

const char *tsr_os_unreadable(const tessera_slide *s) {
  for (int32_t i = 0; i < s->nlevels; i++)
    if (s->levels[i].fmt.unsupported[0])
      return s->levels[i].fmt.unsupported;
  return NULL;
}

bool tsr_os_associated_shown(tessera_slide *s, const char *name) {
  return !(strcmp(s->vendor, "hamamatsu") == 0 && strcmp(name, "map") == 0);
}

/* OpenSlide 4.0 describes each associated image among the properties too. */
static void add_associated(tessera_slide *s, struct tsr_props *p) {
  for (size_t i = 0; i < tessera_associated_image_count(s); i++) {
    const char *name = tessera_associated_image_name(s, i);
    int64_t w, h;
    if (!tsr_os_associated_shown(s, name) ||
        tessera_associated_image_dimensions(s, name, &w, &h) != TESSERA_OK)
      continue;
    char key[256];
    snprintf(key, sizeof key, "openslide.associated.%s.width", name);
    tsr_props_add(p, key, "%lld", (long long)w);
    snprintf(key, sizeof key, "openslide.associated.%s.height", name);
    tsr_props_add(p, key, "%lld", (long long)h);
  }
}

tessera_status tsr_os_properties(tessera_slide *s, int version, struct tsr_props *out,
                                 uint8_t **icc, size_t *icc_size) {
  *icc = NULL;
  *icc_size = 0;
  struct tsr_props p = {0};
  for (size_t i = 0; i < tessera_property_count(s); i++) {
    const char *key = tessera_property_key(s, i);
    const char *value = tessera_property_value(s, key);
    if (skipped(s, key))
      continue;
    if (strncmp(key, "tessera.", 8) == 0) {
      char renamed[256];
      snprintf(renamed, sizeof renamed, "openslide.%s", key + 8);
      if (computed_number(renamed))
        set_number(&p, renamed, strtod(value, NULL));
      else
        tsr_props_add_string(&p, renamed, value);
    } else {
      tsr_props_add_string(&p, key, value);
    }
  }
  /* OpenSlide 4.0 reads an ICC profile for Aperio, generic TIFF and DICOM slides only. */
  bool want_icc = version >= 4 && (strcmp(s->vendor, "aperio") == 0 ||
                                     strcmp(s->vendor, "generic-tiff") == 0 ||
                                     strcmp(s->vendor, "dicom") == 0);
  /* A slide whose bytes are no TIFF (a Sakura SQLite database, MIRAX's Index.dat, a
   * Hamamatsu VMS or VMU key file) has no TIFF tags, and its quickhash-1 is the vendor's
   * (tessera.quickhash-1, renamed above); DICOM's is OpenSlide 4's hash of its series. */
  tessera_status st = TESSERA_OK;
  if (strcmp(s->vendor, "dicom") == 0)
    from_dicom(s, &p);
  else if (tiff_based(s))
    st = from_tiff(s, version, &p);
  size_t n = want_icc ? tessera_icc_profile_size(s) : 0; /* level 0's, as tessera reads it */
  if (st == TESSERA_OK && n > 0) {
    if (!(*icc = tsr_malloc(n)))
      st = tsr_error(TESSERA_E_NOMEM, "out of memory for the ICC profile");
    else if ((st = tessera_icc_profile_read(s, *icc, n)) == TESSERA_OK)
      *icc_size = n;
  }
  if (version >= 4) {
    add_associated(s, &p);
    if (*icc_size)
      tsr_props_add(&p, "openslide.icc-size", "%zu", *icc_size);
  }
  if (st == TESSERA_OK && p.failed)
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for properties");
  if (st != TESSERA_OK) {
    tsr_props_free(&p);
    tsr_free(*icc);
    *icc = NULL;
    *icc_size = 0;
    return st;
  }
  tsr_props_sort(&p);
  *out = p;
  return TESSERA_OK;
}

/* The public face: a table the caller owns, so that the OpenSlide fronts built on tessera's
 * public API (tessera.openslide in Python) show the same table as libtessera-openslide. */
struct tessera_property_table {
  struct tsr_props props;
};

TESSERA_API tessera_status tessera_openslide_properties(tessera_slide *slide, int32_t version,
                                                        tessera_property_table **out) {
  if (!out)
    return tsr_error(TESSERA_E_ARGUMENT, "out must not be NULL");
  *out = NULL;
  if (!slide)
    return tsr_error(TESSERA_E_ARGUMENT, "slide must not be NULL");
  if (version != 3 && version != 4)
    return tsr_error(TESSERA_E_ARGUMENT,
                     "OpenSlide version %d: 3 (OpenSlide 3.4) or 4 (OpenSlide 4.0) expected",
                     (int)version);
  tessera_property_table *t = tsr_calloc(1, sizeof *t);
  if (!t)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for properties");
  uint8_t *icc = NULL;
  size_t icc_size = 0;
  tessera_status st = tsr_os_properties(slide, version, &t->props, &icc, &icc_size);
  tsr_free(icc);
  if (st != TESSERA_OK) {
    tsr_free(t);
    return st;
  }
  *out = t;
  return TESSERA_OK;
}

TESSERA_API size_t tessera_property_table_count(const tessera_property_table *table) {
  return table ? table->props.n : 0;
}

TESSERA_API const char *tessera_property_table_key(const tessera_property_table *table,
                                                   size_t index) {
  return table && index < table->props.n ? table->props.items[index].key : NULL;
}

TESSERA_API const char *tessera_property_table_value(const tessera_property_table *table,
                                                     size_t index) {
  return table && index < table->props.n ? table->props.items[index].value : NULL;
}

TESSERA_API void tessera_property_table_free(tessera_property_table *table) {
  if (!table)
    return;
  tsr_props_free(&table->props);
  tsr_free(table);
}
