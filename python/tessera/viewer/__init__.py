"""A local web viewer of a slide: ``tessera view SLIDE`` (or ``python3 -m tessera.viewer``).

A small HTTP server (the standard library's ThreadingHTTPServer, one thread a request; tiles
are read by tessera with the GIL released, so requests are served in parallel) that gives a
page able to pan and zoom the slide through Deep Zoom tiles, list its properties and
associated images, and draw over it the patches of a locations file, each where the batch
reader reads it.

Routes (all GET; nothing else is served, and no path reaches the file system):
  /                          the page (static/index.html, viewer.js, viewer.css)
  /slide.dzi                 the Deep Zoom descriptor (tiles 254 pixels, overlap 1, JPEG)
  /slide_files/L/C_R.jpeg    a Deep Zoom tile, as DeepZoomGenerator.get_tile gives it
                             (JPEG quality 90, colour not subsampled; .png gives the
                             same tile losslessly)
  /info.json                 levels, properties, associated image names, overlays
  /associated/NAME.png       an associated image (label, macro, thumbnail, ...)
  /locations.json            the patches of --locations, as level-0 rectangles
  /mask.json, /mask.png      the tissue mask (CuImage.tissue_mask's defaults): its geometry,
                             and its pixels (tissue green and opaque, the rest transparent);
                             made at start with --mask, else when first asked for

The server listens on the loopback address unless told otherwise: the page serves the
whole slide to whoever can reach it.
"""

import argparse
import io
import ipaddress
import json
import math
import os
import re
import signal
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

TILE_SIZE = 254
TILE_OVERLAP = 1
# Quality 90 without chroma subsampling: a stain's colour is what a pathologist looks at, and
# 4:2:0 would smear it across a level-0 pixel at every edge.
JPEG_QUALITY = 90
MASK_RGBA = (0, 200, 60, 255)  # viewer.js draws it at the page's opacity (40% at first)
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
    "/viewer.css": ("viewer.css", "text/css; charset=utf-8"),
}
# The longest line a locations file may have, as `tessera bench --locations` reads it.
LOCATIONS_LINE_MAX = 4096
_PAIR = re.compile(r"[ \t\r]*([+-]?[0-9]+)(?:[ \t\r]*,[ \t\r]*|[ \t\r]+)([+-]?[0-9]+)[ \t\r]*")
_TILE = re.compile(r"/slide_files/([0-9]{1,3})/([0-9]{1,9})_([0-9]{1,9})\.(jpeg|png)")
_INT64 = (-(1 << 63), (1 << 63) - 1)
# `tessera grid`'s header line (after its '#') and its per-patch tissue fraction comment
_GRID_HEADER = re.compile(r"[ \t]*level[ \t]+([0-9]{1,4})[ \t]+read_size[ \t]+([0-9]{1,7}),"
                          r"([0-9]{1,7})(?:[ \t\r]|$)")
_FRACTION = re.compile(r"[ \t]*([0-9]+(?:\.[0-9]*)?)[ \t\r]*")


class ViewerError(Exception):
    """A problem with the command's files, reported as one line (exit status 1)."""


class ViewerUsageError(ViewerError):
    """Arguments that do not go together (exit status 2)."""


