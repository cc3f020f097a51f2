/* DICOM whole-slide images (VL Whole Slide Microscopy Image Storage): a file of one series, or
 * a folder of its instances. Which instances make the slide, as OpenSlide 4 chooses them:
 *  - a file: its series (SeriesInstanceUID), with the other instances of that series in the
 *    same folder;
 *  - a folder: the series of the first VOLUME instance, the folder's files taken in name order.
 * Files that are no DICOM, are of another SOP class or series, or cannot be read are passed
 * over (the opened file itself must be read). VOLUME instances are the levels, grouped by
 * their total pixel matrix size (several instances of one size must be one concatenation,
 * ordered by InConcatenationNumber); LABEL, OVERVIEW and THUMBNAIL instances are the label,
 * macro and thumbnail. Each level's tiles are its frames: TILED_FULL in row-major order from
 * ConcatenationFrameOffsetNumber, TILED_SPARSE where each frame's Plane Position (Slide) puts
 * it (tiles no frame fills are missing: background). Only the first focal plane and optical
 * path's tiles are read.
 *
 * The instances read are opened once and put side by side in one byte source (each at an
 * offset of its own), so that frames are read, cached and batched as any tile is. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tiff.h>

#include "alloc.h"
#include "error.h"
#include "format/dicom.h"
#include "format/format.h"
#include "source/tile_source.h"

#define WSI_SOP_CLASS "1.2.840.10008.5.1.4.1.1.77.1.6"
/* Files of a folder looked at, and instances of one slide kept open. */
#define MAX_FOLDER_FILES 65536
#define MAX_INSTANCES 1024
#define MAX_TILES ((uint64_t)1 << 24)

/* ---- the instances side by side, as one byte source ---- */

struct joined_source {
  struct tsr_byte_source pub;
  size_t n;
  struct tsr_byte_source **parts; /* owned */
  uint64_t *base;                 /* where each part starts; n + 1 entries */
  struct tsr_file_id id;
};

static tessera_status joined_read_at(const struct tsr_byte_source *src, uint64_t offset,
                                     size_t length, void *buffer, size_t *got) {
  const struct joined_source *j = (const struct joined_source *)src;
  *got = 0;
  while (length > 0 && offset < j->base[j->n]) {
    size_t lo = 0, hi = j->n;
    while (hi - lo > 1) { /* the last part starting at or before offset */
      size_t mid = lo + (hi - lo) / 2;
      if (j->base[mid] <= offset)
        lo = mid;
      else
        hi = mid;
    }
    uint64_t in_part = offset - j->base[lo], left = j->base[lo + 1] - offset;
    size_t want = length < left ? length : (size_t)left, n = 0;
    tessera_status st = tsr_bytes_read_at(j->parts[lo], in_part, want, buffer, &n);
    if (st != TESSERA_OK)
      return st;
    *got += n;
    if (n < want)
      return TESSERA_OK; /* the file shrank since it was opened */
    buffer = (uint8_t *)buffer + n;
    offset += n;
    length -= n;
  }
  return TESSERA_OK;
}

static uint64_t joined_size(const struct tsr_byte_source *src) {
  const struct joined_source *j = (const struct joined_source *)src;
  return j->base[j->n];
}

static void joined_identity(const struct tsr_byte_source *src, struct tsr_file_id *id) {
  *id = ((const struct joined_source *)src)->id;
}

static void joined_close(struct tsr_byte_source *src) {
  struct joined_source *j = (struct joined_source *)src;
  for (size_t i = 0; i < j->n; i++)
    tsr_byte_source_close(j->parts[i]);
  tsr_free(j->parts);
  tsr_free(j->base);
  tsr_free(j);
}

static const struct tsr_byte_source_ops joined_ops = {joined_read_at, joined_size, joined_identity,
                                                      joined_close};

/* The identity of the whole: the first part's, with every part's mixed into it, so that a
 * change to any instance keys the slide's tiles anew in the caches. */
static void joined_make_identity(struct joined_source *j) {
  j->parts[0]->ops->identity(j->parts[0], &j->id);
  j->id.size = j->base[j->n];
  uint64_t h = 1469598103934665603u;
  for (size_t i = 0; i < j->n; i++) {
    struct tsr_file_id p;
    j->parts[i]->ops->identity(j->parts[i], &p);
    uint64_t v[] = {p.device, p.inode, p.size, (uint64_t)p.mtime_ns, (uint64_t)p.ctime_ns};
    for (size_t k = 0; k < 5; k++)
      h = (h ^ v[k]) * 1099511628211u;
  }
  j->id.ctime_ns = (int64_t)(h >> 1);
}

/* ---- the instances ---- */

struct instance {
  char *path;
  struct tsr_byte_source *src; /* owned, until the joined source takes it (borrowed) */
  bool borrowed;
  struct tsr_dicom_instance dcm;
  uint64_t base; /* where it starts in the joined source */
};

