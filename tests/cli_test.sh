#!/bin/sh
# The kaun command: output formats, exit codes and error messages.
. "$(dirname "$0")/lib.sh"
KAUN=${KAUN_BIN:?KAUN_BIN must point at the kaun binary}
FIX="$KAUN_FIXTURES/safetensors"

# --- help and usage ---
run "$KAUN" --help; expect_status 0 "kaun --help"; expect_out_contains "Commands:" "kaun --help"
for c in ls inspect cp verify; do
  run "$KAUN" $c --help; expect_status 0 "kaun $c --help"; expect_out_contains "Usage: kaun $c" "kaun $c --help"
done
run "$KAUN" help cp; expect_status 0 "kaun help cp"; expect_out_contains "--dtype" "kaun help cp"
run "$KAUN" --version; expect_status 0 "--version"; expect_out_contains "kaun 0." "--version"
run "$KAUN"; expect_status 2 "no command"
run "$KAUN" frobnicate; expect_status 2 "unknown command"; expect_err_contains "unknown command 'frobnicate'" "unknown command"
run "$KAUN" ls --bogus x; expect_status 2 "unknown option"; expect_err_contains "'--bogus'" "unknown option"
run "$KAUN" ls; expect_status 2 "ls without a file"
run "$KAUN" cp only-one; expect_status 2 "cp with one argument"

# --- a model made by the example program ---
"$KAUN_QUICKSTART" "$TEST_TMP" >/dev/null || bad "quickstart failed"
run "$KAUN" ls "$TEST_TMP/params.safetensors"; expect_status 0 "ls"
expect_out_contains "$(printf 'layers.1.weight\tF32\t[4,4]\t64')" "ls line format"
run "$KAUN" ls --json "$TEST_TMP/state.safetensors"; expect_status 0 "ls --json"
expect_out_contains '{"name": "step", "dtype": "I64", "shape": [1], "bytes": 8}' "ls --json"
run "$KAUN" inspect "$TEST_TMP/params.safetensors"; expect_status 0 "inspect"
expect_out_contains '"metadata": {"format": "pt", "created_by": "kaun quickstart"}' "inspect metadata"
run "$KAUN" verify "$TEST_TMP/params.safetensors"; expect_status 0 "verify"; expect_out_contains "OK, 5 tensors" "verify"

# --- missing and malformed input ---
run "$KAUN" ls "$TEST_TMP/nope.safetensors"; expect_status 1 "ls missing file"
expect_err_contains "nope.safetensors" "ls missing file names it"
# MEMBER::ARCHIVE without the scheme is a path: the error says how to name a member
run "$KAUN" ls "model.safetensors::$TEST_TMP/bundle.tar"; expect_status 1 "ls MEMBER::ARCHIVE without tar://"
expect_err_contains "tar://MEMBER::ARCHIVE" "a path with '::' points to tar://"
# ... and a folder whose name holds '::' is one folder: files go into it, not beside it
mkdir -p "$TEST_TMP/outd" "$TEST_TMP/outd::y"
run "$KAUN" cp "$TEST_TMP/params.safetensors" "$TEST_TMP/outd::y"
expect_status 0 "cp into a folder named with '::'"
[ -f "$TEST_TMP/outd::y/model.safetensors" ] && [ -z "$(ls "$TEST_TMP/outd")" ] && ok ||
  bad "cp into 'outd::y' wrote beside it: $(ls "$TEST_TMP/outd" "$TEST_TMP/outd::y" 2>&1)"
run "$KAUN" ls "$TEST_TMP/outd::y"; expect_status 0 "ls of a folder named with '::'"
run "$KAUN" cp --max-shard-size 200 "$TEST_TMP/params.safetensors" "$TEST_TMP/sh::x/"
expect_status 0 "sharded cp into a folder named with '::'"
run "$KAUN" ls "$TEST_TMP/sh::x/model.safetensors.index.json"; expect_status 0 "ls of an index in a folder named with '::'"
expect_out_contains "$(printf 'layers.1.weight\tF32')" "the index's shards are found beside it"
printf 'not a safetensors file at all' >"$TEST_TMP/junk.safetensors"
run "$KAUN" verify "$TEST_TMP/junk.safetensors"; expect_status 1 "verify junk"
expect_err_contains "junk.safetensors" "verify junk names the file"
run "$KAUN" inspect "$TEST_TMP"; expect_status 1 "inspect a directory"; expect_err_contains "is a directory" "inspect a directory"
expect_err_contains "kaun ls lists a folder's model" "inspect of a folder points to ls"
# files that are not SafeTensors but something a user has at hand: the error says what they seem
printf '{"metadata": {}, "weight_map": {}}' >"$TEST_TMP/an.index.json"
run "$KAUN" inspect "$TEST_TMP/an.index.json"; expect_status 1 "inspect an index"
expect_err_contains "it starts like JSON: a sharded model's index" "inspect of an index says it is JSON"
printf 'x' >"$TEST_TMP/member.txt"
tar -C "$TEST_TMP" -cf "$TEST_TMP/plain.tar" member.txt
run "$KAUN" ls "$TEST_TMP/plain.tar"; expect_status 1 "ls of a tarball"
expect_err_contains "it looks like an archive: list its members with kaun ls --members" "ls of a tar points to --members"
gzip -c "$TEST_TMP/plain.tar" >"$TEST_TMP/packed.bin"
run "$KAUN" ls "$TEST_TMP/packed.bin"; expect_status 1 "ls of a gzip file"
expect_err_contains "it looks like an archive" "a gzip file is recognised by its bytes"
run "$KAUN" cp --dtype I32 "$TEST_TMP/params.safetensors" "$TEST_TMP/x.safetensors"
expect_status 2 "cp --dtype I32"; expect_err_contains "--dtype must be" "cp --dtype I32"
run "$KAUN" cp "$TEST_TMP/params.safetensors" "/nonexistent-dir/x.safetensors"
expect_status 1 "cp into a missing directory"; expect_err_contains "/nonexistent-dir" "cp into a missing directory"

