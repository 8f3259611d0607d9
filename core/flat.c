/* Flat (name, tensor) lists with string metadata. */
#include "index.h"
#include "json.h"

#include <stdlib.h>
#include <string.h>

/* Names, metadata keys and values keep their length: they may hold NUL
 * bytes (a JSON "\u0000"), so that loading and saving loses nothing.  Each
 * is also NUL-terminated, for the accessors that return C strings. */
struct kaun_flat {
  size_t count, cap;
  char **names;
  size_t *name_lens;
  kaun_tensor **tensors;
  kaun__index index;
  bool borrowed; /* tensors are not ours to free */
  bool has_metadata;
  size_t md_count, md_cap;
  char **md_keys;
  char **md_values;
  size_t *md_key_lens;
  size_t *md_value_lens;
  kaun__index md_index; /* md_keys by name: set and get stay O(1) */
};

static int flat_create(bool borrowed, kaun_flat **out, kaun_error *err) {
  *out = calloc(1, sizeof **out);
  if (!*out) return kaun__error_nomem(err, "creating a tensor list");
  (*out)->borrowed = borrowed;
  return KAUN_OK;
}

int kaun_flat_new(kaun_flat **out, kaun_error *err) { return flat_create(false, out, err); }

int kaun__flat_new_borrowed(kaun_flat **out, kaun_error *err) {
  return flat_create(true, out, err);
}

void kaun_flat_free(kaun_flat *f) {
  if (!f) return;
  for (size_t i = 0; i < f->count; i++) {
    free(f->names[i]);
    if (!f->borrowed) kaun_tensor_free(f->tensors[i]);
  }
  for (size_t i = 0; i < f->md_count; i++) {
    free(f->md_keys[i]);
    free(f->md_values[i]);
  }
  free(f->names);
  free(f->name_lens);
  free(f->tensors);
  free(f->md_keys);
  free(f->md_values);
  free(f->md_key_lens);
  free(f->md_value_lens);
  kaun__index_free(&f->index);
  kaun__index_free(&f->md_index);
  free(f);
}

/* Makes room for one more entry in two pointer arrays and a length array
 * of `*cap` entries each. */
static bool grow(void **a, void **b, size_t **lens, size_t *cap, size_t count) {
  if (count < *cap) return true;
  size_t ncap = *cap ? *cap * 2 : 16;
  void *na = realloc(*a, ncap * sizeof(void *));
  if (!na) return false;
  *a = na;
  void *nb = realloc(*b, ncap * sizeof(void *));
  if (!nb) return false;
  *b = nb;
  size_t *nl = realloc(*lens, ncap * sizeof **lens);
  if (!nl) return false;
  *lens = nl;
  *cap = ncap;
  return true;
}

/* `n` bytes and a NUL after them. */
static char *copy_n(const char *s, size_t n) {
  char *c = n < SIZE_MAX ? malloc(n + 1) : NULL;
  if (!c) return NULL;
  memcpy(c, s, n);
  c[n] = '\0';
  return c;
}

int kaun_flat_add_n(kaun_flat *f, const char *name, size_t len, kaun_tensor *t, kaun_error *err) {
  int rc = KAUN_OK;
  char *copy = NULL;
  if (!name || !t) {
    rc = kaun__error_set(err, KAUN_EINVAL, "a tensor list entry needs a name and a tensor");
    goto fail;
  }
  if (kaun__index_find_n(&f->index, f->names, f->name_lens, name, len) >= 0) {
    char shown[KAUN__SHOWN];
    rc = kaun__error_set(err, KAUN_EDUPLICATE, "the name '%s' is already in the list",
                         kaun__str_escape(name, len, shown, sizeof shown));
    goto fail;
  }
  copy = copy_n(name, len);
  if (!copy || !grow((void **)&f->names, (void **)&f->tensors, &f->name_lens, &f->cap, f->count)) {
    rc = kaun__error_nomem(err, "adding a tensor to a list");
    goto fail;
  }
  f->names[f->count] = copy;
  f->name_lens[f->count] = len;
  f->tensors[f->count] = t;
  if (!kaun__index_add_n(&f->index, f->names, f->name_lens, f->count + 1, f->count)) {
    rc = kaun__error_nomem(err, "adding a tensor to a list");
    goto fail;
  }
  f->count++;
  return KAUN_OK;
fail:
  free(copy);
  if (!f->borrowed) kaun_tensor_free(t);
  return rc;
}

int kaun_flat_add(kaun_flat *f, const char *name, kaun_tensor *t, kaun_error *err) {
  return kaun_flat_add_n(f, name, name ? strlen(name) : 0, t, err);
}

size_t kaun_flat_count(const kaun_flat *f) { return f->count; }