/* The instances found so far. Once the slide's series is known (series[0]), only its
 * instances are kept open, and a damaged file that said it belongs to it fails the open. */
struct scan {
  struct instance *inst;
  size_t n;
  char series[TSR_DICOM_UID];
  bool folder; /* the series is the first VOLUME instance's, not the opened file's */
  /* The first file whose reading failed after naming its series (a WSI instance cut short
   * or damaged), and why: if that is the slide's series, the open fails with it. */
  char damaged_series[TSR_DICOM_UID];
  char damaged[TSR_MESSAGE_MAX];
};

static void instance_free(struct instance *in) {
  tsr_free(in->path);
  if (!in->borrowed)
    tsr_byte_source_close(in->src);
  tsr_dicom_instance_free(&in->dcm);
}

static void scan_free(struct scan *sc) {
  for (size_t i = 0; i < sc->n; i++)
    instance_free(&sc->inst[i]);
  tsr_free(sc->inst);
  sc->inst = NULL;
  sc->n = 0;
}

/* Drops (closes) the instances of other series than the chosen one. */
static void keep_series(struct scan *sc) {
  size_t k = 0;
  for (size_t i = 0; i < sc->n; i++) {
    if (strcmp(sc->inst[i].dcm.series, sc->series) == 0)
      sc->inst[k++] = sc->inst[i];
    else
      instance_free(&sc->inst[i]);
  }
  sc->n = k;
}

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* Reads path as an instance (into sc when it is a WSI instance of the slide's series, or of
 * any while that is not known); must: its failure is the open's. */
static tessera_status add_instance(struct scan *sc, const char *path, bool must) {
  struct instance in = {0};
  tessera_status st = tsr_file_source_open(path, &in.src);
  bool dicom = st == TESSERA_OK && tsr_dicom_sniff(in.src);
  if (st == TESSERA_OK && !dicom)
    st = tsr_error(TESSERA_E_FORMAT, "not a DICOM file");
  if (st == TESSERA_OK) {
    st = tsr_dicom_parse(in.src, &in.dcm, NULL);
    /* What the walk read before it failed is still there: the series it named. */
    if (st != TESSERA_OK && st != TESSERA_E_NOMEM && !must && in.dcm.series[0] &&
        !sc->damaged[0] && strcmp(in.dcm.sop_class, WSI_SOP_CLASS) == 0) {
      strcpy(sc->damaged_series, in.dcm.series);
      tsr_error_prefix(st, "%s: ", base_name(path));
      snprintf(sc->damaged, sizeof sc->damaged, "%s", tessera_error_message());
    }
  }
  if (st == TESSERA_OK && strcmp(in.dcm.sop_class, WSI_SOP_CLASS) != 0)
    st = tsr_error(TESSERA_E_FORMAT,
                   "not a whole-slide image: SOP class %s is not VL Whole Slide Microscopy "
                   "Image Storage (" WSI_SOP_CLASS ")",
                   in.dcm.sop_class[0] ? in.dcm.sop_class : "(none)");
  if (st == TESSERA_OK && !in.dcm.series[0])
    st = tsr_error(TESSERA_E_FORMAT, "no SeriesInstanceUID");
  if (st == TESSERA_OK && sc->series[0] && strcmp(in.dcm.series, sc->series) != 0) {
    instance_free(&in); /* another slide's */
    return TESSERA_OK;
  }

  bool limit = st == TESSERA_OK && sc->n >= MAX_INSTANCES;
  if (limit)
    st =
        tsr_error(TESSERA_E_LIMIT,
                  "the folder holds more than %d DICOM whole-slide image instances", MAX_INSTANCES);
  if (st == TESSERA_OK && !(in.path = tsr_strdup(path)))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  if (st == TESSERA_OK) {
    struct instance *grown = tsr_realloc(sc->inst, (sc->n + 1) * sizeof *grown);
    if (!grown) {
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
    } else {
      sc->inst = grown;
      sc->inst[sc->n++] = in;
      /* The series is the opened file's, or the first VOLUME instance's in a folder. */
      if (!sc->series[0] && (!sc->folder || strcmp(in.dcm.flavor, "VOLUME") == 0)) {
        strcpy(sc->series, in.dcm.series);
        keep_series(sc);
      }
      return TESSERA_OK;
    }
  }
  instance_free(&in);
  /* A file of the folder that is no WSI instance is passed over; running out of memory or
   * of room for instances is the open's failure (a level could go missing otherwise). */
  if (limit || st == TESSERA_E_NOMEM)
    return st;
  if (must)
    return tsr_error_prefix(st, "%s: ", base_name(path));
  tsr_error_clear();
  return TESSERA_OK;
}

