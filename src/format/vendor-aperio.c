/* Aperio SVS: an ImageDescription that begins "Aperio", then "|"-separated "key = value"
 * pairs (AppMag, MPP, ...). Directory 0 and the tiled directories after it are the pyramid
 * (at whatever downsamples the scanner chose); the stripped directory right after the first
 * is the thumbnail; the label and macro name themselves in their ImageDescription. Glass is
 * white. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "format/format.h"

static bool aperio_detect(const struct tsr_dirs *dirs) {
  return tsr_starts_with(dirs->dir[0].description, "Aperio");
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* [*b, *e) without the white space around it. */
static void trim(const char **b, const char **e) {
  while (*b < *e && is_space(**b))
    (*b)++;
  while (*e > *b && is_space((*e)[-1]))
    (*e)--;
}

/* The pairs after the first "|": each becomes aperio.KEY (a key given twice keeps its last
 * value, as OpenSlide keeps it). A part without "=" is no pair. */
static void parse_description(const char *desc, struct tsr_props *props) {
  const char *p = strchr(desc, '|');
  while (p) {
    const char *start = p + 1, *end = strchr(start, '|');
    if (!end)
      end = start + strlen(start);
    const char *eq = memchr(start, '=', (size_t)(end - start));
    if (eq) {
      const char *kb = start, *ke = eq, *vb = eq + 1, *ve = end;
      trim(&kb, &ke);
      trim(&vb, &ve);
      if (ke > kb && ke - kb < 200) {
        char key[216];
        memcpy(key, "aperio.", 7);
        memcpy(key + 7, kb, (size_t)(ke - kb));
        key[7 + (ke - kb)] = 0;
        tsr_props_set_bytes(props, key, vb, (size_t)(ve - vb));
      }
    }
    p = *end ? end : NULL;
  }
}

/* A number property copied under a standard name, if it reads as a finite number. */
static void copy_number(struct tsr_props *props, const char *from, const char *to) {
  const char *v = tsr_props_get(props, from);
  if (!v || !*v)
    return;
  char *end;
  double d = strtod(v, &end);
  while (is_space(*end))
    end++;
  if (*end == 0 && isfinite(d))
    tsr_props_add_double(props, to, d);
}

static tessera_status aperio_open(struct tsr_dirs *dirs, struct tsr_findings *out) {
  tessera_status st = tsr_findings_pyramid(dirs, out);
  for (size_t i = 1; st == TESSERA_OK && i < dirs->n; i++) {
    const struct tsr_dir *d = &dirs->dir[i];
    if (out->is_level[i] || d->parent >= 0)
      continue;
    if (i == 1 && !d->level.tiled)
      tsr_findings_add_associated(out, i, "thumbnail");
    else if (d->description && strstr(d->description, "label"))
      tsr_findings_add_associated(out, i, "label");
    else if (d->description && strstr(d->description, "macro"))
      tsr_findings_add_associated(out, i, "macro");
  }
  out->background = 255;
  parse_description(dirs->dir[0].description, &out->props);
  copy_number(&out->props, "aperio.MPP", "tessera.mpp-x");
  copy_number(&out->props, "aperio.MPP", "tessera.mpp-y");
  copy_number(&out->props, "aperio.AppMag", "tessera.objective-power");
  tsr_props_add_string(&out->props, "tessera.background-color", "FFFFFF");
  tsr_findings_common_props(dirs, out);
  return st;
}

const struct tsr_vendor tsr_vendor_aperio = {"aperio", aperio_detect, aperio_open};
