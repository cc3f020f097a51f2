/* The DICOM Part 10 reader (format/dicom.h). One walk from the file meta group to the Pixel
 * Data: data sets and sequence items are walked recursively (depth bounded), each element's
 * value bounded by the data set or item that holds it, which is bounded by the file. Values
 * are read through a small window over the byte source, so memory does not grow with the file
 * beyond the per-frame and fragment tables, themselves bounded. */
#include "format/dicom.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

#define TAG(g, e) ((uint32_t)(g) << 16 | (uint32_t)(e))
#define UNDEFINED 0xFFFFFFFFu
#define WINDOW 65536

enum {
  ITEM = TAG(0xFFFE, 0xE000),
  ITEM_END = TAG(0xFFFE, 0xE00D),
  SEQUENCE_END = TAG(0xFFFE, 0xE0DD),
  PIXEL_DATA = TAG(0x7FE0, 0x0010),
  EXTENDED_OFFSETS = TAG(0x7FE0, 0x0001),
  EXTENDED_LENGTHS = TAG(0x7FE0, 0x0002),
  FLOAT_PIXEL_DATA = TAG(0x7FE0, 0x0008),
  DOUBLE_PIXEL_DATA = TAG(0x7FE0, 0x0009),
  OPTICAL_PATHS = TAG(0x0048, 0x0105),
  ICC_PROFILE = TAG(0x0028, 0x2000),
  PER_FRAME = TAG(0x5200, 0x9230),
  PLANE_POSITION = TAG(0x0048, 0x021A),
  COLUMN_POSITION = TAG(0x0048, 0x021E),
  ROW_POSITION = TAG(0x0048, 0x021F),
  NAVIGATION = TAG(0x0048, 0x0200),
};

struct walker {
  const struct tsr_byte_source *src;
  uint64_t size;
  struct tsr_dicom_instance *inst;
  struct tsr_props *props; /* NULL: none wanted */
  bool props_done;         /* a tag that ends them was met */
  bool done;               /* Pixel Data reached */
  int depth;
  struct {
    uint32_t tag;
    size_t item;
    const char *keyword; /* NULL: the dictionary does not name it (its items are no props) */
  } stack[TSR_DICOM_MAX_DEPTH];
  size_t positions_cap;
  uint8_t window[WINDOW];
  uint64_t window_at;
  size_t window_len;
};

