"""`tessera view`: the command, its HTTP server and its page in a real browser.

The server is started as a user starts it (the `tessera` command, which runs the Python
package's tessera.viewer) and stopped with Ctrl-C (SIGINT). Its Deep Zoom descriptor, tiles,
levels and associated images are checked against Debian's openslide-python (OpenSlide's own
Deep Zoom generator and reader); its patch boxes against the design's level mapping with
OpenSlide's downsamples. Headless Chromium (tests/browser.py) loads the page on a slide
written here with a solid rectangle at a known place, zooms it with a real wheel event, and
the screenshot must show the rectangle and each patch box at the screen pixels computed from
the view the page reports.
"""

import io
import json
import math
import os
import select
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import numpy as np
import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

import browser
import wsi_fixtures as F

TESTDATA = os.environ.get("TESSERA_TESTDATA", os.path.join(F.REPO, "..", "shared", "testdata"))
APERIO = os.path.join(TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")
SERVER_DEADLINE_S = 60


class Server:
    """`tessera view ARGS` running; .url once it has printed its address."""

    def __init__(self, cli, *args, env=None):
        self.proc = subprocess.Popen([cli, "view", *args, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], SERVER_DEADLINE_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("Serving "):
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError("no address printed: %r %r %r" % (line, out, err))
        self.line = line
        self.url = line.split(" at ", 1)[1].split(" ")[0]
        assert self.url.startswith("http://") and self.url.endswith("/"), line

    def get(self, path):
        """(status, content type, body)."""
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=60) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    def stop(self, signum=signal.SIGINT):
        """Ctrl-C (or another signal); the exit status and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            _, err = self.proc.communicate(timeout=SERVER_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("the server did not stop on SIGINT")
        return self.proc.returncode, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def run_view(cli, *args, env=None):
    return subprocess.run([cli, "view", *args], capture_output=True, text=True, env=env,
                          timeout=SERVER_DEADLINE_S)


# ---- HTTP, on a real Aperio slide ----------------------------------------------------------

@pytest.fixture(scope="module")
def aperio_server(cli):
    with Server(cli, APERIO) as s:
        yield s
        rc, err = s.stop()
        assert rc == 0, err


@pytest.fixture(scope="module")
def reference():
    slide = openslide.OpenSlide(APERIO)
    yield slide, DeepZoomGenerator(slide, 254, 1, limit_bounds=False)
    slide.close()


def test_listens_on_loopback_only(aperio_server):
    assert aperio_server.url.startswith("http://127.0.0.1:")
    port = int(aperio_server.url.rsplit(":", 1)[1].strip("/"))
    # the kernel's own table of listening sockets: bound to 127.0.0.1, and to nothing else
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    listening.append(local.rsplit(":", 1)[0])
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("LOCALHOST", 200),
    ("[::1]:{port}", 200), ("attacker.example:{port}", 403), ("127.0.0.1.nip.io", 403), (None, 403),
])
def test_answers_only_to_loopback_names(aperio_server, host, status):
    """DNS rebinding: a page of attacker.example whose name now points at 127.0.0.1 must
    not read the slide through the visitor's browser."""
    port = int(aperio_server.url.rsplit(":", 1)[1].strip("/"))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        head = "GET /slide.dzi HTTP/1.1\r\n" + (
            "Host: %s\r\n" % host.format(port=port) if host else "") + "Connection: close\r\n\r\n"
        c.sendall(head.encode())
        reply = b""
        while chunk := c.recv(65536):
            reply += chunk
    assert reply.split(b"\r\n", 1)[0].split()[1] == str(status).encode(), reply[:200]


def test_dzi_is_openslides(aperio_server, reference):
    status, ctype, body = aperio_server.get("/slide.dzi")
    assert status == 200 and ctype == "application/xml"
    assert body.decode() == reference[1].get_dzi("jpeg")


def tile_cases(dz):
    """A few tiles of every Deep Zoom level from 8 up: corners, the middle, the last."""
    out = []
    for level in range(8, dz.level_count):
        cols, rows = dz.level_tiles[level]
        for c, r in {(0, 0), (cols - 1, 0), (cols // 2, rows // 2), (cols - 1, rows - 1)}:
            out.append((level, c, r))
    return out


def test_png_tiles_are_openslides_deep_zoom_tiles(aperio_server, reference):
    cases = tile_cases(reference[1])
    assert len(cases) >= 16
    for level, c, r in cases:
        status, ctype, body = aperio_server.get("/slide_files/%d/%d_%d.png" % (level, c, r))
        assert status == 200 and ctype == "image/png", (level, c, r, body[:200])
        got = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        want = np.asarray(reference[1].get_tile(level, (c, r)).convert("RGB"))
        assert got.shape == want.shape and np.array_equal(got, want), (level, c, r)


def test_jpeg_tiles_are_those_tiles_at_quality_90_in_full_colour(aperio_server, reference):
    for level, c, r in tile_cases(reference[1])[-6:]:
        status, ctype, body = aperio_server.get("/slide_files/%d/%d_%d.jpeg" % (level, c, r))
        assert status == 200 and ctype == "image/jpeg"
        want = io.BytesIO()
        reference[1].get_tile(level, (c, r)).convert("RGB").save(want, "JPEG", quality=90, subsampling=0)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))),
                              np.asarray(Image.open(want))), (level, c, r)


