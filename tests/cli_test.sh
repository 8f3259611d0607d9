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
printf 'not a safetensors file at all' >"$TEST_TMP/junk.safetensors"
run "$KAUN" verify "$TEST_TMP/junk.safetensors"; expect_status 1 "verify junk"
expect_err_contains "junk.safetensors" "verify junk names the file"
run "$KAUN" inspect "$TEST_TMP"; expect_status 1 "inspect a directory"; expect_err_contains "is a directory" "inspect a directory"
run "$KAUN" cp --dtype I32 "$TEST_TMP/params.safetensors" "$TEST_TMP/x.safetensors"
expect_status 2 "cp --dtype I32"; expect_err_contains "--dtype must be" "cp --dtype I32"
run "$KAUN" cp "$TEST_TMP/params.safetensors" "/nonexistent-dir/x.safetensors"
expect_status 1 "cp into a missing directory"; expect_err_contains "/nonexistent-dir" "cp into a missing directory"

# --- plugins, config files and URIs ---
export KAUN_PLUGIN_PATH="$KAUN_TEST_PLUGINS:$KAUN_BUILT_PLUGINS"
run "$KAUN" plugins; expect_status 0 "kaun plugins"
expect_out_contains "$(printf 'registry\t1.0\tABI 1.1')" "kaun plugins lists the registry"
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

finish
