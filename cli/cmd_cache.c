/* `tessera cache list | remove`: the shared-memory tile caches of this machine (the segments
 * of TESSERA_CACHE_SHARED_MEMORY in /dev/shm), listed or removed through the library, which
 * alone knows which segments are tessera's and who uses them. */
#include "cli.h"
#include "tessera.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define MIB (1024.0 * 1024.0)
/* Segments may appear between counting them and listing them; a few tries settle it. */
#define LIST_TRIES 8

enum { OPT_JSON = 1, OPT_FORCE, OPT_HELP };

static const cli_option options[] = {
    {"json", 'j', false, OPT_JSON},
    {"force", 'f', false, OPT_FORCE},
    {"help", 'h', false, OPT_HELP},
};

void cmd_cache_help(FILE *out) {
  fputs("Usage: tessera cache list [--json]\n"
        "       tessera cache remove NAME... [--force]\n"
        "\n"
        "The shared-memory tile caches of this machine: the POSIX shared-memory segments\n"
        "(in /dev/shm) that processes using the shared_memory cache type share, as\n"
        "'tessera bench --cache shared_memory:MIB' or tessera_cache_configure make them.\n"
        "A segment goes away when the last process using it lets it go or exits; one\n"
        "whose processes were all killed stays, 'stale', until it is removed.\n"
        "\n"
        "Subcommands:\n"
        "  list           one line per segment: its name; its state (in use: N users,\n"
        "                 stale: no live users, or not ready: its maker has not finished\n"
        "                 setting it up, or died doing so); the MiB it may hold and holds;\n"
        "                 the tiles it holds; its hits and misses (counted over every\n"
        "                 process, when they asked for statistics)\n"
        "  remove NAME... remove the named segments (with or without the leading '/');\n"
        "                 one that live processes use is refused unless --force, and\n"
        "                 those keep using it until they let it go. Each name that cannot\n"
        "                 be removed (not there, not a tessera cache, in use) gives one\n"
        "                 line on stderr; the others are still removed\n"
        "\n"
        "Options:\n"
        "  -j, --json     list: print one JSON array with an object per segment: name,\n"
        "                 state (\"in_use\", \"stale\" or \"not_ready\"), ready, users,\n"
        "                 segment_bytes, memory_capacity, item_capacity, items, bytes,\n"
        "                 hits, misses, evictions (sizes in bytes)\n"
        "  -f, --force    remove: remove a segment even while processes use it\n"
        "  -h, --help     show this help\n"
        "\n"
        "Exit status: 0 on success, 1 when a segment cannot be listed or removed, 2 when\n"
        "the command line is wrong.\n"
        "\n"
        "Examples:\n"
        "  tessera cache list\n"
        "  tessera cache list --json\n"
        "  tessera cache remove /tessera-training\n"
        "  tessera cache remove tessera-4121-1 tessera-4188-1 --force\n",
        out);
}

/* ---- the segments ---------------------------------------------------------------------- */

/* Every segment tessera_shared_cache_list finds, in *infos (malloc'd; the caller frees it). */
static bool list_segments(tessera_shared_cache_info **infos, size_t *count) {
  size_t cap = 0;
  tessera_shared_cache_info *v = NULL;
  for (int tries = 0; tries < LIST_TRIES; tries++) {
    size_t n = 0;
    for (size_t i = 0; i < cap; i++) {
      memset(&v[i], 0, sizeof v[i]);
      v[i].struct_size = sizeof v[i];
    }
    if (tessera_shared_cache_list(v, cap, &n) != TESSERA_OK) {
      cli_error(NULL, "cannot list the shared-memory caches: %s", tessera_error_message());
      free(v);
      return false;
    }
    if (n <= cap) {
      *infos = v;
      *count = n;
      return true;
    }
    /* Room for a few more, in case more appear before the next call. */
    size_t want = n + 8;
    tessera_shared_cache_info *grown =
        want <= SIZE_MAX / sizeof *grown ? realloc(v, want * sizeof *grown) : NULL;
    if (!grown) {
      cli_error(NULL, "out of memory listing %zu shared-memory caches", n);
      free(v);
      return false;
    }
    v = grown;
    cap = want;
  }
  cli_error(NULL, "cannot list the shared-memory caches: their number keeps growing");
  free(v);
  return false;
}

typedef enum segment_state { STATE_IN_USE, STATE_STALE, STATE_NOT_READY } segment_state;

/* A segment still being set up (or whose maker died doing so) has counters that mean nothing
 * yet, so "not ready" comes before the users. */
