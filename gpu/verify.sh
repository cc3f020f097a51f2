#!/usr/bin/env bash
# Issue 7's GPU verification in one run, on a machine with an NVIDIA GPU (the project's device
# machine: an H100 or H200). Run from the repository root:
#
#     gpu/verify.sh [OUT]            # OUT: where the log and reports go ($OUT, or /tmp/tessera-gpu)
#
# It reports what the machine has (nvidia-smi; where libcudart and libnvjpeg are:
# the CUDA toolkit, pip wheels such as nvidia-*, PyTorch's lib folder); uses build/ when its
# programs run here, else builds build-gpu with meson; checks CUDA batches against CPU batches
# pixel by pixel, device memory over a 10 000-patch stream and abandoned iterators
# (gpu/check_gpu.py); runs the design's example (c) when CuPy is there; and times
# `tessera bench` on a `tessera sample` slide (256 x 256 JPEG tiles, 224 x 224 random
# patches) with --device cuda and with --device cpu --workers 16, in turns, three rounds,
# printing the medians and their ratio (the target: cuda >= 3x).
#
# TESSERA_VERIFY_SIZE=WxH sets the sample slide's size (default 40000x32000);
# TESSERA_VERIFY_COUNT the patches per bench run (default 20000); TESSERA_VERIFY_STREAM those of the
# device-memory stream (default 10000). Where the loader's own search
# misses the CUDA libraries, the folders found below are given to it in TESSERA_CUDA_PATH.
set -uo pipefail
out=${1:-${OUT:-/tmp/tessera-gpu}}
mkdir -p "$out"
exec > >(tee "$out/verify.log") 2>&1
size=${TESSERA_VERIFY_SIZE:-40000x32000}
count=${TESSERA_VERIFY_COUNT:-20000}
status=0
say() { printf '\n== %s\n' "$*"; }
PY=${PYTHON:-python3}

say "machine"
date -u
uname -srm
echo "cpus: $(nproc)"
nvidia-smi || echo "nvidia-smi: not found"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>/dev/null

say "CUDA libraries"
ldconfig -p 2>/dev/null | grep -E "libcudart|libnvjpeg|libcuda\.so" || echo "(none in the ld.so cache)"
site=$("$PY" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
found=$(for d in /usr/local/cuda*/lib64 /usr/local/cuda*/lib /usr/local/cuda*/targets/*/lib /usr/lib/x86_64-linux-gnu \
                 /usr/lib64 /opt/conda/lib $site; do
          [ -d "$d" ] && find "$d" -maxdepth 5 \( -name 'libcudart.so*' -o -name 'libnvjpeg.so*' \) \
               2>/dev/null
        done | sort -u)
echo "${found:-(no libcudart or libnvjpeg found)}"
"$PY" -c 'import torch, os; print("torch", torch.__version__, "CUDA", torch.version.cuda,
      "available", torch.cuda.is_available(), "lib", os.path.join(os.path.dirname(torch.__file__), "lib"))' \
  2>/dev/null || echo "torch: not importable"
"$PY" -c 'import cupy; print("cupy", cupy.__version__)' 2>/dev/null || echo "cupy: not importable"
"$PY" -c 'import numpy; print("numpy", numpy.__version__)' 2>/dev/null || echo "numpy: not importable"

say "build"
B=build
if ! "$B/cli/tessera" --version >/dev/null 2>&1; then
  echo "build/cli/tessera does not run here:"
  ldd "$B/cli/tessera" 2>&1 | grep -E "not found|No such" || true
  B=build-gpu
  if ! { meson setup "$B" -Dpython=enabled --buildtype=release >/dev/null &&
         ninja -C "$B" >/dev/null; }; then
    echo "cannot build tessera here (meson, ninja and the -dev packages of the README are needed)"
    exit 1
  fi
fi
T="$PWD/$B/cli/tessera"
export PYTHONPATH="$PWD/$B/python"
"$T" --version

say "the loader"
probe() { "$T" bench "$PWD/../shared/testdata/generic-jpeg-ycbcr-128tiles.tiff" --layout grid \
            --size 64,64 --device cuda --json 2>&1; }
if ! probe >"$out/probe.txt"; then
  cat "$out/probe.txt"
  dirs=$(echo "$found" | grep -E "libcudart|libnvjpeg" | xargs -r -n1 dirname | sort -u | paste -sd:)
  if [ -n "$dirs" ] && [ -z "${TESSERA_CUDA_PATH:-}" ]; then
    export TESSERA_CUDA_PATH="$dirs"
    echo "retrying with TESSERA_CUDA_PATH=$TESSERA_CUDA_PATH"
    probe >"$out/probe.txt" || { cat "$out/probe.txt"; exit 1; }
  else
    exit 1
  fi
fi
grep -E '"decoder"' "$out/probe.txt"

say "sample slide ($size, 256 x 256 JPEG tiles)"
slide="$out/sample.tiff"
[ -f "$slide" ] || "$T" sample "$slide" --width "${size%x*}" --height "${size#*x}" --quality 80
"$T" info "$slide" | head -6

say "GPU tests: pixels against the CPU, device memory over a stream, abandoned iterators"
"$PY" gpu/check_gpu.py "$slide" "$PWD/../shared/testdata/generic-jpeg-ycbcr-128tiles.tiff" \
  "$PWD/../shared/testdata/aperio-jpeg-CMU-1-Small-Region.svs" \
  --patches "${TESSERA_VERIFY_STREAM:-10000}" >"$out/check_gpu.json"
rc=$?
cat "$out/check_gpu.json"
[ $rc -eq 0 ] || { echo "GPU checks FAILED"; status=1; }

say "example (c): examples/cucim_gpu.py"
if "$PY" -c 'import cupy' 2>/dev/null; then
  "$PY" examples/cucim_gpu.py "$slide" >"$out/example_c.txt" || status=1
  head -6 "$out/example_c.txt"
else
  echo "cupy is not importable here: example (c) not run"
fi

say "bench: --device cuda against --device cpu --workers 16, 3 rounds in turns"
common=(--layout random --count "$count" --size 224,224 --batch-size 64 --seed 11 --no-checksum --json)
"$T" bench "$slide" "${common[@]}" --device cuda --compare --count 2000 >"$out/compare.json" &&
  grep -E '"(max|mean)_difference"|"differing_samples"|"decoder"' "$out/compare.json"
for round in 1 2 3; do
  "$T" bench "$slide" "${common[@]}" --device cpu --workers 16 >"$out/cpu-$round.json" || status=1
  "$T" bench "$slide" "${common[@]}" --device cuda --workers 4 >"$out/cuda-$round.json" || status=1
done
"$T" bench "$slide" "${common[@]}" --device cuda --workers 8 --prefetch 4 >"$out/cuda-deep.json" &&
  "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("cuda, 8 workers, prefetch 4: %.0f patches/s" % r["patches_per_s"])' "$out/cuda-deep.json"
"$PY" - "$out" <<'PYEOF'
import json, statistics, sys
out = sys.argv[1]
rate = {d: statistics.median(json.load(open("%s/%s-%d.json" % (out, d, r)))["patches_per_s"]
                             for r in (1, 2, 3)) for d in ("cpu", "cuda")}
dec = json.load(open("%s/cuda-1.json" % out))["decoder"]
print("median patches/s: cpu (16 workers) %.0f, cuda (%s) %.0f; cuda / cpu = %.2fx (target 3x)"
      % (rate["cpu"], dec, rate["cuda"], rate["cuda"] / rate["cpu"]))
PYEOF
exit $status
