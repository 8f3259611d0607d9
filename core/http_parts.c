/* One object in parallel ranged parts (kaun_http_get_parts): the Hub's
 * and S3's downloads into the cache share it.
 *
 * A part answered whole would move the object once per part, so every
 * part is strict: the first answer that is not exactly its range stops
 * the parts at its headers (KAUN_ENOTSUP from the HTTP layer), and the
 * object then comes in one request.  The part count is bounded whatever
 * size a header claims. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DEFAULT_PART ((uint64_t)8 << 20)
#define DEFAULT_CONNECTIONS 4u
#define MIB ((uint64_t)1 << 20)

void kaun__http_parts_plan(uint64_t size, uint64_t part, uint64_t *part_out, size_t *count_out) {
  if (!part) part = DEFAULT_PART;
  /* larger parts, in whole MiB, rather than more than KAUN_HTTP_MAX_PARTS */
  if (size / part >= KAUN_HTTP_MAX_PARTS) part = (size / KAUN_HTTP_MAX_PARTS + MIB) / MIB * MIB;
  *part_out = part;
  *count_out = size ? (size_t)((size - 1) / part + 1) : 0;
}

/* A part's bytes go to the template's sink at their offset in the object. */
typedef struct part_sink {
  kaun_http_write_fn fn;
  void *user;
  uint64_t base;
} part_sink;

static int part_write(void *sink, uint64_t offset, const void *data, size_t len, kaun_error *err) {
  const part_sink *p = sink;
  return p->fn(p->user, p->base + offset, data, len, err);
}

/* The template's headers and "If-Match: ETAG", or NULL (no ETag, a weak
 * one, no memory: the parts then go unpinned, and the check of their
 * ETags below still catches another version). */
static const char **pinned_headers(const char *const *given, const char *etag, char *line,
                                   size_t line_size) {
  if (!etag || etag[0] != '"' || strlen(etag) + 11 >= line_size) return NULL;
  size_t n = 0;
  while (given && given[n]) n++;
  const char **h = calloc(n + 2, sizeof *h);
  if (!h) return NULL;
  for (size_t i = 0; i < n; i++) h[i] = given[i];
  snprintf(line, line_size, "If-Match: %s", etag);
  h[n] = line;
  return h;
}

/* The caller's check, then the object's size against the one asked for
 * (an answer that states another: the object is not what the caller
 * thinks it is, and parts of it would not make it whole). */
static int check_answer(const kaun_http_parts_options *o, uint64_t size,
                        const kaun_http_response *resp, kaun_error *err) {
  int rc = o->check ? o->check(o->check_user, resp, err) : KAUN_OK;
  int64_t total = kaun_http_response_object_size(resp);
  if (!rc && total >= 0 && (uint64_t)total != size) {
    char url[1024]; /* no password or query (a signature) in a message */
    const char *eff = kaun_http_response_effective_url(resp);
    kaun_http_redact_url(eff ? eff : "the object", url, sizeof url);
    rc = kaun__error_set(err, KAUN_ECHANGED,
                         "%s has %lld bytes where %llu were expected: it changed, or the size "
                         "given was wrong",
                         url, (long long)total, (unsigned long long)size);
  }
  return rc;
}

