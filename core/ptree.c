/* Parameter trees: leaves, records and lists, addressed by dotted paths. */
#include "index.h"
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kaun_ptree {
  kaun_ptree_kind kind;
  kaun_tensor *tensor; /* leaf */
  size_t count, cap;
  char **keys; /* record keys (NULL for a list) */
  kaun_ptree **children;
  kaun__index index; /* record key lookup */
};

static int node_new(kaun_ptree_kind kind, kaun_ptree **out, kaun_error *err) {
  *out = calloc(1, sizeof **out);
  if (!*out) return kaun__error_nomem(err, "creating a tree node");
  (*out)->kind = kind;
  return KAUN_OK;
}

int kaun_ptree_new_record(kaun_ptree **out, kaun_error *err) {
  return node_new(KAUN_PTREE_RECORD, out, err);
}

int kaun_ptree_new_list(kaun_ptree **out, kaun_error *err) {
  return node_new(KAUN_PTREE_LIST, out, err);
}

int kaun_ptree_new_leaf(kaun_tensor *tensor, kaun_ptree **out, kaun_error *err) {
  *out = NULL;
  if (!tensor) return kaun__error_set(err, KAUN_EINVAL, "a leaf needs a tensor");
  int rc = node_new(KAUN_PTREE_TENSOR, out, err);
  if (rc) {
    kaun_tensor_free(tensor);
    return rc;
  }
  (*out)->tensor = tensor;
  return KAUN_OK;
}

void kaun_ptree_free(kaun_ptree *t) {
  if (!t) return;
  kaun_tensor_free(t->tensor);
  for (size_t i = 0; i < t->count; i++) {
    kaun_ptree_free(t->children[i]);
    if (t->keys) free(t->keys[i]);
  }
  free(t->children);
  free(t->keys);
  kaun__index_free(&t->index);
  free(t);
}

kaun_ptree_kind kaun_ptree_kind_of(const kaun_ptree *t) { return t->kind; }
kaun_tensor *kaun_ptree_tensor(const kaun_ptree *t) { return t->tensor; }
size_t kaun_ptree_count(const kaun_ptree *t) { return t->count; }

kaun_ptree *kaun_ptree_child(const kaun_ptree *t, size_t i) {
  return i < t->count ? t->children[i] : NULL;
}

const char *kaun_ptree_key(const kaun_ptree *t, size_t i) {
  return (t->kind == KAUN_PTREE_RECORD && i < t->count) ? t->keys[i] : NULL;
}

static kaun_ptree *find_n(const kaun_ptree *t, const char *key, size_t len) {
  if (t->kind != KAUN_PTREE_RECORD) return NULL;
  long i = kaun__index_find(&t->index, t->keys, key, len);
  return i >= 0 ? t->children[i] : NULL;
}

kaun_ptree *kaun_ptree_find(const kaun_ptree *t, const char *key) {
  return find_n(t, key, strlen(key));
}

int kaun_ptree_check_key(const char *key, kaun_error *err) {
  if (!key || !*key) return kaun__error_set(err, KAUN_EBADKEY, "a record key cannot be empty");
  if (strchr(key, '.'))
    return kaun__error_set(err, KAUN_EBADKEY,
                           "the record key '%s' contains '.', which separates path components",
                           key);
  return KAUN_OK;
}

static bool reserve_child(kaun_ptree *t, bool with_keys) {
  if (t->count < t->cap) return true;
  size_t cap = t->cap ? t->cap * 2 : 4;
  kaun_ptree **c = realloc(t->children, cap * sizeof *c);
  if (!c) return false;
  t->children = c;
  if (with_keys) {
    char **k = realloc(t->keys, cap * sizeof *k);
    if (!k) return false;
    t->keys = k;
  }
  t->cap = cap;
  return true;
}

int kaun_ptree_record_add(kaun_ptree *rec, const char *key, kaun_ptree *child, kaun_error *err) {
  int rc = KAUN_OK;
  char *copy = NULL;
  if (!child) return kaun__error_set(err, KAUN_EINVAL, "no child given for key '%s'", key);
  if (rec->kind != KAUN_PTREE_RECORD) {
    rc = kaun__error_set(err, KAUN_EKIND, "cannot add the key '%s' to a node that is not a record",
                         key ? key : "");
    goto fail;
  }
  if ((rc = kaun_ptree_check_key(key, err))) goto fail;
  if (find_n(rec, key, strlen(key))) {
    rc = kaun__error_set(err, KAUN_EDUPLICATE, "the record already has the key '%s'", key);
    goto fail;
  }
  copy = strdup(key);
  if (!copy || !reserve_child(rec, true)) {
    rc = kaun__error_nomem(err, "adding a record key");
    goto fail;
  }
  rec->keys[rec->count] = copy;
  rec->children[rec->count] = child;
  if (!kaun__index_add(&rec->index, rec->keys, rec->count + 1, rec->count)) {
    rc = kaun__error_nomem(err, "adding a record key");
    goto fail;
  }
  rec->count++;
  return KAUN_OK;
fail:
  free(copy);
  kaun_ptree_free(child);
  return rc;
}

