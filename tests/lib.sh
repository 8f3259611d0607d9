# Helpers for the shell tests: assertions that count and explain.
passed=0
failed=0
TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/kaun-cli-XXXXXX")
trap 'rm -rf "$TEST_TMP"' EXIT

ok() { passed=$((passed + 1)); }
bad() {
  failed=$((failed + 1))
  printf 'FAIL: %s\n' "$*" >&2
}

# run CMD...: runs a command, keeping its status, stdout and stderr.
run() {
  "$@" >"$TEST_TMP/out" 2>"$TEST_TMP/err"
  status=$?
  out=$(cat "$TEST_TMP/out")
  err=$(cat "$TEST_TMP/err")
}

expect_status() { # WANT DESCRIPTION
  if [ "$status" -eq "$1" ]; then ok; else bad "$2: exit $status, wanted $1 (stderr: $err)"; fi
}
expect_out_contains() { # TEXT DESCRIPTION
  case "$out" in *"$1"*) ok ;; *) bad "$2: stdout lacks '$1': $out" ;; esac
}
expect_err_contains() { # TEXT DESCRIPTION
  case "$err" in *"$1"*) ok ;; *) bad "$2: stderr lacks '$1': $err" ;; esac
}
expect_same_file() { # A B DESCRIPTION
  if cmp -s "$1" "$2"; then ok; else bad "$3: $1 and $2 differ"; fi
}

finish() {
  printf '%d passed, %d failed\n' "$passed" "$failed"
  [ "$failed" -eq 0 ]
}
