/* kaun — private declarations shared by the files of libkaun.
 * Not installed; refuses to compile outside the library and its tests. */
#ifndef KAUN_INTERNAL_H
#define KAUN_INTERNAL_H

#ifndef KAUN_BUILDING_LIBRARY
#error "core/internal.h is private to libkaun"
#endif

#include <kaun.h>
#include <stdarg.h>
#include <stdbool.h>

#if defined(__GNUC__)
#define KAUN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KAUN_PRINTF(f, a)
#endif

/* Fills `err` (when not NULL) and returns `code`. */
int kaun__error_set(kaun_error *err, int code, const char *fmt, ...) KAUN_PRINTF(3, 4);
/* As kaun__error_set, recording `sys_errno` and appending its text. */
int kaun__error_sys(kaun_error *err, int code, int sys_errno, const char *fmt, ...)
    KAUN_PRINTF(4, 5);
/* Shorthand for the out-of-memory error. */
int kaun__error_nomem(kaun_error *err, const char *what);
/* Puts `prefix` in front of the message already in `err`. */
void kaun__error_prefix(kaun_error *err, const char *fmt, ...) KAUN_PRINTF(2, 3);

/* "the closest are ..." text for a name not found: the three of the n
 * `mapped` names nearest to `want` (edit distance), each with the original
 * name it came from when `orig` is given and it differs.  Writes into
 * `buf` and returns it. */
const char *kaun__names_closest(const char *want, const char *const *mapped,
                                const char *const *orig, size_t n, char *buf, size_t size);

/* Makes `io` the one the opens of this thread report to (what a
 * backend transfers while it opens, ABI 1.2 open_io); returns the one it
 * replaces, to be put back.  NULL: the context's progress, as usual. */
kaun_io *kaun__opening_io_swap(kaun_io *io);

/* Whether the config of `ctx` has backends.NAME. */
bool kaun__context_has_backend(const kaun_context *ctx, const char *name);

/* A growable byte string; always NUL-terminated when data != NULL. */
typedef struct kaun__strbuf {
  char *data;
  size_t len;
  size_t cap;
  bool failed; /* an allocation failed: contents are incomplete */
} kaun__strbuf;

void kaun__strbuf_free(kaun__strbuf *sb);
void kaun__strbuf_append(kaun__strbuf *sb, const char *s, size_t n);
void kaun__strbuf_puts(kaun__strbuf *sb, const char *s);
void kaun__strbuf_printf(kaun__strbuf *sb, const char *fmt, ...) KAUN_PRINTF(2, 3);
/* Appends `s` as a JSON string literal, escaped as serde_json does. */
void kaun__strbuf_json_string(kaun__strbuf *sb, const char *s, size_t n);

/* Checked arithmetic. */
static inline bool kaun__mul_overflow(uint64_t a, uint64_t b, uint64_t *out) {
  return __builtin_mul_overflow(a, b, out);
}
static inline bool kaun__add_overflow(uint64_t a, uint64_t b, uint64_t *out) {
  return __builtin_add_overflow(a, b, out);
}

/* Reads exactly `size` bytes at `offset`, retrying short reads and EINTR.
 * Returns 0, or -1 with errno set (EIO-like; 0 bytes at EOF gives
 * errno = 0 and -1: a truncated file). */
int kaun__pread_full(int fd, void *buf, size_t size, uint64_t offset);
/* Writes all `size` bytes, retrying short writes and EINTR. */
int kaun__write_full(int fd, const void *buf, size_t size);

/* A tensor viewing `buffer` at `offset` whose bytes the caller has already
 * checked.  Takes a reference. */
int kaun__tensor_view_unchecked(kaun_dtype dtype, size_t ndim, const uint64_t *shape,
                                kaun_buffer *buffer, size_t offset, size_t nbytes,
                                kaun_tensor **out, kaun_error *err);
/* A tensor owning `data` (malloc'd, `nbytes`), taken over on success. */
int kaun__tensor_adopt(kaun_dtype dtype, size_t ndim, const uint64_t *shape, void *data,
                       size_t nbytes, kaun_tensor **out, kaun_error *err);
/* A tensor with uninitialised owned memory, for callers that fill it. */
int kaun__tensor_new_uninit(kaun_dtype dtype, size_t ndim, const uint64_t *shape, kaun_tensor **out,
                            kaun_error *err);

/* Files: writes a file atomically via `tmp` + fsync + rename; the callback
 * writes the contents to `fd`.  On any failure the temporary file is
 * removed and `path` is untouched. */
typedef int (*kaun__write_fn)(int fd, const char *tmp_path, void *context, kaun_error *err);
int kaun__atomic_write(const char *path, kaun__write_fn write_fn, void *context, kaun_error *err);
/* As kaun__atomic_write, for the entry `name` of the folder `dir_fd` (not
 * closed; O_PATH will do): every step is relative to it.  `path` names
 * the target in messages.  The temporary is unnamed (O_TMPFILE) where the
 * file system allows, else ".NAME.kaun-tmp-PID-WHERE-RANDOM"; dead
 * writers' temporaries in the folder are removed first (core/fileio.c). */
int kaun__atomic_write_at(int dir_fd, const char *name, const char *path, kaun__write_fn write_fn,
                          void *context, kaun_error *err);
/* kaun_file_put_atomic into the entry `name` of the folder `dir_fd`. */
int kaun__atomic_put_at(int dir_fd, const char *name, const char *path, const kaun_put_source *src,
                        kaun_error *err);

/* A flat list whose tensors are borrowed (not freed with it): used to
 * save a tree without copying it. */
int kaun__flat_new_borrowed(kaun_flat **out, kaun_error *err);
/* Marks the list as having metadata even when it has no entries
 * ("__metadata__": {} is written back as such). */
void kaun__flat_mark_metadata(kaun_flat *flat);

/* Reads `len` bytes at `offset` of some source (a file, an object). */
typedef int (*kaun__read_fn)(void *source, uint64_t offset, void *dst, size_t len, kaun_error *err);

/* The first read of a header: most headers fit, so a remote object's
 * header costs one request. */
#define KAUN__HEADER_PROBE ((size_t)64 << 10)

/* Reads and validates a header through `read` from a source of `size`
 * bytes: one read of up to KAUN__HEADER_PROBE bytes, a second for the
 * rest of a larger header; the data is never touched. */
int kaun__safetensors_read_via(kaun__read_fn read, void *source, uint64_t size, const char *name,
                               kaun_safetensors **out, kaun_error *err);

/* Reads a whole small file (index.json) into a NUL-terminated string. */
int kaun__read_small_file(const char *path, size_t max, char **out, size_t *out_len,
                          kaun_error *err);

/* kaun_http_get_parts' plan for `size` bytes asked in parts of `part`
 * (0 = 8 MiB): the part size it uses (grown to whole MiB so that at most
 * KAUN_HTTP_MAX_PARTS requests are made) and their count (0 for size 0). */
void kaun__http_parts_plan(uint64_t size, uint64_t part, uint64_t *part_out, size_t *count_out);

#endif
