/* The struct_size rule (abi.h). Every struct it handles begins with a size_t struct_size; it
 * is read and written with memcpy because the caller's struct may be shorter than ours. */
#include "abi.h"

#include <string.h>

#include "error.h"

static size_t caller_size(const void *caller) {
  size_t n;
  memcpy(&n, caller, sizeof n);
  return n;
}

static void set_size(void *s, size_t n) { memcpy(s, &n, sizeof n); }

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

tessera_status tsr_abi_check(const void *caller, const char *what) {
  if (!caller || caller_size(caller) < sizeof(size_t))
    return tsr_error(TESSERA_E_ARGUMENT, "%s without struct_size", what);
  return TESSERA_OK;
}

void tsr_abi_init(void *caller, size_t size, const void *defaults, size_t lib_size) {
  if (!caller || size < sizeof(size_t))
    return;
  size_t n = min_size(size, lib_size);
  memcpy(caller, defaults, n);
  set_size(caller, n);
}

tessera_status tsr_abi_copy_in(void *lib, size_t lib_size, const void *caller, const char *what) {
  if (caller) {
    tessera_status st = tsr_abi_check(caller, what);
    if (st != TESSERA_OK)
      return st;
    memcpy(lib, caller, min_size(caller_size(caller), lib_size));
  }
  set_size(lib, lib_size);
  return TESSERA_OK;
}

void tsr_abi_copy_out(void *caller, const void *lib, size_t lib_size) {
  size_t n = min_size(caller_size(caller), lib_size);
  memcpy(caller, lib, n);
  set_size(caller, n);
}
