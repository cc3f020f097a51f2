/* The thread pool and its task groups (see pool.h). The pool's state is guarded by pool.lock;
 * each group's by its own lock; a task never holds both. */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "alloc.h"

#define TSR_POOL_MAX_THREADS 256
#define TSR_POOL_QUEUE 1024

struct task {
  void (*fn)(void *arg);
  void *arg;
};

/* Every field is guarded by lock, except that threads[] is only touched by the thread that
 * starts or stops the pool while holding it (and by the fork handler, single-threaded). */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t not_empty; /* a task was queued, or shutdown began */
  pthread_cond_t not_full;  /* a task was taken off a full queue */
  struct task queue[TSR_POOL_QUEUE];
  unsigned head, count;
  bool started, failed, stopping;
  unsigned nthreads;
  unsigned generation; /* fork()s survived as a child */
  pthread_t threads[TSR_POOL_MAX_THREADS];
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* fork()s survived as a child. Written only by the fork handler, while the child has a single
 * thread; read without the lock on every batch, hence atomic. */
static atomic_uint generation;

static void *worker(void *unused) {
  (void)unused;
  pthread_mutex_lock(&pool.lock);
  for (;;) {
    while (pool.count == 0 && !pool.stopping)
      pthread_cond_wait(&pool.not_empty, &pool.lock);
    if (pool.count == 0)
      break; /* stopping, and the queue is drained */
    struct task t = pool.queue[pool.head];
    pool.head = (pool.head + 1) % TSR_POOL_QUEUE;
    pool.count--;
    pthread_cond_signal(&pool.not_full);
    pthread_mutex_unlock(&pool.lock);
    t.fn(t.arg);
    pthread_mutex_lock(&pool.lock);
  }
  pthread_mutex_unlock(&pool.lock);
  return NULL;
}

/* The size of the machine: online CPUs, or TESSERA_POOL_THREADS when set (tests use it to
 * run more threads than a small machine has). */
static unsigned wanted_threads(void) {
  const char *env = getenv("TESSERA_POOL_THREADS");
  long n = env ? strtol(env, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1)
    n = 1;
  return n > TSR_POOL_MAX_THREADS ? TSR_POOL_MAX_THREADS : (unsigned)n;
}

static void before_fork(void) { pthread_mutex_lock(&pool.lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&pool.lock); }

/* The child has none of the parent's threads: forget them and the queue (the tasks belong to
 * the parent's requests), so the child starts its own pool on first use. */
static void after_fork_child(void) {
  pthread_mutex_init(&pool.lock, NULL);
  pthread_cond_init(&pool.not_empty, NULL);
  pthread_cond_init(&pool.not_full, NULL);
  pool.head = pool.count = 0;
  pool.started = pool.failed = pool.stopping = false;
  pool.nthreads = 0;
  atomic_fetch_add_explicit(&generation, 1, memory_order_relaxed);
}

