/* INI ("key file") text as GLib's GKeyFile reads it, which is how OpenSlide reads MIRAX's
 * Slidedat.ini: [group] lines, key=value lines (the key's trailing and the value's leading
 * blanks dropped), # comments and blank lines; a UTF-8 BOM and CR before LF are ignored; a
 * key given twice in a group (or in a group given twice) keeps its last value. A line with a
 * value but no key ("= False", written by some MIRAX scanners) is skipped, as OpenSlide 4
 * skips it (GLib and OpenSlide 3.4 refuse the file). Any other line makes the file unreadable,
 * as it makes GLib's parser fail. Values are kept raw (no
 * escapes undone), as g_key_file_get_value returns them. */
#ifndef TSR_FORMAT_INI_H
#define TSR_FORMAT_INI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera.h"

struct tsr_ini_entry {
  const char *group, *key, *value; /* into tsr_ini.text */
  size_t order;                    /* its line, so that the last of equal keys wins */
};

struct tsr_ini {
  char *text;                  /* the file's text, split in place (owned) */
  struct tsr_ini_entry *entry; /* sorted by group, key, then order; one per (group, key) */
  size_t n;
};

/* Parses len bytes of data; name is the file's, for messages. */
tessera_status tsr_ini_parse(const uint8_t *data, size_t len, const char *name,
                             struct tsr_ini *out);
void tsr_ini_free(struct tsr_ini *ini);

/* The value of key in group, or NULL. */
const char *tsr_ini_get(const struct tsr_ini *ini, const char *group, const char *key);
/* As g_key_file_get_integer: a whole decimal int (sign allowed), else false. */
bool tsr_ini_int(const char *value, int32_t *out);
/* As g_key_file_get_double: a whole number as strtod reads it, else false. */
bool tsr_ini_double(const char *value, double *out);

#endif
