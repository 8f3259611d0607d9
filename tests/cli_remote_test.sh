#!/bin/sh
# The kaun command over HTTP and the reader's commands: cat, slices,
# verify --data, the progress bar on a terminal and -q, errors that name
# the URI, exit codes of network failures.
. "$(dirname "$0")/lib.sh"
KAUN=${KAUN_BIN:?KAUN_BIN must point at the kaun binary}
export KAUN_PLUGIN_PATH="$KAUN_BUILT_PLUGINS"

# a model, and a server for it
"$KAUN_QUICKSTART" "$TEST_TMP" >/dev/null || bad "quickstart failed"
mkdir -p "$TEST_TMP/www"
cp "$TEST_TMP/params.safetensors" "$TEST_TMP/www/"
python3 "$KAUN_SRCDIR/tests/servers/httpd.py" --root "$TEST_TMP/www" --port 0 \
  --port-file "$TEST_TMP/port" 2>"$TEST_TMP/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$TEST_TMP"' EXIT
i=0
while [ ! -s "$TEST_TMP/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
port=$(cat "$TEST_TMP/port")
URL="http://127.0.0.1:$port"
cat >"$TEST_TMP/config.json" <<JSON
{"cache_dir": "$TEST_TMP/cache",
 "backends": {"web": {"plugin": "http", "url": "$URL/", "retry_base_ms": 5, "max_attempts": 2}}}
JSON
K="$KAUN --config $TEST_TMP/config.json"

# --- help ---
for c in cat verify; do
  run $KAUN $c --help; expect_status 0 "kaun $c --help"; expect_out_contains "Usage: kaun $c" "kaun $c --help"
done
run $KAUN cat only-one; expect_status 2 "cat with one argument"

# --- ls, cat and slices over http:// (the plugin's default instance) ---
run $KAUN ls "$URL/params.safetensors"; expect_status 0 "ls over http"
expect_out_contains "$(printf 'layers.1.weight\tF32\t[4,4]\t64')" "ls over http"
run $K ls web://params.safetensors; expect_status 0 "ls through a configured http backend"
run $K cat web://params.safetensors layers.1.weight; expect_status 0 "cat"
expect_out_contains "$(printf 'layers.1.weight\tF32\t[4,4]')" "cat prints name, dtype, shape"
rows=$(printf '%s\n' "$out" | sed -n '2,$p' | wc -l)
[ "$rows" -eq 4 ] && ok || bad "cat prints one line per row: got $rows"
run $K cat --slice 1:3 web://params.safetensors layers.1.weight; expect_status 0 "cat --slice"
expect_out_contains "$(printf 'layers.1.weight\tF32\t[2,4]')" "a slice's shape"
run $K cat --slice 1:3,2:4 web://params.safetensors layers.1.weight; expect_status 0 "cat --slice 2-D"
expect_out_contains "[2,2]" "a 2-D slice's shape"
run $K cat --slice 0:9 web://params.safetensors layers.1.weight; expect_status 1 "a slice out of range"
expect_err_contains "outside dimension 0 of size 4" "a slice out of range says why"
expect_err_contains "layers.1.weight" "a bad slice names the tensor"
run $K cat --slice -1 web://params.safetensors layers.1.weight; expect_status 0 "a negative index"
expect_out_contains "[1,4]" "-1 is the last row"
run $K cat web://params.safetensors nope; expect_status 1 "cat of a missing tensor"
expect_err_contains "no tensor 'nope'" "cat of a missing tensor names it"
run $K cat -o "$TEST_TMP/raw" web://params.safetensors layers.1.weight; expect_status 0 "cat -o"
size=$(wc -c <"$TEST_TMP/raw")
[ "$size" -eq 64 ] && ok || bad "cat -o writes the raw bytes: $size bytes"
run $K cat --limit 3 web://params.safetensors layers.1.weight; expect_status 0 "cat --limit"
expect_out_contains "13 more values" "cat --limit says how many are left"

# --- verify: headers by default, every byte with --data ---
run $K verify web://params.safetensors; expect_status 0 "verify over http"
expect_out_contains "headers and sizes checked" "verify says what it checked"
run $K verify --data web://params.safetensors; expect_status 0 "verify --data"
expect_out_contains "every byte read" "verify --data says what it checked"

# --- kaun get on any backend: a local copy of the object ---
run $K get web://params.safetensors; expect_status 0 "get of an http object"
case "$out" in "$TEST_TMP/cache/kaun/http/"*) ok ;; *) bad "get prints the cache entry: $out" ;; esac
expect_same_file "$out" "$TEST_TMP/www/params.safetensors" "get's copy"
run $K get "$TEST_TMP/params.safetensors"; expect_status 0 "get of a local file"
[ "$out" = "$TEST_TMP/params.safetensors" ] && ok || bad "get of a local file prints its path: $out"
run $K get web://absent.safetensors; expect_status 1 "get of a missing object"
expect_err_contains "web://absent.safetensors" "get of a missing object names it"

# --- config --check makes each backend: the plugin checks its own options ---
printf '{"backends": {"w": {"plugin": "http", "url": "localhost:1/x"}}}\n' >"$TEST_TMP/badurl.json"
run $KAUN config --check "$TEST_TMP/badurl.json"; expect_status 1 "config --check of a bad http url"
expect_err_contains "backends.w.url must start with http:// or https://" "the bad option is named"
expect_err_contains "badurl.json" "the config file is named"
run $KAUN config --check "$TEST_TMP/config.json"; expect_status 0 "config --check of a good one"

