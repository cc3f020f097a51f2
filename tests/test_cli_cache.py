"""`tessera cache list | remove`: the shared-memory tile caches of the machine.

Segments are made by a helper process that loads the library with ctypes (its own few
declarations, written here from include/tessera.h), configures a named shared cache and reads
regions on request, so the test knows exactly which tiles the segment holds: a region of the
generic slide (256 x 256 JPEG tiles) touches a number of tiles counted here from its corners.
A helper killed with SIGKILL leaves its segment behind with no live user ("stale").

`list` is compared with those counts and with /dev/shm itself; `remove` must remove the file
from /dev/shm, refuse one with a live user unless --force, and fail with exit status 1 and one
line on stderr for a name that is not there or not tessera's. Every segment a test makes has a
name of its own (the test process id and a random part), so other users of the machine do not
disturb the tests, and each is removed at the end whatever happened.
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import uuid

import pytest

import tessera_ctypes

TIMEOUT = 60
GENERIC = "jpeg-t256-pyr"      # generic TIFF, JPEG 256 x 256 tiles, 2048 x 1536
SHM = "/dev/shm"
TILE = 256
INFO_FIELDS = {"name", "state", "ready", "users", "segment_bytes", "memory_capacity",
               "item_capacity", "items", "bytes", "hits", "misses", "evictions"}


# --- running the command ------------------------------------------------------------------

def run(cli, args, timeout=TIMEOUT, prefix=()):
    full = list(prefix) + [cli] + [str(a) for a in args]
    try:
        return subprocess.run(full, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError("%s hung" % " ".join(full))


def describe(args, r):
    return "tessera %s -> exit %d, stdout %r, stderr %r" % (
        " ".join(map(str, args)), r.returncode, r.stdout.decode(errors="replace")[-1500:],
        r.stderr.decode(errors="replace")[-1500:])


def one_error_line(args, r, status=1):
    """The command failed with `status`, printed nothing on stdout and one line on stderr."""
    desc = describe(args, r)
    assert r.returncode == status, desc
    assert r.stdout == b"", desc
    lines = r.stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1 and lines[0].startswith("tessera: "), "one line on stderr: " + desc
    return lines[0]


def list_json(cli):
    args = ["cache", "list", "--json"]
    r = run(cli, args)
    assert r.returncode == 0 and r.stderr == b"", describe(args, r)
    doc = json.loads(r.stdout.decode("utf-8"))
    assert isinstance(doc, list), doc
    for entry in doc:
        assert set(entry) == INFO_FIELDS, sorted(entry)
    return doc


def listed(cli, name):
    """The `list --json` entry of /name, or None."""
    found = [e for e in list_json(cli) if e["name"] == "/" + name]
    assert len(found) <= 1, found
    return found[0] if found else None


def list_table_row(cli, name):
    """The columns of /name's row in the `list` table (name, state, capacity MiB, used MiB,
    items, hits, misses), or None."""
    args = ["cache", "list"]
    r = run(cli, args)
    assert r.returncode == 0 and r.stderr == b"", describe(args, r)
    lines = r.stdout.decode("utf-8").splitlines()
    if lines == ["no tessera shared-memory caches"]:
        return None
    assert lines and re.match(r"NAME\s+STATE\s+CAPACITY MiB\s+USED MiB\s+ITEMS\s+HITS\s+MISSES$",
                              lines[0]), lines[:2]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]
    mine = [row for row in rows if row[0] == "/" + name]
    assert len(mine) <= 1, lines
    return mine[0] if mine else None


# --- segments made by a helper process ----------------------------------------------------

HELPER = r'''
import ctypes, sys

sys.path.insert(0, sys.argv[5])
from tessera_ctypes import CacheOptions

lib = ctypes.CDLL(sys.argv[1])
name, mib, slide_path = sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4].encode()

lib.tessera_error_message.restype = ctypes.c_char_p
lib.tessera_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
lib.tessera_read_region.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                    ctypes.c_int32, ctypes.c_int64, ctypes.c_int64,
                                    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


def say(status):
    message = lib.tessera_error_message() if status else b""
    print(status, (message or b"").decode(errors="replace"), flush=True)


o = CacheOptions()
o.struct_size = ctypes.sizeof(o)
lib.tessera_cache_options_init_sized(ctypes.byref(o), ctypes.sizeof(o))
o.type, o.memory_capacity_mib, o.record_stats, o.name = 2, mib, 1, name
status = lib.tessera_cache_configure(ctypes.byref(o))
if status == 0:
    slide = ctypes.c_void_p()
    status = lib.tessera_open(slide_path, ctypes.byref(slide))
say(status)
for line in sys.stdin:
    words = line.split()
    if words[0] == "read":
        x, y, w, h = map(int, words[1:])
        buf = ctypes.create_string_buffer(w * h * 3)
        say(lib.tessera_read_region(slide, x, y, 0, w, h, None, buf, w * h * 3))
    else:
        break
'''


class Helper:
    """A process using the shared cache `name`; it reads regions of level 0 when asked."""

    def __init__(self, name, slide, mib=16):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HELPER, tessera_ctypes.lib_path(), name, str(mib), slide,
             os.path.dirname(os.path.abspath(tessera_ctypes.__file__))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._expect_ok("configure %s" % name)

    def _expect_ok(self, what):
        line = self.proc.stdout.readline()
        assert line.split(" ", 1)[0] == "0", "helper: %s: %r %r" % (
            what, line, self.proc.stderr.read() if not line else "")

    def read(self, x, y, w, h):
        self.proc.stdin.write("read %d %d %d %d\n" % (x, y, w, h))
        self.proc.stdin.flush()
        self._expect_ok("read %d,%d %dx%d" % (x, y, w, h))

    def exit(self):
        """Leaves normally (its segment is let go when the process exits)."""
        self.proc.stdin.write("exit\n")
        self.proc.stdin.close()
        assert self.proc.wait(TIMEOUT) == 0, self.proc.stderr.read()

    def kill(self):
        """SIGKILL, then reaped: a zombie would still count as a live user."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def close(self):
        if self.proc.poll() is None:
            self.kill()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f and not f.closed:
                f.close()