const struct tsr_dicom_dict_entry *tsr_dicom_lookup(uint32_t tag) {
  size_t lo = 0, hi = tsr_dicom_dict_len;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (tsr_dicom_dict[mid].tag == tag)
      return &tsr_dicom_dict[mid];
    if (tsr_dicom_dict[mid].tag < tag)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* The n (<= WINDOW) bytes at offset, which the caller has checked lie inside the file. */
static const uint8_t *bytes_at(struct walker *w, uint64_t offset, size_t n) {
  if (offset >= w->window_at && offset - w->window_at + n <= w->window_len)
    return w->window + (offset - w->window_at);
  size_t want = WINDOW;
  if (w->size - offset < want)
    want = (size_t)(w->size - offset);
  size_t got = 0;
  if (tsr_bytes_read_at(w->src, offset, want, w->window, &got) != TESSERA_OK || got < n)
    return NULL;
  w->window_at = offset;
  w->window_len = got;
  return w->window;
}

static tessera_status read_failed(uint64_t offset) {
  return tsr_error(TESSERA_E_IO, "cannot read the DICOM file at offset %" PRIu64, offset);
}

static tessera_status past_end(uint32_t tag, uint64_t offset, const char *what) {
  return tsr_error(TESSERA_E_CORRUPT,
                   "DICOM element (%04X,%04X) at offset %" PRIu64 ": %s past the end of %s",
                   tag >> 16, tag & 0xFFFF, offset, what,
                   "the data set, item or file that holds it (was the file truncated?)");
}

/* VRs whose explicit length is 4 bytes, after 2 reserved ones. */
static bool long_vr(const char *vr) {
  static const char *const longs[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                      "SV", "UC", "UN", "UR", "UT", "UV"};
  for (size_t i = 0; i < sizeof longs / sizeof longs[0]; i++)
    if (vr[0] == longs[i][0] && vr[1] == longs[i][1])
      return true;
  return false;
}

static bool vr_is(const char *vr, const char *name) { return vr[0] == name[0] && vr[1] == name[1]; }

/* ---- values ---- */

/* A string value as a C string (cut at NUL, one trailing pad removed as the standard pads to
 * an even length), into buf of cap bytes; false if it does not fit. */
static bool string_value(const uint8_t *v, size_t len, char *buf, size_t cap, bool uid) {
  size_t n = strnlen((const char *)v, len);
  if (n > 0 && !uid && isspace(v[n - 1]))
    n--;
  if (n >= cap)
    return false;
  memcpy(buf, v, n);
  buf[n] = '\0';
  return true;
}

/* An identifying value kept for choosing instances and for messages: bytes that are no
 * printable ASCII (which UIDs and code strings never hold) become '?', so a damaged file
 * cannot put control characters or broken UTF-8 into a message. */
static void printable(char *buf) {
  for (char *p = buf; *p; p++)
    if (*p < 0x20 || *p > 0x7E)
      *p = '?';
}

static void keep(const uint8_t *v, size_t len, char *buf, size_t cap, bool uid) {
  if (string_value(v, len, buf, cap, uid))
    printable(buf);
}

/* The index-th backslash-separated part of a string value, trimmed of spaces. */
static bool string_part(const uint8_t *v, size_t len, int index, char *buf, size_t cap) {
  char all[256];
  if (!string_value(v, len, all, sizeof all, false))
    return false;
  char *p = all;
  for (int i = 0; i < index; i++) {
    p = strchr(p, '\\');
    if (!p)
      return false;
    p++;
  }
  char *end = strchr(p, '\\');
  if (end)
    *end = '\0';
  while (*p == ' ')
    p++;
  size_t n = strlen(p);
  while (n > 0 && p[n - 1] == ' ')
    n--;
  if (n >= cap)
    return false;
  memcpy(buf, p, n);
  buf[n] = '\0';
  return true;
}

/* An integer of a binary (US, UL, SS, SL) or string (IS) VR; -1 if it cannot be read. */
static int64_t int_value(const char *vr, const uint8_t *v, size_t len) {
  if (vr_is(vr, "US") && len >= 2)
    return le16(v);
  if (vr_is(vr, "UL") && len >= 4)
    return le32(v);
  if (vr_is(vr, "SS") && len >= 2)
    return (int16_t)le16(v);
  if (vr_is(vr, "SL") && len >= 4)
    return (int32_t)le32(v);
  if (vr_is(vr, "SV") && len >= 8)
    return (int64_t)le64(v);
  if (vr_is(vr, "UV") && len >= 8)
    return le64(v) > INT64_MAX ? -1 : (int64_t)le64(v);
  if (vr_is(vr, "IS")) {
    char buf[32];
    if (!string_part(v, len, 0, buf, sizeof buf) || !buf[0])
      return -1;
    char *end;
    long long n = strtoll(buf, &end, 10);
    return *end || n < 0 ? -1 : (int64_t)n;
  }
  return -1;
}

/* ---- properties, named as OpenSlide 4 (through libdicom) names them ---- */

enum vr_class { CLASS_NONE, CLASS_MULTI, CLASS_SINGLE, CLASS_DECIMAL, CLASS_INTEGER };

static enum vr_class classify(const char *vr, size_t *size) {
  static const struct {
    char vr[3];
    enum vr_class c;
    size_t size;
  } classes[] = {
      {"AE", CLASS_MULTI, 0},   {"AS", CLASS_SINGLE, 0},  {"AT", CLASS_INTEGER, 2},
      {"CS", CLASS_MULTI, 0},   {"DA", CLASS_SINGLE, 0},  {"DS", CLASS_MULTI, 0},
      {"DT", CLASS_MULTI, 0},   {"FL", CLASS_DECIMAL, 4}, {"FD", CLASS_DECIMAL, 8},
      {"IS", CLASS_SINGLE, 0},  {"LO", CLASS_SINGLE, 0},  {"LT", CLASS_SINGLE, 0},
      {"PN", CLASS_MULTI, 0},   {"SH", CLASS_MULTI, 0},   {"SL", CLASS_INTEGER, 4},
      {"SS", CLASS_INTEGER, 2}, {"ST", CLASS_SINGLE, 0},  {"TM", CLASS_MULTI, 0},
      {"UI", CLASS_MULTI, 0},   {"UL", CLASS_INTEGER, 4}, {"US", CLASS_INTEGER, 2},
      {"UT", CLASS_SINGLE, 0},  {"UR", CLASS_SINGLE, 0},  {"UC", CLASS_MULTI, 0},
      {"SV", CLASS_INTEGER, 8}, {"UV", CLASS_INTEGER, 8},
  };
  for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++)
    if (vr_is(vr, classes[i].vr)) {
      *size = classes[i].size;
      return classes[i].c;
    }
  return CLASS_NONE;
}

