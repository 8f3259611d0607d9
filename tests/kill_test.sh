#!/bin/sh
# Crash safety: kaun processes killed with SIGKILL at random moments of
#   save    a local save: `kaun cp` byte for byte (copy_file_range) and
#           `kaun cp --dtype F16` (the reference writer), over an old file
#           or into an empty folder, with unnamed and named temporaries
#   hub     `kaun get hf://org/demo` (a whole repo) from tests/servers/hub.py
#   s3get   `kaun get s3://...`: an S3 object into the download cache
#   s3put   `kaun cp FILE s3://...`: a multipart upload to s3rver
# ROUNDS times each (KAUN_KILL_ROUNDS, default 25, 10 in an ASan build;
# `scripts/dev.sh kill` runs 100).  Each scenario's operation is timed
# first; the kills are drawn from 0 to 1.2 times that, so they land
# before, during and after every step.  After each kill: whatever is under a final name is complete and
# right (byte-identical, `kaun verify --data`, blobs hash to their names),
# nothing partial is served, and the next call succeeds with the right
# bytes.  KAUN_KILL_SEED replays a run; KAUN_KILL_SCENARIOS picks some.
. "$(dirname "$0")/lib.sh"
KAUN=${KAUN_BIN:?KAUN_BIN must point at the kaun binary}
export KAUN_PLUGIN_PATH="$KAUN_BUILT_PLUGINS"
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_HUB_OFFLINE HF_HOME AWS_PROFILE AWS_ACCESS_KEY_ID \
  AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_ENDPOINT_URL KAUN_TEST_NO_O_TMPFILE

ROUNDS=${KAUN_KILL_ROUNDS:-25}
SEED=${KAUN_KILL_SEED:-$(date +%s)}
SCENARIOS=${KAUN_KILL_SCENARIOS:-save hub s3get s3put}
# An ASan+UBSan build runs 10 rounds: its value is in the complete runs
# after each kill, and the test command runs both builds.
if [ -z "${KAUN_KILL_ROUNDS:-}" ] && [ -n "$KAUN_BUILDDIR" ] &&
  grep -q -- '-fsanitize=address' "$KAUN_BUILDDIR/Makefile" 2>/dev/null; then
  ROUNDS=10
fi
echo "kill: $ROUNDS rounds each, seed $SEED (KAUN_KILL_SEED=$SEED replays it)"