# --- FIFOs as a model or a config: refused at once, never waited on ---
mkfifo "$TEST_TMP/pipe.safetensors"
run timeout 20 "$KAUN" ls "$TEST_TMP/pipe.safetensors"; expect_status 1 "ls a FIFO"
expect_err_contains "pipe.safetensors' is not a regular file" "ls a FIFO"
run timeout 20 "$KAUN" --config "$TEST_TMP/pipe.safetensors" ls "$TEST_TMP/params.safetensors"
expect_status 1 "a FIFO as --config"; expect_err_contains "pipe.safetensors' is not a regular file" "a FIFO as --config"
rm -f "$TEST_TMP/pipe.safetensors"
run "$KAUN" --config "$TEST_TMP" ls "$TEST_TMP/params.safetensors"
expect_status 1 "a folder as --config"; expect_err_contains "is a directory, not a file" "a folder as --config"
run "$KAUN" --config "" ls "$TEST_TMP/params.safetensors"
expect_status 2 "an empty --config"; expect_err_contains "needs a FILE, not an empty string" "an empty --config"
run "$KAUN" cp --dtype bf16 "$TEST_TMP/params.safetensors" "$TEST_TMP/lower.safetensors"
expect_status 0 "--dtype in lower case"
run "$KAUN" ls "$TEST_TMP/lower.safetensors"; expect_out_contains "$(printf '\tBF16\t')" "--dtype in lower case casts"

# --- plugins, config files and URIs ---
export KAUN_PLUGIN_PATH="$KAUN_TEST_PLUGINS:$KAUN_BUILT_PLUGINS"
run "$KAUN" plugins; expect_status 0 "kaun plugins"
expect_out_contains "$(printf 'registry\t1.0\tABI 1.2')" "kaun plugins lists the registry"
expect_out_contains "$(printf 'file\t')" "kaun plugins lists the built-in file backend"
expect_out_contains "BROKEN" "kaun plugins lists broken plugins"
expect_out_contains "built for ABI 2, this kaun speaks ABI 1" "kaun plugins says why"
mkdir -p "$TEST_TMP/store"
cat >"$TEST_TMP/kaun.json" <<JSON
{
  "backends": {
    "store": {"plugin": "file", "root": "$TEST_TMP/store"},
    "corp": {"plugin": "registry", "index": "store://index.json"},
    "registry": {"index": "store://index.json"},
    "mem": {"plugin": "testmem", "dir": "$TEST_TMP/store", "token": "s3cr3t-value"}
  }
}
JSON
run "$KAUN" --config "$TEST_TMP/kaun.json" cp "$TEST_TMP/params.safetensors" store://bert/1.2/model.safetensors
expect_status 0 "cp into a configured backend"
printf '{"bert": {"1.2": {"model.safetensors": {"uri": "store://bert/1.2/model.safetensors"}}}}' >"$TEST_TMP/store/index.json"
# a DST ending in '/' is a folder, made when missing, on a backend too
run "$KAUN" --config "$TEST_TMP/kaun.json" cp "$TEST_TMP/params.safetensors" store://new/folder/
expect_status 0 "cp into store://new/folder/"
expect_same_file "$TEST_TMP/params.safetensors" "$TEST_TMP/store/new/folder/model.safetensors" "cp into store://new/folder/"
run "$KAUN" ls registry://bert@1.2
expect_status 1 "ls through an unconfigured registry"; expect_err_contains "needs the option 'index'" "unconfigured registry"
run "$KAUN" --config "$TEST_TMP/kaun.json" ls registry://bert@1.2
expect_status 0 "kaun ls registry://bert@1.2"; expect_out_contains "$(printf 'embed\tF32\t[8,4]\t128')" "ls registry://bert@1.2"
run "$KAUN" --config "$TEST_TMP/kaun.json" ls corp://bert@1.2
expect_status 0 "kaun ls corp://bert@1.2"; expect_out_contains "$(printf 'layers.1.weight\tF32\t[4,4]\t64')" "ls through the registry"
export KAUN_CONFIG="$TEST_TMP/kaun.json"
run "$KAUN" inspect corp://bert/model.safetensors
expect_status 0 "inspect through the registry, config from KAUN_CONFIG"
unset KAUN_CONFIG
run "$KAUN" --config "$TEST_TMP/kaun.json" config; expect_status 0 "kaun config"
expect_out_contains "backends.store.root = $TEST_TMP/store" "kaun config shows values"
expect_out_contains "kaun.json:4" "kaun config says where a value came from"
expect_out_contains "backends.mem.token = ********" "kaun config masks secrets"
case "$out" in *s3cr3t*) bad "kaun config printed a secret" ;; *) ok ;; esac
run "$KAUN" config --check "$TEST_TMP/kaun.json"; expect_status 0 "config --check good"; expect_out_contains "OK" "config --check good"
printf '{\n  "backends": {\n    "x": {"plugin": "file", "rooot": "/"}\n  }\n}\n' >"$TEST_TMP/bad.json"
run "$KAUN" config --check "$TEST_TMP/bad.json"; expect_status 1 "config --check bad"
expect_err_contains "bad.json: line 3: backends.x.rooot is not an option" "config --check names file, line and key"
run "$KAUN" ls nosuch://a/b; expect_status 1 "unknown scheme"; expect_err_contains "no backend answers to 'nosuch://'" "unknown scheme"
run "$KAUN" ls Bad://a; expect_status 1 "malformed URI"; expect_err_contains "'Bad://a'" "malformed URI"
# an index is untrusted input: a shard URI is followed only where the config allows it
mkdir -p "$TEST_TMP/store/evil" "$TEST_TMP/private"
cp "$TEST_TMP/params.safetensors" "$TEST_TMP/private/secret.safetensors"
printf '{"weight_map": {"embed": "file://%s/private/secret.safetensors"}}' "$TEST_TMP" \
  >"$TEST_TMP/store/evil/model.safetensors.index.json"
