"""Slides over HTTP: tessera_open on http:// URLs served by a loopback server written here
(tests/remote_server.py: Python's ThreadingHTTPServer with Range, ETag, If-Match, and faults
switched on per test). Pixels over HTTP equal the local file's on every test-data file and a
vips pyramid; opening takes few requests (counted by the server); each fault is retried
invisibly or fails with a message naming the URL and the cause; a failed tile fails only its
batch; the Python package and the CLI take URLs."""

import json
import os
import pickle
import subprocess

import numpy as np
import pytest

import remote_compare
import tessera_ctypes as T
import wsi_fixtures
from remote_server import LatencyServer, SlideServer

TESTDATA = wsi_fixtures.TESTDATA
SLIDES = sorted(f for f in os.listdir(TESTDATA) if not f.endswith(".md"))
VIPS = "jpeg-t256-pyr"
FAST = dict(remote_timeout_ms=5000, remote_retries=3)


def big_pyramid(directory):
    """A 10240 x 10240 JPEG pyramid of 256-pixel tiles written by vips (47 MB: its level
    directories lie far apart, each after its level's tiles, as libtiff writes them)."""
    out = os.path.join(directory, "big.tif")
    noise, rgb, u8, zoomed = (os.path.join(directory, n) for n in ("n.v", "rgb.v", "u8.v", "z.v"))
    wsi_fixtures.run(["vips", "gaussnoise", noise, 2048, 2048, "--sigma", 40, "--mean", 128])
    wsi_fixtures.run(["vips", "bandjoin", "%s %s %s" % (noise, noise, noise), rgb])
    wsi_fixtures.run(["vips", "cast", rgb, u8, "uchar"])
    wsi_fixtures.run(["vips", "zoom", u8, zoomed, 5, 5])
    wsi_fixtures.run(["vips", "tiffsave", zoomed, out, "--tile", "--pyramid", "--compression",
                      "jpeg", "--Q", 80, "--tile-width", 256, "--tile-height", 256])
    for f in (noise, rgb, u8, zoomed):
        os.unlink(f)
    return out


@pytest.fixture(scope="module")
def server(slides, tmp_path_factory):
    with SlideServer() as s:
        for name in SLIDES:
            with open(os.path.join(TESTDATA, name), "rb") as f:
                s.add(name, f.read())
        with open(slides.path(VIPS), "rb") as f:
            s.add(VIPS + ".tif", f.read())
        s.local = {name: os.path.join(TESTDATA, name) for name in SLIDES}
        s.local[VIPS + ".tif"] = slides.path(VIPS)
        big = big_pyramid(str(tmp_path_factory.mktemp("remote")))
        with open(big, "rb") as f:
            s.add("big.tif", f.read())
        s.local["big.tif"] = big
        yield s


@pytest.fixture
def srv(server):
    """The server with no faults, counts reset, and every object as it was."""
    server.faults.__init__()
    server.reset_counts()
    for name, path in server.local.items():
        with open(path, "rb") as f:
            data = f.read()
        if server.objects[name][0] != data:
            server.add(name, data)
    return server


def open_url(url, **options):
    st, msg, slide = T.open_status(url, T.open_options(**{**FAST, **options}))
    return st, msg, slide


def io_stats(slide):
    import ctypes
    s = T.IoStats()
    s.struct_size = ctypes.sizeof(s)
    assert T.load().tessera_slide_io_stats(slide._h, ctypes.byref(s)) == T.OK
    return s


@pytest.mark.parametrize("name", SLIDES + [VIPS + ".tif", "big.tif"])
def test_pixels_over_http_equal_the_local_file(srv, name):
    st, msg, slide = open_url(srv.url(name))
    assert st == T.OK, msg
    with T.open_slide(srv.local[name]) as ref, slide:
        assert remote_compare.compare_ctypes(ref, slide) > 0
        s = io_stats(slide)
        assert s.requests == srv.count(name) and s.retries == 0


