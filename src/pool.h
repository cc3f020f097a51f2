/* The library's thread pool: one per process, started on first use with a thread per online
 * CPU, shared by every slide and request. A bounded FIFO queue, one mutex, two condition
 * variables; shutdown (at library unload or process exit) drains the queue and joins the
 * threads.
 *
 * Work reaches the pool only through task groups. A group is the pool's view of one owner (a
 * region read, a batch iterator): the owner posts work into its own queue and asks for up to
 * n pool tasks; each task runs the owner's work items one at a time, and after each item it
 * gives its thread back to any other task waiting in the pool's queue (continuing as a new
 * task at the back). An item is one tile (read, decoded, painted into every patch or region
 * that needs it), one patch of tiles too small to schedule one by one, or, for a CUDA batch
 * iterator, a chunk of tiles (read and queued to nvJPEG and to the copies into every patch
 * that needs them, without waiting for the GPU; tiles nvJPEG does not get painted on the CPU):
 * a chunk is up to a device tile buffer's worth of tiles, and the thread is given back only
 * after it. No item waits for another item, task or the GPU; only owners, which are never
 * tasks, wait for their group to be idle. */
#ifndef TSR_POOL_H
#define TSR_POOL_H

#include <stdbool.h>

/* Runs one work item of `owner`, taking it from the owner's own queue; returns whether the
 * owner may have more (false ends the task). Called with none of the group's locks held, so
 * it may take the owner's. */
typedef bool (*tsr_item_fn)(void *owner);

struct tsr_group;

/* Worker threads in the pool, starting it if needed; 0 when it cannot be started. */
unsigned tsr_pool_threads(void);

/* A group running item(owner), holding one reference (the caller's). When the last reference
 * goes, release(owner) is called (by whichever thread lets go last, which may be a pool task
 * after the owner's caller has returned) and the group is freed. NULL when out of memory. */
struct tsr_group *tsr_group_create(tsr_item_fn item, void (*release)(void *owner), void *owner);

/* One more reference (a batch handed out, ...), to be dropped with tsr_group_let_go. */
void tsr_group_hold(struct tsr_group *g);

/* Drops one reference; the last calls release(owner) and frees the group. */
void tsr_group_let_go(struct tsr_group *g);

/* The owner has posted work: starts tasks until `want` (at most the pool's threads) are queued
 * or running, and makes a task that just found no work look again. False when the pool cannot
 * be had (threads cannot be started, or the process is exiting) and no task of the group is
 * left: the owner then does its work itself. Not from a task, nor holding a lock that an item
 * takes: a full pool queue makes it wait. */
bool tsr_group_post(struct tsr_group *g, unsigned want);

/* From now on no item starts; tasks still queued in the pool end as they come up, touching
 * nothing but the group. Items already running go on: tsr_group_wait_idle waits for them. */
void tsr_group_cancel(struct tsr_group *g);

/* Waits until no item of the group runs. With the group cancelled, none runs afterwards. */
void tsr_group_wait_idle(struct tsr_group *g);

/* Counts the fork()s this process has been through as a child; an object that recorded it
 * can tell that the threads it relied on do not exist any more. */
unsigned tsr_pool_generation(void);

#endif
