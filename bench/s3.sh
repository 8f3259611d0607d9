#!/bin/sh
# S3: a 512 MiB object from s3rver (npm, tests/s3/node_modules) over
# 127.0.0.1, downloaded to a file by kaun (`kaun get s3://...` into its
# cache: part_size ranged GETs, `concurrency` at a time, each written at its
# place; and `kaun cp s3://... FILE`), by `aws s3 cp`, by `s3cmd get`, by
# one curl and by 4 parallel ranged curls (the most the server gives), in
# the same run; then kaun get's part size x connections sweep, and a load
# into memory (`kaun load`) with its peak RSS.  Medians of BENCH_RUNS
# alternating runs.
#
# Usage: bench/s3.sh BUILD_DIR   (BENCH_DIR: where the files go;
# BENCH_S3_MIB: the object's size; BENCH_S3_SWEEP=0 skips the sweep)
set -eu
build=$(cd "${1:?build directory}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
dir=${BENCH_DIR:-/tmp/kaun-bench}/s3
runs=${BENCH_RUNS:-5}
mib=${BENCH_S3_MIB:-512}
s3rver="$here/../tests/s3/node_modules/s3rver/bin/s3rver.js"
[ -f "$s3rver" ] || { echo "s3.sh: no s3rver: run 'scripts/dev.sh deps' first" >&2; exit 1; }
mkdir -p "$dir/data" "$dir/out"
file="$dir/big.safetensors"
[ -f "$file" ] && [ "$(wc -c <"$file")" -gt $((mib * 1048576)) ] || sh "$here/make_files.sh" big "$file" "$mib"
size=$(wc -c <"$file")

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rm -rf "$dir/data"/*
NODE_OPTIONS=--openssl-legacy-provider node "$s3rver" -d "$dir/data" -a 127.0.0.1 -p "$port" \
  --silent --configure-bucket bench >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
i=0
while ! python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" \
  2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
endpoint="http://127.0.0.1:$port"
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_DEFAULT_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
aws --endpoint-url "$endpoint" s3 cp "$file" s3://bench/big.safetensors >/dev/null
url="$endpoint/bench/big.safetensors"
s3cmd="s3cmd --host=127.0.0.1:$port --host-bucket= --no-ssl --access_key=S3RVER --secret_key=S3RVER --no-progress"

export KAUN_PLUGIN_PATH="$build/plugins/s3/.libs"
kaun="$build/kaun"
config() { # PART_MIB CONNECTIONS: a config file for them
  c="$dir/config-$1-$2.json"
  printf '{"cache_dir": "%s", "backends": {"s3": {"endpoint": "%s", "access_key_id": "S3RVER", "secret_access_key": "S3RVER", "part_size": %d, "concurrency": %d}}}\n' \
    "$dir/out/cache" "$endpoint" $(($1 * 1048576)) "$2" >"$c"
  echo "$c"
}

measure() { # NAME CMD...: appends "seconds kib" to $dir/NAME.times
  n=$1
  shift
  rm -rf "$dir/out"
  mkdir -p "$dir/out"
  sync
  /usr/bin/time -f "%e %M" -o "$dir/t" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  cat "$dir/t" >>"$dir/$n.times"
}

four_curls='q=$((SIZE / 4)); pids=""
for k in 0 1 2 3; do
  a=$((k * q)); b=$((k == 3 ? SIZE - 1 : a + q - 1))
  curl -sf -o /dev/null -r "$a-$b" "$URL" & pids="$pids $!"
done
for p in $pids; do wait "$p" || exit 1; done'

default=$(config 8 4)
rm -f "$dir"/*.times
for r in $(seq "$runs"); do
  measure kaun_get "$kaun" --config "$default" -q get s3://bench/big.safetensors
  measure kaun_cp "$kaun" --config "$default" -q cp s3://bench/big.safetensors "$dir/out/k.safetensors"
  measure aws aws --endpoint-url "$endpoint" s3 cp --quiet s3://bench/big.safetensors "$dir/out/a"
  measure s3cmd $s3cmd get --force s3://bench/big.safetensors "$dir/out/s"
  measure curl_one curl -sf -o "$dir/out/c" "$url"
  measure curl_four env SIZE="$size" URL="$url" sh -c "$four_curls"
  measure kaun_load "$kaun" --config "$default" -q load s3://bench/big.safetensors
done
if [ "${BENCH_S3_SWEEP:-1}" != 0 ]; then
  for r in $(seq "$runs"); do
    for part in 2 8 16; do
      for conns in 1 2 4 8; do
        measure "sweep_${part}_$conns" "$kaun" --config "$(config "$part" "$conns")" -q \
          get s3://bench/big.safetensors
      done
    done
  done
fi

median() { sort -n -k"$2" "$1" | awk -v c="$2" '{v[NR] = $c} END {print v[int((NR + 1) / 2)]}'; }
printf '\n### S3: %s MiB from s3rver over 127.0.0.1, %s runs\n\n' "$mib" "$runs"
printf '| what | median s | MB/s | vs aws s3 cp | vs 4 curls | peak RSS MiB |\n|---|---|---|---|---|---|\n'
row() { # NAME WHAT
  t=$(median "$dir/$1.times" 1)
  m=$(median "$dir/$1.times" 2)
  a=$(median "$dir/aws.times" 1)
  f=$(median "$dir/curl_four.times" 1)
  awk -v w="$2" -v t="$t" -v a="$a" -v f="$f" -v s="$size" -v m="$m" \
    'BEGIN {printf "| %s | %.2f | %.0f | %.2fx | %.2fx | %.0f |\n", w, t, s / t / 1e6, a / t, f / t, m / 1024}'
}
row aws '`aws s3 cp` to a file'
row s3cmd '`s3cmd get` to a file'
row curl_one 'one `curl -o FILE` (unsigned)'
row curl_four '4 parallel ranged `curl`s to /dev/null'
row kaun_get '`kaun get s3://...` into the cache (8 MiB parts, 4 connections)'
row kaun_cp '`kaun cp s3://... FILE`'
row kaun_load '`kaun load s3://...` (into memory)'
if [ "${BENCH_S3_SWEEP:-1}" != 0 ]; then
  printf '\n`kaun get` by part size (rows) and connections (columns): median seconds (x aws s3 cp)\n\n'
  printf '| part | 1 | 2 | 4 | 8 |\n|---|---|---|---|---|\n'
  a=$(median "$dir/aws.times" 1)
  for part in 2 8 16; do
    printf '| %s MiB |' "$part"
    for conns in 1 2 4 8; do
      t=$(median "$dir/sweep_${part}_$conns.times" 1)
      awk -v t="$t" -v a="$a" 'BEGIN {printf " %.2f (%.2fx) |", t, a / t}'
    done
    printf '\n'
  done
fi
