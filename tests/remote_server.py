"""A loopback HTTP server for the remote-slide tests and benchmark: serves objects (bytes in
memory) with Range requests, ETag, Last-Modified and If-Match as an object store does, and
faults switched on at run time: no range support, latency, a bandwidth limit, 5xx bursts,
dropped connections, truncated bodies, 403/404, an object replaced while open, a stall past
the client's timeout; and an S3 mode that checks each request's SigV4 signature.
It counts the requests it answers, per object.

    with SlideServer() as server:
        url = server.add("a.svs", data)
        server.faults.latency = 0.02
        ...
"""

import email.utils
import hashlib
import hmac
import http.server
import re
import threading
import time
import urllib.parse


class Faults:
    """What the server does wrong; the counts are of requests still to spoil."""

    def __init__(self):
        self.ranges = True        # False: answer 200 with the whole object, as a server without ranges
        self.latency = 0.0        # seconds before each answer (a round trip)
        self.errors_5xx = 0       # the next N requests get 503
        self.drops = 0            # the next N requests: connection closed without an answer
        self.truncations = 0      # the next N requests: half the body, then the connection closes
        self.stall = 0.0          # seconds to wait before answering every request (past a timeout)
        self.bandwidth = 0        # bytes per second each answer's body is sent at (0: no limit)
        self.status = {}          # object name -> status to answer (403, 404, ...)
        self.honour_if_match = True
        self.bad_offsets = set()  # a range request starting at one of these gets 503, always


