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
printf '[]\n' >"$TEST_TMP/hub/tokens.json"
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
run $K get --include '*.json' hf://org/demo; expect_status 0 "get --include"
[ -e "$snap/config.json" ] && [ ! -e "$snap/model.safetensors" ] && ok ||
  bad "get --include '*.json' fetched only config.json"
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

# offline: the cache answers; what it lacks is named
run env HF_HUB_OFFLINE=1 $K get hf://org/demo/config.json; expect_status 0 "get offline"
run $K cache rm; expect_status 0 "cache rm everything"
run $K get --offline hf://org/demo/config.json; expect_status 1 "get offline, not cached"
expect_err_contains "org/demo" "offline misses name the repo"

# errors: a missing repo, a missing file, a bad path
run $K get hf://org/nope/config.json; expect_status 3 "get from a missing repo (401 without a token: KAUN_EAUTH)"
expect_err_contains "org/nope" "a missing repo is named"
run $K get hf://org/demo/absent.json; expect_status 1 "get a missing file"
expect_err_contains "absent.json" "a missing file is named"
run $K get hf://org/demo/../x; expect_status 1 "get with '..'"
run $K cache frob; expect_status 2 "cache with a bad verb"

finish
