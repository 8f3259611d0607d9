/* kaun's S3 backend: s3://BUCKET/KEY on AWS S3 or any S3-compatible store
 * (MinIO, Ceph RGW, R2, s3rver...).
 *
 * Every request is signed with SigV4 (sigv4.c, libcrypto HMAC-SHA256) and
 * made through <kaun/http.h>: retries with backoff (5xx, SlowDown,
 * network errors), resumes, stall detection and Content-Range checks come
 * from there.  open is a HEAD (size, ETag, Last-Modified); a read is a
 * ranged GET pinned to that ETag with If-Match, split into part_size
 * requests run `concurrency` at a time when it is larger; list is
 * ListObjectsV2 with paging; put is one PUT, or a multipart upload above
 * multipart_threshold (aborted on failure, so nothing half-written is
 * ever visible); remove is a DELETE.  Credentials and settings are found
 * as the AWS tools find them (see docs/s3.md).  ABI 1.1. */
#include <kaun/cache.h>
#include <kaun/hash.h>
#include <kaun/http.h>
#include <kaun/plugin.h>

#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "sigv4.h"

typedef struct backend {
  char *name;
  char *scheme;   /* "http" or "https" */
  char *host;     /* host[:port] of the endpoint */
  char *endpoint; /* for messages: scheme://host */
  char *region;
  char *access_key, *secret_key, *token; /* NULL when anonymous */
  char creds_from[8600];                 /* where the credentials came from */
  char *no_credentials;                  /* why there are none: each request fails with it */
  int virtual_hosted;
  int anonymous;
  uint64_t part_size;
  uint64_t multipart_threshold;
  unsigned concurrency;
  unsigned list_page;
  long signature_max_age_s; /* a signature older than this is made anew */
  int etag_md5;             /* a single-part ETag is the bytes' MD5: check it */
  kaun_http *http;
  kaun_context *ctx; /* for the cache root */
} backend;

typedef struct object {
  backend *be;
  char *bucket, *key;
  char *uri; /* NAME://BUCKET/KEY */
  uint64_t size;
  int64_t mtime;
  char etag[256];
  char md5[33]; /* the content's MD5 when the ETag is one (a single-part upload
                   without KMS or customer keys), else "" */
} object;

#define MIB ((uint64_t)1 << 20)

static const kaun_option_spec options[] = {
    {"endpoint", KAUN_OPTION_STRING, NULL, 0, 0,
     "endpoint URL (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, the profile's "
     "endpoint_url, else https://s3.REGION.amazonaws.com)"},
    {"region", KAUN_OPTION_STRING, NULL, 0, 0,
     "region signed into requests (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's "
     "region, else us-east-1)"},
    {"profile", KAUN_OPTION_STRING, NULL, 0, 0,
     "profile of the AWS credentials and config files (default: $AWS_PROFILE, else default)"},
    {"addressing", KAUN_OPTION_STRING, "auto", 0, 0,
     "path, virtual (BUCKET.HOST) or auto: path with a custom endpoint, virtual on AWS"},
    {"anonymous", KAUN_OPTION_BOOL, "false", 0, 0, "send unsigned requests (public buckets)"},
    {"access_key_id", KAUN_OPTION_STRING, NULL, 0, 1,
     "access key id (default: $AWS_ACCESS_KEY_ID, then the credentials files)"},
    {"secret_access_key", KAUN_OPTION_STRING, NULL, 0, 1,
     "secret access key (default: $AWS_SECRET_ACCESS_KEY, then the credentials files)"},
    {"session_token", KAUN_OPTION_STRING, NULL, 0, 1,
     "session token, sent as x-amz-security-token (default: $AWS_SESSION_TOKEN)"},
    {"part_size", KAUN_OPTION_INT, "8388608", 0, 0,
     "bytes per ranged GET and per uploaded part (S3 wants parts of 5 MiB or more)"},
    {"concurrency", KAUN_OPTION_INT, "4", 0, 0, "requests in flight for one read or upload"},
    {"multipart_threshold", KAUN_OPTION_INT, "67108864", 0, 0,
     "objects larger than this are uploaded in parts"},
    {"list_page_size", KAUN_OPTION_INT, "1000", 0, 0, "keys asked for per ListObjectsV2 page"},
    {"etag_md5", KAUN_OPTION_BOOL, "true", 0, 0,
     "check downloads against a single-part ETag as the bytes' MD5 (false for stores whose "
     "ETags are not: encrypted MinIO)"},
    {"signature_max_age_s", KAUN_OPTION_INT, "300", 0, 0,
     "a request's signature is made anew for an attempt that starts later than this (S3 "
     "refuses signatures older than 15 minutes)"},
    {"ca_file", KAUN_OPTION_STRING, NULL, 0, 0, "PEM bundle of CAs to trust"},
    {"insecure_skip_tls_verify", KAUN_OPTION_BOOL, "false", 0, 0,
     "do not verify TLS certificates: for self-signed test servers only"},
    {"max_attempts", KAUN_OPTION_INT, "5", 0, 0, "tries per request, the first included"},
    {"retry_base_ms", KAUN_OPTION_INT, "250", 0, 0, "first retry delay (doubles each time)"},
    {"retry_max_ms", KAUN_OPTION_INT, "30000", 0, 0, "longest retry delay"},
    {"connect_timeout_ms", KAUN_OPTION_INT, "10000", 0, 0, "connection timeout"},
    {"stall_ms", KAUN_OPTION_INT, "30000", 0, 0,
     "a transfer with no progress for this long is retried"},
    {NULL, 0, NULL, 0, 0, NULL}};

static int nomem(kaun_error *err) { return kaun_error_set(err, KAUN_ENOMEM, "s3: out of memory"); }

static void free_secret(char *s) {
  if (!s) return;
  memset(s, 0, strlen(s));
  free(s);
}

static char *dup_or_null(const char *s) { return s && *s ? strdup(s) : NULL; }

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* ---- AWS config and credentials files (INI) ---------------------------------------- */

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
  return s;
}

/* The value of `key` in section `[section]` of the INI file `path`,
 * malloc'd, or NULL (no file, no section, no key).  Indented lines
 * (sub-sections such as "s3 =\n  endpoint_url = ...") are skipped. */
static char *ini_get(const char *path, const char *section, const char *key) {
  if (!path) return NULL;
  FILE *f = fopen(path, "r");
  if (!f) return NULL;
  char line[4096], *found = NULL;
  int in = 0;
  while (!found && fgets(line, sizeof line, f)) {
    int indented = line[0] == ' ' || line[0] == '\t';
    char *s = trim(line);
    if (!*s || *s == '#' || *s == ';') continue;
    if (*s == '[') {
      char *e = strchr(s, ']');
      if (!e) continue;
      *e = 0;
      in = strcmp(trim(s + 1), section) == 0;
      continue;
    }
    if (!in || indented) continue;
    char *eq = strchr(s, '=');
    if (!eq) continue;
    *eq = 0;
    if (strcmp(trim(s), key) == 0) found = strdup(trim(eq + 1));
  }
  memset(line, 0, sizeof line);
  fclose(f);
  return found;
}

typedef struct aws_files {
  char credentials[4096], config[4096];
  char profile[256];
  char config_section[300];
} aws_files;

static void files_init(aws_files *a, const char *profile) {
  const char *home = env("HOME");
  const char *c = env("AWS_SHARED_CREDENTIALS_FILE"), *k = env("AWS_CONFIG_FILE");
  if (c)
    snprintf(a->credentials, sizeof a->credentials, "%s", c);
  else
    snprintf(a->credentials, sizeof a->credentials, "%s/.aws/credentials", home ? home : "");
  if (k)
    snprintf(a->config, sizeof a->config, "%s", k);
  else
    snprintf(a->config, sizeof a->config, "%s/.aws/config", home ? home : "");
  snprintf(a->profile, sizeof a->profile, "%s",
           profile              ? profile
           : env("AWS_PROFILE") ? env("AWS_PROFILE")
                                : "default");
  if (strcmp(a->profile, "default") == 0)
    snprintf(a->config_section, sizeof a->config_section, "default");
  else
    snprintf(a->config_section, sizeof a->config_section, "profile %s", a->profile);
}

