#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Each thread owns its buffer; no synchronisation needed. */
static _Thread_local char message[TSR_MESSAGE_MAX];

tessera_status tsr_error(tessera_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  return status;
}

tessera_status tsr_error_prefix(tessera_status status, const char *fmt, ...) {
  char prefix[TSR_MESSAGE_MAX];
  char old[TSR_MESSAGE_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, message, sizeof old);
  size_t n = strlen(prefix);
  if (n >= sizeof message)
    n = sizeof message - 1;
  memcpy(message, prefix, n);
  size_t m = strnlen(old, sizeof old - 1);
  if (m > sizeof message - 1 - n)
    m = sizeof message - 1 - n;
  memcpy(message + n, old, m);
  message[n + m] = '\0';
  return status;
}

void tsr_error_clear(void) { message[0] = '\0'; }

void tsr_failure_keep(struct tsr_failure *f, tessera_status status) {
  if (f->status != TESSERA_OK || status == TESSERA_OK)
    return;
  f->status = status;
  memcpy(f->message, message, sizeof f->message);
}

tessera_status tsr_failure_raise(const struct tsr_failure *f) {
  memcpy(message, f->message, sizeof message);
  return f->status;
}

TESSERA_API const char *tessera_error_message(void) { return message; }

TESSERA_API const char *tessera_status_string(tessera_status status) {
  switch (status) {
  case TESSERA_OK: return "ok";
  case TESSERA_E_ARGUMENT: return "invalid argument";
  case TESSERA_E_IO: return "i/o error";
  case TESSERA_E_FORMAT: return "malformed file";
  case TESSERA_E_UNSUPPORTED: return "unsupported";
  case TESSERA_E_CORRUPT: return "corrupt data";
  case TESSERA_E_NOMEM: return "out of memory";
  case TESSERA_E_LIMIT: return "limit exceeded";
  }
  return "unknown status";
}
