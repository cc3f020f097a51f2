/* A slide's properties while they are being collected: a growing list of key/value pairs,
 * sorted once at the end. A failed allocation is remembered and reported by the owner. */
#ifndef TSR_PROPS_H
#define TSR_PROPS_H

#include <stdbool.h>
#include <stddef.h>

#include "slide_internal.h"

struct tsr_props {
  struct tsr_property *items;
  size_t n, cap;
  size_t *buckets; /* a hash index over items (item + 1; 0: empty), nbuckets a power of two */
  size_t nbuckets;
  bool failed;
};

/* Adds key with a printf-formatted value; a key already there keeps its first value. */
void tsr_props_add(struct tsr_props *p, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Adds key = value (nothing when value is NULL). */
void tsr_props_add_string(struct tsr_props *p, const char *key, const char *value);
/* Adds key = the len bytes at value. */
void tsr_props_add_bytes(struct tsr_props *p, const char *key, const char *value, size_t len);
/* Sets key = the len bytes at value, replacing a value it had. */
void tsr_props_set_bytes(struct tsr_props *p, const char *key, const char *value, size_t len);
/* Adds a number as the shortest decimal that reads back as the same double ("0.499"). */
void tsr_props_add_double(struct tsr_props *p, const char *key, double value);
/* The value of key, or NULL. */
const char *tsr_props_get(const struct tsr_props *p, const char *key);
/* Moves every item of from into to (from is left empty). */
void tsr_props_take(struct tsr_props *to, struct tsr_props *from);
/* Sorts by key, for bsearch (and drops the hash index: the list is done). */
void tsr_props_sort(struct tsr_props *p);
int tsr_props_compare(const void *a, const void *b);
void tsr_props_free(struct tsr_props *p);

#endif
