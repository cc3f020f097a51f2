"""A headless Chromium driven through its DevTools protocol, for the tests of `tessera view`.

Debian's chromium (TESSERA_CHROMIUM names another) is started on a private profile with a
DevTools port of its own choosing; the page target is driven over a WebSocket
(python3-websocket): navigate, evaluate script, send real wheel events, take screenshots.
Nothing here skips: a missing browser or module fails the test that needs it.
"""

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websocket
from PIL import Image


class BrowserError(Exception):
    pass


class Chromium:
    def __init__(self, width=1000, height=800, deadline_s=60):
        exe = os.environ.get("TESSERA_CHROMIUM") or shutil.which("chromium")
        assert exe, "chromium not found (Debian package chromium, or set TESSERA_CHROMIUM)"
        self.width, self.height = width, height
        self.deadline_s = deadline_s
        self._profile = tempfile.mkdtemp(prefix="tessera-chromium-")
        self._proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             "--disable-background-networking", "--force-device-scale-factor=1",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             "--user-data-dir=" + self._profile,
             "--window-size=%d,%d" % (width, height), "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._id = 0
        self.exceptions = []  # uncaught script errors the pages threw (Runtime.exceptionThrown)
        try:
            self._ws = websocket.create_connection(self._page_socket(), timeout=deadline_s,
                                                   suppress_origin=True)
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _page_socket(self):
        port_file = os.path.join(self._profile, "DevToolsActivePort")
        end = time.monotonic() + self.deadline_s
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise BrowserError("chromium exited with status %d" % self._proc.returncode)
            try:
                with open(port_file) as f:
                    port = int(f.readline())
                with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port) as r:
                    targets = json.load(r)
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise BrowserError("chromium gave no DevTools page within %d s" % self.deadline_s)

    def send(self, method, **params):
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(msg["params"]["exceptionDetails"])
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise BrowserError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})

    def evaluate(self, expression):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError("%s: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")

    def navigate(self, url):
        self.send("Page.navigate", url=url)

    def wait_for(self, expression, what):
        """Polls until the expression is true; fails naming `what` after the deadline (a
        deadline against a hang, not a timing assertion)."""
        end = time.monotonic() + self.deadline_s
        while time.monotonic() < end:
            try:
                if self.evaluate(expression):
                    return
            except BrowserError:
                pass  # the page is still loading
            time.sleep(0.1)
        raise BrowserError("%s: not within %d s" % (what, self.deadline_s))

    def wheel(self, x, y, delta_y):
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.send("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0,
                  deltaY=delta_y)

    def screenshot(self):
        data = self.send("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self):
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        # Chromium's helper processes can still write into the profile for a moment after the
        # browser has exited ("Directory not empty" seen once in CI): removal is retried.
        for _ in range(50):
            try:
                shutil.rmtree(self._profile)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
        else:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
