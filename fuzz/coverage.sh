#!/usr/bin/env bash
# fuzz/coverage.sh [TARGET...]
#
# Line and function coverage of the library's sources (src/) reached by each fuzz target's
# inputs: builds the plain replay programs with clang's source-based coverage
# (-fprofile-instr-generate -fcoverage-mapping) in the Meson build folder build-cov/, replays
# the working corpus fuzz/run.sh left in build-fuzz/corpus/TARGET plus the target's seeds,
# merges the profiles with llvm-profdata-14 and prints llvm-cov-14's report for the files of
# src/ linked into the target, then a one-line summary per target. Default: all four targets.
set -euo pipefail
cd "$(dirname "$0")/.."

TESTDATA=${TESSERA_TESTDATA:-../shared/testdata}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_open fuzz_codec fuzz_xml fuzz_vendor fuzz_mirax)

B=build-cov
if [ ! -f $B/build.ninja ]; then
  # LLVM_PROFILE_FILE: meson runs instrumented test programs while it sets up
  CC=clang LLVM_PROFILE_FILE=/dev/null meson setup $B -Dpython=disabled --buildtype=plain \
    -Dc_args="-g -O1 -fprofile-instr-generate -fcoverage-mapping" \
    -Dc_link_args="-fprofile-instr-generate" >/dev/null
fi
ninja -C $B cli/tessera $(printf 'fuzz/%s_replay ' "${targets[@]}") >$B/ninja.log 2>&1 || {
  cat $B/ninja.log >&2
  exit 1
}

summary=()
for t in "${targets[@]}"; do
  case "$t" in
    fuzz_open | fuzz_codec)
      seeds=build-fuzz/seeds/$t
      if [ ! -f "$seeds/.done" ]; then
        rm -rf "$seeds"
        /usr/bin/python3 fuzz/seeds.py "$t" "$seeds" --cli $B/cli/tessera >/dev/null
        touch "$seeds/.done"
      fi
      inputs=("$seeds")
      [ "$t" = fuzz_open ] && inputs+=(tests/crashers "$TESTDATA")
      ;;
    fuzz_xml) inputs=(fuzz/corpus/xml) ;;
    fuzz_vendor) inputs=(fuzz/corpus/vendor) ;;
    fuzz_mirax) inputs=(fuzz/corpus/mirax) ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  [ -d "build-fuzz/corpus/$t" ] && inputs+=("build-fuzz/corpus/$t")
  prof=$B/profiles/$t
  rm -rf "$prof" && mkdir -p "$prof"
  LLVM_PROFILE_FILE="$prof/%p.profraw" "$B/fuzz/${t}_replay" "${inputs[@]}" >"$prof/replay.log"
  llvm-profdata-14 merge -sparse "$prof"/*.profraw -o "$prof/merged.profdata"
  echo "== $t: $(cat "$prof/replay.log") from ${inputs[*]}"
  report=$(llvm-cov-14 report "$B/fuzz/${t}_replay" -instr-profile="$prof/merged.profdata" \
    -ignore-filename-regex='(^|/)(fuzz|usr)/')
  echo "$report"
  # Columns: file, regions, missed, cover, functions, missed, executed, lines, missed, cover...
  # Linked in is every file the target's code can call; reached, those it ran a line of.
  summary+=("$t: $(echo "$report" | awk '
    $1 ~ /\.[ch]$/ && $8 > 0 { n++; l += $8; m += $9; if ($8 > $9) { r++; rl += $8; rm += $9 } }
    $1 == "TOTAL" { f = $5; fm = $6 }
    END { printf "lines %.1f%% (%d/%d) of the %d files of src/ it reaches, %.1f%% (%d/%d) of the %d linked in; functions %d/%d",
          100 * (rl - rm) / rl, rl - rm, rl, r, 100 * (l - m) / l, l - m, l, n, f - fm, f }')")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