@pytest.mark.parametrize("path", [
    "/slide_files/99/0_0.jpeg",        # no such level
    "/slide_files/5/7_0.jpeg",         # no such column
    "/slide_files/12/0_99.png",        # no such row
    "/slide_files/12/0_0.gif",         # no such format
    "/slide_files/12/-1_0.jpeg",
    "/associated/nothing.png",
    "/locations.json",                 # started without --locations
    "/../../etc/passwd",
    "/viewer.py",
])
def test_what_is_not_there_is_404(aperio_server, path):
    status, ctype, _ = aperio_server.get(path)
    assert status == 404 and ctype.startswith("text/plain"), (path, status)


def test_info_has_openslides_levels_and_properties(aperio_server, reference):
    status, ctype, body = aperio_server.get("/info.json")
    assert status == 200 and ctype == "application/json"
    info = json.loads(body)
    slide = reference[0]
    assert (info["width"], info["height"]) == slide.dimensions
    assert [(lv["width"], lv["height"]) for lv in info["levels"]] == list(slide.level_dimensions)
    assert [lv["downsample"] for lv in info["levels"]] == pytest.approx(
        list(slide.level_downsamples), rel=1e-9)
    for key in ("openslide.vendor", "openslide.mpp-x", "openslide.mpp-y", "aperio.AppMag",
                "openslide.objective-power", "tiff.ImageDescription"):
        assert info["properties"][key] == slide.properties[key], key
    assert info["mpp"] == [float(slide.properties["openslide.mpp-x"]),
                           float(slide.properties["openslide.mpp-y"])]
    assert [a["name"] for a in info["associated"]] == sorted(slide.associated_images)
    assert info["deepzoom"]["levels"] == reference[1].level_count
    assert info["locations"] is None


def test_associated_images_are_openslides(aperio_server, reference):
    names = sorted(reference[0].associated_images)
    assert names == ["label", "macro", "thumbnail"]
    for name in names:
        status, ctype, body = aperio_server.get("/associated/%s.png" % name)
        assert status == 200 and ctype == "image/png", name
        got = np.asarray(Image.open(io.BytesIO(body)))
        want = np.asarray(reference[0].associated_images[name])
        assert np.array_equal(got, want), name


def test_the_page_and_its_script_are_served(aperio_server):
    status, ctype, body = aperio_server.get("/")
    assert status == 200 and ctype.startswith("text/html")
    assert b'src="/viewer.js"' in body
    status, ctype, body = aperio_server.get("/viewer.js")
    assert status == 200 and ctype.startswith("text/javascript") and b"tesseraViewer" in body
    assert aperio_server.get("/viewer.css")[0] == 200


# ---- the command line ----------------------------------------------------------------------

