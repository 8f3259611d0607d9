/* The HTTP layer: one libcurl-based client for every plugin.
 *
 * Every call runs an event loop over a curl multi handle ("agent")
 * borrowed from the client's pool: a job per request, an easy handle per
 * attempt.  Redirects are followed here, not by curl, so the policy
 * (follow, relative only, none) and the origin rule for Authorization are
 * ours.  Retries, resumes, stall detection and cancellation are decided
 * by the loop.  Agents keep their connection caches between calls, so a
 * thread making sequential requests reuses its connections; agents are
 * never used by two threads at once.  The DNS and TLS-session caches are
 * shared by all agents through a locked curl share handle. */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_CONNECT_MS 10000L
#define DEFAULT_STALL_BPS 1L
#define DEFAULT_STALL_MS 30000L
#define DEFAULT_ATTEMPTS 5u
#define DEFAULT_BASE_MS 250L
#define DEFAULT_MAX_MS 30000L
#define DEFAULT_INFLIGHT 8u
#define DEFAULT_ALLOC_MAX ((size_t)64 << 20)
#define MAX_REDIRECTS 10u
#define MAX_TOTAL_ATTEMPTS 1000u          /* even when every try brings new bytes */
#define PROGRESS_MIN ((uint64_t)64 << 10) /* what a try must bring to count as progress */
#define ERRBODY_MAX 16384u
#define POLL_MS 50L
#define UNKNOWN UINT64_MAX

/* The only process-wide state: curl_global_init, once. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;
static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_ALL); }

/* ---- responses ----------------------------------------------------------------- */

typedef struct header {
  char *name;
  char *value;
} header;

struct kaun_http_response {
  long status;
  char reason[48];
  int64_t content_length;
  int64_t object_size;
  char *effective_url;
  header *headers;
  size_t nheaders, cap;
  char *body;
  size_t body_len, body_cap;
  unsigned attempts;
};

static kaun_http_response *response_new(void) {
  kaun_http_response *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->content_length = -1;
  r->object_size = -1;
  return r;
}

static void response_clear_headers(kaun_http_response *r) {
  for (size_t i = 0; i < r->nheaders; i++) {
    free(r->headers[i].name);
    free(r->headers[i].value);
  }
  r->nheaders = 0;
}

void kaun_http_response_free(kaun_http_response *r) {
  if (!r) return;
  response_clear_headers(r);
  free(r->headers);
  free(r->effective_url);
  free(r->body);
  free(r);
}

static bool response_add_header(kaun_http_response *r, const char *name, size_t nlen,
                                const char *value, size_t vlen) {
  if (r->nheaders == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 16;
    header *grown = realloc(r->headers, cap * sizeof *grown);
    if (!grown) return false;
    r->headers = grown;
    r->cap = cap;
  }
  char *n = strndup(name, nlen), *v = strndup(value, vlen);
  if (!n || !v) {
    free(n);
    free(v);
    return false;
  }
  r->headers[r->nheaders].name = n;
  r->headers[r->nheaders].value = v;
  r->nheaders++;
  return true;
}

const char *kaun_http_response_header(const kaun_http_response *r, const char *name) {
  if (!r || !name) return NULL;
  for (size_t i = 0; i < r->nheaders; i++)
    if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
  return NULL;
}

int kaun_http_response_header_at(const kaun_http_response *r, size_t index, const char **name,
                                 const char **value) {
  if (!r || index >= r->nheaders) return 0;
  if (name) *name = r->headers[index].name;
  if (value) *value = r->headers[index].value;
  return 1;
}

long kaun_http_response_status(const kaun_http_response *r) { return r ? r->status : 0; }
int64_t kaun_http_response_content_length(const kaun_http_response *r) {
  return r ? r->content_length : -1;
}
int64_t kaun_http_response_object_size(const kaun_http_response *r) {
  return r ? r->object_size : -1;
}
const char *kaun_http_response_effective_url(const kaun_http_response *r) {
  return r ? r->effective_url : NULL;
}
unsigned kaun_http_response_attempts(const kaun_http_response *r) { return r ? r->attempts : 0; }

const char *kaun_http_response_request_id(const kaun_http_response *r) {
  static const char *const names[] = {"x-amz-request-id", "x-request-id", "x-amz-cf-id"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    const char *v = kaun_http_response_header(r, names[i]);
    if (v && *v) return v;
  }
  return NULL;
}

const void *kaun_http_response_body(const kaun_http_response *r, size_t *len) {
  if (len) *len = r && r->body ? r->body_len : 0;
  return r ? r->body : NULL;
}

/* ---- URLs ------------------------------------------------------------------------- */

void kaun_http_etag_value(const char *etag, char *out, size_t size) {
  if (!size) return;
  const char *e = etag ? etag : "";
  if (strncmp(e, "W/", 2) == 0) e += 2;
  size_t n = strlen(e);
  if (n >= 2 && e[0] == '"' && e[n - 1] == '"') {
    e++;
    n -= 2;
  }
  snprintf(out, size, "%.*s", (int)n, e);
}

size_t kaun_http_redact_url(const char *url, char *out, size_t size) {
  kaun__strbuf sb = {0};
  if (!url) url = "";
  const char *p = url, *sep = strstr(url, "://");
  if (sep && (size_t)(sep - url) < strcspn(url, "/?#")) {
    kaun__strbuf_append(&sb, url, (size_t)(sep - url) + 3);
    p = sep + 3;
    size_t alen = strcspn(p, "/?#");
    const char *at = memrchr(p, '@', alen);
    const char *host = at ? at + 1 : p;
    kaun__strbuf_append(&sb, host, alen - (size_t)(host - p));
    p += alen;
  }
  size_t plen = strcspn(p, "?#");
  kaun__strbuf_append(&sb, p, plen);
  if (p[plen] == '?') kaun__strbuf_puts(&sb, "?...");
  size_t n = sb.failed ? 0 : sb.len;
  if (size) {
    size_t k = n < size - 1 ? n : size - 1;
    if (k) memcpy(out, sb.data, k);
    out[k] = '\0';
  }
  kaun__strbuf_free(&sb);
  return n;
}

static bool is_http_scheme(const char *s) {
  return s && (strcasecmp(s, "http") == 0 || strcasecmp(s, "https") == 0);
}

/* "scheme://host:port", lowercased, for an http(s) URL; NULL otherwise
 * (or without memory). */
static char *origin_of(const char *url) {
  CURLU *u = curl_url();
  if (!u) return NULL;
  char *scheme = NULL, *host = NULL, *port = NULL, *out = NULL;
  if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK && is_http_scheme(scheme) &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
    size_t n = strlen(scheme) + strlen(host) + strlen(port) + 5;
    if ((out = malloc(n))) {
      snprintf(out, n, "%s://%s:%s", scheme, host, port);
      for (char *c = out; *c; c++)
        if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    }
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return out;
}

/* `loc` resolved against `base`, malloc'd; NULL when it cannot be. */
static char *resolve_url(const char *base, const char *loc) {
  CURLU *u = curl_url();
  if (!u) return NULL;
  char *got = NULL, *out = NULL;
  if (curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_URL, loc, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_URL, &got, 0) == CURLUE_OK)
    out = strdup(got);
  curl_free(got);
  curl_url_cleanup(u);
  return out;
}

/* An absolute Location: "scheme:..." or a network-path "//host/...". */
static bool location_is_absolute(const char *loc) {
  if (loc[0] == '/' && loc[1] == '/') return true;
  const char *p = loc;
  if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) return false;
  while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
         *p == '+' || *p == '-' || *p == '.')
    p++;
  return *p == ':';
}

/* ---- the client ----------------------------------------------------------------------- */

typedef struct agent {
  CURLM *multi;
  CURL **idle;
  size_t nidle, cap;
  struct agent *next;
} agent;

struct kaun_http {
  char *ca_file;
  char *user_agent;
  long connect_ms, stall_bps, stall_ms, base_ms, max_ms;
  unsigned attempts;
  int insecure;
  CURLSH *share;
  pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
  pthread_mutex_t lock; /* guards `agents` */
  agent *agents;        /* idle agents */
};

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *user) {
  (void)h;
  (void)access;
  kaun_http *c = user;
  if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST) pthread_mutex_lock(&c->share_locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *user) {
  (void)h;
  kaun_http *c = user;
  if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST) pthread_mutex_unlock(&c->share_locks[data]);
}

