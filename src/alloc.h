/* Every allocation of the library goes through here, so failure paths can be tested in one
 * place and sizes from files are overflow-checked before they reach malloc. */
#ifndef TSR_ALLOC_H
#define TSR_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void *tsr_malloc(size_t size);
void *tsr_calloc(size_t count, size_t size);
void *tsr_realloc(void *ptr, size_t size);
void tsr_free(void *ptr);
char *tsr_strdup(const char *s);
char *tsr_strndup(const char *s, size_t n);

/* Memory of its own mapping for large buffers written soon after they are made (tile cache
 * chunks, batch buffers): n bytes rounded up to TSR_HUGE_PAGE, aligned to it, zeroed, with
 * transparent huge pages asked for, so that the kernel maps it 2 MiB at a time rather than
 * faulting on each 4 KiB page as it is first written (on a paravirtualised guest each such
 * fault is also a trip to the hypervisor). NULL if the system gives none; freed with
 * tsr_unmap_huge(p, n) with the same n. Not counted by tsr_alloc_fail_after. */
#define TSR_HUGE_PAGE ((size_t)2 << 20)
void *tsr_map_huge(size_t n);
void tsr_unmap_huge(void *p, size_t n);

/* Tests only: make the allocation after the next n succeed... fail (n >= 0), or never fail
 * (n < 0). Counts every thread's allocations through this file. */
void tsr_alloc_fail_after(long n);

/* Tests only: allocations (malloc, calloc, realloc) made through this file so far. */
unsigned long tsr_alloc_count(void);

/* A growable buffer owned by one thread and reused across tiles. */
struct tsr_scratch {
  uint8_t *data;
  size_t cap;
};

void tsr_scratch_free(struct tsr_scratch *scratch);
/* Makes scratch hold at least n bytes; false when out of memory. */
bool tsr_scratch_reserve(struct tsr_scratch *scratch, size_t n);

/* a * b (* c) as size_t, false on overflow. */
static inline bool tsr_mul2(size_t a, size_t b, size_t *out) {
  return !__builtin_mul_overflow(a, b, out);
}
static inline bool tsr_mul3(size_t a, size_t b, size_t c, size_t *out) {
  size_t ab;
  return tsr_mul2(a, b, &ab) && tsr_mul2(ab, c, out);
}

#endif
