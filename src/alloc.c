#include "alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Allocations left before an injected failure; negative: no injection. Atomic because any
 * thread may allocate. */
static atomic_long fail_countdown = -1;

void tsr_alloc_fail_after(long n) { atomic_store(&fail_countdown, n); }

/* Allocations made so far, for tests that check a steady stream allocates nothing. Relaxed:
 * a statistic, ordered with nothing. */
static atomic_ulong allocations;

unsigned long tsr_alloc_count(void) {
  return atomic_load_explicit(&allocations, memory_order_relaxed);
}

static bool injected_failure(void) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  long left = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
  if (left < 0)
    return false;
  return atomic_fetch_sub(&fail_countdown, 1) == 0;
}

void *tsr_malloc(size_t size) { return injected_failure() ? NULL : malloc(size ? size : 1); }

void *tsr_calloc(size_t count, size_t size) {
  return injected_failure() ? NULL : calloc(count ? count : 1, size ? size : 1);
}

void *tsr_realloc(void *ptr, size_t size) {
  return injected_failure() ? NULL : realloc(ptr, size ? size : 1);
}

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

void tsr_scratch_free(struct tsr_scratch *scratch) {
  tsr_free(scratch->data);
  scratch->data = NULL;
  scratch->cap = 0;
}

bool tsr_scratch_reserve(struct tsr_scratch *scratch, size_t n) {
  if (n <= scratch->cap)
    return true;
  uint8_t *d = tsr_realloc(scratch->data, n);
  if (!d)
    return false;
  scratch->data = d;
  scratch->cap = n;
  return true;
}

static size_t huge_round(size_t n) {
  return n <= TSR_HUGE_PAGE ? TSR_HUGE_PAGE : (n + TSR_HUGE_PAGE - 1) & ~(TSR_HUGE_PAGE - 1);
}

void *tsr_map_huge(size_t n) {
  if (n > SIZE_MAX / 2)
    return NULL;
  size_t map = huge_round(n);
  /* Aligned, so that all of it can be huge pages: map a huge page more, trim the ends. */
  uint8_t *p = mmap(NULL, map + TSR_HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                    -1, 0);
  if (p == MAP_FAILED)
    return NULL;
  uint8_t *base = (uint8_t *)(((uintptr_t)p + TSR_HUGE_PAGE - 1) & ~(uintptr_t)(TSR_HUGE_PAGE - 1));
  uint8_t *end = p + map + TSR_HUGE_PAGE;
  if (base > p)
    munmap(p, (size_t)(base - p));
  if (end > base + map)
    munmap(base + map, (size_t)(end - (base + map)));
#ifdef MADV_HUGEPAGE
  (void)madvise(base, map, MADV_HUGEPAGE);
#endif
  return base;
}

void tsr_unmap_huge(void *p, size_t n) {
  if (p)
    munmap(p, huge_round(n));
}