int kaun_ptree_list_append(kaun_ptree *list, kaun_ptree *child, kaun_error *err) {
  int rc;
  if (!child) return kaun__error_set(err, KAUN_EINVAL, "no child given to append");
  if (list->kind != KAUN_PTREE_LIST) {
    rc = kaun__error_set(err, KAUN_EKIND, "cannot append to a node that is not a list");
  } else if (!reserve_child(list, false)) {
    rc = kaun__error_nomem(err, "appending to a list");
  } else {
    list->children[list->count++] = child;
    return KAUN_OK;
  }
  kaun_ptree_free(child);
  return rc;
}

/* Parses a canonical list index ("0", "17"; no sign or leading zero). */
static bool parse_index(const char *s, size_t n, size_t *out) {
  if (n == 0 || n > 19 || (n > 1 && s[0] == '0')) return false;
  size_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (size_t)(s[i] - '0');
  }
  *out = v;
  return true;
}

/* The child of `t` named by the component s[0..n), or NULL. */
static kaun_ptree *step(const kaun_ptree *t, const char *s, size_t n) {
  if (t->kind == KAUN_PTREE_RECORD) return find_n(t, s, n);
  size_t i;
  if (t->kind == KAUN_PTREE_LIST && parse_index(s, n, &i) && i < t->count) return t->children[i];
  return NULL;
}

int kaun_ptree_get(const kaun_ptree *tree, const char *path, kaun_ptree **out, kaun_error *err) {
  *out = NULL;
  const kaun_ptree *t = tree;
  const char *p = path;
  if (*p) {
    for (;;) {
      const char *dot = strchr(p, '.');
      size_t n = dot ? (size_t)(dot - p) : strlen(p);
      if (n == 0)
        return kaun__error_set(err, KAUN_EBADKEY, "the path '%s' has an empty component", path);
      kaun_ptree *c = step(t, p, n);
      if (!c)
        return kaun__error_set(err, KAUN_EKEY,
                               "the path '%s' is not in the tree: no '%.*s' under '%.*s'", path,
                               (int)n, p, (int)(p == path ? 0 : p - path - 1), path);
      t = c;
      if (!dot) break;
      p = dot + 1;
    }
  }
  *out = (kaun_ptree *)t;
  return KAUN_OK;
}

int kaun_ptree_set(kaun_ptree *tree, const char *path, kaun_tensor *tensor, kaun_error *err) {
  int rc = KAUN_OK;
  kaun_ptree *t = tree;
  const char *p = path;
  char comp[256];
  if (!tensor) return kaun__error_set(err, KAUN_EINVAL, "no tensor given for '%s'", path);
  if (!*p) {
    rc = kaun__error_set(err, KAUN_EBADKEY, "cannot set a tensor at the empty path");
    goto fail;
  }
  for (;;) {
    const char *dot = strchr(p, '.');
    size_t n = dot ? (size_t)(dot - p) : strlen(p);
    if (n == 0 || n >= sizeof comp) {
      rc = kaun__error_set(err, KAUN_EBADKEY, "the path '%s' has an empty or over-long component",
                           path);
      goto fail;
    }
    memcpy(comp, p, n);
    comp[n] = '\0';
    if (t->kind == KAUN_PTREE_TENSOR) {
      rc = kaun__error_set(err, KAUN_EKIND, "cannot set '%s': '%.*s' is a tensor, not a record",
                           path, (int)(p - path - 1), path);
      goto fail;
    }
    kaun_ptree *c = step(t, comp, n);
    if (t->kind == KAUN_PTREE_LIST && !c) {
      size_t i;
      if (!parse_index(comp, n, &i)) {
        rc = kaun__error_set(err, KAUN_EKIND, "cannot set '%s': '%s' is not an index into a list",
                             path, comp);
        goto fail;
      }
      if (i != t->count) {
        rc = kaun__error_set(err, KAUN_EKEY,
                             "cannot set '%s': index %zu is beyond the list's end (%zu items)",
                             path, i, t->count);
        goto fail;
      }
    }
    if (!dot) {
      if (c && c->kind != KAUN_PTREE_TENSOR) {
        rc = kaun__error_set(err, KAUN_EKIND, "cannot set '%s': it is a %s, not a tensor", path,
                             c->kind == KAUN_PTREE_RECORD ? "record" : "list");
        goto fail;
      }
      if (c) {
        kaun_tensor_free(c->tensor);
        c->tensor = tensor;
        return KAUN_OK;
      }
      kaun_ptree *leaf;
      if ((rc = kaun_ptree_new_leaf(tensor, &leaf, err))) return rc;
      return t->kind == KAUN_PTREE_LIST ? kaun_ptree_list_append(t, leaf, err)
                                        : kaun_ptree_record_add(t, comp, leaf, err);
    }
    if (!c) {
      /* a new container is a list when the next component is its first index */
      const char *next = dot + 1;
      bool list = next[0] == '0' && (next[1] == '.' || next[1] == '\0');
      kaun_ptree *rec;
      if ((rc = list ? kaun_ptree_new_list(&rec, err) : kaun_ptree_new_record(&rec, err)))
        goto fail;
      rc = t->kind == KAUN_PTREE_LIST ? kaun_ptree_list_append(t, rec, err)
                                      : kaun_ptree_record_add(t, comp, rec, err);
      if (rc) goto fail;
      c = rec;
    }
    t = c;
    p = dot + 1;
  }
fail:
  kaun_tensor_free(tensor);
  return rc;
}

