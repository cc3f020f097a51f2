/* Printing strings that came from a file. TIFF tags hold arbitrary bytes (ImageDescription
 * has newlines, Latin-1, sometimes garbage), so every byte is either valid UTF-8, which
 * passes through, or is replaced; JSON output is always valid JSON. */
#include "cli.h"

#include <math.h>
#include <stdlib.h>

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the bytes there are not one:
 * overlong forms, surrogates and code points past U+10FFFF are invalid too. */
static int utf8_sequence_length(const unsigned char *s) {
  unsigned char c = s[0];
  if (c < 0x80)
    return 1;
  int len;
  unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0)
      lo = 0xa0; /* overlong */
    else if (c == 0xed)
      hi = 0x9f; /* surrogates */
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0)
      lo = 0x90; /* overlong */
    else if (c == 0xf4)
      hi = 0x8f; /* past U+10FFFF */
  } else {
    return 0;
  }
  if (s[1] < lo || s[1] > hi)
    return 0;
  /* A NUL terminator fails these tests, so a truncated sequence never reads past it. */
  for (int i = 2; i < len; i++) {
    if (s[i] < 0x80 || s[i] > 0xbf)
      return 0;
  }
  return len;
}

static const char replacement[] = "\xef\xbf\xbd"; /* U+FFFD */

/* Writes the UTF-8 sequence at s, or U+FFFD for one invalid byte; returns the bytes used. */
static int write_utf8(FILE *out, const unsigned char *s) {
  int len = utf8_sequence_length(s);
  if (len == 0) {
    fputs(replacement, out);
    return 1;
  }
  fwrite(s, 1, (size_t)len, out);
  return len;
}

void json_write_string(FILE *out, const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  putc('"', out);
  while (*s) {
    unsigned char c = *s;
    if (c == '"' || c == '\\') {
      putc('\\', out);
      putc(c, out);
      s++;
    } else if (c < 0x20 || c == 0x7f) {
      fprintf(out, "\\u%04x", c);
      s++;
    } else {
      s += write_utf8(out, s);
    }
  }
  putc('"', out);
}

void json_write_number(FILE *out, double v) {
  if (!isfinite(v)) {
    fputs("null", out);
    return;
  }
  char buf[40];
  for (int precision = 15; precision <= 17; precision++) {
    snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (strtod(buf, NULL) == v)
      break;
  }
  fputs(buf, out);
}

void text_write_escaped(FILE *out, const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  while (*s) {
    unsigned char c = *s;
    if (c == '\n') {
      fputs("\\n", out);
      s++;
    } else if (c == '\r') {
      fputs("\\r", out);
      s++;
    } else if (c == '\t') {
      fputs("\\t", out);
      s++;
    } else if (c == '\\') {
      fputs("\\\\", out);
      s++;
    } else if (c < 0x20 || c == 0x7f) {
      fprintf(out, "\\x%02x", c);
      s++;
    } else {
      if (c == 0xc2 && s[1] >= 0x80 && s[1] < 0xa0) {
        /* C1 controls: some terminals act on them even when UTF-8 encoded. */
        fprintf(out, "\\u%04x", s[1]);
        s += 2;
      } else {
        s += write_utf8(out, s);
      }
    }
  }
}