static void agent_free(agent *a) {
  if (!a) return;
  for (size_t i = 0; i < a->nidle; i++) curl_easy_cleanup(a->idle[i]);
  free(a->idle);
  if (a->multi) curl_multi_cleanup(a->multi);
  free(a);
}

static agent *agent_take(kaun_http *h) {
  pthread_mutex_lock(&h->lock);
  agent *a = h->agents;
  if (a) h->agents = a->next;
  pthread_mutex_unlock(&h->lock);
  if (a) return a;
  if (!(a = calloc(1, sizeof *a))) return NULL;
  if (!(a->multi = curl_multi_init())) {
    free(a);
    return NULL;
  }
  return a;
}

static void agent_give(kaun_http *h, agent *a) {
  pthread_mutex_lock(&h->lock);
  a->next = h->agents;
  h->agents = a;
  pthread_mutex_unlock(&h->lock);
}

static CURL *agent_easy(agent *a) {
  if (a->nidle) {
    CURL *e = a->idle[--a->nidle];
    curl_easy_reset(e);
    return e;
  }
  return curl_easy_init();
}

static void agent_return_easy(agent *a, CURL *e) {
  if (a->nidle == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 8;
    CURL **grown = realloc(a->idle, cap * sizeof *grown);
    if (!grown) {
      curl_easy_cleanup(e);
      return;
    }
    a->idle = grown;
    a->cap = cap;
  }
  a->idle[a->nidle++] = e;
}

int kaun_http_new(const kaun_http_options *opts, kaun_http **out, kaun_error *err) {
  *out = NULL;
  kaun_http_options o;
  memset(&o, 0, sizeof o);
  if (opts) {
    if (opts->struct_size == 0)
      return kaun__error_set(err, KAUN_EINVAL, "HTTP client options: struct_size is not set");
    memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);
  }
  if (o.connect_timeout_ms < 0 || o.stall_bytes_per_s < 0 || o.retry_base_ms < 0 ||
      o.retry_max_ms < 0)
    return kaun__error_set(err, KAUN_EINVAL, "HTTP client options: negative timeout or delay");
  pthread_once(&curl_once, curl_init);
  if (curl_init_rc != CURLE_OK)
    return kaun__error_set(err, KAUN_EIO, "libcurl cannot start: %s",
                           curl_easy_strerror(curl_init_rc));

  kaun_http *h = calloc(1, sizeof *h);
  if (!h) return kaun__error_nomem(err, "creating an HTTP client");
  h->connect_ms = o.connect_timeout_ms ? o.connect_timeout_ms : DEFAULT_CONNECT_MS;
  h->stall_bps = o.stall_bytes_per_s ? o.stall_bytes_per_s : DEFAULT_STALL_BPS;
  h->stall_ms = o.stall_ms ? o.stall_ms : DEFAULT_STALL_MS;
  h->attempts = o.max_attempts ? o.max_attempts : DEFAULT_ATTEMPTS;
  h->base_ms = o.retry_base_ms ? o.retry_base_ms : DEFAULT_BASE_MS;
  h->max_ms = o.retry_max_ms ? o.retry_max_ms : DEFAULT_MAX_MS;
  if (h->max_ms < h->base_ms) h->max_ms = h->base_ms;
  h->insecure = o.insecure_skip_tls_verify != 0;
  pthread_mutex_init(&h->lock, NULL);
  for (int i = 0; i < CURL_LOCK_DATA_LAST; i++) pthread_mutex_init(&h->share_locks[i], NULL);

  kaun__strbuf ua = {0};
  kaun__strbuf_puts(&ua, "kaun/" KAUN_VERSION_STRING);
  if (o.user_agent_suffix && *o.user_agent_suffix)
    kaun__strbuf_printf(&ua, " %s", o.user_agent_suffix);
  h->user_agent = ua.failed ? NULL : ua.data;
  if (ua.failed) kaun__strbuf_free(&ua);
  if (o.ca_file) h->ca_file = strdup(o.ca_file);
  h->share = curl_share_init();
  if (!h->user_agent || (o.ca_file && !h->ca_file) || !h->share) {
    kaun_http_free(h);
    return kaun__error_nomem(err, "creating an HTTP client");
  }
  curl_share_setopt(h->share, CURLSHOPT_LOCKFUNC, share_lock);
  curl_share_setopt(h->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
  curl_share_setopt(h->share, CURLSHOPT_USERDATA, h);
  curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  *out = h;
  return KAUN_OK;
}

void kaun_http_free(kaun_http *h) {
  if (!h) return;
  while (h->agents) {
    agent *a = h->agents;
    h->agents = a->next;
    agent_free(a);
  }
  if (h->share) curl_share_cleanup(h->share);
  for (int i = 0; i < CURL_LOCK_DATA_LAST; i++) pthread_mutex_destroy(&h->share_locks[i]);
  pthread_mutex_destroy(&h->lock);
  free(h->ca_file);
  free(h->user_agent);
  free(h);
}

/* ---- jobs ------------------------------------------------------------------------------ */

typedef enum disposition {
  DISP_NONE = 0, /* headers not complete yet */
  DISP_SINK,     /* a 2xx body for the caller */
  DISP_DISCARD,  /* the body of a redirect we follow */
  DISP_KEEP      /* an error (or returned) body: its start is kept */
} disposition;

typedef struct job {
  kaun_http *http;
  kaun_http_request req; /* the caller's, zero-extended */
  size_t index;
  bool done;
  int result;
  kaun_error err;
  kaun_http_response *out; /* handed to the caller */

  /* the request's state across attempts */
  char *url;    /* the URL of the current hop */
  char *origin; /* the origin of req.url */
  char *progress_uri;
  char *next_url; /* where a redirect being followed leads */
  kaun_http_method method;
  bool send_body;
  uint64_t body_size;
  unsigned attempts, max_attempts, redirects;
  unsigned fruitless;      /* attempts in a row that brought no new bytes */
  uint64_t delivered_mark; /* `delivered` when the last attempt started */
  bool ranged;
  uint64_t want_start, want_len; /* want_len UNKNOWN until known */
  uint64_t delivered;            /* bytes given to the sink */
  int64_t object_size;           /* learned from the first answer, or -1 */
  kaun_http_response *primary;   /* the answer whose body started the delivery */
  char *if_match;                /* its strong ETag, for resumes */
  bool sent_if_match;
  char *alloc;
  size_t alloc_len, alloc_cap, alloc_max;
  uint64_t upload_hwm;
  int64_t due_ms;
  uint64_t rng;

  /* one attempt */
  CURL *easy;
  struct curl_slist *slist;
  kaun_http_response *cur;
  bool headers_done, range_sent, complete, stalled;
  disposition disp;
  uint64_t body_pos; /* object offset of the next body byte */
  int abort_code;    /* set by a callback that stopped the transfer */
  bool abort_retry;
  char abort_msg[512];
  uint64_t upload_pos;
  uint64_t moved; /* body bytes received and sent, for stall detection */
  int64_t win_start;
  uint64_t win_moved;
  char errbuf[CURL_ERROR_SIZE];
} job;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *method_name(kaun_http_method m) {
  switch (m) {
    case KAUN_HTTP_GET: return "GET";
    case KAUN_HTTP_HEAD: return "HEAD";
    case KAUN_HTTP_PUT: return "PUT";
    case KAUN_HTTP_POST: return "POST";
    case KAUN_HTTP_DELETE: return "DELETE";
  }
  return "?";
}

static const char *reason_of(const kaun_http_response *r) {
  switch (r->status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return r->reason;
  }
}

static void job_free(job *j) {
  free(j->url);
  free(j->origin);
  free(j->progress_uri);
  free(j->next_url);
  free(j->if_match);
  free(j->alloc);
  if (j->cur != j->primary) kaun_http_response_free(j->cur);
  kaun_http_response_free(j->primary);
  kaun_http_response_free(j->out);
  curl_slist_free_all(j->slist);
}

