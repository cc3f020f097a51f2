#!/bin/bash
# Cached runs on cold memory, in turns: each round, for each workload, every build's cached run
# comes right after an uncached run of this build (so, as in ordinary use, the cached run's
# memory is new to the process, not just freed by another cached run); the builds' order turns
# from round to round. Prints one line per run: round workload build wall cpu hits misses checksum.
# Usage: bench/cold_rounds.sh ROUNDS SLIDE_DIR NAME=CLI... (the first NAME's CLI also runs uncached)
rounds=$1 dir=$2
shift 2
builds=("$@")
first=${builds[0]#*=}
SL="$dir/big.tiff --layout sliding --stride 112 --count 2500 --size 224,224 --shuffle --workers 1"
ND="$dir/hamamatsu-ndpi-DAPI.ndpi --layout random --count 4000 --size 256,256 --workers 1 --seed 3"
run() { # round workload name cli args...
  local r=$1 w=$2 name=$3 cli=$4
  shift 4
  local out cpu
  out=$(/usr/bin/time -f "cpu %U %S" "$cli" bench "$@" 2>&1)
  cpu=$(awk '/^cpu /{print $2 + $3}' <<<"$out")
  awk -v r="$r" -v w="$w" -v n="$name" -v c="$cpu" '
    /^seconds:/{s=$2} /^checksum:/{k=$2}
    /^cache:/{for(i=1;i<=NF;i++){if($(i+1)~/^hits/)h=$i; if($(i+1)~/^misses/)m=$i}}
    END{sub(/:$/,"",h); printf "%s %s %s %s %s %s %s %s\n", r, w, n, s, c, h+0, m+0, k}' <<<"$out"
}
for ((r = 1; r <= rounds; r++)); do
  for w in sliding ndpi; do
    if [ $w = sliding ]; then args=$SL cap=per_process:512; else args=$ND cap=per_process:1024; fi
    n=${#builds[@]}
    for ((i = 0; i < n; i++)); do
      b=${builds[$(((i + r) % n))]}
      run "$r" $w nocache "$first" $args --cache nocache
      run "$r" $w "${b%%=*}" "${b#*=}" $args --cache $cap
    done
  done
done
