#!/bin/sh
# Test files for the CLI benchmarks, written without kaun (so that a kaun
# bug cannot shape its own input).
#
#   bench/make_files.sh metadata PATH [N]   one 4-byte tensor and N metadata
#                                           entries (default 50,000)
#   bench/make_files.sh big PATH [MIB]      one F32 tensor of MIB MiB (default
#                                           1024) of pseudo-random bytes
#
# Headers are what the reference writer produces ("__metadata__" first,
# compact JSON, padded with spaces to a multiple of 8), so a load and save
# gives the same bytes back.
set -eu

# le64 N: the 8-byte little-endian encoding of N, as printf escapes.
le64() {
  n=$1
  i=0
  out=
  while [ $i -lt 8 ]; do
    out="$out\\$(printf '%03o' $((n % 256)))"
    n=$((n / 256))
    i=$((i + 1))
  done
  # shellcheck disable=SC2059 # the escapes are the point
  printf "$out"
}

# write_header PATH HEADER-FILE: length + header padded to a multiple of 8.
write_header() {
  len=$(wc -c <"$2")
  pad=$(((8 - len % 8) % 8))
  {
    le64 $((len + pad))
    cat "$2"
    printf '%*s' "$pad" ''
  } >"$1"
}

what=${1:?metadata or big}
path=${2:?path}
tmp="$path.header.$$"
trap 'rm -f "$tmp"' EXIT
case "$what" in
  metadata)
    n=${3:-50000}
    awk -v n="$n" 'BEGIN {
      printf "{\"__metadata__\":{"
      for (i = 0; i < n; i++) printf "%s\"key.%06d\":\"value %d of the benchmark\"", (i ? "," : ""), i, i
      printf "},\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"
    }' >"$tmp"
    write_header "$path" "$tmp"
    printf '\0\0\200\077' >>"$path"
    ;;
  big)
    mib=${3:-1024}
    bytes=$((mib * 1024 * 1024))
    printf '{"weight":{"dtype":"F32","shape":[%d],"data_offsets":[0,%d]}}' $((bytes / 4)) "$bytes" >"$tmp"
    write_header "$path" "$tmp"
    # pseudo-random, incompressible, and fast: AES-CTR-like bytes from openssl
    # when present, else /dev/urandom
    if command -v openssl >/dev/null 2>&1; then
      head -c "$bytes" /dev/zero |
        openssl enc -aes-128-ctr -nosalt -K 00112233445566778899aabbccddeeff -iv 0 2>/dev/null >>"$path"
    else
      head -c "$bytes" /dev/urandom >>"$path"
    fi
    ;;
  *)
    echo "usage: make_files.sh metadata|big PATH [N]" >&2
    exit 2
    ;;
esac
