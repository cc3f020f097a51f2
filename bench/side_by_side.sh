#!/bin/bash
# Runs a Python benchmark against two builds in turns, for before/after figures taken in the
# same run on a shared machine:
#
#   BEFORE=/path/to/other/checkout bench/side_by_side.sh ROUNDS bench/SCRIPT.py ARGS...
#
# BEFORE is a checkout built with ./dev.sh build (e.g. `git archive main | tar -x -C DIR`,
# then `./dev.sh build` there); the second build is this checkout's. Each round runs the
# script once with each, "before" first; the script's own medians come out under
# "### before round N" and "### after round N" headers.
set -e
rounds=$1
shift
after=$(cd "$(dirname "$0")/.." && pwd)
: "${BEFORE:?set BEFORE to the other checkout}"
for r in $(seq "$rounds"); do
  for which in before after; do
    if [ "$which" = before ]; then root=$BEFORE; else root=$after; fi
    echo "### $which round $r"
    PYTHONPATH=$root/build/python TESSERA_LIB=$root/build/src/libtessera.so \
      /usr/bin/python3 "$@" 2>&1
  done
done