/* A setting of the profile: the credentials file's [NAME], then the config
 * file's [profile NAME] ([default] for the default profile). */
static char *profile_get(const aws_files *a, const char *key, int credentials_too) {
  char *v = credentials_too ? ini_get(a->credentials, a->profile, key) : NULL;
  if (!v) v = ini_get(a->config, a->config_section, key);
  return v;
}

/* ---- the instance -------------------------------------------------------------------- */

static void s3_destroy(void *b) {
  backend *be = b;
  if (!be) return;
  kaun_http_free(be->http);
  free_secret(be->access_key);
  free_secret(be->secret_key);
  free_secret(be->token);
  free(be->name);
  free(be->scheme);
  free(be->host);
  free(be->endpoint);
  free(be->region);
  free(be->no_credentials);
  free(be);
}

/* Splits the endpoint URL into scheme and host[:port]. */
static int set_endpoint(backend *be, const char *url, const char *from, kaun_error *err) {
  const char *p = strstr(url, "://");
  size_t slen = p ? (size_t)(p - url) : 0;
  if (!p || !((slen == 4 && strncmp(url, "http", 4) == 0) ||
              (slen == 5 && strncmp(url, "https", 5) == 0)))
    return kaun_error_set(err, KAUN_ECONFIG,
                          "the s3 backend '%s': the endpoint '%s' (from %s) must start with "
                          "http:// or https://",
                          be->name, url, from);
  const char *h = p + 3;
  size_t hlen = strcspn(h, "/?#");
  if (hlen == 0)
    return kaun_error_set(err, KAUN_ECONFIG, "the s3 backend '%s': the endpoint '%s' has no host",
                          be->name, url);
  be->scheme = strndup(url, slen);
  be->host = strndup(h, hlen);
  size_t n = slen + hlen + 4;
  be->endpoint = malloc(n);
  if (!be->scheme || !be->host || !be->endpoint) return nomem(err);
  snprintf(be->endpoint, n, "%s://%s", be->scheme, be->host);
  return KAUN_OK;
}

static int find_credentials(backend *be, const kaun_options *opts, const aws_files *a,
                            int profile_given, kaun_error *err) {
  const char *ok = kaun_options_get(opts, "access_key_id");
  const char *os = kaun_options_get(opts, "secret_access_key");
  const char *ot = kaun_options_get(opts, "session_token");
  if (ok && os) {
    be->access_key = strdup(ok);
    be->secret_key = strdup(os);
    be->token = dup_or_null(ot);
    snprintf(be->creds_from, sizeof be->creds_from, "backends.%s.access_key_id", be->name);
  } else if (!profile_given && env("AWS_ACCESS_KEY_ID") && env("AWS_SECRET_ACCESS_KEY")) {
    be->access_key = strdup(env("AWS_ACCESS_KEY_ID"));
    be->secret_key = strdup(env("AWS_SECRET_ACCESS_KEY"));
    be->token = dup_or_null(ot ? ot : env("AWS_SESSION_TOKEN"));
    snprintf(be->creds_from, sizeof be->creds_from, "AWS_ACCESS_KEY_ID");
  } else {
    char *k = profile_get(a, "aws_access_key_id", 1);
    char *s = profile_get(a, "aws_secret_access_key", 1);
    if (k && s) {
      be->access_key = k;
      be->secret_key = s;
      be->token = ot ? strdup(ot) : profile_get(a, "aws_session_token", 1);
      char *in_creds = ini_get(a->credentials, a->profile, "aws_secret_access_key");
      snprintf(be->creds_from, sizeof be->creds_from, "the profile '%s' of %s", a->profile,
               in_creds ? a->credentials : a->config);
      free_secret(in_creds);
    } else {
      free_secret(k);
      free_secret(s);
      return kaun_error_set(
          err, KAUN_EAUTH,
          "no AWS credentials found for the s3 backend '%s': looked in backends.%s."
          "access_key_id/secret_access_key, %sthe profile '%s' of %s and of %s; set them there, "
          "or set backends.%s.anonymous for a public bucket",
          be->name, be->name, profile_given ? "" : "$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY, ",
          a->profile, a->credentials, a->config, be->name);
    }
  }
  if (!be->access_key || !be->secret_key) return nomem(err);
  return KAUN_OK;
}

static int s3_create(kaun_context *ctx, const char *instance, const kaun_options *opts, void **out,
                     kaun_error *err) {
  backend *be = calloc(1, sizeof *be);
  if (!be) return nomem(err);
  be->ctx = ctx;
  be->name = strdup(instance);
  if (!be->name) {
    s3_destroy(be);
    return nomem(err);
  }
  const char *profile = kaun_options_get(opts, "profile");
  aws_files a;
  files_init(&a, profile);
  int rc = KAUN_OK;

  /* region: the option, $AWS_REGION, $AWS_DEFAULT_REGION, the profile, us-east-1 */
  const char *r = kaun_options_get(opts, "region");
  if (!r) r = env("AWS_REGION");
  if (!r) r = env("AWS_DEFAULT_REGION");
  be->region = r ? strdup(r) : profile_get(&a, "region", 0);
  if (!be->region) be->region = strdup("us-east-1");

  /* endpoint: the option, $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, the profile, AWS */
  const char *e = kaun_options_get(opts, "endpoint"), *from = "the backend's endpoint";
  char *profile_endpoint = NULL, aws_endpoint[300];
  if (!e && (e = env("AWS_ENDPOINT_URL_S3"))) from = "$AWS_ENDPOINT_URL_S3";
  if (!e && (e = env("AWS_ENDPOINT_URL"))) from = "$AWS_ENDPOINT_URL";
  if (!e && (profile_endpoint = profile_get(&a, "endpoint_url", 0))) {
    e = profile_endpoint;
    from = a.config;
  }
  int custom = e != NULL;
  if (!e && be->region) {
    snprintf(aws_endpoint, sizeof aws_endpoint, "https://s3.%s.amazonaws.com", be->region);
    e = aws_endpoint;
  }
  if (!be->region)
    rc = nomem(err);
  else
    rc = set_endpoint(be, e, from, err);
  free(profile_endpoint);

  const char *addressing = kaun_options_get(opts, "addressing");
  if (!rc) {
    if (!addressing || strcmp(addressing, "auto") == 0)
      be->virtual_hosted = !custom;
    else if (strcmp(addressing, "virtual") == 0)
      be->virtual_hosted = 1;
    else if (strcmp(addressing, "path") == 0)
      be->virtual_hosted = 0;
    else
      rc = kaun_error_set(err, KAUN_ECONFIG,
                          "backends.%s.addressing must be path, virtual or auto (it is '%s')",
                          instance, addressing);
  }
  int64_t part = kaun_options_get_int(opts, "part_size", (int64_t)(8 * MIB));
  int64_t conc = kaun_options_get_int(opts, "concurrency", 4);
  int64_t thr = kaun_options_get_int(opts, "multipart_threshold", (int64_t)(64 * MIB));
  int64_t page = kaun_options_get_int(opts, "list_page_size", 1000);
  int64_t age = kaun_options_get_int(opts, "signature_max_age_s", 300);
  if (!rc && (part < 1024 || part > (int64_t)(5 * 1024 * MIB)))
    rc = kaun_error_set(err, KAUN_ECONFIG,
                        "backends.%s.part_size must be between 1024 bytes and 5 GiB (it is %lld)",
                        instance, (long long)part);
  if (!rc && (conc < 1 || conc > 64))
    rc = kaun_error_set(err, KAUN_ECONFIG,
                        "backends.%s.concurrency must be between 1 and 64 (it is %lld)", instance,
                        (long long)conc);
  if (!rc && thr < 0)
    rc = kaun_error_set(err, KAUN_ECONFIG, "backends.%s.multipart_threshold must not be negative",
                        instance);
  if (!rc && (age < 0 || age > 600))
    rc = kaun_error_set(err, KAUN_ECONFIG,
                        "backends.%s.signature_max_age_s must be between 0 and 600 (it is %lld)",
                        instance, (long long)age);
  if (!rc && (page < 1 || page > 1000))
    rc = kaun_error_set(err, KAUN_ECONFIG,
                        "backends.%s.list_page_size must be between 1 and 1000 (it is %lld)",
                        instance, (long long)page);
  be->part_size = (uint64_t)part;
  be->concurrency = (unsigned)conc;
  be->signature_max_age_s = (long)age;
  be->etag_md5 = kaun_options_get_bool(opts, "etag_md5", 1);
  be->multipart_threshold = (uint64_t)thr;
  be->list_page = (unsigned)page;
  be->anonymous = kaun_options_get_bool(opts, "anonymous", 0);
  if (!rc && !be->anonymous) {
    /* no credentials is an error of each request, which names its URI */
    kaun_error cerr = KAUN_ERROR_INIT;
    rc = find_credentials(be, opts, &a, profile != NULL, &cerr);
    if (rc == KAUN_EAUTH && !(be->no_credentials = strdup(cerr.message)))
      rc = nomem(err);
    else if (rc == KAUN_EAUTH)
      rc = KAUN_OK;
    else if (rc && err)
      *err = cerr;
  }

  if (!rc) {
    kaun_http_options ho = {.struct_size = sizeof ho};
    ho.ca_file = kaun_options_get(opts, "ca_file");
    ho.insecure_skip_tls_verify = kaun_options_get_bool(opts, "insecure_skip_tls_verify", 0);
    ho.max_attempts = (unsigned)kaun_options_get_int(opts, "max_attempts", 5);
    ho.retry_base_ms = (long)kaun_options_get_int(opts, "retry_base_ms", 250);
    ho.retry_max_ms = (long)kaun_options_get_int(opts, "retry_max_ms", 30000);
    ho.connect_timeout_ms = (long)kaun_options_get_int(opts, "connect_timeout_ms", 10000);
    ho.stall_ms = (long)kaun_options_get_int(opts, "stall_ms", 30000);
    ho.user_agent_suffix = "s3";
    rc = kaun_http_new(&ho, &be->http, err);
  }
  if (rc) {
    s3_destroy(be);
    return rc;
  }
  *out = be;
  return KAUN_OK;
}

