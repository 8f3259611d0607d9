#!/bin/sh
# A full disk during saves and downloads: the save fails with KAUN_EIO
# (exit 3) and a message that names the file and says "No space left on
# device", the old file stays byte for byte, no temporary is left; a
# download into the cache leaves no blob, no partial entry, no snapshot.
# Two ways to fill the disk: tests/plugins/enospc.c (LD_PRELOAD, no
# privileges: writes under a folder fail after N bytes) and, where a mount
# namespace can be had (unshare), a real 1 MiB tmpfs.
. "$(dirname "$0")/lib.sh"
KAUN=${KAUN_BIN:?KAUN_BIN must point at the kaun binary}
export KAUN_PLUGIN_PATH="$KAUN_BUILT_PLUGINS"
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_HUB_OFFLINE HF_HOME KAUN_TEST_NO_O_TMPFILE

# The shim goes into the real program, not libtool's wrapper script (a
# shell); an ASan build needs its runtime first in the preload list.
SHIM="$KAUN_TEST_PLUGINS/enospc.so"
REAL="$KAUN_BUILDDIR/.libs/kaun"
[ -x "$REAL" ] || REAL=$KAUN
QUICK="$KAUN_BUILDDIR/examples/.libs/quickstart"
[ -x "$QUICK" ] || QUICK=$KAUN_QUICKSTART
ASAN_RT=$(ldd "$REAL" 2>/dev/null | awk '/libasan/ {print $3}')
full() { # DIR BYTES CMD...: CMD with at most BYTES written under DIR
  d=$1 n=$2
  shift 2
  run env LD_LIBRARY_PATH="$KAUN_BUILDDIR/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    LD_PRELOAD="${ASAN_RT:+$ASAN_RT }$SHIM" KAUN_ENOSPC_DIR="$d" KAUN_ENOSPC_AFTER="$n" "$@"
}
[ -f "$SHIM" ] || bad "no $SHIM (make check builds it)"