const char *kaun_flat_name(const kaun_flat *f, size_t i) {
  return i < f->count ? f->names[i] : NULL;
}

size_t kaun_flat_name_length(const kaun_flat *f, size_t i) {
  return i < f->count ? f->name_lens[i] : 0;
}

kaun_tensor *kaun_flat_tensor(const kaun_flat *f, size_t i) {
  return i < f->count ? f->tensors[i] : NULL;
}

kaun_tensor *kaun_flat_find_n(const kaun_flat *f, const char *name, size_t len) {
  long i = kaun__index_find_n(&f->index, f->names, f->name_lens, name, len);
  return i >= 0 ? f->tensors[i] : NULL;
}

kaun_tensor *kaun_flat_find(const kaun_flat *f, const char *name) {
  return kaun_flat_find_n(f, name, strlen(name));
}

kaun_tensor *kaun_flat_take(kaun_flat *f, size_t i) {
  if (i >= f->count) return NULL;
  kaun_tensor *t = f->tensors[i];
  f->tensors[i] = NULL;
  return t;
}

int kaun_flat_set_metadata_n(kaun_flat *f, const char *key, size_t key_len, const char *value,
                             size_t value_len, kaun_error *err) {
  if (!key || !value) return kaun__error_set(err, KAUN_EINVAL, "metadata needs a key and a value");
  f->has_metadata = true;
  long i = kaun__index_find_n(&f->md_index, f->md_keys, f->md_key_lens, key, key_len);
  if (i >= 0) { /* replaced in place: the key keeps its position */
    char *v = copy_n(value, value_len);
    if (!v) return kaun__error_nomem(err, "setting metadata");
    free(f->md_values[i]);
    f->md_values[i] = v;
    f->md_value_lens[i] = value_len;
    return KAUN_OK;
  }
  /* the value lengths follow the keys' growth */
  size_t cap = f->md_cap;
  if (!grow((void **)&f->md_keys, (void **)&f->md_values, &f->md_key_lens, &cap, f->md_count))
    return kaun__error_nomem(err, "setting metadata");
  if (cap != f->md_cap) {
    size_t *nl = realloc(f->md_value_lens, cap * sizeof *nl);
    if (!nl) return kaun__error_nomem(err, "setting metadata");
    f->md_value_lens = nl;
    f->md_cap = cap;
  }
  char *k = copy_n(key, key_len), *v = copy_n(value, value_len);
  if (!k || !v) {
    free(k);
    free(v);
    return kaun__error_nomem(err, "setting metadata");
  }
  f->md_keys[f->md_count] = k;
  f->md_values[f->md_count] = v;
  f->md_key_lens[f->md_count] = key_len;
  f->md_value_lens[f->md_count] = value_len;
  if (!kaun__index_add_n(&f->md_index, f->md_keys, f->md_key_lens, f->md_count + 1, f->md_count)) {
    free(k);
    free(v);
    return kaun__error_nomem(err, "setting metadata");
  }
  f->md_count++;
  return KAUN_OK;
}

int kaun_flat_set_metadata(kaun_flat *f, const char *key, const char *value, kaun_error *err) {
  return kaun_flat_set_metadata_n(f, key, key ? strlen(key) : 0, value, value ? strlen(value) : 0,
                                  err);
}

size_t kaun_flat_metadata_count(const kaun_flat *f) { return f->md_count; }

const char *kaun_flat_metadata_key(const kaun_flat *f, size_t i) {
  return i < f->md_count ? f->md_keys[i] : NULL;
}

const char *kaun_flat_metadata_value(const kaun_flat *f, size_t i) {
  return i < f->md_count ? f->md_values[i] : NULL;
}

size_t kaun_flat_metadata_key_length(const kaun_flat *f, size_t i) {
  return i < f->md_count ? f->md_key_lens[i] : 0;
}

size_t kaun_flat_metadata_value_length(const kaun_flat *f, size_t i) {
  return i < f->md_count ? f->md_value_lens[i] : 0;
}

const char *kaun_flat_metadata_get_n(const kaun_flat *f, const char *key, size_t key_len,
                                     size_t *value_len) {
  long i = kaun__index_find_n(&f->md_index, f->md_keys, f->md_key_lens, key, key_len);
  if (value_len) *value_len = i >= 0 ? f->md_value_lens[i] : 0;
  return i >= 0 ? f->md_values[i] : NULL;
}

const char *kaun_flat_metadata_get(const kaun_flat *f, const char *key) {
  return kaun_flat_metadata_get_n(f, key, strlen(key), NULL);
}

int kaun_flat_has_metadata(const kaun_flat *f) { return f->has_metadata; }

void kaun__flat_mark_metadata(kaun_flat *f) { f->has_metadata = true; }