static int walk(const kaun_ptree *t, kaun__strbuf *path, kaun_ptree_visit_fn visit, void *ctx) {
  if (t->kind == KAUN_PTREE_TENSOR) return visit(path->data ? path->data : "", t->tensor, ctx);
  size_t base = path->len;
  for (size_t i = 0; i < t->count; i++) {
    if (base) kaun__strbuf_append(path, ".", 1);
    if (t->kind == KAUN_PTREE_RECORD)
      kaun__strbuf_puts(path, t->keys[i]);
    else
      kaun__strbuf_printf(path, "%zu", i);
    if (path->failed) return KAUN_ENOMEM;
    int rc = walk(t->children[i], path, visit, ctx);
    if (rc) return rc;
    path->len = base;
    path->data[base] = '\0';
  }
  return 0;
}

int kaun_ptree_foreach(const kaun_ptree *tree, kaun_ptree_visit_fn visit, void *context) {
  kaun__strbuf path = {0};
  int rc = walk(tree, &path, visit, context);
  kaun__strbuf_free(&path);
  return rc;
}

typedef struct flatten_ctx {
  kaun_flat *flat;
  kaun_error *err;
  int rc;
} flatten_ctx;

static int flatten_visit(const char *path, kaun_tensor *t, void *c) {
  flatten_ctx *fc = c;
  kaun_tensor *copy;
  if ((fc->rc = kaun_tensor_clone(t, &copy, fc->err))) return 1;
  if ((fc->rc = kaun_flat_add(fc->flat, path, copy, fc->err))) return 1;
  return 0;
}

int kaun_ptree_flatten(const kaun_ptree *tree, kaun_flat **out, kaun_error *err) {
  *out = NULL;
  if (tree->kind == KAUN_PTREE_TENSOR)
    return kaun__error_set(err, KAUN_EINVAL,
                           "a tree whose root is a tensor has no names to flatten into");
  kaun_flat *flat;
  int rc = kaun_flat_new(&flat, err);
  if (rc) return rc;
  flatten_ctx fc = {flat, err, 0};
  rc = kaun_ptree_foreach(tree, flatten_visit, &fc);
  if (rc) {
    rc = fc.rc ? fc.rc : kaun__error_nomem(err, "flattening a tree");
    kaun_flat_free(flat);
    return rc;
  }
  *out = flat;
  return KAUN_OK;
}

static int by_index(const void *a, const void *b) {
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  return (x > y) - (x < y);
}