run "$KAUN" --config "$TEST_TMP/kaun.json" cp store://evil store://stolen.safetensors
expect_status 1 "cp of an index whose shard is a local file"
expect_err_contains "store://evil/model.safetensors.index.json: line 1: the shard of tensor 'embed' is the URI 'file://$TEST_TMP/private/secret.safetensors', which is not followed" "the refusal names the index, tensor and URI"
expect_err_contains "set backends.store.index_shard_uris to true in $TEST_TMP/kaun.json" "the refusal names the key"
if [ -e "$TEST_TMP/store/stolen.safetensors" ]; then bad "a refused index was copied"; else ok; fi
printf '{"weight_map": {"embed": "%s/private/secret.safetensors"}}' "$TEST_TMP" \
  >"$TEST_TMP/store/evil/model.safetensors.index.json"
run "$KAUN" --config "$TEST_TMP/kaun.json" ls store://evil
expect_status 1 "ls of an index whose shard is an absolute path"
expect_err_contains "must be a file name relative to the index" "an absolute shard path is refused"
sed 's|"store": {"plugin": "file", "root": "\([^"]*\)"}|"store": {"plugin": "file", "root": "\1", "index_shard_uris": true}|' \
  "$TEST_TMP/kaun.json" >"$TEST_TMP/kaun-uris.json"
printf '{"weight_map": {"embed": "file://%s/private/secret.safetensors"}}' "$TEST_TMP" \
  >"$TEST_TMP/store/evil/model.safetensors.index.json"
run "$KAUN" --config "$TEST_TMP/kaun-uris.json" ls store://evil
expect_status 0 "ls of an index with shard URIs where the config allows them"
expect_out_contains "$(printf 'embed\tF32\t[8,4]\t128')" "shard URIs followed where allowed"
# a registry whose index it serves itself fails at once, never hangs
printf '{"backends": {"loop": {"plugin": "registry", "index": "loop://idx@1/index.json"}}}' >"$TEST_TMP/loop.json"
run timeout 60 "$KAUN" --config "$TEST_TMP/loop.json" ls loop://bert
expect_status 1 "a registry that leads back to itself"
expect_err_contains "'loop://idx@1/index.json' leads back to itself: loop://idx@1/index.json -> loop://idx@1/index.json" "the cycle is named"
unset KAUN_PLUGIN_PATH

