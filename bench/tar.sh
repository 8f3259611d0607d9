#!/bin/sh
# Tarballs: `kaun load tar://model.safetensors::ARCHIVE` of a 1 GiB model in
# .tar, .tar.zst and .tar.gz, next to the tar pipelines extracting the same
# member to /dev/null in the same run, and the plain .tar next to loading
# the same model from a plain file.  Medians of BENCH_RUNS alternating
# runs; peak RSS.  The page cache is warm.
#
# Usage: bench/tar.sh BUILD_DIR   (BENCH_DIR: where the files go)
set -eu
build=$(cd "${1:?build directory}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
dir=${BENCH_DIR:-/tmp/kaun-bench}/tar
runs=${BENCH_RUNS:-5}
mib=${BENCH_TAR_MIB:-1024}
mkdir -p "$dir"
model="$dir/model.safetensors"
[ -f "$model" ] || sh "$here/make_files.sh" big "$model" "$mib"
[ -f "$dir/m.tar" ] || tar cf "$dir/m.tar" -C "$dir" model.safetensors
[ -f "$dir/m.tar.zst" ] || zstd -q -1 -T0 -c "$dir/m.tar" >"$dir/m.tar.zst"
[ -f "$dir/m.tar.gz" ] || gzip -1 -c "$dir/m.tar" >"$dir/m.tar.gz"
export KAUN_PLUGIN_PATH="$build/plugins/tar/.libs"
kaun="$build/kaun"
cat "$dir"/m.tar* "$model" >/dev/null

measure() { # NAME CMD...
  n=$1
  shift
  /usr/bin/time -f "%e %M" -o "$dir/t" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  cat "$dir/t" >>"$dir/$n.times"
}
rm -f "$dir"/*.times
for r in $(seq "$runs"); do
  measure file "$kaun" load "$model"
  measure tar "$kaun" load "tar://model.safetensors::$dir/m.tar"
  measure tar_pipe sh -c "tar -xOf '$dir/m.tar' model.safetensors >/dev/null"
  measure zst "$kaun" load "tar://model.safetensors::$dir/m.tar.zst"
  measure zst_pipe sh -c "zstd -dc '$dir/m.tar.zst' | tar -xO model.safetensors >/dev/null"
  measure gz "$kaun" load "tar://model.safetensors::$dir/m.tar.gz"
  measure gz_pipe sh -c "gzip -dc '$dir/m.tar.gz' | tar -xO model.safetensors >/dev/null"
done
median() { sort -n -k"$2" "$1" | awk -v c="$2" '{v[NR] = $c} END {print v[int((NR + 1) / 2)]}'; }
printf '\n### Tarballs: a %s MiB model, %s runs\n\n' "$mib" "$runs"
printf '| what | median s | vs | ratio | peak RSS MiB |\n|---|---|---|---|---|\n'
row() { # NAME WHAT BASE BASEWHAT
  t=$(median "$dir/$1.times" 1)
  m=$(median "$dir/$1.times" 2)
  b=$(median "$dir/$3.times" 1)
  awk -v w="$2" -v t="$t" -v b="$b" -v bw="$4" -v m="$m" \
    'BEGIN {printf "| %s | %.3f | %s (%.3f s) | %.2fx | %.0f |\n", w, t, bw, b, t / b, m / 1024}'
}
row file '`kaun load model.safetensors`' file 'itself'
row tar '`kaun load tar://...::m.tar` (views of the mapping)' file 'the plain file'
row tar_pipe '`tar -xOf m.tar model.safetensors`' tar_pipe 'itself'
row zst '`kaun load tar://...::m.tar.zst`' zst_pipe '`zstd -dc | tar -xO`'
row gz '`kaun load tar://...::m.tar.gz`' gz_pipe '`gzip -dc | tar -xO`'
