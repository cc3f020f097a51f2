/* The pool's task groups (src/pool.h), hard: many groups at once, cancel at every point, an
 * owner letting go while its items run or its tasks still wait in the pool, the last
 * reference freeing, items giving their thread back so that other groups progress on a pool
 * of one thread, and a forked child getting a pool of its own. Every wait is bounded by an
 * alarm that ends the program, so a lost wake-up fails the test instead of hanging it. This
 * program runs plain, under ASan+UBSan and under TSan. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "pool.h"

/* A test owner: `total` items, each claimed through `next`; a gate items may be made to wait
 * at (the test's own condition, not another item). Freed by release(). */
struct owner {
  struct tsr_group *g;
  unsigned total;
  atomic_uint next, ran, running;
  atomic_uint after_idle; /* items that started after the owner saw the group idle */
  atomic_bool idle_seen;
  atomic_uint cancel_after; /* cancel the group from the item that brings ran to this */
  pthread_mutex_t lock;
  pthread_cond_t changed; /* guarded by lock: ran changed, gate opened */
  bool gate_closed;       /* guarded by lock */
  atomic_uint *released;  /* counts calls of release (the owner is gone by then) */
};

static bool run_item(void *arg) {
  struct owner *o = arg;
  if (atomic_load(&o->idle_seen))
    atomic_fetch_add(&o->after_idle, 1);
  unsigned i = atomic_fetch_add(&o->next, 1);
  if (i >= o->total)
    return false;
  atomic_fetch_add(&o->running, 1);
  pthread_mutex_lock(&o->lock);
  while (o->gate_closed)
    pthread_cond_wait(&o->changed, &o->lock);
  pthread_mutex_unlock(&o->lock);
  unsigned ran = atomic_fetch_add(&o->ran, 1) + 1;
  if (ran == atomic_load(&o->cancel_after))
    tsr_group_cancel(o->g); /* cancelling from inside an item */
  atomic_fetch_sub(&o->running, 1);
  pthread_mutex_lock(&o->lock);
  pthread_cond_broadcast(&o->changed);
  pthread_mutex_unlock(&o->lock);
  return i + 1 < o->total;
}

static void release_owner(void *arg) {
  struct owner *o = arg;
  atomic_fetch_add(o->released, 1);
  pthread_mutex_destroy(&o->lock);
  pthread_cond_destroy(&o->changed);
  free(o);
}

static struct owner *new_owner(unsigned total, atomic_uint *released) {
  struct owner *o = calloc(1, sizeof *o);
  if (!o)
    abort();
  o->total = total;
  o->released = released;
  pthread_mutex_init(&o->lock, NULL);
  pthread_cond_init(&o->changed, NULL);
  o->g = tsr_group_create(run_item, release_owner, o);
  if (!o->g)
    abort();
  return o;
}

static void wait_ran(struct owner *o, unsigned n) {
  pthread_mutex_lock(&o->lock);
  while (atomic_load(&o->ran) < n)
    pthread_cond_wait(&o->changed, &o->lock);
  pthread_mutex_unlock(&o->lock);
}

static void open_gate(struct owner *o) {
  pthread_mutex_lock(&o->lock);
  o->gate_closed = false;
  pthread_cond_broadcast(&o->changed);
  pthread_mutex_unlock(&o->lock);
}

/* Polls until `count` reaches `want` (the release may be a pool task's, after the owner
 * has let go); the alarm bounds it. */
static void wait_count(atomic_uint *count, unsigned want) {
  while (atomic_load(count) < want)
    usleep(1000);
}

/* Owners on several threads at once, each posting work in bursts to its own group: every
 * item runs exactly once, and every owner is released exactly once. */
struct many_arg {
  unsigned seed;
  atomic_uint *released;
  int bad;
};