def tiles_of(x, y, w, h):
    """The 256 x 256 tiles of the 2048 x 1536 level 0 a region touches (clipped to it)."""
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, 2048), min(y + h, 1536)
    if x1 <= x0 or y1 <= y0:
        return set()
    return {(tx, ty) for ty in range(y0 // TILE, (y1 - 1) // TILE + 1)
            for tx in range(x0 // TILE, (x1 - 1) // TILE + 1)}


def covered(x, y, w, h):
    """The tiles of tiles_of(x, y, w, h) that the region covers three quarters of or more,
    which a read caches at its first miss."""
    out = set()
    for tx, ty in tiles_of(x, y, w, h):
        ow = min(x + w, (tx + 1) * TILE, 2048) - max(x, tx * TILE)
        oh = min(y + h, (ty + 1) * TILE, 1536) - max(y, ty * TILE)
        if ow * oh * 4 >= 3 * TILE * TILE:
            out.add((tx, ty))
    return out


@pytest.fixture
def segments(slides):
    """Makes helpers and unique segment names; at the end stops the helpers and removes every
    /dev/shm file under those names."""
    made = {"names": [], "helpers": []}
    slide = slides.path(GENERIC)

    class Segments:
        def name(self):
            n = "tessera-clitest-%d-%s" % (os.getpid(), uuid.uuid4().hex[:10])
            made["names"].append(n)
            return n

        def helper(self, name=None, mib=16):
            h = Helper(name or self.name(), slide, mib)
            made["helpers"].append(h)
            return h

    yield Segments()
    for h in made["helpers"]:
        h.close()
    for n in made["names"]:
        try:
            os.unlink(os.path.join(SHM, n))
        except FileNotFoundError:
            pass


def shm_exists(name):
    return os.path.exists(os.path.join(SHM, name))


# --- help and usage -----------------------------------------------------------------------

def test_help(cli):
    for args in (["cache", "--help"], ["cache", "-h"], ["help", "cache"], ["cache", "list", "-h"],
                 ["cache", "remove", "x", "--help"]):
        r = run(cli, args)
        assert r.returncode == 0 and r.stderr == b"", describe(args, r)
        text = r.stdout.decode()
        assert text.startswith("Usage: tessera cache list"), text[:200]
        for word in ("remove NAME", "--json", "--force", "--help", "stale", "in use",
                     "not ready"):
            assert word in text, (word, args)
        for short, long_ in (("-j", "--json"), ("-f", "--force"), ("-h", "--help")):
            assert re.search(r"%s, %s\b" % (re.escape(short), re.escape(long_)), text), short
    r = run(cli, ["--help"])
    assert re.search(r"^  cache\s+\S", r.stdout.decode(), re.M), r.stdout.decode()


USAGE_ERRORS = {
    "no-subcommand": ([], ["list or remove"]),
    "unknown-subcommand": (["purge"], ["purge"]),
    "list-with-name": (["list", "x"], ["x"]),
    "list-force": (["list", "--force"], ["--force"]),
    "remove-without-name": (["remove"], ["NAME"]),
    "remove-json": (["remove", "x", "--json"], ["--json"]),
    "unknown-option": (["list", "--all"], ["--all"]),
    "flag-with-value": (["list", "--json=yes"], ["--json"]),
}


@pytest.mark.parametrize("which", sorted(USAGE_ERRORS))
def test_usage_errors(cli, which):
    rest, texts = USAGE_ERRORS[which]
    args = ["cache"] + rest
    line = one_error_line(args, run(cli, args), status=2)
    assert "tessera cache --help" in line, line
    for t in texts:
        assert t in line, (t, line)


# --- list ---------------------------------------------------------------------------------

def _private_shm_prefix():
    """A command prefix that runs its command with an empty /dev/shm of its own (a new user
    and mount namespace with a fresh tmpfs there), or None where that is not allowed."""
    prefix = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs none /dev/shm && exec "$@"', "sh"]
    try:
        r = subprocess.run(prefix + ["ls", "-A", SHM], capture_output=True, timeout=TIMEOUT)
    except OSError:
        return None
    return prefix if r.returncode == 0 and r.stdout == b"" else None


def test_list_none(cli):
    """With no tessera segment (a private, empty /dev/shm where the system allows one; else
    the machine's, which must then hold none) the table says so and the JSON is []."""
    prefix = _private_shm_prefix()
    if prefix is None:
        assert list_json(cli) == [], "no private /dev/shm, and the machine's holds segments"
        prefix = []
    for args, expected in ((["cache", "list"], b"no tessera shared-memory caches\n"),
                           (["cache", "list", "--json"], b"[]\n")):
        r = run(cli, args, prefix=prefix)
        assert (r.returncode, r.stdout, r.stderr) == (0, expected, b""), describe(args, r)


def test_list_in_use(cli, segments):
    """A live helper's segment: one user, the tiles its reads touched (each missed twice, the
    second time cached, then found again; a tile a region covers three quarters of is cached
    at its first miss and found twice), its capacity; the table shows the same numbers; when
    the helper exits the segment is gone from /dev/shm and from the list."""
    h = segments.helper(mib=16)
    regions = [(0, 0, 600, 300), (1900, 1400, 500, 500), (-100, 700, 300, 10)]
    tiles, whole = set(), set()
    for reg in regions:
        tiles |= tiles_of(*reg)
        whole |= covered(*reg)
    assert len(tiles) == 6 + 1 + 1 and len(whole) == 2, (tiles, whole)
    for _ in range(2):                    # missed twice: the second time cached
        for reg in regions:
            h.read(*reg)
    for reg in regions:
        h.read(*reg)                      # every tile again: one hit each
    assert shm_exists(h.name)
    e = listed(cli, h.name)
    assert e is not None, list_json(cli)
    assert (e["state"], e["ready"], e["users"]) == ("in_use", True, 1), e
    assert e["memory_capacity"] == 16 << 20 and e["item_capacity"] == 0, e
    assert (e["items"], e["misses"], e["hits"], e["evictions"]) == (
        len(tiles), 2 * len(tiles) - len(whole), len(tiles) + len(whole), 0), e
    assert 0 < e["bytes"] <= e["memory_capacity"] < e["segment_bytes"], e
    assert e["segment_bytes"] == os.stat(os.path.join(SHM, h.name)).st_size, e
    row = list_table_row(cli, h.name)
    assert row == ["/" + h.name, "in use: 1 user", "16.0", "%.1f" % (e["bytes"] / 2 ** 20),
                   str(len(tiles)), str(len(tiles) + len(whole)),
                   str(2 * len(tiles) - len(whole))], row
    # a second process attached to the same name is a second user
    h2 = segments.helper(name=h.name, mib=64)
    h2.read(0, 0, 256, 256)
    e = listed(cli, h.name)
    assert (e["users"], e["memory_capacity"], e["hits"]) == (
        2, 16 << 20, len(tiles) + len(whole) + 1), e
    assert list_table_row(cli, h.name)[1] == "in use: 2 users"
    h2.exit()
    assert listed(cli, h.name)["users"] == 1
    h.exit()
    assert listed(cli, h.name) is None and list_table_row(cli, h.name) is None
    assert not shm_exists(h.name)


# --- remove -------------------------------------------------------------------------------

def test_remove_stale(cli, segments):
    """A helper killed with SIGKILL leaves its segment, listed as stale; remove (by the bare
    name) deletes it from /dev/shm and says what it removed; a second remove fails."""
    h = segments.helper()
    for _ in range(2):                    # missed twice: cached
        h.read(0, 0, 512, 256)
    h.kill()
    assert shm_exists(h.name)
    e = listed(cli, h.name)
    assert e is not None and (e["state"], e["users"], e["items"]) == ("stale", 0, 2), e
    assert list_table_row(cli, h.name)[1] == "stale: no live users"
    args = ["cache", "remove", h.name]
    r = run(cli, args)
    assert r.returncode == 0 and r.stderr == b"", describe(args, r)
    assert r.stdout.decode().splitlines() == [
        "removed /%s (stale: no live users; 2 tiles, %.1f of 16.0 MiB)" % (
            h.name, e["bytes"] / 2 ** 20)], describe(args, r)
    assert not shm_exists(h.name)
    assert listed(cli, h.name) is None
    line = one_error_line(args, run(cli, args))
    assert h.name in line, line


def test_remove_refuses_live_users_without_force(cli, segments):
    h = segments.helper()
    for _ in range(2):                    # missed twice: cached
        h.read(300, 300, 10, 10)
    args = ["cache", "remove", "/" + h.name]
    line = one_error_line(args, run(cli, args))
    assert h.name in line and "force" in line, line
    assert shm_exists(h.name) and listed(cli, h.name)["users"] == 1
    args = ["cache", "remove", "/" + h.name, "--force"]
    r = run(cli, args)
    assert r.returncode == 0 and r.stderr == b"", describe(args, r)
    assert r.stdout.decode().startswith("removed /%s (in use: 1 user; 1 tile," % h.name), (
        describe(args, r))
    assert not shm_exists(h.name) and listed(cli, h.name) is None
    h.read(300, 300, 10, 10)              # the user keeps its cache until it lets go
    h.exit()


def test_remove_missing_and_foreign(cli, segments):
    """A name with no segment, and a /dev/shm file that is not a tessera cache (never listed,
    refused even with --force, left in place), each fail with exit 1 and one line."""
    missing = segments.name()
    for extra in ([], ["--force"]):
        args = ["cache", "remove", missing] + extra
        line = one_error_line(args, run(cli, args))
        assert missing in line, line
    for content in (b"", b"not a tessera cache\n" * 500, bytes(1 << 16)):
        foreign = segments.name()
        path = os.path.join(SHM, foreign)
        with open(path, "wb") as f:
            f.write(content)
        assert listed(cli, foreign) is None
        for extra in ([], ["--force"]):
            args = ["cache", "remove", foreign] + extra
            line = one_error_line(args, run(cli, args))
            assert foreign in line, line
            with open(path, "rb") as f:
                assert f.read() == content, "the foreign file was changed"


def test_remove_several(cli, segments):
    """Two stale segments and a missing name: both are removed, the missing one is the one
    line on stderr, and the exit status says something failed."""
    stale = []
    for _ in range(2):
        h = segments.helper()
        h.read(0, 0, 1, 1)
        h.kill()
        stale.append(h.name)
    missing = segments.name()
    args = ["cache", "remove", stale[0], missing, "/" + stale[1]]
    r = run(cli, args)
    desc = describe(args, r)
    assert r.returncode == 1, desc
    out = r.stdout.decode().splitlines()
    assert [line.split(" (")[0] for line in out] == ["removed /" + n for n in stale], desc
    err = r.stderr.decode().splitlines()
    assert len(err) == 1 and missing in err[0], desc
    assert not any(shm_exists(n) for n in stale)


# --- hostile files in /dev/shm ------------------------------------------------------------

# Offsets in a tessera segment's header (src/cache/shared.c, x86-64 glibc): its users lock is
# a pthread_mutex_t at 80, whose robust-list links (__prev, __next) lie 24 and 32 bytes in.
USERS_LOCK_LIST = (80 + 24, 80 + 32)

# Takes every other user slot's lock (so `remove` sees live users and takes a while counting
# them), then writes a bad pointer over the users lock's list links, over and over.
RACER = r"""
import fcntl, mmap, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for slot in range(0, 1024, 2):
    fcntl.fcntl(fd, 37, struct.pack("hh4xqqi4x", fcntl.F_WRLCK, 0, slot, 1, 0))  # F_OFD_SETLK
m = mmap.mmap(fd, 4096)
offsets = [int(v) for v in sys.argv[2:]]
print("racing", flush=True)
while True:
    for at in offsets:
        struct.pack_into("<Q", m, at, 0x10)
"""


@pytest.mark.parametrize("how", ["open to others", "of another user"])
def test_remove_leaves_the_lock_of_an_untrusted_segment_alone(cli, segments, how):
    """A robust mutex links itself into its locker's list of held mutexes through pointers
    kept in the mutex: whoever can write a segment that `remove` locks (anyone, in one open to
    others; its owner, in another user's) can make the remover's unlock write where they
    choose. With a process rewriting those pointers all along, `remove` refuses the segment in
    use (before, it crashed: SIGSEGV), and removes it with --force, without locking it."""
    if how == "of another user" and os.geteuid() != 0:
        pytest.skip("needs root to make a segment of another user")
    h = segments.helper()
    h.read(0, 0, 1, 1)
    h.kill()
    path = os.path.join(SHM, h.name)
    if how == "open to others":
        os.chmod(path, 0o666)
    else:
        os.chown(path, 65534, 65534)
    racer = subprocess.Popen([sys.executable, "-c", RACER, path] + [str(o) for o in USERS_LOCK_LIST],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert racer.stdout.readline() == "racing\n"
        args = ["cache", "remove", h.name]
        for _ in range(20):
            line = one_error_line(args, run(cli, args))
            assert h.name in line and "force" in line, line
        args.append("--force")
        r = run(cli, args)
        assert r.returncode == 0 and r.stderr == b"", describe(args, r)
        assert not shm_exists(h.name)
    finally:
        racer.kill()
        racer.wait(TIMEOUT)
        racer.stdout.close()


def shm_layout(hdr, shard, entry, nshards, chunks, entries, buckets):
    """A segment's size for this geometry, as src/cache/shared.c lays it out."""
    def up(v, a):
        return (v + a - 1) // a * a
    off = up(hdr, 64) + up(shard, 64) * nshards
    for _ in range(nshards):
        off = up(off, 64) + entries * entry
        off = up(off, 64) + buckets * 4
        off = up(off, 64) + chunks * 4
        off = up(off, 64) + chunks * 8
        off = up(off, 4096) + chunks * (64 << 10)
    return off


def test_list_and_remove_survive_hostile_files(cli, segments):
    """Whatever lies in /dev/shm under a name tessera could use (a FIFO, a directory, a link
    to /dev/zero, tessera's magic over garbage, a header whose geometry claims petabytes over a
    sparse file of just that size), `list` and `list --json` finish and describe what is
    tessera's, and `remove` of each exits 0 or 1 with one line, never crashing or hanging."""
    h = segments.helper()
    h.kill()
    with open(os.path.join(SHM, h.name), "rb") as f:
        real = bytearray(f.read(8192))
    header_bytes, = struct.unpack_from("<I", real, 12)
    shard_struct, entry_struct = struct.unpack_from("<II", real, 44)
    made = []

    def name():
        n = segments.name()
        made.append(n)
        return os.path.join(SHM, n)

    os.mkfifo(name(), 0o600)
    directory = name()
    os.mkdir(directory, 0o700)
    os.symlink("/dev/zero", name())
    rng = __import__("random").Random(5)
    for size in (8, 64, header_bytes, header_bytes + 4096):
        junk = bytearray(rng.randbytes(size))
        junk[:8] = real[:8]                          # the magic
        if size >= 20:
            junk[16:20] = struct.pack("<I", 1)       # ready
        with open(name(), "wb") as f:
            f.write(junk)
    geometry = (16, 2 ** 32 - 2, 2 ** 32 - 2, 2 ** 31)
    huge = bytearray(real[:header_bytes])
    struct.pack_into("<IIIII", huge, 24, geometry[0], 64 << 10, *geometry[1:])
    total = shm_layout(header_bytes, shard_struct, entry_struct, *geometry)
    struct.pack_into("<QQQ", huge, 56, total, 2 ** 60, 0)
    path = name()
    with open(path, "wb") as f:
        f.write(huge)
    try:
        os.truncate(path, total)
    except OSError:
        os.truncate(path, header_bytes)  # a tmpfs that refuses: still a header over garbage
    docs = list_json(cli)
    ours = {e["name"]: e for e in docs if e["name"][1:] in made}
    assert "/" + os.path.basename(path) in ours, ours
    for args in (["cache", "list"],):
        r = run(cli, args)
        assert r.returncode == 0 and r.stderr == b"", describe(args, r)
    for n in made:
        args = ["cache", "remove", n, "--force"]
        r = run(cli, args)
        assert r.returncode in (0, 1), describe(args, r)
        if r.returncode == 1:
            one_error_line(args, r)
    os.rmdir(directory)  # the fixture removes files only
