#include "props.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

static bool grow(struct tsr_props *p) {
  if (p->n < p->cap)
    return true;
  size_t ncap = p->cap ? p->cap * 2 : 32;
  struct tsr_property *ni = tsr_realloc(p->items, ncap * sizeof *ni);
  if (!ni)
    return false;
  p->items = ni;
  p->cap = ncap;
  return true;
}

/* Takes ownership of value. */
static void add_owned(struct tsr_props *p, const char *key, char *value) {
  if (p->failed || !value || tsr_props_get(p, key)) {
    tsr_free(value);
    if (!value)
      p->failed = true;
    return;
  }
  char *k = tsr_strdup(key);
  if (!k || !grow(p)) {
    tsr_free(k);
    tsr_free(value);
    p->failed = true;
    return;
  }
  p->items[p->n++] = (struct tsr_property){k, value};
}

void tsr_props_add(struct tsr_props *p, const char *key, const char *fmt, ...) {
  if (p->failed)
    return;
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int len = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *value = len >= 0 ? tsr_malloc((size_t)len + 1) : NULL;
  if (value)
    vsnprintf(value, (size_t)len + 1, fmt, ap2);
  va_end(ap2);
  add_owned(p, key, value);
}

void tsr_props_add_string(struct tsr_props *p, const char *key, const char *value) {
  if (value)
    add_owned(p, key, tsr_strdup(value));
}

void tsr_props_add_bytes(struct tsr_props *p, const char *key, const char *value, size_t len) {
  char *v = tsr_malloc(len + 1);
  if (v) {
    memcpy(v, value, len);
    v[len] = 0;
  }
  add_owned(p, key, v);
}

void tsr_props_add_double(struct tsr_props *p, const char *key, double value) {
  char buf[64];
  if (value == (double)(long long)value && value > -1e15 && value < 1e15) {
    snprintf(buf, sizeof buf, "%lld", (long long)value); /* "20", not "2e+01" */
  } else {
    for (int digits = 1; digits <= 17; digits++) {
      snprintf(buf, sizeof buf, "%.*g", digits, value);
      if (strtod(buf, NULL) == value)
        break;
    }
  }
  tsr_props_add_string(p, key, buf);
}

void tsr_props_set_bytes(struct tsr_props *p, const char *key, const char *value, size_t len) {
  for (size_t i = 0; i < p->n; i++) {
    if (strcmp(p->items[i].key, key) != 0)
      continue;
    char *v = tsr_malloc(len + 1);
    if (!v) {
      p->failed = true;
      return;
    }
    memcpy(v, value, len);
    v[len] = 0;
    tsr_free(p->items[i].value);
    p->items[i].value = v;
    return;
  }
  tsr_props_add_bytes(p, key, value, len);
}

const char *tsr_props_get(const struct tsr_props *p, const char *key) {
  for (size_t i = 0; i < p->n; i++)
    if (strcmp(p->items[i].key, key) == 0)
      return p->items[i].value;
  return NULL;
}

void tsr_props_take(struct tsr_props *to, struct tsr_props *from) {
  for (size_t i = 0; i < from->n; i++) {
    add_owned(to, from->items[i].key, from->items[i].value);
    tsr_free(from->items[i].key);
  }
  tsr_free(from->items);
  to->failed |= from->failed;
  *from = (struct tsr_props){0};
}

int tsr_props_compare(const void *a, const void *b) {
  return strcmp(((const struct tsr_property *)a)->key, ((const struct tsr_property *)b)->key);
}

void tsr_props_sort(struct tsr_props *p) {
  if (p->n > 1)
    qsort(p->items, p->n, sizeof *p->items, tsr_props_compare);
}

void tsr_props_free(struct tsr_props *p) {
  for (size_t i = 0; i < p->n; i++) {
    tsr_free(p->items[i].key);
    tsr_free(p->items[i].value);
  }
  tsr_free(p->items);
  *p = (struct tsr_props){0};
}
