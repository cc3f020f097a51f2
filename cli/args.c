/* The command line: long options ("--level 2", "--level=2"), a few short ones ("-o out.png"),
 * positional arguments anywhere, "--" to end options; numbers checked in full. */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

void cli_parser_init(cli_parser *p, const char *command, int argc, char **argv,
                     const cli_option *options, int option_count) {
  p->argc = argc;
  p->argv = argv;
  p->index = 0;
  p->only_positional = false;
  p->command = command;
  p->options = options;
  p->option_count = option_count;
}

bool cli_wants_help(int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0)
      return false;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
      return true;
  }
  return false;
}

static const cli_option *find_long(const cli_parser *p, const char *name, size_t len) {
  for (int i = 0; i < p->option_count; i++) {
    const char *o = p->options[i].name;
    if (strlen(o) == len && strncmp(o, name, len) == 0)
      return &p->options[i];
  }
  return NULL;
}

static const cli_option *find_short(const cli_parser *p, char c) {
  for (int i = 0; i < p->option_count; i++) {
    if (p->options[i].short_name != 0 && p->options[i].short_name == c)
      return &p->options[i];
  }
  return NULL;
}

/* Takes the option's value: inline ("--x=v", "-ov") or the next argument. */
static int take_value(cli_parser *p, const cli_option *o, const char *shown,
                      const char *inline_value, int *id, const char **value) {
  if (!o->has_value) {
    if (inline_value) {
      cli_usage(p->command, "option '%s' takes no value", shown);
      return -1;
    }
    *id = o->id;
    *value = NULL;
    return 1;
  }
  if (!inline_value) {
    if (p->index >= p->argc) {
      cli_usage(p->command, "option '%s' needs a value", shown);
      return -1;
    }
    inline_value = p->argv[p->index++];
  }
  *id = o->id;
  *value = inline_value;
  return 1;
}

int cli_next(cli_parser *p, int *id, const char **value) {
  if (p->index >= p->argc)
    return 0;
  const char *arg = p->argv[p->index++];
  if (p->only_positional || arg[0] != '-' || arg[1] == '\0') {
    *id = CLI_POSITIONAL;
    *value = arg;
    return 1;
  }
  if (strcmp(arg, "--") == 0) {
    p->only_positional = true;
    return cli_next(p, id, value);
  }
  if (arg[1] == '-') {
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const cli_option *o = find_long(p, name, len);
    if (!o) {
      cli_usage(p->command, "unknown option '%.*s'", (int)(len + 2), arg);
      return -1;
    }
    char shown[128];
    snprintf(shown, sizeof shown, "--%s", o->name);
    return take_value(p, o, shown, eq ? eq + 1 : NULL, id, value);
  }
  const cli_option *o = find_short(p, arg[1]);
  if (!o) {
    /* A negative number where an option was expected is most likely a misplaced value. */
    if (isdigit((unsigned char)arg[1]))
      cli_usage(p->command, "unexpected argument '%s'", arg);
    else
      cli_usage(p->command, "unknown option '-%c'", arg[1]);
    return -1;
  }
  char shown[4] = {'-', arg[1], '\0', '\0'};
  return take_value(p, o, shown, arg[2] != '\0' ? arg + 2 : NULL, id, value);
}

/* strtoll accepts leading spaces, an empty string, and silently clamps on overflow; a
 * command line deserves none of that. Parses text[0..len) (len may stop before the end). */
static bool parse_span(const char *text, size_t len, int64_t *out) {
  char buf[64];
  if (len == 0 || len >= sizeof buf)
    return false;
  memcpy(buf, text, len);
  buf[len] = '\0';
  if (!(isdigit((unsigned char)buf[0]) || buf[0] == '-' || buf[0] == '+'))
    return false;
  char *end = NULL;
  errno = 0;
  long long v = strtoll(buf, &end, 10);
  if (errno != 0 || end == buf || *end != '\0')
    return false;
  *out = (int64_t)v;
  return true;
}

bool cli_parse_int64(const char *command, const char *what, const char *text, int64_t min,
                     int64_t max, int64_t *out) {
  int64_t v;
  if (!parse_span(text, strlen(text), &v)) {
    cli_usage(command, "%s: '%s' is not an integer", what, text);
    return false;
  }
  if (v < min || v > max) {
    cli_usage(command, "%s: %lld is out of range %lld..%lld", what, (long long)v, (long long)min,
              (long long)max);
    return false;
  }
  *out = v;
  return true;
}

bool cli_parse_pair(const char *command, const char *what, const char *text, int64_t min,
                    int64_t max, int64_t *a, int64_t *b) {
  const char *comma = strchr(text, ',');
  int64_t va, vb;
  if (!comma || !parse_span(text, (size_t)(comma - text), &va) ||
      !parse_span(comma + 1, strlen(comma + 1), &vb)) {
    cli_usage(command, "%s: '%s' is not two integers A,B", what, text);
    return false;
  }
  if (va < min || va > max || vb < min || vb > max) {
    char range[64];
    if (max == INT64_MAX)
      snprintf(range, sizeof range, ">= %lld", (long long)min);
    else
      snprintf(range, sizeof range, "in %lld..%lld", (long long)min, (long long)max);
    cli_usage(command, "%s: %lld,%lld is out of range (each must be %s)", what, (long long)va,
              (long long)vb, range);
    return false;
  }
  *a = va;
  *b = vb;
  return true;
}
