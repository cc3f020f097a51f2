#include "tiff/walk.h"

#include <stdio.h>
#include <string.h>
#include <tiffio.h>

#include "alloc.h"
#include "codec/codec.h"
#include "error.h"
#include "source/tile_source.h"
#include "tiff/client.h"

/* Most tiles a level may have; beyond this the tables alone would be gigabytes. */
#define TSR_MAX_TILES ((uint64_t)1 << 26)

/* Copies an ASCII tag into *out (NULL when the directory has none); false when out of
 * memory, so a failed copy is never mistaken for an absent tag. */
static bool dup_string_tag(TIFF *tif, uint32_t tag, char **out) {
  const char *s = NULL;
  *out = NULL;
  if (!TIFFGetField(tif, tag, &s) || !s)
    return true;
  return (*out = tsr_strdup(s)) != NULL;
}

static bool field_known(TIFF *tif, uint32_t tag) {
  return TIFFFindField(tif, tag, TIFF_ANY) != NULL;
}

/* The first value of a numeric private tag, as a double. */
static bool read_private_number(TIFF *tif, uint32_t tag, double *out) {
  TIFFDataType type;
  const void *data;
  uint64_t count;
  if (!tsr_tiff_private_tag(tif, tag, &type, &data, &count))
    return false;
  switch (type) {
  case TIFF_FLOAT: *out = *(const float *)data; return true;
  case TIFF_DOUBLE: *out = *(const double *)data; return true;
  case TIFF_SHORT: *out = *(const uint16_t *)data; return true;
  case TIFF_SSHORT: *out = *(const int16_t *)data; return true;
  case TIFF_LONG: *out = *(const uint32_t *)data; return true;
  case TIFF_SLONG: *out = *(const int32_t *)data; return true;
  default: return false;
  }
}

/* A private ASCII tag as a string of its own, cut at its first NUL; NULL in *out when absent
 * or not text. False only when out of memory. */
static bool dup_private_string(TIFF *tif, uint32_t tag, char **out) {
  *out = NULL;
  TIFFDataType type;
  const void *data;
  uint64_t count;
  if (!tsr_tiff_private_tag(tif, tag, &type, &data, &count) || type != TIFF_ASCII)
    return true;
  size_t n = (size_t)count;
  const char *nul = memchr(data, 0, n);
  if (nul)
    n = (size_t)(nul - (const char *)data);
  if (!(*out = tsr_malloc(n + 1)))
    return false;
  memcpy(*out, data, n);
  (*out)[n] = 0;
  return true;
}

static tessera_status read_geometry(TIFF *tif, const tessera_open_options *lim, uint32_t index,
                                    struct tsr_level *lv) {
  uint32_t w = 0, h = 0;
  TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w);
  TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h);
  if (w == 0 || h == 0)
    return tsr_error(TESSERA_E_FORMAT, "directory %u has a zero width or height (%ux%u)", index, w,
                     h);
  if ((int64_t)w > lim->max_dimension || (int64_t)h > lim->max_dimension)
    return tsr_error(TESSERA_E_LIMIT, "directory %u is %ux%u, larger than the limit of %lld", index,
                     w, h, (long long)lim->max_dimension);
  lv->width = w;
  lv->height = h;
  lv->tiled = TIFFIsTiled(tif);
  if (lv->tiled) {
    uint32_t tw = 0, th = 0;
    TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw);
    TIFFGetField(tif, TIFFTAG_TILELENGTH, &th);
    if (tw == 0 || th == 0)
      return tsr_error(TESSERA_E_FORMAT, "directory %u has a zero tile size (%ux%u)", index, tw,
                       th);
    if ((int64_t)tw > lim->max_dimension || (int64_t)th > lim->max_dimension)
      return tsr_error(TESSERA_E_LIMIT, "directory %u has %ux%u tiles, larger than the limit",
                       index, tw, th);
    lv->tile_w = tw;
    lv->tile_h = th;
    lv->source = &tsr_tiff_tiles;
  } else {
    uint32_t rps = 0;
    TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &rps);
    if (rps == 0 || rps > h)
      rps = h;
    lv->tile_w = w;
    lv->tile_h = rps;
    lv->source = &tsr_tiff_strips;
  }
  lv->across = (uint32_t)((w + (uint64_t)lv->tile_w - 1) / lv->tile_w);
  lv->down = (uint32_t)((h + (uint64_t)lv->tile_h - 1) / lv->tile_h);
  lv->ntiles = (uint64_t)lv->across * lv->down;
  if (lv->ntiles > TSR_MAX_TILES)
    return tsr_error(TESSERA_E_LIMIT, "directory %u has %llu tiles, more than the limit of %llu",
                     index, (unsigned long long)lv->ntiles, (unsigned long long)TSR_MAX_TILES);
  return TESSERA_OK;
}