def read_locations(path):
    """A locations file in `tessera bench --locations`'s format: one (x, y) level-0 corner a
    line, 'x y' or 'x,y', blank lines and '#' comments allowed, lines of at most 4096 bytes.
    Returns (pairs, header, tissue): header is {"level": L, "size": (W, H)} from a comment
    line '# level L read_size W,H' (as `tessera grid` writes) or None; tissue is the list of
    each pair's trailing '# F' number (`tessera grid`'s tissue fractions) when every pair has
    one, else None. ViewerError names the file and line of the first problem."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ViewerError("%s: cannot read the locations: %s" % (path, e.strerror or e))
    out, header, tissue = [], None, []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if len(raw) > LOCATIONS_LINE_MAX:
            raise ViewerError("%s: line %d: longer than %d bytes (one 'x y' pair a line)" % (
                path, number, LOCATIONS_LINE_MAX))
        if b"\0" in raw:
            raise ViewerError("%s: line %d: holds a NUL byte (one 'x y' pair a line, as text)" % (
                path, number))
        text, _, comment = raw.decode("latin-1").partition("#")
        if not text.strip(" \t\r"):
            h = _GRID_HEADER.match(comment) if header is None and not out else None
            if h:
                header = {"level": int(h.group(1)), "size": (int(h.group(2)), int(h.group(3)))}
            continue
        m = _PAIR.fullmatch(text)
        pair = (int(m.group(1)), int(m.group(2))) if m else None
        if pair is None or not all(_INT64[0] <= v <= _INT64[1] for v in pair):
            raise ViewerError("%s: line %d: expected two integers 'x y', found '%.60s'" % (
                path, number, text.strip(" \t\r")))
        out.append(pair)
        f = _FRACTION.fullmatch(comment)
        if tissue is not None:
            tissue = tissue + [float(f.group(1))] if f else None
    if not out:
        raise ViewerError("%s: no locations in the file" % path)
    if header is not None and not (1 <= header["size"][0] <= 1 << 20 and
                                   1 <= header["size"][1] <= 1 << 20):
        header = None
    return out, header, tissue


def patch_boxes(locations, size, downsample):
    """Where the batch reader reads each patch, in level-0 pixels: the level origin of corner
    (x, y) is floor(x / downsample), floor(y / downsample) (the design's rule), and the patch
    spans size level pixels from there. Returns a flat list x0, y0, x1, y1, ... (floats)."""
    w, h = size
    out = []
    for x, y in locations:
        lx = x if downsample == 1.0 else math.floor(x / downsample)
        ly = y if downsample == 1.0 else math.floor(y / downsample)
        out.extend((lx * downsample, ly * downsample, (lx + w) * downsample,
                    (ly + h) * downsample))
    return out


def _parse_size(text):
    m = re.fullmatch(r"([0-9]+)(?:,([0-9]+))?", text)
    if not m:
        raise argparse.ArgumentTypeError("expected W,H (or one number for a square), found '%s'"
                                         % text)
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) is not None else w
    if not (1 <= w <= 1 << 20 and 1 <= h <= 1 << 20):
        raise argparse.ArgumentTypeError("the patch side must be 1..%d pixels, found '%s'" % (
            1 << 20, text))
    return w, h


def _parse_port(text):
    if not re.fullmatch(r"[0-9]{1,5}", text) or int(text) > 65535:
        raise argparse.ArgumentTypeError("expected a port number 0..65535, found '%s'" % text)
    return int(text)


def _parse_level(text):
    if not re.fullmatch(r"[0-9]{1,4}", text):
        raise argparse.ArgumentTypeError("expected a level number >= 0, found '%s'" % text)
    return int(text)


# The command line's mask options: CuImage.tissue_mask's keywords, as `tessera tissue` names them.
MASK_OPTIONS = ("mpp", "downsample", "mode", "background_tolerance", "black_max",
                "pen_min_saturation", "pen_hue", "min_threshold", "min_tissue_area",
                "max_hole_area")


def _parse_number(text):
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v >= 0 and v < float("inf")):
        raise argparse.ArgumentTypeError("expected a number >= 0, found '%s'" % text)
    return v


def _parse_pair(text):
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("expected MIN,MAX, found '%s'" % text)
    return tuple(_parse_number(v) for v in parts)


class Viewer:
    """What the server serves for one slide; thread-safe (the slide reads are, and the lazily
    made overlays are made once under a lock)."""

    def __init__(self, slide_path, locations=None, size=None, level=None, mask=False,
                 mask_options=None):
        # Imported here so that the command's own errors come before a missing Pillow's.
        from ..openslide import OpenSlide, OpenSlideError, OpenSlideUnsupportedFormatError
        from ..openslide.deepzoom import DeepZoomGenerator

        if locations is not None and size is None and level is not None:
            raise ViewerUsageError("--level needs --size W,H: the patch size in pixels of "
                                   "that level")
        if locations is None and (size is not None or level is not None):
            raise ViewerUsageError("--size and --level describe the patches of --locations; "
                                   "give a locations file")
        try:
            self.slide = OpenSlide(slide_path)
        except (OpenSlideError, OpenSlideUnsupportedFormatError, OSError) as e:
            raise ViewerError("%s: cannot open the slide: %s" % (slide_path, e))
        self.path = slide_path
        self.dz = DeepZoomGenerator(self.slide, TILE_SIZE, TILE_OVERLAP, limit_bounds=False)
        self._dzi = self.dz.get_dzi("jpeg").encode("utf-8")
        self._lock = threading.Lock()
        self._mask_shown = mask
        self._mask_options = dict(mask_options or {})  # CuImage.tissue_mask's keywords
        self._mask = None  # (json, png) once made, under _lock
        self._locations_json = None
        self.locations_summary = None
        if locations is not None:
            xy, header, tissue = read_locations(locations)
            if size is None:  # the file says how it is read, as tessera grid writes it
                if header is None:
                    raise ViewerUsageError(
                        "--locations needs --size W,H (and --level L), the patches' size in "
                        "pixels of their level: %s has no '# level L read_size W,H' line, as "
                        "tessera grid writes" % locations)
                level, size = header["level"], header["size"]
            level = level or 0
            if level >= self.slide.level_count:
                raise ViewerError("%s: no level %d (the slide has %d levels)" % (
                    slide_path, level, self.slide.level_count))
            ds = self.slide.level_downsamples[level]
            self.locations_summary = {"file": os.path.basename(locations), "count": len(xy),
                                      "level": level, "downsample": ds, "size": list(size),
                                      "tissue": tissue is not None}
            body = dict(self.locations_summary, boxes=patch_boxes(xy, size, ds),
                        locations=[v for pair in xy for v in pair], tissue=tissue)
            self._locations_json = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self._info_json = json.dumps(self._info(), separators=(",", ":")).encode("utf-8")
        if mask:
            from .. import TesseraError

            try:
                self.mask_overlay()
            except (TesseraError, ValueError, OSError) as e:
                raise ViewerError("%s: cannot make the tissue mask: %s" % (slide_path, e))

    def mask_overlay(self):
        """(json, png) of the tissue mask, made once: CuImage.tissue_mask() with the mask
        options of the command line, its defaults where none are given (docs/TISSUE.md). Mask pixel (i, j) covers level-0 [i * d, (i + 1) * d) x
        [j * d, (j + 1) * d), d its downsample, which the page draws it on."""
        with self._lock:
            if self._mask is None:
                import numpy as np
                from PIL import Image

                from .. import CuImage

                m = CuImage(self.path).tissue_mask(**self._mask_options)
                tissue = np.asarray(m.array, dtype=bool)
                rgba = np.zeros(tissue.shape + (4,), np.uint8)
                rgba[tissue] = MASK_RGBA
                png = io.BytesIO()
                Image.fromarray(rgba, "RGBA").save(png, "PNG")
                meta = {"width": int(tissue.shape[1]), "height": int(tissue.shape[0]),
                        "downsample": m.downsample, "mpp": m.mpp, "level": m.level,
                        "mode": m.mode, "threshold": m.threshold,
                        "tissue_fraction": m.tissue_fraction}
                self._mask = (json.dumps(meta).encode("utf-8"), png.getvalue())
            return self._mask

    def _info(self):
        s = self.slide
        props = dict(s.properties)
        mpp = []
        for k in ("openslide.mpp-x", "openslide.mpp-y"):
            try:
                mpp.append(float(props[k]))
            except (KeyError, ValueError):
                break
        assoc = []
        for name in sorted(s.associated_images):
            img = s.associated_images[name]
            assoc.append({"name": name, "width": img.size[0], "height": img.size[1]})
        return {
            "name": os.path.basename(self.path),
            "width": s.dimensions[0], "height": s.dimensions[1],
            "levels": [{"width": w, "height": h, "downsample": d}
                       for (w, h), d in zip(s.level_dimensions, s.level_downsamples)],
            "mpp": mpp if len(mpp) == 2 else None,
            "vendor": props.get("openslide.vendor"),
            "background": "#" + props.get("openslide.background-color", "ffffff"),
            "properties": props,
            "associated": assoc,
            "deepzoom": {"tile_size": TILE_SIZE, "overlap": TILE_OVERLAP,
                         "levels": self.dz.level_count,
                         "dimensions": [list(d) for d in self.dz.level_dimensions]},
            "mask": {"available": True, "shown": self._mask_shown},
            "locations": self.locations_summary,
        }

    def close(self):
        self.slide.close()

    # ---- the routes ------------------------------------------------------------------

    def route(self, path):
        """(status, content type, body, cacheable) for a GET of path."""
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            with open(os.path.join(STATIC_DIR, name), "rb") as f:
                return HTTPStatus.OK, ctype, f.read(), False
        if path == "/slide.dzi":
            return HTTPStatus.OK, "application/xml", self._dzi, False
        if path == "/info.json":
            return HTTPStatus.OK, "application/json", self._info_json, False
        if path == "/locations.json":
            if self._locations_json is None:
                return _not_found("no locations file was given (tessera view --locations)")
            return HTTPStatus.OK, "application/json", self._locations_json, False
        if path in ("/mask.json", "/mask.png"):
            body = self.mask_overlay()
            if path == "/mask.json":
                return HTTPStatus.OK, "application/json", body[0], False
            return HTTPStatus.OK, "image/png", body[1], False
        m = _TILE.fullmatch(path)
        if m:
            return self._tile(int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4))
        if path.startswith("/associated/") and path.endswith(".png"):
            return self._associated(unquote(path[len("/associated/"):-len(".png")]))
        return _not_found("no such page: %s" % path)

    def _tile(self, level, col, row, fmt):
        try:
            tile = self.dz.get_tile(level, (col, row))
        except ValueError:
            return _not_found("no tile %d/%d_%d (the slide has %d Deep Zoom levels)" % (
                level, col, row, self.dz.level_count))
        out = io.BytesIO()
        if fmt == "png":
            tile.save(out, "PNG")
            return HTTPStatus.OK, "image/png", out.getvalue(), True
        tile.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        return HTTPStatus.OK, "image/jpeg", out.getvalue(), True

    def _associated(self, name):
        images = self.slide.associated_images
        if name not in images:
            return _not_found("the slide has no associated image '%s'" % name)
        out = io.BytesIO()
        images[name].save(out, "PNG")
        return HTTPStatus.OK, "image/png", out.getvalue(), True


def _not_found(message):
    return HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", (message + "\n").encode(), False


class _Handler(BaseHTTPRequestHandler):
    server_version = "tessera-view"
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._serve(True)

    def do_HEAD(self):
        self._serve(False)

    def _serve(self, with_body):
        viewer = self.server.viewer
        path = urlsplit(self.path).path
        try:
            if not self.server.host_allowed(self.headers.get("Host")):
                status, ctype, body, cacheable = (
                    HTTPStatus.FORBIDDEN, "text/plain; charset=utf-8",
                    b"this server answers only to its loopback address\n", False)
            else:
                status, ctype, body, cacheable = viewer.route(path)
        except Exception as e:  # a corrupt tile fails its request, not the server
            self.server.report("%s: %s" % (path, e))
            status, ctype, body, cacheable = (HTTPStatus.INTERNAL_SERVER_ERROR,
                                              "text/plain; charset=utf-8",
                                              ("%s\n" % e).encode("utf-8", "replace"), False)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        # Tiles never change while the server runs; the page and its data may between runs.
        self.send_header("Cache-Control", "max-age=3600" if cacheable else "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # one line a tile would drown the address; errors are reported on their own


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, viewer, host="127.0.0.1", port=0):
        self.viewer = viewer
        try:
            self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as e:
            raise ViewerError("view: cannot resolve the host '%s': %s" % (host, e.strerror))
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise ViewerError("view: cannot listen on %s port %d: %s" % (host, port,
                                                                   e.strerror or e))

    def host_allowed(self, host):
        """On a loopback address, only requests naming a loopback host are served: a web page
        elsewhere that points a name of its own at 127.0.0.1 (DNS rebinding) would otherwise
        read the slide through the visitor's browser. Bound elsewhere (--host), any name."""
        if not _is_loopback(self.server_address[0]):
            return True
        if not host:
            return False
        name = urlsplit("//" + host).hostname or ""
        return _is_loopback(name)

    @property
    def url(self):
        host, port = self.server_address[:2]
        if ":" in host:
            host = "[%s]" % host
        return "http://%s:%d/" % (host, port)

    def report(self, message):
        _say(message)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _say(message):
    """One line on stderr, as the tessera command's messages: control characters become
    spaces, so a name from a file cannot break the line."""
    line = "".join(" " if ord(c) < 0x20 or c == "\x7f" else c for c in message)
    print("tessera: %s" % line.rstrip(), file=sys.stderr, flush=True)


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in ("localhost", "localhost.")


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # tessera's command-line errors: one line, then where to look, exit status 2.
        _say("view: %s (see 'tessera view --help')" % message)
        sys.exit(2)


def _parser():
    p = _ArgumentParser(
        prog="tessera view",
        description="Serve a web page that pans and zooms the slide (Deep Zoom tiles read by "
        "tessera), lists its properties and associated images, and draws the overlays over "
        "it; print its address and serve until Ctrl-C. `tessera view --help` says more.")
    p.add_argument("slide", help="the slide to show")
    p.add_argument("-i", "--locations", metavar="FILE",
                   help="draw a box for each patch of FILE ('tessera bench --locations' form: "
                   "one 'x y' level-0 corner a line) where the batch reader reads it")
    p.add_argument("-s", "--size", type=_parse_size, metavar="W,H",
                   help="the patches' size in pixels of --level (with --locations; default: "
                   "the file's '# level L read_size W,H' line, as tessera grid writes)")
    p.add_argument("-L", "--level", type=_parse_level, metavar="L",
                   help="the level the patches are read from (default 0)")
    p.add_argument("-m", "--mask", action="store_true", help="show the tissue mask")
    g = p.add_argument_group("mask options", "as 'tessera tissue' takes them (docs/TISSUE.md)")
    g.add_argument("--mask-mpp", type=_parse_number, metavar="M", dest="mpp",
                   help="micrometres per mask pixel")
    g.add_argument("--mask-downsample", type=_parse_number, metavar="D", dest="downsample",
                   help="level-0 pixels per mask pixel")
    g.add_argument("--mode", choices=("auto", "brightfield", "darkfield"))
    g.add_argument("--background-tolerance", type=int, metavar="T")
    g.add_argument("--black-max", type=int, metavar="V")
    g.add_argument("--pen-min-saturation", type=int, metavar="S")
    g.add_argument("--pen-hue", type=_parse_pair, metavar="MIN,MAX")
    g.add_argument("--min-threshold", type=int, metavar="T")
    g.add_argument("--min-tissue-area", type=_parse_number, metavar="A")
    g.add_argument("--max-hole-area", type=_parse_number, metavar="A")
    p.add_argument("-p", "--port", type=_parse_port, default=0, metavar="P",
                   help="the port (default 0: a free one)")
    p.add_argument("-H", "--host", default="127.0.0.1", metavar="H",
                   help="the address to listen on (default 127.0.0.1: this machine only)")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        mask_options = {k: getattr(args, k) for k in MASK_OPTIONS
                        if getattr(args, k) is not None}
        viewer = Viewer(args.slide, args.locations, args.size, args.level, args.mask,
                        mask_options)
    except ViewerUsageError as e:
        _say("view: %s (see 'tessera view --help')" % e)
        return 2
    except ViewerError as e:
        _say(str(e))
        return 1
    except ImportError as e:
        _say("view: the viewer needs Pillow (Debian: python3-pil) in %s: %s" % (
            sys.executable, e))
        return 1
    try:
        server = ViewerServer(viewer, args.host, args.port)
    except ViewerError as e:
        viewer.close()
        _say(str(e))
        return 1
    if not _is_loopback(server.server_address[0]):
        _say("view: warning: listening on %s, not the loopback address: anyone who can "
             "reach it can read the slide" % server.server_address[0])
    print("Serving %s at %s (Ctrl-C stops)" % (args.slide, server.url), flush=True)
    # SIGTERM (kill, a service manager) stops it as Ctrl-C does: the socket closed, status 0.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        viewer.close()
    return 0


__all__ = ["Viewer", "ViewerServer", "ViewerError", "main", "patch_boxes", "read_locations"]
