#!/bin/sh
# make bench: runs the load benchmarks and keeps the table in bench/out/.
# Usage: bench/run.sh BUILD_DIR   (BENCH_DIR sets where the 12 GiB of test
# files go, default /tmp/kaun-bench; BENCH_RUNS the runs per measurement)
set -eu
build=${1:?build directory}
dir=${BENCH_DIR:-/tmp/kaun-bench}
runs=${BENCH_RUNS:-5}
mkdir -p "$build/bench/out"
out="$build/bench/out/results-$(date +%Y%m%d-%H%M%S).md"
"$build/bench/bench_load" "$dir" "$runs" | tee "$out"
echo "results: $out"