def test_help_answers(cli):
    r = run_view(cli, "--help")
    assert r.returncode == 0 and r.stderr == ""
    for word in ("--locations", "--size", "--level", "--mask", "--port", "--host",
                 "127.0.0.1", "floor(x / downsample)", "Ctrl-C"):
        assert word in r.stdout, word
    assert "view" in subprocess.run([cli, "--help"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("args, status, words", [
    ([], 2, "slide"),
    ([APERIO, "--size", "224"], 2, "locations file"),
    ([APERIO, "--level", "1"], 2, "locations file"),
    ([APERIO, "--port", "70000"], 2, "port"),
    ([APERIO, "--port", "x"], 2, "port"),
    ([APERIO, "--frobnicate"], 2, "--frobnicate"),
    (["/nonexistent.svs"], 1, "/nonexistent.svs"),
    ([APERIO, "--locations", "/nonexistent.txt", "--size", "8"], 1, "/nonexistent.txt"),
])
def test_command_line_errors(cli, args, status, words):
    r = run_view(cli, *args)
    assert r.returncode == status, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("tessera: ") and words in lines[0], r.stderr


def test_a_bad_locations_line_is_named(cli, tmp_path):
    loc = tmp_path / "bad.txt"
    loc.write_text("10 20\n# fine\n30,40\n1 2 3\n")
    r = run_view(cli, APERIO, "--locations", str(loc), "--size", "8")
    assert r.returncode == 1 and "line 4" in r.stderr and "'1 2 3'" in r.stderr, r.stderr


@pytest.mark.parametrize("args", [[], ["--level", "0"]])
def test_a_plain_locations_file_needs_the_size(cli, tmp_path, args):
    loc = tmp_path / "plain.txt"
    loc.write_text("# level 1 but no read_size\n10 20\n")
    r = run_view(cli, APERIO, "--locations", str(loc), *args)
    assert r.returncode == 2 and "--size" in r.stderr, r.stderr


def test_a_level_the_slide_lacks_fails(cli, tmp_path):
    loc = tmp_path / "ok.txt"
    loc.write_text("10 20\n")
    r = run_view(cli, APERIO, "--locations", str(loc), "--size", "8", "--level", "1")
    assert r.returncode == 1 and "no level 1" in r.stderr, r.stderr


def test_a_port_in_use_fails(cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run_view(cli, APERIO, "--port", str(s.getsockname()[1]))
    assert r.returncode == 1 and "cannot listen" in r.stderr, r.stderr


def test_missing_python_is_named(cli):
    env = dict(os.environ, TESSERA_PYTHON_EXE="/nonexistent/python3")
    r = run_view(cli, APERIO, env=env)
    assert r.returncode == 1 and "/nonexistent/python3" in r.stderr, r.stderr
    assert "TESSERA_PYTHON_EXE" in r.stderr


def test_a_command_away_from_its_package_says_where_it_looked(cli, tmp_path):
    """A copy of the build tree's command is not the build tree's: it looks for the installed
    package (not installed on a test machine) and says where."""
    copy = tmp_path / "tessera"
    copy.write_bytes(open(cli, "rb").read())
    copy.chmod(0o755)
    # the build tree's library, which the copy's relative run path no longer finds
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(os.path.dirname(cli), "..", "src"))
    r = run_view(str(copy), APERIO, env=env)
    assert r.returncode == 1, r.stderr
    assert "tessera.viewer" in r.stderr and "is not in /" in r.stderr, r.stderr
    assert run_view(str(copy), "--help", env=env).returncode == 0  # help needs no Python


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_it_cleanly(cli, signum):
    with Server(cli, APERIO) as s:
        assert s.get("/slide.dzi")[0] == 200
        rc, err = s.stop(signum)
        port = int(s.url.rsplit(":", 1)[1].strip("/"))
    assert rc == 0 and err == "", err
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()


# ---- in a browser --------------------------------------------------------------------------

SLIDE_W, SLIDE_H = 4096, 3072
RECT = (1400, 1000, 2200, 1600)        # x0, y0, x1, y1 in level-0 pixels
RECT_RGB = (180, 60, 140)
PATCH_RGB = (0, 180, 255)              # viewer.js's PATCH_COLOR
PATCH_LEVEL, PATCH_SIZE = 1, (100, 80)
# corners that are not multiples of the level's downsample: the reader starts the patch at
# floor(x / 2) on level 1, one level-0 pixel left of and above these
LOCATIONS = [(1401, 1001), (2101, 1501), (301, 2501)]


@pytest.fixture(scope="module")
def rect_slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("viewer")
    pic = np.full((SLIDE_H, SLIDE_W, 3), 255, np.uint8)
    x0, y0, x1, y1 = RECT
    pic[y0:y1, x0:x1] = RECT_RGB
    png, tif = str(d / "rect.png"), str(d / "rect.tiff")
    Image.fromarray(pic).save(png)
    # 2000 pixels a millimetre: 0.5 um/px, so the tissue mask has its default 8 um pixels
    subprocess.run(["vips", "tiffsave", png, tif, "--tile", "--tile-width", "256",
                    "--tile-height", "256", "--pyramid", "--compression", "deflate",
                    "--xres", "2000", "--yres", "2000"], check=True)
    loc = d / "loc.txt"
    loc.write_text("# three patches\n" + "".join("%d %d\n" % xy for xy in LOCATIONS))
    return tif, str(loc)


def expected_boxes(slide_path):
    """Level-0 rectangles of the patches by the design's rule, with OpenSlide's downsample."""
    with openslide.OpenSlide(slide_path) as s:
        ds = s.level_downsamples[PATCH_LEVEL]
    out = []
    for x, y in LOCATIONS:
        lx, ly = math.floor(x / ds), math.floor(y / ds)
        out.append((lx * ds, ly * ds, (lx + PATCH_SIZE[0]) * ds, (ly + PATCH_SIZE[1]) * ds))
    return out


@pytest.fixture(scope="module")
def rect_server(cli, rect_slide):
    tif, loc = rect_slide
    with Server(cli, tif, "--locations", loc, "--size", "%d,%d" % PATCH_SIZE,
                "--level", str(PATCH_LEVEL)) as s:
        yield s
        rc, err = s.stop()
        assert rc == 0, err


@pytest.fixture(scope="module")
def chromium():
    with browser.Chromium(1000, 800) as b:
        yield b


def test_locations_json_has_where_the_reader_reads(rect_server, rect_slide):
    info = json.loads(rect_server.get("/locations.json")[2])
    boxes = info["boxes"]
    assert info["count"] == len(LOCATIONS) and info["level"] == PATCH_LEVEL
    got = [tuple(boxes[i:i + 4]) for i in range(0, len(boxes), 4)]
    assert got == expected_boxes(rect_slide[0])
    assert got[0][:2] == (1400, 1000)  # the rule moved the first patch onto the rectangle


def load_view(chromium, server, fragment):
    chromium.navigate("about:blank")  # a new page, not a move within the last one
    chromium.navigate(server.url + "#" + fragment)
    chromium.wait_for("window.tesseraViewer && tesseraViewer.idle()", "the page showing the slide")
    assert chromium.exceptions == []
    return chromium.evaluate("tesseraViewer.view()")


@pytest.mark.parametrize("name", ["aperio-jpeg-tiny-16x16.svs", "hamamatsu-ndpi-DAPI.ndpi",
                                  "generic-webp-rgba-pyramid.tif"])
def test_page_shows_small_and_odd_slides_whole(cli, chromium, name):
    """A 16 x 16 slide (smaller than a tile: the view cannot zoom out to fit it), an NDPI and
    a pyramid with alpha: the page fits the slide, loads every tile it needs, throws nothing,
    and draws the slide's middle pixel where the view says."""
    path = os.path.join(TESTDATA, name)
    with Server(cli, path) as s:
        view = load_view(chromium, s, "")
        shot = np.asarray(chromium.screenshot()).astype(int)
        rc, _ = s.stop()
    assert rc == 0
    with openslide.OpenSlide(path) as ref:
        w, h = ref.dimensions
        assert view["zoom"] <= min(view["width"] / w, view["height"] / h)  # all of it in view
        x, y = w // 2, h // 2
        region = ref.read_region((x, y), 0, (1, 1)).convert("RGBA")
        r, g, b, a = region.getpixel((0, 0))
    bg = (255, 255, 255)  # the Deep Zoom tiles lay transparent pixels on the background
    want = [(c * a + bgc * (255 - a)) / 255 for c, bgc in zip((r, g, b), bg)]
    sx, sy = screen(view, x + 0.5, y + 0.5)
    got = shot[int(sy), int(sx)]
    assert np.all(np.abs(got - want) <= 24), (got.tolist(), want)


def next_frames(chromium):
    """Returns once the page has drawn two more animation frames (the change is drawn in the
    first)."""
    chromium.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => "
                      "r(true))))")


def screen(view, x, y):
    """The screen pixel of level-0 point (x, y) under the view the page reports (the canvas
    is at the page's top-left corner)."""
    return ((x - view["x"]) * view["zoom"] + view["width"] / 2,
            (y - view["y"]) * view["zoom"] + view["height"] / 2)


def near(pixel, rgb, tol):
    return all(abs(int(a) - b) <= tol for a, b in zip(pixel, rgb))


def test_page_zooms_and_shows_the_slide_and_patch_boxes(rect_server, rect_slide, chromium):
    before = load_view(chromium, rect_server, "x=1800&y=1300&zoom=0.25")
    assert before["zoom"] == pytest.approx(0.25) and before["width"] == 680
    cx, cy = before["width"] / 2, before["height"] / 2
    chromium.wheel(cx, cy, -300)  # one notch-sized scroll up: zoom in about the centre
    chromium.wait_for("tesseraViewer.idle() && tesseraViewer.view().zoom > 0.3", "the zoom")
    view = chromium.evaluate("tesseraViewer.view()")
    assert view["zoom"] == pytest.approx(0.5, rel=1e-6)
    assert (view["x"], view["y"]) == pytest.approx((1800, 1300), abs=1e-6)  # about the centre
    shot = np.asarray(chromium.screenshot())
    assert shot.shape == (800, 1000, 3)

    def px(x, y):
        sx, sy = screen(view, x, y)
        return shot[int(math.floor(sy)), int(math.floor(sx))]

    # the rectangle: its colour a few screen pixels inside every edge, white outside
    x0, y0, x1, y1 = RECT
    m = 6 / view["zoom"]  # six screen pixels, in level-0 pixels
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    for x, y in [(xm, ym), (x0 + m, ym + 130), (x1 - m, ym + 130), (xm + 250, y0 + m),
                 (xm + 250, y1 - m)]:
        assert near(px(x, y), RECT_RGB, 12), ((x, y), px(x, y))
    for x, y in [(x0 - m, ym + 130), (x1 + m, ym + 130), (xm + 250, y0 - m), (xm + 250, y1 + m)]:
        assert near(px(x, y), (255, 255, 255), 12), ((x, y), px(x, y))

    # each visible patch box: its outline within a pixel of where the reader reads, across
    # each side's middle; nothing of it a few pixels inside
    visible = 0
    for bx0, by0, bx1, by1 in expected_boxes(rect_slide[0]):
        sx0, sy0 = screen(view, bx0, by0)
        sx1, sy1 = screen(view, bx1, by1)
        if sx0 < 0 or sy0 < 0 or sx1 >= view["width"] or sy1 >= view["height"]:
            continue
        visible += 1
        midx, midy = int((sx0 + sx1) / 2), int((sy0 + sy1) / 2)
        for name, line in [("left", shot[midy, round(sx0) - 2:round(sx0) + 2]),
                           ("right", shot[midy, round(sx1) - 2:round(sx1) + 2]),
                           ("top", shot[round(sy0) - 2:round(sy0) + 2, midx]),
                           ("bottom", shot[round(sy1) - 2:round(sy1) + 2, midx])]:
            hits = [i for i, p in enumerate(line) if near(p, PATCH_RGB, 2)]
            assert len(hits) >= 2, (name, (bx0, by0), line.tolist())
        inside = shot[midy, round(sx0) + 5:round(sx1) - 5]
        assert not any(near(p, PATCH_RGB, 40) for p in inside), (bx0, by0)
    assert visible == 2  # the third patch lies off this view


def test_patches_can_be_turned_off(rect_server, chromium):
    load_view(chromium, rect_server, "x=1800&y=1300&zoom=0.5&patches=0")
    shot = np.asarray(chromium.screenshot())[:, :680]
    assert not np.any(np.all(np.abs(shot.astype(int) - PATCH_RGB) <= 40, axis=2))
    # and on again by its checkbox
    chromium.evaluate("document.getElementById('patches-on').click()")
    next_frames(chromium)
    shot = np.asarray(chromium.screenshot())[:, :680]
    assert np.count_nonzero(np.all(np.abs(shot.astype(int) - PATCH_RGB) <= 2, axis=2)) > 400


def test_page_lists_properties_and_associated_images(cli, chromium):
    with Server(cli, APERIO) as s:
        chromium.navigate(s.url)
        chromium.wait_for("window.tesseraViewer && tesseraViewer.idle()", "the page")
        chromium.wait_for("[...document.querySelectorAll('#associated img')]"
                          ".every(i => i.complete && i.naturalWidth > 0)", "associated images")
        got = chromium.evaluate(
            "({props: document.querySelectorAll('#props tr').length,"
            " assoc: [...document.querySelectorAll('#associated img')].map(i => i.alt),"
            " sizes: [...document.querySelectorAll('#associated img')].map("
            "   i => [i.naturalWidth, i.naturalHeight]),"
            " levels: document.querySelectorAll('#levels tbody tr').length,"
            " shown: ['mask-row', 'patches-row', 'no-patches'].map("
            "   id => document.getElementById(id).getClientRects().length > 0),"
            " app: [...document.querySelectorAll('#props tr')].find("
            "   r => r.cells[0].textContent === 'aperio.AppMag').cells[1].textContent})")
        served = json.loads(s.get("/info.json")[2])
        rc, _ = s.stop()
    assert got["props"] == len(served["properties"]) > 20
    assert got["shown"] == [True, False, True]  # the mask can be turned on; no patches
    with openslide.OpenSlide(APERIO) as ref:
        assert got["assoc"] == sorted(ref.associated_images)
        assert got["sizes"] == [list(ref.associated_images[n].size)
                                for n in sorted(ref.associated_images)]
        assert got["levels"] == ref.level_count
        assert got["app"] == ref.properties["aperio.AppMag"]
    assert rc == 0


def test_a_new_fragment_moves_the_view(rect_server, chromium):
    load_view(chromium, rect_server, "x=1800&y=1300&zoom=0.5")
    chromium.navigate(rect_server.url + "#x=1000&y=700&zoom=0.125")  # within the page
    chromium.wait_for("tesseraViewer.idle() && tesseraViewer.view().zoom < 0.2", "the move")
    view = chromium.evaluate("tesseraViewer.view()")
    assert (view["x"], view["y"], view["zoom"]) == pytest.approx((1000, 700, 0.125))
    assert chromium.evaluate("location.hash") == "#x=1000&y=700&zoom=0.125"


def test_close_up_the_box_starts_where_the_reader_starts(rect_server, chromium):
    """At 4 screen pixels a level-0 pixel, a box drawn at the file's corner (1401, 1001)
    instead of the reader's (1400, 1000) would stand 4 pixels off the rectangle's edge."""
    view = load_view(chromium, rect_server, "x=1400&y=1000&zoom=4")
    assert view["zoom"] == 4
    shot = np.asarray(chromium.screenshot())
    sx, sy = screen(view, 1400, 1000)
    row, col = int(sy) + 100, int(sx) + 100   # 25 level-0 pixels into the rectangle
    # the tiles: the rectangle's edge pixel (level-0 1400) spans sx..sx+4 on the screen
    assert near(shot[row, int(sx) + 3], RECT_RGB, 12) and near(shot[row, int(sx) - 3],
                                                               (255, 255, 255), 12)
    assert near(shot[int(sy) + 3, col], RECT_RGB, 12) and near(shot[int(sy) - 3, col],
                                                               (255, 255, 255), 12)
    left = [i for i in range(int(sx) - 6, int(sx) + 7) if near(shot[row, i], PATCH_RGB, 2)]
    top = [i for i in range(int(sy) - 6, int(sy) + 7) if near(shot[i, col], PATCH_RGB, 2)]
    assert len(left) == 2 and abs((left[0] + left[1] + 1) / 2 - sx) <= 1, (sx, left)
    assert len(top) == 2 and abs((top[0] + top[1] + 1) / 2 - sy) <= 1, (sy, top)


# ---- the tissue mask -----------------------------------------------------------------------

MASK_RGB, MASK_OPACITY = (0, 200, 60), 0.4   # the server's MASK_RGBA, the page's first opacity


@pytest.fixture(scope="module")
def mask_server(cli, rect_slide):
    with Server(cli, rect_slide[0], "--mask") as s:
        yield s
        rc, err = s.stop()
        assert rc == 0, err


def test_mask_is_cuimages_tissue_mask(mask_server, rect_slide):
    import tessera

    want = tessera.CuImage(rect_slide[0]).tissue_mask()
    meta = json.loads(mask_server.get("/mask.json")[2])
    assert (meta["width"], meta["height"]) == (want.array.shape[1], want.array.shape[0])
    assert meta["downsample"] == want.downsample and meta["level"] == want.level
    status, ctype, body = mask_server.get("/mask.png")
    assert status == 200 and ctype == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(body)))
    assert np.array_equal(rgba[..., 3] == 255, want.array)
    assert np.all(rgba[want.array][:, :3] == MASK_RGB) and not np.any(rgba[~want.array])
    assert json.loads(mask_server.get("/info.json")[2])["mask"] == {"available": True,
                                                                    "shown": True}