def test_block_caches_share_one_budget_per_process(srv):
    """The compressed-byte block cache is bounded per process (issue 19): remote slides open
    together share remote_cache_mib (the largest among them), so three slides hold at most one
    budget, not three; each still reads its local file's pixels; closing them frees it all."""
    import gc
    gc.collect()  # no slide of an earlier test left open
    names = ["big.tif", VIPS + ".tif", "aperio-jpeg-CMU-1-Small-Region.svs"]
    budget = 2 << 20
    slides = []
    for name in names:
        st, msg, slide = open_url(srv.url(name), remote_cache_mib=2)
        assert st == T.OK, msg
        slides.append(slide)
    most = 0
    try:
        for name, slide in zip(names, slides):
            with T.open_slide(srv.local[name]) as ref:
                assert remote_compare.compare_ctypes(ref, slide, regions=6, patches=48) > 0
            for other in slides:
                s = io_stats(other)  # the process's figures, whichever slide is asked
                assert s.remote_cache_budget == budget
                assert 0 < s.remote_cache_held <= budget, (name, s.remote_cache_held)
                most = max(most, s.remote_cache_held)
        # each slide alone would have filled its 2 MiB: together they use the one budget
        assert most > budget // 2, most
    finally:
        for slide in slides:
            slide.close()
    with T.open_slide(srv.local[names[0]]) as local:
        s = io_stats(local)
        assert s.remote_cache_held == 0 and s.remote_cache_budget == 0, (
            s.remote_cache_held, s.remote_cache_budget)


@pytest.mark.parametrize("name", ["aperio-jpeg-CMU-1-Small-Region.svs", VIPS + ".tif"])
def test_pixels_without_the_block_cache(srv, name):
    """remote_cache_mib=0: one request per read, no read-ahead (the naive way), same pixels."""
    st, msg, slide = open_url(srv.url(name), remote_cache_mib=0)
    assert st == T.OK, msg
    with T.open_slide(srv.local[name]) as ref, slide:
        assert remote_compare.compare_ctypes(ref, slide, regions=1, patches=4) > 0
        assert io_stats(slide).cache_hits == 0


@pytest.mark.parametrize("name,most", [
    ("generic-jpeg-ycbcr-128tiles.tiff", 5), ("generic-webp-rgba-pyramid.tif", 5),
    ("generic-zstd-1024tiles-pyramid.tiff", 5), (VIPS + ".tif", 5), ("big.tif", 5),
    ("aperio-jpeg-CMU-1-Small-Region.svs", 10), ("aperio-jpeg-tiny-16x16.svs", 10),
    ("hamamatsu-ndpi-DAPI.ndpi", 10)])
def test_open_takes_few_requests(srv, name, most):
    st, msg, slide = open_url(srv.url(name))
    assert st == T.OK, msg
    opened = srv.count(name)
    slide.close()
    # and without the block cache it takes many: the cache is what keeps the count low
    st, msg, naive = open_url(srv.url(name), remote_cache_mib=0)
    assert st == T.OK, msg
    naive.close()
    assert 1 <= opened <= most, opened
    assert srv.count(name) - opened > opened, (opened, srv.count(name) - opened)


