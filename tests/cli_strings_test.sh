#!/bin/sh
# The header's strings through the kaun command: names and metadata with
# NUL bytes (JSON "\u0000") survive load and save; names with newlines,
# tabs and escape sequences cannot forge rows or reach the terminal raw;
# JSON output stays exact.  The files are written byte by byte here.
. "$(dirname "$0")/lib.sh"
KAUN=${KAUN_BIN:?KAUN_BIN must point at the kaun binary}
command -v python3 >/dev/null || { echo "cli_strings_test: needs python3" >&2; exit 1; }
T=$TEST_TMP

# mkst OUT [--shuffle] NAME...: a SafeTensors file with one U8 tensor per
# NAME (Python escapes: '\n', '\x00') holding its rank among the names in
# bytewise order, and metadata with NUL bytes, written as kaun's (and the
# reference's) writer would: names bytewise, serde_json's escaping, spaces
# to a multiple of 8.  With --shuffle the tensors are in reverse order
# (valid, not canonical: a copy must load and save it).
mkst() {
  python3 - "$@" <<'PY'
import json, struct, sys
out, args = sys.argv[1], sys.argv[2:]
shuffle = args[:1] == ["--shuffle"]
names = [a.encode().decode("unicode_escape") for a in (args[1:] if shuffle else args)]
names.sort(key=lambda n: n.encode())
value = {n: i for i, n in enumerate(names)}  # the same whatever the order
if shuffle:
    names.reverse()
dump = lambda s: json.dumps(s, ensure_ascii=False)
parts = ['"__metadata__":{%s:%s,"format":"pt"}' % (dump("k\x00ey"), dump("v\x00al\n"))]
for i, n in enumerate(names):
    parts.append('%s:{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (dump(n), i, i + 1))
h = ("{" + ",".join(parts) + "}").encode()
h += b" " * (-len(h) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + bytes(value[n] for n in names))
PY
}

# the names, as Python escapes
NL='a\nb'; TAB='c\td'; ESC='e\x1b[31mf'; NUL='g\x00h'; BS='back\\slash'
DEL='i\x7fj'; C1='k\x9b2Jl'; META='__metadata__\x00x'; NUL2='g\x00i'; PLAIN='layer.0'
mkst "$T/m.safetensors" "$NL" "$TAB" "$ESC" "$NUL" "$BS" "$DEL" "$C1" "$META" "$NUL2" "$PLAIN" \
  || bad "could not write the test file"

# jsoncheck DESCRIPTION PYTHON...: stdin must be JSON; PYTHON checks `doc`
jsoncheck() {
  desc=$1
  shift
  if printf '%s' "$out" | python3 -c '
import json, sys
def no_dups(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "duplicate keys: %r" % keys
    return dict(pairs)
doc = json.load(sys.stdin, object_pairs_hook=no_dups)
want = sorted(a.encode().decode("unicode_escape") for a in sys.argv[2:])
exec(sys.argv[1])' "$@"; then ok; else bad "$desc: $out"; fi
}

# --- ls: one line per tensor, four fields, escapes instead of raw bytes ---
run "$KAUN" ls "$T/m.safetensors"; expect_status 0 "ls of hostile names"
lines=$(printf '%s\n' "$out" | wc -l)
[ "$lines" -eq 10 ] && ok || bad "ls gave $lines lines for 10 tensors: $out"
fields=$(printf '%s\n' "$out" | awk -F '\t' 'NF != 4 {print}')
[ -z "$fields" ] && ok || bad "ls lines without exactly four fields: $fields"
for want in 'a\nb' 'c\td' 'e\x1b[31mf' 'g\0h' 'g\0i' 'back\\slash' 'i\x7fj' 'k\xc2\x9b2Jl' '__metadata__\0x'; do
  expect_out_contains "$(printf '%s\tU8\t[1]\t1' "$want")" "ls escapes '$want'"
done
expect_out_contains "$(printf 'layer.0\tU8\t[1]\t1')" "ls leaves plain names alone"
raw=$(printf '%s' "$out" | tr -d '\n\t' | LC_ALL=C tr -d '[:print:]' | wc -c)
[ "$raw" -eq 0 ] && ok || bad "ls printed $raw raw control or non-ASCII bytes"

# --- ls --json and inspect: valid JSON, names exactly the originals ---
run "$KAUN" ls --json "$T/m.safetensors"; expect_status 0 "ls --json of hostile names"
jsoncheck "ls --json is valid JSON with the original names" \
  'assert sorted(t["name"] for t in doc) == want, [t["name"] for t in doc]' \
  "$NL" "$TAB" "$ESC" "$NUL" "$BS" "$DEL" "$C1" "$META" "$NUL2" "$PLAIN"
expect_out_contains '"name": "g\u0000h"' "ls --json writes NUL as \\u0000"
expect_out_contains '"name": "e\u001b[31mf"' "ls --json writes ESC as \\u001b"
raw=$(printf '%s' "$out" | tr -d '\n' | LC_ALL=C tr -d '[:print:]' | wc -c)
[ "$raw" -eq 0 ] && ok || bad "ls --json printed $raw raw control or non-ASCII bytes"
run "$KAUN" inspect "$T/m.safetensors"; expect_status 0 "inspect of hostile names"
jsoncheck "inspect is valid JSON without duplicate keys, with the original strings" '
assert sorted(doc["tensors"]) == want, sorted(doc["tensors"])
assert doc["metadata"] == {"k\x00ey": "v\x00al\n", "format": "pt"}, doc["metadata"]
assert "__metadata__\x00x" in doc["tensors"]' \
  "$NL" "$TAB" "$ESC" "$NUL" "$BS" "$DEL" "$C1" "$META" "$NUL2" "$PLAIN"

# --- cp: a lossless round trip, byte for byte ---
run "$KAUN" cp "$T/m.safetensors" "$T/copy.safetensors"; expect_status 0 "cp of NUL names"
expect_same_file "$T/m.safetensors" "$T/copy.safetensors" "cp keeps NUL bytes in names and metadata"
# not canonical (other order): loaded and saved, then the same as the canonical file
mkst "$T/shuffled.safetensors" --shuffle "$NL" "$TAB" "$ESC" "$NUL" "$BS" "$DEL" "$C1" "$META" "$NUL2" "$PLAIN"
run "$KAUN" cp "$T/shuffled.safetensors" "$T/resaved.safetensors"; expect_status 0 "cp (load and save) of NUL names"
expect_same_file "$T/m.safetensors" "$T/resaved.safetensors" "load and save keep every string whole"
run "$KAUN" cp --dtype F16 "$T/shuffled.safetensors" "$T/cast.safetensors"; expect_status 0 "cp --dtype of NUL names"
expect_same_file "$T/m.safetensors" "$T/cast.safetensors" "cp --dtype keeps every string whole (U8 is not cast)"
# a sharded checkpoint whose index maps names with NUL bytes
mkdir -p "$T/shards"
mkst "$T/shards/model-1.safetensors" "$NUL" "$NUL2"
mkst "$T/shards/model-2.safetensors" "$META" "$ESC"
printf '{"weight_map": {"g\\u0000h": "model-1.safetensors", "g\\u0000i": "model-1.safetensors", "__metadata__\\u0000x": "model-2.safetensors", "e\\u001b[31mf": "model-2.safetensors"}}' \
  >"$T/shards/model.safetensors.index.json"
run "$KAUN" ls "$T/shards"; expect_status 0 "ls of an index with NUL names"
expect_out_contains "$(printf 'g\\0i\tU8')" "an index finds names that differ after a NUL"
lines=$(printf '%s\n' "$out" | wc -l)
[ "$lines" -eq 4 ] && ok || bad "ls of the index gave $lines lines for 4 tensors: $out"
run "$KAUN" cp "$T/shards" "$T/merged.safetensors"; expect_status 0 "cp of an index with NUL names"
run "$KAUN" ls --json "$T/merged.safetensors"
jsoncheck "a merged copy keeps the names of the shards" \
  'assert sorted(t["name"] for t in doc) == want, doc' "$NUL" "$NUL2" "$META" "$ESC"

# --- cat and verify: the header line and arguments escaped ---
run "$KAUN" cat "$T/m.safetensors" "$(printf 'c\td')"; expect_status 0 "cat a name with a tab"
expect_out_contains "$(printf 'c\\td\tU8\t[1]\n3')" "cat escapes the name in its header line"
run "$KAUN" cat "$T/m.safetensors" "$(printf 'e\033[31mf')"; expect_status 0 "cat a name with ESC"
expect_out_contains "$(printf 'e\\x1b[31mf\tU8\t[1]\n4')" "cat escapes ESC in its header line"
run "$KAUN" cat "$T/m.safetensors" "$(printf 'no\033[2Jsuch')"; expect_status 1 "cat a missing name"
expect_err_contains 'no tensor '"'"'no\x1b[2Jsuch'"'" "the error quotes the name escaped"
case "$err" in *"$(printf '\033')"*) bad "an error message sent ESC to the terminal" ;; *) ok ;; esac
cp "$T/m.safetensors" "$T/$(printf 'x\033[2J\ny').safetensors"
run "$KAUN" verify "$T/$(printf 'x\033[2J\ny').safetensors"; expect_status 0 "verify a hostile path"
expect_out_contains 'x\x1b[2J\ny.safetensors: OK, 10 tensors' "verify escapes the path it prints"

