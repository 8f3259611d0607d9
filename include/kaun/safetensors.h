/* kaun — the SafeTensors codec.
 *
 * A SafeTensors file is: 8 bytes of little-endian header length N, N
 * bytes of UTF-8 JSON (an object mapping tensor names to
 * {"dtype","shape","data_offsets"}, plus an optional "__metadata__" map of
 * strings), then the tensors' bytes.  kaun validates headers at least as
 * strictly as the reference implementation; every rejection has its own
 * status code and a message naming the file and the tensor.
 */
#ifndef KAUN_SAFETENSORS_H
#define KAUN_SAFETENSORS_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/ptree.h>
#include <kaun/storage.h>
#include <kaun/tensor.h>

KAUN_BEGIN_DECLS

/* The largest header the reference accepts. */
#define KAUN_SAFETENSORS_MAX_HEADER 100000000u

/* A parsed, validated header.  Immutable; may be read from many threads. */
typedef struct kaun_safetensors kaun_safetensors;

/* Reads the header length from the first 8 bytes of a file of
 * `file_size` bytes, checking it against the limits.  `name` (file or
 * URI) is used in messages and may be NULL.  Errors:
 * KAUN_EHEADER_TOO_SMALL, KAUN_EHEADER_TOO_LARGE, KAUN_EHEADER_LENGTH. */
KAUN_API int kaun_safetensors_header_length(const void *first8, size_t avail, uint64_t file_size,
                                            const char *name, uint64_t *out_length,
                                            kaun_error *err);

/* Parses and validates the `length` header bytes (those after the first
 * 8) of a file of `file_size` bytes.  Checks: UTF-8; a JSON object
 * (leading whitespace allowed) without duplicate keys; known dtypes;
 * shape x bits fits 64 bits and is whole bytes; end - begin equals the
 * size; sorted by offset the tensors are contiguous from 0 and end
 * exactly at the end of the file; "__metadata__" is string->string or
 * null.  Errors: one code per rule (see error.h). */
KAUN_API int kaun_safetensors_parse_header(const void *header, size_t length, uint64_t file_size,
                                           const char *name, kaun_safetensors **out,
                                           kaun_error *err);

/* Parses a whole file held in memory (`size` bytes at `bytes`). */
KAUN_API int kaun_safetensors_parse(const void *bytes, size_t size, const char *name,
                                    kaun_safetensors **out, kaun_error *err);

/* Reads and validates a file's header with two preads; the data is not
 * read, so the time does not depend on the file's size.  Errors: as
 * kaun_safetensors_parse_header, KAUN_ENOENT, KAUN_EIO. */
KAUN_API int kaun_safetensors_read_file(const char *path, kaun_safetensors **out, kaun_error *err);

/* Frees a parsed header.  Accepts NULL. */
KAUN_API void kaun_safetensors_free(kaun_safetensors *st);

/* Offset of the data section in the file: 8 + header length. */
KAUN_API uint64_t kaun_safetensors_data_start(const kaun_safetensors *st);
KAUN_API uint64_t kaun_safetensors_file_size(const kaun_safetensors *st);

/* Number of tensors; they are numbered in file (offset) order. */
KAUN_API size_t kaun_safetensors_count(const kaun_safetensors *st);

/* Describes tensor `index`.  Pointers are owned by `st`. */
typedef struct kaun_safetensors_info {
  const char *name;
  kaun_dtype dtype;
  size_t ndim;
  const uint64_t *shape;
  uint64_t begin; /* relative to the data section */
  uint64_t end;
} kaun_safetensors_info;

/* Fills `out` for tensor `index`.  Returns KAUN_OK or KAUN_EINVAL. */
KAUN_API int kaun_safetensors_info_at(const kaun_safetensors *st, size_t index,
                                      kaun_safetensors_info *out);
/* The index of the tensor called `name`, or -1. */
KAUN_API long kaun_safetensors_find(const kaun_safetensors *st, const char *name);

/* Metadata: -1 when there was none (absent or null), else the count. */
KAUN_API long kaun_safetensors_metadata_count(const kaun_safetensors *st);
KAUN_API const char *kaun_safetensors_metadata_key(const kaun_safetensors *st, size_t index);
KAUN_API const char *kaun_safetensors_metadata_value(const kaun_safetensors *st, size_t index);

/* Names, metadata keys and values may hold NUL bytes (JSON "\u0000", which
 * the reference accepts): `name` in kaun_safetensors_info and the strings
 * above are NUL-terminated, so they show such a string up to its first
 * NUL, and kaun_safetensors_find matches whole names only.  These give the
 * whole strings: the length in bytes (0 when out of range) of what the
 * pointers above point to, and a lookup by bytes and length. */
KAUN_API size_t kaun_safetensors_name_length(const kaun_safetensors *st, size_t index);
KAUN_API long kaun_safetensors_find_n(const kaun_safetensors *st, const char *name, size_t len);
KAUN_API size_t kaun_safetensors_metadata_key_length(const kaun_safetensors *st, size_t index);
KAUN_API size_t kaun_safetensors_metadata_value_length(const kaun_safetensors *st, size_t index);

/* Serialises the header the reference writer would produce for the
 * tensors and metadata of `flat`: "__metadata__" first when given, then
 * tensors by descending dtype rank and then by name, compact JSON, padded
 * with spaces to a multiple of 8.  `*out` (malloc'd, caller frees) holds
 * the 8-byte length followed by the header; `*out_data_size` the bytes
 * of data that follow.  `order` (may be NULL) receives, malloc'd, the flat
 * indices in on-disk order.  Names and metadata are written whole, NUL
 * bytes as "\u0000".  Errors: KAUN_EINVAL (a name, key or value that is
 * not UTF-8, a tensor called "__metadata__"), KAUN_ENOMEM. */
KAUN_API int kaun_safetensors_serialize_header(const kaun_flat *flat, char **out, size_t *out_size,
                                               uint64_t *out_data_size, size_t **order,
                                               kaun_error *err);

/* Writes `flat` as a SafeTensors object at `uri`, atomically: the backend
 * stores the whole object or nothing (the file backend writes a temporary
 * file in the same directory, fsyncs it and renames it over the target),
 * so a crash or a full disk never leaves a partial file under the final
 * name, and an existing one stays intact on failure.  A URI naming a
 * folder writes model.safetensors inside it.  `ctx` may be NULL (a context
 * from the default config is made for the call).  Errors: KAUN_EIO
 * (sys_errno set), KAUN_ENOENT (no such directory), KAUN_ENOTSUP (the
 * backend cannot store), and as kaun_safetensors_serialize_header. */
KAUN_API int kaun_safetensors_save(kaun_context *ctx, const char *uri, const kaun_flat *flat,
                                   kaun_error *err);

/* Reads and validates the header of the object at `uri` (two ranged
 * reads: the data is not touched).  `ctx` may be NULL. */
KAUN_API int kaun_safetensors_read(kaun_context *ctx, const char *uri, kaun_safetensors **out,
                                   kaun_error *err);

KAUN_END_DECLS

#endif