static int compare_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The regular files of folder, sorted by name (paths). */
static tessera_status list_folder(const char *folder, char ***out, size_t *count) {
  *out = NULL;
  *count = 0;
  DIR *d = opendir(folder);
  if (!d)
    return tsr_error(TESSERA_E_IO, "cannot read the folder: %s", strerror(errno));
  char **names = NULL;
  size_t n = 0, cap = 0;
  tessera_status st = TESSERA_OK;
  struct dirent *e;
  while (st == TESSERA_OK && (e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    if (n >= MAX_FOLDER_FILES) {
      st = tsr_error(TESSERA_E_LIMIT, "the folder holds more than %d files", MAX_FOLDER_FILES);
      break;
    }
    size_t len = strlen(folder) + strlen(e->d_name) + 2;
    char *path = tsr_malloc(len);
    if (!path) {
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
      break;
    }
    snprintf(path, len, "%s/%s", folder, e->d_name);
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
      tsr_free(path);
      continue;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **grown = tsr_realloc(names, cap * sizeof *grown);
      if (!grown) {
        tsr_free(path);
        st = tsr_error(TESSERA_E_NOMEM, "out of memory");
        break;
      }
      names = grown;
    }
    names[n++] = path;
  }
  closedir(d);
  if (st != TESSERA_OK) {
    for (size_t i = 0; i < n; i++)
      tsr_free(names[i]);
    tsr_free(names);
    return st;
  }
  if (n)
    qsort(names, n, sizeof *names, compare_names);
  *out = names;
  *count = n;
  return TESSERA_OK;
}