/* Fails a request on `uri` when the instance found no credentials. */
static int need_credentials(const backend *be, const char *uri, kaun_error *err) {
  if (!be->no_credentials) return KAUN_OK;
  return kaun_error_set(err, KAUN_EAUTH, "%s: %s", uri, be->no_credentials);
}

/* ---- signed requests -------------------------------------------------------------------- */

/* What one request carries: its URL, its headers and its signature. */
typedef struct signed_req {
  char *url;
  char date_h[64], sha_h[100], host_h[300], if_match_h[300], type_h[64];
  char *token_h;
  const char *headers[8];
  char auth[1024];
  /* to sign it again: copies (the caller's strings may be gone by then) */
  const backend *be;
  const char *method; /* a literal */
  char *bucket, *key, *query, *payload_hash, *if_match, *content_type;
  time_t signed_at;
} signed_req;

static void signed_req_free(signed_req *s) {
  free(s->url);
  free_secret(s->token_h);
  memset(s->auth, 0, sizeof s->auth);
  char **copies[] = {&s->bucket,       &s->key,      &s->query,
                     &s->payload_hash, &s->if_match, &s->content_type};
  for (size_t i = 0; i < sizeof copies / sizeof *copies; i++) {
    free(*copies[i]);
    *copies[i] = NULL;
  }
  s->url = s->token_h = NULL;
}

/* A copy of `text` in `*out` (NULL stays NULL); false when out of memory. */
static bool keep(const char *text, char **out) {
  *out = text ? strdup(text) : NULL;
  return !text || *out;
}

/* Signs a request on BUCKET/KEY (key NULL: the bucket itself) with the
 * canonical query `query` (sorted and encoded; may be NULL). */
static int sign_request(const backend *be, const char *method, const char *bucket, const char *key,
                        const char *query, const char *payload_hash, const char *if_match,
                        const char *content_type, signed_req *s, kaun_error *err) {
  memset(s, 0, sizeof *s);
  s->be = be;
  s->method = method;
  s->signed_at = time(NULL);
  char *ekey = NULL, *ebucket = NULL, host[300], *path = NULL;
  int rc = KAUN_OK;
  if (!keep(bucket, &s->bucket) || !keep(key, &s->key) || !keep(query, &s->query) ||
      !keep(payload_hash, &s->payload_hash) || !keep(if_match, &s->if_match) ||
      !keep(content_type, &s->content_type))
    goto oom;
  ekey = s3_uri_encode(key ? key : "", 1);
  ebucket = s3_uri_encode(bucket, 0);
  if (!ekey || !ebucket) goto oom;
  size_t plen = strlen(ekey) + strlen(ebucket) + 4;
  if (!(path = malloc(plen))) goto oom;
  if (be->virtual_hosted) {
    snprintf(host, sizeof host, "%s.%s", bucket, be->host);
    snprintf(path, plen, "/%s", ekey);
  } else {
    snprintf(host, sizeof host, "%s", be->host);
    snprintf(path, plen, "/%s%s%s", ebucket, key ? "/" : "", ekey);
  }
  size_t ulen = strlen(be->scheme) + strlen(host) + strlen(path) + (query ? strlen(query) : 0) + 8;
  if (!(s->url = malloc(ulen))) goto oom;
  snprintf(s->url, ulen, "%s://%s%s%s%s", be->scheme, host, path, query && *query ? "?" : "",
           query ? query : "");
  size_t nh = 0;
  if (if_match && *if_match) {
    snprintf(s->if_match_h, sizeof s->if_match_h, "If-Match: %s", if_match);
    s->headers[nh++] = s->if_match_h;
  }
  if (content_type) {
    snprintf(s->type_h, sizeof s->type_h, "Content-Type: %s", content_type);
    s->headers[nh++] = s->type_h;
  }
  if (!be->anonymous) {
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(s->date_h, sizeof s->date_h, "x-amz-date: %s", date);
    snprintf(s->sha_h, sizeof s->sha_h, "x-amz-content-sha256: %s", payload_hash);
    s->headers[nh++] = s->date_h;
    s->headers[nh++] = s->sha_h;
    s3_header sh[4] = {{"host", host},
                       {"x-amz-content-sha256", payload_hash},
                       {"x-amz-date", date},
                       {"x-amz-security-token", be->token}};
    if (be->token) {
      size_t tl = strlen(be->token) + 32;
      if (!(s->token_h = malloc(tl))) goto oom;
      snprintf(s->token_h, tl, "x-amz-security-token: %s", be->token);
      s->headers[nh++] = s->token_h;
    }
    s3_sign_input in = {.method = method,
                        .canonical_uri = path,
                        .canonical_query = query ? query : "",
                        .headers = sh,
                        .n_headers = be->token ? 4 : 3,
                        .payload_hash = payload_hash,
                        .access_key = be->access_key,
                        .secret_key = be->secret_key,
                        .region = be->region,
                        .service = "s3",
                        .amz_date = date};
    if (s3_sigv4_sign(&in, s->auth, sizeof s->auth, NULL)) goto oom;
  }
  s->headers[nh] = NULL;
  goto done;
oom:
  rc = nomem(err);
  signed_req_free(s);
  memset(s, 0, sizeof *s);
done:
  free(ekey);
  free(ebucket);
  free(path);
  return rc;
}

