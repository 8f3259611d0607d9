#!/bin/sh
# The C program in docs/getting-started.md compiles against the built
# library and prints what the guide says it prints.
. "$(dirname "$0")/lib.sh"
: "${KAUN_SRCDIR:?}" "${KAUN_BUILDDIR:?}" "${KAUN_CC:?}"
doc="$KAUN_SRCDIR/docs/getting-started.md"
awk '/^```c$/ {on=1; next} /^```$/ {if (on) exit} on {print}' "$doc" >"$TEST_TMP/first.c"
if grep -q 'int main' "$TEST_TMP/first.c"; then ok; else bad "no C program in $doc"; fi
run sh -c "$KAUN_CC -I'$KAUN_SRCDIR/include' -o '$TEST_TMP/first' '$TEST_TMP/first.c' \
  -L'$KAUN_BUILDDIR/.libs' -lkaun -Wl,-rpath,'$KAUN_BUILDDIR/.libs'"
expect_status 0 "the getting-started program compiles"
cd "$TEST_TMP" || exit 1
run ./first
expect_status 0 "the getting-started program runs"
expect_out_contains "w[5] = 5, zero-copy: 1" "the getting-started program's output"
if [ -f "$TEST_TMP/model.safetensors" ]; then ok; else bad "the program saved no model"; fi

# the lazy reader's example, on the model the first program saved
awk '/reader example/ {want=1} want && /^```c$/ {on=1; next} on && /^```$/ {exit} on {print}' \
  "$doc" >"$TEST_TMP/reader.c"
if grep -q 'kaun_reader_open' "$TEST_TMP/reader.c"; then ok; else bad "no reader example in $doc"; fi
run sh -c "$KAUN_CC -I'$KAUN_SRCDIR/include' -o '$TEST_TMP/reader' '$TEST_TMP/reader.c' \
  -L'$KAUN_BUILDDIR/.libs' -lkaun -Wl,-rpath,'$KAUN_BUILDDIR/.libs'"
expect_status 0 "the reader example compiles"
run ./reader
expect_status 0 "the reader example runs"
expect_out_contains "layers.0.weight: F32, 2 dims" "the reader example lists the tensors"
expect_out_contains "row 1 starts with 3" "the reader example reads a slice"
expect_out_contains "ready: layers.0.bias (12 bytes)" "the reader example streams"
finish