/* Ends the job with `code`: "METHOD URL: detail (request id X; N attempts)". */
static void job_fail(job *j, int code, long status, const char *rid, const char *fmt, ...)
    KAUN_PRINTF(5, 6);
static void job_fail(job *j, int code, long status, const char *rid, const char *fmt, ...) {
  char detail[640], url[400], hop[400] = "";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  kaun_http_redact_url(j->req.url, url, sizeof url);
  if (j->url && strcmp(j->url, j->req.url) != 0) {
    char to[360];
    kaun_http_redact_url(j->url, to, sizeof to);
    snprintf(hop, sizeof hop, "redirected to %s; ", to);
  }
  kaun__error_set(&j->err, code, "%s %s: %s (%s%s%s%s%u attempt%s)", method_name(j->req.method),
                  url, detail, hop, rid ? "request id " : "", rid ? rid : "", rid ? "; " : "",
                  j->attempts, j->attempts == 1 ? "" : "s");
  j->err.http_status = status;
  j->result = code;
  j->done = true;
}

/* Ends the job for a bad argument: "METHOD URL: invalid request: WHY". */
static void job_invalid(job *j, const char *why) {
  char url[400];
  kaun_http_redact_url(j->req.url, url, sizeof url);
  j->result = kaun__error_set(&j->err, KAUN_EINVAL, "%s %s: invalid request: %s",
                              method_name(j->req.method), url, why);
  j->done = true;
}

/* Validates the request and sets the job up; on failure the job is done. */
static void job_init(kaun_http *h, const kaun_http_request *raw, size_t index, job *j) {
  memset(j, 0, sizeof *j);
  j->http = h;
  j->index = index;
  j->object_size = -1;
  j->attempts = 1;
  j->fruitless = 1;
  j->want_len = UNKNOWN;
  if (!raw || raw->struct_size == 0) {
    j->req.url = "(none)";
    j->result =
        kaun__error_set(&j->err, KAUN_EINVAL, "HTTP request %zu: struct_size is not set", index);
    j->done = true;
    return;
  }
  memcpy(&j->req, raw, raw->struct_size < sizeof j->req ? raw->struct_size : sizeof j->req);
  kaun_http_request *r = &j->req;
  const char *bad = NULL;
  if (!r->url) {
    r->url = "(none)";
    bad = "no URL";
  } else if ((unsigned)r->method > KAUN_HTTP_DELETE) {
    bad = "unknown method";
  } else if ((unsigned)r->redirect > KAUN_HTTP_REDIRECT_NONE) {
    bad = "unknown redirect policy";
  } else if ((unsigned)r->body_to > KAUN_HTTP_BODY_ALLOC) {
    bad = "unknown body destination";
  } else if (r->range_length && r->method != KAUN_HTTP_GET) {
    bad = "a Range is for GET only";
  } else if (r->range_length && r->range_length != KAUN_HTTP_TO_END &&
             r->range_offset > UINT64_MAX - r->range_length) {
    bad = "the range overflows";
  } else if ((r->body || r->body_size || r->body_source) && r->method != KAUN_HTTP_PUT &&
             r->method != KAUN_HTTP_POST) {
    bad = "a request body is for PUT and POST only";
  } else if (r->body && r->body_source) {
    bad = "both a body and a body source";
  } else if (r->body_size && !r->body) {
    bad = "body_size without a body";
  } else if (r->body_source && !r->body_source->read) {
    bad = "a body source without a read function";
  } else if (r->body_to == KAUN_HTTP_BODY_BUFFER && !r->buffer && r->buffer_size) {
    bad = "no buffer";
  } else if (r->body_to == KAUN_HTTP_BODY_BUFFER && r->range_length &&
             r->range_length != KAUN_HTTP_TO_END && r->range_length != r->buffer_size) {
    bad = "the buffer size differs from the range length";
  } else if (r->body_to == KAUN_HTTP_BODY_FD && r->fd < 0) {
    bad = "no file descriptor";
  } else if (r->body_to == KAUN_HTTP_BODY_CALLBACK && !r->write_fn) {
    bad = "no write function";
  }
  if (bad) {
    job_invalid(j, bad);
    return;
  }
  char shown[1024];
  kaun_http_redact_url(r->url, shown, sizeof shown);
  j->url = strdup(r->url);
  j->progress_uri = strdup(r->progress_uri ? r->progress_uri : shown);
  if (!j->url || !j->progress_uri) {
    j->result = kaun__error_nomem(&j->err, "starting an HTTP request");
    j->done = true;
    return;
  }
  if (!(j->origin = origin_of(r->url))) {
    j->result = kaun__error_set(&j->err, KAUN_EURI, "%s %s: not an http:// or https:// URL",
                                method_name(r->method), shown);
    j->done = true;
    return;
  }
  j->method = r->method;
  j->send_body = r->method == KAUN_HTTP_PUT || r->method == KAUN_HTTP_POST;
  j->body_size = r->body_source ? r->body_source->size : r->body_size;
  j->max_attempts = r->max_attempts ? r->max_attempts : h->attempts;
  j->ranged = r->range_length != 0;
  j->want_start = j->ranged ? r->range_offset : 0;
  if (j->ranged && r->range_length != KAUN_HTTP_TO_END) j->want_len = r->range_length;
  j->alloc_max = r->alloc_max ? r->alloc_max : DEFAULT_ALLOC_MAX;
  j->rng = ((uint64_t)now_ms() << 20) ^ (uint64_t)(uintptr_t)j ^ (index * 0x9E3779B97F4A7C15u);
  if (!j->rng) j->rng = 1;
}

/* ---- callbacks ------------------------------------------------------------------------- */

static void job_abort(job *j, int code, bool retry, const char *fmt, ...) KAUN_PRINTF(4, 5);
static void job_abort(job *j, int code, bool retry, const char *fmt, ...) {
  if (j->abort_code) return;
  j->abort_code = code;
  j->abort_retry = retry;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(j->abort_msg, sizeof j->abort_msg, fmt, ap);
  va_end(ap);
}

static bool parse_u64(const char *s, const char **end, uint64_t *out) {
  if (*s < '0' || *s > '9') return false;
  uint64_t v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    if (v > (UINT64_MAX - 9) / 10) return false;
    v = v * 10 + (uint64_t)(*s - '0');
  }
  *out = v;
  if (end) *end = s;
  return true;
}

/* "bytes A-B/T", or with a total of "*" (total UNKNOWN), or "bytes *\/T" (A = UNKNOWN). */
static bool parse_content_range(const char *v, uint64_t *a, uint64_t *b, uint64_t *total) {
  if (!v || strncasecmp(v, "bytes", 5) != 0) return false;
  v += 5;
  while (*v == ' ') v++;
  *a = *b = *total = UNKNOWN;
  if (*v == '*') {
    v++;
  } else {
    if (!parse_u64(v, &v, a) || *v++ != '-' || !parse_u64(v, &v, b) || *b < *a) return false;
  }
  if (*v++ != '/') return false;
  if (*v == '*') return v[1] == '\0' && *a != UNKNOWN;
  return parse_u64(v, &v, total) && *v == '\0' && (*a == UNKNOWN || *b < *total);
}

static bool status_is_redirect(long s) {
  return s == 301 || s == 302 || s == 303 || s == 307 || s == 308;
}

/* Decides what to do with the body once the final headers of an answer
 * are in.  Returns false to stop the transfer. */