static void *many_owner(void *arg) {
  struct many_arg *a = arg;
  for (unsigned round = 0; round < 40; round++) {
    unsigned total = 1 + (a->seed * 7 + round * 13) % 50;
    struct owner *o = new_owner(total, a->released);
    unsigned workers = 1 + (a->seed + round) % 6;
    if (!tsr_group_post(o->g, workers))
      a->bad++;
    /* The owner works too, as a region read does, then waits for the rest. */
    while (run_item(o))
      ;
    wait_ran(o, total);
    tsr_group_cancel(o->g);
    tsr_group_wait_idle(o->g);
    if (atomic_load(&o->ran) != total || atomic_load(&o->running) != 0)
      a->bad++;
    tsr_group_let_go(o->g);
  }
  return NULL;
}

static void test_many_groups(void) {
  enum { OWNERS = 12 };
  atomic_uint released = 0;
  pthread_t t[OWNERS];
  struct many_arg a[OWNERS];
  for (unsigned i = 0; i < OWNERS; i++) {
    a[i] = (struct many_arg){.seed = i, .released = &released};
    pthread_create(&t[i], NULL, many_owner, &a[i]);
  }
  int bad = 0;
  for (unsigned i = 0; i < OWNERS; i++) {
    pthread_join(t[i], NULL);
    bad += a[i].bad;
  }
  wait_count(&released, OWNERS * 40);
  CHECK(bad == 0, "%d groups ran an item twice, missed one, or had no pool", bad);
  CHECK(atomic_load(&released) == OWNERS * 40, "%u of %u owners released", atomic_load(&released),
        OWNERS * 40);
}

/* Cancel after every number of items, from the owner and from inside an item: after
 * wait_idle, no item starts, and the items that ran are never more than were posted. */
static void test_cancel_everywhere(void) {
  enum { TOTAL = 24 };
  atomic_uint released = 0;
  unsigned owners = 0;
  for (unsigned k = 0; k <= TOTAL; k++) {
    for (int from_item = 0; from_item < 2; from_item++) {
      struct owner *o = new_owner(TOTAL, &released);
      owners++;
      if (from_item)
        atomic_store(&o->cancel_after, k);
      tsr_group_post(o->g, 4);
      if (from_item) {
        if (k > 0)
          wait_ran(o, k);
      } else {
        wait_ran(o, k);
        tsr_group_cancel(o->g);
      }
      tsr_group_cancel(o->g);
      tsr_group_wait_idle(o->g);
      atomic_store(&o->idle_seen, true);
      unsigned ran = atomic_load(&o->ran);
      CHECK(ran >= k && ran <= TOTAL, "cancelled after %u items, %u ran", k, ran);
      CHECK(atomic_load(&o->running) == 0, "an item still runs after wait_idle");
      /* Posting after cancel starts nothing. */
      tsr_group_post(o->g, 4);
      usleep(200);
      CHECK(atomic_load(&o->after_idle) == 0, "an item started after cancel and wait_idle");
      CHECK(atomic_load(&o->ran) == ran, "items ran after cancel and wait_idle");
      tsr_group_let_go(o->g);
    }
  }
  wait_count(&released, owners);
  CHECK(atomic_load(&released) == owners, "%u of %u owners released", atomic_load(&released),
        owners);
}

/* Cancel while items are running (held at the gate): wait_idle returns only when they are
 * done; the owner then lets go, and the release waits for the tasks' own references. */
static void *open_later(void *arg) {
  struct owner *o = arg;
  while (atomic_load(&o->running) == 0)
    usleep(100);
  usleep(20000); /* give cancel and wait_idle time to start waiting */
  open_gate(o);
  return NULL;
}

static void test_destroy_while_running(void) {
  atomic_uint released = 0;
  for (int round = 0; round < 20; round++) {
    struct owner *o = new_owner(64, &released);
    o->gate_closed = true;
    tsr_group_post(o->g, 3);
    pthread_t t;
    pthread_create(&t, NULL, open_later, o);
    while (atomic_load(&o->running) == 0)
      usleep(100);
    tsr_group_cancel(o->g);
    tsr_group_wait_idle(o->g);
    CHECK(atomic_load(&o->running) == 0, "wait_idle returned while an item ran");
    pthread_join(t, NULL);
    CHECK(atomic_load(&o->ran) >= 1 && atomic_load(&o->ran) <= 3,
          "%u items ran though cancelled while the first ones were held", atomic_load(&o->ran));
    tsr_group_let_go(o->g);
  }
  wait_count(&released, 20);
  CHECK(atomic_load(&released) == 20, "%u of 20 owners released", atomic_load(&released));
}

