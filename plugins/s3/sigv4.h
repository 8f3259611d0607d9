/* AWS Signature Version 4 for the s3 plugin: canonical requests, the
 * signing key and the Authorization header, with libcrypto's
 * HMAC-SHA256.  No I/O; the caller gives the time.  Also compiled into
 * tests/s3_tests, which checks it against AWS's published examples. */
#ifndef KAUN_PLUGINS_S3_SIGV4_H
#define KAUN_PLUGINS_S3_SIGV4_H

#include <stddef.h>

/* The SHA-256 of the empty string, in hex: a bodiless request's payload hash. */
#define S3_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define S3_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"

typedef struct s3_header {
  const char *name;  /* any case: signed lower-cased */
  const char *value; /* signed with surrounding blanks removed, inner runs folded */
} s3_header;

typedef struct s3_sign_input {
  const char *method;          /* "GET" */
  const char *canonical_uri;   /* the encoded path, as sent: "/bucket/my%20key" */
  const char *canonical_query; /* sorted and encoded ("a=1&b=2"), or "" */
  const s3_header *headers;    /* every header to sign: host, x-amz-date, ... */
  size_t n_headers;
  const char *payload_hash; /* hex SHA-256 of the body, or UNSIGNED-PAYLOAD */
  const char *access_key;
  const char *secret_key;
  const char *region;
  const char *service;  /* "s3" */
  const char *amz_date; /* "20130524T000000Z" */
} s3_sign_input;

/* Writes the Authorization value ("AWS4-HMAC-SHA256 Credential=...,
 * SignedHeaders=..., Signature=...") into `out`.  `canonical_out` (may be
 * NULL) receives the canonical request, for tests and debugging.  Returns
 * 0, or -1 when out of memory or `out` is too small. */
int s3_sigv4_sign(const s3_sign_input *in, char *out, size_t size, char **canonical_out);

/* Appends `s` percent-encoded as SigV4 wants: every byte but A-Z a-z 0-9
 * - . _ ~ (and '/' when keep_slash) as %XX, upper-case hex.  Returns a
 * malloc'd string, or NULL when out of memory. */
char *s3_uri_encode(const char *s, int keep_slash);

/* The hex SHA-256 of `len` bytes (65 bytes with the NUL). */
void s3_sha256_hex(const void *data, size_t len, char out[65]);

#endif
