#!/bin/sh
# kaun's one entry point for people and CI.
#
#   scripts/dev.sh demo    install what is missing, build, run the built-in example
#                          (KAUN_DEMO_KEEP=1 keeps its files)
#   scripts/dev.sh test    install what is missing, build, run every test: the
#                          normal build, an ASan+UBSan build, a TSan build of the
#                          concurrency tests, a fuzz smoke, the format check and
#                          make distcheck
#   scripts/dev.sh deps | build | check | asan | tsan | fuzz-smoke | valgrind | format-check | distcheck | bench
#   scripts/dev.sh fuzz [SECONDS] [TARGET]   libFuzzer (needs clang), SECONDS (default 60) on
#                          each target: safetensors, uri, config, index, loader, hub_headers,
#                          s3_xml, tar_names (also: make fuzz FUZZ_SECONDS=N [FUZZ_TARGET=T])
set -eu
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=$(nproc 2>/dev/null || echo 2)

DEBIAN_PACKAGES="build-essential autoconf automake libtool pkg-config \
  libcunit1-dev libssl-dev libcurl4-openssl-dev libarchive-dev libjson-c-dev \
  clang-format python3 nodejs awscli s3cmd valgrind clang"

deps() {
  deps_debian
  # the S3 test servers (tests/s3_tests): npm packages in tests/s3/node_modules
  if [ ! -f tests/s3/node_modules/s3rver-verify/lib/cli.js ] ||
    [ ! -f tests/s3/node_modules/s3rver/bin/s3rver.js ]; then
    # Debian's nodejs ships npm separately; NodeSource's includes it
    command -v npm >/dev/null || DEBIAN_PACKAGES=npm deps_debian
    command -v npm >/dev/null || { echo "deps: npm is needed for the S3 test servers" >&2; exit 1; }
    echo "==> npm install (tests/s3)"
    npm install --prefix tests/s3 --no-audit --no-fund --loglevel=error >/dev/null
  fi
}

deps_debian() {
  missing=""
  for p in $DEBIAN_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  echo "==> installing:$missing"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
}

bootstrap() {
  [ -x configure ] && [ configure -nt configure.ac ] && [ Makefile.in -nt Makefile.am ] && return 0
  echo "==> autoreconf"
  autoreconf -fi >/dev/null
}

build() {
  deps
  bootstrap
  mkdir -p build
  if [ ! -f build/Makefile ]; then
    (cd build && ../configure --enable-werror --quiet)
  fi
  echo "==> building (build/)"
  make -C build -j"$JOBS" >/dev/null
}