/* The key of element keyword at the walk's depth, with [index] when index >= 0. */
static bool prop_key(const struct walker *w, const char *keyword, long index, char *key,
                     size_t cap) {
  size_t n = (size_t)snprintf(key, cap, "dicom");
  for (int d = 0; d < w->depth && n < cap; d++)
    n += (size_t)snprintf(key + n, cap - n, ".%s[%zu]", w->stack[d].keyword, w->stack[d].item);
  if (n < cap)
    n += (size_t)snprintf(key + n, cap - n, ".%s", keyword);
  if (index >= 0 && n < cap)
    n += (size_t)snprintf(key + n, cap - n, "[%ld]", index);
  return n < cap;
}

static void add_prop(struct walker *w, const char *keyword, long index, const char *value) {
  char key[512];
  if (prop_key(w, keyword, index, key, sizeof key))
    tsr_props_add_string(w->props, key, value);
}

static void element_props(struct walker *w, uint32_t tag, const char *vr, const uint8_t *v,
                          size_t len) {
  const struct tsr_dicom_dict_entry *e = tsr_dicom_lookup(tag);
  /* Private and unknown elements have no name; group lengths are the encoding's, not the
   * image's (libdicom drops them, so OpenSlide 4 shows none). */
  if (!e || (tag & 0xFFFF) == 0)
    return;
  size_t size;
  enum vr_class c = classify(vr, &size);
  char buf[WINDOW + 1];
  if (c == CLASS_SINGLE || c == CLASS_MULTI) {
    if (!string_value(v, len, buf, sizeof buf, vr_is(vr, "UI")))
      return;
    if (c == CLASS_SINGLE || !strchr(buf, '\\')) {
      add_prop(w, e->keyword, -1, buf);
      return;
    }
    char *p = buf;
    for (long i = 0;; i++) {
      char *end = strchr(p, '\\');
      if (end)
        *end = '\0';
      add_prop(w, e->keyword, i, p);
      if (!end)
        break;
      p = end + 1;
    }
  } else if (c == CLASS_DECIMAL || c == CLASS_INTEGER) {
    if (len % size != 0)
      return;
    size_t vm = len / size;
    for (size_t i = 0; i < vm; i++) {
      const uint8_t *p = v + i * size;
      if (c == CLASS_DECIMAL) {
        double d;
        if (size == 4) {
          uint32_t bits = le32(p);
          float f;
          memcpy(&f, &bits, sizeof f);
          d = f;
        } else {
          uint64_t bits = le64(p);
          memcpy(&d, &bits, sizeof d);
        }
        snprintf(buf, sizeof buf, "%.17g", d); /* g_ascii_dtostr's form */
      } else if (vr_is(vr, "UV")) {
        snprintf(buf, sizeof buf, "%" PRIu64, le64(p));
      } else {
        int64_t n = vr_is(vr, "SS")   ? (int16_t)le16(p)
                    : vr_is(vr, "SL") ? (int32_t)le32(p)
                    : vr_is(vr, "SV") ? (int64_t)le64(p)
                    : size == 2       ? le16(p)
                                      : le32(p);
        snprintf(buf, sizeof buf, "%" PRId64, n);
      }
      add_prop(w, e->keyword, vm == 1 ? -1 : (long)i, buf);
    }
  }
}