class SlideServer:
    def __init__(self, ssl_context=None):
        self.scheme = "https" if ssl_context else "http"
        self.objects = {}   # name -> (bytes, etag, last-modified)
        self.faults = Faults()
        self.requests = {}  # name -> count of GET/HEAD requests
        self.ranges = {}    # name -> [(first, last)] asked for
        # S3 mode (s3_mode()): every request's AWS Signature Version 4 is checked
        self.s3 = None
        self.queries = set()  # the query strings requests came with
        self.in_flight = 0  # requests being answered now, and the most at once
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head):
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self.answer_one(head)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def answer_one(self, head):
                name = urllib.parse.unquote(self.path.lstrip("/").split("?")[0])
                with server.lock:
                    server.queries.add(self.path.partition("?")[2])
                if server.s3 is not None:
                    why = server.s3_refusal(self)
                    if why:
                        return self.plain(403, why.encode() + b"\n")
                f = server.faults
                with server.lock:
                    server.requests[name] = server.requests.get(name, 0) + 1
                    spoil = None
                    for kind in ("drops", "errors_5xx", "truncations"):
                        if getattr(f, kind) > 0:
                            setattr(f, kind, getattr(f, kind) - 1)
                            spoil = kind
                            break
                    obj = server.objects.get(name)
                if f.latency:
                    time.sleep(f.latency)
                if f.stall:
                    time.sleep(f.stall)
                if spoil == "drops":
                    self.close_connection = True
                    return
                if spoil == "errors_5xx":
                    return self.plain(503, b"try again later\n")
                if name in f.status or obj is None:
                    return self.plain(f.status.get(name, 404), b"no\n")
                data, etag, modified = obj
                if f.honour_if_match and self.headers.get("If-Match") not in (None, "*", etag):
                    return self.plain(412, b"precondition failed\n")
                first, last = 0, len(data) - 1
                status = 200
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if m and f.ranges:
                    first = int(m.group(1))
                    last = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
                    if first >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", "bytes */%d" % len(data))
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if first in f.bad_offsets:
                        return self.plain(503, b"this range is broken\n")
                    status = 206
                    with server.lock:
                        server.ranges.setdefault(name, []).append((first, last))
                body = data[first:last + 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", modified)
                self.send_header("Accept-Ranges", "bytes" if f.ranges else "none")
                if status == 206:
                    self.send_header("Content-Range", "bytes %d-%d/%d" % (first, last, len(data)))
                self.end_headers()
                if head:
                    return
                if spoil == "truncations":
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if f.bandwidth:
                    step = max(1, f.bandwidth // 20)  # 20 chunks a second
                    for at in range(0, len(body), step):
                        self.wfile.write(body[at:at + step])
                        self.wfile.flush()
                        time.sleep(step / f.bandwidth)
                    return
                self.wfile.write(body)

            def plain(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if ssl_context:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    @property
    def base(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.httpd.server_address[1])

    def s3_mode(self, access_key, secret, region="us-east-1", token=None, anonymous=False):
        """Checks every request's SigV4 signature (the algorithm AWS documents, written here
        from its specification) for these credentials; anonymous=True also lets unsigned
        requests through (a public bucket). Objects are then added as "bucket/key"."""
        self.s3 = dict(access_key=access_key, secret=secret, region=region, token=token,
                       anonymous=anonymous)
        self.signed = 0

    def s3_refusal(self, handler):
        """Why the request's signature is refused (S3's error code), or None."""
        cfg, h = self.s3, handler.headers
        auth = h.get("Authorization")
        if auth is None:
            return None if cfg["anonymous"] else "AccessDenied: anonymous request"
        m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request,"
                         r"\s*SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})", auth)
        if not m:
            return "AuthorizationHeaderMalformed: %s" % auth
        key_id, date, region, signed, signature = m.groups()
        if key_id != cfg["access_key"]:
            return "InvalidAccessKeyId"
        if region != cfg["region"]:
            return "AuthorizationHeaderMalformed: region %s" % region
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names:
            return "AccessDenied: host and x-amz-date must be signed"
        if cfg["token"] is not None and (h.get("x-amz-security-token") != cfg["token"] or
                                         "x-amz-security-token" not in names):
            return "InvalidToken"
        payload = h.get("x-amz-content-sha256", hashlib.sha256(b"").hexdigest())
        path, _, query = handler.path.partition("?")
        canonical_query = "&".join(sorted(q for q in query.split("&") if q))
        canonical = "\n".join([
            handler.command, path, canonical_query,
            "".join("%s:%s\n" % (n, " ".join((h.get(n) or "").split())) for n in names),
            signed, payload])
        scope = "%s/%s/s3/aws4_request" % (date, region)
        to_sign = "\n".join(["AWS4-HMAC-SHA256", h.get("x-amz-date", ""), scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        k = ("AWS4" + cfg["secret"]).encode()
        for part in (date, region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest(),
                                   signature):
            return "SignatureDoesNotMatch"
        with self.lock:
            self.signed += 1
        return None

    def add(self, name, data):
        """Serves data at /name (replacing what was there: a new ETag); returns its URL."""
        etag = '"%s"' % hashlib.sha256(data).hexdigest()[:32]
        modified = email.utils.formatdate(time.time(), usegmt=True)
        with self.lock:
            self.objects[name] = (bytes(data), etag, modified)
        return self.url(name)

    def url(self, name):
        return "%s/%s" % (self.base, name)

    def count(self, name):
        with self.lock:
            return self.requests.get(name, 0)

    def reset_counts(self):
        with self.lock:
            self.requests.clear()
            self.ranges.clear()
            self.max_in_flight = 0


class LatencyServer:
    """A lean server for benchmarks over latency: the objects' bytes with Range, ETag,
    Last-Modified and If-Match as SlideServer answers them, every request answered
    `latency` seconds after it arrived, and nothing else (no faults). SlideServer is a Python
    thread per connection under one GIL: at a few hundred requests a second its own queueing
    adds to the latency it injects (a 20 ms request took 28 ms at 16 in flight, 53 ms at 32),
    so a benchmark of requests in flight measured it rather than the client. Here `processes`
    forked processes share one listening socket (backlog 1024), each an asyncio loop: waiting
    out the latency is a timer, not a thread, and the work of a request (a minimal parser, the
    body sent from a memoryview of the object) is a small part of what http.server spends.
    The latency is real: no response leaves before it has passed. Counts of requests answered
    and the most in flight at once are shared by the processes.

        with LatencyServer({"a.tif": data}, latency=0.02) as server:
            url = server.url("a.tif")
    """

    def __init__(self, objects, latency=0.0, processes=2):
        import multiprocessing
        import socket
        ctx = multiprocessing.get_context("fork")
        self.objects = {}
        for name, data in objects.items():
            etag = '"%s"' % hashlib.sha256(data).hexdigest()[:32]
            modified = email.utils.formatdate(time.time(), usegmt=True)
            self.objects[name] = (bytes(data), etag, modified)
        self._latency = ctx.Value("d", latency, lock=False)
        self._counts = ctx.Array("q", 3)  # requests answered, in flight now, most in flight
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.base = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.procs = [ctx.Process(target=self._serve, daemon=True) for _ in range(processes)]

    @property
    def latency(self):
        return self._latency.value

    @latency.setter
    def latency(self, seconds):
        self._latency.value = seconds

    def url(self, name):
        return "%s/%s" % (self.base, name)

    def count(self, name=None):
        """Requests answered (for every object: the name is taken for SlideServer's sake)."""
        with self._counts.get_lock():
            return self._counts[0]

    @property
    def max_in_flight(self):
        with self._counts.get_lock():
            return self._counts[2]

    def reset_counts(self):
        with self._counts.get_lock():
            self._counts[0] = 0
            self._counts[2] = self._counts[1]

    def __enter__(self):
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()
        self.sock.close()

    def _serve(self):
        import asyncio
        asyncio.run(self._main())

    async def _main(self):
        import asyncio
        server = await asyncio.start_server(self._connection, sock=self.sock, backlog=1024)
        async with server:
            await server.serve_forever()

    def _begin(self, delta):
        c = self._counts
        with c.get_lock():
            c[1] += delta
            if delta > 0:
                c[0] += 1
                c[2] = max(c[2], c[1])

    async def _connection(self, reader, writer):
        import asyncio
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                arrived = loop.time()
                self._begin(1)
                try:
                    reply, body, close = self._answer(head)
                    wait = arrived + self._latency.value - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(reply)
                    if body is not None:
                        writer.write(body)
                    await writer.drain()
                finally:
                    self._begin(-1)
                if close:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()

    def _answer(self, head):
        """The response's head, its body (a memoryview, or None) and whether to close."""
        lines = head.decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        close = headers.get("connection", "").lower() == "close"
        name = urllib.parse.unquote(target.lstrip("/").split("?")[0])
        obj = self.objects.get(name)

        def plain(status, text):
            body = text.encode()
            return (("HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n" % (
                status, http.HTTPStatus(status).phrase, len(body))).encode(), body, close)

        if obj is None:
            return plain(404, "no\n")
        data, etag, modified = obj
        if headers.get("if-match") not in (None, "*", etag):
            return plain(412, "precondition failed\n")
        first, last, status = 0, len(data) - 1, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("range", ""))
        if m:
            first = int(m.group(1))
            last = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if first >= len(data):
                return (("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */%d\r\n"
                         "Content-Length: 0\r\n\r\n" % len(data)).encode(), None, close)
            status = 206
        reply = ["HTTP/1.1 %d %s" % (status, http.HTTPStatus(status).phrase),
                 "Content-Length: %d" % (last + 1 - first), "ETag: " + etag,
                 "Last-Modified: " + modified, "Accept-Ranges: bytes"]
        if status == 206:
            reply.append("Content-Range: bytes %d-%d/%d" % (first, last, len(data)))
        body = None if method == "HEAD" else memoryview(data)[first:last + 1]
        return ("\r\n".join(reply) + "\r\n\r\n").encode(), body, close