/* The owner lets go while its tasks still wait in the pool behind a group that occupies every
 * thread: it is not released until the last of them has come up and let go; holders (batches
 * handed out) keep it too, whatever order they let go in. */
static void test_last_reference_frees(void) {
  atomic_uint released = 0, blocker_released = 0;
  unsigned threads = tsr_pool_threads();
  CHECK(threads > 0, "no pool");
  struct owner *blocker = new_owner(threads, &blocker_released);
  blocker->gate_closed = true;
  tsr_group_post(blocker->g, threads);
  while (atomic_load(&blocker->running) < threads)
    usleep(100);
  struct owner *o = new_owner(10, &released);
  CHECK(tsr_group_post(o->g, 4), "no task for the second group");
  tsr_group_hold(o->g);
  tsr_group_hold(o->g);
  tsr_group_cancel(o->g);
  tsr_group_wait_idle(o->g); /* nothing runs: returns at once */
  tsr_group_let_go(o->g);
  tsr_group_let_go(o->g);
  CHECK(atomic_load(&released) == 0, "released while a holder and queued tasks remain");
  open_gate(blocker);
  wait_ran(blocker, threads);
  /* The queued tasks come up, find the group cancelled and let go; the holder is last. */
  usleep(20000);
  CHECK(atomic_load(&released) == 0, "released while a holder remains");
  struct tsr_group *g = o->g;
  CHECK(atomic_load(&o->ran) == 0, "a cancelled group's queued task ran an item");
  tsr_group_let_go(g);
  wait_count(&released, 1);
  CHECK(atomic_load(&released) == 1, "released %u times", atomic_load(&released));
  tsr_group_cancel(blocker->g);
  tsr_group_wait_idle(blocker->g);
  tsr_group_let_go(blocker->g);
  wait_count(&blocker_released, 1);
}

/* One pool thread: group A always has more work; group B's single item, posted after A's
 * task took the only thread, runs only if A gives its thread back between items. */
static atomic_bool b_ran;

static bool endless_item(void *arg) {
  (void)arg;
  return !atomic_load(&b_ran);
}

static bool flag_item(void *arg) {
  (void)arg;
  atomic_store(&b_ran, true);
  return false;
}

static void release_nothing(void *arg) { atomic_fetch_add((atomic_uint *)arg, 1); }

static int give_back_in_child(void) {
  atomic_uint released = 0;
  struct tsr_group *a = tsr_group_create(endless_item, release_nothing, &released);
  struct tsr_group *b = tsr_group_create(flag_item, release_nothing, &released);
  if (!a || !b || tsr_pool_threads() != 1)
    return 2;
  tsr_group_post(a, 1);
  tsr_group_post(b, 1);
  while (!atomic_load(&b_ran))
    usleep(1000); /* the alarm ends the child if B never runs */
  tsr_group_cancel(a);
  tsr_group_wait_idle(a);
  tsr_group_let_go(a);
  tsr_group_cancel(b);
  tsr_group_let_go(b);
  wait_count(&released, 2);
  return 0;
}

/* The parent's pool has run tasks (the tests above); a forked child has none of its threads
 * and must start its own, here of one thread, where giving the thread back is tested. */
static void test_fork_and_give_back(void) {
  unsigned before = tsr_pool_generation();
  pid_t pid = fork();
  if (pid == 0) {
    alarm(60);
    setenv("TESSERA_POOL_THREADS", "1", 1);
    _exit(tsr_pool_generation() == before + 1 ? give_back_in_child() : 3);
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "the child's pool of one thread did not let a second group run (status %d)", status);
  CHECK(tsr_pool_generation() == before, "the parent's fork generation changed");
}

int main(void) {
  alarm(300); /* a lost wake-up ends the test instead of hanging it */
  test_many_groups();
  test_cancel_everywhere();
  test_destroy_while_running();
  test_last_reference_frees();
  test_fork_and_give_back();
  return check_finish("test_pool");
}
