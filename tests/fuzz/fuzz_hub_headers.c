/* libFuzzer target: any bytes as the answer to the Hub's HEAD on a resolve
 * URL.  The first line is the status ("302"), the others header lines
 * ("X-Repo-Commit: ...", as curl hands them over: trailing spaces and CRs
 * dropped, the first of a repeated name wins, a ":url" line sets the URL
 * the answer came from).  kaun__hf_parse_head (core/hf.c, what
 * kaun_hf_download_file does with the answer) must refuse what is not a
 * usable answer with KAUN_EIO and a message naming the request, and what
 * it accepts must be safe to use as a cache path: a 40-hex commit, an
 * etag that is one lower-case path component.  kaun_http_etag_value and
 * kaun_http_redact_url see every value with small and large buffers.
 * Build and run: scripts/dev.sh fuzz [SECONDS] hub_headers. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../../core/hf_internal.h"
#include "../../core/internal.h"

#include <kaun/hf.h>
#include <kaun/http.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HEADERS 64

typedef struct answer {
  char *name[MAX_HEADERS];
  char *value[MAX_HEADERS];
  size_t n;
} answer;

static const char *lookup(const void *a, const char *name) {
  const answer *h = a;
  for (size_t i = 0; i < h->n; i++)
    if (strcasecmp(h->name[i], name) == 0) return h->value[i];
  return NULL;
}

/* Content-Length as core/http.c reads it: digits only, at most INT64_MAX. */
static int64_t content_length(const answer *h) {
  const char *v = lookup(h, "Content-Length");
  if (!v || !isdigit((unsigned char)*v)) return -1;
  uint64_t n = 0;
  for (; isdigit((unsigned char)*v); v++) {
    if (n > (UINT64_MAX - 9) / 10) return -1;
    n = n * 10 + (uint64_t)(*v - '0');
  }
  return n <= INT64_MAX ? (int64_t)n : -1;
}

static void check_helpers(const char *v) {
  static const size_t sizes[] = {1, 2, 8, 65, 256};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    char out[256];
    memset(out, 'x', sizeof out);
    kaun_http_etag_value(v, out, sizes[i]);
    size_t n = strnlen(out, sizes[i]);
    if (n >= sizes[i] || n > strlen(v)) abort(); /* NUL-terminated, never longer */
    kaun_http_redact_url(v, out, sizes[i]);
    if (strnlen(out, sizes[i]) >= sizes[i]) abort();
  }
  char red[512];
  kaun_http_redact_url(v, red, sizeof red);
  const char *sep = strstr(v, "://");
  if (sep && (size_t)(sep - v) < strcspn(v, "/?#")) { /* a URL: no user:password@ is kept */
    sep = strstr(red, "://");                         /* NULL only when cut short */
    const char *host = sep ? sep + 3 : "";
    if (memchr(host, '@', strcspn(host, "/?#"))) abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  answer h = {.n = 0};
  long status = 0;
  const char *effective = "https://hub.example/org/model/resolve/main/model.safetensors";
  char *line = text;
  for (int first = 1; line; first = 0) {
    char *next = strchr(line, '\n');
    if (next) *next++ = '\0';
    size_t l = strlen(line);
    while (l && (line[l - 1] == '\r' || line[l - 1] == ' ' || line[l - 1] == '\t')) line[--l] = 0;
    char *colon = strchr(line, ':');
    if (first) {
      status = strtol(line, NULL, 10);
    } else if (colon == line && strncmp(line, ":url ", 5) == 0) {
      effective = line + 5;
    } else if (colon && h.n < MAX_HEADERS) {
      *colon = '\0';
      char *v = colon + 1;
      while (*v == ' ' || *v == '\t') v++;
      h.name[h.n] = line;
      h.value[h.n++] = v;
      check_helpers(v);
    }
    line = next;
  }

  static const char url[] = "https://hub.example/org/model/resolve/main/model.safetensors";
  static const char endpoint[] = "https://hub.example";
  kaun__hf_head m = {{0}, {0}, 0, NULL};
  kaun_error err = KAUN_ERROR_INIT;
  int rc = kaun__hf_parse_head(status, lookup, &h, content_length(&h), effective, url, endpoint, &m,
                               &err);
  if (rc) {
    /* every refusal is an I/O error that names the request */
    if (rc != KAUN_EIO || err.code != rc || !strstr(err.message, url) || m.location) abort();
  } else {
    if (strlen(m.commit) != 40 || strspn(m.commit, "0123456789abcdefABCDEF") != 40) abort();
    size_t e = strlen(m.etag);
    if (e == 0 || e >= sizeof((kaun_hf_file *)NULL)->etag || strchr(m.etag, '/') ||
        strcmp(m.etag, ".") == 0 || strcmp(m.etag, "..") == 0)
      abort();
    for (const char *p = m.etag; *p; p++)
      if (isupper((unsigned char)*p)) abort();
    if (!m.location) abort();
    const char *loc = status >= 300 && status < 400 ? lookup(&h, "Location") : NULL;
    if (strcmp(m.location, loc ? loc : effective) != 0) abort();
    if (m.size > INT64_MAX) abort();
    free(m.location);
  }
  free(text);
  return 0;
}