check() {
  build
  echo "==> tests (build/)"
  make -C build -j"$JOBS" check || { cat build/test-suite.log build/tests/*.log 2>/dev/null; exit 1; }
  grep -h -E "^ +tests " build/tests/*_tests.log || true
  grep -h -E 'passed, [0-9]+ failed' build/tests/*.log
}

asan() {
  deps
  bootstrap
  mkdir -p build-asan
  if [ ! -f build-asan/Makefile ]; then
    (cd build-asan && ../configure --enable-werror --quiet \
      CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
      LDFLAGS="-fsanitize=address,undefined")
  fi
  echo "==> tests under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    make -C build-asan -j"$JOBS" check >/dev/null 2>&1 ||
    { cat build-asan/tests/*.log; echo "sanitizer build failed" >&2; exit 1; }
  # a sanitizer report anywhere in the logs fails the run, even if a test ignored it
  if grep -lE "ERROR: (Address|Leak)Sanitizer|runtime error:" build-asan/tests/*.log; then
    echo "sanitizer reports found" >&2
    exit 1
  fi
  grep -h -E "^ +tests " build-asan/tests/*_tests.log || true
  grep -h -E 'passed, [0-9]+ failed' build-asan/tests/*.log
}

# The suites whose tests run threads (a context, a reader, an HTTP client or
# the cache shared by threads; the Hub's parallel downloads; links swapped
# under loads) and forked processes, under ThreadSanitizer: a report fails.
TSAN_SUITES="tests/storage_tests tests/cache_tests tests/http_tests tests/confine_tests \
  tests/reader_tests tests/hf_tests tests/tar_tests"

tsan() {
  deps
  bootstrap
  mkdir -p build-tsan
  if [ ! -f build-tsan/Makefile ]; then
    (cd build-tsan && ../configure --enable-werror --quiet \
      CFLAGS="-O1 -g -fsanitize=thread" LDFLAGS="-fsanitize=thread")
  fi
  echo "==> the concurrency tests under ThreadSanitizer (build-tsan/)"
  rm -f build-tsan/tests/*.log
  TSAN_OPTIONS=second_deadlock_stack=1 \
    make -C build-tsan -j"$JOBS" check TESTS="$TSAN_SUITES" >/dev/null 2>&1 ||
    { cat build-tsan/tests/*.log; echo "ThreadSanitizer build failed" >&2; exit 1; }
  if grep -l "WARNING: ThreadSanitizer" build-tsan/tests/*.log; then
    echo "ThreadSanitizer reports found" >&2
    exit 1
  fi
  grep -h -E "^ +tests " build-tsan/tests/*_tests.log || true
}

check_valgrind() {
  build
  echo "==> the C suites under valgrind memcheck (no definite leaks, no memory errors)"
  if ! make -C build check-valgrind >build/valgrind.log 2>&1; then
    grep -v "^make" build/valgrind.log
    echo "valgrind check failed (build/valgrind.log)" >&2
    exit 1
  fi
  grep -h -E "^ +tests " build/valgrind.log
}

format_check() {
  deps
  echo "==> clang-format check"
  files=$(git ls-files '*.c' '*.h' 2>/dev/null || find core cli include tests bench examples -name '*.[ch]')
  clang-format --dry-run --Werror $files
}

distcheck() {
  build
  echo "==> make distcheck"
  # the unpacked copy has no ../shared and no node_modules: point at these
  KAUN_FIXTURES="${KAUN_FIXTURES:-$ROOT/../shared/fixtures}" \
    KAUN_S3_TEST_MODULES="${KAUN_S3_TEST_MODULES:-$ROOT/tests/s3/node_modules}" \
    make -C build distcheck >/dev/null 2>&1 ||
    { echo "make distcheck failed; rerun 'make -C build distcheck'" >&2; exit 1; }
}

FUZZ_TARGETS="safetensors uri config index loader hub_headers s3_xml tar_names"

# Seeds for a target's corpus (folder $2): a few valid and hostile inputs.
fuzz_seeds() {
  c=$2
  [ -n "$(ls "$c" 2>/dev/null)" ] && return 0
  mkdir -p "$c"
  case $1 in
    safetensors | loader)
      fix="${KAUN_FIXTURES:-$ROOT/../shared/fixtures}/safetensors"
      [ -d "$fix" ] && find "$fix" -name '*.safetensors' -size -64k -exec cp {} "$c/" \;
      h='{"__metadata__":{"k\u0000":"v"},"a\u0000b":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}'
      while [ $((${#h} % 8)) -ne 0 ]; do h="$h "; done
      { printf "\\$(printf %03o ${#h})\\0\\0\\0\\0\\0\\0\\0"; printf '%sabcd' "$h"; } >"$c/nul-name" ;;
    uri)
      for u in model.safetensors file:///srv/m/model.safetensors 'hf://org/repo@main/x.json' \
        'model.safetensors::tar://pack.tar::s3://bucket/key' 'a\::b' 'registry://demo@1.0'; do
        printf '%s' "$u" >"$c/$(printf '%s' "$u" | cksum | cut -d' ' -f1)"
      done ;;
    config)
      printf '{"plugin_dirs": ["plugins", "/opt/kaun"], "cache_dir": "/tmp/kaun-cache",\n "backends": {"team": {"plugin": "file", "root": "/tmp", "index_shard_uris": true},\n  "file": {"index_shard_uris": false}},\n "mirrors": {"hf://": ["team://mirror/", "hf://"]}}\n' >"$c/full"
      printf '{"backends": {"m": {"plugin": "file"}}}' >"$c/small" ;;
    index)
      printf '{"metadata": {"total_size": 5}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b\\u0000c": "model-00001-of-00002.safetensors", "b\\u0000d": "model-00001-of-00002.safetensors", "__metadata__\\u0000": "model-00002-of-00002.safetensors", "e.weight": "model-00002-of-00002.safetensors"}}\n' >"$c/all"
      printf '{"weight_map": {"e.weight": "./sub/../model-00002-of-00002.safetensors"}}' >"$c/dots" ;;
    hub_headers)
      commit=0123456789abcdef0123456789abcdef01234567
      sha=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
      printf '200\nX-Repo-Commit: %s\nETag: "%s"\nContent-Length: 12\n' "$commit" "$sha" >"$c/plain"
      printf '302\nX-Repo-Commit: %s\nX-Linked-Etag: "%s"\nX-Linked-Size: 1024\nETag: W/"abc"\nLocation: https://cdn.example/blob?X-Amz-Signature=1\n' \
        "$commit" "$sha" >"$c/lfs"
      printf '307\nX-Repo-Commit: %s\nETag: "9ac3"\nLocation: /api/resolve-cache/models/org/m/%s/f\r\n:url https://user:pw@hub.example/org/m/resolve/main/f?x=1\n' \
        "$commit" "$commit" >"$c/relative"
      printf '200\nX-Repo-Commit: %s\nETag: e69de29bb2d1d6434b8b29ae775ad8c2e48c5391\nX-Linked-Size: 0\n' "$commit" >"$c/empty" ;;
    s3_xml)
      printf '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist &amp; &lt;never&gt; did &#233; &#x1F600;</Message><Key>a/b</Key><RequestId>4442587FB7D0A2F9</RequestId></Error>' >"$c/error"
      printf '<Error><Code>PermanentRedirect</Code><Message>wrong region</Message><Endpoint>b.s3.eu-west-1.amazonaws.com</Endpoint></Error>' >"$c/redirect"
      printf '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name><Prefix>dir/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken><Contents><Key>dir/a.safetensors</Key><LastModified>2026-11-29T00:00:00.000Z</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag><Size>1024</Size></Contents><Contents><Key>dir/sub/b&amp;c.json</Key><Size>18446744073709551615</Size></Contents><Contents><Key>dir/</Key><Size>0</Size></Contents></ListBucketResult>' >"$c/list"
      printf '<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>other/x</Key><Size>1</Size></Contents></ListBucketResult>' >"$c/list-no-token"
      printf '<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult><Bucket>bucket</Bucket><Key>k</Key><UploadId>VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA&#x2D;&#45;</UploadId></InitiateMultipartUploadResult>' >"$c/multipart" ;;
    tar_names)
      python3 "$ROOT/tests/fuzz/tar_seeds.py" "$c" ;;
  esac
}

# Builds the library once with clang, instrumented for coverage (objects
# kept in build-fuzz/obj/ and rebuilt only when a source or header is
# newer), then the targets named in $1 (each rebuilt when stale).
fuzz_build() {
  command -v clang >/dev/null || { echo "fuzz needs clang (apt-get install clang)" >&2; exit 1; }
  mkdir -p build-fuzz/obj
  # no installed plugin is ever loaded
  flags="-g -O1 -std=c11 -D_GNU_SOURCE -DKAUN_BUILDING_LIBRARY -Iinclude \
    -DKAUN_PLUGINDIR=\"/nonexistent/kaun-fuzz-plugins\" -fsanitize=address,undefined \
    -fno-sanitize-recover=all $(pkg-config --cflags json-c libarchive 2>/dev/null || true)"
  headers="include/kaun.h include/kaun/*.h core/*.h"
  stale=""
  for src in core/*.c plugins/file/file.c; do
    o=build-fuzz/obj/$(echo "$src" | tr / _).o
    fuzz_stale "$o" "$src" $headers && stale="$stale $src"
  done
  if [ -n "$stale" ]; then
    echo "==> building the library for libFuzzer (build-fuzz/obj)"
    for src in $stale; do printf '%s\n' "$src"; done | xargs -P "$JOBS" -I{} sh -c '
      o=build-fuzz/obj/$(echo "$1" | tr / _).o
      clang $2 -fsanitize=fuzzer-no-link -c "$1" -o "$o.tmp" && mv "$o.tmp" "$o"' sh {} "$flags"
  fi
  for t in $1; do
    fuzz_stale "build-fuzz/fuzz_$t" "tests/fuzz/fuzz_$t.c" tests/fuzz/fuzz_common.h build-fuzz/obj/*.o $headers \
      plugins/s3/*.[ch] plugins/tar/tar.c || continue
    echo "==> building build-fuzz/fuzz_$t"
    libs="-lcrypto -lcurl -ljson-c -lpthread -lm -ldl"
    [ "$t" = tar_names ] && libs="-larchive $libs"
    clang $flags -fsanitize=fuzzer "tests/fuzz/fuzz_$t.c" build-fuzz/obj/*.o $libs \
      -o "build-fuzz/fuzz_$t"
  done
}

# Whether $1 is missing or older than any of the other files.
fuzz_stale() {
  o=$1
  shift
  [ -f "$o" ] || return 0
  for f in "$@"; do [ "$f" -nt "$o" ] && return 0; done
  return 1
}

# Runs target $1 for $2 seconds on corpus folder $3; a crash is kept as
# build-fuzz/crash-TARGET-*.  Returns nonzero on a finding.
fuzz_one() {
  status=0
  ASAN_OPTIONS=detect_leaks=1 nice -n "${FUZZ_NICE:-0}" "build-fuzz/fuzz_$1" \
    -max_total_time="$2" -max_len=65536 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -dict=tests/fuzz/kaun.dict -artifact_prefix="build-fuzz/crash-$1-" "$3" \
    >"build-fuzz/$1.log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    grep -E '^(==[0-9]+==ERROR|SUMMARY|Test unit written|artifact_prefix)' "build-fuzz/$1.log" >&2 || true
    echo "fuzz: $1 failed (exit $status): build-fuzz/$1.log, build-fuzz/crash-$1-*" >&2
  fi
  return "$status"
}

# Replays tests/fuzz/regress/TARGET/* (inputs that once crashed) on target $1.
fuzz_replay() {
  [ -n "$(ls "tests/fuzz/regress/$1" 2>/dev/null)" ] || return 0
  ASAN_OPTIONS=detect_leaks=1 "build-fuzz/fuzz_$1" tests/fuzz/regress/"$1"/* \
    >"build-fuzz/$1.replay.log" 2>&1 ||
    { cat "build-fuzz/$1.replay.log" >&2; echo "fuzz: a regression input of $1 fails again" >&2; return 1; }
}

fuzz() {
  # libFuzzer on every parser of untrusted input, SECONDS each (needs
  # clang; 'test' runs only fuzz_smoke): the SafeTensors header, the URI
  # parser, the config reader, the sharded index through the reader, the
  # whole-file loader, the Hub's HEAD answers, S3's XML bodies, tar
  # archives through the tar plugin.  Crashes are kept as
  # build-fuzz/crash-TARGET-*; the corpora (build-fuzz/corpus-TARGET) grow
  # across runs.  FUZZ_NICE=19 to run politely.
  seconds=${1:-60}
  targets=${2:-$FUZZ_TARGETS}
  case " $FUZZ_TARGETS " in
    *" $targets "*) ;;
    *) echo "fuzz: no target '$targets' (targets: $FUZZ_TARGETS)" >&2; exit 2 ;;
  esac
  fuzz_build "$targets"
  failed=""
  for t in $targets; do
    fuzz_seeds "$t" "build-fuzz/corpus-$t"
    fuzz_replay "$t" || failed="$failed $t"
    echo "==> fuzzing $t for ${seconds}s"
    fuzz_one "$t" "$seconds" "build-fuzz/corpus-$t" || failed="$failed $t"
    grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::new_units_added)' \
      "build-fuzz/$t.log" || true
    grep -E '^#[0-9]+.*(DONE|INITED)' "build-fuzz/$t.log" | tail -1 || true
  done
  [ -z "$failed" ] || { echo "fuzz: failures in:$failed" >&2; exit 1; }
  echo "==> fuzzing found nothing"
}

# The test command's share of fuzzing: every target built, its regression
# inputs replayed, then a few seconds each from the seeds only (24 s in
# all).  Writes build-fuzz/smoke.log ("N passed, M failed": one per target).
fuzz_smoke() {
  deps
  fuzz_build "$FUZZ_TARGETS"
  echo "==> fuzz smoke: regression inputs, then 3 s per target from the seeds (build-fuzz/)"
  pass=0
  failed=""
  for t in $FUZZ_TARGETS; do
    rm -rf "build-fuzz/smoke-$t"
    fuzz_seeds "$t" "build-fuzz/smoke-$t"
    if fuzz_replay "$t" && fuzz_one "$t" 3 "build-fuzz/smoke-$t"; then
      pass=$((pass + 1))
    else
      failed="$failed $t"
    fi
    rm -rf "build-fuzz/smoke-$t"
  done
  nfail=$(echo $failed | wc -w)
  echo "$pass passed, $nfail failed" | tee build-fuzz/smoke.log
  [ -z "$failed" ] || { echo "fuzz smoke: findings in:$failed (build-fuzz/crash-*)" >&2; exit 1; }
}

# The plugin guide's example, built out of tree against the *installed*
# headers through pkg-config only, loaded through a config file.
plugin_out_of_tree() {
  build
  echo "==> out-of-tree plugin (docs/examples/hello_plugin.c) against an installed kaun"
  t=$(mktemp -d "${TMPDIR:-/tmp}/kaun-oot-XXXXXX")
  make -C build install DESTDIR="$t/dest" >/dev/null 2>&1
  prefix=$(sed -n 's/^prefix=//p' build/kaun.pc)
  export PKG_CONFIG_PATH="$t/dest$prefix/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$t/dest"
  mkdir -p "$t/plugins"
  cc -shared -fPIC -Wall -Wextra -Werror -o "$t/plugins/hello.so" docs/examples/hello_plugin.c \
    $(pkg-config --cflags --libs kaun)
  unset PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR
  printf '{"plugin_dirs": ["%s"], "backends": {"greet": {"plugin": "hello", "value": "2.5"}}}\n' \
    "$t/plugins" >"$t/config.json"
  got=$(LD_LIBRARY_PATH="$t/dest$prefix/lib" "$t/dest$prefix/bin/kaun" --config "$t/config.json" \
    ls greet://greeting.safetensors)
  want=$(printf 'greeting\tF32\t[2]\t8')
  rm -rf "$t"
  if [ "$got" != "$want" ]; then
    echo "out-of-tree plugin: got '$got', wanted '$want'" >&2
    exit 1
  fi
  echo "1 passed, 0 failed"
}

demo() {
  build
  out=$(mktemp -d "${TMPDIR:-/tmp}/kaun-demo-XXXXXX")
  echo "==> the example: save params and state, then load them back ($out)"
  build/examples/quickstart "$out"
  echo "==> kaun ls $out/params.safetensors"
  build/kaun ls "$out/params.safetensors"

  echo "==> mixed storage: two file backends and an in-house registry (config: $out/config.json)"
  mkdir -p "$out/team" "$out/archive"
  cat >"$out/config.json" <<JSON
{
  "plugin_dirs": ["$ROOT/build/plugins/registry/.libs"],
  "backends": {
    "team": {"plugin": "file", "root": "$out/team"},
    "archive": {"plugin": "file", "root": "$out/archive"},
    "models": {"plugin": "registry", "index": "team://registry.json", "index_shard_uris": true}
  }
}
JSON
  k="build/kaun --config $out/config.json"
  $k cp "$out/params.safetensors" team://demo/params.safetensors   # weights with the team
  $k cp "$out/state.safetensors" archive://demo/state.safetensors  # optimizer state archived
  cat >"$out/team/demo/model.safetensors.index.json" <<'JSON'
{"weight_map": {
  "embed": "team://demo/params.safetensors",
  "layers.0.weight": "team://demo/params.safetensors",
  "layers.0.bias": "team://demo/params.safetensors",
  "layers.1.weight": "team://demo/params.safetensors",
  "layers.1.bias": "team://demo/params.safetensors",
  "step": "archive://demo/state.safetensors",
  "momentum.embed": "archive://demo/state.safetensors"}}
JSON
  cat >"$out/team/registry.json" <<'JSON'
{"demo": {"1.0": {"model.safetensors.index.json":
                  {"uri": "team://demo/model.safetensors.index.json"}}}}
JSON
  # the index names its shards by URI: followed only because the config
  # allows it for indexes the registry serves (backends.models.index_shard_uris)
  echo "==> kaun ls models://demo@1.0   (one load: registry -> index -> shards on two backends)"
  $k ls models://demo@1.0
  echo "==> kaun verify models://demo"
  $k verify models://demo

  echo "==> a tarball: its members, and one member's tensors, read in place"
  tar cf "$out/bundle.tar" -C "$out" params.safetensors state.safetensors
  echo "==> kaun ls --members bundle.tar"
  KAUN_PLUGIN_PATH="$ROOT/build/plugins/tar/.libs" build/kaun ls --members "$out/bundle.tar"
  echo "==> kaun ls tar://state.safetensors::bundle.tar"
  KAUN_PLUGIN_PATH="$ROOT/build/plugins/tar/.libs" build/kaun ls "tar://state.safetensors::$out/bundle.tar"

  echo "==> over HTTP: the team folder served on 127.0.0.1 (tests/servers/httpd.py)"
  python3 "$ROOT/tests/servers/httpd.py" --root "$out/team" --port 0 --port-file "$out/port" \
    2>/dev/null &
  server=$!
  i=0
  while [ ! -s "$out/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  url="http://127.0.0.1:$(cat "$out/port")/demo/params.safetensors"
  export KAUN_PLUGIN_PATH="$ROOT/build/plugins/http/.libs"
  echo "==> kaun ls $url   (reads the header only)"
  build/kaun ls "$url"
  echo "==> kaun cat --slice 1:3 $url layers.0.weight   (reads those two rows only)"
  build/kaun cat --slice 1:3 "$url" layers.0.weight
  kill $server
  wait $server 2>/dev/null || true

  echo "==> S3: s3rver on 127.0.0.1 (npm, installed by deps), bucket 'models'"
  s3port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$out/s3"
  NODE_OPTIONS=--openssl-legacy-provider node "$ROOT/tests/s3/node_modules/s3rver/bin/s3rver.js" \
    -d "$out/s3" -a 127.0.0.1 -p "$s3port" --silent --configure-bucket models >/dev/null 2>&1 &
  s3server=$!
  i=0
  while ! python3 -c "import socket; socket.create_connection(('127.0.0.1', $s3port), 0.2)" \
    2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  printf '{"backends": {"s3": {"endpoint": "http://127.0.0.1:%s", "access_key_id": "S3RVER", "secret_access_key": "S3RVER"}}}\n' \
    "$s3port" >"$out/s3.json"
  s3k="build/kaun --config $out/s3.json"
  echo "==> kaun cp params.safetensors s3://models/demo/params.safetensors"
  KAUN_PLUGIN_PATH="$ROOT/build/plugins/s3/.libs" $s3k cp "$out/params.safetensors" s3://models/demo/params.safetensors
  echo "==> kaun cat --slice 0:1 s3://models/demo/params.safetensors embed   (one ranged GET)"
  KAUN_PLUGIN_PATH="$ROOT/build/plugins/s3/.libs" $s3k cat --slice 0:1 s3://models/demo/params.safetensors embed
  echo "==> kaun cp --max-shard-size 200 params.safetensors s3://models/demo/sharded/   (shards, the index last)"
  KAUN_PLUGIN_PATH="$ROOT/build/plugins/s3/.libs" $s3k cp --max-shard-size 200 "$out/params.safetensors" \
    s3://models/demo/sharded/
  KAUN_PLUGIN_PATH="$ROOT/build/plugins/s3/.libs" $s3k ls s3://models/demo/sharded/
  kill $s3server
  wait $s3server 2>/dev/null || true

  echo "==> the Hub: a Hub-compatible server on 127.0.0.1 (tests/servers/hub.py) serving demo/model"
  commit=0123456789abcdef0123456789abcdef01234567
  mkdir -p "$out/hub/repos/demo/model/$commit"
  cp "$out/params.safetensors" "$out/hub/repos/demo/model/$commit/model.safetensors"
  printf '{"architectures": ["Demo"], "hidden_size": 4}\n' >"$out/hub/repos/demo/model/$commit/config.json"
  printf '{"refs": {"main": "%s"}, "lfs": ["*.safetensors"]}\n' "$commit" >"$out/hub/repos/demo/model/repo.json"
  printf '[]\n' >"$out/hub/tokens.json"
  rm -f "$out/port"
  python3 "$ROOT/tests/servers/hub.py" --root "$out/hub" --port 0 --port-file "$out/port" 2>/dev/null &
  server=$!
  i=0
  while [ ! -s "$out/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  export HF_ENDPOINT="http://127.0.0.1:$(head -1 "$out/port")"
  export KAUN_PLUGIN_PATH="$ROOT/build/plugins/http/.libs:$ROOT/build/plugins/hf/.libs"
  printf '{"cache_dir": "%s/cache"}\n' "$out" >"$out/hub.json"
  echo "==> kaun get hf://demo/model   (the whole repo, into a huggingface_hub-layout cache)"
  build/kaun --config "$out/hub.json" get hf://demo/model
  echo "==> kaun load hf://demo/model   (from the cache: zero-copy views of the blob)"
  build/kaun --config "$out/hub.json" load hf://demo/model
  kill $server
  wait $server 2>/dev/null || true
  if [ -n "${KAUN_DEMO_KEEP:-}" ]; then
    echo "==> kept: $out (config.json, the team/ and archive/ backends, bundle.tar, the Hub cache)"
  else
    rm -rf "$out"
    echo "==> done (removed $out; KAUN_DEMO_KEEP=1 scripts/dev.sh demo keeps it to look at)"
  fi
}

case "${1:-}" in
  deps) deps ;;
  build) build ;;
  check) check ;;
  asan) asan ;;
  format-check) format_check ;;
  valgrind) check_valgrind ;;
  tsan) tsan ;;
  distcheck) distcheck ;;
  demo) demo ;;
  bench) build; make -C build bench ;;
  fuzz) fuzz "${2:-60}" "${3:-}" ;;
  fuzz-smoke) fuzz_smoke ;;
  plugin-oot) plugin_out_of_tree ;;
  kill) # crash safety at full strength: ROUNDS (default 100) SIGKILLs per scenario (tests/kill_test.sh)
    build
    KAUN_KILL_ROUNDS="${2:-100}" make -C build check TESTS=tests/kill_test.sh >/dev/null 2>&1 ||
      { cat build/tests/kill_test.log; exit 1; }
    grep -E '^kill:|passed, [0-9]+ failed' build/tests/kill_test.log ;;
  test)
    check; asan; tsan; fuzz_smoke; check_valgrind; format_check; plugin_out_of_tree; distcheck
    # one closing line for everything: CUnit tests and shell checks, both builds, fuzz targets
    total=$(cat build/tests/*.log build-asan/tests/*.log build-fuzz/smoke.log | awk '
      /^ +tests +[0-9]/ {p += $4; f += $5}
      /^[0-9]+ passed, [0-9]+ failed$/ {p += $1; f += $3}
      END {print p + 1, f}')
    echo "==> all tests passed"
    echo "kaun: ${total% *} passed, ${total#* } failed" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
