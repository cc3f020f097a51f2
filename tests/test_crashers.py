"""Every input in tests/crashers/ (see its README) still gives its expected exit code and
message, within a 512 MiB address space and 30 seconds, through the `tessera` command and,
when TESSERA_CLI_ASAN is set, through its sanitized build too."""

import os
import resource
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, "crashers")


def entries():
    with open(os.path.join(DIR, "expected.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [(name, int(code), text) for name, code, text in rows]


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))


@pytest.mark.parametrize("name,code,text", entries())
def test_crasher(cli, tmp_path, name, code, text):
    path = os.path.join(DIR, name)
    assert os.path.isfile(path), path
    out = str(tmp_path / "out.png")
    r = subprocess.run([cli, "read", path, "--location", "0,0", "--size", "300,300",
                        "--output", out], capture_output=True, text=True, timeout=30,
                       preexec_fn=limit_memory)
    assert r.returncode == code, (r.returncode, r.stderr)
    if text != "-":
        assert text in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == (0 if code == 0 else 1), r.stderr


ASAN = os.environ.get("TESSERA_CLI_ASAN", "")


# Defined only when a sanitized command is given, so nothing is reported as skipped.
if ASAN:
    @pytest.mark.parametrize("name,code,text", entries())
    def test_crasher_sanitized(tmp_path, name, code, text):
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=99",
                   UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")
        r = subprocess.run([ASAN, "read", os.path.join(DIR, name), "--location", "0,0", "--size",
                            "300,300", "--output", str(tmp_path / "out.png")],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == code, (r.returncode, r.stderr[-3000:])
        assert "Sanitizer" not in r.stderr, r.stderr[-3000:]
