/* The library's thread pool: one per process, started on first use with a thread per online
 * CPU, shared by every slide and request. A bounded FIFO queue, one mutex, two condition
 * variables; shutdown (at library unload or process exit) drains the queue and joins the
 * threads. Work items are small (a tile, or a runner that takes tiles from its request until
 * none are left, giving its thread up after each tile when other tasks wait), so no task
 * ever waits for another and a long stream of patches cannot starve other requests. */
#ifndef TSR_POOL_H
#define TSR_POOL_H

#include <stdbool.h>

typedef void (*tsr_task_fn)(void *arg);

/* Worker threads in the pool, starting it if needed; 0 when it cannot be started. */
unsigned tsr_pool_threads(void);

/* Queues fn(arg) to run on a worker, waiting while the queue is full. False when the pool
 * cannot be started (or is stopping): the caller then does the work itself. Must not be
 * called from a task. */
bool tsr_pool_submit(tsr_task_fn fn, void *arg);

/* For a long-running task that wants to be fair: if other tasks are waiting and there is room,
 * queues fn(arg) behind them and returns true (the caller then returns, its work to be
 * continued by the new task); else false (the caller just goes on). Never waits; may be
 * called from a task. */
bool tsr_pool_requeue(tsr_task_fn fn, void *arg);

/* Counts the fork()s this process has been through as a child; an object that recorded it
 * can tell that the threads it relied on do not exist any more. */
unsigned tsr_pool_generation(void);

#endif