static segment_state state_of(const tessera_shared_cache_info *s) {
  if (!s->ready)
    return STATE_NOT_READY;
  return s->users > 0 ? STATE_IN_USE : STATE_STALE;
}

static void state_text(const tessera_shared_cache_info *s, char *buf, size_t size) {
  switch (state_of(s)) {
  case STATE_IN_USE:
    snprintf(buf, size, "in use: %" PRIu32 " user%s", s->users, s->users == 1 ? "" : "s");
    return;
  case STATE_STALE: snprintf(buf, size, "stale: no live users"); return;
  case STATE_NOT_READY: snprintf(buf, size, "not ready"); return;
  }
}

static const char *state_key(const tessera_shared_cache_info *s) {
  switch (state_of(s)) {
  case STATE_IN_USE: return "in_use";
  case STATE_STALE: return "stale";
  case STATE_NOT_READY: break;
  }
  return "not_ready";
}

/* ---- list ------------------------------------------------------------------------------- */

static void print_json(const tessera_shared_cache_info *v, size_t n) {
  FILE *out = stdout;
  fputs("[", out);
  for (size_t i = 0; i < n; i++) {
    const tessera_shared_cache_info *s = &v[i];
    fputs(i ? ",\n  {\"name\": " : "\n  {\"name\": ", out);
    json_write_string(out, s->name);
    fprintf(out,
            ", \"state\": \"%s\", \"ready\": %s, \"users\": %" PRIu32
            ", \"segment_bytes\": %" PRIu64 ", \"memory_capacity\": %" PRIu64
            ", \"item_capacity\": %" PRIu64 ", \"items\": %" PRIu64 ", \"bytes\": %" PRIu64
            ", \"hits\": %" PRIu64 ", \"misses\": %" PRIu64 ", \"evictions\": %" PRIu64 "}",
            state_key(s), s->ready ? "true" : "false", s->users, s->segment_bytes,
            s->memory_capacity, s->item_capacity, s->items, s->bytes, s->hits, s->misses,
            s->evictions);
  }
  fputs(n ? "\n]\n" : "]\n", out);
}

/* A name as the table shows it (control characters escaped, see text_write_escaped), in a
 * malloc'd string, and its width in characters. */
static char *shown_name(const char *name, size_t *width) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f)
    return NULL;
  text_write_escaped(f, name);
  if (fclose(f) != 0) {
    free(text);
    return NULL;
  }
  *width = 0;
  for (const unsigned char *p = (const unsigned char *)text; *p; p++)
    *width += (*p & 0xc0) != 0x80; /* UTF-8 continuation bytes take no column */
  return text;
}

static bool print_table(const tessera_shared_cache_info *v, size_t n) {
  FILE *out = stdout;
  if (n == 0) {
    fputs("no tessera shared-memory caches\n", out);
    return true;
  }
  char **names = calloc(n, sizeof *names);
  size_t *widths = calloc(n, sizeof *widths);
  bool ok = names && widths;
  size_t name_width = strlen("NAME");
  for (size_t i = 0; ok && i < n; i++) {
    names[i] = shown_name(v[i].name, &widths[i]);
    ok = names[i] != NULL;
    if (ok && widths[i] > name_width)
      name_width = widths[i];
  }
  if (ok) {
    fprintf(out, "%-*s  %-21s  %12s  %10s  %10s  %12s  %12s\n", (int)name_width, "NAME", "STATE",
            "CAPACITY MiB", "USED MiB", "ITEMS", "HITS", "MISSES");
    for (size_t i = 0; i < n; i++) {
      const tessera_shared_cache_info *s = &v[i];
      char state[48];
      state_text(s, state, sizeof state);
      fprintf(out, "%s%*s  %-21s  %12.1f  %10.1f  %10" PRIu64 "  %12" PRIu64 "  %12" PRIu64 "\n",
              names[i], (int)(name_width - widths[i]), "", state, (double)s->memory_capacity / MIB,
              (double)s->bytes / MIB, s->items, s->hits, s->misses);
    }
  } else {
    cli_error(NULL, "out of memory");
  }
  for (size_t i = 0; names && i < n; i++)
    free(names[i]);
  free(names);
  free(widths);
  return ok;
}

static int cache_list(bool json) {
  tessera_shared_cache_info *v = NULL;
  size_t n = 0;
  if (!list_segments(&v, &n))
    return CLI_EXIT_ERROR;
  bool ok = true;
  if (json)
    print_json(v, n);
  else
    ok = print_table(v, n);
  free(v);
  return ok ? CLI_EXIT_OK : CLI_EXIT_ERROR;
}