/* ---- what a WSI instance says ---- */

static void top_level(struct walker *w, uint32_t tag, const char *vr, const uint8_t *v,
                      size_t len) {
  struct tsr_dicom_instance *in = w->inst;
  switch (tag) {
  case TAG(0x0002, 0x0010): keep(v, len, in->syntax, sizeof in->syntax, true); break;
  case TAG(0x0002, 0x0002): /* MediaStorageSOPClassUID; SOPClassUID agrees */
  case TAG(0x0008, 0x0016): keep(v, len, in->sop_class, sizeof in->sop_class, true); break;
  case TAG(0x0008, 0x0018): keep(v, len, in->sop_instance, sizeof in->sop_instance, true); break;
  case TAG(0x0020, 0x000E): keep(v, len, in->series, sizeof in->series, true); break;
  case TAG(0x0020, 0x9161): keep(v, len, in->concatenation, sizeof in->concatenation, true); break;
  case TAG(0x0008, 0x0008):
    string_part(v, len, 2, in->flavor, sizeof in->flavor);
    printable(in->flavor);
    break;
  case TAG(0x0028, 0x0004):
    string_part(v, len, 0, in->photometric, sizeof in->photometric);
    printable(in->photometric);
    break;
  case TAG(0x0020, 0x9311):
    string_part(v, len, 0, in->organization, sizeof in->organization);
    printable(in->organization);
    break;
  case TAG(0x0028, 0x0010): in->rows = int_value(vr, v, len); break;
  case TAG(0x0028, 0x0011): in->columns = int_value(vr, v, len); break;
  case TAG(0x0028, 0x0002): in->samples = int_value(vr, v, len); break;
  case TAG(0x0028, 0x0006): in->planar = int_value(vr, v, len); break;
  case TAG(0x0028, 0x0100): in->bits_allocated = int_value(vr, v, len); break;
  case TAG(0x0028, 0x0101): in->bits_stored = int_value(vr, v, len); break;
  case TAG(0x0028, 0x0102): in->high_bit = int_value(vr, v, len); break;
  case TAG(0x0028, 0x0103): in->pixel_representation = int_value(vr, v, len); break;
  case TAG(0x0028, 0x0008): in->frames = int_value(vr, v, len); break;
  case TAG(0x0048, 0x0006): in->total_columns = int_value(vr, v, len); break;
  case TAG(0x0048, 0x0007): in->total_rows = int_value(vr, v, len); break;
  case TAG(0x0048, 0x0303): in->focal_planes = int_value(vr, v, len); break;
  case TAG(0x0020, 0x9162): in->concat_number = int_value(vr, v, len); break;
  case TAG(0x0020, 0x9163): in->concat_total = int_value(vr, v, len); break;
  case TAG(0x0020, 0x9228): in->concat_frame_offset = int_value(vr, v, len); break;
  default: break;
  }
}

/* A frame's Plane Position (Slide): the frame is the per-frame item's index. */
static tessera_status frame_position(struct walker *w, uint32_t tag, const char *vr,
                                     const uint8_t *v, size_t len) {
  struct tsr_dicom_instance *in = w->inst;
  size_t frame = w->stack[0].item;
  if (frame >= TSR_DICOM_MAX_FRAMES)
    return tsr_error(TESSERA_E_LIMIT, "DICOM file has more than %zu per-frame items",
                     TSR_DICOM_MAX_FRAMES);
  if (frame >= w->positions_cap) {
    size_t cap = w->positions_cap ? w->positions_cap * 2 : 1024;
    while (cap <= frame)
      cap *= 2;
    int64_t *c = tsr_realloc(in->column_pos, cap * sizeof *c);
    if (c)
      in->column_pos = c;
    int64_t *r = c ? tsr_realloc(in->row_pos, cap * sizeof *r) : NULL;
    if (!c || !r)
      return tsr_error(TESSERA_E_NOMEM, "out of memory for %zu frame positions", cap);
    in->row_pos = r;
    memset(c + w->positions_cap, 0, (cap - w->positions_cap) * sizeof *c);
    memset(r + w->positions_cap, 0, (cap - w->positions_cap) * sizeof *r);
    w->positions_cap = cap;
  }
  if (frame >= in->npositions)
    in->npositions = frame + 1;
  int64_t n = vr_is(vr, "SL") && len >= 4 ? (int32_t)le32(v) : int_value(vr, v, len);
  if (tag == COLUMN_POSITION)
    in->column_pos[frame] = n;
  else
    in->row_pos[frame] = n;
  return TESSERA_OK;
}