def test_mask_options_reach_the_mask(cli, rect_slide):
    """The mask options of the command line are CuImage.tissue_mask's keywords: a coarser
    mask with a high threshold floor is that mask, not the default one."""
    import tessera

    kw = dict(downsample=64.0, min_threshold=200, mode="brightfield", pen_hue=(80.0, 200.0))
    want = tessera.CuImage(rect_slide[0]).tissue_mask(**kw)
    default = tessera.CuImage(rect_slide[0]).tissue_mask()
    assert want.array.shape != default.array.shape and want.threshold != default.threshold
    with Server(cli, rect_slide[0], "--mask", "--mask-downsample", "64", "--min-threshold",
                "200", "--mode", "brightfield", "--pen-hue", "80,200") as s:
        meta = json.loads(s.get("/mask.json")[2])
        rgba = np.asarray(Image.open(io.BytesIO(s.get("/mask.png")[2])))
        rc, err = s.stop()
    assert rc == 0, err
    assert (meta["width"], meta["height"]) == (want.array.shape[1], want.array.shape[0])
    assert meta["downsample"] == want.downsample and meta["threshold"] == want.threshold
    assert np.array_equal(rgba[..., 3] == 255, want.array)


def test_bad_mask_options_fail(cli, rect_slide):
    r = run_view(cli, rect_slide[0], "--mask", "--background-tolerance", "300")
    assert r.returncode == 1 and "tissue mask" in r.stderr, r.stderr
    r = run_view(cli, rect_slide[0], "--mask-mpp", "x")
    assert r.returncode == 2 and "--mask-mpp" in r.stderr, r.stderr