@pytest.mark.parametrize("requests", [3, 12])
def test_batches_fetch_ahead_with_requests_in_flight(srv, requests):
    """Two workers streaming batches over latency: the block cache's prefetch threads keep
    more requests in flight than workers, never more than remote_requests, and merge adjacent
    tiles (fewer requests than tiles), with the same pixels as the local file."""
    import random
    name = "big.tif"
    with T.open_slide(srv.local[name]) as ref:
        rng = random.Random(5)
        locs = [(rng.randrange(0, 10000), rng.randrange(0, 10000)) for _ in range(64)]
        want = [a for a, _ in ref.batches(locs, (224, 224), 0, batch_size=16, num_workers=2)]
    st, msg, slide = open_url(srv.url(name), remote_requests=requests)
    assert st == T.OK, msg
    with slide:
        srv.faults.latency = 0.03
        srv.reset_counts()
        got = [a for a, _ in slide.batches(locs, (224, 224), 0, batch_size=16, num_workers=2)]
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
        assert 2 < srv.max_in_flight <= requests, srv.max_in_flight
        tiles = {(x // 256 + dx, y // 256 + dy) for x, y in locs for dx in (0, 1) for dy in (0, 1)
                 if (x % 256) + 224 > 256 * dx and (y % 256) + 224 > 256 * dy}
        assert srv.count(name) < len(tiles), (srv.count(name), len(tiles))


def test_latency_server_reads_as_the_file(srv):
    """bench/remote.py's server (LatencyServer: asyncio processes sharing a socket, each
    request answered once its latency has passed): batches over it equal the local file's,
    with the block cache's requests in flight at once; a HEAD learns the size, a missing object
    is a 404 naming the URL, and a changed ETag (If-Match) is refused."""
    import random
    import urllib.request
    name = "big.tif"
    with open(srv.local[name], "rb") as f:
        data = f.read()
    with T.open_slide(srv.local[name]) as ref:
        rng = random.Random(9)
        locs = [(rng.randrange(0, 10000), rng.randrange(0, 10000)) for _ in range(96)]
        want = [a for a, _ in ref.batches(locs, (224, 224), 0, batch_size=16, num_workers=2)]
    with LatencyServer({name: data}, latency=0.02) as fast:
        st, msg, slide = open_url(fast.url(name))
        assert st == T.OK, msg
        with slide:
            fast.reset_counts()
            got = [a for a, _ in slide.batches(locs, (224, 224), 0, batch_size=16,
                                               num_workers=2)]
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
        assert fast.count() > 0 and fast.max_in_flight > 2, (fast.count(), fast.max_in_flight)
        head = urllib.request.urlopen(urllib.request.Request(fast.url(name), method="HEAD"))
        assert int(head.headers["Content-Length"]) == len(data)
        etag = head.headers["ETag"]
        ask = urllib.request.Request(fast.url(name), headers={"Range": "bytes=5-9",
                                                              "If-Match": etag})
        assert urllib.request.urlopen(ask).read() == data[5:10]
        for url, headers, code in ((fast.url("nothing.tif"), {}, 404),
                                   (fast.url(name), {"If-Match": '"other"'}, 412)):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers))
            assert e.value.code == code
        st, msg, _ = open_url(fast.url("nothing.tif"))
        assert st == T.E_IO and fast.url("nothing.tif") in msg and "404" in msg, msg


NAME = "aperio-jpeg-CMU-1-Small-Region.svs"


def test_404_names_the_url(srv):
    st, msg, _ = open_url(srv.url("no-such-slide.svs"))
    assert st == T.E_IO and srv.url("no-such-slide.svs") in msg and "404" in msg, msg


def test_403_names_the_url(srv):
    srv.faults.status[NAME] = 403
    st, msg, _ = open_url(srv.url(NAME))
    assert st == T.E_IO and srv.url(NAME) in msg and "403 Forbidden" in msg, msg
    assert srv.count(NAME) == 1  # not retried


def test_server_without_ranges_is_refused(srv):
    srv.faults.ranges = False
    st, msg, _ = open_url(srv.url(NAME))
    assert st == T.E_UNSUPPORTED and srv.url(NAME) in msg and "ignores Range" in msg, msg


def test_query_string_is_left_out_of_messages(srv):
    url = srv.url("missing.svs") + "?X-Amz-Signature=secret"
    st, msg, _ = open_url(url)
    assert st == T.E_IO and "secret" not in msg and srv.url("missing.svs") in msg, msg