static bool evaluate(job *j) {
  kaun_http_response *r = j->cur;
  j->headers_done = true;
  free(r->effective_url);
  if (!(r->effective_url = strdup(j->url))) {
    job_abort(j, KAUN_ENOMEM, false, "out of memory while reading the answer");
    return false;
  }
  const char *cl = kaun_http_response_header(r, "Content-Length");
  uint64_t clv;
  if (cl && parse_u64(cl, NULL, &clv) && clv <= INT64_MAX) r->content_length = (int64_t)clv;
  if ((r->status == 200 || r->status == 203) &&
      (j->method == KAUN_HTTP_GET || j->method == KAUN_HTTP_HEAD))
    r->object_size = r->content_length;
  const char *loc = kaun_http_response_header(r, "Location");
  if (r->status == 416) {
    uint64_t a, b, t;
    if (parse_content_range(kaun_http_response_header(r, "Content-Range"), &a, &b, &t) &&
        t != UNKNOWN)
      r->object_size = (int64_t)t;
  }

  if (status_is_redirect(r->status) && loc && *loc && j->req.redirect != KAUN_HTTP_REDIRECT_NONE &&
      !(j->req.redirect == KAUN_HTTP_REDIRECT_RELATIVE && location_is_absolute(loc))) {
    free(j->next_url);
    j->next_url = resolve_url(j->url, loc);
    j->disp = DISP_DISCARD;
    return true;
  }
  if (r->status < 200 || r->status >= 300 || j->method == KAUN_HTTP_HEAD) {
    j->disp = DISP_KEEP;
    return true;
  }

  /* A 2xx with a body: where does it sit in the object? */
  uint64_t pos = j->want_start + j->delivered;
  char asked[96];
  if (j->want_len != UNKNOWN)
    snprintf(asked, sizeof asked, "bytes=%llu-%llu", (unsigned long long)pos,
             (unsigned long long)(j->want_start + j->want_len - 1));
  else
    snprintf(asked, sizeof asked, "bytes=%llu-", (unsigned long long)pos);
  if (r->status == 206) {
    const char *crv = kaun_http_response_header(r, "Content-Range");
    uint64_t a, b, t;
    if (!j->range_sent) {
      job_abort(j, KAUN_EIO, true, "206 Partial Content to a request without a Range");
      return false;
    }
    if (!parse_content_range(crv, &a, &b, &t) || a == UNKNOWN) {
      job_abort(j, KAUN_EIO, true, "206 Partial Content with Content-Range \"%s\" for %s",
                crv ? crv : "(none)", asked);
      return false;
    }
    if (t != UNKNOWN && j->object_size >= 0 && t != (uint64_t)j->object_size) {
      job_abort(j, KAUN_ECHANGED, false,
                "the object changed while it was being read: it had %lld bytes, now %llu",
                (long long)j->object_size, (unsigned long long)t);
      return false;
    }
    uint64_t want_end = j->want_len != UNKNOWN ? j->want_start + j->want_len - 1 : b;
    if (j->req.strict_range && a <= pos && b >= want_end && (a != pos || b != want_end)) {
      job_abort(j, KAUN_ENOTSUP, false,
                "the server answered Content-Range \"%s\" to a request for %s, and only that "
                "range will do",
                crv, asked);
      return false;
    }
    /* the range asked for, or one around it (some servers answer
     * bytes=0-0 with the whole object): the slice is cut out of it */
    bool ok = a <= pos;
    if (ok && j->want_len != UNKNOWN) {
      uint64_t end = j->want_start + j->want_len - 1;
      if (b < end && t != UNKNOWN && b == t - 1) {
        job_abort(j, KAUN_EIO, false, "the object has only %llu bytes: asked %s",
                  (unsigned long long)t, asked);
        return false;
      }
      ok = b >= end;
    } else if (ok) {
      ok = t != UNKNOWN && b == t - 1;
      if (ok) j->want_len = b + 1 - j->want_start;
    }
    if (ok && r->content_length >= 0 && (uint64_t)r->content_length != b - a + 1) ok = false;
    if (!ok) {
      job_abort(j, KAUN_EIO, true,
                "the server answered Content-Range \"%s\" (Content-Length %s) to a request for %s",
                crv, cl ? cl : "none", asked);
      return false;
    }
    if (t != UNKNOWN) r->object_size = (int64_t)t;
    j->body_pos = a;
  } else {
    /* The whole representation (a 200, even to a Range: take the slice). */
    if (j->req.strict_range && j->ranged) {
      job_abort(j, KAUN_ENOTSUP, false,
                "the server ignored the Range (%s) and answered %ld with the whole object", asked,
                r->status);
      return false;
    }
    j->body_pos = 0;
    if (r->content_length >= 0) {
      uint64_t len = (uint64_t)r->content_length;
      if (j->object_size >= 0 && (j->ranged || j->delivered) && len != (uint64_t)j->object_size) {
        job_abort(j, KAUN_ECHANGED, false,
                  "the object changed while it was being read: it had %lld bytes, now %llu",
                  (long long)j->object_size, (unsigned long long)len);
        return false;
      }
      if (j->want_len == UNKNOWN) {
        if (len < j->want_start) {
          job_abort(j, KAUN_EIO, false, "the object has only %llu bytes: asked %s",
                    (unsigned long long)len, asked);
          return false;
        }
        j->want_len = len - j->want_start;
      } else if (j->want_start + j->want_len > len) {
        job_abort(j, KAUN_EIO, false, "the object has only %llu bytes: asked %s",
                  (unsigned long long)len, asked);
        return false;
      }
    }
  }
  if (r->object_size >= 0 && j->object_size < 0) j->object_size = r->object_size;
  if (j->req.body_to == KAUN_HTTP_BODY_BUFFER && j->want_len != UNKNOWN &&
      j->want_len != j->req.buffer_size) {
    job_abort(j, KAUN_EIO, false, "the body has %llu bytes; the buffer holds %zu",
              (unsigned long long)j->want_len, j->req.buffer_size);
    return false;
  }
  if (!j->primary) {
    j->primary = r;
    const char *etag = kaun_http_response_header(r, "ETag");
    if (etag && etag[0] == '"' && !j->if_match) j->if_match = strdup(etag);
  }
  j->disp = DISP_SINK;
  return true;
}

static size_t on_header(char *buf, size_t size, size_t n, void *user) {
  job *j = user;
  size_t len = size * n, l = len;
  if (j->headers_done) return len; /* trailers */
  while (l && (buf[l - 1] == '\r' || buf[l - 1] == '\n')) l--;
  kaun_http_response *r = j->cur;
  if (l >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
    response_clear_headers(r);
    const char *p = memchr(buf, ' ', l);
    r->status = 0;
    r->reason[0] = '\0';
    if (p) {
      r->status = strtol(p + 1, NULL, 10);
      const char *q = memchr(p + 1, ' ', l - (size_t)(p + 1 - buf));
      if (q) {
        size_t k = 0;
        for (q++; q < buf + l && k < sizeof r->reason - 1; q++)
          if (*q >= 0x20 && *q < 0x7f) r->reason[k++] = *q;
        r->reason[k] = '\0';
      }
    }
    return len;
  }
  if (l == 0) {
    if (r->status >= 100 && r->status < 200) return len; /* 100 Continue: wait for more */
    return evaluate(j) ? len : 0;
  }
  if ((buf[0] == ' ' || buf[0] == '\t') && r->nheaders) { /* obsolete line folding */
    header *hd = &r->headers[r->nheaders - 1];
    size_t old = strlen(hd->value);
    char *grown = realloc(hd->value, old + l + 1);
    if (!grown) goto nomem;
    hd->value = grown;
    grown[old] = ' ';
    size_t s = 0;
    while (s < l && (buf[s] == ' ' || buf[s] == '\t')) s++;
    memcpy(grown + old + 1, buf + s, l - s);
    grown[old + 1 + l - s] = '\0';
    return len;
  }
  const char *colon = memchr(buf, ':', l);
  if (!colon) return len;
  const char *v = colon + 1, *e = buf + l;
  while (v < e && (*v == ' ' || *v == '\t')) v++;
  while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
  if (!response_add_header(r, buf, (size_t)(colon - buf), v, (size_t)(e - v))) goto nomem;
  return len;
nomem:
  job_abort(j, KAUN_ENOMEM, false, "out of memory while reading the answer's headers");
  return 0;
}

