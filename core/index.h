/* kaun — a string-to-position hash index over an array of keys.
 * Private to libkaun. */
#ifndef KAUN_INDEX_H
#define KAUN_INDEX_H

#ifndef KAUN_BUILDING_LIBRARY
#error "core/index.h is private to libkaun"
#endif

#include "internal.h"

typedef struct kaun__index {
  size_t *slots; /* position + 1; 0 is empty */
  size_t cap;    /* a power of two, or 0 */
} kaun__index;

/* The position of `key` in keys[], or -1.  `len` is strlen(key). */
long kaun__index_find(const kaun__index *ix, char *const *keys, const char *key, size_t len);
/* Records that keys[pos] is present; `count` is the number of keys now
 * (pos included).  Returns false on allocation failure. */
bool kaun__index_add(kaun__index *ix, char *const *keys, size_t count, size_t pos);

/* The same for keys that may hold NUL bytes (a JSON "\u0000"): keys[i] is
 * lens[i] bytes long and compared by length and bytes.  An index is used
 * either with lengths or without, never both. */
long kaun__index_find_n(const kaun__index *ix, char *const *keys, const size_t *lens,
                        const char *key, size_t len);
bool kaun__index_add_n(kaun__index *ix, char *const *keys, const size_t *lens, size_t count,
                       size_t pos);
void kaun__index_free(kaun__index *ix);

#endif
