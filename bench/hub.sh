#!/bin/sh
# Hub downloads: `kaun get` from the tests' Hub-compatible server
# (tests/servers/hub.py: the Hub on one port, LFS files through its "CDN"
# on another) next to curl fetching the same file in the same run, with
# and without hashing it afterwards (kaun hashes while it downloads), and a
# 4-shard model against 4 sequential curls.  Medians of BENCH_RUNS
# alternating runs; peak RSS.  Each kaun run starts from an empty cache.
#
# Usage: bench/hub.sh BUILD_DIR   (BENCH_DIR: where the files go)
set -eu
build=$(cd "${1:?build directory}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
dir=${BENCH_DIR:-/tmp/kaun-bench}/hub
runs=${BENCH_RUNS:-5}
mib=${BENCH_HUB_MIB:-1024}
commit=0123456789abcdef0123456789abcdef01234567
repo="$dir/hub/repos/bench"
mkdir -p "$repo/big/$commit" "$repo/sharded/$commit"
big="$repo/big/$commit/model.safetensors"
# made again when a run with another size left them
sized() { [ -f "$1" ] && [ "$(wc -c <"$1")" -gt $(($2 * 1048576)) ] && [ "$(wc -c <"$1")" -lt $(($2 * 1048576 + 4096)) ]; }
sized "$big" "$mib" || sh "$here/make_files.sh" big "$big" "$mib"
printf '{"refs": {"main": "%s"}, "lfs": ["*.safetensors"]}\n' "$commit" >"$repo/big/repo.json"
printf '{"refs": {"main": "%s"}, "lfs": ["*.safetensors"]}\n' "$commit" >"$repo/sharded/repo.json"
q=$((mib / 4))
for k in 1 2 3 4; do
  f="$repo/sharded/$commit/model-0000$k-of-00004.safetensors"
  sized "$f" "$q" || sh "$here/make_files.sh" big "$f" "$q"
done
printf '[]\n' >"$dir/hub/tokens.json"

rm -f "$dir/port"
python3 "$here/../tests/servers/hub.py" --root "$dir/hub" --port 0 --port-file "$dir/port" \
  2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
i=0
while [ ! -s "$dir/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
hub="http://127.0.0.1:$(head -1 "$dir/port")"
export HF_ENDPOINT="$hub" KAUN_PLUGIN_PATH="$build/plugins/hf/.libs"
kaun="$build/kaun"
printf '{"cache_dir": "%s/cache"}\n' "$dir" >"$dir/config.json"

measure() { # NAME CMD...: appends "seconds kib" to $dir/NAME.times
  n=$1
  shift
  rm -rf "$dir/cache" "$dir/out"
  mkdir -p "$dir/out"
  sync
  /usr/bin/time -f "%e %M" -o "$dir/t" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  cat "$dir/t" >>"$dir/$n.times"
}

shards='for k in 1 2 3 4; do
  curl -sfL -o "$OUT/s$k" "$HUB/bench/sharded/resolve/main/model-0000$k-of-00004.safetensors" || exit 1
done'
rm -f "$dir"/*.times
for r in $(seq "$runs"); do
  measure kaun_get "$kaun" --config "$dir/config.json" get hf://bench/big/model.safetensors
  measure curl_one curl -sfL -o "$dir/out/f" "$hub/bench/big/resolve/main/model.safetensors"
  measure curl_hash sh -c "curl -sfL -o '$dir/out/f' '$hub/bench/big/resolve/main/model.safetensors' &&
    openssl dgst -sha256 '$dir/out/f'"
  measure curl_hash_sync sh -c "curl -sfL -o '$dir/out/f' '$hub/bench/big/resolve/main/model.safetensors' &&
    openssl dgst -sha256 '$dir/out/f' && sync '$dir/out/f'"
  measure kaun_shards "$kaun" --config "$dir/config.json" get hf://bench/sharded
  measure curl_shards env HUB="$hub" OUT="$dir/out" sh -c "$shards"
done

median() { sort -n -k"$2" "$1" | awk -v c="$2" '{v[NR] = $c} END {print v[int((NR + 1) / 2)]}'; }
size=$(wc -c <"$big")
printf '\n### Hub: %s MiB from the test Hub over 127.0.0.1, %s runs\n\n' "$mib" "$runs"
printf '| what | median s | GB/s | ratio | peak RSS MiB |\n|---|---|---|---|---|\n'
row() { # NAME WHAT BASE
  t=$(median "$dir/$1.times" 1)
  m=$(median "$dir/$1.times" 2)
  b=$(median "$dir/$3.times" 1)
  awk -v w="$2" -v t="$t" -v b="$b" -v s="$size" -v m="$m" \
    'BEGIN {printf "| %s | %.2f | %.2f | %.2fx | %.0f |\n", w, t, s / t / 1e9, t / b, m / 1024}'
}
row curl_one '`curl -L -o FILE URL`' curl_one
row curl_hash '`curl -L -o FILE URL` + `openssl dgst -sha256 FILE`' curl_one
row curl_hash_sync '`curl -L -o FILE URL` + `openssl dgst` + `sync FILE` (durable, as kaun)' curl_one
row kaun_get '`kaun get hf://...` (parallel parts, SHA-256 while they arrive, fsync)' curl_one
row curl_shards '4 shards, 4 sequential `curl`s' curl_shards
row kaun_shards '4 shards, `kaun get hf://REPO` (parallel)' curl_shards