static bool sink_write(job *j, uint64_t rel, const char *data, size_t len) {
  kaun_http_request *r = &j->req;
  switch (r->body_to) {
    case KAUN_HTTP_BODY_DISCARD: return true;
    case KAUN_HTTP_BODY_BUFFER:
      if (rel > r->buffer_size || len > r->buffer_size - rel) {
        job_abort(j, KAUN_EIO, false, "the body is larger than the buffer (%zu bytes)",
                  r->buffer_size);
        return false;
      }
      memcpy((char *)r->buffer + rel, data, len);
      return true;
    case KAUN_HTTP_BODY_FD: {
      uint64_t at = r->fd_offset + rel;
      while (len) {
        ssize_t w = pwrite(r->fd, data, len, (off_t)at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          job_abort(j, KAUN_EIO, false, "writing the body at offset %llu of fd %d: %s",
                    (unsigned long long)at, r->fd, w < 0 ? strerror(errno) : "no progress");
          return false;
        }
        data += w;
        len -= (size_t)w;
        at += (uint64_t)w;
      }
      return true;
    }
    case KAUN_HTTP_BODY_CALLBACK: {
      kaun_error e = KAUN_ERROR_INIT;
      int rc = r->write_fn(r->write_user, rel, data, len, &e);
      if (rc != KAUN_OK) {
        job_abort(j, rc, false, "%s",
                  e.message[0] ? e.message : "the body callback refused the data");
        return false;
      }
      return true;
    }
    case KAUN_HTTP_BODY_ALLOC:
      if (rel + len > j->alloc_max) {
        job_abort(j, KAUN_EIO, false, "the body is larger than %zu bytes", j->alloc_max);
        return false;
      }
      if (rel + len + 1 > j->alloc_cap) {
        size_t cap = j->alloc_cap ? j->alloc_cap : 4096;
        while (cap < rel + len + 1) cap *= 2;
        if (cap > j->alloc_max + 1) cap = j->alloc_max + 1;
        char *grown = realloc(j->alloc, cap);
        if (!grown) {
          job_abort(j, KAUN_ENOMEM, false, "out of memory for a body of %llu bytes",
                    (unsigned long long)(rel + len));
          return false;
        }
        j->alloc = grown;
        j->alloc_cap = cap;
      }
      memcpy(j->alloc + rel, data, len);
      j->alloc_len = rel + len;
      j->alloc[j->alloc_len] = '\0';
      return true;
  }
  return false;
}

/* Hands the part of this chunk the caller asked for to the sink. */
static bool deliver(job *j, const char *data, size_t len) {
  uint64_t at = j->body_pos, need = j->want_start + j->delivered;
  j->body_pos += len;
  if (at > need) {
    job_abort(j, KAUN_EIO, true, "the body skipped bytes %llu to %llu", (unsigned long long)need,
              (unsigned long long)at);
    return false;
  }
  if (need - at >= len) return true; /* before the slice */
  data += need - at;
  len -= (size_t)(need - at);
  bool more = false;
  if (j->want_len != UNKNOWN) {
    uint64_t left = j->want_len - j->delivered;
    if (left == 0) {
      j->complete = true; /* a whole body sent to a Range: we have our slice */
      return false;
    }
    if (len > left) {
      len = (size_t)left;
      more = true;
    }
  }
  if (!sink_write(j, j->delivered, data, len)) return false;
  j->delivered += len;
  /* all that was asked for is in: a stall or a cut after this is no failure
   * (and no retry with an empty, inverted Range) */
  if (j->want_len != UNKNOWN && j->delivered == j->want_len) j->complete = true;
  /* the object's size, when the answer told it (a ranged read is part of an object) */
  uint64_t object_total = j->object_size >= 0                    ? (uint64_t)j->object_size
                          : !j->ranged && j->want_len != UNKNOWN ? j->want_len
                                                                 : 0;
  if (j->req.io && kaun_io_add(j->req.io, j->progress_uri, object_total, len) == KAUN_ECANCELED) {
    job_abort(j, KAUN_ECANCELED, false, "canceled");
    return false;
  }
  if (more) {
    j->complete = true;
    return false;
  }
  return true;
}

static size_t on_body(char *data, size_t size, size_t n, void *user) {
  job *j = user;
  size_t len = size * n;
  j->moved += len;
  switch (j->disp) {
    case DISP_DISCARD: /* a redirect's body: not needed, and maybe endless */
      j->complete = true;
      return 0;
    case DISP_KEEP: {
      kaun_http_response *r = j->cur;
      size_t room = ERRBODY_MAX - r->body_len, k = len < room ? len : room;
      if (k) {
        if (!r->body && !(r->body = malloc(ERRBODY_MAX + 1))) return len;
        memcpy(r->body + r->body_len, data, k);
        r->body_len += k;
        r->body[r->body_len] = '\0';
      }
      if (r->body_len >= ERRBODY_MAX) { /* enough of an error document: stop an endless one */
        j->complete = true;
        return 0;
      }
      return len;
    }
    case DISP_SINK: return deliver(j, data, len) ? len : 0;
    case DISP_NONE: break;
  }
  job_abort(j, KAUN_EIO, true, "a body before the headers");
  return 0;
}

static size_t on_read(char *dst, size_t size, size_t n, void *user) {
  job *j = user;
  size_t cap = size * n;
  if (!j->send_body || j->upload_pos >= j->body_size) return 0;
  if (cap > j->body_size - j->upload_pos) cap = (size_t)(j->body_size - j->upload_pos);
  const kaun_put_source *src = j->req.body_source;
  if (!src) {
    memcpy(dst, (const char *)j->req.body + j->upload_pos, cap);
  } else {
    const void *p;
    size_t avail;
    if (src->view && src->view(src->context, j->upload_pos, &p, &avail) == KAUN_OK && avail) {
      if (cap > avail) cap = avail;
      memcpy(dst, p, cap);
    } else {
      kaun_error e = KAUN_ERROR_INIT;
      int rc = src->read(src->context, j->upload_pos, dst, cap, &e);
      if (rc != KAUN_OK) {
        job_abort(j, rc, false, "reading the body at offset %llu: %s",
                  (unsigned long long)j->upload_pos, e.message[0] ? e.message : kaun_strerror(rc));
        return CURL_READFUNC_ABORT;
      }
    }
  }
  j->upload_pos += cap;
  j->moved += cap;
  if (j->upload_pos > j->upload_hwm) {
    uint64_t add = j->upload_pos - j->upload_hwm;
    j->upload_hwm = j->upload_pos;
    if (j->req.io && kaun_io_add(j->req.io, j->progress_uri, j->body_size, add) == KAUN_ECANCELED) {
      job_abort(j, KAUN_ECANCELED, false, "canceled");
      return CURL_READFUNC_ABORT;
    }
  }
  return cap;
}

static int on_seek(void *user, curl_off_t offset, int origin) {
  job *j = user;
  if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > j->body_size)
    return CURL_SEEKFUNC_CANTSEEK;
  j->upload_pos = (uint64_t)offset;
  return CURL_SEEKFUNC_OK;
}

/* ---- attempts -------------------------------------------------------------------------- */

static bool header_named(const char *line, const char *name) {
  size_t n = strlen(name);
  return strncasecmp(line, name, n) == 0 && (line[n] == ':' || line[n] == ';');
}

static bool caller_has_header(const job *j, const char *name) {
  for (const char *const *h = j->req.headers; h && *h; h++)
    if (header_named(*h, name)) return true;
  return false;
}

static bool slist_add(struct curl_slist **l, const char *s) {
  struct curl_slist *n = curl_slist_append(*l, s);
  if (!n) return false;
  *l = n;
  return true;
}