static void register_atfork(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

/* Called with the lock held. */
static void start_locked(void) {
  pool.started = true;
  unsigned want = wanted_threads();
  while (pool.nthreads < want &&
         pthread_create(&pool.threads[pool.nthreads], NULL, worker, NULL) == 0)
    pool.nthreads++;
  pool.failed = pool.nthreads == 0;
}

unsigned tsr_pool_threads(void) {
  pthread_once(&atfork_once, register_atfork);
  pthread_mutex_lock(&pool.lock);
  if (!pool.started)
    start_locked();
  unsigned n = pool.stopping ? 0 : pool.nthreads;
  pthread_mutex_unlock(&pool.lock);
  return n;
}

/* Queues fn(arg) to run on a worker, waiting while the queue is full. False when the pool
 * cannot be started (or is stopping). */
static bool submit(void (*fn)(void *), void *arg) {
  pthread_once(&atfork_once, register_atfork);
  pthread_mutex_lock(&pool.lock);
  if (!pool.started)
    start_locked();
  if (pool.failed || pool.stopping) {
    pthread_mutex_unlock(&pool.lock);
    return false;
  }
  while (pool.count == TSR_POOL_QUEUE && !pool.stopping)
    pthread_cond_wait(&pool.not_full, &pool.lock);
  if (pool.stopping) {
    pthread_mutex_unlock(&pool.lock);
    return false; /* no worker may be left to run it */
  }
  pool.queue[(pool.head + pool.count) % TSR_POOL_QUEUE] = (struct task){fn, arg};
  pool.count++;
  pthread_cond_signal(&pool.not_empty);
  pthread_mutex_unlock(&pool.lock);
  return true;
}

/* If other tasks are waiting and there is room, queues fn(arg) behind them and returns true
 * (the calling task then returns, its work continued by the new task); else false. Never
 * waits, so a task may call it. */
static bool requeue(void (*fn)(void *), void *arg) {
  pthread_mutex_lock(&pool.lock);
  bool queued = pool.count > 0 && pool.count < TSR_POOL_QUEUE && !pool.stopping;
  if (queued) {
    pool.queue[(pool.head + pool.count) % TSR_POOL_QUEUE] = (struct task){fn, arg};
    pool.count++;
    pthread_cond_signal(&pool.not_empty);
  }
  pthread_mutex_unlock(&pool.lock);
  return queued;
}

/* ---- task groups ---- */

struct tsr_group {
  /* Set at creation, then only read. */
  tsr_item_fn item;
  void (*release)(void *owner);
  void *owner;

  pthread_mutex_t lock;
  pthread_cond_t idle; /* active dropped to 0 */
  /* Guarded by lock. */
  unsigned refs;   /* the owner's holders, plus one per task */
  unsigned tasks;  /* tasks queued in the pool or running */
  unsigned active; /* items running now */
  /* Posts so far: a task whose item found no work looks again if a post came meanwhile, so
   * work posted while the last task was leaving is never left without one. */
  unsigned long posts;
  bool cancelled;
};

struct tsr_group *tsr_group_create(tsr_item_fn item, void (*release)(void *owner), void *owner) {
  struct tsr_group *g = tsr_calloc(1, sizeof *g);
  if (!g)
    return NULL;
  g->item = item;
  g->release = release;
  g->owner = owner;
  g->refs = 1;
  pthread_mutex_init(&g->lock, NULL);
  pthread_cond_init(&g->idle, NULL);
  return g;
}

void tsr_group_hold(struct tsr_group *g) {
  pthread_mutex_lock(&g->lock);
  g->refs++;
  pthread_mutex_unlock(&g->lock);
}

/* Drops one reference (lock held on entry, released on return). */
static void let_go_locked(struct tsr_group *g) {
  bool last = --g->refs == 0;
  pthread_mutex_unlock(&g->lock);
  if (!last)
    return;
  g->release(g->owner);
  pthread_mutex_destroy(&g->lock);
  pthread_cond_destroy(&g->idle);
  tsr_free(g);
}

void tsr_group_let_go(struct tsr_group *g) {
  pthread_mutex_lock(&g->lock);
  let_go_locked(g);
}

/* A pool task of a group: items one at a time until the owner has none, giving the thread
 * back after each when other tasks wait. */
static void group_task(void *arg) {
  struct tsr_group *g = arg;
  pthread_mutex_lock(&g->lock);
  while (!g->cancelled) {
    unsigned long seen = g->posts;
    g->active++;
    pthread_mutex_unlock(&g->lock);
    bool more = g->item(g->owner);
    pthread_mutex_lock(&g->lock);
    if (--g->active == 0)
      pthread_cond_broadcast(&g->idle);
    if (!more && g->posts == seen)
      break;
    if (g->cancelled)
      break;
    pthread_mutex_unlock(&g->lock);
    if (requeue(group_task, g))
      return; /* the new task carries this one's place in tasks and refs */
    pthread_mutex_lock(&g->lock);
  }
  g->tasks--;
  let_go_locked(g);
}

bool tsr_group_post(struct tsr_group *g, unsigned want) {
  unsigned threads = tsr_pool_threads();
  if (want > threads)
    want = threads; /* more would only queue behind each other */
  pthread_mutex_lock(&g->lock);
  g->posts++;
  unsigned add = g->cancelled || g->tasks >= want ? 0 : want - g->tasks;
  g->tasks += add;
  g->refs += add;
  pthread_mutex_unlock(&g->lock);
  unsigned failed = 0;
  for (unsigned i = 0; i < add; i++)
    failed += !submit(group_task, g);
  if (failed == 0)
    return true;
  pthread_mutex_lock(&g->lock);
  g->tasks -= failed;
  g->refs -= failed; /* the caller still holds its own: never the last */
  bool any = g->tasks > 0;
  pthread_mutex_unlock(&g->lock);
  return any;
}

void tsr_group_cancel(struct tsr_group *g) {
  pthread_mutex_lock(&g->lock);
  g->cancelled = true;
  pthread_mutex_unlock(&g->lock);
}

void tsr_group_wait_idle(struct tsr_group *g) {
  pthread_mutex_lock(&g->lock);
  while (g->active > 0)
    pthread_cond_wait(&g->idle, &g->lock);
  pthread_mutex_unlock(&g->lock);
}

unsigned tsr_pool_generation(void) {
  /* Counting starts with the first object that records a generation, pool started or not. */
  pthread_once(&atfork_once, register_atfork);
  return atomic_load_explicit(&generation, memory_order_relaxed);
}

/* At unload or exit: let the workers finish what is queued, then join them, so no thread of
 * ours outlives the library's code. */
__attribute__((destructor)) static void stop_pool(void) {
  pthread_mutex_lock(&pool.lock);
  if (!pool.started || pool.stopping) {
    pthread_mutex_unlock(&pool.lock);
    return;
  }
  pool.stopping = true;
  pthread_cond_broadcast(&pool.not_empty);
  pthread_cond_broadcast(&pool.not_full);
  pthread_mutex_unlock(&pool.lock);
  for (unsigned i = 0; i < pool.nthreads; i++)
    pthread_join(pool.threads[i], NULL);
}
