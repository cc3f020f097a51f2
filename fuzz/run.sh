#!/usr/bin/env bash
# fuzz/run.sh TARGET SECONDS [-- libFuzzer arguments]
#
# Builds the libFuzzer program of TARGET (fuzz_open, fuzz_codec, fuzz_xml, fuzz_vendor,
# fuzz_mirax) with
# clang, -fsanitize=fuzzer,address,undefined, in the Meson build folder build-fuzz/ (set up
# once, rebuilt by ninja whenever a source changed), makes its seeds, and fuzzes it for
# SECONDS in one process. New inputs go to build-fuzz/corpus/TARGET/ (kept between runs, the
# seeds beside it are only read); crashes, leaks, timeouts and out-of-memory inputs go to
# build-fuzz/findings/TARGET/, and libFuzzer's output to a log there. Prints the executions
# and any finding; exits 1 on a finding.
#
# Seeds: fuzz_open, slides written by vips and tifffile, `tessera sample`, the test data under
# 2 MB and tests/crashers; fuzz_codec, the first tiles of those slides (fuzz/seeds.py);
# fuzz_xml and fuzz_vendor, fuzz/corpus/xml and fuzz/corpus/vendor (with a dictionary);
# fuzz_mirax, fuzz/corpus/mirax.
# Environment: TESSERA_TESTDATA (default ../shared/testdata).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: fuzz/run.sh fuzz_open|fuzz_codec|fuzz_xml|fuzz_vendor|fuzz_mirax SECONDS [-- libFuzzer args]" >&2
  exit 2
}
[ $# -ge 2 ] || usage
target=$1 seconds=$2
shift 2
[ "${1:-}" = "--" ] && shift
case "$target" in fuzz_open | fuzz_codec | fuzz_xml | fuzz_vendor | fuzz_mirax) ;; *) usage ;; esac
[[ "$seconds" =~ ^[0-9]+$ ]] || usage

B=build-fuzz
if [ ! -f $B/build.ninja ]; then
  CC=clang meson setup $B -Dfuzzing=true -Dpython=disabled -Db_sanitize=address,undefined \
    -Db_lundef=false --buildtype=plain \
    -Dc_args="-g -O1 -fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined" >/dev/null
fi
ninja -C $B "fuzz/$target" cli/tessera >$B/ninja.log 2>&1 || {
  cat $B/ninja.log >&2
  exit 1
}

corpus=$B/corpus/$target findings=$B/findings/$target
mkdir -p "$corpus" "$findings"
args=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024)
case "$target" in
  fuzz_open | fuzz_codec)
    seeds=$B/seeds/$target
    if [ ! -f "$seeds/.done" ]; then
      rm -rf "$seeds"
      /usr/bin/python3 fuzz/seeds.py "$target" "$seeds" --cli $B/cli/tessera
      touch "$seeds/.done"
    fi
    dirs=("$seeds")
    if [ "$target" = fuzz_open ]; then
      dirs+=(tests/crashers)
      args+=(-max_len=262144)
    fi
    ;;
  fuzz_xml) dirs=(fuzz/corpus/xml) args+=(-dict=fuzz/xml.dict) ;;
  fuzz_vendor) dirs=(fuzz/corpus/vendor) args+=(-dict=fuzz/vendor.dict) ;;
  fuzz_mirax) dirs=(fuzz/corpus/mirax) ;;
esac

log=$findings/run-$(date +%Y%m%d-%H%M%S).log
before=$(ls "$findings" | grep -v '^run-' | sort || true)
echo "fuzzing $target for $seconds s (log: $log)"
rc=0
"$B/fuzz/$target" -max_total_time="$seconds" -print_final_stats=1 "${args[@]}" \
  -artifact_prefix="$findings/" "$@" "$corpus" "${dirs[@]}" >"$log" 2>&1 || rc=$?

execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
[ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1 || true)
new=$(comm -13 <(echo "$before") <(ls "$findings" | grep -v '^run-' | sort || true) | grep . || true)
echo "$target: ${execs:-0} executions in $seconds s; ${cov:-no coverage line}; corpus" \
  "$(ls "$corpus" | wc -l) inputs"
if [ "$rc" -ne 0 ] || [ -n "$new" ]; then
  echo "$target: FINDING (libFuzzer exit $rc)" >&2
  grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error:|.*Test unit written to)' "$log" | head -20 >&2 || true
  for f in $new; do echo "  $findings/$f" >&2; done
  exit 1
fi
echo "$target: no finding"
