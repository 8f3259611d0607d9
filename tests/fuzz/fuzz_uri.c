/* libFuzzer target: any bytes as a URI.  kaun_uri_parse must refuse
 * what it cannot parse with a message, never stack more than
 * KAUN_URI_MAX_DEPTH levels, and free everything; the helpers that split
 * and join URIs must stay inside the text.
 * Build and run: scripts/dev.sh fuzz [SECONDS] [uri]. */
#include <stdlib.h>
#include <string.h>

#include "../../core/storage_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0'; /* a NUL in the input ends the URI, as in a C string */
  size_t len = strlen(text);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_uri *uri;
  int rc = kaun_uri_parse(text, &uri, &err);
  if (rc) {
    if (rc >= 0 || err.code != rc || !err.message[0]) abort(); /* every failure explains itself */
  } else {
    int depth = 0;
    for (const kaun_uri *u = uri; u; u = u->inner, depth++) {
      if (!u->scheme || !u->path || !u->scheme[0]) abort();
      if (strlen(u->path) > len) abort(); /* "file" is the scheme of a plain path */
    }
    if (depth < 1 || depth > KAUN_URI_MAX_DEPTH) abort();
    kaun_uri_free(uri);
  }
  const char *chain = kaun__uri_chain(text);
  if (chain && (chain < text || chain + 2 > text + len || memcmp(chain, "::", 2) != 0)) abort();
  char *child = kaun__child_uri(text, "model.safetensors");
  if (child && !strstr(child, "model.safetensors")) abort();
  free(child);
  free(text);
  return 0;
}