/* An element with a defined length whose value is no sequence. */
static tessera_status element(struct walker *w, uint32_t tag, const char *vr, uint64_t at,
                              uint64_t len) {
  bool props = w->props && !w->props_done;
  for (int d = 0; props && d < w->depth; d++)
    props = w->stack[d].keyword != NULL;
  bool wanted = w->depth == 0 || (w->depth == 2 && w->stack[0].tag == PER_FRAME &&
                                  w->stack[1].tag == PLANE_POSITION && w->stack[1].item == 0 &&
                                  (tag == COLUMN_POSITION || tag == ROW_POSITION));
  if (w->depth == 1 && w->stack[0].tag == OPTICAL_PATHS && w->stack[0].item == 0 &&
      tag == ICC_PROFILE) {
    w->inst->icc_offset = at;
    w->inst->icc_length = len;
  }
  if (w->depth == 0 && tag == EXTENDED_OFFSETS) {
    w->inst->eot_at = at;
    w->inst->eot_len = len;
  }
  if ((!props && !wanted) || len > WINDOW)
    return TESSERA_OK;
  const uint8_t *v = len ? bytes_at(w, at, (size_t)len) : (const uint8_t *)"";
  if (!v)
    return read_failed(at);
  if (props)
    element_props(w, tag, vr, v, (size_t)len);
  if (w->depth == 0)
    top_level(w, tag, vr, v, (size_t)len);
  else if (wanted)
    return frame_position(w, tag, vr, v, (size_t)len);
  return TESSERA_OK;
}

/* ---- pixel data ---- */

static tessera_status add_fragment(struct tsr_dicom_instance *in, size_t *cap, uint64_t item,
                                   uint32_t len) {
  if (in->nfragments >= TSR_DICOM_MAX_FRAMES)
    return tsr_error(TESSERA_E_LIMIT, "DICOM Pixel Data has more than %zu fragments",
                     TSR_DICOM_MAX_FRAMES);
  if (in->nfragments == *cap) {
    size_t n = *cap ? *cap * 2 : 256;
    struct tsr_dicom_fragment *f = tsr_realloc(in->fragments, n * sizeof *f);
    if (!f)
      return tsr_error(TESSERA_E_NOMEM, "out of memory for %zu fragments", n);
    in->fragments = f;
    *cap = n;
  }
  in->fragments[in->nfragments++] = (struct tsr_dicom_fragment){item, len};
  return TESSERA_OK;
}

/* Encapsulated Pixel Data: the Basic Offset Table's item, then one item per fragment, to the
 * sequence delimiter. keep: record them (the top level's); else only walk past them. */
static tessera_status encapsulated(struct walker *w, uint64_t *pos, uint64_t end, bool keep) {
  struct tsr_dicom_instance *in = w->inst;
  size_t cap = 0;
  for (size_t index = 0;; index++) {
    if (*pos > end || end - *pos < 8)
      return past_end(PIXEL_DATA, *pos, "a fragment lies");
    const uint8_t *h = bytes_at(w, *pos, 8);
    if (!h)
      return read_failed(*pos);
    uint32_t tag = TAG(le16(h), le16(h + 2)), len = le32(h + 4);
    if (tag == SEQUENCE_END) {
      *pos += 8;
      return TESSERA_OK;
    }
    if (tag != ITEM || len == UNDEFINED)
      return tsr_error(TESSERA_E_CORRUPT,
                       "DICOM Pixel Data: fragment %zu at offset %" PRIu64 " is no item", index,
                       *pos);
    uint64_t data = *pos + 8;
    if (len > end - data)
      return past_end(PIXEL_DATA, *pos, "a fragment's length reaches");
    if (keep && index == 0 && len > 0) {
      if (len % 4 != 0 || len / 4 > TSR_DICOM_MAX_FRAMES)
        return tsr_error(TESSERA_E_CORRUPT, "DICOM Basic Offset Table of %u bytes", len);
      in->offset_table = tsr_malloc((size_t)len / 4 * sizeof *in->offset_table);
      if (!in->offset_table)
        return tsr_error(TESSERA_E_NOMEM, "out of memory for the offset table");
      for (size_t i = 0; i < len / 4; i++) {
        const uint8_t *p = bytes_at(w, data + i * 4, 4);
        if (!p)
          return read_failed(data + i * 4);
        in->offset_table[i] = le32(p);
      }
      in->noffsets = len / 4;
    } else if (keep && index > 0) {
      tessera_status st = add_fragment(in, &cap, *pos, len);
      if (st != TESSERA_OK)
        return st;
    }
    *pos = data + len;
  }
}

