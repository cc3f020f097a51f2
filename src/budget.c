#include "budget.h"

#include <pthread.h>
#include <stdbool.h>

#include "error.h"
#include "tessera.h"

#define TSR_DEFAULT_DECODE_BUDGET ((uint64_t)1 << 30)

static struct {
  pthread_mutex_t lock;
  pthread_cond_t room; /* a reservation was released or taken, or the budget changed */
  /* Everything below is guarded by lock. */
  uint64_t limit;
  uint64_t in_flight;
  uint64_t peak;
  /* Reservations are granted in arrival order, so a large one is not overtaken forever by a
   * stream of small ones: each waiter draws a ticket and goes when `serving` reaches it. */
  uint64_t next_ticket, serving;
} budget = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, TSR_DEFAULT_DECODE_BUDGET};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void before_fork(void) { pthread_mutex_lock(&budget.lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&budget.lock); }

/* The reservations in flight belong to the parent's threads, which the child does not have:
 * counting them would make the child wait for releases that never come. */
static void after_fork_child(void) {
  pthread_mutex_init(&budget.lock, NULL);
  pthread_cond_init(&budget.room, NULL);
  budget.in_flight = budget.peak = 0;
  budget.serving = budget.next_ticket;
}

static void register_atfork(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

/* Whether `bytes` may be taken now (lock held): they fit, or nothing else is in flight. */
static bool fits(uint64_t bytes) {
  return budget.in_flight == 0 ||
         (budget.in_flight <= budget.limit && bytes <= budget.limit - budget.in_flight);
}

void tsr_budget_reserve(uint64_t bytes) {
  if (bytes == 0)
    return;
  pthread_once(&atfork_once, register_atfork);
  pthread_mutex_lock(&budget.lock);
  uint64_t ticket = budget.next_ticket++;
  while (ticket != budget.serving || !fits(bytes))
    pthread_cond_wait(&budget.room, &budget.lock);
  budget.serving++;
  budget.in_flight += bytes;
  if (budget.in_flight > budget.peak)
    budget.peak = budget.in_flight;
  /* The next ticket may fit as well. */
  pthread_cond_broadcast(&budget.room);
  pthread_mutex_unlock(&budget.lock);
}

void tsr_budget_release(uint64_t bytes) {
  if (bytes == 0)
    return;
  pthread_mutex_lock(&budget.lock);
  budget.in_flight -= bytes;
  pthread_cond_broadcast(&budget.room);
  pthread_mutex_unlock(&budget.lock);
}

uint64_t tsr_budget_peak_take(void) {
  pthread_mutex_lock(&budget.lock);
  uint64_t peak = budget.peak;
  budget.peak = budget.in_flight;
  pthread_mutex_unlock(&budget.lock);
  return peak;
}

TESSERA_API tessera_status tessera_decode_budget_set(uint64_t bytes) {
  if (bytes == 0)
    return tsr_error(TESSERA_E_ARGUMENT, "the decode budget must be at least 1 byte");
  pthread_once(&atfork_once, register_atfork);
  pthread_mutex_lock(&budget.lock);
  budget.limit = bytes;
  pthread_cond_broadcast(&budget.room);
  pthread_mutex_unlock(&budget.lock);
  return TESSERA_OK;
}

TESSERA_API uint64_t tessera_decode_budget_get(void) {
  pthread_once(&atfork_once, register_atfork);
  pthread_mutex_lock(&budget.lock);
  uint64_t limit = budget.limit;
  pthread_mutex_unlock(&budget.lock);
  return limit;
}