W="$TEST_TMP"
servers=""
cleanup() {
  for p in $servers; do kill "$p" 2>/dev/null; done
  for p in $servers; do wait "$p" 2>/dev/null; done
  rm -rf "$TEST_TMP"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

# st_random FILE NAME BYTES: a SafeTensors file with one F32 tensor of
# random values (BYTES a multiple of 4).
st_random() {
  h="{\"$2\":{\"dtype\":\"F32\",\"shape\":[$(($3 / 4))],\"data_offsets\":[0,$3]}}"
  while [ $((${#h} % 8)) -ne 0 ]; do h="$h "; done
  n=${#h}
  {
    printf "\\$(printf '%03o' $((n % 256)))\\$(printf '%03o' $((n / 256)))\\0\\0\\0\\0\\0\\0"
    printf '%s' "$h"
    head -c "$3" /dev/urandom
  } >"$1"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT: up to 15 s for a listener
wait_port() {
  i=0
  while ! python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 150 ] || return 1
    sleep 0.1
  done
}

# time_op CMD...: the median duration of 3 complete runs, in ms (into
# $dur); `reset_op` (set by the scenario) restores the starting state
# before each.
time_op() {
  times=""
  for _ in 1 2 3; do
    reset_op
    t0=$(now_ms)
    "$@" >/dev/null 2>"$W/time.err" || bad "a complete run of '$*' failed: $(cat "$W/time.err")"
    t1=$(now_ms)
    times="$times $((t1 - t0))"
  done
  dur=$(printf '%s\n' $times | sort -n | sed -n 2p)
  [ "$dur" -gt 0 ] || dur=1
}

# delays NAME: ROUNDS delays in seconds, uniform in [0, 1.2 * $dur ms)
delays() {
  awk -v n="$ROUNDS" -v max="$dur" -v seed="$SEED$1" 'BEGIN {
    srand(seed); for (i = 0; i < n; i++) printf "%.3f\n", rand() * max * 1.2 / 1000 }' \
    >"$W/delays.$1"
}

# launch_kill DELAY CMD...: starts CMD, SIGKILLs it after DELAY seconds;
# sets pid and rc (137: killed, 0: it had finished, else it failed).
launch_kill() {
  d=$1
  shift
  "$@" >/dev/null 2>"$W/kill.err" </dev/null &
  pid=$!
  sleep "$d"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  rc=$?
  killed=$((killed + (rc == 137)))
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 137 ]; then
    bad "$scenario round $round: '$*' failed on its own (exit $rc): $(cat "$W/kill.err")"
  fi
}

# phase NAME: counts where a kill landed, judged by what was on disk (a
# run that finished before its kill counts as finished)
phase() {
  if [ "$rc" -eq 0 ]; then
    finished=$((finished + 1))
    return
  fi
  eval "ph_$1=\$((\${ph_$1:-0} + 1))"
  case " $phases " in *" $1 "*) ;; *) phases="$phases $1" ;; esac
}

start_scenario() {
  scenario=$1
  litter=""
  killed=0
  finished=0
  phases=""
  failed_before=$failed
  t_start=$(now_ms)
}

end_scenario() {
  summary=""
  for p in $phases; do summary="$summary $p $(eval echo "\$ph_$p"),"; unset "ph_$p"; done
  secs=$(awk -v ms=$(($(now_ms) - t_start)) 'BEGIN { printf "%.1f", ms / 1000 }')
  echo "kill: $scenario $ROUNDS rounds, $((failed - failed_before)) failures (a run takes ${dur} ms;" \
    "killed $killed:${summary%,}; finished first $finished;${litter:+ $litter temporaries left;}" \
    "${secs} s)"
}

# the kaun we call: stdout and stderr of the last call in $out and $err
K="$KAUN --config $W/config.json"

# ---- files --------------------------------------------------------------------------
st_random "$W/a.safetensors" w $((24 << 20)) # the new version of everything
st_random "$W/b.safetensors" w $((24 << 20)) # another version (the S3 key's old one)
mkdir -p "$W/q"
"$KAUN_QUICKSTART" "$W/q" >/dev/null || bad "quickstart failed"
OLD="$W/q/params.safetensors" # the old file under the save's name
$KAUN cp --dtype F16 "$W/a.safetensors" "$W/a16.safetensors" || bad "the F16 reference save failed"

# ---- save ---------------------------------------------------------------------------
# Round r: kind r%2 (0 byte for byte, 1 --dtype F16), named temporaries
# when (r/2)%2, and an empty folder instead of the old file when r%5 == 4.
# save_args: the round's command line (after `kaun`) in $save_argv, its
# output in $want, whether temporaries are named in $named
save_args() {
  if [ $((round % 2)) -eq 0 ]; then
    save_argv="cp $W/a.safetensors $D/m.safetensors"
    want="$W/a.safetensors"
  else
    save_argv="cp --dtype F16 $W/a.safetensors $D/m.safetensors"
    want="$W/a16.safetensors"
  fi
  named=$(((round / 2) % 2))
}

save_check() {
  # the name holds the old file, nothing (when there was none) or the whole new one
  new=0
  if [ ! -e "$D/m.safetensors" ]; then
    [ "$fresh" = 1 ] && ok || bad "save round $round: the old file is gone"
  elif cmp -s "$D/m.safetensors" "$want"; then
    new=1
    run $KAUN verify --data "$D/m.safetensors"
    expect_status 0 "save round $round: verify --data of the new file"
  elif [ "$fresh" = 0 ] && cmp -s "$D/m.safetensors" "$OLD"; then
    ok
  else
    bad "save round $round (after ${d}s): m.safetensors is neither the old nor the new file" \
      "($(wc -c <"$D/m.safetensors") bytes)"
  fi
  # besides it, only temporaries that carry the dead writer's pid
  temps=0
  for t in "$D"/.* "$D"/*; do
    case "${t##*/}" in
      . | .. | m.safetensors | '*' | '.*') ;;
      .m.safetensors.kaun-tmp-"$pid"-*)
        temps=$((temps + 1))
        touch -d '1 minute ago' "$t" ;;
      *) bad "save round $round: a stray file $t" ;;
    esac
  done
  if [ $new = 1 ]; then phase after_rename; elif [ $temps -gt 0 ]; then phase temp_left; else phase before; fi
  # the next save succeeds, is whole, and removes the dead writer's temporary
  run env KAUN_TEST_NO_O_TMPFILE=$named $KAUN $save_argv
  expect_status 0 "save round $round: the next save"
  expect_same_file "$D/m.safetensors" "$want" "save round $round: the next save's file"
  if ls -A "$D" | grep -q kaun-tmp; then bad "save round $round: temporaries left: $(ls -A "$D")"; else ok; fi
}

