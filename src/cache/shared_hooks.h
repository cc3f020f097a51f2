/* The shared cache's test hook (TESSERA_TEST_CACHE_STALL, see shared_hooks.c), compiled in
 * only with the test_hooks build option (TSR_TEST_HOOKS); without it the calls below are
 * empty, and the release library neither reads the variable nor stalls. */
#ifndef TSR_CACHE_SHARED_HOOKS_H
#define TSR_CACHE_SHARED_HOOKS_H

#include <stdbool.h>

enum tsr_hook_point {
  TSR_HOOK_NONE,
  TSR_HOOK_LOCKED,
  TSR_HOOK_LOADING,
  TSR_HOOK_MAKING,
  TSR_HOOK_CREATED,
  TSR_HOOK_READING,
  TSR_HOOK_COPYING
};

#if TSR_TEST_HOOKS
/* Reads TESSERA_TEST_CACHE_STALL, when a shared cache is configured. */
void tsr_hook_read_env(void);
/* Whether this is the time to stall at point (counts the calls at that point). */
bool tsr_hook_due(enum tsr_hook_point point);
/* Stalls for good, or stops (SIGSTOP), after writing the pid where the variable said; or
 * pauses a moment and goes on. */
void tsr_hook_stall(void);
/* A hit's bytes were found overwritten after they were read (tsr_shared_cache_overwritten). */
void tsr_hook_count_overwritten(void);
#else
static inline void tsr_hook_read_env(void) {}
static inline bool tsr_hook_due(enum tsr_hook_point point) {
  (void)point;
  return false;
}
static inline void tsr_hook_stall(void) {}
static inline void tsr_hook_count_overwritten(void) {}
#endif

#endif
