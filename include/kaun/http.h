/* kaun — one HTTP layer for every plugin (libcurl underneath).
 *
 * The Hub, S3 and third-party plugins make their requests through a
 * kaun_http client and never carry curl code of their own.  The layer
 * retries what is worth retrying, resumes cut downloads with a Range,
 * checks every ranged answer, follows redirects by a per-request policy,
 * keeps credentials on their origin, reports progress to a kaun_io and
 * stops when it is canceled.  See docs/http.md for a plugin's view.
 *
 * Thread-safety: one client may be used by many threads at once; each
 * call borrows a connection pool of its own from the client (idle pools
 * are kept, so sequential requests from one thread reuse connections).
 *
 * Proxies: the client reads http_proxy, https_proxy, HTTPS_PROXY,
 * all_proxy and no_proxy from the environment, as curl does by default.
 *
 * Retries: network errors (refused, reset, timed out, DNS, a stalled
 * transfer, a cut body) and the statuses 408, 429, 500, 502, 503 and 504
 * are retried with exponential backoff and jitter (base * 2^k, capped),
 * honouring Retry-After (seconds or an HTTP date, capped by the maximum
 * delay).  Other 4xx statuses are never retried.  A GET cut in the middle
 * of its body is resumed with a Range for the bytes still missing (with
 * If-Match on the first answer's strong ETag); that counts as an attempt.
 * A request gives up after max_attempts attempts in a row that brought no
 * progress (64 KiB of new body bytes, or the rest of the request; a
 * stalled one counts as none): one that brought some starts the count again, so a long
 * download over a link that drops now and then goes on (at most 1000
 * attempts in all).
 *
 * Errors, once retries are exhausted or for what is not retried:
 *   404, 410 -> KAUN_ENOENT          401, 403 -> KAUN_EAUTH
 *   416      -> KAUN_EIO             408, 429, 5xx, network -> KAUN_ETRANSIENT
 *   412 -> KAUN_ECHANGED (an If-Match no longer holds: the object changed;
 *          send "If-Match: ETAG" in `headers` to pin a read to a version)
 *   a canceled kaun_io -> KAUN_ECANCELED      other statuses -> KAUN_EIO
 *   a malformed or non-http(s) URL -> KAUN_EURI   bad arguments -> KAUN_EINVAL
 * err->http_status holds the last status; the message names the method
 * and the URL (without its query string or user info: they may hold
 * signatures or tokens), the status and its reason, the request id when
 * the server sent one, and the number of attempts.  Authorization values
 * never appear in messages.
 */
#ifndef KAUN_HTTP_H
#define KAUN_HTTP_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/io.h>
#include <kaun/storage.h>

KAUN_BEGIN_DECLS

typedef struct kaun_http kaun_http;
typedef struct kaun_http_response kaun_http_response;

/* ---- the client ------------------------------------------------------------ */

/* Client settings.  Zero means "the default" for every field: start from
 * `kaun_http_options o = KAUN_HTTP_OPTIONS_INIT;`.  Fields may be added at
 * the end; struct_size says how many the caller knows. */
typedef struct kaun_http_options {
  size_t struct_size;            /* sizeof(kaun_http_options) */
  const char *ca_file;           /* PEM CA bundle; NULL = the system's */
  const char *user_agent_suffix; /* User-Agent is "kaun/VERSION SUFFIX" */
  long connect_timeout_ms;       /* 0 = 10000 */
  /* Stall detection: a transfer moving fewer than stall_bytes_per_s body
   * bytes per second for stall_ms is aborted ("stalled", retried, then
   * KAUN_ETRANSIENT).  0 = 1 byte/s and 30000 ms; stall_ms < 0 = off. */
  long stall_bytes_per_s;
  long stall_ms;
  unsigned max_attempts; /* tries per request, first one included; 0 = 5 */
  long retry_base_ms;    /* first backoff; 0 = 250 */
  long retry_max_ms;     /* backoff and Retry-After cap; 0 = 30000 */
  /* Turns off TLS certificate and host name verification.  For tests
   * against self-signed servers only: anyone on the path can then read
   * and change the traffic, tokens included.  0 (verify) by default. */
  int insecure_skip_tls_verify;
} kaun_http_options;

#define KAUN_HTTP_OPTIONS_INIT \
  { .struct_size = sizeof(kaun_http_options) }

/* A new client (`opts` may be NULL: every default).  Initialises libcurl
 * once per process.  Errors: KAUN_EINVAL (struct_size 0), KAUN_ENOMEM,
 * KAUN_EIO (libcurl cannot start). */
KAUN_API int kaun_http_new(const kaun_http_options *opts, kaun_http **out, kaun_error *err);

