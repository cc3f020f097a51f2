"""The Python package lets the other threads run while it waits in the library: for the
statistics of a shared cache (read under its shard locks), and for the tiles still being
decoded when a batch iterator is closed or collected.

The wait is made with a helper process stopped for good holding the shared cache's only shard
lock (the test-only hook TESSERA_TEST_CACHE_STALL=locked:1:PIDFILE stalls it halfway through
publishing its first tile). In a process of its own, the test waits in the library, while a
second Python thread counts a few heartbeats and then kills the helper, which ends the wait
(the lock is recovered from its dead owner); the beats counted when the call returns are
printed. With the GIL held through the wait, the second thread cannot run: where lock waits
are unbounded nothing ends the wait, and the process is cut off by the timeout (only a hang
guard); where they are bounded (a second), the call returns with no beat counted.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

import tessera_ctypes as T
import wsi_fixtures as F
from conftest import PYTHON_PACKAGE_DIR, needs_test_hooks

SMALL = "generic-jpeg-ycbcr-128tiles.tiff"  # 512 x 384 in 128 x 128 JPEG tiles
TIMEOUT = 60

# In the process under test. Heartbeats then the kill run in a second thread; WAIT is the call
# that waits in the library. For an iterator, it first waits until a pool thread is blocked
# on a lock inside the segment (a futex system call on an address of its mapping), so that
# close has a tile in flight to wait for.
SCRIPT = r"""
import os, platform, signal, sys, threading, time
import tessera

name, slide, helper_pid, what = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tessera.CuImage.cache("shared_memory", memory_capacity=16, name=name)
FUTEX = {"x86_64": 202, "aarch64": 98}[platform.machine()]

def segment():
    for line in open("/proc/self/maps"):
        if "/dev/shm/" + name in line:
            lo, hi = line.split()[0].split("-")
            return int(lo, 16), int(hi, 16)

def blocked_in(lo, hi):
    for tid in os.listdir("/proc/self/task"):
        try:
            call = open("/proc/self/task/%s/syscall" % tid).read().split()
        except OSError:
            continue
        if len(call) > 1 and call[0] == str(FUTEX) and lo <= int(call[1], 16) < hi:
            return True
    return False

BEATS = 3
beats = []
def heartbeat():
    for i in range(BEATS):
        time.sleep(0.002)
        beats.append(i)
    os.kill(helper_pid, signal.SIGKILL)

img = tessera.CuImage(slide)
if what == "stats":
    threading.Thread(target=heartbeat).start()
    tessera.CuImage.cache().hit_count
    counted = len(beats)
else:
    # batch 0 lies wholly outside the slide (no tile, no lock); the next ones need tiles
    it = img.read_region([(-10000, -10000), (0, 0), (128, 128), (256, 0)], (64, 64),
                         batch_size=1, num_workers=1)
    next(it)
    lo, hi = segment()
    deadline = time.monotonic() + 20
    while not blocked_in(lo, hi) and time.monotonic() < deadline:
        time.sleep(0.005)
    threading.Thread(target=heartbeat).start()
    if what == "close":
        it.close()
    else:
        del it
    counted = len(beats)
print(counted)
"""


@pytest.fixture
def stalled_helper(tmp_path):
    """A process attached to a fresh shared cache, stopped for good holding its only shard
    lock: (segment name, slide, pid). Killed and the segment removed afterwards."""
    name = "tessera-pytest-%d-gil" % os.getpid()
    slide = os.path.join(F.TESTDATA, SMALL)
    pidfile = str(tmp_path / "stalled.pid")
    # the region read twice: the second miss of its tile loads it, and stalls publishing it
    code = ("import sys, tessera\n"
            "tessera.CuImage.cache('shared_memory', memory_capacity=16, name=sys.argv[1])\n"
            "img = tessera.CuImage(sys.argv[2])\n"
            "img.read_region((0, 0), (64, 64))\n"
            "img.read_region((0, 0), (64, 64))\n")
    env = dict(os.environ, PYTHONPATH=PYTHON_PACKAGE_DIR,
               TESSERA_TEST_CACHE_STALL="locked:1:" + pidfile)
    helper = subprocess.Popen([sys.executable, "-c", code, name, slide], env=env,
                              stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (os.path.exists(pidfile) and open(pidfile).read().endswith("\n")):
            assert helper.poll() is None, "the helper exited (%s)" % helper.returncode
            assert time.monotonic() < deadline, "the helper never stalled"
            time.sleep(0.01)
        yield name, slide, helper.pid
    finally:
        if helper.poll() is None:
            helper.send_signal(signal.SIGKILL)
        helper.wait()
        if os.path.exists("/dev/shm/" + name):
            T.shared_cache_remove(name, force=True)


@needs_test_hooks
@pytest.mark.parametrize("what", ["stats", "close", "dealloc"])
def test_waits_in_the_library_let_other_threads_run(stalled_helper, what):
    name, slide, pid = stalled_helper
    env = dict(os.environ, PYTHONPATH=PYTHON_PACKAGE_DIR)
    env.pop("TESSERA_TEST_CACHE_STALL", None)
    try:
        r = subprocess.run([sys.executable, "-c", SCRIPT, name, slide, str(pid), what],
                           capture_output=True, text=True, env=env, timeout=TIMEOUT,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError("%s waited in the library with the GIL held: the thread that "
                             "would end the wait never ran" % what) from None
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3"], ("heartbeats during the wait", r.stdout, r.stderr)