/* Builds the headers of this attempt. */
static bool build_headers(job *j) {
  char *o = origin_of(j->url);
  if (!o) return false;
  bool same_origin = strcmp(o, j->origin) == 0;
  free(o);
  struct curl_slist *l = NULL;
  bool ok = true;
  for (const char *const *h = j->req.headers; ok && h && *h; h++) {
    if (!same_origin && (header_named(*h, "Authorization") || header_named(*h, "Cookie"))) continue;
    ok = slist_add(&l, *h);
  }
  if (ok && same_origin && j->req.authorization) {
    size_t n = strlen(j->req.authorization) + 16;
    char *line = malloc(n);
    ok = line != NULL;
    if (ok) {
      snprintf(line, n, "Authorization: %s", j->req.authorization);
      ok = slist_add(&l, line);
      memset(line, 0, n);
      free(line);
    }
  }
  j->range_sent = false;
  j->sent_if_match = false;
  if (ok && j->method == KAUN_HTTP_GET && (j->ranged || j->delivered)) {
    char range[96];
    uint64_t pos = j->want_start + j->delivered;
    if (j->want_len != UNKNOWN)
      snprintf(range, sizeof range, "Range: bytes=%llu-%llu", (unsigned long long)pos,
               (unsigned long long)(j->want_start + j->want_len - 1));
    else
      snprintf(range, sizeof range, "Range: bytes=%llu-", (unsigned long long)pos);
    ok = slist_add(&l, range);
    j->range_sent = true;
    if (ok && j->delivered && j->if_match && !caller_has_header(j, "If-Match")) {
      size_t n = strlen(j->if_match) + 16;
      char *line = malloc(n);
      ok = line != NULL;
      if (ok) {
        snprintf(line, n, "If-Match: %s", j->if_match);
        ok = slist_add(&l, line);
        free(line);
        j->sent_if_match = true;
      }
    }
  }
  if (ok && j->method == KAUN_HTTP_POST && !caller_has_header(j, "Content-Type"))
    ok = slist_add(&l, "Content-Type:");
  curl_slist_free_all(j->slist);
  j->slist = l;
  return ok;
}

/* Starts one attempt on `a`.  Returns false (job done) when it cannot. */
static bool attempt_start(kaun_http *h, agent *a, job *j, int64_t now) {
  if (kaun_io_canceled(j->req.io)) { /* canceled before it started: no request at all */
    job_fail(j, KAUN_ECANCELED, 0, NULL, "canceled");
    return false;
  }
  if (j->req.prepare) { /* fresh headers for this attempt (a signature) */
    kaun_error e = KAUN_ERROR_INIT;
    int rc = j->req.prepare(j->req.prepare_user, &j->req.headers, &j->req.authorization, &e);
    if (rc) {
      job_fail(j, rc, 0, NULL, "preparing the request: %s", e.message);
      return false;
    }
  }
  if (j->cur != j->primary) kaun_http_response_free(j->cur);
  j->cur = response_new();
  CURL *e = j->cur ? agent_easy(a) : NULL;
  if (!e || !build_headers(j)) {
    if (e) agent_return_easy(a, e);
    job_fail(j, KAUN_ENOMEM, 0, NULL, "out of memory while starting the transfer");
    return false;
  }
  j->headers_done = j->complete = j->stalled = false;
  j->disp = DISP_NONE;
  j->body_pos = 0;
  j->abort_code = 0;
  j->abort_msg[0] = '\0';
  j->upload_pos = 0;
  j->errbuf[0] = '\0';
  j->win_start = now;
  j->win_moved = j->moved;
  free(j->next_url);
  j->next_url = NULL;

  curl_easy_setopt(e, CURLOPT_URL, j->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, j);
  curl_easy_setopt(e, CURLOPT_SHARE, h->share);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  curl_easy_setopt(e, CURLOPT_USERAGENT, h->user_agent);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, h->connect_ms);
  if (h->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_file);
  if (h->insecure) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->errbuf);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
  curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 128L << 10); /* fewer callbacks on big bodies */
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->slist);
  switch (j->method) {
    case KAUN_HTTP_GET: curl_easy_setopt(e, CURLOPT_HTTPGET, 1L); break;
    case KAUN_HTTP_HEAD: curl_easy_setopt(e, CURLOPT_NOBODY, 1L); break;
    case KAUN_HTTP_DELETE: curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE"); break;
    case KAUN_HTTP_PUT:
    case KAUN_HTTP_POST:
      if (j->method == KAUN_HTTP_PUT) {
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)j->body_size);
      } else {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->body_size);
      }
      curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(e, CURLOPT_READDATA, j);
      curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
      curl_easy_setopt(e, CURLOPT_SEEKDATA, j);
      break;
  }
  if (curl_multi_add_handle(a->multi, e) != CURLM_OK) {
    agent_return_easy(a, e);
    job_fail(j, KAUN_EIO, 0, NULL, "libcurl refused the transfer");
    return false;
  }
  j->easy = e;
  return true;
}

static void attempt_stop(agent *a, job *j) {
  if (!j->easy) return;
  curl_multi_remove_handle(a->multi, j->easy);
  agent_return_easy(a, j->easy);
  j->easy = NULL;
  curl_slist_free_all(j->slist);
  j->slist = NULL;
}

static bool curl_code_retryable(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP3:
    case CURLE_QUIC_CONNECT_ERROR: return true;
    default: return false;
  }
}

static bool status_retryable(long s) {
  return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504;
}

static int status_code(long s) {
  if (s == 404 || s == 410) return KAUN_ENOENT;
  if (s == 401 || s == 403) return KAUN_EAUTH;
  if (status_retryable(s)) return KAUN_ETRANSIENT;
  if (s >= 500) return KAUN_ETRANSIENT;
  return KAUN_EIO;
}

/* Retry-After in milliseconds (seconds or an HTTP date), or -1. */
static long retry_after_ms(const kaun_http_response *r) {
  const char *v = kaun_http_response_header(r, "Retry-After");
  if (!v) return -1;
  uint64_t s;
  const char *end;
  if (parse_u64(v, &end, &s) && *end == '\0') return s > 86400 ? 86400000L : (long)s * 1000;
  time_t t = curl_getdate(v, NULL);
  if (t == (time_t)-1) return -1;
  time_t now = time(NULL);
  return t <= now ? 0 : (t - now > 86400 ? 86400000L : (long)(t - now) * 1000);
}

static uint64_t next_random(job *j) {
  j->rng ^= j->rng >> 12;
  j->rng ^= j->rng << 25;
  j->rng ^= j->rng >> 27;
  return j->rng * 2685821657736338717ULL;
}

/* Whether another attempt is allowed: fewer than max_attempts in a row
 * without new bytes (an attempt that brought some starts the count again,
 * so a long download on a flaky link goes on while each try moves it
 * forward), and a bound on all of them. */
/* Whether the last attempt moved the request forward: at least 64 KiB, or
 * the rest of what was asked (a server that sends a byte a try makes no
 * progress). */
static bool made_progress(const job *j) {
  uint64_t got = j->delivered - j->delivered_mark, want = PROGRESS_MIN;
  if (j->want_len != UNKNOWN && j->want_len - j->delivered_mark < want)
    want = j->want_len - j->delivered_mark;
  return got > 0 && got >= want;
}

static bool can_retry(const job *j) {
  unsigned fruitless = made_progress(j) ? 0 : j->fruitless;
  return fruitless < j->max_attempts && j->attempts < MAX_TOTAL_ATTEMPTS;
}

/* Schedules another attempt, or ends the job with `code` when none is left. */
static void retry_or_fail(job *j, int64_t now, int code, long status, long after_ms,
                          const char *rid, const char *detail) {
  if (!can_retry(j)) {
    job_fail(j, code, status, rid, "%s", detail);
    return;
  }
  if (made_progress(j)) j->fruitless = 0;
  j->delivered_mark = j->delivered;
  kaun_http *h = j->http;
  long d = h->base_ms;
  for (unsigned k = 1; k < j->fruitless && d < h->max_ms; k++) d *= 2;
  if (d > h->max_ms) d = h->max_ms;
  d = d / 2 + (long)(next_random(j) % (uint64_t)(d / 2 + 1)); /* equal jitter */
  if (after_ms >= 0) d = after_ms < h->max_ms ? after_ms : h->max_ms;
  j->attempts++;
  j->fruitless++;
  j->due_ms = now + d;
}

/* Hands the response to the caller's side of the job. */
static void job_keep_response(job *j, kaun_http_response *r) {
  if (r == j->primary) j->primary = NULL;
  if (r == j->cur) j->cur = NULL;
  r->attempts = j->attempts;
  if (j->req.body_to == KAUN_HTTP_BODY_ALLOC && r->status >= 200 && r->status < 300) {
    free(r->body);
    if (!j->alloc) j->alloc = calloc(1, 1);
    r->body = j->alloc;
    r->body_len = j->alloc_len;
    j->alloc = NULL;
  }
  kaun_http_response_free(j->out);
  j->out = r;
}

