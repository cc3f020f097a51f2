/* A GKeyFile-compatible reader of INI text (format/ini.h). The caller bounds the text's size;
 * every line becomes at most one entry, so the tables are bounded by it too, and lookups are
 * a binary search. */
#include "format/ini.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

static bool blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

static int compare_entries(const void *a, const void *b) {
  const struct tsr_ini_entry *x = a, *y = b;
  int c = strcmp(x->group, y->group);
  if (c == 0)
    c = strcmp(x->key, y->key);
  if (c == 0)
    c = x->order < y->order ? -1 : x->order > y->order;
  return c;
}

void tsr_ini_free(struct tsr_ini *ini) {
  tsr_free(ini->text);
  tsr_free(ini->entry);
  *ini = (struct tsr_ini){0};
}

tessera_status tsr_ini_parse(const uint8_t *data, size_t len, const char *name,
                             struct tsr_ini *out) {
  *out = (struct tsr_ini){0};
  if (len >= 3 && data[0] == 0xEF && data[1] == 0xBB && data[2] == 0xBF) {
    data += 3;
    len -= 3;
  }
  if (memchr(data, '\0', len))
    return tsr_error(TESSERA_E_FORMAT, "%s holds a NUL byte: not a text file", name);
  size_t lines = 1;
  for (size_t i = 0; i < len; i++)
    lines += data[i] == '\n';
  out->text = tsr_malloc(len + 1);
  out->entry = tsr_calloc(lines, sizeof *out->entry);
  if (!out->text || !out->entry) {
    tsr_ini_free(out);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %s", name);
  }
  memcpy(out->text, data, len);
  out->text[len] = '\0';
  const char *group = NULL;
  char *line = out->text;
  for (size_t no = 1; line; no++) {
    char *next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    size_t n = strlen(line);
    if (n > 0 && line[n - 1] == '\r') /* only the one CR before LF, as GLib */
      line[--n] = '\0';
    while (blank(*line))
      line++;
    if (*line == '\0' || *line == '#') {
      line = next;
      continue;
    }
    if (*line == '[') {
      char *end = strrchr(line, ']');
      if (!end || end == line + 1) {
        tsr_ini_free(out);
        return tsr_error(TESSERA_E_FORMAT, "%s, line %zu: a group with no name or no ']'", name,
                         no);
      }
      *end = '\0';
      group = line + 1;
      line = next;
      continue;
    }
    char *eq = strchr(line, '=');
    if (eq == line) { /* " = False": no key; some MIRAX scanners write it, OpenSlide 4 skips it */
      line = next;
      continue;
    }
    if (!eq) {
      tsr_ini_free(out);
      return tsr_error(TESSERA_E_FORMAT,
                       "%s, line %zu: neither a group, a key=value pair nor a comment", name, no);
    }
    if (!group) {
      tsr_ini_free(out);
      return tsr_error(TESSERA_E_FORMAT, "%s, line %zu: a key before the first [group]", name, no);
    }
    char *key_end = eq;
    while (key_end > line && blank(key_end[-1]))
      key_end--;
    *key_end = '\0';
    char *value = eq + 1;
    while (blank(*value))
      value++;
    out->entry[out->n++] = (struct tsr_ini_entry){group, line, value, no};
    line = next;
  }
  qsort(out->entry, out->n, sizeof *out->entry, compare_entries);
  /* Keep the last of each (group, key). */
  size_t kept = 0;
  for (size_t i = 0; i < out->n; i++) {
    if (kept > 0 && strcmp(out->entry[kept - 1].group, out->entry[i].group) == 0 &&
        strcmp(out->entry[kept - 1].key, out->entry[i].key) == 0)
      kept--;
    out->entry[kept++] = out->entry[i];
  }
  out->n = kept;
  return TESSERA_OK;
}

static int compare_lookup(const void *k, const void *e) {
  const struct tsr_ini_entry *x = k, *y = e;
  int c = strcmp(x->group, y->group);
  return c ? c : strcmp(x->key, y->key);
}

const char *tsr_ini_get(const struct tsr_ini *ini, const char *group, const char *key) {
  if (!group || !key || ini->n == 0)
    return NULL;
  struct tsr_ini_entry probe = {group, key, NULL, 0};
  const struct tsr_ini_entry *hit =
      bsearch(&probe, ini->entry, ini->n, sizeof *ini->entry, compare_lookup);
  return hit ? hit->value : NULL;
}

bool tsr_ini_int(const char *value, int32_t *out) {
  if (!value || !*value)
    return false;
  char *end;
  errno = 0;
  long long v = strtoll(value, &end, 10);
  if (end == value || errno == ERANGE || v < INT32_MIN || v > INT32_MAX)
    return false;
  while (blank(*end))
    end++;
  if (*end)
    return false;
  *out = (int32_t)v;
  return true;
}

bool tsr_ini_double(const char *value, double *out) {
  if (!value || !*value)
    return false;
  char *end;
  double v = strtod(value, &end);
  if (end == value || *end)
    return false;
  *out = v;
  return true;
}
