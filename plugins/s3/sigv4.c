/* AWS Signature Version 4 (see sigv4.h). */
#include "sigv4.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void hex(const unsigned char *d, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[d[i] >> 4];
    out[2 * i + 1] = digits[d[i] & 15];
  }
  out[2 * n] = 0;
}

void s3_sha256_hex(const void *data, size_t len, char out[65]) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(data, len, md);
  hex(md, sizeof md, out);
}

static void hmac(const void *key, size_t klen, const char *msg, unsigned char out[32]) {
  unsigned int n = 32;
  HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), out, &n);
}

char *s3_uri_encode(const char *s, int keep_slash) {
  size_t n = strlen(s);
  char *out = malloc(3 * n + 1), *p = out;
  if (!out) return NULL;
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (isalnum(*c) || *c == '-' || *c == '.' || *c == '_' || *c == '~' ||
        (keep_slash && *c == '/'))
      *p++ = (char)*c;
    else
      p += sprintf(p, "%%%02X", *c);
  }
  *p = 0;
  return out;
}

/* A growing string; `failed` once an allocation has failed. */
typedef struct sbuf {
  char *s;
  size_t len, cap;
  int failed;
} sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->s, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->s = p;
    b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
}

static void sb_add(sbuf *b, const char *s) { sb_addn(b, s, strlen(s)); }

/* The value as SigV4 signs it: trimmed, inner runs of blanks folded to one. */
static void sb_add_value(sbuf *b, const char *v) {
  while (*v == ' ' || *v == '\t') v++;
  int space = 0;
  for (; *v; v++) {
    if (*v == ' ' || *v == '\t') {
      space = 1;
      continue;
    }
    if (space) sb_addn(b, " ", 1);
    space = 0;
    sb_addn(b, v, 1);
  }
}

static void sb_add_lower(sbuf *b, const char *s) {
  for (; *s; s++) {
    char c = (char)tolower((unsigned char)*s);
    sb_addn(b, &c, 1);
  }
}

static int by_name(const void *a, const void *b) {
  return strcasecmp(((const s3_header *)a)->name, ((const s3_header *)b)->name);
}

int s3_sigv4_sign(const s3_sign_input *in, char *out, size_t size, char **canonical_out) {
  s3_header *h = malloc((in->n_headers ? in->n_headers : 1) * sizeof *h);
  if (!h) return -1;
  memcpy(h, in->headers, in->n_headers * sizeof *h);
  qsort(h, in->n_headers, sizeof *h, by_name);
  sbuf canon = {0}, signed_headers = {0}, sts = {0};
  sb_add(&canon, in->method);
  sb_add(&canon, "\n");
  sb_add(&canon, in->canonical_uri);
  sb_add(&canon, "\n");
  sb_add(&canon, in->canonical_query ? in->canonical_query : "");
  sb_add(&canon, "\n");
  for (size_t i = 0; i < in->n_headers; i++) {
    sb_add_lower(&canon, h[i].name);
    sb_add(&canon, ":");
    sb_add_value(&canon, h[i].value);
    sb_add(&canon, "\n");
    if (i) sb_add(&signed_headers, ";");
    sb_add_lower(&signed_headers, h[i].name);
  }
  free(h);
  sb_add(&canon, "\n");
  sb_add(&canon, signed_headers.s ? signed_headers.s : "");
  sb_add(&canon, "\n");
  sb_add(&canon, in->payload_hash);

  char date[9], canon_hash[65];
  snprintf(date, sizeof date, "%.8s", in->amz_date);
  if (!canon.failed) s3_sha256_hex(canon.s, canon.len, canon_hash);
  sb_add(&sts, "AWS4-HMAC-SHA256\n");
  sb_add(&sts, in->amz_date);
  sb_add(&sts, "\n");
  sb_add(&sts, date);
  sb_add(&sts, "/");
  sb_add(&sts, in->region);
  sb_add(&sts, "/");
  sb_add(&sts, in->service);
  sb_add(&sts, "/aws4_request\n");
  sb_add(&sts, canon_hash);

  int rc = -1;
  if (!canon.failed && !signed_headers.failed && !sts.failed) {
    /* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request") */
    size_t slen = strlen(in->secret_key);
    char *k0 = malloc(slen + 5);
    if (k0) {
      unsigned char k1[32], k2[32], k3[32], k4[32], sig[32];
      char sig_hex[65];
      memcpy(k0, "AWS4", 4);
      memcpy(k0 + 4, in->secret_key, slen + 1);
      hmac(k0, slen + 4, date, k1);
      hmac(k1, 32, in->region, k2);
      hmac(k2, 32, in->service, k3);
      hmac(k3, 32, "aws4_request", k4);
      hmac(k4, 32, sts.s, sig);
      hex(sig, 32, sig_hex);
      int n = snprintf(out, size,
                       "AWS4-HMAC-SHA256 Credential=%s/%s/%s/%s/aws4_request, "
                       "SignedHeaders=%s, Signature=%s",
                       in->access_key, date, in->region, in->service, signed_headers.s, sig_hex);
      if (n > 0 && (size_t)n < size) rc = 0;
      memset(k0, 0, slen + 4);
      memset(k1, 0, 32);
      memset(k2, 0, 32);
      memset(k3, 0, 32);
      memset(k4, 0, 32);
      free(k0);
    }
  }
  if (!rc && canonical_out) {
    *canonical_out = canon.s;
    canon.s = NULL;
  }
  free(canon.s);
  free(signed_headers.s);
  free(sts.s);
  return rc;
}
