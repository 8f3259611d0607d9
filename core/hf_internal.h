/* kaun — internals of the Hub downloads (core/hf.c) that the fuzz target
 * tests/fuzz/fuzz_hub_headers.c reaches.  Not exported from libkaun. */
#ifndef KAUN_HF_INTERNAL_H
#define KAUN_HF_INTERNAL_H

#include <kaun/error.h>

#include <stdint.h>

/* What a HEAD on a Hub resolve URL told: the commit, the file's etag
 * (unquoted, lower case), its size and where its bytes are. */
typedef struct kaun__hf_head {
  char commit[41];
  char etag[256];
  uint64_t size;
  char *location; /* malloc'd */
} kaun__hf_head;

/* A header of the answer by name (case-insensitive), or NULL. */
typedef const char *(*kaun__hf_header_fn)(const void *answer, const char *name);

/* Reads a successful HEAD's answer: `status`, its headers through
 * `header`, its Content-Length (-1: none) and the URL it was last asked
 * of.  `url` (redacted) and `endpoint` name the request in messages.
 * Fills `*out` (its location malloc'd) or returns KAUN_EIO naming the
 * missing or unusable header. */
int kaun__hf_parse_head(long status, kaun__hf_header_fn header, const void *answer,
                        int64_t content_length, const char *effective_url, const char *url,
                        const char *endpoint, kaun__hf_head *out, kaun_error *err);

#endif