/* Turns records keyed exactly "0".."n-1" into lists, bottom-up. */
static int listify(kaun_ptree *t, kaun_error *err) {
  if (t->kind == KAUN_PTREE_TENSOR) return KAUN_OK;
  for (size_t i = 0; i < t->count; i++) {
    int rc = listify(t->children[i], err);
    if (rc) return rc;
  }
  if (t->kind != KAUN_PTREE_RECORD || t->count == 0) return KAUN_OK;
  size_t *pairs = malloc(t->count * 2 * sizeof *pairs);
  if (!pairs) return kaun__error_nomem(err, "rebuilding lists");
  for (size_t i = 0; i < t->count; i++) {
    size_t ix;
    if (!parse_index(t->keys[i], strlen(t->keys[i]), &ix) || ix >= t->count) {
      free(pairs);
      return KAUN_OK; /* stays a record */
    }
    pairs[2 * i] = ix;
    pairs[2 * i + 1] = i;
  }
  qsort(pairs, t->count, 2 * sizeof *pairs, by_index);
  for (size_t i = 0; i < t->count; i++)
    if (pairs[2 * i] != i) {
      free(pairs);
      return KAUN_OK;
    }
  kaun_ptree **ordered = malloc(t->count * sizeof *ordered);
  if (!ordered) {
    free(pairs);
    return kaun__error_nomem(err, "rebuilding lists");
  }
  for (size_t i = 0; i < t->count; i++) {
    ordered[i] = t->children[pairs[2 * i + 1]];
    free(t->keys[i]);
  }
  free(pairs);
  free(t->children);
  free(t->keys);
  kaun__index_free(&t->index);
  t->keys = NULL;
  t->children = ordered;
  t->cap = t->count;
  t->kind = KAUN_PTREE_LIST;
  return KAUN_OK;
}

static int insert_path(kaun_ptree *root, const char *name, kaun_tensor *tensor, kaun_error *err) {
  kaun_ptree *t = root;
  const char *p = name;
  for (;;) {
    const char *dot = strchr(p, '.');
    size_t n = dot ? (size_t)(dot - p) : strlen(p);
    if (n == 0) {
      kaun_tensor_free(tensor);
      return kaun__error_set(err, KAUN_EBADKEY, "the tensor name '%s' has an empty path component",
                             name);
    }
    kaun_ptree *c = find_n(t, p, n);
    if (c && !dot) {
      kaun_tensor_free(tensor);
      return kaun__error_set(err, KAUN_EKIND,
                             "the tensor name '%s' is also the prefix of other tensor names, "
                             "so no tree can hold them all",
                             name);
    }
    if (c && c->kind == KAUN_PTREE_TENSOR) {
      kaun_tensor_free(tensor);
      return kaun__error_set(err, KAUN_EKIND,
                             "the tensor names '%s' and '%.*s' collide: one is a prefix of "
                             "the other, so no tree can hold both",
                             name, (int)(p - name + n), name);
    }
    char *key = strndup(p, n);
    if (!key) {
      kaun_tensor_free(tensor);
      return kaun__error_nomem(err, "rebuilding a tree");
    }
    int rc = KAUN_OK;
    if (!dot) {
      kaun_ptree *leaf;
      if (!(rc = kaun_ptree_new_leaf(tensor, &leaf, err)))
        rc = kaun_ptree_record_add(t, key, leaf, err);
      free(key);
      return rc;
    }
    if (!c) {
      kaun_ptree *rec;
      if (!(rc = kaun_ptree_new_record(&rec, err))) rc = kaun_ptree_record_add(t, key, rec, err);
      if (!rc) c = rec;
    }
    free(key);
    if (rc) {
      kaun_tensor_free(tensor);
      return rc;
    }
    t = c;
    p = dot + 1;
  }
}

int kaun_ptree_unflatten(kaun_flat *flat, kaun_ptree **out, kaun_error *err) {
  *out = NULL;
  kaun_ptree *root;
  int rc = kaun_ptree_new_record(&root, err);
  if (rc) return rc;
  for (size_t i = 0; i < kaun_flat_count(flat) && !rc; i++) {
    const char *name = kaun_flat_name(flat, i);
    if (!kaun_flat_tensor(flat, i)) continue; /* already taken */
    /* a name with a NUL byte ("a\u0000b" in a file) has no path to go to */
    if (strlen(name) != kaun_flat_name_length(flat, i)) {
      char shown[KAUN__SHOWN];
      rc = kaun__error_set(
          err, KAUN_EBADKEY,
          "the tensor name '%s' holds a NUL byte, which a tree path cannot; load it as a flat "
          "list (kaun_checkpoint_load_flat)",
          kaun__str_escape(name, kaun_flat_name_length(flat, i), shown, sizeof shown));
      break;
    }
    rc = insert_path(root, name, kaun_flat_take(flat, i), err);
  }
  if (!rc) rc = listify(root, err);
  if (rc) {
    kaun_ptree_free(root);
    return rc;
  }
  *out = root;
  return KAUN_OK;
}
