#!/bin/bash
# Random patches with and without a per-process cache, in turns, for builds side by side (the
# issue 15 target: with the cache >= 0.95x the speed without). Each round runs, for each build
# in turn, its uncached run then its cached one. Prints one line per build and round:
#   round build nocache_seconds cached_seconds hits misses
# then the medians per build (bench/random_rounds.sh ROUNDS SLIDE NAME=CLI...).
# The slide is `tessera sample big.tiff --width 40000 --height 32000` (215 MiB).
rounds=$1 slide=$2
shift 2
[ -n "$rounds" ] && [ -f "$slide" ] && [ $# -gt 0 ] || {
  echo "usage: $0 ROUNDS SLIDE NAME=CLI..." >&2
  exit 2
}
args="$slide --layout random --count 4000 --size 224,224 --batch-size 32 --workers 2 --seed 5"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((r = 1; r <= rounds; r++)); do
  for b in "$@"; do
    name=${b%%=*} cli=${b#*=}
    plain=$("$cli" bench $args --cache nocache | awk '/^seconds:/{print $2}')
    cached=$("$cli" bench $args --cache per_process:1024 |
      awk '/^seconds:/{s=$2} /^cache:/{h=$5; m=$7} END{print s, h, m}')
    echo "$r $name $plain $cached" | tee -a "$out"
  done
done
/usr/bin/python3 - "$out" <<'PY'
import collections, statistics as st, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, name, plain, cached, hits, misses = line.split()
    runs[name].append((float(plain), float(cached), int(hits), int(misses)))
for name, v in runs.items():
    plain = st.median(p for p, *_ in v)
    cached = st.median(c for _, c, *_ in v)
    per = [p / c for p, c, *_ in v]
    print("%s: no cache %.3f s, cache %.3f s: %.3fx (rounds %.2f to %.2f, median %.3f); "
          "hits %d to %d, misses %d to %d" % (
              name, plain, cached, plain / cached, min(per), max(per), st.median(per),
              min(h for *_, h, _ in v), max(h for *_, h, _ in v),
              min(m for *_, m in v), max(m for *_, m in v)))
PY