/* Each tile of a multi-tile directory costs at least 4 bytes of the file (a SHORT offset and
 * a SHORT byte count), so a file of N bytes holds at most N / 4 such entries in all. A damaged
 * file whose directories share one huge array cannot make us allocate more tables than that.
 * *budget is what is left. */
static tessera_status read_tables(TIFF *tif, uint32_t index, struct tsr_level *lv,
                                  uint64_t *budget) {
  if (lv->ntiles > 1) {
    if (lv->ntiles > *budget)
      return tsr_error(TESSERA_E_FORMAT,
                       "directory %u lists %llu %s, more than the file's size can hold", index,
                       (unsigned long long)lv->ntiles, lv->tiled ? "tiles" : "strips");
    *budget -= lv->ntiles;
  }
  uint64_t stored = lv->tiled ? TIFFNumberOfTiles(tif) : TIFFNumberOfStrips(tif);
  if (stored < lv->ntiles)
    return tsr_error(TESSERA_E_FORMAT, "directory %u lists %llu %s, but its size needs %llu", index,
                     (unsigned long long)stored, lv->tiled ? "tiles" : "strips",
                     (unsigned long long)lv->ntiles);
  lv->offsets = tsr_calloc(lv->ntiles, sizeof *lv->offsets);
  lv->bytecounts = tsr_calloc(lv->ntiles, sizeof *lv->bytecounts);
  if (!lv->offsets || !lv->bytecounts)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for the tile tables of directory %u", index);
  for (uint64_t i = 0; i < lv->ntiles; i++) {
    int err1 = 0, err2 = 0;
    lv->offsets[i] = TIFFGetStrileOffsetWithErr(tif, (uint32_t)i, &err1);
    lv->bytecounts[i] = TIFFGetStrileByteCountWithErr(tif, (uint32_t)i, &err2);
    if (err1 || err2)
      return tsr_error(TESSERA_E_FORMAT, "directory %u: cannot read the offset of tile %llu", index,
                       (unsigned long long)i);
  }
  return TESSERA_OK;
}

/* The values of an unsigned integer array tag libtiff does not know, widened to 64 bits
 * (allocated; *out NULL and *n 0 when the directory has none). TESSERA_E_FORMAT when its
 * values are not integers. */
