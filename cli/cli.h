/* What the files of the `tessera` command share: the subcommands, their exit codes, and the
 * helpers for messages, arguments and output files. */
#ifndef TESSERA_CLI_H
#define TESSERA_CLI_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum {
  CLI_EXIT_OK = 0,
  CLI_EXIT_ERROR = 1, /* the command was well formed but failed */
  CLI_EXIT_USAGE = 2  /* the command line itself is wrong */
};

/* ---- subcommands: each takes the arguments after its name ------------------------------ */

int cmd_bench(int argc, char **argv);
int cmd_cache(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_read(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_tissue(int argc, char **argv);
int cmd_grid(int argc, char **argv);
int cmd_view(int argc, char **argv);

void cmd_bench_help(FILE *out);
void cmd_cache_help(FILE *out);
void cmd_info_help(FILE *out);
void cmd_read_help(FILE *out);
void cmd_sample_help(FILE *out);
void cmd_tissue_help(FILE *out);
void cmd_grid_help(FILE *out);
void cmd_view_help(FILE *out);

/* ---- report.c: every failure is exactly one line on stderr ------------------------------ */

/* Prints "tessera: SUBJECT: MESSAGE" (or "tessera: MESSAGE" when subject is NULL) as one
 * line: newlines and other control characters in the parts become spaces, so a message that
 * came from a file cannot break the line. */
void cli_error(const char *subject, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cli_verror(const char *subject, const char *fmt, va_list ap);

/* cli_error for a wrong command line; adds a pointer to COMMAND's help. Returns
 * CLI_EXIT_USAGE so callers can `return cli_usage(...)`. */
int cli_usage(const char *command, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- args.c: the command line ------------------------------------------------------------ */

typedef struct cli_option {
  const char *name; /* long name without the dashes, e.g. "level" */
  char short_name;  /* e.g. 'o', or 0 for none */
  bool has_value;   /* takes a value: "--level 2" or "--level=2" */
  int id;           /* returned by cli_next(); must not be CLI_POSITIONAL */
} cli_option;

#define CLI_POSITIONAL 0

typedef struct cli_parser {
  int argc;
  char **argv;
  int index;            /* next argv entry to look at */
  bool only_positional; /* set after "--" */
  const char *command;  /* for messages */
  const cli_option *options;
  int option_count;
} cli_parser;

void cli_parser_init(cli_parser *p, const char *command, int argc, char **argv,
                     const cli_option *options, int option_count);

/* The next item of the command line. Returns 1 and sets *id (an option's id, or
 * CLI_POSITIONAL) and *value (the option's value, NULL for a flag, or the positional
 * argument); 0 at the end; -1 after printing a usage error. */
int cli_next(cli_parser *p, int *id, const char **value);

/* True when "--help" or "-h" appears before any "--". */
bool cli_wants_help(int argc, char **argv);

/* Whole-string decimal integer in [min, max]. Return false and print a usage error naming
 * `what` when the text is not such a number. */
bool cli_parse_int64(const char *command, const char *what, const char *text, int64_t min,
                     int64_t max, int64_t *out);

/* "A,B": two whole-string decimal integers, each in [min, max]. */
bool cli_parse_pair(const char *command, const char *what, const char *text, int64_t min,
                    int64_t max, int64_t *a, int64_t *b);

/* A whole-string finite decimal number in [min, max]; prints a usage error naming `what`
 * otherwise (cmd_tissue.c). */
bool cli_parse_double(const char *command, const char *what, const char *text, double min,
                      double max, double *out);

/* ---- cmd_tissue.c: the tissue-mask options of `tissue` and `grid` ------------------------ */

/* Their ids, clear of any command's own (which count from 1). */
enum {
  TOPT_MPP = 100,
  TOPT_DOWNSAMPLE,
  TOPT_MODE,
  TOPT_BACKGROUND,
  TOPT_BLACK,
  TOPT_PEN_SATURATION,
  TOPT_PEN_HUE,
  TOPT_MIN_THRESHOLD,
  TOPT_MIN_TISSUE,
  TOPT_MAX_HOLE,
  TOPT_WORKERS,
  TOPT_END
};
#define TISSUE_MASK_OPTION_COUNT (TOPT_END - TOPT_MPP)

struct tessera_tissue_options;
struct tessera_mask;
extern const cli_option tissue_mask_options[TISSUE_MASK_OPTION_COUNT];
void tissue_mask_options_help(FILE *out);
/* Applies mask option `id` with value v; prints a usage error and returns false if bad. */
bool tissue_mask_option(const char *command, int id, const char *v,
                        struct tessera_tissue_options *o);
/* The mask's description as 'key: value' lines. */
void tissue_mask_print(FILE *out, const struct tessera_mask *m);

/* ---- outfile.c: an output appears whole or not at all ----------------------------------- */

/* A temporary file beside the final path, renamed onto it on success. Only one may be open
 * at a time; it is also removed if the process is interrupted by SIGINT, SIGTERM or SIGHUP. */
typedef struct cli_outfile {
  char *final_path;
  char *temp_path;
  int fd; /* -1 once handed over to (and closed by) someone else */
} cli_outfile;

/* Creates the temporary file. On failure prints the error and returns false. */
bool cli_outfile_open(cli_outfile *f, const char *path);

/* Gives the permissions of a freshly created file (0666 less the umask), renames the
 * temporary file onto the final path and frees f. The descriptor must be closed already
 * (fd == -1). On failure prints the error, removes the temporary file and returns false. */
bool cli_outfile_commit(cli_outfile *f);

/* Closes (if still open) and removes the temporary file; frees f. */
void cli_outfile_abort(cli_outfile *f);

/* ---- json.c: text that is safe to print ------------------------------------------------ */

/* Writes s as a JSON string, quotes included: quote, backslash and control characters are
 * escaped, valid UTF-8 passes through and each invalid byte becomes U+FFFD. */
void json_write_string(FILE *out, const char *s);

/* Writes a finite double in the shortest form that reads back as the same value, or null. */
void json_write_number(FILE *out, double v);

/* Writes s for a terminal: control characters as C escapes (\n, \t, \x1b), invalid UTF-8
 * bytes as U+FFFD, so one property stays on one line. */
void text_write_escaped(FILE *out, const char *s);

#endif
