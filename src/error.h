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

#endif