if case " $SCENARIOS " in *" save "*) true ;; *) false ;; esac; then
  start_scenario save
  D="$W/save"
  reset_op() { rm -rf "$D"; mkdir -p "$D"; cp "$OLD" "$D/m.safetensors"; }
  round=0
  save_args
  time_op $KAUN $save_argv
  t_even=$dur
  round=1
  save_args
  time_op $KAUN $save_argv
  dur=$(((t_even + dur) / 2))
  delays save
  round=0
  while read -r delay <&3; do
    fresh=$((round % 5 == 4))
    reset_op
    [ $fresh = 1 ] && rm -f "$D/m.safetensors"
    save_args
    launch_kill "$delay" env KAUN_TEST_NO_O_TMPFILE=$named $KAUN $save_argv
    save_check
    round=$((round + 1))
  done 3<"$W/delays.save"
  end_scenario
fi

# ---- the Hub ------------------------------------------------------------------------
commit=0123456789abcdef0123456789abcdef01234567
HUB="$W/hub/repos/org/demo"
CACHE="$W/cache"
REPO="$CACHE/huggingface/models--org--demo"

# git's blob SHA-1 of a file (the name of a regular file's blob)
git_sha1() { { printf 'blob %d\0' "$(wc -c <"$1")"; cat "$1"; } | sha1sum | cut -c1-40; }

hub_check() {
  : "${litter:=0}"
  blobs=0
  partial=0
  if [ -d "$REPO/blobs" ]; then
    for b in "$REPO"/blobs/* "$REPO"/blobs/.*; do
      name=${b##*/}
      case $name in
        . | .. | '*' | '.*') continue ;;
        .*.incomplete) partial=$((partial + 1)); continue ;;
      esac
      case ${#name} in
        64) sum=$(sha256sum <"$b" | cut -c1-64) ;;
        40) sum=$(git_sha1 "$b") ;;
        *) sum="" ;;
      esac
      if [ "$sum" = "$name" ]; then blobs=$((blobs + 1)); else bad "hub round $round: blob $name holds other bytes ($sum)"; fi
    done
  fi
  links=0
  if [ -d "$REPO/snapshots" ]; then
    for s in "$REPO/snapshots/$commit"/*; do
      [ -e "$s" ] || [ -L "$s" ] || continue
      if [ -L "$s" ] && [ -f "$s" ]; then
        case "$(readlink "$s")" in
          ../../blobs/*) links=$((links + 1)) ;;
          *) bad "hub round $round: $s points outside blobs/: $(readlink "$s")" ;;
        esac
        case "${s##*/}" in
          config.json | model.safetensors) expect_same_file "$s" "$HUB/$commit/${s##*/}" "hub round $round: $s" ;;
          *) bad "hub round $round: a stray snapshot entry ${s##*/}" ;;
        esac
      else
        bad "hub round $round: $s is not a link to a complete blob"
      fi
    done
  fi
  if [ -e "$REPO/refs/main" ]; then
    [ "$(cat "$REPO/refs/main")" = "$commit" ] && ok || bad "hub round $round: refs/main holds '$(cat "$REPO/refs/main")'"
  fi
  if [ $links = 2 ]; then phase linked
  elif [ $partial -gt 0 ]; then phase partial_blob
  elif [ $blobs -gt $links ]; then phase blob_unlinked
  elif [ $links = 1 ]; then phase one_linked
  else phase nothing; fi
  # offline, the cache serves the whole file or nothing
  run env HF_HUB_OFFLINE=1 $K get hf://org/demo/model.safetensors
  if [ "$status" -eq 0 ]; then
    expect_same_file "$out" "$W/a.safetensors" "hub round $round: what the cache serves offline"
  else
    expect_err_contains "org/demo" "hub round $round: an offline miss names the repo"
  fi
  # the next call downloads what is missing, and leaves no temporary
  run $K get hf://org/demo
  expect_status 0 "hub round $round: the next get"
  [ "$out" = "$REPO/snapshots/$commit" ] && ok || bad "hub round $round: get printed '$out'"
  expect_same_file "$REPO/snapshots/$commit/model.safetensors" "$W/a.safetensors" "hub round $round: the weights"
  expect_same_file "$REPO/snapshots/$commit/config.json" "$HUB/$commit/config.json" "hub round $round: config.json"
  left=$(find "$CACHE" -name '*.incomplete')
  [ -z "$left" ] && ok || bad "hub round $round: temporaries left after the next get: $left"
  # a kill between writing refs/REV's temporary and renaming it: the next
  # get removes it (core/hf.c write_ref); snapshot links are made whole
  left=$(find "$REPO/refs" "$REPO/snapshots" -name '*.tmp' 2>/dev/null)
  [ -z "$left" ] && ok || bad "hub round $round: .tmp files left after the next get: $left"
}

