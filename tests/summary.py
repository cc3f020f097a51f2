"""Prints one 'N passed, N failed' line over the meson test logs and pytest's JUnit XML.

Exits non-zero when anything failed or when a log is missing (a runner that did not run
must not look like a pass)."""
import json
import sys
import xml.etree.ElementTree as ET


def meson_counts(path):
    passed = failed = 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            result = json.loads(line).get("result")
            if result == "OK":
                passed += 1
            else:
                failed += 1
    return passed, failed


def junit_counts(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = sum(int(s.get("tests", 0)) for s in suites)
    bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    # A skipped test is not a pass: count it as a failure.
    return total - bad - skipped, bad + skipped


def main(paths):
    passed = failed = 0
    for path in paths:
        try:
            p, f = junit_counts(path) if path.endswith(".xml") else meson_counts(path)
        except (OSError, ValueError, ET.ParseError) as e:
            print(f"summary: cannot read {path}: {e}", file=sys.stderr)
            p, f = 0, 1
        passed += p
        failed += f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
