/* The per-thread message of the last failed call. */
#ifndef TSR_ERROR_H
#define TSR_ERROR_H

#include "tessera.h"

/* Formats the calling thread's message and returns status, so a failure reads
 * `return tsr_error(TESSERA_E_FORMAT, "...", ...);`. */
tessera_status tsr_error(tessera_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefixes the current message with more context ("level 2: " + message). */
tessera_status tsr_error_prefix(tessera_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void tsr_error_clear(void);

#define TSR_MESSAGE_MAX 1024

/* A failure carried from the thread where it happened (a worker) to the one that reports it
 * (the caller, or the consumer of a batch). */
struct tsr_failure {
  tessera_status status; /* TESSERA_OK: nothing failed */
  char message[TSR_MESSAGE_MAX];
};

/* Keeps status and the calling thread's message in f, unless f already holds a failure. */
void tsr_failure_keep(struct tsr_failure *f, tessera_status status);

/* Makes f's message the calling thread's and returns f's status. */
tessera_status tsr_failure_raise(const struct tsr_failure *f);

#endif