@pytest.mark.parametrize("fault", ["errors_5xx", "drops", "truncations"])
def test_passing_faults_are_retried_invisibly(srv, fault):
    with T.open_slide(srv.local[NAME]) as ref:
        setattr(srv.faults, fault, 2)
        st, msg, slide = open_url(srv.url(NAME), remote_cache_mib=0)
        assert st == T.OK, msg
        setattr(srv.faults, fault, 2)  # and on reads
        with slide:
            a = ref.read_region(100, 100, 0, 600, 400)
            b = slide.read_region(100, 100, 0, 600, 400)
            assert np.array_equal(a, b)
            # libcurl itself also retries a request on a reused connection found dead
            assert 2 <= io_stats(slide).retries <= 4
            assert getattr(srv.faults, fault) == 0


@pytest.mark.parametrize("fault,cause", [("errors_5xx", "503"), ("drops", "Empty reply"),
                                         ("truncations", "transfer closed")])
def test_lasting_faults_fail_naming_the_url(srv, fault, cause):
    setattr(srv.faults, fault, 100)
    st, msg, _ = open_url(srv.url(NAME), remote_retries=2)
    assert st == T.E_IO and srv.url(NAME) in msg and "3 attempts failed" in msg, msg
    assert cause in msg, msg
    assert srv.count(NAME) >= 3


def test_timeout(srv):
    srv.faults.stall = 3.0
    st, msg, _ = open_url(srv.url(NAME), remote_timeout_ms=300, remote_retries=1)
    assert st == T.E_IO and srv.url(NAME) in msg and "timed out" in msg, msg


def test_bandwidth_limit(srv):
    """A slow link: reads within the timeout are right; a request that cannot finish in time
    fails (after its retries) naming the URL, instead of hanging."""
    with T.open_slide(srv.local[NAME]) as ref:
        srv.faults.bandwidth = 4 << 20  # 4 MiB/s: a 256 KiB block in about 60 ms
        st, msg, slide = open_url(srv.url(NAME), remote_timeout_ms=5000)
        assert st == T.OK, msg
        with slide:
            assert np.array_equal(ref.read_region(500, 500, 0, 400, 400),
                                  slide.read_region(500, 500, 0, 400, 400))
        srv.faults.bandwidth = 64 << 10  # 64 KiB/s: the first 256 KiB take 4 s
        st, msg, _ = open_url(srv.url(NAME), remote_timeout_ms=500, remote_retries=1)
        assert st == T.E_IO and srv.url(NAME) in msg and "timed out" in msg, msg


def test_presigned_style_url_with_a_query(srv):
    """A presigned URL is plain HTTP: its query goes to the server with every request (and
    stays out of messages)."""
    url = srv.url(NAME) + "?X-Amz-Expires=600&X-Amz-Signature=abc123"
    srv.queries.clear()
    st, msg, slide = open_url(url)
    assert st == T.OK, msg
    assert srv.queries == {"X-Amz-Expires=600&X-Amz-Signature=abc123"}
    with T.open_slide(srv.local[NAME]) as ref, slide:
        assert np.array_equal(ref.read_region(0, 0, 0, 200, 200), slide.read_region(0, 0, 0, 200, 200))


def test_latency_under_the_timeout_is_no_failure(srv):
    srv.faults.latency = 0.05
    st, msg, slide = open_url(srv.url(NAME), remote_timeout_ms=2000)
    assert st == T.OK, msg
    with T.open_slide(srv.local[NAME]) as ref, slide:
        assert np.array_equal(ref.read_region(0, 0, 0, 300, 300),
                              slide.read_region(0, 0, 0, 300, 300))


@pytest.mark.parametrize("honour_if_match", [True, False])
def test_object_changed_while_open(srv, honour_if_match):
    """A replaced object fails the reads after it (If-Match's 412, or the ETag compared when
    the server ignores If-Match), and never mixes two objects' bytes."""
    srv.faults.honour_if_match = honour_if_match
    name = NAME
    st, msg, slide = open_url(srv.url(name), remote_cache_mib=0)
    assert st == T.OK, msg
    with slide:
        slide.read_region(0, 0, 0, 64, 64)
        data = srv.objects[name][0]
        srv.add(name, data[:-1] + bytes([data[-1] ^ 1]))  # same size, another ETag
        with pytest.raises(T.TesseraError) as e:
            slide.read_region(1500, 2000, 0, 256, 256)
        assert e.value.status == T.E_IO and srv.url(name) in str(e.value)
        assert "changed since the slide was opened" in str(e.value)


