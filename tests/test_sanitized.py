"""Every generated fixture read by the C region test (tests/c/test_read.c) built with
AddressSanitizer + UndefinedBehaviorSanitizer: whole levels, random regions with every
channel/fill/stride option, and reads from four threads at once, compared with the whole-level
read. The pixel values themselves are checked against OpenSlide and libvips in
test_differential.py; this catches memory and undefined-behaviour errors on the same files.

Generated only when TESSERA_TEST_READ_ASAN names the sanitized test_read (./dev.sh test sets it).
"""

import os
import subprocess

import pytest

import wsi_fixtures as F

EXE = os.environ.get("TESSERA_TEST_READ_ASAN", "")
SPECS = [s.name for s in F.all_specs() if s.kind != "testdata"]
ENV = dict(os.environ,
           ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=99",
           UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")


if EXE:  # defined only then, so nothing is reported as skipped
    @pytest.mark.parametrize("name", SPECS)
    def test_sanitized_reads(slides, name):
        path = slides.path(name)
        r = subprocess.run([EXE, "-", path], capture_output=True, text=True, env=ENV, timeout=300)
        report = (r.stdout + r.stderr)[-4000:]
        assert r.returncode == 0, "exit %d on %s:\n%s" % (r.returncode, name, report)
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, report
        assert " 0 failed" in r.stdout, report