static bool is_folder(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The instances of the slide path names, and the series chosen (sc->series). */
static tessera_status scan_slide(const char *path, struct scan *sc) {
  bool folder = is_folder(path);
  sc->folder = folder;
  char *dir = NULL;
  if (folder) {
    dir = tsr_strdup(path);
  } else {
    const char *slash = strrchr(path, '/');
    dir = slash ? tsr_strndup(path, (size_t)(slash - path)) : tsr_strdup(".");
    if (dir && !dir[0]) {
      tsr_free(dir);
      dir = tsr_strdup("/");
    }
  }
  if (!dir)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tessera_status st = TESSERA_OK;
  if (!folder)
    st = add_instance(sc, path, true);
  char **names = NULL;
  size_t count = 0;
  if (st == TESSERA_OK)
    st = list_folder(dir, &names, &count);
  struct stat self;
  bool have_self = !folder && stat(path, &self) == 0;
  for (size_t i = 0; st == TESSERA_OK && i < count; i++) {
    struct stat sb;
    if (have_self && stat(names[i], &sb) == 0 && sb.st_dev == self.st_dev &&
        sb.st_ino == self.st_ino)
      continue; /* the opened file, read first */
    st = add_instance(sc, names[i], false);
  }
  for (size_t i = 0; i < count; i++)
    tsr_free(names[i]);
  tsr_free(names);
  tsr_free(dir);
  if (st != TESSERA_OK)
    return st;
  /* A folder that is no DICOM series is refused as any directory was before. */
  if (!sc->series[0] && folder)
    return tsr_error(TESSERA_E_IO, "is a directory, not a slide file, and holds no DICOM "
                                   "whole-slide image (no VOLUME instance)");
  if (!sc->series[0])
    return tsr_error(TESSERA_E_FORMAT, "no DICOM whole-slide image");
  /* An instance of the slide that cannot be read would leave a level or image out. */
  if (sc->damaged[0] && strcmp(sc->damaged_series, sc->series) == 0)
    return tsr_error(TESSERA_E_CORRUPT, "%s", sc->damaged);
  keep_series(sc);
  return TESSERA_OK;
}

/* ---- levels ---- */

/* One level's or associated image's instances, in concatenation order. */
struct group {
  int64_t width, height;
  struct instance **inst; /* n of them, room for cap (owned) */
  size_t n, cap;
  const char *name; /* associated: its name */
};

static tessera_status group_add(struct group *g, struct instance *in) {
  if (g->n == g->cap) {
    size_t cap = g->cap ? g->cap * 2 : 4;
    struct instance **grown = tsr_realloc(g->inst, cap * sizeof *grown);
    if (!grown)
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    g->inst = grown;
    g->cap = cap;
  }
  g->inst[g->n++] = in;
  return TESSERA_OK;
}

static const char *associated_name(const char *flavor) {
  if (strcmp(flavor, "LABEL") == 0)
    return "label";
  if (strcmp(flavor, "OVERVIEW") == 0)
    return "macro";
  if (strcmp(flavor, "THUMBNAIL") == 0)
    return "thumbnail";
  return NULL;
}

static tessera_status add_to_group(struct group *g, struct instance *in) {
  for (size_t i = 0; i < g->n; i++) {
    if (strcmp(g->inst[i]->dcm.sop_instance, in->dcm.sop_instance) == 0)
      return TESSERA_OK; /* the same instance copied twice */
    const char *a = g->inst[i]->dcm.concatenation, *b = in->dcm.concatenation;
    if (!a[0] || !b[0] || strcmp(a, b) != 0)
      return tsr_error(TESSERA_E_FORMAT,
                       "%s and %s are two images of %" PRId64 "x%" PRId64
                       " that are not one concatenation",
                       base_name(g->inst[i]->path), base_name(in->path), g->width, g->height);
  }
  return group_add(g, in);
}

static int64_t concat_number(const struct instance *in) {
  return in->dcm.concat_number < 0 ? 1 : in->dcm.concat_number;
}

static int compare_concat(const void *a, const void *b) {
  int64_t x = concat_number(*(struct instance *const *)a),
          y = concat_number(*(struct instance *const *)b);
  return x < y ? -1 : x > y;
}

static int compare_width(const void *a, const void *b) {
  const struct group *x = *(struct group *const *)a, *y = *(struct group *const *)b;
  return x->width > y->width ? -1 : x->width < y->width;
}

/* Checks a concatenation's members: numbered 1..n, as many as they say. */
static tessera_status check_concatenation(struct group *g) {
  qsort(g->inst, g->n, sizeof g->inst[0], compare_concat);
  const struct instance *first = g->inst[0];
  if (!first->dcm.concatenation[0])
    return TESSERA_OK;
  int64_t total = first->dcm.concat_total > 0 ? first->dcm.concat_total : (int64_t)g->n;
  for (size_t i = 0; i <= g->n && (int64_t)i < total; i++)
    if (i == g->n || concat_number(g->inst[i]) != (int64_t)i + 1)
      return tsr_error(TESSERA_E_FORMAT,
                       "concatenation %s: instance %zu of %" PRId64 " is missing (or doubled)",
                       first->dcm.concatenation, i + 1, total);
  if ((int64_t)g->n != total)
    return tsr_error(TESSERA_E_FORMAT,
                     "concatenation %s has %zu instances, its instances say %" PRId64,
                     first->dcm.concatenation, g->n, total);
  return TESSERA_OK;
}

/* How an instance's pixels are stored, as the codecs take them. */
static tessera_status pixel_format(const struct instance *in, struct tsr_pixel_format *fmt) {
  const struct tsr_dicom_instance *d = &in->dcm;
  memset(fmt, 0, sizeof *fmt);
  fmt->spp = 3;
  fmt->predictor = 1;
  const char *ts = d->syntax, *ph = d->photometric;
  bool native = !strcmp(ts, "1.2.840.10008.1.2") || !strcmp(ts, "1.2.840.10008.1.2.1");
  if (native && !d->encapsulated && !strcmp(ph, "RGB")) {
    fmt->compression = COMPRESSION_NONE;
    fmt->photometric = PHOTOMETRIC_RGB;
  } else if (!strcmp(ts, "1.2.840.10008.1.2.4.50") && d->encapsulated &&
             (!strcmp(ph, "YBR_FULL_422") || !strcmp(ph, "YBR_FULL") || !strcmp(ph, "RGB"))) {
    fmt->compression = COMPRESSION_JPEG;
    fmt->photometric = strcmp(ph, "RGB") == 0 ? PHOTOMETRIC_RGB : PHOTOMETRIC_YCBCR;
  } else if ((!strcmp(ts, "1.2.840.10008.1.2.4.90") || !strcmp(ts, "1.2.840.10008.1.2.4.91")) &&
             d->encapsulated &&
             (!strcmp(ph, "RGB") || !strcmp(ph, "YBR_ICT") || !strcmp(ph, "YBR_RCT"))) {
    /* OpenJPEG undoes the codestream's colour transform: the samples come out RGB. */
    fmt->compression = 33005;
    fmt->photometric = PHOTOMETRIC_RGB;
  } else {
    return tsr_error(TESSERA_E_UNSUPPORTED,
                     "%s: transfer syntax %s with photometric interpretation %s is not read "
                     "(uncompressed RGB, JPEG baseline and JPEG 2000 are)",
                     base_name(in->path), ts, ph[0] ? ph : "(none)");
  }
  if (d->samples != 3 || d->bits_allocated != 8 || d->bits_stored != 8 ||
      d->pixel_representation > 0 || d->planar > 0 || (d->high_bit >= 0 && d->high_bit != 7))
    return tsr_error(TESSERA_E_UNSUPPORTED,
                     "%s: %" PRId64 " samples of %" PRId64 " bits (planar %" PRId64
                     ") are not read: 3 interleaved 8-bit samples are",
                     base_name(in->path), d->samples, d->bits_allocated, d->planar);
  if (d->focal_planes > 1)
    return tsr_error(TESSERA_E_UNSUPPORTED, "%s: %" PRId64 " focal planes (one is read)",
                     base_name(in->path), d->focal_planes);
  tsr_codec_resolve(fmt, 8, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG, 0, 0);
  return TESSERA_OK;
}

/* Whether a fragment begins a frame (a JPEG's SOI, a JPEG 2000 codestream's SOC and SIZ, a
 * JP2 file's signature box). */
static bool starts_frame(const struct instance *in, const struct tsr_dicom_fragment *f) {
  uint8_t b[6];
  if (f->len < 4 || !tsr_bytes_read_all(in->src, f->item + 8, f->len < 6 ? 4 : 6, b))
    return false;
  return (b[0] == 0xFF && b[1] == 0xD8) ||
         (b[0] == 0xFF && b[1] == 0x4F && b[2] == 0xFF && b[3] == 0x51) ||
         (f->len >= 6 && !memcmp(b, "\0\0\0\x0CjP", 6));
}

/* Each frame's first fragment: starts[k] for frame k, starts[frames] = fragments. */
static tessera_status frame_starts(const struct instance *in, size_t frames, size_t *starts) {
  const struct tsr_dicom_instance *d = &in->dcm;
  size_t nf = d->nfragments;
  starts[frames] = nf;
  if (nf == frames) {
    for (size_t k = 0; k < frames; k++)
      starts[k] = k;
    return TESSERA_OK;
  }
  if (frames == 1 && nf > 0) {
    starts[0] = 0;
    return TESSERA_OK;
  }
  if (d->noffsets == frames && nf > 0) {
    /* The offset table's offsets are from the first fragment's item. */
    size_t f = 0;
    for (size_t k = 0; k < frames; k++) {
      uint64_t want = d->fragments[0].item + d->offset_table[k];
      while (f < nf && d->fragments[f].item < want)
        f++;
      if (f == nf || d->fragments[f].item != want || (k > 0 && f <= starts[k - 1]))
        return tsr_error(TESSERA_E_CORRUPT,
                         "%s: the offset table's frame %zu starts at no fragment",
                         base_name(in->path), k + 1);
      starts[k] = f;
    }
    return TESSERA_OK;
  }
  size_t k = 0;
  for (size_t f = 0; f < nf; f++) {
    if (!starts_frame(in, &d->fragments[f]))
      continue;
    if (k == frames) {
      k++;
      break;
    }
    starts[k++] = f;
  }
  if (k != frames || (frames > 0 && starts[0] != 0))
    return tsr_error(TESSERA_E_CORRUPT,
                     "%s: %zu fragments with no offset table cannot be split into %zu frames",
                     base_name(in->path), nf, frames);
  return TESSERA_OK;
}

/* Sets the level's tile for frame k of in: where its bytes lie in the joined source. */
static void set_frame(struct tsr_level *lv, uint64_t tile, const struct instance *in,
                      const size_t *starts, size_t k, struct tsr_dicom_frames *frames) {
  const struct tsr_dicom_instance *d = &in->dcm;
  if (lv->bytecounts[tile])
    return; /* another focal plane or optical path's, or a frame given twice: the first wins */
  if (!d->encapsulated) {
    uint64_t size = (uint64_t)d->rows * (uint64_t)d->columns * 3;
    lv->offsets[tile] = in->base + d->pixel_offset + k * size;
    lv->bytecounts[tile] = size;
    return;
  }
  const struct tsr_dicom_fragment *first = &d->fragments[starts[k]],
                                  *last = &d->fragments[starts[k + 1] - 1];
  if (first == last) {
    lv->offsets[tile] = in->base + first->item + 8;
    lv->bytecounts[tile] = first->len;
  } else {
    lv->offsets[tile] = in->base + first->item;
    lv->bytecounts[tile] = last->item + 8 + last->len - first->item;
    frames->fragmented[tile / 8] |= (uint8_t)(1u << (tile % 8));
  }
}

/* Places in's frames into the level's tiles. */
static tessera_status place_frames(struct tsr_level *lv, const struct instance *in,
                                   struct tsr_dicom_frames *frames) {
  const struct tsr_dicom_instance *d = &in->dcm;
  const char *name = base_name(in->path);
  if (!d->has_pixels)
    return tsr_error(TESSERA_E_CORRUPT, "%s has no Pixel Data", name);
  if (d->frames > (int64_t)TSR_DICOM_MAX_FRAMES)
    return tsr_error(TESSERA_E_LIMIT, "%s: %" PRId64 " frames", name, d->frames);
  size_t n = d->frames < 0 ? 1 : (size_t)d->frames;
  if (!d->encapsulated) {
    uint64_t size = (uint64_t)d->rows * (uint64_t)d->columns * 3;
    if (n > d->pixel_length / size)
      return tsr_error(TESSERA_E_CORRUPT,
                       "%s: %zu frames of %" PRIu64 " bytes do not fit its %" PRIu64
                       " bytes of Pixel Data",
                       name, n, size, d->pixel_length);
  }
  size_t *starts = NULL;
  if (d->encapsulated) {
    if (n > d->nfragments)
      return tsr_error(TESSERA_E_CORRUPT, "%s: %zu frames in %zu fragments", name, n,
                       d->nfragments);
    if (!(starts = tsr_malloc((n + 1) * sizeof *starts)))
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    tessera_status st = frame_starts(in, n, starts);
    if (st != TESSERA_OK) {
      tsr_free(starts);
      return st;
    }
  }
  bool full =
      strcmp(d->organization, "TILED_FULL") == 0 || (!d->organization[0] && d->npositions == 0);
  tessera_status st = TESSERA_OK;
  if (full) {
    uint64_t offset = d->concat_frame_offset < 0 ? 0 : (uint64_t)d->concat_frame_offset;
    for (size_t k = 0; k < n && offset + k < lv->ntiles; k++)
      set_frame(lv, offset + k, in, starts, k, frames);
  } else if (d->npositions < n) {
    st = tsr_error(TESSERA_E_CORRUPT,
                   "%s: TILED_SPARSE, but %zu of its %zu frames have a Plane Position (Slide)",
                   name, d->npositions, n);
  } else {
    for (size_t k = 0; k < n; k++) {
      int64_t c = d->column_pos[k], r = d->row_pos[k];
      if (c < 1 || r < 1 || (c - 1) % lv->tile_w || (r - 1) % lv->tile_h) {
        st = tsr_error(TESSERA_E_UNSUPPORTED,
                       "%s: frame %zu at column %" PRId64 ", row %" PRId64
                       " is not on the %ux%u tile grid",
                       name, k + 1, c, r, lv->tile_w, lv->tile_h);
        break;
      }
      uint64_t x = (uint64_t)(c - 1) / lv->tile_w, y = (uint64_t)(r - 1) / lv->tile_h;
      if (x >= lv->across || y >= lv->down) {
        st = tsr_error(TESSERA_E_CORRUPT,
                       "%s: frame %zu at column %" PRId64 ", row %" PRId64
                       " lies outside the %" PRId64 "x%" PRId64 " image",
                       name, k + 1, c, r, lv->width, lv->height);
        break;
      }
      set_frame(lv, y * lv->across + x, in, starts, k, frames);
    }
  }
  tsr_free(starts);
  return st;
}

static tessera_status make_level(const struct group *g, const tessera_open_options *limits,
                                 struct tsr_level *lv) {
  const struct instance *first = g->inst[0];
  const struct tsr_dicom_instance *d = &first->dcm;
  const char *name = base_name(first->path);
  memset(lv, 0, sizeof *lv);
  if (d->total_columns < 1 || d->total_rows < 1 || d->columns < 1 || d->rows < 1)
    return tsr_error(TESSERA_E_CORRUPT, "%s: no TotalPixelMatrixColumns/Rows or Columns/Rows",
                     name);
  if (d->total_columns > limits->max_dimension || d->total_rows > limits->max_dimension ||
      d->columns > TSR_JPEG_MAX_SIDE || d->rows > TSR_JPEG_MAX_SIDE)
    return tsr_error(TESSERA_E_LIMIT,
                     "%s: image of %" PRId64 "x%" PRId64 " in frames of %" PRId64 "x%" PRId64
                     " exceeds the limits",
                     name, d->total_columns, d->total_rows, d->columns, d->rows);
  tessera_status st = pixel_format(first, &lv->fmt);
  if (st != TESSERA_OK)
    return st;
  lv->width = d->total_columns;
  lv->height = d->total_rows;
  lv->tile_w = (uint32_t)d->columns;
  lv->tile_h = (uint32_t)d->rows;
  lv->tiled = true;
  lv->across = (uint32_t)((lv->width + lv->tile_w - 1) / lv->tile_w);
  lv->down = (uint32_t)((lv->height + lv->tile_h - 1) / lv->tile_h);
  lv->ntiles = (uint64_t)lv->across * lv->down;
  lv->downsample = 1.0;
  lv->source = &tsr_dicom_frames;
  if (lv->ntiles > MAX_TILES)
    return tsr_error(TESSERA_E_LIMIT, "%s: %" PRIu64 " tiles (at most %" PRIu64 ")", name,
                     lv->ntiles, MAX_TILES);
  struct tsr_dicom_frames *frames = tsr_calloc(1, sizeof *frames);
  lv->source_data = frames;
  lv->offsets = tsr_calloc((size_t)lv->ntiles, sizeof *lv->offsets);
  lv->bytecounts = tsr_calloc((size_t)lv->ntiles, sizeof *lv->bytecounts);
  if (!frames || !lv->offsets || !lv->bytecounts ||
      !(frames->fragmented = tsr_calloc((size_t)(lv->ntiles + 7) / 8, 1)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %" PRIu64 " tiles", lv->ntiles);
  for (size_t i = 0; i < g->n; i++) {
    const struct tsr_dicom_instance *o = &g->inst[i]->dcm;
    if (o->columns != d->columns || o->rows != d->rows || strcmp(o->syntax, d->syntax) ||
        strcmp(o->photometric, d->photometric))
      return tsr_error(TESSERA_E_FORMAT,
                       "%s and %s, of one concatenation, store their frames differently", name,
                       base_name(g->inst[i]->path));
    if ((st = place_frames(lv, g->inst[i], frames)) != TESSERA_OK)
      return st;
  }
  return TESSERA_OK;
}

/* ---- properties ---- */

/* The number at key scaled by scale, as key to (nothing when it is no number). */
static void copy_number(struct tsr_props *p, const char *from, double scale, const char *to) {
  const char *v = tsr_props_get(p, from);
  if (!v)
    return;
  char *end;
  double d = strtod(v, &end);
  while (*end == ' ')
    end++;
  if (end != v && !*end)
    tsr_props_add_double(p, to, d * scale);
}

/* ICC profiles are kilobytes; a length beyond this is damage, not colour. */
#define MAX_ICC_BYTES ((uint64_t)64 << 20)

/* The ICC profile of the first optical path of level 0's first instance, as OpenSlide 4 takes
 * it. */
static tessera_status icc_profile(const struct instance *in, struct tsr_findings *out) {
  uint64_t n = in->dcm.icc_length;
  if (n == 0)
    return TESSERA_OK;
  if (n > MAX_ICC_BYTES)
    return tsr_error(TESSERA_E_LIMIT, "%s: an ICC profile of %" PRIu64 " bytes",
                     base_name(in->path), n);
  if (!(out->icc = tsr_malloc((size_t)n)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for the ICC profile");
  if (!tsr_bytes_read_all(in->src, in->dcm.icc_offset, (size_t)n, out->icc))
    return tsr_error(TESSERA_E_IO, "%s: cannot read its ICC profile", base_name(in->path));
  out->icc_size = (size_t)n;
  return TESSERA_OK;
}

static tessera_status properties(const struct instance *in, struct tsr_findings *out) {
  struct tsr_dicom_instance again;
  tessera_status st = tsr_dicom_parse(in->src, &again, &out->props);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "%s: ", base_name(in->path));
  tsr_dicom_instance_free(&again);
  struct tsr_props *p = &out->props;
  const char *spacing = "dicom.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]."
                        "PixelSpacing";
  char key[160];
  /* PixelSpacing is row spacing, then column spacing, in millimetres. */
  snprintf(key, sizeof key, "%s[0]", spacing);
  copy_number(p, key, 1000.0, "tessera.mpp-y");
  snprintf(key, sizeof key, "%s[1]", spacing);
  copy_number(p, key, 1000.0, "tessera.mpp-x");
  copy_number(p, "dicom.OpticalPathSequence[0].ObjectiveLensPower", 1.0, "tessera.objective-power");
  tsr_props_add_string(p, "tessera.barcode", tsr_props_get(p, "dicom.BarcodeValue"));
  return TESSERA_OK;
}

/* ---- the format ---- */

static bool dicom_detect(const char *path) {
  if (is_folder(path))
    return true; /* a folder is no TIFF: a DICOM series, or a clear message that it is none */
  struct tsr_byte_source *src;
  if (tsr_file_source_open(path, &src) != TESSERA_OK) {
    tsr_error_clear();
    return false;
  }
  bool yes = tsr_dicom_sniff(src);
  tsr_byte_source_close(src);
  return yes;
}

/* Puts the slide's instances side by side in one source (taking their sources over). */
static tessera_status join(struct instance **used, size_t n, struct tsr_byte_source **out) {
  struct joined_source *j = tsr_calloc(1, sizeof *j);
  if (!j)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  j->pub.ops = &joined_ops;
  j->parts = tsr_calloc(n, sizeof *j->parts);
  j->base = tsr_calloc(n + 1, sizeof *j->base);
  if (!j->parts || !j->base) {
    joined_close(&j->pub);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    used[i]->base = j->base[i];
    j->base[i + 1] = j->base[i] + used[i]->src->ops->size(used[i]->src);
    j->parts[i] = used[i]->src;
    j->n++;
  }
  joined_make_identity(j);
  *out = &j->pub;
  return TESSERA_OK;
}

static tessera_status build(struct scan *sc, const char *series, const tessera_open_options *limits,
                            struct tsr_findings *out, struct tsr_byte_source **source) {
  /* At most one group an instance. */
  struct group *groups = tsr_calloc(sc->n + 1, sizeof *groups);
  struct group **order = tsr_calloc(sc->n + 1, sizeof *order);
  struct instance **used = tsr_calloc(sc->n + 1, sizeof *used);
  size_t ngroups = 0, nlevels = 0, nused = 0;
  tessera_status st = TESSERA_OK;
  if (!groups || !order || !used)
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  /* Levels first (by size), then associated images (by name). */
  for (size_t i = 0; st == TESSERA_OK && i < sc->n; i++) {
    struct instance *in = &sc->inst[i];
    if (strcmp(in->dcm.series, series) != 0)
      continue;
    bool volume = strcmp(in->dcm.flavor, "VOLUME") == 0;
    const char *assoc = associated_name(in->dcm.flavor);
    if (!volume && !assoc)
      continue; /* a flavour nobody reads */
    struct group *g = NULL;
    for (size_t k = 0; k < ngroups && !g; k++) {
      struct group *c = &groups[k];
      if (volume ? !c->name && c->width == in->dcm.total_columns && c->height == in->dcm.total_rows
                 : c->name && strcmp(c->name, assoc) == 0)
        g = c;
    }
    if (!g) {
      if (!volume && out->nassociated + 1 > TSR_MAX_ASSOCIATED)
        continue;
      g = &groups[ngroups++];
      g->width = in->dcm.total_columns;
      g->height = in->dcm.total_rows;
      g->name = volume ? NULL : assoc;
      if (volume)
        nlevels++;
    } else if (!volume && strcmp(g->inst[0]->dcm.sop_instance, in->dcm.sop_instance) != 0) {
      st = tsr_error(TESSERA_E_FORMAT, "two %s images: %s and %s", assoc,
                     base_name(g->inst[0]->path), base_name(in->path));
      break;
    }
    if (volume)
      st = add_to_group(g, in);
    else if (g->n == 0) {
      if (in->dcm.concatenation[0])
        st = tsr_error(TESSERA_E_FORMAT, "%s: a %s image in a concatenation", in->path, assoc);
      else
        st = group_add(g, in);
    }
  }
  if (st == TESSERA_OK && nlevels == 0)
    st = tsr_error(TESSERA_E_FORMAT, "series %s has no VOLUME image (no pyramid level)", series);
  for (size_t k = 0; st == TESSERA_OK && k < ngroups; k++) {
    order[k] = &groups[k];
    if (!groups[k].name)
      st = check_concatenation(&groups[k]);
  }
  if (st == TESSERA_OK) {
    /* Volumes (widest first) before associated images. */
    size_t v = 0;
    struct group **tmp = order;
    for (size_t k = 0; k < ngroups; k++)
      if (!groups[k].name)
        tmp[v++] = &groups[k];
    qsort(tmp, v, sizeof *tmp, compare_width);
    for (size_t k = 0; k < ngroups; k++)
      if (groups[k].name)
        tmp[v++] = &groups[k];
    for (size_t k = 0; k < ngroups; k++)
      for (size_t i = 0; i < order[k]->n; i++)
        used[nused++] = order[k]->inst[i];
    st = join(used, nused, source);
    for (size_t i = 0; st == TESSERA_OK && i < nused; i++)
      used[i]->borrowed = true; /* the joined source closes it */
  }
  if (st == TESSERA_OK) {
    out->levels = tsr_calloc(nlevels, sizeof *out->levels);
    if (!out->levels)
      st = tsr_error(TESSERA_E_NOMEM, "out of memory for levels");
  }
  for (size_t k = 0; st == TESSERA_OK && k < ngroups; k++) {
    const struct group *g = order[k];
    if (!g->name) {
      st = make_level(g, limits, &out->levels[out->nlevels]);
      /* The tile caches key tiles by (slide, directory, index): each level needs its own. */
      out->levels[out->nlevels].directory = (uint32_t)out->nlevels;
      out->nlevels++;
      if (st == TESSERA_OK && out->nlevels > 1) {
        const struct tsr_level *l0 = &out->levels[0], *l = &out->levels[out->nlevels - 1];
        out->levels[out->nlevels - 1].downsample =
            ((double)l0->width / (double)l->width + (double)l0->height / (double)l->height) / 2.0;
      }
      if (st != TESSERA_OK)
        st = tsr_error_prefix(st, "level %d: ", out->nlevels - 1);
      continue;
    }
    struct tsr_level *lv = tsr_calloc(1, sizeof *lv);
    if (!lv) {
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
      break;
    }
    size_t a = out->nassociated++;
    out->associated[a].name = g->name;
    out->associated[a].level = lv;
    if ((st = make_level(g, limits, lv)) != TESSERA_OK)
      st = tsr_error_prefix(st, "%s image: ", g->name);
    lv->directory = (uint32_t)(MAX_INSTANCES + a); /* after every level's */
  }
  if (st == TESSERA_OK)
    st = properties(order[0]->inst[0], out);
  if (st == TESSERA_OK)
    st = icc_profile(order[0]->inst[0], out);
  for (size_t k = 0; groups && k < ngroups; k++)
    tsr_free(groups[k].inst);
  tsr_free(groups);
  tsr_free(order);
  tsr_free(used);
  return st;
}

static tessera_status dicom_open(const char *path, const tessera_open_options *limits,
                                 struct tsr_findings *out, struct tsr_byte_source **source) {
  *source = NULL;
  struct scan *sc = tsr_calloc(1, sizeof *sc);
  if (!sc)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tessera_status st = scan_slide(path, sc);
  if (st == TESSERA_OK)
    st = build(sc, sc->series, limits, out, source);
  scan_free(sc);
  tsr_free(sc);
  out->vendor = "dicom";
  out->background = 255; /* missing tiles of a sparse level: white glass, as a scanner sees */
  if (st != TESSERA_OK) {
    tsr_byte_source_close(*source);
    *source = NULL;
  }
  return st;
}

const struct tsr_path_format tsr_format_dicom = {
    .name = "dicom",
    .detect = dicom_detect,
    .open = dicom_open,
};