# --- error messages that quote names from a file: one line, escaped ---
python3 - "$T/bad.safetensors" <<'PY'
import struct, sys
h = b'{"evil\\n\\u001b[31mname":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b"\0\0")
PY
run "$KAUN" ls "$T/bad.safetensors"; expect_status 1 "ls of a bad file with a hostile name"
expect_err_contains "tensor 'evil\\n\\x1b[31mname' begins at 1" "the message quotes the name escaped"
lines=$(printf '%s\n' "$err" | wc -l)
[ "$lines" -eq 1 ] && ok || bad "the error took $lines lines: $err"
case "$err" in *"$(printf '\033')"*) bad "an error message sent ESC to the terminal" ;; *) ok ;; esac
# two tensors that differ after a NUL, the same name twice
python3 - "$T/dup.safetensors" <<'PY'
import struct, sys
e = b'{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}'
h = b'{"a\\u0000\\u001b":' + e % (0, 1) + b',"a\\u0000\\u001b":' + e % (1, 2) + b'}'
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b"\0\0")
PY
run "$KAUN" verify "$T/dup.safetensors"; expect_status 1 "verify of a duplicate name with a NUL"
expect_err_contains 'duplicate key "a\0\x1b"' "the duplicate is named whole, escaped"

# --- every control character: 65 names, each with one C0, DEL or C1 code ---
# point (and invalid UTF-8 after it); ls, inspect's text and errors must
# never carry one raw: one line per tensor, no byte below 0x20 but the
# separators, no DEL, no UTF-8 C1 (c2 80..c2 9f)
python3 - "$T/all.safetensors" <<'PY'
import json, struct, sys
codes = list(range(0x00, 0x20)) + [0x7f] + list(range(0x80, 0xa0))
names = sorted(("n%02x-%s-end" % (c, chr(c))) for c in codes)
names.sort(key=lambda n: n.encode())
parts = ['%s:{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (json.dumps(n), i, i + 1)
         for i, n in enumerate(names)]
