/* Open-addressing hash index: keeps lookups by name O(1) in records and
 * flat lists with hundreds of thousands of entries. */
#include "index.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ull;
  }
  return h;
}

static size_t key_len(char *const *keys, const size_t *lens, size_t i) {
  return lens ? lens[i] : strlen(keys[i]);
}

long kaun__index_find_n(const kaun__index *ix, char *const *keys, const size_t *lens,
                        const char *key, size_t len) {
  if (!ix->cap) return -1;
  size_t mask = ix->cap - 1;
  for (size_t i = hash_bytes(key, len) & mask;; i = (i + 1) & mask) {
    size_t s = ix->slots[i];
    if (!s) return -1;
    const char *k = keys[s - 1];
    if (lens ? lens[s - 1] == len && memcmp(k, key, len) == 0
             : strncmp(k, key, len) == 0 && k[len] == '\0')
      return (long)(s - 1);
  }
}

long kaun__index_find(const kaun__index *ix, char *const *keys, const char *key, size_t len) {
  return kaun__index_find_n(ix, keys, NULL, key, len);
}

static void insert(size_t *slots, size_t cap, const char *key, size_t len, size_t pos) {
  size_t mask = cap - 1;
  size_t i = hash_bytes(key, len) & mask;
  while (slots[i]) i = (i + 1) & mask;
  slots[i] = pos + 1;
}

bool kaun__index_add_n(kaun__index *ix, char *const *keys, const size_t *lens, size_t count,
                       size_t pos) {
  if (count * 2 > ix->cap) {
    size_t cap = ix->cap ? ix->cap * 2 : 16;
    while (count * 2 > cap) cap *= 2;
    size_t *slots = calloc(cap, sizeof *slots);
    if (!slots) return false;
    for (size_t i = 0; i < count; i++)
      if (i != pos && keys[i]) insert(slots, cap, keys[i], key_len(keys, lens, i), i);
    free(ix->slots);
    ix->slots = slots;
    ix->cap = cap;
  }
  insert(ix->slots, ix->cap, keys[pos], key_len(keys, lens, pos), pos);
  return true;
}

bool kaun__index_add(kaun__index *ix, char *const *keys, size_t count, size_t pos) {
  return kaun__index_add_n(ix, keys, NULL, count, pos);
}

void kaun__index_free(kaun__index *ix) {
  free(ix->slots);
  ix->slots = NULL;
  ix->cap = 0;
}