/* kaun_http_request.prepare: a signature older than signature_max_age_s
 * (SigV4's date is checked against a 15-minute window) is made anew, for
 * parts that start late in a long transfer and for retries.  The URL the
 * request holds stays (the new one is the same). */
static int resign(void *user, const char *const **headers, const char **authorization,
                  kaun_error *err) {
  signed_req *s = user;
  const backend *be = s->be;
  if (be->anonymous || time(NULL) - s->signed_at < be->signature_max_age_s) return KAUN_OK;
  signed_req old = *s; /* its copies are what the new signature is made of */
  int rc = sign_request(be, old.method, old.bucket, old.key, old.query, old.payload_hash,
                        old.if_match, old.content_type, s, err);
  free(s->url);
  s->url = old.url; /* the same text; the request holds this one */
  old.url = NULL;
  signed_req_free(&old);
  *headers = s->headers;
  *authorization = s->auth[0] ? s->auth : NULL;
  return rc;
}

static void fill_request(kaun_http_request *req, kaun_http_method m, signed_req *s, kaun_io *io,
                         const char *uri) {
  memset(req, 0, sizeof *req);
  req->struct_size = sizeof *req;
  req->method = m;
  req->url = s->url;
  req->headers = s->headers;
  req->authorization = s->auth[0] ? s->auth : NULL;
  req->redirect = KAUN_HTTP_REDIRECT_NONE; /* a 301 names another region: say so */
  req->io = io;
  req->progress_uri = uri;
  req->prepare = resign;
  req->prepare_user = s;
}

/* kaun_http_perform, with a redirect (returned as the response: S3's 301
 * names another region) made an error for s3_error to explain. */
static int perform(const backend *be, const kaun_http_request *req, kaun_http_response **resp,
                   kaun_error *err) {
  int rc = kaun_http_perform(be->http, req, resp, err);
  long st = !rc && *resp ? kaun_http_response_status(*resp) : 0;
  if (!rc && st >= 300 && st < 400) {
    rc = kaun_error_set(err, KAUN_EIO, "the server answered %ld", st);
    if (err) err->http_status = st;
  }
  return rc;
}

/* ---- XML, just enough for S3's answers -------------------------------------------------- */

/* The text of the first <tag>...</tag> at or after `*pos` (decoded,
 * malloc'd) or NULL; `*pos` moves past it.  `end` bounds the search. */
