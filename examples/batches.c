/* Streaming patches through the batch iterator, as a training loop would: every W x H patch of
 * a grid over one level, in batches, decoded by worker threads ahead of the loop. Prints one
 * line per batch and, at the end, the sum of every byte of every patch.
 *
 *   cc batches.c $(pkg-config --cflags --libs tessera) -o batches
 *   ./batches slide.svs 0 224 224 32 4     # level, patch size, batch size, workers
 */
#include <stdio.h>
#include <stdlib.h>

#include <tessera.h>

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s SLIDE LEVEL W H BATCH_SIZE WORKERS\n", argv[0]);
    return 2;
  }
  int32_t level = atoi(argv[2]);
  int64_t w = atoll(argv[3]), h = atoll(argv[4]);
  tessera_slide *slide;
  if (tessera_open(argv[1], &slide) != TESSERA_OK) {
    fprintf(stderr, "%s: %s\n", argv[1], tessera_error_message());
    return 1;
  }
  tessera_level_info info = {.struct_size = sizeof info};
  if (tessera_level_info_get(slide, level, &info) != TESSERA_OK || w < 1 || h < 1) {
    fprintf(stderr, "%s: %s\n", argv[1], "no such level, or a bad patch size");
    tessera_close(slide);
    return 1;
  }
  /* Locations are level-0 pixels: the grid's corners times the level's downsample. */
  size_t across = (size_t)(info.width / w), down = (size_t)(info.height / h), n = across * down;
  int64_t *xy = malloc(2 * n * sizeof *xy + 1);
  for (size_t i = 0; i < n; i++) {
    xy[2 * i] = (int64_t)((double)((int64_t)(i % across) * w) * info.downsample);
    xy[2 * i + 1] = (int64_t)((double)((int64_t)(i / across) * h) * info.downsample);
  }
  tessera_batch_options options;
  tessera_batch_options_init(&options);
  options.batch_size = atoi(argv[5]);
  options.num_workers = atoi(argv[6]);
  tessera_batch_iter *it;
  tessera_status st = tessera_batch_iter_create(slide, xy, n, w, h, level, &options, &it);
  unsigned long long sum = 0;
  tessera_batch *batch;
  while (st == TESSERA_OK && (st = tessera_batch_iter_next(it, &batch)) == TESSERA_OK && batch) {
    for (size_t i = 0; i < batch->size; i++)
      sum += batch->data[i];
    printf("batch %zu: %zu patches\n", batch->number, batch->count);
    tessera_batch_release(batch); /* its buffer is reused for a later batch */
  }
  if (st != TESSERA_OK)
    fprintf(stderr, "%s: %s\n", argv[1], tessera_error_message());
  else
    printf("%zu patches, byte sum %llu\n", n, sum);
  tessera_batch_iter_destroy(it);
  tessera_close(slide);
  free(xy);
  return st == TESSERA_OK ? 0 : 1;
}
