/* Messages on stderr. A failing command prints exactly one line, whatever text the library
 * or a file handed it, so scripts can rely on `2>&1 | tail -1` or on the line count. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#define LINE_MAX_BYTES 4096

/* Control characters would break the one-line promise (or play games with a terminal). */
static void flatten(char *s) {
  for (; *s; s++) {
    if ((unsigned char)*s < 0x20 || *s == 0x7f)
      *s = ' ';
  }
}

static void trim_trailing_space(char *s) {
  size_t n = strlen(s);
  while (n > 0 && s[n - 1] == ' ')
    s[--n] = '\0';
}

void cli_verror(const char *subject, const char *fmt, va_list ap) {
  char message[LINE_MAX_BYTES];
  char who[LINE_MAX_BYTES];
  vsnprintf(message, sizeof message, fmt, ap);
  flatten(message);
  trim_trailing_space(message);
  if (subject) {
    snprintf(who, sizeof who, "%s", subject);
    flatten(who);
    /* A URL is named without its query (it may hold a signature), as the library names it;
     * a message that already begins with it is not given it twice. */
    if (strstr(who, "://"))
      who[strcspn(who, "?#")] = '\0';
    size_t n = strlen(who);
    if (strncmp(message, who, n) == 0 && message[n] == ':')
      fprintf(stderr, "tessera: %s\n", message);
    else
      fprintf(stderr, "tessera: %s: %s\n", who, message);
  } else {
    fprintf(stderr, "tessera: %s\n", message);
  }
  fflush(stderr);
}

void cli_error(const char *subject, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cli_verror(subject, fmt, ap);
  va_end(ap);
}

int cli_usage(const char *command, const char *fmt, ...) {
  char message[LINE_MAX_BYTES];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  if (command)
    cli_error(command, "%s (see 'tessera %s --help')", message, command);
  else
    cli_error(NULL, "%s (see 'tessera --help')", message);
  return CLI_EXIT_USAGE;
}
