#!/bin/bash
# Per round and workload: uncached run, then each build's cached run under perf record (each
# right after an uncached one); prints round workload build wall reader_ms prefault_ms
T=$1 B=$2 rounds=$3
SL="/tmp/bench/big.tiff --layout sliding --stride 112 --count 2500 --size 224,224 --shuffle --workers 1"
ND="/tmp/bench/hamamatsu-ndpi-DAPI.ndpi --layout random --count 4000 --size 256,256 --workers 1 --seed 3"
for ((r = 1; r <= rounds; r++)); do
  for w in sliding ndpi; do
    if [ $w = sliding ]; then args=$SL cap=per_process:512; else args=$ND cap=per_process:1024; fi
    for b in before new; do
      [ $b = new ] && cli=$T || cli=$B
      $T bench $args --cache nocache >/dev/null
      wall=$(perf record -q -F 4000 -o /tmp/pf/r.perf $cli bench $args --cache $cap 2>/dev/null | awk '/^seconds:/{print $2}')
      perf report -i /tmp/pf/r.perf --sort comm -F comm,sample --stdio 2>/dev/null | grep -v '^#' | awk -v r=$r -v w=$w -v b=$b -v wall=$wall '
        NF==2{ if ($1=="tsr-prefault") p+=$2; else t+=$2 }
        END{ printf "%s %s %s %s %.1f %.1f\n", r, w, b, wall, t*0.25, p*0.25 }'
    done
  done
done