static void job_succeed(job *j, kaun_http_response *r) {
  job_keep_response(j, r);
  j->result = KAUN_OK;
  j->done = true;
}

/* Decides what follows an attempt that ended with `rc`. */
static void attempt_done(job *j, CURLcode rc, int64_t now) {
  kaun_http_response *r = j->cur;
  const char *rid = kaun_http_response_request_id(r);
  long st = j->headers_done ? r->status : 0;
  char detail[900];

  if (j->abort_code == KAUN_ECANCELED) {
    job_fail(j, KAUN_ECANCELED, 0, rid, "canceled");
    return;
  }
  if (j->complete)
    rc = CURLE_OK;
  else if (j->abort_code && !j->abort_retry) {
    job_fail(j, j->abort_code, st, rid, "%s", j->abort_msg);
    return;
  } else if (j->abort_code) {
    retry_or_fail(j, now, j->abort_code, st, -1, rid, j->abort_msg);
    return;
  } else if (j->stalled) {
    snprintf(detail, sizeof detail, "stalled: less than %ld bytes/s for %ld ms", j->http->stall_bps,
             j->http->stall_ms);
    j->delivered_mark = j->delivered; /* a trickle is no progress */
    retry_or_fail(j, now, KAUN_ETRANSIENT, 0, -1, rid, detail);
    return;
  }
  if (rc != CURLE_OK) {
    char eb[CURL_ERROR_SIZE];
    size_t k = strcspn(j->errbuf, "?"); /* no query strings in messages */
    snprintf(eb, sizeof eb, "%.*s", (int)k, j->errbuf);
    /* curl says what; say what to do */
    const char *hint = rc == CURLE_COULDNT_CONNECT        ? " (is a server listening there?)"
                       : rc == CURLE_COULDNT_RESOLVE_HOST ? " (check the host name)"
                       : rc == CURLE_SSL_CONNECT_ERROR && strstr(eb, "wrong version number")
                           ? " (the server does not speak TLS: try http://)"
                       : rc == CURLE_PEER_FAILED_VERIFICATION
                           ? " (an untrusted certificate: give the CA with ca_file)"
                           : "";
    snprintf(detail, sizeof detail, "%s%s%s%s", curl_easy_strerror(rc), eb[0] ? ": " : "", eb,
             hint);
    if (curl_code_retryable(rc))
      retry_or_fail(j, now, KAUN_ETRANSIENT, 0, -1, rid, detail);
    else
      job_fail(
          j,
          /* a URL curl cannot use; a server speaking HTTP/0.9 or nonsense is
           * UNSUPPORTED_PROTOCOL too, and that is the server's fault */
          rc == CURLE_URL_MALFORMAT || (rc == CURLE_UNSUPPORTED_PROTOCOL && !strstr(eb, "HTTP/0.9"))
              ? KAUN_EURI
              : KAUN_EIO,
          0, rid, "%s", detail);
    return;
  }
  if (j->disp == DISP_DISCARD) { /* a redirect we follow */
    if (!j->next_url) {
      job_fail(j, KAUN_EIO, st, rid, "%ld %s to an invalid Location", st, reason_of(r));
      return;
    }
    char *scheme = NULL;
    CURLU *u = curl_url();
    bool http = u && curl_url_set(u, CURLUPART_URL, j->next_url, 0) == CURLUE_OK &&
                curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
                is_http_scheme(scheme);
    curl_free(scheme);
    curl_url_cleanup(u);
    if (!http) {
      job_fail(j, KAUN_EIO, st, rid, "%ld %s to a Location that is not http(s)", st, reason_of(r));
      return;
    }
    if (++j->redirects > MAX_REDIRECTS) {
      job_fail(j, KAUN_EIO, st, rid, "more than %u redirects", MAX_REDIRECTS);
      return;
    }
    free(j->url);
    j->url = j->next_url;
    j->next_url = NULL;
    if ((st == 303 && j->method != KAUN_HTTP_HEAD) ||
        ((st == 301 || st == 302) && j->method == KAUN_HTTP_POST)) {
      j->method = KAUN_HTTP_GET;
      j->send_body = false;
    }
    j->due_ms = now;
    return;
  }
  if (st >= 200 && st < 300) {
    if (j->disp == DISP_SINK && j->want_len != UNKNOWN && j->delivered < j->want_len) {
      snprintf(detail, sizeof detail, "the body ended after %llu of %llu bytes",
               (unsigned long long)j->delivered, (unsigned long long)j->want_len);
      retry_or_fail(j, now, KAUN_ETRANSIENT, 0, -1, rid, detail);
      return;
    }
    if (j->method != KAUN_HTTP_HEAD && j->req.body_to == KAUN_HTTP_BODY_BUFFER &&
        j->delivered != j->req.buffer_size) {
      job_fail(j, KAUN_EIO, st, rid, "the body has %llu bytes; the buffer holds %zu",
               (unsigned long long)j->delivered, j->req.buffer_size);
      return;
    }
    job_succeed(j, j->primary ? j->primary : r);
    return;
  }
  if (st >= 300 && st < 400) {
    /* the redirect policy returns redirects with a Location; anything else
     * (304, 300, a 302 without Location) delivered no body: for a caller
     * that wanted one it is no answer, never a success with its buffer
     * untouched */
    const char *loc = kaun_http_response_header(r, "Location");
    bool returned = status_is_redirect(st) && loc && *loc;
    bool wants_body = j->method != KAUN_HTTP_HEAD && j->req.body_to != KAUN_HTTP_BODY_DISCARD;
    if (!returned && wants_body) {
      job_fail(j, KAUN_EIO, st, rid, "%s: a %ld answer has no body to give",
               reason_of(r)[0] ? reason_of(r) : "no body", st);
      job_keep_response(j, r);
      return;
    }
    job_succeed(j, r);
    return;
  }
  if (st == 0) {
    retry_or_fail(j, now, KAUN_ETRANSIENT, 0, -1, rid, "no answer");
    return;
  }
  if (st == 416) {
    char asked[96];
    uint64_t pos = j->want_start + j->delivered;
    if (j->want_len != UNKNOWN)
      snprintf(asked, sizeof asked, "bytes=%llu-%llu", (unsigned long long)pos,
               (unsigned long long)(j->want_start + j->want_len - 1));
    else
      snprintf(asked, sizeof asked, "bytes=%llu-", (unsigned long long)pos);
    if (r->object_size >= 0)
      job_fail(j, KAUN_EIO, st, rid, "416 %s: asked %s of an object of %lld bytes", reason_of(r),
               asked, (long long)r->object_size);
    else
      job_fail(j, KAUN_EIO, st, rid, "416 %s: asked %s", reason_of(r), asked);
    job_keep_response(j, r);
    return;
  }
  snprintf(detail, sizeof detail, "%ld%s%s", st, reason_of(r)[0] ? " " : "", reason_of(r));
  if (status_retryable(st) && can_retry(j)) {
    retry_or_fail(j, now, KAUN_ETRANSIENT, st, retry_after_ms(r), rid, detail);
    return;
  }
  if (st == 412) { /* a precondition (If-Match, the caller's or ours) no longer holds */
    job_fail(j, KAUN_ECHANGED, st, rid, "the object changed while it was being read (%s)", detail);
  } else {
    job_fail(j, status_code(st), st, rid, "%s", detail);
  }
  job_keep_response(j, r);
}

/* ---- the loop --------------------------------------------------------------------------- */

static void remove_at(job **v, size_t *n, size_t i) { v[i] = v[--*n]; }