static tessera_status read_offsets(TIFF *tif, uint32_t tag, uint64_t **out, uint64_t *n) {
  TIFFDataType type;
  const void *data;
  uint64_t count;
  if (!tsr_tiff_private_tag(tif, tag, &type, &data, &count))
    return TESSERA_OK;
  if (type != TIFF_LONG && type != TIFF_SHORT && type != TIFF_LONG8)
    return tsr_error(TESSERA_E_FORMAT, "tag %u holds values of type %d, not offsets", tag,
                     (int)type);
  if (!(*out = tsr_calloc((size_t)count, sizeof **out)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %llu values of tag %u",
                     (unsigned long long)count, tag);
  for (uint64_t i = 0; i < count; i++)
    (*out)[i] = type == TIFF_LONG    ? ((const uint32_t *)data)[i]
                : type == TIFF_SHORT ? ((const uint16_t *)data)[i]
                                     : ((const uint64_t *)data)[i];
  *n = count;
  return TESSERA_OK;
}

/* NDPI's McuStarts of a directory that is one JPEG strip, for the vendor to tile it by
 * restart interval (format/ndpi.h). Either half of another type than offsets leaves the
 * level one strip. */
static tessera_status read_mcu_starts(TIFF *tif, struct tsr_dir *d) {
  const struct tsr_level *lv = &d->level;
  if (lv->tiled || lv->ntiles != 1 || lv->fmt.compression != COMPRESSION_JPEG ||
      lv->fmt.unsupported[0])
    return TESSERA_OK;
  tessera_status st =
      read_offsets(tif, TSR_NDPI_MCU_STARTS, &d->ndpi_mcu_starts, &d->ndpi_mcu_starts_n);
  if (st == TESSERA_OK && d->ndpi_mcu_starts_n > 0)
    st = read_offsets(tif, TSR_NDPI_MCU_STARTS_HIGH, &d->ndpi_mcu_starts_high,
                      &d->ndpi_mcu_starts_high_n);
  if (st == TESSERA_OK)
    return st;
  tsr_free(d->ndpi_mcu_starts);
  tsr_free(d->ndpi_mcu_starts_high);
  d->ndpi_mcu_starts = d->ndpi_mcu_starts_high = NULL;
  d->ndpi_mcu_starts_n = d->ndpi_mcu_starts_high_n = 0;
  if (st == TESSERA_E_FORMAT) {
    tsr_error_clear(); /* not offsets: the level stays one strip */
    return TESSERA_OK;
  }
  return tsr_error_prefix(st, "directory %u, NDPI restart intervals: ", lv->directory);
}

static tessera_status read_format(TIFF *tif, struct tsr_dir *d) {
  struct tsr_pixel_format *f = &d->level.fmt;
  uint16_t compression = 1, spp = 1, bps = 1, sampleformat = 1, planar = 1, photometric = 0;
  uint16_t nextra = 0, *extra = NULL;
  TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
  TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &spp);
  TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bps);
  TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &sampleformat);
  TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &planar);
  if (!TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photometric))
    photometric = spp >= 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK;
  TIFFGetField(tif, TIFFTAG_EXTRASAMPLES, &nextra, &extra);
  f->compression = compression;
  f->photometric = photometric;
  f->spp = spp;
  f->predictor = 1;
  if (field_known(tif, TIFFTAG_PREDICTOR))
    TIFFGetField(tif, TIFFTAG_PREDICTOR, &f->predictor);
  f->ycbcr_sub[0] = f->ycbcr_sub[1] = 1;
  if (photometric == PHOTOMETRIC_YCBCR || compression == COMPRESSION_JPEG)
    TIFFGetFieldDefaulted(tif, TIFFTAG_YCBCRSUBSAMPLING, &f->ycbcr_sub[0], &f->ycbcr_sub[1]);
  if (compression == COMPRESSION_JPEG && field_known(tif, TIFFTAG_JPEGTABLES)) {
    uint32_t n = 0;
    const void *tables = NULL;
    if (TIFFGetField(tif, TIFFTAG_JPEGTABLES, &n, &tables) && tables && n > 0) {
      f->jpeg_tables = tsr_malloc(n);
      if (!f->jpeg_tables)
        return tsr_error(TESSERA_E_NOMEM, "out of memory for JPEG tables");
      memcpy(f->jpeg_tables, tables, n);
      f->jpeg_tables_len = n;
    }
  }
  tsr_codec_resolve(f, bps, sampleformat, planar, nextra,
                    nextra >= 1 && extra ? extra[0] : EXTRASAMPLE_UNSPECIFIED);
  return TESSERA_OK;
}

