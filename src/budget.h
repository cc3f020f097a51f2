/* The process-wide budget of decoded bytes in flight: every limit of a slide is per read, so
 * without it N threads decoding a decompression bomb (a few hundred KB that inflate to a
 * gigabyte) would hold N times the decoded size at once. A reader reserves the memory a tile's
 * decoding allocates before decoding it, waiting (in arrival order) until the reservations of
 * the other threads leave room, and gives it back once the tile is painted. A reader holds at
 * most one reservation and never waits for anything else while holding it, so no wait can
 * close a cycle. */
#ifndef TSR_BUDGET_H
#define TSR_BUDGET_H

#include <stdint.h>

/* Waits until `bytes` fit beside the reservations in flight, then takes them. A reservation
 * larger than the whole budget waits until nothing else is in flight and then runs alone.
 * 0 bytes returns at once. */
void tsr_budget_reserve(uint64_t bytes);

/* Gives back what tsr_budget_reserve(bytes) took. */
void tsr_budget_release(uint64_t bytes);

/* Tests only: the most bytes reserved at once since the last call, which starts counting
 * again from what is in flight now. */
uint64_t tsr_budget_peak_take(void);

#endif
