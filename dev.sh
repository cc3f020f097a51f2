#!/usr/bin/env bash
# tessera's one entry point for a fresh Debian 12 machine:
#   ./dev.sh demo   install what is missing, build, make a sample slide, show it, read regions
#   ./dev.sh test   install what is missing, build (plain, ASan+UBSan, TSan), run every test
#   ./dev.sh build  install what is missing and build
set -euo pipefail
cd "$(dirname "$0")"

BUILD_PKGS="gcc meson ninja-build pkg-config libtiff-dev libjpeg62-turbo-dev libdeflate-dev
  libzstd-dev libwebp-dev libopenjp2-7-dev libpng-dev libsqlite3-dev python3-dev python3-numpy
  python3-pil libcurl4-openssl-dev"
TEST_PKGS="libopenslide-dev openslide-tools python3-openslide libvips-tools python3-numpy
  python3-pytest python3-tifffile python3-pil python3-pydicom libtiff-tools zstd libopenjp2-tools
  python3-torch python3-dask python3-distributed python3-mesonpy python3-venv python3-pip
  chromium python3-websocket nodejs
  libnghttp2-dev librtmp-dev libssh2-1-dev libpsl-dev libkrb5-dev libldap-dev"
PY=/usr/bin/python3

need_packages() {
  local missing=()
  for p in $*; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "tessera needs these Debian packages; install them as root and run this again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "Installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# A build directory made before the test_hooks option existed (or without it) is given it:
# the test builds need the shared cache's test hooks.
with_test_hooks() {
  grep -q '"name": "test_hooks", "value": true' "$1/meson-info/intro-buildoptions.json" 2>/dev/null ||
    meson setup --reconfigure "$1" -Dtest_hooks=true >/dev/null
}

build() {
  [ -f build/build.ninja ] || meson setup build --buildtype=debugoptimized --werror -Dpython=enabled -Dtest_hooks=true >/dev/null
  with_test_hooks build
  ninja -C build >/dev/null
}

build_sanitized() {
  [ -f build-asan/build.ninja ] ||
    meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false --werror -Dtest_hooks=true \
      -Dpython=disabled --buildtype=debug -Dc_args=-fsanitize=float-cast-overflow \
      -Dc_link_args=-fsanitize=float-cast-overflow >/dev/null
  with_test_hooks build-asan
  ninja -C build-asan >/dev/null
}

demo() {
  local out=demo-output cli=build/cli/tessera
  mkdir -p "$out"
  "$cli" sample "$out/sample.tiff"
  "$cli" info "$out/sample.tiff"
  "$cli" read "$out/sample.tiff" --location 3000,3000 --size 512,512 --output "$out/level0.png"
  "$cli" read "$out/sample.tiff" --location 5000,10000 --size 512,512 --level 2 --output "$out/level2.png"
  "$cli" read "$out/sample.tiff" --location -256,-256 --size 512,512 --level 1 --channels 4 \
    --output "$out/corner-rgba.png"
  "$cli" read "$out/sample.tiff" --location 0,0 --size 640,480 --level 5 --output "$out/overview.png"
  echo "Wrote $out/level0.png, level2.png, corner-rgba.png and overview.png"
  echo "Streaming 4000 random 224 x 224 patches through the batch reader, in batches of 32:"
  "$cli" bench "$out/sample.tiff" --layout random --count 4000 --size 224,224 --batch-size 32
  echo "From Python: cuCIM's batch example with only its import changed (examples/cucim_batches.py):"
  PYTHONPATH=build/python "$PY" examples/cucim_batches.py "$out/sample.tiff"
  echo "To look at the slide and its tissue in a browser: $cli view $out/sample.tiff --mask"
}

build_threadsan() {
  [ -f build-tsan/build.ninja ] ||
    meson setup build-tsan -Db_sanitize=thread -Db_lundef=false --werror --buildtype=debug -Dtest_hooks=true \
      -Dpython=disabled \
      >/dev/null
  with_test_hooks build-tsan
  ninja -C build-tsan >/dev/null
}

run_tests() {
  local results=build/test-results
  rm -rf "$results" && mkdir -p "$results"
  local rc=0
  echo "== C tests" >&2
  meson test -C build --logbase plain --print-errorlogs || rc=1
  echo "== C tests under AddressSanitizer + UndefinedBehaviorSanitizer" >&2
  ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:exitcode=99 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=98 \
    meson test -C build-asan --logbase sanitized --print-errorlogs || rc=1
  echo "== Threaded C tests under ThreadSanitizer" >&2
  # die_after_fork=0: test_batch forks once to check that a child gets its own thread pool.
  TSAN_OPTIONS=halt_on_error=1:exitcode=97:die_after_fork=0 \
    meson test -C build-tsan --logbase threaded --print-errorlogs test_read test_batch test_gpu_batch test_gpu_batch_one_thread test_cache test_pool test_openslide test_block_cache \
      test_shared_cache || rc=1
  echo "== Python tests (differential against OpenSlide and libvips, damaged files, CLI)" >&2
  TESSERA_LIB="$PWD/build/src/libtessera.so" TESSERA_CLI="$PWD/build/cli/tessera" \
    TESSERA_CLI_ASAN="$PWD/build-asan/cli/tessera" TESSERA_TEST_READ_ASAN="$PWD/build-asan/tests/test_read" \
    TESSERA_FUZZ_OPEN_REPLAY_ASAN="$PWD/build-asan/fuzz/fuzz_open_replay" \
    TESSERA_TESTDATA="$PWD/../shared/testdata" TESSERA_PYTHON="$PWD/build/python" \
    "$PY" -m pytest -q -p no:cacheprovider --junitxml="$results/pytest.xml" tests || rc=1
  "$PY" tests/summary.py build/meson-logs/plain.json build-asan/meson-logs/sanitized.json \
    build-tsan/meson-logs/threaded.json "$results/pytest.xml" || rc=1
  return $rc
}

case "${1:-}" in
  demo) need_packages $BUILD_PKGS; build; demo ;;
  test) need_packages $BUILD_PKGS $TEST_PKGS; build; build_sanitized; build_threadsan; run_tests ;;
  build) need_packages $BUILD_PKGS; build ;;
  *) echo "usage: ./dev.sh demo|test|build" >&2; exit 2 ;;
esac
