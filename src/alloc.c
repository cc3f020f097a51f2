#include "alloc.h"

#include <stdlib.h>
#include <string.h>

void *tsr_malloc(size_t size) { return malloc(size ? size : 1); }

void *tsr_calloc(size_t count, size_t size) { return calloc(count ? count : 1, size ? size : 1); }

void *tsr_realloc(void *ptr, size_t size) { return realloc(ptr, size ? size : 1); }

void tsr_free(void *ptr) { free(ptr); }

char *tsr_strndup(const char *s, size_t n) {
  char *d = tsr_malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

char *tsr_strdup(const char *s) { return tsr_strndup(s, strlen(s)); }
