/* kaun — parameter trees.
 *
 * A parameter tree is a tensor leaf, a record (string keys in insertion
 * order) or a list (indexed from 0).  Paths join keys and indices with
 * dots: "layers.0.weight".  Keys are non-empty, contain no '.', and are
 * unique within their record.  A model's params and its optimizer state
 * are simply two trees.
 *
 * A tree owns its children and its tensors.  Trees are not thread-safe
 * for writing; distinct trees may be used from distinct threads.
 */
#ifndef KAUN_PTREE_H
#define KAUN_PTREE_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/tensor.h>

KAUN_BEGIN_DECLS

typedef struct kaun_ptree kaun_ptree;

typedef enum kaun_ptree_kind {
  KAUN_PTREE_TENSOR = 0,
  KAUN_PTREE_RECORD = 1,
  KAUN_PTREE_LIST = 2
} kaun_ptree_kind;

/* An empty record / list.  Errors: KAUN_ENOMEM. */
KAUN_API int kaun_ptree_new_record(kaun_ptree **out, kaun_error *err);
KAUN_API int kaun_ptree_new_list(kaun_ptree **out, kaun_error *err);

/* A leaf that takes ownership of `tensor` — also on failure, where the
 * tensor is freed.  Errors: KAUN_EINVAL (NULL tensor), KAUN_ENOMEM. */
KAUN_API int kaun_ptree_new_leaf(kaun_tensor *tensor, kaun_ptree **out, kaun_error *err);

/* Frees a tree, its children and their tensors.  Accepts NULL. */
KAUN_API void kaun_ptree_free(kaun_ptree *tree);

/* Whether the node is a tensor leaf, a record or a list. */
KAUN_API kaun_ptree_kind kaun_ptree_kind_of(const kaun_ptree *tree);

/* The tensor of a leaf (owned by the tree), NULL for a record or list. */
KAUN_API kaun_tensor *kaun_ptree_tensor(const kaun_ptree *tree);

/* Children of a record or list (0 for a leaf). */
KAUN_API size_t kaun_ptree_count(const kaun_ptree *tree);
/* The i-th child, NULL when out of range. */
KAUN_API kaun_ptree *kaun_ptree_child(const kaun_ptree *tree, size_t index);
/* The i-th key of a record, NULL for a list or out of range. */
KAUN_API const char *kaun_ptree_key(const kaun_ptree *tree, size_t index);
/* The child of a record under `key`, NULL when absent. */
KAUN_API kaun_ptree *kaun_ptree_find(const kaun_ptree *tree, const char *key);

/* Checks a record key: non-empty, no '.'.  Errors: KAUN_EBADKEY. */
KAUN_API int kaun_ptree_check_key(const char *key, kaun_error *err);

/* Adds `child` under `key` (copied) at the end of a record, taking
 * ownership of `child` — also on failure, where it is freed.  Errors:
 * KAUN_EBADKEY, KAUN_EDUPLICATE (key already present), KAUN_EKIND (not a
 * record), KAUN_ENOMEM. */
KAUN_API int kaun_ptree_record_add(kaun_ptree *record, const char *key, kaun_ptree *child,
                                   kaun_error *err);

/* Appends `child` to a list, taking ownership (freed on failure).
 * Errors: KAUN_EKIND (not a list), KAUN_ENOMEM. */
KAUN_API int kaun_ptree_list_append(kaun_ptree *list, kaun_ptree *child, kaun_error *err);

/* Finds the node at a dotted path ("" is the root itself).  The node is
 * owned by the tree.  Errors: KAUN_EKEY naming the path and the first
 * component that is absent, KAUN_EBADKEY (malformed path). */
KAUN_API int kaun_ptree_get(const kaun_ptree *tree, const char *path, kaun_ptree **out,
                            kaun_error *err);

/* Puts `tensor` at `path`, taking ownership (freed on failure).  Missing
 * containers on the way are created: a list when the next component is
 * "0", else a record.  An existing leaf is replaced; in a list the index
 * must exist or be the list's length (append).  Errors:
 * KAUN_EBADKEY, KAUN_EKIND (path goes through a leaf, or a non-index
 * component into a list), KAUN_EKEY (list index out of range),
 * KAUN_ENOMEM. */
KAUN_API int kaun_ptree_set(kaun_ptree *tree, const char *path, kaun_tensor *tensor,
                            kaun_error *err);

/* Called for each leaf in depth-first, insertion order.  Return 0 to go
 * on; anything else stops the walk and is returned by kaun_ptree_foreach. */
typedef int (*kaun_ptree_visit_fn)(const char *path, kaun_tensor *tensor, void *context);

/* Walks the leaves.  `path` is valid only during the call.  Returns 0,
 * the callback's nonzero value, or KAUN_ENOMEM. */
KAUN_API int kaun_ptree_foreach(const kaun_ptree *tree, kaun_ptree_visit_fn visit, void *context);

/* ---- flat lists ------------------------------------------------------- */

