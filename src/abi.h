/* The struct_size rule of include/tessera.h, written once: how option structs are copied in
 * and result structs copied out, so that a program built against an older, smaller copy of a
 * struct (or a newer, larger one) and this library never read or write past each other's end.
 * Stateless. */
#ifndef TSR_ABI_H
#define TSR_ABI_H

#include <stddef.h>

#include "tessera.h"

/* TESSERA_E_ARGUMENT, naming `what`, unless `caller` is a struct whose struct_size covers at
 * least struct_size itself. */
tessera_status tsr_abi_check(const void *caller, const char *what);

/* The *_init_sized functions: writes the first min(caller_size, lib_size) bytes of `defaults`
 * (the library's struct, lib_size bytes) into `caller`, and sets caller's struct_size to that
 * many. Bytes past it are the caller's and are left alone. Nothing is written when caller is
 * NULL or too small to hold struct_size. */
void tsr_abi_init(void *caller, size_t caller_size, const void *defaults, size_t lib_size);

/* An option struct coming in: `lib` (lib_size bytes) holds the defaults; the first
 * min(caller's struct_size, lib_size) bytes of `caller` replace them, and lib's struct_size
 * becomes lib_size. A NULL caller leaves the defaults. Fails as tsr_abi_check. */
tessera_status tsr_abi_copy_in(void *lib, size_t lib_size, const void *caller, const char *what);

/* A result struct going out, to a caller already passed by tsr_abi_check: the first
 * min(caller's struct_size, lib_size) bytes of `lib`, with struct_size set to that many (so a
 * caller built against a newer header learns which fields this library filled). */
void tsr_abi_copy_out(void *caller, const void *lib, size_t lib_size);

#endif
