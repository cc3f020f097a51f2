"""What openslide-python reads from slide files over Debian's OpenSlide 3.4.1 and over
tessera's libopenslide.so.0 (openslide_reader.py, run once with each library in a process of
its own), for the vendor tests that check the drop-in on the slides they write."""

import os
import pickle
import subprocess

import tessera_ctypes as T

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("TESSERA_BUILD_DIR",
                       os.path.dirname(os.path.dirname(os.path.abspath(T.lib_path()))))
SO0 = os.path.join(BUILD, "openslide", "so0", "libopenslide.so.0")


def reads(paths, out_dir):
    """{path: (OpenSlide's reading, tessera's)}; each a dict of properties, levels,
    associated images and regions (keyed (dims, level, x, y, w, h)), or {"error": ...}."""
    assert os.path.exists(SO0), SO0
    runs = {}
    for which, env in (("openslide", {}), ("tessera", {"LD_LIBRARY_PATH": os.path.dirname(SO0)})):
        pickled = os.path.join(str(out_dir), which + ".pickle")
        subprocess.run(["/usr/bin/python3", os.path.join(HERE, "openslide_reader.py"), pickled]
                       + list(paths), env=dict(os.environ, **env), check=True,
                       capture_output=True, timeout=600)
        with open(pickled, "rb") as f:
            runs[which] = pickle.load(f)
    assert runs["openslide"]["version"] != runs["tessera"]["version"]
    out = {p: (runs["openslide"]["slides"][p], runs["tessera"]["slides"][p]) for p in paths}
    for p, (real, ours) in out.items():
        # openslide_detect_vendor names the vendor OpenSlide names, wherever both open the file
        if "vendor" in real and "vendor" in ours:
            assert ours["vendor"] == real["vendor"], (p, real["vendor"], ours["vendor"])
    return out


def whole_pixel(real, level, x, y):
    """Whether a region starts on a pixel of its level in both coordinates (or left of or
    above the slide by a whole number of them)."""
    ds = real["levels"][level][1]
    return all(v / ds == int(v / ds) for v in (x, y))


def check_reads_equal(got, compare, at_least):
    """got as reads() gives it: every slide opened by both libraries with the same levels,
    every property, the same associated images, and the same bytes in each region
    compare(real, key) picks (at least at_least of them per slide)."""
    for path, (real, ours) in got.items():
        assert "error" not in real and "error" not in ours, (real.get("error"), ours.get("error"))
        assert ours["levels"] == real["levels"], path
        differ = sorted(k for k in set(real["properties"]) | set(ours["properties"])
                        if real["properties"].get(k) != ours["properties"].get(k))
        assert not differ, ["%s: OpenSlide %r, tessera %r" % (
            k, real["properties"].get(k), ours["properties"].get(k)) for k in differ]
        assert ours["associated"] == real["associated"], path
        compared = 0
        for key, want in real["regions"].items():
            if compare(real, key):
                assert ours["regions"][key] == want, (path, key)
                compared += 1
        assert compared >= at_least, (path, compared)
