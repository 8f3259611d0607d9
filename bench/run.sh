#!/bin/sh
# make bench: runs the load benchmarks, then the CLI ones (bench/cli.sh),
# then loads over HTTP (bench/http.sh), Hub downloads (bench/hub.sh), S3
# (bench/s3.sh, needs the npm s3rver of scripts/dev.sh deps), tarballs, and
# keeps the tables in bench/out/.
# Usage: bench/run.sh BUILD_DIR   (BENCH_DIR sets where the 13 GiB of test
# files go, 10 GiB of them sparse, default /tmp/kaun-bench; BENCH_RUNS the
# runs per measurement)
set -eu
build=${1:?build directory}
dir=${BENCH_DIR:-/tmp/kaun-bench}
runs=${BENCH_RUNS:-5}
here=$(dirname "$0")
mkdir -p "$build/bench/out"
out="$build/bench/out/results-$(date +%Y%m%d-%H%M%S).md"
"$build/bench/bench_load" "$dir" "$runs" | tee "$out"
BENCH_DIR=$dir BENCH_RUNS=$runs sh "$here/cli.sh" "$build" | tee -a "$out"
BENCH_DIR=$dir BENCH_RUNS=$runs sh "$here/http.sh" "$build" | tee -a "$out"
BENCH_DIR=$dir BENCH_RUNS=$runs sh "$here/hub.sh" "$build" | tee -a "$out"
BENCH_DIR=$dir BENCH_RUNS=$runs sh "$here/s3.sh" "$build" | tee -a "$out"
BENCH_DIR=$dir BENCH_RUNS=$runs sh "$here/tar.sh" "$build" | tee -a "$out"
echo "results: $out"
