#!/bin/sh
# The CLI benchmarks of make bench, against the simplest way to do the same:
#   - kaun cp of a 1 GiB file (no --dtype)  <->  cp FILE COPY && sync
#   - kaun ls of a file with 50,000 metadata entries  <->  kaun inspect of it
# Each pair alternates run by run (medians of BENCH_RUNS runs; the ls pair,
# tens of milliseconds, gets three times as many).  The page cache is warm
# (it cannot be dropped without root): the copies measure writing 1 GiB and
# flushing it to disk, not reading it.  Before every copy the outputs of the
# last one are removed and `sync` runs, so each copy starts with nothing
# dirty.  Peak RSS comes from /usr/bin/time -f %M when it is installed.
#
# Usage: bench/cli.sh BUILD_DIR   (BENCH_DIR, BENCH_RUNS as for run.sh;
# KAUN_BIN times another kaun binary, e.g. an older build)
set -eu
build=${1:?build directory}
dir=${BENCH_DIR:-/tmp/kaun-bench}
runs=${BENCH_RUNS:-5}
here=$(dirname "$0")

# the real binary rather than libtool's wrapper script, which would add a
# bash start-up to every run
if [ -n "${KAUN_BIN:-}" ]; then
  kaun=$KAUN_BIN
elif [ -x "$build/.libs/kaun" ]; then
  kaun="$build/.libs/kaun"
  LD_LIBRARY_PATH="$build/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
else
  kaun="$build/kaun"
fi

mkdir -p "$dir"
big="$dir/cli-1g.safetensors"
meta="$dir/cli-metadata-50k.safetensors"
[ -f "$big" ] || sh "$here/make_files.sh" big "$big" 1024
[ -f "$meta" ] || sh "$here/make_files.sh" metadata "$meta" 50000
cat "$big" "$meta" >/dev/null # warm the page cache

timer=
[ -x /usr/bin/time ] && timer=/usr/bin/time
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kaun-bench-cli-XXXXXX")
trap 'rm -rf "$tmp"; rm -f "$dir/cli-copy-kaun.safetensors" "$dir/cli-copy-cp.safetensors"' EXIT

# timed NAME CMD...: runs CMD with stdout discarded; appends its wall time
# (s) to $tmp/NAME.t and, with /usr/bin/time, its peak RSS (KiB) to
# $tmp/NAME.rss and its CPU time (user + system, s) to $tmp/NAME.cpu.
timed() {
  name=$1
  shift
  t0=$(date +%s%N)
  if [ -n "$timer" ]; then
    "$timer" -f '%M %U %S' -o "$tmp/usage" "$@" >/dev/null
  else
    "$@" >/dev/null
  fi
  t1=$(date +%s%N)
  awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.6f\n", ns / 1e9 }' >>"$tmp/$name.t"
  if [ -n "$timer" ]; then
    tail -n 1 "$tmp/usage" | awk '{ print $1 }' >>"$tmp/$name.rss"
    tail -n 1 "$tmp/usage" | awk '{ printf "%.2f\n", $2 + $3 }' >>"$tmp/$name.cpu"
  fi
}

median() { sort -g "$tmp/$1" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
cpu() { if [ -s "$tmp/$1.cpu" ]; then printf '%.2f s' "$(median "$1.cpu")"; else echo "n/a"; fi; }
peak() {
  if [ -s "$tmp/$1.rss" ]; then
    sort -n "$tmp/$1.rss" | tail -n 1 | awk '{ printf "%.0f MiB", $1 / 1024 }'
  else
    echo "n/a"
  fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
row() { # LABEL KAUN REF REF-COMMAND
  printf '| %s | %.3f s | %.3f s | %s | %s | %s | %s | %s | %s |\n' "$1" "$(median "$2.t")" \
    "$(median "$3.t")" "$4" "$(ratio "$(median "$2.t")" "$(median "$3.t")")" "$(cpu "$2")" \
    "$(cpu "$3")" "$(peak "$2")" "$(peak "$3")"
}

kcopy="$dir/cli-copy-kaun.safetensors"
ccopy="$dir/cli-copy-cp.safetensors"
# fresh() removes the copies and flushes everything, so that no copy pays
# for the writes of another (nor, as far as one can, of other processes)
fresh() {
  rm -f "$kcopy" "$ccopy"
  sync
}
r=0
while [ $r -lt "$runs" ]; do
  fresh
  timed kaun_cp "$kaun" cp "$big" "$kcopy"
  fresh
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's
  timed cp_syncf sh -c 'cp "$1" "$2" && sync "$2"' sh "$big" "$ccopy"
  fresh
  # shellcheck disable=SC2016
  timed cp_sync sh -c 'cp "$1" "$2" && sync' sh "$big" "$ccopy"
  r=$((r + 1))
done
"$kaun" cp "$big" "$kcopy"
cmp -s "$big" "$kcopy" || {
  echo "bench/cli.sh: kaun cp changed the bytes of $big" >&2
  exit 1
}
rm -f "$kcopy" "$ccopy"

r=0
while [ $r -lt $((runs * 3)) ]; do
  timed kaun_ls "$kaun" ls "$meta"
  timed kaun_inspect "$kaun" inspect "$meta"
  r=$((r + 1))
done

printf '\nCLI: %d runs per copy, %d per listing (medians; wall time includes starting\n' \
  "$runs" $((runs * 3))
printf 'the process; peak RSS is the largest over the runs)\n\n'
printf '| operation | kaun | reference | reference command | ratio | kaun CPU | reference CPU '
printf '| kaun peak RSS | reference peak RSS |\n|---|---|---|---|---|---|---|---|---|\n'
row "kaun cp, 1 GiB file, no --dtype" kaun_cp cp_syncf 'cp FILE COPY && sync COPY'
row "kaun cp, 1 GiB file, no --dtype" kaun_cp cp_sync 'cp FILE COPY && sync'
row "kaun ls, 50,000 metadata entries" kaun_ls kaun_inspect 'kaun inspect FILE'
