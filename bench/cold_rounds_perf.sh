#!/bin/bash
# The CPU on a cached run's reading path, cold (each cached run right after an uncached one):
# per round and workload, each build's cached run under `perf record -F 4000`; prints
# round workload build wall_s reader_ms prefault_ms reader_zeroing_ms, where reader_ms is the
# samples of every thread but the cache's prefault thread (tsr-prefault) x 0.25 ms, and
# reader_zeroing_ms their share in clear_page_erms (the kernel zeroing new pages).
# Usage: bench/cold_rounds_perf.sh NEW_CLI BEFORE_CLI ROUNDS SLIDE_DIR (big.tiff and the NDPI slide)
T=$1 B=$2 rounds=$3 dir=$4
data=$(mktemp)
trap 'rm -f "$data"' EXIT
SL="$dir/big.tiff --layout sliding --stride 112 --count 2500 --size 224,224 --shuffle --workers 1"
ND="$dir/hamamatsu-ndpi-DAPI.ndpi --layout random --count 4000 --size 256,256 --workers 1 --seed 3"
for ((r = 1; r <= rounds; r++)); do
  for w in ndpi sliding; do
    if [ $w = sliding ]; then args=$SL cap=per_process:512; else args=$ND cap=per_process:1024; fi
    for b in before new; do
      [ $b = new ] && cli=$T || cli=$B
      $T bench $args --cache nocache >/dev/null
      wall=$(perf record -q -F 4000 -o "$data" $cli bench $args --cache $cap 2>/dev/null |
        awk '/^seconds:/{print $2}')
      perf report -i "$data" --sort comm,sym -F comm,sym,sample --stdio 2>/dev/null | grep -v '^#' |
        awk -v r=$r -v w=$w -v b=$b -v wall=$wall '
        NF >= 3 { if ($1 == "tsr-prefault") p += $NF; else { t += $NF; if ($0 ~ /clear_page/) z += $NF } }
        END { printf "%s %s %s %s %.1f %.1f %.1f\n", r, w, b, wall, t * 0.25, p * 0.25, z * 0.25 }'
    done
  done
done