/* Frees a client and its idle connections.  No call may be running on it.
 * Accepts NULL. */
KAUN_API void kaun_http_free(kaun_http *http);

/* ---- requests ---------------------------------------------------------------- */

typedef enum kaun_http_method {
  KAUN_HTTP_GET = 0,
  KAUN_HTTP_HEAD = 1,
  KAUN_HTTP_PUT = 2,
  KAUN_HTTP_POST = 3,
  KAUN_HTTP_DELETE = 4
} kaun_http_method;

/* What to do with a 301, 302, 303, 307 or 308 that has a Location. */
typedef enum kaun_http_redirect {
  KAUN_HTTP_REDIRECT_FOLLOW = 0,   /* follow (at most 10 hops) */
  KAUN_HTTP_REDIRECT_RELATIVE = 1, /* follow a relative Location; an absolute
                                      one ("https://...", "//host/...") is
                                      returned as the response */
  KAUN_HTTP_REDIRECT_NONE = 2      /* return every redirect as the response */
} kaun_http_redirect;

/* Where the body of a successful (2xx) response goes.  Error bodies never
 * reach it: the first 16 KiB are kept in the response instead. */
typedef enum kaun_http_body_to {
  KAUN_HTTP_BODY_DISCARD = 0,  /* dropped (still counted as progress) */
  KAUN_HTTP_BODY_BUFFER = 1,   /* `buffer`: exactly `buffer_size` bytes */
  KAUN_HTTP_BODY_FD = 2,       /* pwrite to `fd` at `fd_offset` + position */
  KAUN_HTTP_BODY_CALLBACK = 3, /* `write_fn`, in order */
  KAUN_HTTP_BODY_ALLOC = 4     /* malloc'd, at most `alloc_max` bytes; read it
                                  with kaun_http_response_body */
} kaun_http_body_to;

/* Receives `len` body bytes at `offset` (from the first byte asked for).
 * Offsets only grow and never repeat, across retries and resumes too
 * (one request's; kaun_http_get_parts says how its parts and its
 * fallback call it).
 * Return KAUN_OK, or a KAUN_E* code (fill `err`) to stop: the request
 * then fails with that code and is not retried. */
typedef int (*kaun_http_write_fn)(void *user, uint64_t offset, const void *data, size_t len,
                                  kaun_error *err);

/* range_length meaning "up to the end of the object" (bytes=OFFSET-). */
#define KAUN_HTTP_TO_END UINT64_MAX

/* One request.  Start from `kaun_http_request r = KAUN_HTTP_REQUEST_INIT;`:
 * GET, no headers, follow redirects, body discarded.  Fields may be added
 * at the end.  Nothing is copied beyond the call: strings and buffers
 * must live until it returns. */
typedef struct kaun_http_request {
  size_t struct_size; /* sizeof(kaun_http_request) */
  kaun_http_method method;
  const char *url; /* http:// or https:// */
  /* Extra headers, "Name: value", NULL-terminated (NULL = none).  They go
   * to every hop of a redirect, except Authorization and Cookie, which
   * are dropped once a redirect leaves the original origin. */
  const char *const *headers;
  /* The Authorization header's value ("Bearer xyz", an AWS signature).
   * Sent only to the origin (scheme, host, port) of `url`: never to
   * another origin a redirect leads to.  NULL = none. */
  const char *authorization;
  kaun_http_redirect redirect;
  unsigned max_attempts; /* 0 = the client's */

  /* GET only: the bytes [range_offset, range_offset + range_length).
   * range_length 0 = the whole object, KAUN_HTTP_TO_END = to its end.
   * The answer is checked: a 206 must carry this Content-Range or one
   * around it, which is cut down to the slice (some servers answer
   * bytes=0-0 with the whole object), else it is retried, then KAUN_EIO;
   * a 200 with the whole object is cut down to the slice; an object too short for the range gives
   * KAUN_EIO naming its size; a 416 gives KAUN_EIO. */
  uint64_t range_offset;
  uint64_t range_length;

  /* PUT and POST: the body, from memory or from a source (not both).
   * Resent whole on a retry or a 307/308. */
  const void *body;
  size_t body_size;
  const kaun_put_source *body_source;

  /* The response body's destination (see kaun_http_body_to). */
  kaun_http_body_to body_to;
  void *buffer;
  size_t buffer_size; /* must equal range_length for a bounded range */
  int fd;
  uint64_t fd_offset;
  kaun_http_write_fn write_fn;
  void *write_user;
  size_t alloc_max; /* 0 = 64 MiB */

  /* Progress and cancellation: body bytes received (and sent) are
   * reported with kaun_io_add(io, progress_uri, total, n), each byte once
   * even across resumes; once io is canceled the transfer stops within
   * about 50 ms and the request fails with KAUN_ECANCELED.  io may be
   * NULL; progress_uri NULL = the URL without its query string. */
  kaun_io *io;
  const char *progress_uri;

  /* Called before each attempt (the first, every retry and resume) with
   * `prepare_user`: may point `*headers` and `*authorization` at new
   * values (a signature that carries a date, such as AWS SigV4, which
   * expires, made anew for a request that retries or runs long).  What
   * they point to must stay valid until the next call or the end of the
   * request; strings the request gave are not freed.  Return KAUN_OK, or
   * a code (with `err` filled) that fails the request.  NULL: not called.
   * With perform_many, calls come from the calling thread, one at a
   * time. */
  int (*prepare)(void *prepare_user, const char *const **headers, const char **authorization,
                 kaun_error *err);
  void *prepare_user;

  /* GET with a range: nonzero = only the exact range will do.  An answer
   * that would be cut down (a 200 with the whole object, a 206 around the
   * range) fails at once with KAUN_ENOTSUP, before its body is read: for
   * a download in parallel parts, where every part answered whole would
   * move the object once per part. */
  int strict_range;
} kaun_http_request;