/* ---- the walk ---- */

static tessera_status dataset(struct walker *w, uint64_t *pos, uint64_t end, bool until_item_end,
                              bool implicit);

static tessera_status sequence(struct walker *w, uint32_t tag, uint64_t *pos, uint64_t end,
                               bool undefined, bool implicit) {
  if (w->depth >= TSR_DICOM_MAX_DEPTH)
    return tsr_error(TESSERA_E_LIMIT,
                     "DICOM sequence (%04X,%04X) at offset %" PRIu64 " is nested more than %d deep",
                     tag >> 16, tag & 0xFFFF, *pos, TSR_DICOM_MAX_DEPTH);
  const struct tsr_dicom_dict_entry *e = tsr_dicom_lookup(tag);
  int d = w->depth;
  w->stack[d].tag = tag;
  w->stack[d].keyword = e ? e->keyword : NULL;
  for (size_t item = 0;; item++) {
    if (!undefined && *pos >= end)
      return TESSERA_OK;
    if (*pos > end || end - *pos < 8)
      return past_end(tag, *pos, "an item lies");
    const uint8_t *h = bytes_at(w, *pos, 8);
    if (!h)
      return read_failed(*pos);
    uint32_t itag = TAG(le16(h), le16(h + 2)), len = le32(h + 4);
    if (undefined && itag == SEQUENCE_END) {
      *pos += 8;
      return TESSERA_OK;
    }
    if (itag != ITEM)
      return tsr_error(TESSERA_E_CORRUPT,
                       "DICOM sequence (%04X,%04X): item %zu at offset %" PRIu64 " is no item",
                       tag >> 16, tag & 0xFFFF, item, *pos);
    *pos += 8;
    w->stack[d].item = item;
    w->depth = d + 1;
    tessera_status st;
    if (len == UNDEFINED) {
      st = dataset(w, pos, end, true, implicit);
    } else {
      if (len > end - *pos)
        return past_end(tag, *pos - 8, "an item's length reaches");
      uint64_t item_end = *pos + len;
      st = dataset(w, pos, item_end, false, implicit);
    }
    w->depth = d;
    if (st != TESSERA_OK)
      return st;
  }
}

