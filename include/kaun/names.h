/* kaun — mapping a file's tensor names onto your tree's paths.
 *
 * Checkpoints written by other code name their tensors their own way:
 * `bert.encoder.layer.0.attention.self.query.weight` where your tree says
 * `encoder.layers.0.query.weight`.  A name map says how the file's names
 * become your paths; give it to a load (kaun_load_options.names, see
 * reader.h) and the template's leaves are filled from the tensors whose
 * mapped names match, reading only those.
 */
#ifndef KAUN_NAMES_H
#define KAUN_NAMES_H

#include <kaun/common.h>

KAUN_BEGIN_DECLS

/* A rename rule: every occurrence of `from` in a name becomes `to`. */
typedef struct kaun_rename {
  const char *from;
  const char *to;
} kaun_rename;

/* How a file's tensor names become the template's paths, in this order:
 * `strip_prefix` is removed from names that start with it, `add_prefix`
 * is put in front, then each rename rule is applied in turn.  So
 * {.strip_prefix = "bert.", .renames = {{"encoder.layer.", "encoder.layers."},
 * {".attention.self.", "."}}} maps bert.encoder.layer.0.attention.self.query.weight
 * to encoder.layers.0.query.weight.  Every field may be NULL / 0.
 * Zero-initialise and set struct_size; fields may be added at the end. */
typedef struct kaun_name_map {
  size_t struct_size; /* sizeof(kaun_name_map) */
  const char *strip_prefix;
  const char *add_prefix;
  const kaun_rename *renames;
  size_t nrenames;
} kaun_name_map;

/* The name `name` maps to (malloc'd, the caller frees it), or NULL when
 * out of memory.  `map` may be NULL (a copy of the name itself). */
KAUN_API char *kaun_name_map_apply(const kaun_name_map *map, const char *name);

KAUN_END_DECLS

#endif