if case " $SCENARIOS " in *" hub "*) true ;; *) false ;; esac; then
  start_scenario hub
  mkdir -p "$HUB/$commit"
  cp "$W/a.safetensors" "$HUB/$commit/model.safetensors"
  printf '{"hidden_size": 4}\n' >"$HUB/$commit/config.json"
  printf '{"refs": {"main": "%s"}, "lfs": ["*.safetensors"]}\n' "$commit" >"$HUB/repo.json"
  printf '[]\n' >"$W/hub/tokens.json"
  python3 "$KAUN_SRCDIR/tests/servers/hub.py" --root "$W/hub" --port 0 \
    --port-file "$W/hub.port" 2>"$W/hub.log" &
  servers="$servers $!"
  i=0
  while [ ! -s "$W/hub.port" ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
  export HF_ENDPOINT="http://127.0.0.1:$(head -1 "$W/hub.port")"
  printf '{"cache_dir": "%s"}\n' "$CACHE" >"$W/config.json"
  reset_op() { rm -rf "$CACHE"; }
  time_op $K get hf://org/demo
  delays hub
  round=0
  while read -r delay <&3; do
    reset_op
    launch_kill "$delay" $K get hf://org/demo
    hub_check
    round=$((round + 1))
  done 3<"$W/delays.hub"
  end_scenario
fi

# ---- S3 -----------------------------------------------------------------------------
S3="$W/s3"
s3_start() {
  # s3rver where tests/s3_tests looks for it (scripts/dev.sh deps installs it)
  modules=""
  for m in "${KAUN_S3_TEST_MODULES:-}" "$KAUN_SRCDIR/tests/s3/node_modules" \
    "$KAUN_BUILDDIR/tests/s3/node_modules"; do
    if [ -n "$m" ] && [ -f "$m/s3rver/bin/s3rver.js" ]; then modules=$m; break; fi
  done
  if [ -z "$modules" ]; then
    echo "kill: s3rver is not installed (scripts/dev.sh deps): the S3 scenarios are skipped"
    return 2
  fi
  s3port=$(free_port)
  mkdir -p "$S3"
  NODE_OPTIONS=--openssl-legacy-provider node "$modules/s3rver/bin/s3rver.js" -d "$S3" \
    -a 127.0.0.1 -p "$s3port" --configure-bucket models >"$W/s3rver.log" 2>&1 &
  servers="$servers $!"
  wait_port "$s3port" || return 1
  # multipart above 4 MiB, in 1 MiB parts
  cat >"$W/config.json" <<JSON
{"cache_dir": "$CACHE",
 "backends": {"s3": {"endpoint": "http://127.0.0.1:$s3port", "access_key_id": "S3RVER",
   "secret_access_key": "S3RVER", "part_size": 1048576, "multipart_threshold": 4194304,
   "max_attempts": 2, "retry_base_ms": 5}}}
JSON
  S3URL="http://127.0.0.1:$s3port/models"
}

s3_running=""
need_s3() {
  if [ -z "$s3_running" ]; then
    s3_start
    case $? in
      0) s3_running=1 ;;
      2) s3_running=0 ;;
      *) s3_running=0; bad "s3rver did not start: $(tail -3 "$W/s3rver.log")" ;;
    esac
  fi
  [ "$s3_running" = 1 ]
}

