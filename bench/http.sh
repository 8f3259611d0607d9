#!/bin/sh
# Loads over HTTP: kaun through the http plugin against the tests' server
# (tests/servers/httpd.py, sendfile), next to curl fetching the same URL
# from the same server in the same run: one GET, and 4 parallel ranged
# GETs.  Medians of BENCH_RUNS alternating runs, wall time and peak RSS.
#
# Usage: bench/http.sh BUILD_DIR   (BENCH_DIR: where the 1 GiB file goes)
set -eu
build=$(cd "${1:?build directory}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
dir=${BENCH_DIR:-/tmp/kaun-bench}/http
runs=${BENCH_RUNS:-5}
mib=${BENCH_HTTP_MIB:-1024}
mkdir -p "$dir/www"
file="$dir/www/big.safetensors"
[ -f "$file" ] || sh "$here/make_files.sh" big "$file" "$mib"
size=$(wc -c <"$file")

rm -f "$dir/port"
python3 "$here/../tests/servers/httpd.py" --root "$dir/www" --port 0 --port-file "$dir/port" \
  2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
i=0
while [ ! -s "$dir/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
url="http://127.0.0.1:$(cat "$dir/port")/big.safetensors"
export KAUN_PLUGIN_PATH="$build/plugins/http/.libs"
kaun="$build/kaun"
name=$("$kaun" ls "$url" | head -1 | cut -f1)

# measure NAME CMD...: appends "seconds kib" to $dir/NAME.times
measure() {
  n=$1
  shift
  /usr/bin/time -f "%e %M" -o "$dir/t" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  cat "$dir/t" >>"$dir/$n.times"
}

# four parallel ranged GETs of a quarter each, as one measured command
four_curls='q=$((SIZE / 4)); pids=""
for k in 0 1 2 3; do
  a=$((k * q)); b=$((k == 3 ? SIZE - 1 : a + q - 1))
  curl -s -o /dev/null -r "$a-$b" "$URL" & pids="$pids $!"
done
for p in $pids; do wait "$p" || exit 1; done'

rm -f "$dir"/*.times
for r in $(seq "$runs"); do
  measure kaun_load "$kaun" cat -o /dev/null "$url" "$name"
  measure curl_one curl -s -o /dev/null "$url"
  measure kaun_stream "$kaun" verify --data "$url"
  measure curl_four env SIZE="$size" URL="$url" sh -c "$four_curls"
done

median() { # FILE COLUMN
  sort -n -k"$2" "$1" | awk -v c="$2" '{v[NR] = $c} END {print v[int((NR + 1) / 2)]}'
}
base=$(median "$dir/curl_one.times" 1)
printf '\n### HTTP: %s MiB over 127.0.0.1 (tests/servers/httpd.py), %s runs\n\n' "$mib" "$runs"
printf '| what | median s | GB/s | vs one curl | peak RSS MiB |\n|---|---|---|---|---|\n'
for n in curl_one curl_four kaun_stream kaun_load; do
  t=$(median "$dir/$n.times" 1)
  m=$(median "$dir/$n.times" 2)
  case $n in
    curl_one) what='`curl -o /dev/null URL`' ;;
    curl_four) what='4 parallel ranged `curl`s' ;;
    kaun_stream) what='`kaun verify --data URL` (every byte, bounded memory)' ;;
    kaun_load) what='`kaun cat -o /dev/null URL NAME` (the tensor loaded into memory)' ;;
  esac
  awk -v w="$what" -v t="$t" -v b="$base" -v s="$size" -v m="$m" \
    'BEGIN {printf "| %s | %.2f | %.2f | %.2fx | %.0f |\n", w, t, s / t / 1e9, t / b, m / 1024}'
done