static tessera_status dataset(struct walker *w, uint64_t *pos, uint64_t end, bool until_item_end,
                              bool implicit) {
  while (until_item_end || *pos < end) {
    if (*pos > end || end - *pos < 8)
      return until_item_end ? past_end(ITEM, *pos, "an item without its end lies")
                            : past_end(0, *pos, "an element header lies");
    const uint8_t *h = bytes_at(w, *pos, 12 <= end - *pos ? 12 : 8);
    if (!h)
      return read_failed(*pos);
    uint32_t tag = TAG(le16(h), le16(h + 2));
    if (tag == ITEM_END) {
      if (!until_item_end)
        return tsr_error(TESSERA_E_CORRUPT, "DICOM item end at offset %" PRIu64 " outside an item",
                         *pos);
      *pos += 8;
      return TESSERA_OK;
    }
    if ((tag >> 16) == 0xFFFE)
      return tsr_error(TESSERA_E_CORRUPT,
                       "DICOM delimiter (%04X,%04X) at offset %" PRIu64 " where an element "
                       "belongs",
                       tag >> 16, tag & 0xFFFF, *pos);
    char vr[3] = "UN";
    uint32_t len;
    uint64_t header = 8;
    if (implicit) {
      const struct tsr_dicom_dict_entry *e = tsr_dicom_lookup(tag);
      if (e)
        memcpy(vr, e->vr, 2);
      len = le32(h + 4);
    } else {
      vr[0] = (char)h[4];
      vr[1] = (char)h[5];
      if (!isupper((unsigned char)vr[0]) || !isupper((unsigned char)vr[1]))
        return tsr_error(TESSERA_E_CORRUPT,
                         "DICOM element (%04X,%04X) at offset %" PRIu64
                         " has no VR (an implicit VR file that says it is explicit?)",
                         tag >> 16, tag & 0xFFFF, *pos);
      if (long_vr(vr)) {
        if (end - *pos < 12)
          return past_end(tag, *pos, "the header lies");
        len = le32(h + 8);
        header = 12;
      } else {
        len = le16(h + 6);
      }
    }
    uint64_t at = *pos + header;
    bool top = w->depth == 0;
    if (top && (tag == PER_FRAME || tag == NAVIGATION || tag == EXTENDED_OFFSETS ||
                tag == PIXEL_DATA || tag == FLOAT_PIXEL_DATA || tag == DOUBLE_PIXEL_DATA)) {
      w->props_done = true;
      if (w->props)
        return TESSERA_OK; /* a walk for the properties ends where they do */
    }
    *pos = at;
    tessera_status st;
    if (len == UNDEFINED) {
      if (tag == PIXEL_DATA) {
        if ((st = encapsulated(w, pos, end, top)) != TESSERA_OK)
          return st;
        if (top) {
          w->inst->has_pixels = w->inst->encapsulated = true;
          w->done = true;
          return TESSERA_OK;
        }
        continue;
      }
      /* Undefined length is a sequence's: an explicit UN one is encoded in implicit VR. */
      if (!vr_is(vr, "SQ") && !vr_is(vr, "UN"))
        return tsr_error(TESSERA_E_CORRUPT,
                         "DICOM element (%04X,%04X) of VR %s at offset %" PRIu64
                         " has an undefined length",
                         tag >> 16, tag & 0xFFFF, vr, *pos);
      st = sequence(w, tag, pos, end, true, implicit || vr_is(vr, "UN"));
      if (st != TESSERA_OK)
        return st;
      continue;
    }
    if (len > end - at)
      return past_end(tag, at - header, "its value's length reaches");
    if (top && tag == PIXEL_DATA) {
      w->inst->has_pixels = true;
      w->inst->pixel_offset = at;
      w->inst->pixel_length = len;
      w->done = true;
      return TESSERA_OK;
    }
    if (vr_is(vr, "SQ")) {
      st = sequence(w, tag, pos, at + len, false, implicit);
      if (st == TESSERA_OK && *pos != at + len)
        st = past_end(tag, at - header, "an item reaches");
    } else {
      st = element(w, tag, vr, at, len);
      *pos = at + len;
    }
    if (st != TESSERA_OK)
      return st;
  }
  return TESSERA_OK;
}

bool tsr_dicom_sniff(const struct tsr_byte_source *src) {
  uint8_t magic[4];
  return tsr_bytes_read_all(src, 128, 4, magic) && memcmp(magic, "DICM", 4) == 0;
}

/* The file meta group (always explicit VR little endian): where the data set starts. */
static tessera_status file_meta(struct walker *w, uint64_t *pos) {
  *pos = 132;
  while (*pos < w->size && w->size - *pos >= 8) {
    const uint8_t *h = bytes_at(w, *pos, 8);
    if (!h)
      return read_failed(*pos);
    if (le16(h) != 0x0002)
      return TESSERA_OK;
    uint64_t start = *pos;
    /* One element at a time, so the walk stops where group 2 does. */
    uint64_t end = w->size;
    const uint8_t *h12 = w->size - *pos >= 12 ? bytes_at(w, *pos, 12) : NULL;
    if (h12 && long_vr((const char *)h12 + 4))
      end = *pos + 12 + le32(h12 + 8) < *pos ? w->size : *pos + 12 + (uint64_t)le32(h12 + 8);
    else
      end = *pos + 8 + le16(h + 6);
    if (end > w->size)
      return past_end(TAG(le16(h), le16(h + 2)), start, "the file meta element reaches");
    tessera_status st = dataset(w, pos, end, false, false);
    if (st != TESSERA_OK)
      return st;
  }
  return tsr_error(TESSERA_E_CORRUPT, "DICOM file ends in its file meta group (was it truncated?)");
}

