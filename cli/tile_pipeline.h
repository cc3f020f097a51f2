/* Items (tiles) made by worker threads ahead of one consumer that takes them strictly in
 * order: `tessera sample` paints tiles in parallel while the main thread, the only one that
 * touches the libtiff handle, compresses and writes them one after another. */
#ifndef TESSERA_CLI_TILE_PIPELINE_H
#define TESSERA_CLI_TILE_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

/* Fills buffer (item_bytes long) with item `index`. Called from worker threads, several
 * at once for different items, so it may only read shared state. */
typedef void (*tile_make_fn)(void *context, uint64_t index, uint8_t *buffer);

typedef struct tile_pipeline tile_pipeline;

/* Starts up to `workers` threads (0 makes items in the consumer's thread, on demand) that
 * make items 0 .. count-1, at most `slots` of them ahead of the consumer. Returns NULL when
 * out of memory; if threads cannot be started it quietly uses fewer. */
tile_pipeline *tile_pipeline_create(uint64_t count, size_t item_bytes, int workers, int slots,
                                    tile_make_fn make, void *context);

/* Waits for item `index` and returns its buffer, valid until tile_pipeline_release(). Items
 * must be taken in order, 0, 1, 2 ..., each released before the next is taken. */
const uint8_t *tile_pipeline_take(tile_pipeline *p, uint64_t index);
void tile_pipeline_release(tile_pipeline *p, uint64_t index);

/* Stops the workers (items not yet started are dropped), joins them and frees everything.
 * NULL is ignored. */
void tile_pipeline_destroy(tile_pipeline *p);

#endif