if [ -d "$FIX" ]; then
  # --- real files from other tools ---
  run "$KAUN" inspect "$FIX/raven_f16_bit_exact.safetensors"; expect_status 0 "inspect fixture"
  want='{
  "metadata": null,
  "tensors": {
    "f16_tensor": {"dtype": "F16", "shape": [5], "data_offsets": [0, 10]}
  }
}'
  if [ "$out" = "$want" ]; then ok; else bad "inspect output: $out"; fi
  run "$KAUN" inspect "$FIX/fluxml_sharded/model-00002-of-00006.safetensors"
  expect_out_contains '"metadata": {"format": "pt"}' "inspect shard metadata"
  for f in "$FIX"/*.safetensors; do
    run "$KAUN" cp "$f" "$TEST_TMP/copy.safetensors"; expect_status 0 "cp $f"
    expect_same_file "$f" "$TEST_TMP/copy.safetensors" "cp keeps $(basename "$f") byte for byte"
  done
  run "$KAUN" cp --dtype BF16 "$FIX/fluxml_torch_with_metadata.safetensors" "$TEST_TMP/bf16.safetensors"
  expect_status 0 "cp --dtype BF16"
  run "$KAUN" ls "$TEST_TMP/bf16.safetensors"
  expect_out_contains "$(printf 'float64_357\tBF16\t[3,5,7]\t210')" "cp --dtype casts floats"
  expect_out_contains "$(printf 'int64_3\tI64\t[3]\t24')" "cp --dtype keeps integers"
  run "$KAUN" ls "$FIX/fluxml_sharded"; expect_status 0 "ls a sharded directory"
  [ "$(printf '%s\n' "$out" | wc -l)" -eq 36 ] && ok || bad "ls sharded: $(printf '%s\n' "$out" | wc -l) lines"
  run "$KAUN" verify "$FIX/fluxml_sharded/model.safetensors.index.json"; expect_status 0 "verify index"
  run "$KAUN" verify "$FIX/invalid/abuse_attempt_1_header_len_1000.safetensors"
  expect_status 1 "verify invalid fixture"; expect_err_contains "abuse_attempt_1_header_len_1000.safetensors" "verify invalid names it"
  expect_err_contains "claims 1000 bytes" "verify invalid says why"

  # a failed write half-way: exit 3, the old file intact, no temp file left
  mkdir -p "$TEST_TMP/full"
  cp "$FIX/syoyo_f64_model.safetensors" "$TEST_TMP/full/out.safetensors"
  (
    trap '' XFSZ
    ulimit -f 8
    "$KAUN" cp "$FIX/candle_encodec_jfk_codes_i64.safetensors" "$TEST_TMP/full/out.safetensors"
    echo $? >"$TEST_TMP/status"
  ) 2>"$TEST_TMP/err"
  status=$(cat "$TEST_TMP/status"); err=$(cat "$TEST_TMP/err")
  expect_status 3 "cp over a size limit"
  expect_err_contains "left it unchanged" "cp over a size limit explains"
  expect_same_file "$FIX/syoyo_f64_model.safetensors" "$TEST_TMP/full/out.safetensors" "failed cp keeps the old file"
  if ls -a "$TEST_TMP/full" | grep -q kaun-tmp; then bad "a temporary file was left behind"; else ok; fi
else
  echo "SKIPPED: fixture tests (the shared fixtures folder $KAUN_FIXTURES is absent)"
fi

# --- cp without --dtype: the file's own bytes, copied through the storage layer ---
# st_file PATH HEADER DATA: a SafeTensors file (DATA is printf text)
st_file() {
  h=$2
  while [ $((${#h} % 8)) -ne 0 ]; do h="$h "; done
  n=${#h}
  {
    printf "\\$(printf '%03o' $((n % 256)))\\$(printf '%03o' $((n / 256)))\\0\\0\\0\\0\\0\\0"
    printf '%s' "$h"
    printf "$3"
  } >"$1"
}
P="$TEST_TMP/params.safetensors"
run "$KAUN" cp "$P" "$TEST_TMP/cp1.safetensors"; expect_status 0 "cp"
expect_same_file "$P" "$TEST_TMP/cp1.safetensors" "cp output is the input, byte for byte"
run "$KAUN" cp "$TEST_TMP/state.safetensors" "$TEST_TMP/cp1.safetensors"; expect_status 0 "cp over a file"
expect_same_file "$TEST_TMP/state.safetensors" "$TEST_TMP/cp1.safetensors" "cp over a file replaces it"
mkdir -p "$TEST_TMP/cpdir"
run "$KAUN" cp "$P" "$TEST_TMP/cpdir"; expect_status 0 "cp into a directory"
expect_same_file "$P" "$TEST_TMP/cpdir/model.safetensors" "cp into a directory writes model.safetensors"
run "$KAUN" cp "$TEST_TMP/cpdir" "$TEST_TMP/cp2.safetensors"; expect_status 0 "cp from a directory"
expect_same_file "$P" "$TEST_TMP/cp2.safetensors" "cp from a directory copies its model"
# a header another writer ordered differently: saved again, kaun's way
st_file "$TEST_TMP/order.safetensors" \
  '{"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}' '\102\101'
st_file "$TEST_TMP/order-kaun.safetensors" \
  '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}' '\101\102'
run "$KAUN" cp "$TEST_TMP/order.safetensors" "$TEST_TMP/order-copy.safetensors"; expect_status 0 "cp of another writer's file"
expect_same_file "$TEST_TMP/order-kaun.safetensors" "$TEST_TMP/order-copy.safetensors" "cp writes another writer's file kaun's way"
# a bad source is refused as before the copy took this way, and nothing is written
head -c 100 "$P" >"$TEST_TMP/short.safetensors"
st_file "$TEST_TMP/extra.safetensors" '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}' 'xyz'
run "$KAUN" cp "$TEST_TMP/junk.safetensors" "$TEST_TMP/bad-copy.safetensors"; expect_status 1 "cp junk"
expect_err_contains "kaun: $TEST_TMP/junk.safetensors: the header claims 7021991845529153390 bytes, more than the limit of 100000000; this is not a SafeTensors file, or it is corrupt" "cp junk says why"
run "$KAUN" cp "$TEST_TMP/short.safetensors" "$TEST_TMP/bad-copy.safetensors"; expect_status 1 "cp a truncated file"
expect_err_contains "short.safetensors" "cp a truncated file names it"
run "$KAUN" cp "$TEST_TMP/extra.safetensors" "$TEST_TMP/bad-copy.safetensors"; expect_status 1 "cp a file with trailing bytes"
expect_err_contains "kaun: $TEST_TMP/extra.safetensors: the tensors cover 2 bytes of data but the file holds 3 after the header; the file is truncated or has trailing bytes" "cp a file with trailing bytes says why"
if [ -e "$TEST_TMP/bad-copy.safetensors" ]; then bad "cp of a bad file wrote a copy"; else ok; fi
run "$KAUN" cp "$TEST_TMP/nope.safetensors" "$TEST_TMP/bad-copy.safetensors"; expect_status 1 "cp a missing file"
expect_err_contains "kaun: cannot open '$TEST_TMP/nope.safetensors': No such file or directory" "cp a missing file names it"
# backends from a config: a root that behaves as an object store, and a
# plugin without local files (the copy then reads through the object)
export KAUN_PLUGIN_PATH="$KAUN_TEST_PLUGINS:$KAUN_BUILT_PLUGINS"
expect_same_file "$P" "$TEST_TMP/store/bert/1.2/model.safetensors" "cp into a configured backend keeps the bytes"
run "$KAUN" --config "$TEST_TMP/kaun.json" cp "$P" store://new/deep/params.safetensors
expect_status 0 "cp into a backend root makes folders"
expect_same_file "$P" "$TEST_TMP/store/new/deep/params.safetensors" "cp into a backend root keeps the bytes"
run "$KAUN" --config "$TEST_TMP/kaun.json" cp store://new/deep/params.safetensors "$TEST_TMP/cp3.safetensors"
expect_status 0 "cp out of a backend root"
expect_same_file "$P" "$TEST_TMP/cp3.safetensors" "cp out of a backend root keeps the bytes"
run "$KAUN" --config "$TEST_TMP/kaun.json" cp "$P" store://../escape.safetensors
expect_status 1 "cp out of a backend's root is refused"; expect_err_contains "would leave the backend's root" "cp out of a root says why"
run "$KAUN" --config "$TEST_TMP/kaun.json" cp mem://new/deep/params.safetensors "$TEST_TMP/cp4.safetensors"
expect_status 0 "cp from a backend without local files"
expect_same_file "$P" "$TEST_TMP/cp4.safetensors" "cp from a backend without local files keeps the bytes"
run "$KAUN" --config "$TEST_TMP/kaun.json" cp "$P" mem://to-mem.safetensors
expect_status 0 "cp into a backend without local files"
expect_same_file "$P" "$TEST_TMP/store/to-mem.safetensors" "cp into a backend without local files keeps the bytes"
unset KAUN_PLUGIN_PATH
# across file systems (copy_file_range says EXDEV: read and write)
if shm=$(mktemp -d /dev/shm/kaun-cli-XXXXXX 2>/dev/null); then
  cp "$P" "$shm/p.safetensors"
  run "$KAUN" cp "$shm/p.safetensors" "$TEST_TMP/cp5.safetensors"; expect_status 0 "cp across file systems"
  expect_same_file "$P" "$TEST_TMP/cp5.safetensors" "cp across file systems keeps the bytes"
  rm -rf "$shm"
fi
if find "$TEST_TMP" -name '*kaun-tmp*' | grep -q .; then bad "cp left a temporary file"; else ok; fi

# --- plugins are code: where they load from, and who may have changed them ---
T="$TEST_TMP/trust"
mkdir -p "$T/plugins" "$T/elsewhere/plugins" "$T/mem"
cp "$KAUN_TEST_PLUGINS/testmem.so" "$T/plugins/testmem.so"
printf '{"plugin_dirs": ["plugins"], "backends": {"m": {"plugin": "testmem", "dir": "%s"}}}\n' "$T/mem" >"$T/kaun.json"
# relative plugin_dirs are the config's folder's, not the working directory's
run sh -c 'cd "$1/elsewhere" && "$2" --config ../kaun.json plugins' sh "$T" "$KAUN"
expect_status 0 "kaun plugins with a relative plugin_dirs entry"
expect_out_contains "$(printf 'schemes: m\t')" "a relative plugin_dirs entry is the config's folder's"
expect_out_contains "$(printf '%s/plugins\t(../kaun.json:1)' "$T")" "kaun plugins shows the resolved folder"
case "$out" in *"$T/elsewhere/plugins"*) bad "plugin_dirs resolved against the working directory" ;; *) ok ;; esac
run env KAUN_PLUGIN_PATH="$T/plugins:plugins" "$KAUN" ls "$P"; expect_status 1 "a relative KAUN_PLUGIN_PATH entry"
expect_err_contains "KAUN_PLUGIN_PATH: the entry 'plugins' is relative" "a relative KAUN_PLUGIN_PATH entry is named"
expect_err_contains "use an absolute path" "a relative KAUN_PLUGIN_PATH entry says what to do"
# a plugin file others can write: refused before it is loaded, everywhere
chmod o+w "$T/plugins/testmem.so"
run env KAUN_PLUGIN_PATH="$T/plugins" "$KAUN" plugins; expect_status 0 "kaun plugins with a writable plugin"
expect_out_contains "$(printf 'BROKEN\t%s/plugins/testmem.so\t' "$T")" "kaun plugins lists a writable plugin as BROKEN"
expect_out_contains "testmem.so is writable by others: kaun only loads plugins that only root or you can change" "kaun plugins says why"
run env KAUN_PLUGIN_PATH="$T/plugins" "$KAUN" ls testmem://x; expect_status 1 "an unknown scheme finds a writable plugin"
expect_err_contains "no backend is configured for 'testmem://', so it uses the plugin 'testmem'" "an unknown scheme says it selects a plugin"
expect_err_contains "testmem.so is writable by others" "an unknown scheme's writable plugin is refused"
run "$KAUN" --config "$T/kaun.json" ls m://x; expect_status 1 "a configured writable plugin"
expect_err_contains "backends.m.plugin: " "a configured writable plugin names the key"
expect_err_contains "testmem.so is writable by others" "a configured writable plugin is refused"
chmod o-w "$T/plugins/testmem.so"; chmod o+w "$T/plugins"
run "$KAUN" --config "$T/kaun.json" ls m://x; expect_status 1 "a plugin in a folder others can write"
expect_err_contains "/plugins is writable by others" "a folder others can write is named"
chmod 1777 "$T/plugins"
run "$KAUN" --config "$T/kaun.json" plugins; expect_status 0 "a plugin in a sticky folder"
expect_out_contains "$(printf 'schemes: m\t')" "a sticky folder (as /tmp) is allowed"
chmod 755 "$T/plugins"

# --- a backend's root: no path leaves it, not even while links are swapped ---
# (each twice: with the kernel's openat2 and with the walk that replaces it)
C="$(cd "$TEST_TMP" && pwd -P)/confine"
mkdir -p "$C/root/in" "$C/outside"
cp "$P" "$C/root/in/m.safetensors"
st_file "$C/outside/m.safetensors" '{"outside_secret":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}' 'x'
ln -s "$C/outside" "$C/root/ldir"
ln -s in "$C/root/inlink"
printf '{"backends": {"team": {"plugin": "file", "root": "%s"}}}\n' "$C/root" >"$C/kaun.json"
for walk in 0 1; do
  run env KAUN_TEST_NO_OPENAT2=$walk "$KAUN" --config "$C/kaun.json" cp "$P" team://ldir/newsub/deeper/x.safetensors
  expect_status 1 "cp through a symlinked folder out of the root (walk=$walk)"
  expect_err_contains "team://ldir/newsub/deeper/x.safetensors: a symbolic link leads outside the backend's root $C/root ('ldir' -> '$C/outside')" "the refusal names the path, the root and the link (walk=$walk)"
  run env KAUN_TEST_NO_OPENAT2=$walk "$KAUN" --config "$C/kaun.json" ls team://ldir/m.safetensors
  expect_status 1 "ls through a link out of the root (walk=$walk)"
  expect_err_contains "leads outside the backend's root" "ls through a link out says why (walk=$walk)"
  run env KAUN_TEST_NO_OPENAT2=$walk "$KAUN" --config "$C/kaun.json" ls team://inlink/m.safetensors
  expect_status 0 "ls through a link inside the root (walk=$walk)"
  expect_out_contains "$(printf 'embed\tF32\t[8,4]\t128')" "a link inside the root is followed (walk=$walk)"
done
if [ "$(ls -A "$C/outside")" = "m.safetensors" ]; then ok; else bad "a refused cp wrote outside the root: $(ls -AR "$C/outside")"; fi
# the race: team://flip is swapped, over and over, between a folder inside
# (real) and a link out, with one atomic exchange (a C loop where a
# compiler is at hand, else a shell loop of ln and mv)
mkdir "$C/root/real"; cp "$P" "$C/root/real/m.safetensors"
ln -s "$C/outside" "$C/root/flip"
printf '#define _GNU_SOURCE\n#include <fcntl.h>\n#include <stdio.h>\nint main(int c, char **v) {\n  for (;;) renameat2(AT_FDCWD, v[1], AT_FDCWD, v[2], RENAME_EXCHANGE);\n}\n' >"$C/swap.c"
if [ -n "${KAUN_CC:-}" ] && $KAUN_CC -o "$C/swap" "$C/swap.c" 2>/dev/null; then
  "$C/swap" "$C/root/flip" "$C/root/real" &
else
  rm -rf "$C/root/real" "$C/root/flip"; ln -s in "$C/root/flip"
  (
    while :; do
      ln -sfn "$C/outside" "$C/root/flip.new" && mv -Tf "$C/root/flip.new" "$C/root/flip"
      ln -sfn in "$C/root/flip.new" && mv -Tf "$C/root/flip.new" "$C/root/flip"
    done
  ) 2>/dev/null &
fi
swapper=$!
runs=0; inside=0; leaked=0; end=$(($(date +%s) + 2))
while [ "$(date +%s)" -lt "$end" ]; do
  walk=$((runs % 2))
  if [ $((runs % 4)) -eq 3 ]; then
    KAUN_TEST_NO_OPENAT2=$walk "$KAUN" --config "$C/kaun.json" cp "$P" "team://flip/new$runs/x.safetensors" >/dev/null 2>&1
  else
    got=$(KAUN_TEST_NO_OPENAT2=$walk "$KAUN" --config "$C/kaun.json" ls team://flip/m.safetensors 2>/dev/null)
    case "$got" in *outside_secret*) leaked=$((leaked + 1)) ;; *embed*) inside=$((inside + 1)) ;; esac
  fi
  runs=$((runs + 1))
done
kill "$swapper"; wait "$swapper" 2>/dev/null
echo "swapped links: $runs runs of kaun, $inside read inside, $leaked outside"
if [ "$leaked" -eq 0 ]; then ok; else bad "kaun ls read the file outside the root in $leaked of $runs runs"; fi
if [ "$inside" -gt 0 ]; then ok; else bad "the swap test never read inside the root ($runs runs)"; fi
if [ "$(ls -A "$C/outside")" = "m.safetensors" ]; then ok; else bad "a cp during the swaps wrote outside the root: $(ls -AR "$C/outside")"; fi
if find "$C" -name '*kaun-tmp*' | grep -q .; then bad "the swap test left a temporary file"; else ok; fi
rm -rf "$C"

# --- crash leftovers: kaun cp killed with SIGKILL half-way ---
# The file under the name is always the old or the new one, whole; a
# temporary left behind (named temporaries, or the instant between an
# unnamed one's link and its rename) carries the dead writer's pid, and
# the next save into the folder removes it once it is a few seconds old.
K="$TEST_TMP/kill"
mkdir -p "$K/dst"
big=$((128 << 20))
st_file "$K/big.safetensors" "{\"big\":{\"dtype\":\"U8\",\"shape\":[$big],\"data_offsets\":[0,$big]}}" ''
truncate -s +$big "$K/big.safetensors"
cp "$P" "$K/dst/m.safetensors"
for named in 0 1; do
  for delay in 0.01 0.03 0.06 0.1; do
    KAUN_TEST_NO_O_TMPFILE=$named "$KAUN" cp "$K/big.safetensors" "$K/dst/m.safetensors" >/dev/null 2>&1 &
    pid=$!
    sleep "$delay"; kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    if cmp -s "$K/dst/m.safetensors" "$P" || cmp -s "$K/dst/m.safetensors" "$K/big.safetensors"; then ok
    else bad "a killed cp (named=$named, after ${delay}s) left a corrupt file"; fi
    for t in "$K"/dst/.m.safetensors.kaun-tmp-*; do
      [ -e "$t" ] || continue
      case "${t##*/}" in
        .m.safetensors.kaun-tmp-"$pid"-*) touch -d '1 minute ago' "$t"; ok ;;
        *) bad "a temporary without the dead writer's pid $pid: $t" ;;
      esac
    done
  done