# --- errors name the URI; network failures exit 3 ---
run $K ls web://absent.safetensors; expect_status 1 "ls of a missing object"
expect_err_contains "web://absent.safetensors" "a missing object is named"
run $KAUN ls "http://127.0.0.1:1/x.safetensors"; expect_status 3 "a refused connection exits 3"
expect_err_contains "127.0.0.1:1" "a refused connection names the host"

# --- a tarball over HTTP: its members, and a member's tensors ---
(cd "$TEST_TMP" && tar cf www/bundle.tar params.safetensors state.safetensors) || bad "tar failed"
run $KAUN ls --members "$URL/bundle.tar"; expect_status 0 "ls --members over http"
expect_out_contains "$(printf 'params.safetensors\t')" "ls --members lists a member"
expect_out_contains "$(printf 'state.safetensors\t')" "ls --members lists every member"
run $KAUN ls "tar://params.safetensors::$URL/bundle.tar"; expect_status 0 "ls of a member over http"
expect_out_contains "$(printf 'layers.1.weight\tF32\t[4,4]\t64')" "a member's tensors"
run $KAUN ls --members "$URL/params.safetensors"; expect_status 1 "ls --members of a non-archive (bad input)"
expect_err_contains "not an archive" "ls --members of a non-archive says so"

# --- the progress bar: on a terminal only, not with -q ---
# a transfer that lasts over half a second: drip the body
python3 - "$port" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request("http://127.0.0.1:%s/__faults" % sys.argv[1], method="POST",
    data=json.dumps([{"path": "/params.safetensors", "method": "GET", "count": -1,
                      "drip_bytes": 256, "drip_interval": 0.1}]).encode())
urllib.request.urlopen(req).read()
PY
script -qec "$K verify --data web://params.safetensors" /dev/null >"$TEST_TMP/tty.out" 2>&1
grep -q "B/s" "$TEST_TMP/tty.out" && ok || bad "a progress bar on a terminal: $(cat "$TEST_TMP/tty.out")"
script -qec "$K -q verify --data web://params.safetensors" /dev/null >"$TEST_TMP/tty.out" 2>&1
grep -q "B/s" "$TEST_TMP/tty.out" && bad "-q still drew a progress bar" || ok
run $K verify --data web://params.safetensors
case "$err" in *"B/s"*) bad "a progress bar without a terminal" ;; *) ok ;; esac

# --- a sharded model over HTTP: copied shard by shard; a shard replaced mid-copy ---
python3 - "$TEST_TMP/big3.safetensors" <<'PY'
import json, struct, sys
n, h, off = 200000, {}, 0
for k in "abc":
    h[k] = {"dtype": "U8", "shape": [n], "data_offsets": [off, off + n]}
    off += n
hb = json.dumps(h, separators=(",", ":")).encode()
hb += b" " * (-len(hb) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(hb)) + hb + bytes(range(256)) * (off // 256) + bytes(off % 256))
PY
run $KAUN cp --max-shard-size 200000 "$TEST_TMP/big3.safetensors" "$TEST_TMP/www/sh"; expect_status 0 "cp --max-shard-size"
ls "$TEST_TMP/www/sh" >"$TEST_TMP/sh.list"
[ "$(wc -l <"$TEST_TMP/sh.list")" -eq 4 ] && ok || bad "three shards and an index: $(cat "$TEST_TMP/sh.list")"
post() { # PATH [JSON]: a control request to the test server
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="POST", data=sys.argv[2].encode())).read()' "$URL$1" "${2:-}"
}
post /__reset
run $K cp web://sh/model.safetensors.index.json "$TEST_TMP/hc"; expect_status 0 "cp of a sharded model over http"
for f in "$TEST_TMP"/www/sh/*; do expect_same_file "$f" "$TEST_TMP/hc/${f##*/}" "a sharded model copied over http"; done
# shard 2 replaced on the server between the reader's look at it and its copy:
# every GET of it waits 1.5 s, the file is replaced 2.2 s in
S2="$TEST_TMP/www/sh/model-00002-of-00003.safetensors"
cp "$S2" "$TEST_TMP/s2.keep"
post /__faults '{"path": "/sh/model-00002-of-00003.safetensors", "method": "GET", "delay": 1.5, "count": -1}'
$K cp web://sh/model.safetensors.index.json "$TEST_TMP/hc2" >"$TEST_TMP/hc2.out" 2>"$TEST_TMP/hc2.err" &
cpid=$!
sleep 2.2
cp "$TEST_TMP/big3.safetensors" "$S2.new" && mv "$S2.new" "$S2"
wait $cpid
status=$?
err=$(cat "$TEST_TMP/hc2.err")
expect_status 3 "a shard replaced mid-copy"
expect_err_contains "web://sh/model-00002-of-00003.safetensors changed" "the replaced shard is named"
[ -z "$(ls -A "$TEST_TMP/hc2" 2>/dev/null)" ] && ok || bad "a failed copy left: $(ls -A "$TEST_TMP/hc2")"
post /__reset
mv "$TEST_TMP/s2.keep" "$S2"

finish