def test_page_shows_the_tissue_mask_where_it_is(mask_server, rect_slide, chromium):
    """Every mask pixel in view, at its centre on the screen: the slide's colour there (the
    rectangle's or white) with the mask's green over it at 40% where the mask says tissue,
    and untouched where it does not."""
    import tessera

    mask = tessera.CuImage(rect_slide[0]).tissue_mask()
    x0, y0, x1, y1 = RECT
    # the rectangle is tissue and the white glass is not: what the test relies on
    assert mask.array[int((y0 + y1) / 2 / mask.downsample), int((x0 + x1) / 2 / mask.downsample)]
    assert not mask.array[0, 0]
    view = load_view(chromium, mask_server, "x=1800&y=1300&zoom=0.25")
    assert chromium.evaluate("document.getElementById('mask-on').checked")
    assert chromium.evaluate("document.getElementById('mask-text').textContent") == (
        "(%d \u00d7 %d, 8.00 \u00b5m/px, %.1f%% tissue)" % (
            mask.array.shape[1], mask.array.shape[0], 100 * mask.tissue_fraction))
    shot = np.asarray(chromium.screenshot()).astype(int)
    # the buttons and the status line lie over the canvas
    covered = chromium.evaluate("['controls', 'status'].map(id => { const r = document."
                                "getElementById(id).getBoundingClientRect();"
                                " return [r.left - 2, r.top - 2, r.right + 2, r.bottom + 2]; })")
    d = mask.downsample
    seen = {True: 0, False: 0}
    for j in range(mask.array.shape[0]):
        for i in range(mask.array.shape[1]):
            cx, cy = (i + 0.5) * d, (j + 0.5) * d
            sx, sy = screen(view, cx, cy)
            if not (4 <= sx < view["width"] - 4 and 4 <= sy < view["height"] - 4):
                continue
            if cx >= SLIDE_W or cy >= SLIDE_H:
                continue
            if any(l <= sx <= r and t <= sy <= b for l, t, r, b in covered):
                continue
            # a few screen pixels clear of the rectangle's edges, where tiles blend
            if any(abs(c - e) * view["zoom"] < 4 for c, e in ((cx, x0), (cx, x1), (cy, y0),
                                                              (cy, y1))):
                continue
            inside = x0 <= cx < x1 and y0 <= cy < y1
            base = np.array(RECT_RGB if inside else (255, 255, 255))
            tissue = bool(mask.array[j, i])
            want = base * (1 - MASK_OPACITY) + np.array(MASK_RGB) * MASK_OPACITY if tissue else base
            got = shot[int(sy), int(sx)]
            assert np.all(np.abs(got - want) <= 12), ((i, j), tissue, got.tolist(), want.tolist())
            seen[tissue] += 1
    assert seen[True] > 100 and seen[False] > 100, seen
    # and off by its checkbox: the rectangle's own colour again
    chromium.evaluate("document.getElementById('mask-on').click()")
    next_frames(chromium)
    shot = np.asarray(chromium.screenshot()).astype(int)
    sx, sy = screen(view, (x0 + x1) / 2, (y0 + y1) / 2)
    assert np.all(np.abs(shot[int(sy), int(sx)] - RECT_RGB) <= 12)