def test_failed_tile_fails_only_its_batch(srv):
    """The server fails every request for one tile's bytes: the batch needing it fails, naming
    the URL, and the batches before and after it (read ahead or not) are right."""
    import tifffile
    with tifffile.TiffFile(srv.local[NAME]) as t:
        page = t.pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        bad = page.dataoffsets[(1000 // page.tilelength) * across + 1000 // page.tilewidth]
    srv.faults.bad_offsets = {bad}
    st, msg, slide = open_url(srv.url(NAME), remote_cache_mib=0, remote_retries=1)
    assert st == T.OK, msg
    with T.open_slide(srv.local[NAME]) as ref, slide:
        locs = [(0, 0), (1010, 1010), (1500, 100)]
        want = [a for a, _ in ref.batches(locs, (16, 16), 0, batch_size=1)]
        it = slide.batches(locs, (16, 16), 0, batch_size=1, num_workers=2)
        assert np.array_equal(next(it)[0], want[0])
        with pytest.raises(T.TesseraError) as e:
            next(it)
        assert srv.url(NAME) in str(e.value) and "503" in str(e.value)
        assert np.array_equal(next(it)[0], want[2])
        it.destroy()


def test_options_from_the_environment(srv, monkeypatch):
    monkeypatch.setenv("TESSERA_REMOTE_RETRIES", "lots")
    st, msg, _ = T.open_status(srv.url(NAME))
    assert st == T.E_ARGUMENT and "TESSERA_REMOTE_RETRIES" in msg, msg
    monkeypatch.setenv("TESSERA_REMOTE_RETRIES", "0")
    monkeypatch.setenv("TESSERA_REMOTE_CACHE_MIB", "0")
    srv.faults.errors_5xx = 1
    st, msg, _ = T.open_status(srv.url(NAME))
    assert st == T.E_IO and "1 attempts failed" in msg, msg


def test_unsupported_scheme_is_a_path(srv):
    st, msg, _ = T.open_status("ftp://127.0.0.1/x.svs")
    assert st == T.E_IO  # no such file


# ---- Python and the CLI --------------------------------------------------------------------


def test_python_cuimage_url(srv):
    import tessera
    url = srv.url(NAME)
    ref = tessera.CuImage(srv.local[NAME])
    img = tessera.CuImage(url)
    assert img.path == url
    want = np.asarray(ref.read_region((300, 200), (400, 300), 0))
    assert np.array_equal(np.asarray(img.read_region((300, 200), (400, 300), 0)), want)
    copy = pickle.loads(pickle.dumps(img))  # by URL, not made a local path
    assert copy.path == url
    assert np.array_equal(np.asarray(copy.read_region((300, 200), (400, 300), 0)), want)
    assert img.io_stats()["requests"] >= 1
    with pytest.raises(OSError) as e:
        tessera.CuImage(srv.url("nothing-here.svs"))
    assert "404" in str(e.value)


def test_tessera_openslide_over_a_url(srv):
    """openslide-python's API over a URL: the same properties (quickhash-1 included, from
    tiles read over HTTP), levels, regions and associated images as over the local file; a
    missing object is an OpenSlideError naming the URL and the 404."""
    from tessera import openslide as tos
    for name in (NAME, "hamamatsu-ndpi-DAPI.ndpi", VIPS + ".tif"):
        with tos.OpenSlide(srv.url(name)) as remote, tos.OpenSlide(srv.local[name]) as local:
            assert dict(remote.properties) == dict(local.properties), name
            assert remote.level_dimensions == local.level_dimensions
            for level in range(remote.level_count):
                w, h = remote.level_dimensions[level]
                ds = remote.level_downsamples[level]
                loc = (int(w // 3 * ds), int(h // 4 * ds))
                assert remote.read_region(loc, level, (300, 200)).tobytes() == \
                    local.read_region(loc, level, (300, 200)).tobytes(), (name, level)
            assert sorted(remote.associated_images) == sorted(local.associated_images)
            for k in remote.associated_images:
                assert remote.associated_images[k].tobytes() == \
                    local.associated_images[k].tobytes(), (name, k)
    with pytest.raises(tos.OpenSlideError) as e:
        tos.OpenSlide(srv.url("nothing-here.svs"))
    assert "404" in str(e.value) and "nothing-here.svs" in str(e.value)
    # the server said the object is missing: not "unsupported format", as for a local file
    assert not isinstance(e.value, tos.OpenSlideUnsupportedFormatError)


def run_cli(cli, *args):
    return subprocess.run([cli] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_cli_info_and_read_take_urls(srv, cli, tmp_path):
    url = srv.url(NAME)
    remote = run_cli(cli, "info", url, "--json")
    local = run_cli(cli, "info", srv.local[NAME], "--json")
    assert remote.returncode == 0, remote.stderr
    a, b = json.loads(remote.stdout), json.loads(local.stdout)
    a.pop("path", None), b.pop("path", None)
    a.pop("slide", None), b.pop("slide", None)
    assert a == b
    for src, out in ((url, tmp_path / "r.png"), (srv.local[NAME], tmp_path / "l.png")):
        r = run_cli(cli, "read", src, "--location", "100,100", "--size", "300,200",
                    "--output", out)
        assert r.returncode == 0, r.stderr
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(tmp_path / "r.png")),
                          np.asarray(Image.open(tmp_path / "l.png")))
    bad = run_cli(cli, "info", srv.url("gone.svs") + "?X-Amz-Signature=secret")
    assert bad.returncode != 0 and "404" in bad.stderr and "secret" not in bad.stderr
    assert bad.stderr.count(srv.url("gone.svs")) == 1 and bad.stderr.count("\n") == 1


def test_cli_bench_reports_requests(srv, cli):
    url = srv.url(NAME)
    r = run_cli(cli, "bench", url, "--layout", "random", "--count", "64", "--size", "224,224",
                "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["requests"] + report["open_requests"] == srv.count(NAME)
    assert report["requests"] >= 1 and report["bytes_fetched"] > 0
    local = json.loads(run_cli(cli, "bench", srv.local[NAME], "--layout", "random", "--count",
                               "64", "--size", "224,224", "--json").stdout)
    assert report["checksum"] == local["checksum"]
    table = run_cli(cli, "bench", url, "--layout", "random", "--count", "16", "--size", "224,224")
    assert "requests" in table.stdout and "fetched" in table.stdout, table.stdout


def test_https_with_a_certificate_from_tessera_ca_bundle(tmp_path, monkeypatch):
    """HTTPS: a server whose self-signed certificate is trusted through TESSERA_CA_BUNDLE reads
    the same pixels; without it the open fails on the certificate, naming the URL."""
    import ssl
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    wsi_fixtures.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                      "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                      "-keyout", key, "-out", cert])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with SlideServer(ssl_context=ctx) as s:
        path = os.path.join(TESTDATA, NAME)
        with open(path, "rb") as f:
            url = s.add(NAME, f.read())
        assert url.startswith("https://")
        monkeypatch.delenv("TESSERA_CA_BUNDLE", raising=False)
        st, msg, _ = open_url(url, remote_retries=0)
        assert st == T.E_IO and url in msg and "certificate" in msg.lower(), msg
        monkeypatch.setenv("TESSERA_CA_BUNDLE", str(cert))
        st, msg, slide = open_url(url)
        assert st == T.OK, msg
        with T.open_slide(path) as ref, slide:
            assert remote_compare.compare_ctypes(ref, slide, regions=2, patches=8) > 0


def test_http2_where_the_server_offers_it(tmp_path, monkeypatch):
    """HTTP/2 where the server offers it: a node http2 server over TLS (tests/http2_server.js,
    which also takes HTTP/1.1) sees every request for the slide come in as HTTP/2, and the
    pixels equal the local file's."""
    import json as _json
    import shutil
    import ssl
    import urllib.request
    node = shutil.which("node") or shutil.which("nodejs")
    assert node, "node is needed for the HTTP/2 server (./dev.sh test installs nodejs)"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    wsi_fixtures.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                      "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                      "-keyout", key, "-out", cert])
    path = os.path.join(TESTDATA, NAME)
    server = subprocess.Popen([node, os.path.join(os.path.dirname(__file__), "http2_server.js"),
                               str(cert), str(key), path], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        base = "https://127.0.0.1:%d" % port
        monkeypatch.setenv("TESSERA_CA_BUNDLE", str(cert))
        st, msg, slide = open_url(base + "/slide")
        assert st == T.OK, msg
        with T.open_slide(path) as ref, slide:
            assert remote_compare.compare_ctypes(ref, slide, regions=2, patches=8) > 0
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(base + "/counts", context=ctx, timeout=10) as r:
            counts = _json.loads(r.read())
        assert counts.get("2.0", 0) > 0 and set(counts) == {"2.0"}, counts
    finally:
        server.kill()
        server.wait()


def test_dask_over_a_url(srv):
    """tessera.dask takes URLs: its tasks carry the URL and each worker opens it itself."""
    import dask
    import tessera
    import tessera.dask
    url = srv.url(NAME)
    local = srv.local[NAME]
    a = tessera.dask.to_dask_array(url, level=0, chunks=(512, 512))
    b = tessera.dask.to_dask_array(local, level=0, chunks=(512, 512))
    with dask.config.set(scheduler="threads"):
        assert np.array_equal(a[:1500, :1200].compute(), b[:1500, :1200].compute())
        locs = [(10, 20), (900, 700), (2000, 2500)]
        pa = tessera.dask.read_patches([(url, locs)], (224, 224)).compute()
        pb = tessera.dask.read_patches([(local, locs)], (224, 224)).compute()
    assert np.array_equal(pa, pb)
    assert srv.count(NAME) > 0


def test_forked_child_reads_the_parents_url_slide(srv):
    """A DataLoader worker forked after the parent read (its connections, curl handles and the
    block cache's fetch threads exist): the child makes its own and reads the same pixels."""
    import tessera
    S = tessera._tessera.Slide
    name = "big.tif"
    ref = tessera.Slide(srv.local[name])
    slide = tessera.Slide(srv.url(name))
    locs = [(i * 997 % 9800, i * 613 % 9800) for i in range(48)]
    want = [np.asarray(b) for b in S.batches(ref, locs, 224, 224, 0, batch_size=16, num_workers=2)]
    got = [np.asarray(b) for b in S.batches(slide, locs, 224, 224, 0, batch_size=16, num_workers=2)]
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    pid = os.fork()
    if pid == 0:  # the child: exit status says whether it read right
        ok = False
        try:
            locs2 = [(x + 300, y + 200) for x, y in locs]
            mine = [np.asarray(b) for b in S.batches(slide, locs2, 224, 224, 0, batch_size=16,
                                                      num_workers=2)]
            theirs = [np.asarray(b) for b in S.batches(ref, locs2, 224, 224, 0, batch_size=16,
                                                        num_workers=2)]
            ok = len(mine) == len(theirs) and all(np.array_equal(a, b)
                                                  for a, b in zip(mine, theirs))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    # and the parent goes on reading
    assert np.array_equal(np.asarray(S.read_region(slide, 5000, 5000, 300, 300, 0)),
                          np.asarray(S.read_region(ref, 5000, 5000, 300, 300, 0)))
