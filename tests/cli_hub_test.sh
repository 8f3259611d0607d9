#!/bin/sh
# kaun get / load / cache against the tests' Hub-compatible server.
. "$(dirname "$0")/lib.sh"
KAUN=${KAUN_BIN:?KAUN_BIN must point at the kaun binary}
export KAUN_PLUGIN_PATH="$KAUN_BUILT_PLUGINS"
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_HUB_OFFLINE HF_HOME

# a repo with one commit: config.json (a regular file) and the weights (LFS)
"$KAUN_QUICKSTART" "$TEST_TMP" >/dev/null || bad "quickstart failed"
commit=0123456789abcdef0123456789abcdef01234567
mkdir -p "$TEST_TMP/hub/repos/org/demo/$commit"
cp "$TEST_TMP/params.safetensors" "$TEST_TMP/hub/repos/org/demo/$commit/model.safetensors"
printf '{"hidden_size": 4}\n' >"$TEST_TMP/hub/repos/org/demo/$commit/config.json"
(cd "$TEST_TMP" && tar cf "hub/repos/org/demo/$commit/bundle.tar" params.safetensors state.safetensors) ||
  bad "tar failed"
printf '{"refs": {"main": "%s"}, "lfs": ["*.safetensors", "*.tar"]}\n' "$commit" \
  >"$TEST_TMP/hub/repos/org/demo/repo.json"
printf '["hf_cli_secret_token"]\n' >"$TEST_TMP/hub/tokens.json"
# a private repo that only that token opens
mkdir -p "$TEST_TMP/hub/repos/org/private/$commit"
printf '{"secret": true}\n' >"$TEST_TMP/hub/repos/org/private/$commit/config.json"
printf '{"private": true, "tokens": ["hf_cli_secret_token"], "refs": {"main": "%s"}}\n' "$commit" \
  >"$TEST_TMP/hub/repos/org/private/repo.json"
python3 "$KAUN_SRCDIR/tests/servers/hub.py" --root "$TEST_TMP/hub" --port 0 \
  --port-file "$TEST_TMP/port" 2>"$TEST_TMP/hub.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$TEST_TMP"' EXIT