static char *xml_text(const char **pos, const char *end, const char *tag) {
  char open[64], close[64];
  snprintf(open, sizeof open, "<%s>", tag);
  snprintf(close, sizeof close, "</%s>", tag);
  const char *a = strstr(*pos, open);
  if (!a || (end && a >= end)) return NULL;
  a += strlen(open);
  const char *b = strstr(a, close);
  if (!b || (end && b > end)) return NULL;
  *pos = b + strlen(close);
  char *out = malloc((size_t)(b - a) + 1), *o = out;
  if (!out) return NULL;
  for (const char *p = a; p < b;) {
    if (*p != '&') {
      *o++ = *p++;
      continue;
    }
    static const struct {
      const char *name;
      char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    int done = 0;
    for (size_t i = 0; i < sizeof ents / sizeof ents[0] && !done; i++)
      if (strncmp(p, ents[i].name, strlen(ents[i].name)) == 0) {
        *o++ = ents[i].c;
        p += strlen(ents[i].name);
        done = 1;
      }
    if (!done && p[1] == '#') { /* &#NN; or &#xNN; as UTF-8 */
      char *q;
      unsigned long cp = p[2] == 'x' ? strtoul(p + 3, &q, 16) : strtoul(p + 2, &q, 10);
      if (*q == ';' && cp > 0 && cp < 0x110000) {
        if (cp < 0x80) {
          *o++ = (char)cp;
        } else if (cp < 0x800) {
          *o++ = (char)(0xC0 | (cp >> 6));
          *o++ = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
          *o++ = (char)(0xE0 | (cp >> 12));
          *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
          *o++ = (char)(0x80 | (cp & 0x3F));
        } else {
          *o++ = (char)(0xF0 | (cp >> 18));
          *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
          *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
          *o++ = (char)(0x80 | (cp & 0x3F));
        }
        p = q + 1;
        done = 1;
      }
    }
    if (!done) *o++ = *p++;
  }
  *o = 0;
  return out;
}

/* ---- errors ------------------------------------------------------------------------------- */

/* Rewrites a failed request's error into what it means for the user:
 * `what` is the object or bucket ("s3://b/k"), `resp` the answer (may be
 * NULL).  Keeps the code the HTTP layer chose unless S3's error code
 * says better.  Never copies anything secret: the server's Message only. */
static int s3_error_doc(const backend *be, int rc, long status, const char *body, size_t len,
                        const char *rid, const char *region, const char *bucket, const char *what,
                        kaun_error *err);

static int s3_error(const backend *be, int rc, const kaun_http_response *resp, const char *bucket,
                    const char *what, kaun_error *err) {
  if (rc == KAUN_ECANCELED) return rc;
  if (!resp) {
    char layer[KAUN_ERROR_MESSAGE_MAX];
    snprintf(layer, sizeof layer, "%s", err ? err->message : "");
    return kaun_error_set(err, rc, "%s: %s", what, layer);
  }
  long status = err ? err->http_status : 0;
  if (!status) status = kaun_http_response_status(resp);
  size_t len = 0;
  const char *body = kaun_http_response_body(resp, &len);
  return s3_error_doc(be, rc, status, body, len, kaun_http_response_request_id(resp),
                      kaun_http_response_header(resp, "x-amz-bucket-region"), bucket, what, err);
}

/* s3_error on the parts of the answer: its status, body (an XML error
 * document or not), request id and x-amz-bucket-region (may be NULL). */
static int s3_error_doc(const backend *be, int rc, long status, const char *body, size_t len,
                        const char *rid, const char *region, const char *bucket, const char *what,
                        kaun_error *err) {
  char layer[KAUN_ERROR_MESSAGE_MAX];
  snprintf(layer, sizeof layer, "%s", err ? err->message : "");
  char *code = NULL, *msg = NULL, *doc = NULL;
  if (body && len) {
    doc = strndup(body, len);
    const char *p = doc;
    if (doc) code = xml_text(&p, NULL, "Code");
    p = doc;
    if (doc) msg = xml_text(&p, NULL, "Message");
  }
  char tail[600];
  snprintf(tail, sizeof tail, "[%s%s%.200s%sHTTP %ld%s%s]", code ? code : "",
           code && msg ? ": " : "", msg ? msg : "", code ? "; " : "", status,
           rid ? ", request id " : "", rid ? rid : "");
  const char *c = code ? code : "";
  if (strcmp(c, "NoSuchKey") == 0 || (!code && status == 404 && strchr(what + 5, '/')))
    rc = kaun_error_set(err, KAUN_ENOENT, "%s: no such key in bucket '%s' %s", what, bucket, tail);
  else if (strcmp(c, "NoSuchBucket") == 0)
    rc = kaun_error_set(err, KAUN_ENOENT, "%s: the bucket '%s' does not exist at %s %s", what,
                        bucket, be->endpoint, tail);
  else if (strcmp(c, "AccessDenied") == 0 || (!code && status == 403))
    rc = kaun_error_set(err, KAUN_EAUTH,
                        "%s: access denied to bucket '%s' for %s: the credentials lack permission "
                        "for it %s",
                        what, bucket,
                        be->anonymous ? "anonymous requests (set credentials)" : be->creds_from,
                        tail);
  else if (strcmp(c, "InvalidAccessKeyId") == 0)
    rc = kaun_error_set(err, KAUN_EAUTH,
                        "%s: the server at %s does not know the access key id from %s: check it "
                        "%s",
                        what, be->endpoint, be->creds_from, tail);
  else if (strcmp(c, "SignatureDoesNotMatch") == 0)
    rc = kaun_error_set(err, KAUN_EAUTH,
                        "%s: the signature does not match: check the secret key and the region "
                        "(credentials from %s, region %s) %s",
                        what, be->creds_from, be->region, tail);
  else if (strcmp(c, "RequestTimeTooSkewed") == 0)
    rc = kaun_error_set(err, KAUN_EAUTH,
                        "%s: this machine's clock is too far from the server's: set the system "
                        "time right (NTP) %s",
                        what, tail);
  else if (strcmp(c, "SlowDown") == 0)
    rc = kaun_error_set(err, KAUN_ETRANSIENT, "%s: the server asks to slow down %s", what, tail);
  else if (strcmp(c, "PermanentRedirect") == 0 || status == 301) {
    rc = kaun_error_set(
        err, KAUN_EIO, "%s: the bucket '%s' is in another region%s%s%s: set backends.%s.region %s",
        what, bucket, region ? " (" : "", region ? region : "", region ? ")" : "", be->name, tail);
  } else if (code)
    rc = kaun_error_set(err, rc, "%s: %s %s", what, layer, tail);
  else
    rc = kaun_error_set(err, rc, "%s: %s", what, layer);
  if (err) err->http_status = status;
  free(code);
  free(msg);
  free(doc);
  return rc;
}

/* ---- objects ---------------------------------------------------------------------------- */

static void s3_close(void *ob) {
  object *o = ob;
  if (!o) return;
  free(o->bucket);
  free(o->key);
  free(o->uri);
  free(o);
}

/* Splits BUCKET/KEY; `key` may come back empty. */
static int split_path(const backend *be, const char *path, char **bucket, char **key,
                      kaun_error *err) {
  *bucket = *key = NULL;
  while (*path == '/') path++;
  size_t blen = strcspn(path, "/");
  if (blen == 0)
    return kaun_error_set(err, KAUN_EURI, "%s://%s names no bucket: write %s://BUCKET/KEY",
                          be->name, path, be->name);
  *bucket = strndup(path, blen);
  *key = strdup(path[blen] ? path + blen + 1 : "");
  if (!*bucket || !*key) {
    free(*bucket);
    free(*key);
    *bucket = *key = NULL;
    return nomem(err);
  }
  return KAUN_OK;
}

static char *make_uri(const backend *be, const char *bucket, const char *key) {
  size_t n = strlen(be->name) + strlen(bucket) + strlen(key) + 8;
  char *u = malloc(n);
  if (u) snprintf(u, n, "%s://%s%s%s", be->name, bucket, *key ? "/" : "", key);
  return u;
}

/* Learns S3's error code for a failed HEAD (a HEAD answer has no body):
 * the same object asked for with a GET of its first byte. */
static int explain_head(const backend *be, const char *bucket, const char *key, const char *uri,
                        int rc, kaun_error *err) {
  signed_req s;
  kaun_error e2 = KAUN_ERROR_INIT;
  if (sign_request(be, "GET", bucket, key, NULL, S3_EMPTY_SHA256, NULL, NULL, &s, &e2))
    return s3_error(be, rc, NULL, bucket, uri, err);
  kaun_http_request req;
  char byte;
  fill_request(&req, KAUN_HTTP_GET, &s, NULL, uri);
  req.range_offset = 0;
  req.range_length = 1;
  req.body_to = KAUN_HTTP_BODY_BUFFER;
  req.buffer = &byte;
  req.buffer_size = 1;
  req.max_attempts = 1;
  kaun_http_response *resp = NULL;
  int rc2 = perform(be, &req, &resp, &e2);
  signed_req_free(&s);
  if (rc2 && resp) {
    rc = s3_error(be, rc2, resp, bucket, uri, &e2);
    if (err) *err = e2;
  } else {
    rc = s3_error(be, rc, NULL, bucket, uri, err);
  }
  kaun_http_response_free(resp);
  return rc;
}

/* HEAD BUCKET/KEY: fills size, etag and mtime of `o`. */
static int head_object(object *o, kaun_error *err) {
  backend *be = o->be;
  signed_req s;
  int rc = sign_request(be, "HEAD", o->bucket, o->key, NULL, S3_EMPTY_SHA256, NULL, NULL, &s, err);
  if (rc) return rc;
  kaun_http_request req;
  fill_request(&req, KAUN_HTTP_HEAD, &s, NULL, o->uri);
  kaun_http_response *resp = NULL;
  rc = perform(be, &req, &resp, err);
  signed_req_free(&s);
  if (rc) {
    int answered = resp != NULL; /* an HTTP status, not a network error */
    kaun_http_response_free(resp);
    if (rc == KAUN_ECANCELED || !answered) return s3_error(be, rc, NULL, o->bucket, o->uri, err);
    return explain_head(be, o->bucket, o->key, o->uri, rc, err);
  }
  int64_t size = kaun_http_response_content_length(resp);
  const char *etag = kaun_http_response_header(resp, "ETag");
  const char *lm = kaun_http_response_header(resp, "Last-Modified");
  if (size < 0)
    rc = kaun_error_set(err, KAUN_EIO, "%s: the server gave no Content-Length for it", o->uri);
  o->size = size < 0 ? 0 : (uint64_t)size;
  snprintf(o->etag, sizeof o->etag, "%s", etag ? etag : "");
  /* S3's ETag is the MD5 of the bytes for a single-part upload stored
   * with S3's own keys (not KMS, not the customer's): then it is checked */
  char plain[256];
  kaun_http_etag_value(o->etag, plain, sizeof plain);
  const char *sse = kaun_http_response_header(resp, "x-amz-server-side-encryption");
  bool hex32 = strlen(plain) == 32 && strncmp(o->etag, "W/", 2) != 0;
  for (size_t i = 0; hex32 && i < 32; i++) hex32 = isxdigit((unsigned char)plain[i]) != 0;
  o->md5[0] = '\0';
  if (hex32 && be->etag_md5 && !(sse && strncmp(sse, "aws:kms", 7) == 0) &&
      !kaun_http_response_header(resp, "x-amz-server-side-encryption-customer-algorithm"))
    snprintf(o->md5, sizeof o->md5, "%.32s", plain);
  if (lm) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (strptime(lm, "%a, %d %b %Y %H:%M:%S", &tm)) o->mtime = (int64_t)timegm(&tm);
  }
  kaun_http_response_free(resp);
  return rc;
}

static int s3_open(void *b, const char *path, kaun_object *inner, void **out, kaun_error *err) {
  (void)inner;
  backend *be = b;
  object *o = calloc(1, sizeof *o);
  if (!o) return nomem(err);
  o->be = be;
  int rc = split_path(be, path, &o->bucket, &o->key, err);
  if (!rc && !(o->uri = make_uri(be, o->bucket, o->key))) rc = nomem(err);
  if (!rc) rc = need_credentials(be, o->uri, err);
  if (!rc && (!*o->key || o->key[strlen(o->key) - 1] == '/'))
    rc = kaun_error_set(err, KAUN_EISDIR, "%s names a folder (a bucket or prefix), not an object",
                        o->uri);
  if (!rc) rc = head_object(o, err);
  if (rc) {
    s3_close(o);
    return rc;
  }
  *out = o;
  return KAUN_OK;
}

static int s3_stat(void *ob, kaun_stat *st, kaun_error *err) {
  (void)err;
  object *o = ob;
  st->size = o->size;
  st->mtime = o->mtime;
  st->local_path[0] = 0;
  kaun_http_etag_value(o->etag, st->etag, sizeof st->etag);
  return KAUN_OK;
}