done
cp "$P" "$K/src.safetensors"
run "$KAUN" cp "$K/src.safetensors" "$K/dst/other.safetensors"; expect_status 0 "a save after killed ones"
if ls -A "$K/dst" | grep -q kaun-tmp; then bad "the next save left dead writers' temporaries: $(ls -A "$K/dst")"; else ok; fi
rm -rf "$K"

# --- kaun cp --max-shard-size: shards and an index as save_pretrained writes them ---
S="$TEST_TMP/shard"
mkdir -p "$S"
run "$KAUN" cp --help; expect_out_contains "--max-shard-size SIZE" "cp --help shows --max-shard-size"
for v in 0 -5 5XB 1.5GB "" GB 5TB 99999999999999999999; do
  run "$KAUN" cp --max-shard-size "$v" "$P" "$S/bad"
  expect_status 2 "--max-shard-size '$v'"
  expect_err_contains "(got '$v')" "--max-shard-size '$v' names the value"
done
[ ! -e "$S/bad" ] && ok || bad "a usage error made the folder"
run "$KAUN" cp --max-shard-size 100 "$P" "$S/p100"; expect_status 0 "cp --max-shard-size 100"
[ "$(ls "$S/p100" | tr '\n' ' ')" = "model-00001-of-00003.safetensors model-00002-of-00003.safetensors model-00003-of-00003.safetensors model.safetensors.index.json " ] &&
  ok || bad "cp --max-shard-size 100 wrote: $(ls "$S/p100")"
