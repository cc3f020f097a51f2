"""Medians of bench/cold_rounds.sh's lines: per workload and build, wall and CPU seconds, the
speed against the uncached median, the per-round ratios' spread and median, hits / misses,
and whether the checksums agree. Usage: python3 bench/cold_rounds_summary.py FILE"""
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) != 8:
        continue
    r, w, b, wall, cpu, hits, misses, checksum = f
    runs[w, b].append((int(r), float(wall), float(cpu), hits, misses, checksum))
for w in sorted({w for w, _ in runs}):
    base = runs[w, "nocache"]
    bw = statistics.median(x[1] for x in base)
    bc = statistics.median(x[2] for x in base)
    sums = {x[5] for b in [b for ww, b in runs if ww == w] for x in runs[w, b]}
    print(f"{w}: no cache {bw:.3f} s, CPU {bc:.2f} s ({len(base)} runs); checksums "
          + ("agree" if len(sums) == 1 else f"DIFFER {sorted(sums)}"))
    for (ww, b), xs in sorted(runs.items()):
        if ww != w or b == "nocache":
            continue
        mw = statistics.median(x[1] for x in xs)
        mc = statistics.median(x[2] for x in xs)
        per_round = []
        for r, wall, *_ in xs:
            nc = [x[1] for x in base if x[0] == r]
            per_round.append(statistics.median(nc) / wall)
        print(f"  {b}: {mw:.3f} s: {bw / mw:.2f}x (rounds {min(per_round):.2f} to "
              f"{max(per_round):.2f}, median {statistics.median(per_round):.2f}); CPU {mc:.2f} s: "
              f"{bc / mc:.2f}x; {xs[-1][3]} / {xs[-1][4]} ({len(xs)} runs)")