static uint64_t string_bytes(const char *s) { return s ? strlen(s) + 1 : 0; }

/* What a directory's copied tags take: they come out of the walk's budget for copies, which
 * directories pointing at one shared block of text or tables would otherwise multiply. */
static uint64_t copied_bytes(const struct tsr_dir *d) {
  return string_bytes(d->description) + string_bytes(d->software) + string_bytes(d->make) +
         string_bytes(d->model) + string_bytes(d->datetime) + string_bytes(d->artist) +
         string_bytes(d->copyright) + string_bytes(d->host) + string_bytes(d->ndpi_reference) +
         string_bytes(d->ndpi_property_map) + d->level.fmt.jpeg_tables_len + d->icc_len + string_bytes(d->xmp);
}

static tessera_status read_directory(TIFF *tif, const tessera_open_options *lim, uint32_t index,
                                     int32_t parent, uint64_t *budget, uint64_t *copy_budget,
                                     struct tsr_dir *d) {
  memset(d, 0, sizeof *d);
  d->parent = parent;
  d->level.directory = index;
  tessera_status st = read_geometry(tif, lim, index, &d->level);
  if (st == TESSERA_OK)
    st = read_format(tif, d);
  if (st == TESSERA_OK)
    st = read_tables(tif, index, &d->level, budget);
  if (st == TESSERA_OK)
    st = read_mcu_starts(tif, d);
  if (st != TESSERA_OK)
    return st;
  TIFFGetFieldDefaulted(tif, TIFFTAG_SUBFILETYPE, &d->subfile_type);
  if (!dup_string_tag(tif, TIFFTAG_IMAGEDESCRIPTION, &d->description) ||
      !dup_string_tag(tif, TIFFTAG_SOFTWARE, &d->software) ||
      !dup_string_tag(tif, TIFFTAG_MAKE, &d->make) ||
      !dup_string_tag(tif, TIFFTAG_MODEL, &d->model) ||
      !dup_string_tag(tif, TIFFTAG_DATETIME, &d->datetime) ||
      !dup_string_tag(tif, TIFFTAG_ARTIST, &d->artist) ||
      !dup_string_tag(tif, TIFFTAG_COPYRIGHT, &d->copyright) ||
      !dup_string_tag(tif, TIFFTAG_HOSTCOMPUTER, &d->host))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for the tags of directory %u", index);
  uint32_t icc_len = 0;
  const void *icc = NULL;
  if (TIFFGetField(tif, TIFFTAG_ICCPROFILE, &icc_len, &icc) && icc && icc_len > 0) {
    if (!(d->icc = tsr_malloc(icc_len)))
      return tsr_error(TESSERA_E_NOMEM, "out of memory for the ICC profile of directory %u",
                       index);
    memcpy(d->icc, icc, icc_len);
    d->icc_len = icc_len;
  }
  uint32_t xmp_len = 0;
  const char *xmp = NULL;
  if (TIFFGetField(tif, TIFFTAG_XMLPACKET, &xmp_len, &xmp) && xmp && xmp_len > 0) {
    const char *nul = memchr(xmp, 0, xmp_len);
    size_t n = nul ? (size_t)(nul - xmp) : xmp_len;
    if (!(d->xmp = tsr_malloc(n + 1)))
      return tsr_error(TESSERA_E_NOMEM, "out of memory for the XMLPacket of directory %u",
                       index);
    memcpy(d->xmp, xmp, n);
    d->xmp[n] = 0;
  }
  d->has_resolution = TIFFGetField(tif, TIFFTAG_XRESOLUTION, &d->xres) &&
                      TIFFGetField(tif, TIFFTAG_YRESOLUTION, &d->yres);
  TIFFGetFieldDefaulted(tif, TIFFTAG_RESOLUTIONUNIT, &d->resolution_unit);
  d->has_ndpi_source_lens = read_private_number(tif, TSR_NDPI_SOURCE_LENS, &d->ndpi_source_lens);
  d->has_ndpi_x_offset = read_private_number(tif, TSR_NDPI_X_OFFSET, &d->ndpi_x_offset);
  d->has_ndpi_y_offset = read_private_number(tif, TSR_NDPI_Y_OFFSET, &d->ndpi_y_offset);
  if (!dup_private_string(tif, TSR_NDPI_REFERENCE, &d->ndpi_reference) ||
      !dup_private_string(tif, TSR_NDPI_PROPERTY_MAP, &d->ndpi_property_map))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for the tags of directory %u", index);
  uint64_t copied = copied_bytes(d);
  if (copied > *copy_budget)
    return tsr_error(TESSERA_E_FORMAT,
                     "directory %u: the directories' text tags and JPEG tables come to more "
                     "than the file holds (repeated data)",
                     index);
  *copy_budget -= copied;
  return TESSERA_OK;
}