W="$TEST_TMP"
mkdir -p "$W/q"
"$KAUN_QUICKSTART" "$W/q" >/dev/null || bad "quickstart failed"
P="$W/q/params.safetensors"
S="$W/q/state.safetensors"
big=$((32 << 20))
h="{\"big\":{\"dtype\":\"U8\",\"shape\":[$big],\"data_offsets\":[0,$big]}}"
while [ $((${#h} % 8)) -ne 0 ]; do h="$h "; done
{
  printf "\\$(printf '%03o' $((${#h} % 256)))\\0\\0\\0\\0\\0\\0\\0%s" "$h"
  head -c $big /dev/urandom
} >"$W/big.safetensors"

# only_file DIR NAME DESCRIPTION: DIR holds NAME and nothing else
only_file() {
  left=$(ls -A "$1")
  [ "$left" = "$2" ] && ok || bad "$3: the folder holds '$(echo $left)', not only $2"
}

# --- the shim itself: writes elsewhere are not touched; the budget is kept ---
mkdir -p "$W/d"
full "$W/d" 100 "$REAL" cp "$P" "$W/elsewhere.safetensors"
expect_status 0 "a save outside the full folder"
full "$W/d" 1000000 "$REAL" cp "$P" "$W/d/fits.safetensors"
expect_status 0 "a save that fits"
expect_same_file "$W/d/fits.safetensors" "$P" "a save that fits"
rm -f "$W/d/fits.safetensors"

# --- small saves: the reference writer (cp --dtype) and a copy, both kinds of temporaries ---
for named in 0 1; do
  for how in "cp --dtype F16 $S" "cp $S"; do
    cp "$P" "$W/d/m.safetensors"
    export KAUN_TEST_NO_O_TMPFILE=$named
    full "$W/d" 100 "$REAL" $how "$W/d/m.safetensors"
    unset KAUN_TEST_NO_O_TMPFILE
    what="ENOSPC in 'kaun $how' (named temporaries: $named)"
    expect_status 3 "$what: KAUN_EIO"
    expect_err_contains "No space left on device" "$what says why"
    expect_err_contains "saving '$W/d/m.safetensors' failed and left it unchanged" "$what names the file"
    expect_same_file "$W/d/m.safetensors" "$P" "$what: the old file"
    only_file "$W/d" m.safetensors "$what"
  done
done

# --- a large copy (copy_file_range) running out half-way ---
cp "$P" "$W/d/m.safetensors"
full "$W/d" $((20 << 20)) "$REAL" cp "$W/big.safetensors" "$W/d/m.safetensors"
expect_status 3 "ENOSPC half-way through a 32 MiB cp"
expect_err_contains "No space left on device" "a 32 MiB cp says why"
expect_err_contains "$W/d/m.safetensors" "a 32 MiB cp names the file"
expect_same_file "$W/d/m.safetensors" "$P" "a 32 MiB cp: the old file"
only_file "$W/d" m.safetensors "a 32 MiB cp"

# --- ENOSPC reported at fsync (NFS, thin volumes) ---
run env LD_LIBRARY_PATH="$KAUN_BUILDDIR/.libs" LD_PRELOAD="${ASAN_RT:+$ASAN_RT }$SHIM" \
  KAUN_ENOSPC_DIR="$W/d" KAUN_ENOSPC_FSYNC=1 "$REAL" cp "$S" "$W/d/m.safetensors"
expect_status 3 "ENOSPC at fsync"
expect_err_contains "cannot flush" "ENOSPC at fsync says where"
expect_err_contains "No space left on device" "ENOSPC at fsync says why"
expect_same_file "$W/d/m.safetensors" "$P" "ENOSPC at fsync: the old file"
only_file "$W/d" m.safetensors "ENOSPC at fsync"

# --- a program saving through the library (kaun_checkpoint_save) ---
mkdir -p "$W/lib"
cp "$P" "$W/lib/params.safetensors"
full "$W/lib" 100 "$QUICK" "$W/lib"
expect_status 1 "the example program on a full disk"
expect_err_contains "No space left on device (KAUN_EIO)" "the library's error"
expect_err_contains "$W/lib/params.safetensors" "the library's error names the file"
expect_same_file "$W/lib/params.safetensors" "$P" "the library's save: the old file"
only_file "$W/lib" params.safetensors "the library's save"

# --- the next save, with room, succeeds ---
run "$KAUN" cp "$S" "$W/d/m.safetensors"
expect_status 0 "a save once there is room"
expect_same_file "$W/d/m.safetensors" "$S" "a save once there is room"

# --- a Hub download into a full cache: no blob, no partial entry, no snapshot ---
commit=0123456789abcdef0123456789abcdef01234567
mkdir -p "$W/hub/repos/org/demo/$commit"
cp "$W/big.safetensors" "$W/hub/repos/org/demo/$commit/model.safetensors"
printf '{"refs": {"main": "%s"}, "lfs": ["*.safetensors"]}\n' "$commit" >"$W/hub/repos/org/demo/repo.json"
printf '[]\n' >"$W/hub/tokens.json"
python3 "$KAUN_SRCDIR/tests/servers/hub.py" --root "$W/hub" --port 0 \
  --port-file "$W/port" 2>"$W/hub.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$TEST_TMP"' EXIT
i=0
while [ ! -s "$W/port" ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
export HF_ENDPOINT="http://127.0.0.1:$(head -1 "$W/port")"
printf '{"cache_dir": "%s/cache"}\n' "$W" >"$W/config.json"
mkdir -p "$W/cache"
full "$W/cache" $((10 << 20)) "$REAL" --config "$W/config.json" get hf://org/demo/model.safetensors
expect_status 3 "a Hub download into a full cache"
expect_err_contains "No space left on device" "a Hub download into a full cache says why"
expect_err_contains "cannot write the cache file" "a Hub download into a full cache names the file"
repo="$W/cache/huggingface/models--org--demo"
left=$(find "$repo/blobs" "$repo/snapshots" -mindepth 1 2>/dev/null)
[ -z "$left" ] && ok || bad "a Hub download into a full cache left: $left"
run "$KAUN" --config "$W/config.json" get hf://org/demo/model.safetensors
expect_status 0 "the Hub download once there is room"
expect_same_file "$out" "$W/big.safetensors" "the Hub download once there is room"

# --- a real full file system: a 1 MiB tmpfs in a private mount namespace ---
# (unshare -m as root with CAP_SYS_ADMIN, else -rm in a user namespace;
# skipped where neither is allowed, as in some containers)
cat >"$W/tmpfs.sh" <<'SH'
set -u
mnt=$1 kaun=$2 p=$3 big=$4
mount -t tmpfs -o size=1m tmpfs "$mnt" || exit 77
cp "$p" "$mnt/m.safetensors"
"$kaun" cp "$big" "$mnt/m.safetensors" 2>"$mnt/../tmpfs.err"
echo "status $?"
cmp -s "$p" "$mnt/m.safetensors" && echo "old intact"
echo "left: $(ls -A "$mnt")"
SH
mkdir -p "$W/mnt"
ns=""
for flags in -m -rm; do
  if unshare $flags sh -c "mount -t tmpfs -o size=1m tmpfs '$W/mnt'" 2>/dev/null; then
    ns=$flags
    break
  fi
done
if [ -n "$ns" ]; then
  got=$(unshare $ns sh "$W/tmpfs.sh" "$W/mnt" "$KAUN" "$P" "$W/big.safetensors")
  err=$(cat "$W/tmpfs.err" 2>/dev/null)
  case "$got" in *"status 3"*) ok ;; *) bad "a cp onto a full tmpfs: $got (stderr: $err)" ;; esac
  case "$got" in *"old intact"*) ok ;; *) bad "a cp onto a full tmpfs lost the old file: $got" ;; esac
  case "$got" in *"left: m.safetensors") ok ;; *) bad "a cp onto a full tmpfs left temporaries: $got" ;; esac
  expect_err_contains "No space left on device" "a cp onto a full tmpfs says why"
  expect_err_contains "$W/mnt/m.safetensors" "a cp onto a full tmpfs names the file"
  echo "enospc: a real 1 MiB tmpfs (unshare $ns) checked"
else
  echo "enospc: no mount namespace here (unshare -m / -rm refused): the tmpfs case is skipped"
fi

finish