tessera_status tsr_dicom_parse(const struct tsr_byte_source *src, struct tsr_dicom_instance *out,
                               struct tsr_props *props) {
  memset(out, 0, sizeof *out);
  int64_t *ints[] = {&out->rows,
                     &out->columns,
                     &out->samples,
                     &out->planar,
                     &out->bits_allocated,
                     &out->bits_stored,
                     &out->high_bit,
                     &out->pixel_representation,
                     &out->frames,
                     &out->total_columns,
                     &out->total_rows,
                     &out->focal_planes,
                     &out->concat_number,
                     &out->concat_total,
                     &out->concat_frame_offset};
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
    *ints[i] = -1;
  struct walker *w = tsr_calloc(1, sizeof *w);
  if (!w)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  w->src = src;
  w->size = src->ops->size(src);
  w->inst = out;
  w->props = props;
  tessera_status st = TESSERA_OK;
  uint64_t pos;
  if (!tsr_dicom_sniff(src))
    st = tsr_error(TESSERA_E_FORMAT, "not a DICOM file (no DICM after the 128-byte preamble)");
  else if ((st = file_meta(w, &pos)) == TESSERA_OK) {
    const char *ts = out->syntax;
    if (!strcmp(ts, "1.2.840.10008.1.2"))
      out->implicit_vr = true;
    else if (!strcmp(ts, "1.2.840.10008.1.2.2") || !strcmp(ts, "1.2.840.10008.1.2.1.99") ||
             !strcmp(ts, "1.2.840.10008.1.2.1.98"))
      st = tsr_error(TESSERA_E_UNSUPPORTED,
                     "DICOM transfer syntax %s is not read (big endian or deflated data sets)", ts);
    else if (!ts[0])
      st = tsr_error(TESSERA_E_CORRUPT, "DICOM file meta group names no transfer syntax");
    if (st == TESSERA_OK)
      st = dataset(w, &pos, w->size, false, out->implicit_vr);
  }
  /* The Extended Offset Table, read now that the walk is done: it may be as large as the
   * frames are many (8 bytes each). */
  if (st == TESSERA_OK && out->encapsulated && out->eot_len > 0) {
    if (out->eot_len % 8 != 0 || out->eot_len / 8 > TSR_DICOM_MAX_FRAMES) {
      st = tsr_error(TESSERA_E_CORRUPT, "DICOM Extended Offset Table of %" PRIu64 " bytes",
                     out->eot_len);
    } else {
      size_t n = (size_t)(out->eot_len / 8);
      uint64_t *t = tsr_malloc(n * sizeof *t);
      if (!t)
        st = tsr_error(TESSERA_E_NOMEM, "out of memory for the offset table");
      for (size_t i = 0; t && i < n && st == TESSERA_OK; i++) {
        const uint8_t *p = bytes_at(w, out->eot_at + i * 8, 8);
        if (!p)
          st = read_failed(out->eot_at + i * 8);
        else
          t[i] = le64(p);
      }
      if (t) {
        tsr_free(out->offset_table);
        out->offset_table = t;
        out->noffsets = n;
      }
    }
  }
  tsr_free(w);
  if (st != TESSERA_OK)
    tsr_dicom_instance_free(out);
  return st;
}

void tsr_dicom_instance_free(struct tsr_dicom_instance *inst) {
  tsr_free(inst->column_pos);
  tsr_free(inst->row_pos);
  tsr_free(inst->fragments);
  tsr_free(inst->offset_table);
  inst->column_pos = inst->row_pos = NULL;
  inst->fragments = NULL;
  inst->offset_table = NULL;
  inst->npositions = inst->nfragments = inst->noffsets = 0;
}