# the index is what json.dumps(index, indent=2, sort_keys=True) + "\n" writes
python3 -c 'import json, sys; sys.stdout.write(json.dumps(json.load(open(sys.argv[1])), indent=2, sort_keys=True) + "\n")' \
  "$S/p100/model.safetensors.index.json" >"$S/py.json"
expect_same_file "$S/py.json" "$S/p100/model.safetensors.index.json" "the index as Python writes it"
grep -q '"total_size": 288' "$S/p100/model.safetensors.index.json" && ok || bad "the index's total_size"
grep -q '"embed": "model-00001-of-00003.safetensors"' "$S/p100/model.safetensors.index.json" && ok ||
  bad "a tensor larger than the limit has a shard of its own"
run "$KAUN" ls "$P"; whole=$out
run "$KAUN" ls "$S/p100"; expect_status 0 "ls of the shards"
[ "$out" = "$whole" ] && ok || bad "the shards hold the model's tensors: $out"
run "$KAUN" cp "$S/p100" "$S/one.safetensors"; expect_status 0 "cp of the shards into one file"
expect_same_file "$P" "$S/one.safetensors" "shards saved back as one file are the original bytes"
# sizes: KB and MB are powers of 10, KiB and MiB of 2, a final lowercase b means bits
st_file "$S/k.safetensors" '{"a":{"dtype":"U8","shape":[1000],"data_offsets":[0,1000]},"b":{"dtype":"U8","shape":[24],"data_offsets":[1000,1024]}}' ''
truncate -s +1024 "$S/k.safetensors"
for case in 1KiB:1 1kib:1 1024:1 1KB:2 1kB:2 8kb:2 1023:2 1MB:1; do
  size=${case%:*} files=${case#*:}
  run "$KAUN" cp --max-shard-size "$size" "$S/k.safetensors" "$S/k-$size"
  expect_status 0 "cp --max-shard-size $size"
  if [ "$files" = 1 ]; then
    [ "$(ls "$S/k-$size")" = model.safetensors ] && ok || bad "$size: 1024 bytes fit: $(ls "$S/k-$size")"
  else
    [ -e "$S/k-$size/model-00002-of-00002.safetensors" ] && ok || bad "$size: 1024 bytes do not fit: $(ls "$S/k-$size")"
  fi
done
# with --dtype: the sizes are those of the cast tensors
run "$KAUN" cp --dtype F16 --max-shard-size 100 "$P" "$S/f16"; expect_status 0 "cp --dtype F16 --max-shard-size"
grep -q '"total_size": 144' "$S/f16/model.safetensors.index.json" && ok || bad "F16 shards' total_size"
[ -e "$S/f16/model-00002-of-00002.safetensors" ] && ok || bad "F16 halves the shards: $(ls "$S/f16")"
run "$KAUN" ls "$S/f16"; expect_out_contains "$(printf 'embed\tF16\t[8,4]\t64')" "the shards are cast"
# DST must be a folder (made with its parents); one that cannot be made is named
run "$KAUN" cp --max-shard-size 100 "$P" "$S/x.safetensors"; expect_status 1 "--max-shard-size into a file name"
expect_err_contains "x.safetensors" "--max-shard-size into a file name names it"
run "$KAUN" cp --max-shard-size 100 "$P" "$P/sub"; expect_status 3 "--max-shard-size under a file"
expect_err_contains "$P/sub" "a folder that cannot be made is named"

if [ -d "$FIX" ]; then # the shared fixtures (absent in a distcheck of its own)
# --- a sharded model: every shard and the index, byte for byte, into a folder ---
run "$KAUN" cp "$FIX/fluxml_sharded" "$S/flux"; expect_status 0 "cp of a sharded model"
for f in "$FIX"/fluxml_sharded/*; do expect_same_file "$f" "$S/flux/${f##*/}" "cp of a sharded model"; done
[ "$(ls "$S/flux" | wc -l)" -eq 7 ] && ok || bad "cp of a sharded model wrote more: $(ls "$S/flux")"
run "$KAUN" cp "$FIX/fluxml_sharded/model.safetensors.index.json" "$S/flux-idx/"; expect_status 0 "cp of an index"
expect_same_file "$FIX/fluxml_sharded/model.safetensors.index.json" "$S/flux-idx/model.safetensors.index.json" "cp of an index"
# --dtype alone on a sharded model: cast shard by shard, the same files
run "$KAUN" cp --dtype F16 "$FIX/fluxml_sharded" "$S/flux16"; expect_status 0 "cp --dtype of a sharded model"
[ "$(ls "$S/flux16")" = "$(ls "$FIX/fluxml_sharded")" ] && ok || bad "cp --dtype of a sharded model wrote: $(ls "$S/flux16")"
run "$KAUN" ls "$S/flux16"; expect_out_contains "$(printf 'float32_3\tF16\t[3]\t6')" "cp --dtype casts a sharded model"
# --all: the other files of the folder too (a mirror's config.json, tokenizer...)
mkdir -p "$S/withcfg"
cp "$FIX"/fluxml_sharded/* "$S/withcfg/"
printf '{"hidden_size": 4}\n' >"$S/withcfg/config.json"
printf 'tokens\n' >"$S/withcfg/tokenizer.json"
mkdir -p "$S/withcfg/sub/deeper"
printf 'notes\n' >"$S/withcfg/sub/deeper/notes.txt"
run "$KAUN" cp --all "$S/withcfg" "$S/withcfg-copy"; expect_status 0 "cp --all of a folder"
for f in "$S"/withcfg/*; do [ -f "$f" ] && expect_same_file "$f" "$S/withcfg-copy/${f##*/}" "cp --all"; done
expect_same_file "$S/withcfg/sub/deeper/notes.txt" "$S/withcfg-copy/sub/deeper/notes.txt" "cp --all copies subfolders"
[ "$(ls "$S/withcfg-copy" | wc -l)" -eq 10 ] && ok || bad "cp --all wrote: $(ls "$S/withcfg-copy")"
run "$KAUN" cp --all "$P" "$S/all-of-a-file"; expect_status 1 "cp --all of a file"
expect_err_contains "params.safetensors" "cp --all of a file names it"
# a shard that cannot be stored: no index, the copied shards removed, the shard named
mkdir -p "$S/flux-bad/model-00003-of-00006.safetensors"
run "$KAUN" cp "$FIX/fluxml_sharded" "$S/flux-bad"; expect_status 3 "cp of a sharded model that fails half-way"
expect_err_contains "model-00003-of-00006.safetensors" "the shard that failed is named"
[ "$(ls "$S/flux-bad")" = model-00003-of-00006.safetensors ] && ok || bad "a failed copy left: $(ls "$S/flux-bad")"
else
  echo "SKIPPED: sharded fixture copies ($FIX is absent)"
