/* A caller's byte source (tessera_open_source): reads go to the caller's read_at callback,
 * which promises to be thread-safe, so this adds no lock. Its fields are written once when it
 * is made and only read afterwards. */
#include "source/byte_source.h"

#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

/* Not a device number a file can have: callback identities never collide with a file's. */
#define CALLBACK_IDENTITY_KIND 0xfffffffffffff001ull

struct callback_source {
  struct tsr_byte_source pub; /* first: the interface leads back here */
  tessera_source user;        /* the caller's, with name pointing at our copy */
  char *name;
  struct tsr_file_id id;
};

static tessera_status callback_read_at(const struct tsr_byte_source *src, uint64_t offset,
                                       size_t length, void *buffer, size_t *got) {
  const struct callback_source *c = (const struct callback_source *)src;
  *got = 0;
  if (offset >= c->user.size || length == 0)
    return TESSERA_OK;
  if (length > c->user.size - offset)
    length = (size_t)(c->user.size - offset);
  char message[512] = "";
  int64_t n = c->user.read_at(c->user.user_data, offset, length, buffer, message, sizeof message);
  tsr_count(&src->counters.requests, 1);
  message[sizeof message - 1] = '\0';
  if (n < 0)
    return tsr_source_failed(tsr_error(TESSERA_E_IO, "%s: read of %zu bytes at %llu failed: %s",
                                       c->name, length, (unsigned long long)offset,
                                       message[0] ? message : "the source gave no reason"));
  if ((uint64_t)n > length)
    return tsr_source_failed(tsr_error(TESSERA_E_IO,
                                       "%s: read_at returned %lld for a read of %zu bytes", c->name,
                                       (long long)n, length));
  tsr_count(&src->counters.bytes, (uint64_t)n);
  *got = (size_t)n;
  return TESSERA_OK;
}

static uint64_t callback_size(const struct tsr_byte_source *src) {
  return ((const struct callback_source *)src)->user.size;
}

static void callback_identity(const struct tsr_byte_source *src, struct tsr_file_id *id) {
  *id = ((const struct callback_source *)src)->id;
}

static void callback_close(struct tsr_byte_source *src) {
  struct callback_source *c = (struct callback_source *)src;
  if (c->user.close)
    c->user.close(c->user.user_data);
  tsr_free(c->name);
  tsr_free(c);
}

static const struct tsr_byte_source_ops callback_ops = {callback_read_at, callback_size,
                                                        callback_identity, callback_close};

tessera_status tsr_callback_source_open(const tessera_source *source,
                                        struct tsr_byte_source **out) {
  *out = NULL;
  const char *why = !source->read_at                            ? "has no read_at callback"
                    : !source->identity || !source->identity[0] ? "has no identity"
                                                                : NULL;
  if (why) {
    if (source->close)
      source->close(source->user_data);
    return tsr_error(TESSERA_E_ARGUMENT, "the source %s", why);
  }
  struct callback_source *c = tsr_calloc(1, sizeof *c);
  char *name = tsr_strdup(source->name ? source->name : "source");
  if (!c || !name) {
    tsr_free(c);
    tsr_free(name);
    if (source->close)
      source->close(source->user_data);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  c->pub.ops = &callback_ops;
  c->user = *source;
  c->user.name = c->name = name;
  c->user.identity = NULL; /* the caller's string need not outlive the call: it is hashed */
  tsr_identity_from_text(CALLBACK_IDENTITY_KIND, source->identity, source->size, &c->id);
  *out = &c->pub;
  return TESSERA_OK;
}