int kaun_http_get_parts(kaun_http *http, const kaun_http_request *tmpl, uint64_t size,
                        const kaun_http_parts_options *opts, kaun_http_response **failed,
                        kaun_error *err) {
  if (failed) *failed = NULL;
  if (!http || !tmpl)
    return kaun__error_set(err, KAUN_EINVAL, "kaun_http_get_parts: needs a client and a request");
  if (tmpl->struct_size != sizeof *tmpl)
    return kaun__error_set(err, KAUN_EINVAL,
                           "kaun_http_get_parts: request.struct_size is %zu, not %zu: start from "
                           "KAUN_HTTP_REQUEST_INIT",
                           tmpl->struct_size, sizeof *tmpl);
  if (tmpl->method != KAUN_HTTP_GET || tmpl->body_to != KAUN_HTTP_BODY_CALLBACK || !tmpl->write_fn)
    return kaun__error_set(err, KAUN_EINVAL,
                           "kaun_http_get_parts: the request must be a GET whose body goes to a "
                           "write_fn (KAUN_HTTP_BODY_CALLBACK)");
  if (tmpl->range_offset || tmpl->range_length)
    return kaun__error_set(err, KAUN_EINVAL,
                           "kaun_http_get_parts: the request asks for a range: give the whole "
                           "object's GET (the parts are ranges of it)");
  kaun_http_parts_options o = KAUN_HTTP_PARTS_OPTIONS_INIT;
  if (opts) {
    if (!opts->struct_size)
      return kaun__error_set(err, KAUN_EINVAL, "kaun_http_get_parts: options.struct_size is 0");
    memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);
  }
  uint64_t part;
  size_t n;
  kaun__http_parts_plan(size, o.part_size, &part, &n);
  if (!n) n = 1; /* an empty object: one request, no range */
  kaun_http_request *reqs = calloc(n, sizeof *reqs);
  part_sink *sinks = calloc(n, sizeof *sinks);
  kaun_http_response **resps = calloc(n, sizeof *resps);
  int *results = calloc(n, sizeof *results);
  const char **headers = NULL;
  char if_match[320];
  int rc = reqs && sinks && resps && results
               ? KAUN_OK
               : kaun__error_set(err, KAUN_ENOMEM, "kaun_http_get_parts: out of memory");
  for (size_t i = 0; !rc && i < n; i++) {
    reqs[i] = *tmpl;
    sinks[i] = (part_sink){tmpl->write_fn, tmpl->write_user, (uint64_t)i * part};
    reqs[i].write_fn = part_write;
    reqs[i].write_user = &sinks[i];
    reqs[i].range_offset = reqs[i].range_length = 0;
    reqs[i].strict_range = 0;
    if (size) {
      reqs[i].range_offset = sinks[i].base;
      reqs[i].range_length = size - sinks[i].base < part ? size - sinks[i].base : part;
      reqs[i].strict_range = 1;
    }
  }
  size_t first = 0;
  const char *etag = NULL;
  if (!rc && o.pin_first) {
    /* the first part alone: whether ranges work, and the version */
    rc = results[0] = kaun_http_perform(http, &reqs[0], &resps[0], err);
    first = 1;
    /* a wrong size stops here, not after the rest of what was announced */
    if (!rc) rc = check_answer(&o, size, resps[0], err);
    etag = !rc ? kaun_http_response_header(resps[0], "ETag") : NULL;
    if (etag && n > 1 && (headers = pinned_headers(tmpl->headers, etag, if_match, sizeof if_match)))
      for (size_t i = 1; i < n; i++) reqs[i].headers = headers;
  }
  if (!rc && first < n)
    rc = kaun_http_perform_many(http, reqs + first, n - first,
                                o.connections ? o.connections : DEFAULT_CONNECTIONS,
                                KAUN_HTTP_FAIL_FAST, resps + first, results + first, NULL, err);
  for (size_t i = 1; !rc && etag && i < n; i++) {
    const char *e = kaun_http_response_header(resps[i], "ETag");
    if (e && strcmp(e, etag) != 0)
      rc = kaun__error_set(err, KAUN_ECHANGED,
                           "the object changed while it was downloaded (ETag %.100s, then "
                           "%.100s): download it again",
                           etag, e);
  }
  if (rc == KAUN_ENOTSUP) { /* ranges not answered as asked: the object in one request */
    for (size_t i = 0; i < n; i++) {
      kaun_http_response_free(resps[i]);
      resps[i] = NULL;
    }
    n = 1;
    reqs[0] = *tmpl;
    /* the whole, asked as the range [0, size): an answer of another length
     * (a short chunked body) fails rather than leave the parts' bytes in
     * place of those it did not bring; a 200 is cut down to it */
    reqs[0].range_offset = 0;
    reqs[0].range_length = size;
    reqs[0].strict_range = 0;
    rc = results[0] = kaun_http_perform(http, &reqs[0], &resps[0], err);
  }
  if (rc && results && resps) {
    for (size_t i = 0; failed && i < n && !*failed; i++)
      if (results[i] == rc && resps[i]) {
        *failed = resps[i];
        resps[i] = NULL;
      }
  } else if (!rc) {
    for (size_t i = 0; !rc && i < n; i++) rc = check_answer(&o, size, resps[i], err);
  }
  for (size_t i = 0; resps && i < n; i++) kaun_http_response_free(resps[i]);
  free(headers);
  free(results);
  free(resps);
  free(sinks);
  free(reqs);
  return rc;
}