h = ("{" + ",".join(parts) + "}").encode()
h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + bytes(len(names)))
PY
rawcheck() { # DESCRIPTION LINES: $out has LINES lines and no raw control byte
  if printf '%s' "$out" | python3 -c '
import sys
b = sys.stdin.buffer.read()
bad = [c for c in b if (c < 0x20 and c not in (9, 10)) or c == 0x7f]
c1 = any(b[i] == 0xc2 and 0x80 <= b[i + 1] <= 0x9f for i in range(len(b) - 1))
lines = b.count(b"\n") + (0 if b.endswith(b"\n") else 1)
assert not bad and not c1, "raw control bytes: %r" % bad
assert lines == int(sys.argv[1]), "%d lines" % lines' "$2"; then ok; else bad "$1: $out"; fi
}
run "$KAUN" ls "$T/all.safetensors"; expect_status 0 "ls of 65 control characters"
rawcheck "ls of 65 control characters" 65
for c in 00 0a 1b 7f 9b; do expect_out_contains "n$c-" "ls names n$c"; done
run "$KAUN" cat "$T/all.safetensors" "$(printf 'n1b-\033-end')"; expect_status 0 "cat a name with ESC"
rawcheck "cat's header line" 2
run "$KAUN" cat "$T/all.safetensors" "$(printf 'missing\001\177\302\233')"; expect_status 1 "cat a missing name"
out=$err; rawcheck "the error naming a missing name" 1

finish
