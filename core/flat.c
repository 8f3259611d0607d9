/* Flat (name, tensor) lists with string metadata. */
#include "index.h"

#include <stdlib.h>
#include <string.h>

struct kaun_flat {
  size_t count, cap;
  char **names;
  kaun_tensor **tensors;
  kaun__index index;
  bool borrowed; /* tensors are not ours to free */
  bool has_metadata;
  size_t md_count, md_cap;
  char **md_keys;
  char **md_values;
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
  free(f->tensors);
  free(f->md_keys);
  free(f->md_values);
  kaun__index_free(&f->index);
  kaun__index_free(&f->md_index);
  free(f);
}

static bool grow(void **a, void **b, size_t *cap, size_t count) {
  if (count < *cap) return true;
  size_t ncap = *cap ? *cap * 2 : 16;
  void *na = realloc(*a, ncap * sizeof(void *));
  if (!na) return false;
  *a = na;
  void *nb = realloc(*b, ncap * sizeof(void *));
  if (!nb) return false;
  *b = nb;
  *cap = ncap;
  return true;
}

int kaun_flat_add(kaun_flat *f, const char *name, kaun_tensor *t, kaun_error *err) {
  int rc = KAUN_OK;
  char *copy = NULL;
  if (!name || !t) {
    rc = kaun__error_set(err, KAUN_EINVAL, "a tensor list entry needs a name and a tensor");
    goto fail;
  }
  if (kaun__index_find(&f->index, f->names, name, strlen(name)) >= 0) {
    rc = kaun__error_set(err, KAUN_EDUPLICATE, "the name '%s' is already in the list", name);
    goto fail;
  }
  copy = strdup(name);
  if (!copy || !grow((void **)&f->names, (void **)&f->tensors, &f->cap, f->count)) {
    rc = kaun__error_nomem(err, "adding a tensor to a list");
    goto fail;
  }
  f->names[f->count] = copy;
  f->tensors[f->count] = t;
  if (!kaun__index_add(&f->index, f->names, f->count + 1, f->count)) {
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

size_t kaun_flat_count(const kaun_flat *f) { return f->count; }

const char *kaun_flat_name(const kaun_flat *f, size_t i) {
  return i < f->count ? f->names[i] : NULL;
}

kaun_tensor *kaun_flat_tensor(const kaun_flat *f, size_t i) {
  return i < f->count ? f->tensors[i] : NULL;
}

kaun_tensor *kaun_flat_find(const kaun_flat *f, const char *name) {
  long i = kaun__index_find(&f->index, f->names, name, strlen(name));
  return i >= 0 ? f->tensors[i] : NULL;
}

kaun_tensor *kaun_flat_take(kaun_flat *f, size_t i) {
  if (i >= f->count) return NULL;
  kaun_tensor *t = f->tensors[i];
  f->tensors[i] = NULL;
  return t;
}

int kaun_flat_set_metadata(kaun_flat *f, const char *key, const char *value, kaun_error *err) {
  if (!key || !value) return kaun__error_set(err, KAUN_EINVAL, "metadata needs a key and a value");
  f->has_metadata = true;
  long i = kaun__index_find(&f->md_index, f->md_keys, key, strlen(key));
  if (i >= 0) { /* replaced in place: the key keeps its position */
    char *v = strdup(value);
    if (!v) return kaun__error_nomem(err, "setting metadata");
    free(f->md_values[i]);
    f->md_values[i] = v;
    return KAUN_OK;
  }
  if (!grow((void **)&f->md_keys, (void **)&f->md_values, &f->md_cap, f->md_count))
    return kaun__error_nomem(err, "setting metadata");
  char *k = strdup(key), *v = strdup(value);
  if (!k || !v) {
    free(k);
    free(v);
    return kaun__error_nomem(err, "setting metadata");
  }
  f->md_keys[f->md_count] = k;
  f->md_values[f->md_count] = v;
  if (!kaun__index_add(&f->md_index, f->md_keys, f->md_count + 1, f->md_count)) {
    free(k);
    free(v);
    return kaun__error_nomem(err, "setting metadata");
  }
  f->md_count++;
  return KAUN_OK;
}

size_t kaun_flat_metadata_count(const kaun_flat *f) { return f->md_count; }

const char *kaun_flat_metadata_key(const kaun_flat *f, size_t i) {
  return i < f->md_count ? f->md_keys[i] : NULL;
}

const char *kaun_flat_metadata_value(const kaun_flat *f, size_t i) {
  return i < f->md_count ? f->md_values[i] : NULL;
}

const char *kaun_flat_metadata_get(const kaun_flat *f, const char *key) {
  long i = kaun__index_find(&f->md_index, f->md_keys, key, strlen(key));
  return i >= 0 ? f->md_values[i] : NULL;
}

int kaun_flat_has_metadata(const kaun_flat *f) { return f->has_metadata; }

void kaun__flat_mark_metadata(kaun_flat *f) { f->has_metadata = true; }