i=0
while [ ! -s "$TEST_TMP/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
export HF_ENDPOINT="http://127.0.0.1:$(head -1 "$TEST_TMP/port")"
printf '{"cache_dir": "%s/cache"}\n' "$TEST_TMP" >"$TEST_TMP/config.json"
K="$KAUN --config $TEST_TMP/config.json"
snap="$TEST_TMP/cache/huggingface/models--org--demo/snapshots/$commit"

for c in get load cache; do
  run $KAUN $c --help; expect_status 0 "kaun $c --help"; expect_out_contains "Usage: kaun $c" "kaun $c --help"
done

# one file: its path in the cache, the same bytes
run $K get hf://org/demo/config.json; expect_status 0 "get a file"
[ "$out" = "$snap/config.json" ] && ok || bad "get prints the snapshot path: $out"
expect_same_file "$snap/config.json" "$TEST_TMP/hub/repos/org/demo/$commit/config.json" "get's file"

# a whole repo, or the files an --include matches
run $K get hf://org/demo; expect_status 0 "get a repo"
[ "$out" = "$snap" ] && ok || bad "get of a repo prints the snapshot folder: $out"
expect_same_file "$snap/model.safetensors" "$TEST_TMP/params.safetensors" "get's weights"
run $K cache rm org/demo; expect_status 0 "cache rm REPO"
[ ! -e "$snap" ] && ok || bad "cache rm left $snap"
run $K cache rm org/nothere; expect_status 0 "cache rm of a repo not cached"
expect_out_contains "nothing to remove: org/nothere is not in" "cache rm says when nothing was there"
run $K get --include '*.json' hf://org/demo; expect_status 0 "get --include"
[ -e "$snap/config.json" ] && [ ! -e "$snap/model.safetensors" ] && ok ||
  bad "get --include '*.json' fetched only config.json"
# the branch points at the snapshot (as huggingface_hub records it): offline use finds it
[ "$(cat "$TEST_TMP/cache/huggingface/models--org--demo/refs/main" 2>/dev/null)" = "$commit" ] && ok ||
  bad "get of a repo records refs/main"
run env HF_HUB_OFFLINE=1 $K get hf://org/demo/config.json; expect_status 0 "get offline after a repo get"
run $K get --include '*.bin' hf://org/demo; expect_status 1 "get --include matching nothing"
expect_err_contains "no file matches" "get --include matching nothing says so"

# a tarball in a Hub repo: its members, and a member's tensors
run $K ls --members hf://org/demo/bundle.tar; expect_status 0 "ls --members of a Hub file"
expect_out_contains "$(printf 'state.safetensors\t')" "a Hub tarball's members"
run $K ls "tar://params.safetensors::hf://org/demo/bundle.tar"; expect_status 0 "ls tar::hf"
expect_out_contains "$(printf 'layers.1.weight\tF32\t[4,4]\t64')" "a member of a Hub tarball"

# load: a summary; cache ls: the repo, its size and refs
run $K load hf://org/demo; expect_status 0 "load"
expect_out_contains "tensors     5" "load counts the tensors"
expect_out_contains "F32:" "load lists the dtypes"
run $K cache ls; expect_status 0 "cache ls"
expect_out_contains "$(printf 'org/demo\t')" "cache ls lists the repo"
expect_out_contains "main" "cache ls lists its refs"

# a token: from standard input, or from the command line, where it is blanked once read
run $K get hf://org/private/config.json; expect_status 3 "a private repo without a token"
run sh -c "printf 'hf_cli_secret_token\n' | $K get --token - hf://org/private/config.json"
expect_status 0 "--token - reads the token from stdin"
run sh -c "printf 'hf_wrong\n' | $K get --token - hf://org/private"
expect_status 3 "a whole-repo get with a wrong token"; expect_err_contains "the token was rejected" "a wrong token is said to be wrong"
run sh -c "printf '' | $K get --token - hf://org/private/config.json"
expect_status 2 "--token - with nothing on stdin"; expect_err_contains "--token is empty" "an empty token is named"
$K cache rm org/private >/dev/null
curl -s -X POST -d '[{"path": "*", "drip_bytes": 2, "drip_interval": 0.1, "count": -1}]' \
  "$HF_ENDPOINT/__faults" >/dev/null
(ulimit -c unlimited 2>/dev/null; exec $K get --token hf_cli_secret_token hf://org/private/config.json) >"$TEST_TMP/tok.out" 2>&1 &
getter=$!
# KAUN_CORE_DUMPS=1 (only 1) keeps the limit for debugging
(ulimit -c unlimited 2>/dev/null; KAUN_CORE_DUMPS=0 exec $K get --token hf_cli_secret_token hf://org/private/config.json) >/dev/null 2>&1 &
getter0=$!
# (an ASan build's runtime sets the limit to 0 itself unless told not to)
(ulimit -c unlimited 2>/dev/null; KAUN_CORE_DUMPS=1 ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}disable_coredump=0" \
  exec $K get --token hf_cli_secret_token hf://org/private/config.json) >/dev/null 2>&1 &
getter1=$!
sleep 0.5
shown=$(tr '\0' ' ' <"/proc/$getter/cmdline" 2>/dev/null)
cores=$(awk '/Max core file size/ {print $5}' "/proc/$getter/limits" 2>/dev/null)
cores0=$(awk '/Max core file size/ {print $5}' "/proc/$getter0/limits" 2>/dev/null)
cores1=$(awk '/Max core file size/ {print $5}' "/proc/$getter1/limits" 2>/dev/null)
wait $getter && ok || bad "get --token T: $(cat "$TEST_TMP/tok.out")"
wait $getter0 $getter1
[ "$cores0" = 0 ] && ok || bad "KAUN_CORE_DUMPS=0 kept the core limit ('$cores0')"
if (ulimit -c unlimited) 2>/dev/null; then
  [ "$cores1" = unlimited ] && ok || bad "KAUN_CORE_DUMPS=1 did not keep the core limit ('$cores1')"
fi
curl -s -X POST "$HF_ENDPOINT/__reset" >/dev/null
case "$shown" in
  *kaun*get*) case "$shown" in *hf_cli_secret_token*) bad "the token shows in /proc/PID/cmdline: $shown" ;; *) ok ;; esac ;;
  *) bad "could not read the running get's command line ($shown)" ;;