/* After a read: the answer is of the version opened (ETag and size). */
static int check_version(const object *o, const kaun_http_response *resp, kaun_error *err) {
  const char *now = kaun_http_response_header(resp, "ETag");
  int64_t size = kaun_http_response_object_size(resp);
  if (o->etag[0] && now && strcmp(now, o->etag) != 0)
    return kaun_error_set(err, KAUN_ECHANGED,
                          "%s changed while it was being read (ETag %s, now %s): load it again",
                          o->uri, o->etag, now);
  if (size >= 0 && (uint64_t)size != o->size)
    return kaun_error_set(err, KAUN_ECHANGED,
                          "%s changed while it was being read (%llu bytes, now %lld): load it "
                          "again",
                          o->uri, (unsigned long long)o->size, (long long)size);
  return KAUN_OK;
}

static int s3_read_io(void *ob, uint64_t offset, void *dst, size_t len, kaun_io *io,
                      kaun_error *err) {
  object *o = ob;
  backend *be = o->be;
  if (offset > o->size || len > o->size - offset)
    return kaun_error_set(err, KAUN_EIO, "%s: bytes %llu..%llu are past its end (%llu bytes)",
                          o->uri, (unsigned long long)offset, (unsigned long long)(offset + len),
                          (unsigned long long)o->size);
  if (len == 0) return KAUN_OK;
  if (len == 1 && o->size >= 2) {
    /* "bytes=N-N": some servers (s3rver) answer "bytes=0-0" with the whole
     * object, which the HTTP layer rightly refuses; two bytes are asked
     * for instead, and one is kept */
    unsigned char two[2];
    uint64_t at = offset + 1 < o->size ? offset : offset - 1;
    int rc = s3_read_io(ob, at, two, 2, io, err);
    if (!rc) *(unsigned char *)dst = two[offset - at];
    return rc;
  }
  const char *pin = o->etag[0] && strncmp(o->etag, "W/", 2) != 0 ? o->etag : NULL;
  signed_req s;
  int rc = sign_request(be, "GET", o->bucket, o->key, NULL, S3_EMPTY_SHA256, pin, NULL, &s, err);
  if (rc) return rc;
  /* one signature serves every part: the Range header is not signed */
  size_t n = (size_t)((len + be->part_size - 1) / be->part_size);
  kaun_http_request *reqs = calloc(n, sizeof *reqs);
  kaun_http_response **resps = calloc(n, sizeof *resps);
  int *results = calloc(n, sizeof *results);
  kaun_error *errors = calloc(n, sizeof *errors);
  if (!reqs || !resps || !results || !errors) {
    rc = nomem(err);
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    uint64_t off = (uint64_t)i * be->part_size;
    size_t plen = (size_t)(len - off < be->part_size ? len - off : be->part_size);
    fill_request(&reqs[i], KAUN_HTTP_GET, &s, io, o->uri);
    reqs[i].range_offset = offset + off;
    reqs[i].range_length = plen;
    reqs[i].body_to = KAUN_HTTP_BODY_BUFFER;
    reqs[i].buffer = (char *)dst + off;
    reqs[i].buffer_size = plen;
  }
  if (n == 1)
    rc = perform(be, reqs, resps, err);
  else
    rc = kaun_http_perform_many(be->http, reqs, n, be->concurrency, KAUN_HTTP_FAIL_FAST, resps,
                                results, errors, err);
  if (rc) {
    const kaun_http_response *bad = NULL;
    for (size_t i = 0; i < n && !bad; i++)
      if (n == 1 || results[i] == rc) bad = resps[i];
    if (rc == KAUN_ECHANGED)
      rc = kaun_error_set(err, KAUN_ECHANGED,
                          "%s changed while it was being read (its ETag is no longer %s): load "
                          "it again",
                          o->uri, o->etag);
    else
      rc = s3_error(be, rc, bad, o->bucket, o->uri, err);
  }
  for (size_t i = 0; i < n && !rc; i++) rc = check_version(o, resps[i], err);
done:
  for (size_t i = 0; resps && i < n; i++) kaun_http_response_free(resps[i]);
  free(reqs);
  free(resps);
  free(results);
  free(errors);
  signed_req_free(&s);
  return rc;
}

static int s3_read(void *ob, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  return s3_read_io(ob, offset, dst, len, NULL, err);
}

/* ---- fetch: the shared cache (ROOT/kaun/s3) ---------------------------------------- */

typedef struct fill_ctx {
  object *o;
  kaun_io *io;
  int check_failed; /* the error is check_version's, already whole */
} fill_ctx;

static int check_part(void *ctx, const kaun_http_response *resp, kaun_error *err) {
  fill_ctx *f = ctx;
  int rc = check_version(f->o, resp, err);
  if (rc) f->check_failed = 1;
  return rc;
}

/* The object into the cache writer's file: part_size ranged GETs,
 * `concurrency` in flight, each written at its own offset
 * (kaun_http_get_parts, through the writer's part sink, which gathers the
 * 16 KiB pieces of each answer).  Every part is signed with If-Match: the
 * ETag the HEAD saw. */
static int fill(kaun_cache_writer *w, void *user, kaun_error *err) {
  fill_ctx *f = user;
  kaun_cache_writer_set_io(w, NULL); /* progress rides on the GETs */
  object *o = f->o;
  backend *be = o->be;
  if (o->size == 0) return KAUN_OK;
  const char *pin = o->etag[0] && strncmp(o->etag, "W/", 2) != 0 ? o->etag : NULL;
  signed_req s;
  int rc = sign_request(be, "GET", o->bucket, o->key, NULL, S3_EMPTY_SHA256, pin, NULL, &s, err);
  if (rc) return rc;
  kaun_cache_part whole = {w, 0}; /* the parts' bytes come with their offset in the object */
  kaun_http_request req;
  fill_request(&req, KAUN_HTTP_GET, &s, f->io, o->uri);
  req.body_to = KAUN_HTTP_BODY_CALLBACK;
  req.write_fn = kaun_cache_writer_part_sink;
  req.write_user = &whole;
  kaun_http_parts_options po = KAUN_HTTP_PARTS_OPTIONS_INIT;
  po.part_size = be->part_size;
  po.connections = be->concurrency;
  po.check = check_part;
  po.check_user = f;
  kaun_http_response *bad = NULL;
  rc = kaun_http_get_parts(be->http, &req, o->size, &po, &bad, err);
  if (rc && !f->check_failed) rc = s3_error(be, rc, bad, o->bucket, o->uri, err);
  kaun_http_response_free(bad);
  signed_req_free(&s);
  return rc;
}

static int s3_fetch_io(void *ob, char *path_out, size_t path_size, kaun_io *io, kaun_error *err) {
  object *o = ob;
  char dir[4096], key_text[8192], key[KAUN_SHA256_HEX_SIZE], final_path[4200], lock_path[4300];
  int rc = kaun_cache_dir(o->be->ctx, "kaun/s3", dir, sizeof dir, err);
  if (rc) return rc;
  /* an entry never changes meaning: its name is the object and its version */
  snprintf(key_text, sizeof key_text, "%s\n%s\n%s\n%s\n%llu", o->be->endpoint, o->bucket, o->key,
           o->etag, (unsigned long long)o->size);
  if ((rc = kaun_sha256_hex(key_text, strlen(key_text), key, err))) return rc;
  snprintf(final_path, sizeof final_path, "%s/%s", dir, key);
  snprintf(lock_path, sizeof lock_path, "%s/.locks/%s.lock", dir, key);
  if (strlen(final_path) >= path_size)
    return kaun_error_set(err, KAUN_EINVAL, "%s: the cache path %s does not fit in %zu bytes",
                          o->uri, final_path, path_size);
  /* the io cancels a wait for the entry's lock; progress rides on the GETs */
  fill_ctx f = {o, io, 0};
  /* the size is checked; the bytes too when the ETag is their MD5 */
  rc = kaun_cache_get_or_fill(
      final_path, lock_path, o->size, o->md5[0] ? KAUN_CACHE_HASH_MD5 : KAUN_CACHE_HASH_NONE,
      o->md5[0] ? o->md5 : NULL, KAUN_CACHE_LOCK_WAIT_MS, fill, &f, io, o->uri, err);
  if (rc == KAUN_ECHECKSUM &&
      err) { /* say how to turn it off for stores whose ETags are not MD5s */
    char why[KAUN_ERROR_MESSAGE_MAX];
    snprintf(why, sizeof why, "%s", err->message);
    kaun_error_set(err, rc,
                   "%s (the ETag of a single-part S3 object is its MD5; a store whose ETags are "
                   "not, such as encrypted MinIO, needs backends.%s.etag_md5: false)",
                   why, o->be->name);
  }
  if (!rc) memcpy(path_out, final_path, strlen(final_path) + 1);
  return rc;
}