static tessera_status push_dir(struct tsr_dirs *dirs, size_t *cap, struct tsr_dir **out) {
  if (dirs->n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 8;
    struct tsr_dir *nd = tsr_realloc(dirs->dir, ncap * sizeof *nd);
    if (!nd)
      return tsr_error(TESSERA_E_NOMEM, "out of memory for the directory list");
    dirs->dir = nd;
    *cap = ncap;
  }
  *out = &dirs->dir[dirs->n];
  memset(*out, 0, sizeof **out);
  dirs->n++;
  return TESSERA_OK;
}

struct subifd_ref {
  uint64_t offset;
  int32_t parent;
};

static tessera_status walk(TIFF *tif, const struct tsr_tiff_file *file,
                           const tessera_open_options *lim, struct tsr_dirs *dirs) {
  size_t cap = 0, nsub = 0, subcap = 0;
  struct subifd_ref *subs = NULL;
  tessera_status st = TESSERA_OK;
  struct tsr_dir *d = NULL; /* set by push_dir; gcc -O3 cannot see that */
  uint64_t budget = file->size / 4;
  uint64_t copy_budget = 2 * file->size + ((uint64_t)1 << 20);
  bool big = TIFFIsBigTIFF(tif), be = TIFFIsBigEndian(tif);
  /* Main chain first, remembering SubIFD offsets, then the SubIFDs: libtiff's directory
   * numbering is only reliable while walking one chain forward. */
  for (uint32_t index = 0;; index++) {
    if (dirs->n >= lim->max_directories) {
      st = tsr_error(TESSERA_E_LIMIT, "more than %u TIFF directories", lim->max_directories);
      goto out;
    }
    if ((st = push_dir(dirs, &cap, &d)) != TESSERA_OK ||
        (st = read_directory(tif, lim, index, -1, &budget, &copy_budget, d)) != TESSERA_OK)
      goto out;
    uint16_t n = 0;
    const uint64_t *offs = NULL;
    if (TIFFGetField(tif, TIFFTAG_SUBIFD, &n, &offs) && offs) {
      for (uint16_t i = 0; i < n; i++) {
        if (dirs->n + nsub >= lim->max_directories) { /* no more could be read anyway */
          st = tsr_error(TESSERA_E_LIMIT, "more than %u TIFF directories", lim->max_directories);
          goto out;
        }
        if (nsub == subcap) {
          subcap = subcap ? subcap * 2 : 8;
          struct subifd_ref *ns = tsr_realloc(subs, subcap * sizeof *ns);
          if (!ns) {
            st = tsr_error(TESSERA_E_NOMEM, "out of memory for SubIFDs");
            goto out;
          }
          subs = ns;
        }
        subs[nsub++] = (struct subifd_ref){offs[i], (int32_t)(dirs->n - 1)};
      }
    }
    dirs->dir[dirs->n - 1].offset = TIFFCurrentDirOffset(tif);
    uint64_t next = 0;
    if (tsr_tiff_next_ifd_offset(tif, file, &next) && next != 0) {
      for (size_t i = 0; i < dirs->n; i++) {
        if (dirs->dir[i].parent < 0 && dirs->dir[i].offset == next) {
          st = tsr_error(TESSERA_E_FORMAT,
                         "directory loop: directory %u points back to directory %zu", index, i);
          goto out;
        }
      }
      if ((st = tsr_tiff_check_ifd_data(file, big, be, next)) != TESSERA_OK)
        goto out;
    }
    if (!TIFFReadDirectory(tif)) {
      if (file->failed) {
        st = tsr_error(TESSERA_E_FORMAT, "after directory %u: %s", index, file->first_error);
        goto out;
      }
      break;
    }
  }
  for (size_t i = 0; i < nsub; i++) {
    uint32_t index = (uint32_t)dirs->n;
    if (dirs->n >= lim->max_directories) {
      st = tsr_error(TESSERA_E_LIMIT, "more than %u TIFF directories", lim->max_directories);
      goto out;
    }
    if ((st = tsr_tiff_check_ifd_data(file, big, be, subs[i].offset)) != TESSERA_OK)
      goto out;
    if (!TIFFSetSubDirectory(tif, subs[i].offset) || file->failed) {
      st = tsr_error(TESSERA_E_FORMAT, "SubIFD at offset %llu: %s",
                     (unsigned long long)subs[i].offset,
                     file->failed ? file->first_error : "cannot be read");
      goto out;
    }
    if ((st = push_dir(dirs, &cap, &d)) != TESSERA_OK ||
        (st = read_directory(tif, lim, index, subs[i].parent, &budget, &copy_budget, d)) !=
            TESSERA_OK)
      goto out;
  }
  dirs->table_budget = budget;
out:
  tsr_free(subs);
  return st;
}