esac
[ "$cores" = 0 ] && ok || bad "a running kaun may dump core with its token (core limit '$cores')"

# the config's hf backend (endpoint, token, cache_dir) is what get and cache use, as loads do
printf '{"backends": {"hf": {"plugin": "hf", "endpoint": "%s", "token": "env:MY_HUB_TOKEN", "cache_dir": "%s/hfcache"}}}\n' \
  "$HF_ENDPOINT" "$TEST_TMP" >"$TEST_TMP/hfconf.json"
run env -u HF_ENDPOINT MY_HUB_TOKEN=hf_cli_secret_token $KAUN --config "$TEST_TMP/hfconf.json" get hf://org/private/config.json
expect_status 0 "get through the config's hf backend (endpoint, token)"
[ "$out" = "$TEST_TMP/hfcache/models--org--private/snapshots/$commit/config.json" ] && ok ||
  bad "get uses backends.hf.cache_dir: $out"
run env -u HF_ENDPOINT MY_HUB_TOKEN=x $KAUN --config "$TEST_TMP/hfconf.json" cache ls
expect_out_contains "$(printf 'org/private\t')" "cache ls lists the config's hf cache"
# a configured hf backend with a bad option stops get, naming the option
printf '{"backends": {"hf": {"plugin": "hf", "part_size": 10}}}\n' >"$TEST_TMP/hfbad.json"
run $KAUN --config "$TEST_TMP/hfbad.json" get hf://org/demo/config.json
expect_status 1 "get with a bad hf backend option"
expect_err_contains "backends.hf.part_size" "the bad option is named"

# offline: the cache answers; what it lacks is named
run env HF_HUB_OFFLINE=1 $K get hf://org/demo/config.json; expect_status 0 "get offline"
run $K cache rm; expect_status 2 "cache rm without a repo or --all"
expect_err_contains "--all for every repo" "cache rm without a repo says how to remove all"
run $K cache rm --all org/demo; expect_status 2 "cache rm --all with a repo"
# --all removes the repos and their locks, nothing kaun did not write
mkdir -p "$TEST_TMP/cache/huggingface/other-tool"
echo 1 >"$TEST_TMP/cache/huggingface/version.txt"
run $K cache rm --all; expect_status 0 "cache rm --all"
expect_out_contains "removed every repo from" "cache rm --all says what it did"
[ -f "$TEST_TMP/cache/huggingface/version.txt" ] && [ -d "$TEST_TMP/cache/huggingface/other-tool" ] && ok ||
  bad "cache rm --all removed files it did not write"
[ -z "$(ls -d "$TEST_TMP/cache/huggingface/models--"* "$TEST_TMP/cache/huggingface/.locks/models--"* 2>/dev/null)" ] && ok ||
  bad "cache rm --all left repos or locks: $(ls -a "$TEST_TMP/cache/huggingface" "$TEST_TMP/cache/huggingface/.locks" 2>&1)"
run $K get --offline hf://org/demo/config.json; expect_status 1 "get offline, not cached"
expect_err_contains "org/demo" "offline misses name the repo"

# errors: a missing repo, a missing file, a bad path
run $K get hf://org/nope/config.json; expect_status 3 "get from a missing repo (401 without a token: KAUN_EAUTH)"
expect_err_contains "org/nope" "a missing repo is named"
run $K get hf://org/nope; expect_status 3 "get of a whole missing repo"
expect_err_contains "repository org/nope not found, or private" "a whole missing repo: not found, or private"
run $K get hf://org/demo@v9; expect_status 1 "get of a missing revision"
expect_err_contains "org/demo has no revision 'v9'" "a missing revision is named as one"
run $K get hf://org/demo/absent.json; expect_status 1 "get a missing file"
expect_err_contains "absent.json" "a missing file is named"
run $K get hf://org/demo/../x; expect_status 1 "get with '..'"
run $K cache frob; expect_status 2 "cache with a bad verb"