/* ---- remove ----------------------------------------------------------------------------- */

/* The listed segment called `name` (with or without its '/'), or NULL. */
static const tessera_shared_cache_info *find_segment(const tessera_shared_cache_info *v, size_t n,
                                                     const char *name) {
  const char *bare = name[0] == '/' ? name + 1 : name;
  for (size_t i = 0; i < n; i++) {
    const char *listed = v[i].name[0] == '/' ? v[i].name + 1 : v[i].name;
    if (strcmp(listed, bare) == 0)
      return &v[i];
  }
  return NULL;
}

/* Removes one segment; what it was (looked up just before, so only a description) goes into
 * the line that says so. The library's messages name the segment and, for one in use, the
 * way past the refusal. */
static bool remove_one(const char *name, bool force, const tessera_shared_cache_info *before) {
  if (tessera_shared_cache_remove(name, force) != TESSERA_OK) {
    cli_error(NULL, "%s", tessera_error_message());
    return false;
  }
  FILE *out = stdout;
  fputs(name[0] == '/' ? "removed " : "removed /", out);
  text_write_escaped(out, name);
  if (before) {
    char state[48];
    state_text(before, state, sizeof state);
    fprintf(out, " (%s; %" PRIu64 " tile%s, %.1f of %.1f MiB)", state, before->items,
            before->items == 1 ? "" : "s", (double)before->bytes / MIB,
            (double)before->memory_capacity / MIB);
  }
  fputc('\n', out);
  return true;
}

static int cache_remove(const char *const *names, int count, bool force) {
  tessera_shared_cache_info *v = NULL;
  size_t n = 0;
  /* The listing only describes what goes; a segment it misses is still removed by name. */
  if (!list_segments(&v, &n)) {
    v = NULL;
    n = 0;
  }
  bool ok = true;
  for (int i = 0; i < count; i++)
    ok &= remove_one(names[i], force, find_segment(v, n, names[i]));
  free(v);
  return ok ? CLI_EXIT_OK : CLI_EXIT_ERROR;
}

/* ---- the command ------------------------------------------------------------------------ */

typedef struct cache_args {
  const char *sub;    /* "list", "remove", or what was given instead */
  const char **names; /* remove's names, in argv order */
  int count;
  bool json, force;
} cache_args;

/* Parses the command line into *a (names has room for argc entries). */
static bool parse_args(int argc, char **argv, cache_args *a) {
  cli_parser p;
  cli_parser_init(&p, "cache", argc, argv, options, (int)(sizeof options / sizeof options[0]));
  int id, r;
  const char *v;
  while ((r = cli_next(&p, &id, &v)) > 0) {
    if (id == OPT_JSON)
      a->json = true;
    else if (id == OPT_FORCE)
      a->force = true;
    else if (id == CLI_POSITIONAL && !a->sub)
      a->sub = v;
    else if (id == CLI_POSITIONAL)
      a->names[a->count++] = v;
  }
  return r == 0;
}

static int run_subcommand(const cache_args *a) {
  if (!a->sub)
    return cli_usage("cache", "no subcommand given: list or remove");
  if (strcmp(a->sub, "list") == 0) {
    if (a->count > 0)
      return cli_usage("cache", "list takes no names ('%s')", a->names[0]);
    if (a->force)
      return cli_usage("cache", "--force goes with remove");
    return cache_list(a->json);
  }
  if (strcmp(a->sub, "remove") == 0) {
    if (a->count == 0)
      return cli_usage("cache", "remove needs a NAME ('tessera cache list' shows them)");
    if (a->json)
      return cli_usage("cache", "--json goes with list");
    return cache_remove(a->names, a->count, a->force);
  }
  return cli_usage("cache", "no subcommand named '%s' (list or remove)", a->sub);
}

int cmd_cache(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    cmd_cache_help(stdout);
    return CLI_EXIT_OK;
  }
  cache_args a = {.names = calloc(argc > 0 ? (size_t)argc : 1, sizeof *a.names)};
  if (!a.names) {
    cli_error(NULL, "out of memory");
    return CLI_EXIT_ERROR;
  }
  int rc = parse_args(argc, argv, &a) ? run_subcommand(&a) : CLI_EXIT_USAGE;
  free(a.names);
  if (rc == CLI_EXIT_OK && (fflush(stdout) != 0 || ferror(stdout))) {
    cli_error(NULL, "cannot write to standard output");
    return CLI_EXIT_ERROR;
  }
  return rc;
}