#define KAUN_HTTP_REQUEST_INIT \
  { .struct_size = sizeof(kaun_http_request) }

/* Performs one request, retrying and resuming as described above.
 * Success is a 2xx answer with its body delivered completely (a buffer
 * filled exactly), or a redirect the policy returns (a 3xx with a
 * Location).  A 304, a 300 or a 3xx without Location is a success only for
 * a HEAD or a request whose body is discarded; for one that wants a body it
 * is KAUN_EIO (nothing was delivered).  `*out`
 * (may be NULL if not wanted) receives the response on success and on an
 * HTTP error status (its body then holds the start of the error
 * document), NULL when no answer came; free it with
 * kaun_http_response_free.  Errors: see the mapping at the top. */
KAUN_API int kaun_http_perform(kaun_http *http, const kaun_http_request *req,
                               kaun_http_response **out, kaun_error *err);

/* perform_many flag: once one request fails for good, stop the others
 * (those not finished fail with KAUN_ECANCELED). */
#define KAUN_HTTP_FAIL_FAST 1u

/* Performs `n` requests (an array of kaun_http_request, each with the same
 * struct_size) with at most `max_in_flight` transfers at once (0 = 8),
 * over one connection pool: each one retried, resumed and checked as
 * kaun_http_perform does, each with its own outcome.  `responses`,
 * `results` and `errors` are arrays of `n` (each may be NULL): the
 * response as kaun_http_perform would return it, the status code and the
 * error record of each request.  Returns KAUN_OK when every request
 * succeeded, else the code of the first failed one in array order (one
 * that really failed, rather than one KAUN_HTTP_FAIL_FAST stopped), its
 * error copied to `err`.  Progress and cancellation as for one request,
 * per request.  Errors: KAUN_EINVAL (no client, struct_size 0),
 * KAUN_ENOMEM, and each request's own. */
KAUN_API int kaun_http_perform_many(kaun_http *http, const kaun_http_request *requests, size_t n,
                                    unsigned max_in_flight, unsigned flags,
                                    kaun_http_response **responses, int *results,
                                    kaun_error *errors, kaun_error *err);

/* ---- one object in parallel ranged parts ---------------------------------------- */

/* The most requests kaun_http_get_parts makes for one object, whatever
 * size a header claims (S3's limit on a multipart upload's parts too). */
#define KAUN_HTTP_MAX_PARTS 10000u

typedef struct kaun_http_parts_options {
  size_t struct_size;   /* sizeof(kaun_http_parts_options) */
  uint64_t part_size;   /* bytes per ranged GET; 0 = 8 MiB */
  unsigned connections; /* transfers at once; 0 = 4 */
  /* Nonzero: the first part goes alone and the others carry If-Match
   * with its ETag (added to the template's headers; a `prepare` hook that
   * replaces the headers must add it itself), and an answer with another
   * ETag fails with KAUN_ECHANGED: for an object no earlier request
   * pinned to a version. */
  int pin_first;
  /* Called with each part's answer once all of them arrived (with the
   * single answer of the fallback below): KAUN_OK, or a code (with `err`
   * filled) that fails the download.  NULL: no check. */
  int (*check)(void *check_user, const kaun_http_response *resp, kaun_error *err);
  void *check_user;
} kaun_http_parts_options;