static int s3_fetch(void *ob, char *path_out, size_t path_size, kaun_error *err) {
  return s3_fetch_io(ob, path_out, path_size, NULL, err);
}

/* ---- list ----------------------------------------------------------------------------- */

/* One ListObjectsV2 answer (`body`, NUL-terminated, or NULL): calls `fn`
 * with each key under `prefix` (the part after it) and its size until fn
 * asks to stop (`*stop` = 1); `*token` is the next page's continuation
 * token (malloc'd), or NULL and `*stop` = 1 when the listing ends. */
static int list_page(const char *body, const char *prefix, kaun_list_fn fn, void *context,
                     const char *uri, int *stop, char **token, kaun_error *err) {
  int rc = KAUN_OK;
  size_t plen = strlen(prefix);
  const char *p = body ? body : "";
  *token = NULL;
  for (const char *c; !*stop && (c = strstr(p, "<Contents>"));) {
    const char *end = strstr(c, "</Contents>");
    if (!end) break;
    const char *q = c;
    char *k = xml_text(&q, end, "Key");
    q = c;
    char *sz = xml_text(&q, end, "Size");
    if (k && strncmp(k, prefix, plen) == 0 && k[plen])
      *stop = fn(k + plen, sz ? strtoull(sz, NULL, 10) : 0, context) != 0;
    free(k);
    free(sz);
    p = end + 11;
  }
  p = body ? body : "";
  char *trunc = xml_text(&p, NULL, "IsTruncated");
  if (!*stop && trunc && strcmp(trunc, "true") == 0) {
    p = body;
    *token = xml_text(&p, NULL, "NextContinuationToken");
    if (!*token)
      rc = kaun_error_set(err, KAUN_EIO,
                          "%s: the server said the listing goes on but gave no "
                          "NextContinuationToken",
                          uri);
  } else {
    *stop = 1;
  }
  free(trunc);
  return rc;
}

static int s3_list(void *b, const char *path, kaun_list_fn fn, void *context, kaun_error *err) {
  backend *be = b;
  char *bucket, *key;
  int rc = split_path(be, path, &bucket, &key, err);
  if (rc) return rc;
  char *prefix = NULL, *eprefix = NULL, *token = NULL, *uri = make_uri(be, bucket, key);
  size_t klen = strlen(key);
  if (!uri || !(prefix = malloc(klen + 2))) {
    rc = nomem(err);
    goto done;
  }
  if ((rc = need_credentials(be, uri, err))) goto done;
  snprintf(prefix, klen + 2, "%s%s", key, klen && key[klen - 1] != '/' ? "/" : "");
  if (!(eprefix = s3_uri_encode(prefix, 0))) {
    rc = nomem(err);
    goto done;
  }
  for (int stop = 0; !rc && !stop;) {
    char *etoken = token ? s3_uri_encode(token, 0) : NULL;
    size_t qlen = strlen(eprefix) + (etoken ? strlen(etoken) : 0) + 128;
    char *query = malloc(qlen);
    if (!query || (token && !etoken)) {
      free(query);
      free(etoken);
      rc = nomem(err);
      break;
    }
    snprintf(query, qlen, "%s%s%slist-type=2&max-keys=%u&prefix=%s",
             etoken ? "continuation-token=" : "", etoken ? etoken : "", etoken ? "&" : "",
             be->list_page, eprefix);
    free(etoken);
    signed_req s;
    rc = sign_request(be, "GET", bucket, NULL, query, S3_EMPTY_SHA256, NULL, NULL, &s, err);
    free(query);
    if (rc) break;
    kaun_http_request req;
    fill_request(&req, KAUN_HTTP_GET, &s, NULL, uri);
    req.body_to = KAUN_HTTP_BODY_ALLOC;
    kaun_http_response *resp = NULL;
    rc = perform(be, &req, &resp, err);
    signed_req_free(&s);
    if (rc) {
      rc = s3_error(be, rc, resp, bucket, uri, err);
      kaun_http_response_free(resp);
      break;
    }
    size_t blen;
    free(token);
    rc = list_page(kaun_http_response_body(resp, &blen), prefix, fn, context, uri, &stop, &token,
                   err);
    kaun_http_response_free(resp);
  }
done:
  free(token);
  free(eprefix);
  free(prefix);
  free(uri);
  free(bucket);
  free(key);
  return rc;
}

/* ---- put and remove --------------------------------------------------------------------- */

/* A slice of a put source: one part of a multipart upload. */
typedef struct part_src {
  const kaun_put_source *src;
  uint64_t base;
  kaun_put_source self;
} part_src;

static int part_read(void *c, uint64_t off, void *dst, size_t len, kaun_error *err) {
  part_src *p = c;
  return p->src->read(p->src->context, p->base + off, dst, len, err);
}

static int part_view(void *c, uint64_t off, const void **ptr, size_t *len) {
  part_src *p = c;
  int rc = p->src->view(p->src->context, p->base + off, ptr, len);
  if (!rc && *len > p->self.size - off) *len = (size_t)(p->self.size - off);
  return rc;
}

/* A request with a small body (or none) and an answer kept in memory. */
static int simple_call(backend *be, kaun_http_method m, const char *method, const char *bucket,
                       const char *key, const char *query, const char *body, const char *uri,
                       kaun_http_response **resp, kaun_error *err) {
  char hash[65];
  s3_sha256_hex(body ? body : "", body ? strlen(body) : 0, hash);
  signed_req s;
  int rc = sign_request(be, method, bucket, key, query, hash, NULL, body ? "application/xml" : NULL,
                        &s, err);
  if (rc) return rc;
  kaun_http_request req;
  fill_request(&req, m, &s, NULL, uri);
  req.body = body;
  req.body_size = body ? strlen(body) : 0;
  req.body_to = KAUN_HTTP_BODY_ALLOC;
  *resp = NULL;
  rc = perform(be, &req, resp, err);
  signed_req_free(&s);
  if (rc) rc = s3_error(be, rc, *resp, bucket, uri, err);
  return rc;
}

static void abort_upload(backend *be, const char *bucket, const char *key, const char *query,
                         const char *uri) {
  kaun_error ignored = KAUN_ERROR_INIT;
  kaun_http_response *resp = NULL;
  simple_call(be, KAUN_HTTP_DELETE, "DELETE", bucket, key, query, NULL, uri, &resp, &ignored);
  kaun_http_response_free(resp);
}

