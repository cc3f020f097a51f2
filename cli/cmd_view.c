/* `tessera view SLIDE`: a local web page that shows the slide. The server is the Python
 * package's tessera.viewer (a web server and Deep Zoom tiles are far simpler and as fast there,
 * the tiles being read by the library with the GIL released); this command finds the package
 * that was built or installed with it and runs it in its place, so Ctrl-C, the exit status
 * and the messages are the server's own. The command line is checked by the server, in one
 * place; only --help is answered here, so that it answers without Python. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TESSERA_VIEW_PYTHON_EXE
#define TESSERA_VIEW_PYTHON_EXE "/usr/bin/python3"
#endif

void cmd_view_help(FILE *out) {
  fputs("Usage: tessera view SLIDE [--locations FILE [--size W,H [--level L]]] [--mask]\n"
        "                    [mask options] [--port P] [--host H]\n"
        "\n"
        "Serve a web page that shows the slide and print its address; open it in a\n"
        "browser. The page pans (drag, arrow keys) and zooms (wheel, pinch, double-click,\n"
        "+ and -) through Deep Zoom tiles read by tessera, lists the slide's levels and\n"
        "properties, shows its associated images (label, macro, ...), and draws the\n"
        "overlays below over the slide. The view is kept in the address\n"
        "(#x=..&y=..&zoom=..: the level-0 point at the centre and screen pixels per\n"
        "level-0 pixel), so it can be bookmarked. The server runs until Ctrl-C.\n"
        "\n"
        "Overlays:\n"
        "  -i, --locations FILE  draw a box for each patch of FILE where the batch\n"
        "                        reader reads it: FILE is in 'tessera bench --locations'\n"
        "                        form (one 'x y' level-0 corner a line, '#' comments);\n"
        "                        a patch of level L starts at level pixel\n"
        "                        floor(x / downsample), floor(y / downsample) and spans\n"
        "                        W x H pixels of level L\n"
        "  -s, --size W,H        the patches' size in pixels of level L (with\n"
        "                        --locations; one number for a square). Without it,\n"
        "                        FILE's '# level L read_size W,H' line gives both, as\n"
        "                        'tessera grid' writes it\n"
        "  -L, --level L         the level the patches are read from (default 0)\n"
        "  -m, --mask            show the tissue mask over the slide from the start:\n"
        "                        'tessera tissue' with its defaults (docs/TISSUE.md),\n"
        "                        made before serving (a slide it cannot be made for\n"
        "                        fails); without --mask the page's checkbox makes it\n"
        "                        when first turned on\n"
        "      --mask-mpp M, --mask-downsample D, --mode MODE,\n"
        "      --background-tolerance T, --black-max V, --pen-min-saturation S,\n"
        "      --pen-hue MIN,MAX, --min-threshold T, --min-tissue-area A,\n"
        "      --max-hole-area A\n"
        "                        the mask's parameters, as 'tessera tissue' takes\n"
        "                        them (its --help, docs/TISSUE.md); its defaults\n"
        "                        where not given\n"
        "\n"
        "Server:\n"
        "  -p, --port P          the port to listen on (default 0: a free one, printed)\n"
        "  -H, --host H          the address to listen on (default 127.0.0.1: this\n"
        "                        machine only). Another address lets whoever reaches it\n"
        "                        read the whole slide; the server warns when it is not a\n"
        "                        loopback address\n"
        "  -h, --help            show this help\n"
        "\n"
        "The server is the Python package's tessera.viewer, run by " TESSERA_VIEW_PYTHON_EXE "\n"
        "(or by $TESSERA_PYTHON_EXE); the package is the one built or installed with\n"
        "this command. It needs Pillow (Debian: python3-pil). The page's script is\n"
        "tessera's own: nothing is fetched from elsewhere, and it works offline.\n"
        "\n"
        "Exit status: 0 when stopped with Ctrl-C (or SIGTERM), 1 when the slide, the\n"
        "locations, the mask or the port cannot be used, 2 when the command line is\n"
        "wrong.\n"
        "\n"
        "Examples:\n"
        "  tessera view slide.svs\n"
        "  tessera view slide.svs --locations patches.txt --size 224,224 --level 1\n"
        "  tessera grid slide.svs --size 224 --mpp 0.5 --min-tissue 0.5 > grid.txt\n"
        "  tessera view slide.svs --locations grid.txt --mask\n"
        "  tessera view slide.svs --mask --port 8000\n",
        out);
}

#ifdef TESSERA_VIEW_INSTALLED_PYTHON_DIR
static bool is_file(const char *dir, const char *rest) {
  char path[PATH_MAX];
  int n = snprintf(path, sizeof path, "%s/%s", dir, rest);
  return n > 0 && (size_t)n < sizeof path && access(path, R_OK) == 0;
}

/* The folder holding the package `tessera` that goes with this command: the build tree's
 * when this is the build tree's command, else the installed one. NULL when it is not there;
 * *looked gets the folder looked in, for the message. */