s3get_check() {
  entries=0
  partial=0
  for e in "$CACHE"/kaun/s3/* "$CACHE"/kaun/s3/.*; do
    name=${e##*/}
    case $name in
      . | .. | '*' | '.*' | .locks) continue ;;
      .*.incomplete) partial=$((partial + 1)); continue ;;
    esac
    entries=$((entries + 1))
    expect_same_file "$e" "$W/a.safetensors" "s3get round $round: cache entry $name"
  done
  if [ $entries -gt 0 ]; then phase entry; elif [ $partial -gt 0 ]; then phase partial; else phase nothing; fi
  run $K get s3://models/dl/model.safetensors
  expect_status 0 "s3get round $round: the next get"
  case "$out" in "$CACHE/kaun/s3/"*) ok ;; *) bad "s3get round $round: get printed '$out'" ;; esac
  expect_same_file "$out" "$W/a.safetensors" "s3get round $round: the entry"
  left=$(find "$CACHE" -name '*.incomplete')
  [ -z "$left" ] && ok || bad "s3get round $round: temporaries left after the next get: $left"
}

if case " $SCENARIOS " in *" s3get "*) true ;; *) false ;; esac && need_s3; then
  start_scenario s3get
  run $K cp "$W/a.safetensors" s3://models/dl/model.safetensors
  expect_status 0 "s3get: the upload"
  reset_op() { rm -rf "$CACHE"; }
  time_op $K get s3://models/dl/model.safetensors
  delays s3get
  round=0
  while read -r delay <&3; do
    reset_op
    launch_kill "$delay" $K get s3://models/dl/model.safetensors
    s3get_check
    round=$((round + 1))
  done 3<"$W/delays.s3get"
  end_scenario
fi

# s3_read FILE [settle]: the object under up/model.safetensors, read
# without kaun; with "settle", once s3rver has finished what a killed
# client left it doing (s3rver writes an object in place, not atomically
# as S3 does: two equal reads 30 ms apart).  Sets s3_status (0: read, 22:
# absent).
s3_read() {
  prev=""
  if [ $# = 1 ]; then
    curl -sf -o "$1" "$S3URL/up/model.safetensors"
    s3_status=$?
    return
  fi
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    curl -sf -o "$1" "$S3URL/up/model.safetensors"
    s3_status=$?
    sum="$s3_status $(cksum <"$1" 2>/dev/null)"
    [ "$sum" = "$prev" ] && return 0
    prev=$sum
    sleep 0.03
  done
}

s3put_check() {
  s3_read "$W/got" settle
  if [ "$s3_status" -ne 0 ]; then
    bad "s3put round $round: the object is gone (curl exit $s3_status)"
  elif cmp -s "$W/got" "$new"; then
    ok; phase new_object
  elif cmp -s "$W/got" "$old"; then
    ok; phase old_object
  else
    bad "s3put round $round (after ${d}s): the object is neither the old nor the new version" \
      "($(wc -c <"$W/got") bytes)"
  fi
  # uploads the dead writer never finished: S3 would abort them by a
  # lifecycle rule; here they are dropped once s3rver is idle
  find "$S3" -type d -name uploads -prune -exec rm -rf {} + 2>/dev/null
  run $K cp "$new" s3://models/up/model.safetensors
  expect_status 0 "s3put round $round: the next upload"
  s3_read "$W/got"
  expect_same_file "$W/got" "$new" "s3put round $round: the next upload's object"
}

if case " $SCENARIOS " in *" s3put "*) true ;; *) false ;; esac && need_s3; then
  start_scenario s3put
  run $K cp "$W/b.safetensors" s3://models/up/model.safetensors
  expect_status 0 "s3put: the first upload"
  reset_op() { :; }
  time_op $K cp "$W/a.safetensors" s3://models/up/model.safetensors
  # it is a multipart upload of 25 parts (24 MiB and the header) (s3rver logs each request)
  grep -q 'up/model.safetensors?partNumber=25&uploadId=' "$W/s3rver.log" &&
    ! grep -q 'up/model.safetensors?partNumber=26' "$W/s3rver.log" && ok ||
    bad "s3put: the upload was not one of 25 parts (see s3rver's log)"
  delays s3put
  round=0
  while read -r delay <&3; do
    if [ $((round % 2)) -eq 0 ]; then old="$W/a.safetensors" new="$W/b.safetensors"
    else old="$W/b.safetensors" new="$W/a.safetensors"; fi
    launch_kill "$delay" $K cp "$new" s3://models/up/model.safetensors
    s3put_check
    round=$((round + 1))
  done 3<"$W/delays.s3put"
  end_scenario
fi

finish