/* An ordered list of (name, tensor) pairs with optional string metadata:
 * what a SafeTensors file holds.  Owns its names and tensors. */
typedef struct kaun_flat kaun_flat;

/* An empty list.  Errors: KAUN_ENOMEM. */
KAUN_API int kaun_flat_new(kaun_flat **out, kaun_error *err);
/* Frees the list, its names and the tensors it still holds.  Accepts NULL. */
KAUN_API void kaun_flat_free(kaun_flat *flat);

/* Appends `name` (copied) and `tensor` (owned; freed on failure).
 * Names must be unique.  Errors: KAUN_EDUPLICATE, KAUN_EINVAL, KAUN_ENOMEM. */
KAUN_API int kaun_flat_add(kaun_flat *flat, const char *name, kaun_tensor *tensor, kaun_error *err);

/* Entries in insertion (for loads: file) order.  Names and tensors are
 * owned by the list; out-of-range indices give NULL. */
KAUN_API size_t kaun_flat_count(const kaun_flat *flat);
KAUN_API const char *kaun_flat_name(const kaun_flat *flat, size_t index);
KAUN_API kaun_tensor *kaun_flat_tensor(const kaun_flat *flat, size_t index);
/* The tensor named `name`, or NULL.  Constant time on average. */
KAUN_API kaun_tensor *kaun_flat_find(const kaun_flat *flat, const char *name);
/* Removes the tensor at `index` from the list's ownership and returns it;
 * the slot keeps its name and holds NULL afterwards. */
KAUN_API kaun_tensor *kaun_flat_take(kaun_flat *flat, size_t index);

/* Names are byte strings with a length: a SafeTensors name may hold NUL
 * bytes (JSON "\u0000"), and a list loaded from such a file keeps them, so
 * that saving it gives the same file.  The functions above that take or
 * return a `const char *` see a name up to its first NUL (kaun_flat_find
 * and kaun_flat_add use strlen); these take and give the whole name. */
/* As kaun_flat_add, with a name of `len` bytes (any bytes; UTF-8 to be
 * saved). */
KAUN_API int kaun_flat_add_n(kaun_flat *flat, const char *name, size_t len, kaun_tensor *tensor,
                             kaun_error *err);
/* The length in bytes of name `index` (0 when out of range); the name is
 * kaun_flat_name's pointer, followed by a NUL. */
KAUN_API size_t kaun_flat_name_length(const kaun_flat *flat, size_t index);
/* The tensor whose name is these `len` bytes, or NULL. */
KAUN_API kaun_tensor *kaun_flat_find_n(const kaun_flat *flat, const char *name, size_t len);

/* String metadata (SafeTensors "__metadata__"), in insertion order. */
KAUN_API int kaun_flat_set_metadata(kaun_flat *flat, const char *key, const char *value,
                                    kaun_error *err);
KAUN_API size_t kaun_flat_metadata_count(const kaun_flat *flat);
KAUN_API const char *kaun_flat_metadata_key(const kaun_flat *flat, size_t index);
KAUN_API const char *kaun_flat_metadata_value(const kaun_flat *flat, size_t index);
/* The value for `key`, or NULL. */
KAUN_API const char *kaun_flat_metadata_get(const kaun_flat *flat, const char *key);
/* 1 when the metadata was given (even empty), 0 when absent. */
KAUN_API int kaun_flat_has_metadata(const kaun_flat *flat);
/* Metadata with lengths (keys and values may hold NUL bytes; the
 * functions above see them up to the first NUL). */
KAUN_API int kaun_flat_set_metadata_n(kaun_flat *flat, const char *key, size_t key_len,
                                      const char *value, size_t value_len, kaun_error *err);
KAUN_API size_t kaun_flat_metadata_key_length(const kaun_flat *flat, size_t index);
KAUN_API size_t kaun_flat_metadata_value_length(const kaun_flat *flat, size_t index);
/* The value for the `key_len` bytes of `key`, or NULL; its length in
 * `*value_len` (may be NULL). */
KAUN_API const char *kaun_flat_metadata_get_n(const kaun_flat *flat, const char *key,
                                              size_t key_len, size_t *value_len);

/* Flattens a tree into dotted paths; tensors are cloned (views stay
 * views, owned tensors are copied).  Errors: KAUN_EINVAL (root is a leaf,
 * which has no name), KAUN_ENOMEM. */
KAUN_API int kaun_ptree_flatten(const kaun_ptree *tree, kaun_flat **out, kaun_error *err);

/* Rebuilds a tree from dotted paths, moving the tensors out of `flat`.
 * A record whose keys are exactly "0".."n-1" becomes a list.  Errors:
 * KAUN_EBADKEY (empty component), KAUN_EKIND ("a" and "a.b" both given),
 * KAUN_ENOMEM.  On failure `flat` keeps the tensors not yet moved. */
KAUN_API int kaun_ptree_unflatten(kaun_flat *flat, kaun_ptree **out, kaun_error *err);

KAUN_END_DECLS

#endif