static const char *package_dir(const char **looked) {
  char self[PATH_MAX], built[PATH_MAX];
  if (realpath("/proc/self/exe", self) && realpath(TESSERA_VIEW_BUILD_COMMAND, built) &&
      strcmp(self, built) == 0)
    *looked = TESSERA_VIEW_BUILD_PYTHON_DIR;
  else
    *looked = TESSERA_VIEW_INSTALLED_PYTHON_DIR;
  return is_file(*looked, "tessera/viewer/__main__.py") ? *looked : NULL;
}
#else
/* Built without the Python package (meson -Dpython=disabled): nowhere to look. */
static const char *package_dir(const char **looked) {
  *looked = NULL;
  return NULL;
}
#endif

int cmd_view(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    cmd_view_help(stdout);
    return CLI_EXIT_OK;
  }
  const char *looked;
  const char *dir = package_dir(&looked);
  if (!dir) {
    if (!looked)
      cli_error("view", "this tessera was built without its Python package, which serves the "
                        "page (configure the build with -Dpython=enabled)");
    else
      cli_error("view",
                "the Python package tessera.viewer, which serves the page, is not in "
                "%s (build or install tessera with -Dpython=enabled)",
                looked);
    return CLI_EXIT_ERROR;
  }
  const char *exe = getenv("TESSERA_PYTHON_EXE");
  if (!exe || !*exe)
    exe = TESSERA_VIEW_PYTHON_EXE;
  if (access(exe, X_OK) != 0) {
    cli_error(exe,
              "cannot run Python, which serves the page: %s (set TESSERA_PYTHON_EXE to "
              "a Python 3 with the package's dependencies)",
              strerror(errno));
    return CLI_EXIT_ERROR;
  }

  /* The package first on Python's path, so another tessera installed elsewhere cannot stand
   * in for this one; PYTHONSAFEPATH keeps the current folder off it. */
  const char *old = getenv("PYTHONPATH");
  size_t len = strlen(dir) + (old && *old ? strlen(old) + 1 : 0) + 1;
  char *path = malloc(len);
  if (!path) {
    cli_error("view", "out of memory");
    return CLI_EXIT_ERROR;
  }
  snprintf(path, len, "%s%s%s", dir, old && *old ? ":" : "", old && *old ? old : "");
  if (setenv("PYTHONPATH", path, 1) != 0 || setenv("PYTHONSAFEPATH", "1", 1) != 0) {
    cli_error("view", "cannot set Python's environment: %s", strerror(errno));
    free(path);
    return CLI_EXIT_ERROR;
  }
  free(path);

  char **args = calloc((size_t)argc + 4, sizeof *args);
  if (!args) {
    cli_error("view", "out of memory");
    return CLI_EXIT_ERROR;
  }
  args[0] = (char *)exe;
  args[1] = "-m";
  args[2] = "tessera.viewer";
  for (int i = 0; i < argc; i++)
    args[3 + i] = argv[i];
  fflush(NULL);
  execv(exe, args);
  cli_error(exe, "cannot run Python, which serves the page: %s", strerror(errno));
  free(args);
  return CLI_EXIT_ERROR;
}