fi
# a shard missing at the source: nothing is written
mkdir -p "$S/src"
cp "$S/p100"/* "$S/src/"
rm "$S/src/model-00002-of-00003.safetensors"
run "$KAUN" cp "$S/src" "$S/src-copy"; expect_status 1 "cp of a model with a missing shard"
expect_err_contains "model-00002-of-00003.safetensors" "the missing shard is named"
[ ! -e "$S/src-copy" ] && ok || bad "a copy of a model with a missing shard made $S/src-copy"

# a DST ending in '/' is a folder, made with its parents
run "$KAUN" cp "$TEST_TMP/params.safetensors" "$TEST_TMP/newdir/"; expect_status 0 "cp FILE DIR/"
expect_same_file "$TEST_TMP/params.safetensors" "$TEST_TMP/newdir/model.safetensors" "cp FILE DIR/ writes DIR/model.safetensors"
run "$KAUN" cp --dtype F16 "$TEST_TMP/params.safetensors" "$TEST_TMP/nested/deeper/dir/"
expect_status 0 "cp --dtype into nested new folders"
[ -f "$TEST_TMP/nested/deeper/dir/model.safetensors" ] && ok || bad "cp made nested/deeper/dir/model.safetensors"
run "$KAUN" cp --max-shard-size 100 "$TEST_TMP/params.safetensors" "$TEST_TMP/a/b/c"
expect_status 0 "cp --max-shard-size into nested new folders"
[ -f "$TEST_TMP/a/b/c/model.safetensors.index.json" ] && ok || bad "cp --max-shard-size made a/b/c's index"

finish