static void run(kaun_http *h, job *jobs, size_t n, unsigned max_in_flight, unsigned flags) {
  size_t remaining = 0;
  for (size_t i = 0; i < n; i++)
    if (!jobs[i].done) remaining++;
  if (!remaining) return;
  if (max_in_flight == 0) max_in_flight = DEFAULT_INFLIGHT;
  if (max_in_flight > remaining) max_in_flight = (unsigned)remaining;
  agent *a = agent_take(h);
  job **running = calloc(max_in_flight, sizeof *running);
  job **waiting = calloc(n, sizeof *waiting);
  if (!a || !running || !waiting) {
    for (size_t i = 0; i < n; i++)
      if (!jobs[i].done) job_fail(&jobs[i], KAUN_ENOMEM, 0, NULL, "out of memory");
    free(running);
    free(waiting);
    if (a) agent_give(h, a);
    return;
  }
  curl_multi_setopt(a->multi, CURLMOPT_MAXCONNECTS, (long)(max_in_flight < 8 ? 8 : max_in_flight));
  size_t nrunning = 0, nwaiting = 0, next_new = 0;
  bool stop_all = false;
  int64_t now = now_ms();
  for (size_t i = 0; i < n; i++) jobs[i].due_ms = now;

  while (remaining) {
    now = now_ms();
    /* Cancellation, stalls and fail-fast, for the transfers running... */
    for (size_t i = 0; i < nrunning;) {
      job *j = running[i];
      bool canceled = stop_all || (j->req.io && kaun_io_canceled(j->req.io));
      if (!canceled && h->stall_ms > 0 && now - j->win_start >= h->stall_ms) {
        uint64_t moved = j->moved - j->win_moved;
        if (moved * 1000 < (uint64_t)h->stall_bps * (uint64_t)(now - j->win_start)) {
          j->stalled = true;
        } else {
          j->win_start = now;
          j->win_moved = j->moved;
        }
      }
      if (!canceled && !j->stalled) {
        i++;
        continue;
      }
      attempt_stop(a, j);
      remove_at(running, &nrunning, i);
      if (canceled) {
        job_fail(j, KAUN_ECANCELED, 0, NULL,
                 stop_all ? "stopped: another request failed" : "canceled");
      } else {
        attempt_done(j, CURLE_OPERATION_TIMEDOUT, now);
      }
      if (j->done) {
        remaining--;
      } else {
        waiting[nwaiting++] = j;
      }
    }
    /* ...and for those waiting to (re)start. */
    for (size_t i = 0; i < nwaiting;) {
      job *j = waiting[i];
      if (stop_all || (j->req.io && kaun_io_canceled(j->req.io))) {
        job_fail(j, KAUN_ECANCELED, 0, NULL,
                 stop_all ? "stopped: another request failed" : "canceled");
        remove_at(waiting, &nwaiting, i);
        remaining--;
      } else {
        i++;
      }
    }
    while (stop_all && next_new < n) {
      job *j = &jobs[next_new++];
      if (j->done) continue;
      j->attempts = 0;
      job_fail(j, KAUN_ECANCELED, 0, NULL, "not started: another request failed");
      remaining--;
    }
    /* Start what is due, retries first. */
    for (size_t i = 0; i < nwaiting && nrunning < max_in_flight;) {
      job *j = waiting[i];
      if (j->due_ms > now) {
        i++;
        continue;
      }
      remove_at(waiting, &nwaiting, i);
      if (attempt_start(h, a, j, now)) {
        running[nrunning++] = j;
      } else {
        remaining--;
      }
    }
    while (nrunning < max_in_flight && next_new < n) {
      job *j = &jobs[next_new++];
      if (j->done) continue;
      if (j->req.io && kaun_io_canceled(j->req.io)) {
        job_fail(j, KAUN_ECANCELED, 0, NULL, "canceled");
        remaining--;
      } else if (attempt_start(h, a, j, now)) {
        running[nrunning++] = j;
      } else {
        remaining--;
      }
    }
    if (!remaining) break;

    int still = 0;
    curl_multi_perform(a->multi, &still);
    CURLMsg *m;
    int queued;
    while ((m = curl_multi_info_read(a->multi, &queued))) {
      if (m->msg != CURLMSG_DONE) continue;
      CURL *e = m->easy_handle;
      CURLcode rc = m->data.result;
      char *priv = NULL;
      curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
      job *j = (job *)(void *)priv;
      for (size_t i = 0; i < nrunning; i++)
        if (running[i] == j) {
          remove_at(running, &nrunning, i);
          break;
        }
      attempt_stop(a, j);
      attempt_done(j, rc, now_ms());
      if (j->done) {
        remaining--;
        if (j->result != KAUN_OK && (flags & KAUN_HTTP_FAIL_FAST)) stop_all = true;
      } else {
        waiting[nwaiting++] = j;
      }
    }
    if (!remaining) break;
    if (stop_all) continue;

    long timeout = POLL_MS;
    now = now_ms();
    /* a slot freed and requests not started yet: start them now (waiting
     * here cost 50 ms a request, a third of a part's time) */
    if (nrunning < max_in_flight && next_new < n) timeout = 0;
    for (size_t i = 0; i < nwaiting && nrunning < max_in_flight; i++) {
      int64_t d = waiting[i]->due_ms - now;
      if (d < timeout) timeout = d < 0 ? 0 : (long)d;
    }
    if (timeout > 0) curl_multi_poll(a->multi, NULL, 0, (int)timeout, NULL);
  }
  for (size_t i = 0; i < nrunning; i++) attempt_stop(a, running[i]);
  free(running);
  free(waiting);
  agent_give(h, a);
}

/* A finished transfer's progress is reported even when it moved less than
 * the reporting step (a zero-byte add reports what is pending). */
static void flush_progress(const job *j) {
  if (j->req.io && j->result == KAUN_OK)
    kaun_io_add(j->req.io, j->progress_uri, j->object_size >= 0 ? (uint64_t)j->object_size : 0, 0);
}

int kaun_http_perform(kaun_http *h, const kaun_http_request *req, kaun_http_response **out,
                      kaun_error *err) {
  if (out) *out = NULL;
  if (!h) return kaun__error_set(err, KAUN_EINVAL, "HTTP request without a client");
  job j;
  job_init(h, req, 0, &j);
  if (!j.done && j.req.body_to == KAUN_HTTP_BODY_ALLOC && !out)
    job_invalid(&j, "KAUN_HTTP_BODY_ALLOC without a response");
  run(h, &j, 1, 1, 0);
  flush_progress(&j);
  int rc = j.result;
  if (rc != KAUN_OK && err) *err = j.err;
  if (out) {
    *out = j.out;
    j.out = NULL;
  }
  job_free(&j);
  return rc;
}

int kaun_http_perform_many(kaun_http *h, const kaun_http_request *requests, size_t n,
                           unsigned max_in_flight, unsigned flags, kaun_http_response **responses,
                           int *results, kaun_error *errors, kaun_error *err) {
  if (responses)
    for (size_t i = 0; i < n; i++) responses[i] = NULL;
  if (!h) return kaun__error_set(err, KAUN_EINVAL, "HTTP requests without a client");
  if (n == 0) return KAUN_OK;
  if (!requests || requests[0].struct_size == 0)
    return kaun__error_set(err, KAUN_EINVAL, "HTTP requests: struct_size is not set");
  size_t stride = requests[0].struct_size;
  job *jobs = calloc(n, sizeof *jobs);
  if (!jobs) return kaun__error_nomem(err, "starting HTTP requests");
  for (size_t i = 0; i < n; i++) {
    const kaun_http_request *r =
        (const kaun_http_request *)(const void *)((const char *)requests + i * stride);
    job_init(h, r, i, &jobs[i]);
    if (!jobs[i].done && jobs[i].req.body_to == KAUN_HTTP_BODY_ALLOC && !responses)
      job_invalid(&jobs[i], "KAUN_HTTP_BODY_ALLOC without a response");
  }
  run(h, jobs, n, max_in_flight, flags);
  int rc = KAUN_OK;
  for (size_t i = 0; i < n; i++) {
    job *j = &jobs[i];
    flush_progress(j);
    if (results) results[i] = j->result;
    if (errors) {
      if (j->result != KAUN_OK) {
        errors[i] = j->err;
      } else {
        kaun_error_clear(&errors[i]);
      }
    }
    if (j->result != KAUN_OK &&
        (rc == KAUN_OK || (rc == KAUN_ECANCELED && j->result != KAUN_ECANCELED))) {
      rc = j->result;
      if (err) *err = j->err;
    }
    if (responses) {
      responses[i] = j->out;
      j->out = NULL;
    }
    job_free(j);
  }
  free(jobs);
  return rc;
}
