#include "props.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

/* Lookups by key go through a hash index, so a description with thousands of keys (a
 * vendor's, or a hostile one) takes linear time to collect, not quadratic. */
static size_t hash_key(const char *key) {
  size_t h = 1469598103934665603u;
  for (const unsigned char *c = (const unsigned char *)key; *c; c++)
    h = (h ^ *c) * 1099511628211u;
  return h;
}

/* The bucket where key is, or the empty one where it would go. */
static size_t *bucket_of(const struct tsr_props *p, const char *key) {
  size_t mask = p->nbuckets - 1;
  for (size_t i = hash_key(key) & mask;; i = (i + 1) & mask) {
    size_t *s = &p->buckets[i];
    if (*s == 0 || strcmp(p->items[*s - 1].key, key) == 0)
      return s;
  }
}

/* Makes room in the index for one more item (load at most a half). */
static bool index_reserve(struct tsr_props *p) {
  if ((p->n + 1) * 2 <= p->nbuckets)
    return true;
  size_t n = p->nbuckets ? p->nbuckets * 2 : 64;
  size_t *buckets = tsr_calloc(n, sizeof *buckets);
  if (!buckets)
    return false;
  tsr_free(p->buckets);
  p->buckets = buckets;
  p->nbuckets = n;
  for (size_t i = 0; i < p->n; i++)
    *bucket_of(p, p->items[i].key) = i + 1;
  return true;
}

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
  if (!k || !grow(p) || !index_reserve(p)) {
    tsr_free(k);
    tsr_free(value);
    p->failed = true;
    return;
  }
  p->items[p->n++] = (struct tsr_property){k, value};
  *bucket_of(p, k) = p->n;
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
  if (value > -1e15 && value < 1e15 && value == (double)(long long)value) {
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
  size_t at = p->nbuckets ? *bucket_of(p, key) : 0;
  if (at) {
    size_t i = at - 1;
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
  if (p->buckets) {
    size_t at = *bucket_of(p, key);
    return at ? p->items[at - 1].value : NULL;
  }
  for (size_t i = 0; i < p->n; i++) /* sorted: the index is gone */
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
  tsr_free(from->buckets);
  to->failed |= from->failed;
  *from = (struct tsr_props){0};
}

int tsr_props_compare(const void *a, const void *b) {
  return strcmp(((const struct tsr_property *)a)->key, ((const struct tsr_property *)b)->key);
}

void tsr_props_sort(struct tsr_props *p) {
  tsr_free(p->buckets);
  p->buckets = NULL;
  p->nbuckets = 0;
  if (p->n > 1)
    qsort(p->items, p->n, sizeof *p->items, tsr_props_compare);
}

void tsr_props_free(struct tsr_props *p) {
  for (size_t i = 0; i < p->n; i++) {
    tsr_free(p->items[i].key);
    tsr_free(p->items[i].value);
  }
  tsr_free(p->items);
  tsr_free(p->buckets);
  *p = (struct tsr_props){0};
}