static int multipart(backend *be, const char *bucket, const char *key, const char *uri,
                     const kaun_put_source *src, kaun_io *io, kaun_error *err) {
  kaun_http_response *resp = NULL;
  int rc = simple_call(be, KAUN_HTTP_POST, "POST", bucket, key, "uploads=", NULL, uri, &resp, err);
  if (rc) {
    kaun_http_response_free(resp);
    return rc;
  }
  size_t blen;
  const char *p = kaun_http_response_body(resp, &blen);
  char *upload = p ? xml_text(&p, NULL, "UploadId") : NULL;
  kaun_http_response_free(resp);
  if (!upload)
    return kaun_error_set(err, KAUN_EIO,
                          "%s: the server started a multipart upload without an UploadId", uri);
  char *eupload = s3_uri_encode(upload, 0);
  /* S3 takes at most 10000 parts: larger ones for a huge object */
  uint64_t part = be->part_size;
  while ((src->size + part - 1) / part > 10000) part *= 2;
  size_t n = (size_t)((src->size + part - 1) / part);
  signed_req *sreqs = calloc(n, sizeof *sreqs);
  part_src *parts = calloc(n, sizeof *parts);
  kaun_http_request *reqs = calloc(n, sizeof *reqs);
  kaun_http_response **resps = calloc(n, sizeof *resps);
  char *abort_q = NULL, *xml = NULL;
  size_t signed_n = 0;
  size_t aq = eupload ? strlen(eupload) + 16 : 0;
  if (!eupload || !sreqs || !parts || !reqs || !resps || !(abort_q = malloc(aq))) {
    rc = nomem(err);
    goto done;
  }
  snprintf(abort_q, aq, "uploadId=%s", eupload);
  for (size_t i = 0; i < n && !rc; i++) {
    char query[1200];
    snprintf(query, sizeof query, "partNumber=%zu&uploadId=%s", i + 1, eupload);
    rc = sign_request(be, "PUT", bucket, key, query, S3_UNSIGNED_PAYLOAD, NULL, NULL, &sreqs[i],
                      err);
    if (rc) break;
    signed_n++;
    parts[i].src = src;
    parts[i].base = (uint64_t)i * part;
    parts[i].self.size = src->size - parts[i].base < part ? src->size - parts[i].base : part;
    parts[i].self.read = part_read;
    parts[i].self.view = src->view ? part_view : NULL;
    parts[i].self.context = &parts[i];
    fill_request(&reqs[i], KAUN_HTTP_PUT, &sreqs[i], io, uri);
    reqs[i].body_source = &parts[i].self;
  }
  if (!rc)
    rc = kaun_http_perform_many(be->http, reqs, n, be->concurrency, KAUN_HTTP_FAIL_FAST, resps,
                                NULL, NULL, err);
  if (rc) {
    const kaun_http_response *bad = NULL;
    for (size_t i = 0; i < n && !bad; i++)
      if (resps[i] && kaun_http_response_status(resps[i]) >= 300) bad = resps[i];
    rc = s3_error(be, rc, bad, bucket, uri, err);
  }
  size_t xcap = n * 200 + 128, xlen = 0;
  if (!rc && !(xml = malloc(xcap))) rc = nomem(err);
  if (!rc) xlen += (size_t)snprintf(xml, xcap, "<CompleteMultipartUpload>");
  for (size_t i = 0; i < n && !rc; i++) {
    const char *etag = kaun_http_response_header(resps[i], "ETag");
    if (!etag || strlen(etag) > 120) {
      rc = kaun_error_set(err, KAUN_EIO, "%s: the server gave no ETag for part %zu", uri, i + 1);
      break;
    }
    int quoted = etag[0] == '"';
    xlen += (size_t)snprintf(xml + xlen, xcap - xlen,
                             "<Part><PartNumber>%zu</PartNumber><ETag>%s%s%s</ETag></Part>", i + 1,
                             quoted ? "" : "&quot;", etag, quoted ? "" : "&quot;");
  }
  if (!rc) {
    snprintf(xml + xlen, xcap - xlen, "</CompleteMultipartUpload>");
    rc = simple_call(be, KAUN_HTTP_POST, "POST", bucket, key, abort_q, xml, uri, &resp, err);
    if (!rc) {
      /* a 200 may still carry an <Error> (S3 decides late) */
      const char *b = kaun_http_response_body(resp, &blen);
      if (b && strstr(b, "<Error>")) {
        const char *q = b;
        char *code = xml_text(&q, NULL, "Code");
        rc = kaun_error_set(err, KAUN_EIO, "%s: completing the multipart upload failed [%s]", uri,
                            code ? code : "no code");
        free(code);
      }
    }
    kaun_http_response_free(resp);
  }
  if (rc && abort_q) abort_upload(be, bucket, key, abort_q, uri);
done:
  for (size_t i = 0; i < signed_n; i++) signed_req_free(&sreqs[i]);
  for (size_t i = 0; resps && i < n; i++) kaun_http_response_free(resps[i]);
  free(sreqs);
  free(parts);
  free(reqs);
  free(resps);
  free(abort_q);
  free(xml);
  free(eupload);
  free(upload);
  return rc;
}

static int s3_put_io(void *b, const char *path, const kaun_put_source *src, kaun_io *io,
                     kaun_error *err) {
  backend *be = b;
  char *bucket, *key;
  int rc = split_path(be, path, &bucket, &key, err);
  if (rc) return rc;
  char *uri = make_uri(be, bucket, key);
  if (!uri)
    rc = nomem(err);
  else if ((rc = need_credentials(be, uri, err)))
    ;
  else if (!*key || key[strlen(key) - 1] == '/')
    rc = kaun_error_set(err, KAUN_EISDIR, "%s names a folder, not an object: give a key", uri);
  else if (src->size > be->multipart_threshold && src->size > be->part_size)
    rc = multipart(be, bucket, key, uri, src, io, err);
  else {
    signed_req s;
    rc = sign_request(be, "PUT", bucket, key, NULL, S3_UNSIGNED_PAYLOAD, NULL, NULL, &s, err);
    if (!rc) {
      kaun_http_request req;
      fill_request(&req, KAUN_HTTP_PUT, &s, io, uri);
      req.body_source = src;
      kaun_http_response *resp = NULL;
      rc = perform(be, &req, &resp, err);
      if (rc) rc = s3_error(be, rc, resp, bucket, uri, err);
      kaun_http_response_free(resp);
      signed_req_free(&s);
    }
  }
  free(uri);
  free(bucket);
  free(key);
  return rc;
}

static int s3_put(void *b, const char *path, const kaun_put_source *src, kaun_error *err) {
  return s3_put_io(b, path, src, NULL, err);
}

static int s3_remove(void *b, const char *path, kaun_error *err) {
  backend *be = b;
  void *ob;
  /* S3 answers a DELETE of a missing key with 204: HEAD first, for ENOENT */
  int rc = s3_open(b, path, NULL, &ob, err);
  if (rc) return rc;
  object *o = ob;
  kaun_http_response *resp = NULL;
  rc = simple_call(be, KAUN_HTTP_DELETE, "DELETE", o->bucket, o->key, NULL, NULL, o->uri, &resp,
                   err);
  kaun_http_response_free(resp);
  s3_close(o);
  return rc;
}

static const kaun_plugin s3_plugin = {
    .abi_major = KAUN_PLUGIN_ABI_MAJOR,
    .abi_minor = KAUN_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(kaun_plugin),
    .name = "s3",
    .version = "1.0",
    .description = "S3-compatible object stores: s3://BUCKET/KEY, SigV4",
    .options = options,
    .capabilities = KAUN_CAP_READ | KAUN_CAP_LIST | KAUN_CAP_PUT | KAUN_CAP_REMOVE | KAUN_CAP_FETCH,
    .create = s3_create,
    .destroy = s3_destroy,
    .open = s3_open,
    .close = s3_close,
    .stat = s3_stat,
    .read = s3_read,
    .list = s3_list,
    .put = s3_put,
    .remove = s3_remove,
    .fetch = s3_fetch,
    .read_io = s3_read_io,
    .put_io = s3_put_io,
    .fetch_io = s3_fetch_io,
    .read_chunk = (uint64_t)8 << 20,
    .read_inflight = 16,
};

KAUN_PLUGIN_DEFINE(s3_plugin)