#define KAUN_HTTP_PARTS_OPTIONS_INIT \
  { .struct_size = sizeof(kaun_http_parts_options) }

/* Downloads bytes [0, size) of the object that `tmpl` (a GET of the whole
 * object, no range, body_to KAUN_HTTP_BODY_CALLBACK) names, as ranged
 * GETs of part_size bytes (larger when that would take more than
 * KAUN_HTTP_MAX_PARTS), `connections` of them in flight over one pool.
 * `opts` may be NULL (the defaults).  `size` must be the object's: an
 * answer that states another total fails with KAUN_ECHANGED.
 * tmpl->write_fn receives the bytes with their offset in the object, on
 * the calling thread, one call at a time: in order within a part, in any
 * order across parts (kaun_cache_writer_part_sink with a kaun_cache_part
 * at offset 0 writes them in place).  Every part must be answered with
 * exactly its range (strict_range): when one is not (a server that
 * ignores Range, or answers around it), the parts stop at that answer's
 * headers and the object comes in one request of `tmpl`, as the range
 * [0, size), from offset 0: bytes parts already delivered are delivered
 * again (and counted again in progress), so the sink must take a rewrite.
 * Progress and cancellation ride on tmpl->io.  `*failed` (may be NULL)
 * receives, when a request failed with an answer (an error status, a
 * precondition that no longer held), that answer (free it with
 * kaun_http_response_free); NULL for errors no answer carries (no
 * connection, a cancel, a body cut short, another ETag on a later part,
 * a refusal by `check`).
 * Errors: KAUN_EINVAL (no client or template, a body_to that is not
 * KAUN_HTTP_BODY_CALLBACK), KAUN_ENOMEM, KAUN_ECHANGED (pin_first),
 * those of the requests and of `check`. */
KAUN_API int kaun_http_get_parts(kaun_http *http, const kaun_http_request *tmpl, uint64_t size,
                                 const kaun_http_parts_options *opts, kaun_http_response **failed,
                                 kaun_error *err);

/* ---- responses ----------------------------------------------------------------- */

/* Frees a response.  Accepts NULL. */
KAUN_API void kaun_http_response_free(kaun_http_response *resp);

/* The HTTP status (200, 206, 302, 404...).  After a resume: the status of
 * the answer whose body was delivered first. */
KAUN_API long kaun_http_response_status(const kaun_http_response *resp);

/* The Content-Length the server announced, or -1 when it sent none. */
KAUN_API int64_t kaun_http_response_content_length(const kaun_http_response *resp);

/* The whole object's size when the answer tells it (a 200's length, a
 * 206's or 416's Content-Range total), or -1. */
KAUN_API int64_t kaun_http_response_object_size(const kaun_http_response *resp);

/* The value of the first header called `name` (any case; "ETag" finds
 * "etag"), without surrounding blanks, or NULL.  Valid until the response
 * is freed. */
KAUN_API const char *kaun_http_response_header(const kaun_http_response *resp, const char *name);

/* The `index`th header, in the order received: fills `*name` and
 * `*value` and returns 1, or returns 0 past the last. */
KAUN_API int kaun_http_response_header_at(const kaun_http_response *resp, size_t index,
                                          const char **name, const char **value);

/* The URL that answered (after the redirects followed). */
KAUN_API const char *kaun_http_response_effective_url(const kaun_http_response *resp);

/* The server's request id (x-amz-request-id, else x-request-id, else
 * X-Amz-Cf-Id), or NULL.  Failed requests name it in their message. */
KAUN_API const char *kaun_http_response_request_id(const kaun_http_response *resp);

/* The body kept in the response: the whole body for
 * KAUN_HTTP_BODY_ALLOC (NUL-terminated, `*len` without the NUL), the
 * first 16 KiB of an error document otherwise; NULL when none. */
KAUN_API const void *kaun_http_response_body(const kaun_http_response *resp, size_t *len);

/* How many attempts the request took (1 = no retry). */
KAUN_API unsigned kaun_http_response_attempts(const kaun_http_response *resp);

/* ---- helpers ------------------------------------------------------------------- */

/* An ETag header's value without a weak prefix and quotes (W/"abc" ->
 * abc), as kaun_stat.etag holds it.  NUL-terminated when size > 0. */
KAUN_API void kaun_http_etag_value(const char *etag, char *out, size_t size);

/* Writes `url` without user info, query string and fragment (a query
 * becomes "?..."), for messages and logs: "https://h:8443/a/b?...".
 * Always NUL-terminates when size > 0; returns the full length, as
 * snprintf does. */
KAUN_API size_t kaun_http_redact_url(const char *url, char *out, size_t size);

KAUN_END_DECLS

#endif