# --- whole-model copies: a sharded Hub repo into a bucket, which then serves as the Hub's mirror ---
FIX="$KAUN_FIXTURES/safetensors"
modules="${KAUN_S3_TEST_MODULES:-$KAUN_SRCDIR/tests/s3/node_modules}"
if [ ! -d "$FIX" ] || [ ! -f "$modules/s3rver/bin/s3rver.js" ]; then
  echo "SKIPPED: whole-model copies (needs $FIX and s3rver in $modules: scripts/dev.sh deps)"
  finish
fi
repo="$TEST_TMP/hub/repos/org/sharded"
mkdir -p "$repo/$commit"
cp "$FIX"/fluxml_sharded/* "$repo/$commit/"
printf '{"hidden_size": 4}\n' >"$repo/$commit/config.json"
printf '{"refs": {"main": "%s"}, "lfs": ["*.safetensors"]}\n' "$commit" >"$repo/repo.json"
mkdir -p "$TEST_TMP/hub/repos/org/broken/$commit"
cp "$FIX"/fluxml_sharded/* "$TEST_TMP/hub/repos/org/broken/$commit/"
rm -f "$TEST_TMP/hub/repos/org/broken/$commit/model-00004-of-00006.safetensors"
cp "$repo/repo.json" "$TEST_TMP/hub/repos/org/broken/repo.json"
# shards kaun wrote, served by the Hub: the hf backend reads their index too
mkdir -p "$TEST_TMP/hub/repos/org/resaved"
run $KAUN cp --max-shard-size 100 "$TEST_TMP/params.safetensors" "$TEST_TMP/hub/repos/org/resaved/$commit"
expect_status 0 "cp --max-shard-size into a Hub repo's folder"
cp "$repo/repo.json" "$TEST_TMP/hub/repos/org/resaved/repo.json"
run $K load hf://org/resaved; expect_status 0 "load of kaun's shards from the Hub"
expect_out_contains "tensors     5" "kaun's shards through the Hub: every tensor"
s3port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$TEST_TMP/s3"
NODE_OPTIONS=--openssl-legacy-provider node "$modules/s3rver/bin/s3rver.js" -d "$TEST_TMP/s3" \
  -a 127.0.0.1 -p "$s3port" --configure-bucket models >"$TEST_TMP/s3rver.log" 2>&1 &
s3pid=$!
trap 'kill $server $s3pid 2>/dev/null; wait $server $s3pid 2>/dev/null; rm -rf "$TEST_TMP"' EXIT
i=0
until python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$s3port" 2>/dev/null ||
  [ $i -ge 150 ]; do sleep 0.1; i=$((i + 1)); done
[ $i -lt 150 ] && ok || bad "s3rver did not start (tests/s3/node_modules: scripts/dev.sh deps)"
s3conf='"s3": {"endpoint": "http://127.0.0.1:'$s3port'", "access_key_id": "S3RVER", "secret_access_key": "S3RVER", "max_attempts": 2, "retry_base_ms": 5}'
printf '{"cache_dir": "%s/cache", "backends": {%s}}\n' "$TEST_TMP" "$s3conf" >"$TEST_TMP/s3.json"
printf '{"cache_dir": "%s/cache2", "backends": {%s}, "mirrors": {"hf://": ["s3://models/hub/"]}}\n' \
  "$TEST_TMP" "$s3conf" >"$TEST_TMP/mirror.json"
KS="$KAUN --config $TEST_TMP/s3.json"
run $KS cp hf://org/sharded s3://models/hub/org/sharded/; expect_status 0 "cp of a sharded Hub repo into a bucket"
for f in "$FIX"/fluxml_sharded/*; do
  run $KS get "s3://models/hub/org/sharded/${f##*/}"; expect_status 0 "get of the copied ${f##*/}"
  expect_same_file "$f" "$out" "hf -> s3 copies ${f##*/} byte for byte"
done
# the index was the last object stored
last=$(grep 'Stored object "hub/org/sharded/' "$TEST_TMP/s3rver.log" | tail -1)
case "$last" in *model.safetensors.index.json*) ok ;; *) bad "the index is stored last: $last" ;; esac
run $KS ls s3://models/hub/org/sharded/; copied=$out
run $KAUN ls "$FIX/fluxml_sharded"
[ -n "$out" ] && [ "$copied" = "$out" ] && ok || bad "ls of the copy: $copied"
# file -> s3, and a re-save in shards into the bucket
run $KS cp "$FIX/fluxml_sharded" s3://models/flux/; expect_status 0 "cp of a sharded folder into a bucket"
run $KS get s3://models/flux/model-00006-of-00006.safetensors; expect_status 0 "get of a copied shard"
expect_same_file "$FIX/fluxml_sharded/model-00006-of-00006.safetensors" "$out" "file -> s3 byte for byte"
run $KS cp --max-shard-size 1KB hf://org/sharded s3://models/resharded/; expect_status 0 "cp --max-shard-size hf -> s3"
run $KS get s3://models/resharded/model.safetensors.index.json; expect_status 0 "the re-saved index"
grep -q '"total_size": 4305' "$out" && ok || bad "the re-saved index's total_size"
run $KS ls s3://models/resharded/
[ "$(printf '%s\n' "$out" | sort)" = "$(printf '%s\n' "$copied" | sort)" ] && ok || bad "the re-saved shards hold the model"
# a repo whose shard is missing: the error names it (KAUN_EINDEX: the index names a shard
# the repo lacks), through the index's URI and the repo's; nothing reaches the bucket
run $KS cp hf://org/broken/model.safetensors.index.json s3://models/hub/org/broken/
expect_status 1 "cp of a repo missing a shard"
expect_err_contains "model-00004-of-00006.safetensors" "the missing shard is named"
run $KS cp hf://org/broken s3://models/hub/org/broken/
expect_status 1 "cp of a repo missing a shard, by the repo's URI"
expect_err_contains "model-00004-of-00006.safetensors" "the missing shard is named, by the repo's URI"
grep -q 'Stored object "hub/org/broken/' "$TEST_TMP/s3rver.log" && bad "a failed copy stored objects" || ok
# --all: every file of the repo (config.json too), at one commit, the index stored last
run $KS cp --all hf://org/sharded s3://models/all/org/sharded/; expect_status 0 "cp --all of a Hub repo"
for f in "$repo/$commit"/*; do
  run $KS get "s3://models/all/org/sharded/${f##*/}"; expect_status 0 "get of ${f##*/} copied by --all"
  expect_same_file "$f" "$out" "cp --all copies ${f##*/} byte for byte"
done
last=$(grep 'Stored object "all/org/sharded/' "$TEST_TMP/s3rver.log" | tail -1)
case "$last" in *model.safetensors.index.json*) ok ;; *) bad "cp --all stores the index last: $last" ;; esac
[ "$(grep -c 'Stored object "all/org/sharded/' "$TEST_TMP/s3rver.log")" -eq 8 ] && ok ||
  bad "cp --all stores each file once: $(grep -c 'Stored object "all/org/sharded/' "$TEST_TMP/s3rver.log")"
run $KS cp --all hf://org/sharded/config.json s3://models/x/; expect_status 1 "cp --all of a file"
expect_err_contains "names a file, not a repo" "cp --all of a file says why"
# the bucket as the Hub's mirror: loads need no Hub
kill $server 2>/dev/null; wait $server 2>/dev/null
run $KAUN --config "$TEST_TMP/mirror.json" load hf://org/sharded; expect_status 0 "load through the mirror"
expect_out_contains "tensors     36" "the mirror serves the whole model"
# the config docs/s3.md suggests (the bucket, then the Hub): with the Hub down, the
# single file's miss in the bucket and the Hub's failure do not hide the index
printf '{"cache_dir": "%s/cache3", "backends": {%s}, "mirrors": {"hf://": ["s3://models/hub/", "hf://"]}}\n' \
  "$TEST_TMP" "$s3conf" >"$TEST_TMP/mirror2.json"
run env HF_ENDPOINT="$HF_ENDPOINT" $KAUN --config "$TEST_TMP/mirror2.json" load hf://org/sharded
expect_status 0 "load through bucket-then-Hub mirrors with the Hub down"
expect_out_contains "tensors     36" "the bucket serves the whole model with the Hub down"

finish