tessera_status tsr_tiff_walk(const struct tsr_byte_source *src, const tessera_open_options *limits,
                             struct tsr_dirs *out) {
  *out = (struct tsr_dirs){.source = src};
  uint64_t file_size = src->ops->size(src);
  /* libtiff allocates tag arrays (tile tables, JPEG tables) while walking. An array stored in
   * N bytes of the file never needs more than 4N in memory (SHORT entries widen to 64 bits),
   * so a damaged count cannot ask for much more than the file holds. */
  uint64_t cap = 4 * file_size + ((uint64_t)1 << 20);
  if (cap > TSR_MAX_TILES * sizeof(uint64_t))
    cap = TSR_MAX_TILES * sizeof(uint64_t);
  struct tsr_tiff_file file;
  TIFF *tif;
  tessera_status st = tsr_tiff_client_open(&file, src, cap, &tif);
  if (st != TESSERA_OK)
    return st;
  st = walk(tif, &file, limits, out);
  TIFFClose(tif);
  if (st != TESSERA_OK)
    tsr_tiff_dirs_free(out);
  return st;
}

void tsr_tiff_dirs_free(struct tsr_dirs *dirs) {
  for (size_t i = 0; i < dirs->n; i++) {
    struct tsr_dir *d = &dirs->dir[i];
    tsr_level_free(&d->level);
    tsr_free(d->description);
    tsr_free(d->software);
    tsr_free(d->make);
    tsr_free(d->model);
    tsr_free(d->datetime);
    tsr_free(d->artist);
    tsr_free(d->copyright);
    tsr_free(d->host);
    tsr_free(d->ndpi_reference);
    tsr_free(d->ndpi_property_map);
    tsr_free(d->ndpi_mcu_starts);
    tsr_free(d->ndpi_mcu_starts_high);
    tsr_free(d->icc);
    tsr_free(d->xmp);
  }
  tsr_free(dirs->dir);
  dirs->dir = NULL;
  dirs->n = 0;
}