def test_a_mask_that_cannot_be_made_fails_at_start(cli, tmp_path):
    """A slide claiming a millimetre a pixel: its 8 um mask would be far over the limits."""
    png, tif = str(tmp_path / "p.png"), str(tmp_path / "p.tiff")
    Image.new("RGB", (512, 512), (255, 255, 255)).save(png)
    subprocess.run(["vips", "tiffsave", png, tif, "--tile", "--xres", "0.001", "--yres",
                    "0.001"], check=True)
    r = run_view(cli, tif, "--mask")
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert r.stderr.startswith("tessera: %s: cannot make the tissue mask: " % tif), r.stderr
    assert len(r.stderr.strip().split("\n")) == 1, r.stderr


def test_the_mask_can_be_asked_for_without_the_flag(rect_server, rect_slide):
    meta = json.loads(rect_server.get("/mask.json")[2])
    assert meta["width"] > 0 and rect_server.get("/mask.png")[0] == 200
    assert json.loads(rect_server.get("/info.json")[2])["mask"] == {"available": True,
                                                                   "shown": False}



# ---- a tessera grid file -------------------------------------------------------------------

def test_a_grid_file_says_its_level_and_read_size(cli, rect_slide, tmp_path):
    """`tessera grid` at 0.75 um/px on the 0.5 um/px slide reads level 0 with 1.5x the patch
    (its header says so); the viewer takes the level and read size from that header and draws
    each patch's read rectangle, with its tissue fraction from the line's comment."""
    grid = subprocess.run([cli, "grid", rect_slide[0], "--size", "112", "--mpp", "0.75",
                           "--min-tissue", "0.5"], capture_output=True, text=True, check=True)
    path = tmp_path / "grid.txt"
    path.write_text(grid.stdout)
    header = [ln for ln in grid.stdout.splitlines() if ln.startswith("# level ")][0].split()
    level, read_size = int(header[2]), tuple(int(v) for v in header[4].split(","))
    assert (level, read_size) == (0, (168, 168))
    rows = [ln.split("#") for ln in grid.stdout.splitlines() if not ln.startswith("#")]
    xy = [tuple(int(v) for v in r[0].split()) for r in rows]
    fractions = [float(r[1]) for r in rows]
    assert len(xy) > 5
    with Server(cli, rect_slide[0], "--locations", str(path)) as s:
        got = json.loads(s.get("/locations.json")[2])
        rc, err = s.stop()
    assert rc == 0, err
    assert (got["level"], tuple(got["size"]), got["count"]) == (level, read_size, len(xy))
    with openslide.OpenSlide(rect_slide[0]) as ref:
        ds = ref.level_downsamples[level]
    want = []
    for x, y in xy:
        lx, ly = math.floor(x / ds), math.floor(y / ds)
        want += [lx * ds, ly * ds, (lx + read_size[0]) * ds, (ly + read_size[1]) * ds]
    assert got["boxes"] == want
    assert got["tissue"] == fractions and min(fractions) >= 0.5
    x0, y0, x1, y1 = RECT  # half their area or more on the rectangle, the only tissue
    for i in range(0, len(want), 4):
        bx0, by0, bx1, by1 = want[i:i + 4]
        overlap = max(0, min(bx1, x1) - max(bx0, x0)) * max(0, min(by1, y1) - max(by0, y0))
        assert overlap >= 0.4 * (bx1 - bx0) * (by1 - by0), want[i:i + 4]


def test_hovering_a_box_names_its_patch(rect_server, chromium):
    view = load_view(chromium, rect_server, "x=1800&y=1300&zoom=0.5")
    sx, sy = screen(view, 1400 + 100, 1000 + 80)  # the middle of the first patch's box
    chromium.send("Input.dispatchMouseEvent", type="mouseMoved", x=sx, y=sy)
    chromium.wait_for("document.getElementById('status').textContent.includes('patch 1 at "
                      "1401, 1001')", "the patch named")
    sx, sy = screen(view, 1800, 1300)  # between the patches
    chromium.send("Input.dispatchMouseEvent", type="mouseMoved", x=sx, y=sy)
    chromium.wait_for("!document.getElementById('status').textContent.includes('patch')",
                      "the name gone")
