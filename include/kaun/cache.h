/* kaun — the download cache shared by every plugin (Hub, S3, tarballs).
 *
 * One root folder, one lock per entry, one way to write an entry: bytes
 * go to a per-process temporary file next to the final name, their size
 * and hash are checked, and only then is the file renamed into place.  A
 * reader therefore sees either nothing or the whole, verified file, and
 * several processes asking for the same entry transfer it once
 * (kaun_cache_get_or_fill).  See docs/cache.md for the layout rules.
 *
 * Every function is thread-safe on distinct objects; a writer accepts
 * kaun_cache_writer_pwrite from several threads at once.
 */
#ifndef KAUN_CACHE_H
#define KAUN_CACHE_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/io.h>
#include <kaun/storage.h> /* kaun_context */

KAUN_BEGIN_DECLS

/* ---- the root ------------------------------------------------------------------ */

/* Writes the cache root into `out` (`size` bytes): the context's config
 * `cache_dir` (ctx may be NULL), else $RAVEN_CACHE_ROOT, else
 * $XDG_CACHE_HOME/raven (only when XDG_CACHE_HOME is absolute, as the
 * XDG spec says), else $HOME/.cache/raven.  Empty variables count as
 * unset.  Nothing is created.  Plugins keep their files below it: the Hub
 * plugin in ROOT/huggingface (huggingface_hub's layout), the others in
 * ROOT/kaun/NAME.
 * Errors: KAUN_ECONFIG when none of these is set (the message lists
 * them); KAUN_EINVAL when the path does not fit in `size` bytes. */
KAUN_API int kaun_cache_root(const kaun_context *ctx, char *out, size_t size, kaun_error *err);

/* Writes ROOT/`relative` into `out` and creates that folder (and the
 * root) as kaun_cache_mkdirs does: kaun_cache_dir(ctx, "kaun/s3", ...).
 * `relative` must be non-empty, relative and free of "." and ".."
 * components.
 * Errors: those of kaun_cache_root and kaun_cache_mkdirs; KAUN_EINVAL for
 * a bad `relative` or a path longer than `size`. */
KAUN_API int kaun_cache_dir(const kaun_context *ctx, const char *relative, char *out, size_t size,
                            kaun_error *err);

/* Creates the folder `path` and every missing parent (mode 0755 before
 * the umask), like mkdir -p; an existing folder is fine.
 * Errors: KAUN_EIO (with the errno) naming the component that could not
 * be created, or that exists and is not a folder; KAUN_EINVAL for an
 * empty path; KAUN_ENOMEM. */
KAUN_API int kaun_cache_mkdirs(const char *path, kaun_error *err);

/* ---- the per-entry lock ----------------------------------------------------------- */

/* A held lock.  As with struct stat and stat(), the type is spelled with
 * its tag: the name kaun_cache_lock is the function below. */
struct kaun_cache_lock;

/* A wait of 10 minutes: a reasonable `timeout_ms` for big downloads. */
#define KAUN_CACHE_LOCK_WAIT_MS (10L * 60 * 1000)

/* Takes an exclusive flock(2) on `lock_path`, creating the file (0644)
 * and its folder.  The lock is released by kaun_cache_unlock, or by the
 * kernel when the holder dies, however it dies.  Two threads of one
 * process exclude each other too (each call opens its own file
 * description).  A child created by fork() shares the parent's lock; exec
 * does not carry it.  While held, the file says "pid PID on host HOST".
 * Waits at most `timeout_ms` milliseconds (0: one try; negative: no
 * bound), polling with short sleeps.
 * Errors: KAUN_ETRANSIENT on timeout, naming the lock file and its
 * holder's pid and host; KAUN_EIO naming the file when it cannot be
 * created or locked; KAUN_EINVAL; KAUN_ENOMEM. */
KAUN_API int kaun_cache_lock(const char *lock_path, long timeout_ms, struct kaun_cache_lock **out,
                             kaun_error *err);

/* As kaun_cache_lock, and the wait stops with KAUN_ECANCELED (naming the
 * lock file) within about 50 ms of `io` being canceled (may be NULL). */
KAUN_API int kaun_cache_lock_io(const char *lock_path, long timeout_ms, kaun_io *io,
                                struct kaun_cache_lock **out, kaun_error *err);

/* Releases the lock and frees it (the lock file stays: removing it would
 * let two processes lock two different files).  Accepts NULL. */
KAUN_API void kaun_cache_unlock(struct kaun_cache_lock *lock);

/* ---- writing an entry ---------------------------------------------------------------- */

/* The hash an entry is checked against. */
typedef enum kaun_cache_hash {
  KAUN_CACHE_HASH_NONE = 0,     /* no check */
  KAUN_CACHE_HASH_SHA256 = 1,   /* SHA-256 of the content (LFS oids, S3 checksums) */
  KAUN_CACHE_HASH_GIT_SHA1 = 2, /* git's blob id: SHA-1 of "blob SIZE\0" + content */
  KAUN_CACHE_HASH_MD5 = 3       /* MD5 of the content (an S3 ETag of a single-part upload) */
} kaun_cache_hash;

/* The size to pass when it is not known in advance. */
#define KAUN_CACHE_SIZE_UNKNOWN UINT64_MAX

typedef struct kaun_cache_writer kaun_cache_writer;

/* Starts writing the entry `final_path`: creates the temporary file
 * ".NAME.PID.RANDOM.incomplete" (O_EXCL, mode 0644 before the umask) in
 * final_path's folder, which must exist.  `expected_size` is checked at
 * commit (KAUN_CACHE_SIZE_UNKNOWN: not checked), and so is
 * `expected_hex` (lowercase or uppercase hex of `hash_kind`; NULL or
 * KAUN_CACHE_HASH_NONE: no hash check).  Bytes written are reported to
 * `io` (may be NULL) under the name `progress_uri` (NULL: final_path).
 * Errors: KAUN_EINVAL for a bad hash kind or hex; KAUN_ENOENT when the
 * folder does not exist; KAUN_EIO naming the temporary file;
 * KAUN_ENOMEM. */
KAUN_API int kaun_cache_writer_open(const char *final_path, uint64_t expected_size,
                                    kaun_cache_hash hash_kind, const char *expected_hex,
                                    kaun_io *io, const char *progress_uri, kaun_cache_writer **out,
                                    kaun_error *err);

/* Appends `len` bytes, hashing them as they go (a git SHA-1 streams only
 * when the size was given to kaun_cache_writer_open; otherwise the file
 * is read back once at commit).  Not to be called concurrently with any
 * other call on `w`.
 * Errors: KAUN_EIO naming the file (disk full...); KAUN_EIO when more
 * bytes arrive than the expected size; KAUN_ECANCELED when `io` says to
 * stop: then abort the writer and return that code. */
KAUN_API int kaun_cache_writer_write(kaun_cache_writer *w, const void *data, size_t len,
                                     kaun_error *err);

/* kaun_cache_writer_write in the shape of a kaun_http_write_fn (<kaun/http.h>):
 * give it as a request's write_fn, the writer as write_user, and a download
 * streams into the entry, hashed as it arrives.  Bytes must come in order
 * (KAUN_EIO otherwise). */
KAUN_API int kaun_cache_writer_sink(void *writer, uint64_t offset, const void *data, size_t len,
                                    kaun_error *err);

/* Writes `len` bytes at `offset`, for ranged downloads in parallel: may be
 * called from several threads at once.  The hash is computed by reading
 * the file back: as the bytes from the start on are written, by a thread
 * of the writer (when the size and hash were given and nothing was
 * written with kaun_cache_writer_write before), else at commit.  The size
 * checked is the file's, so a range never written inside the file is
 * caught by the hash only.
 * Errors: as kaun_cache_writer_write. */
KAUN_API int kaun_cache_writer_pwrite(kaun_cache_writer *w, uint64_t offset, const void *data,
                                      size_t len, kaun_error *err);

/* One part of a download that runs as parallel ranged requests: bytes
 * at `offset` of the part go to `offset` + offset of the entry. */
typedef struct kaun_cache_part {
  kaun_cache_writer *writer;
  uint64_t offset;
} kaun_cache_part;

/* kaun_cache_writer_pwrite in the shape of a kaun_http_write_fn: give a
 * ranged request of the parallel download write_fn = this, write_user = a
 * kaun_cache_part whose offset is the range's start; with
 * kaun_http_get_parts, whose offsets are the object's, one kaun_cache_part
 * at offset 0 for the whole download.  While the parts
 * arrive, a thread of the writer hashes the part of the file written from
 * its start on, so the commit's check only has the rest left to read. */
KAUN_API int kaun_cache_writer_part_sink(void *part, uint64_t offset, const void *data, size_t len,
                                         kaun_error *err);

/* The temporary file's descriptor, for callers that write it themselves
 * (sendfile, a decompressor).  Asking for it makes the commit hash the
 * file by reading it back; progress is then the caller's to report.  The
 * writer keeps ownership: never close it. */
KAUN_API int kaun_cache_writer_fd(kaun_cache_writer *w);

/* Sets the io the writer reports written bytes to (NULL: none), for a
 * fill function whose transfers report progress themselves (an HTTP
 * request with its own io): the bytes are then not counted twice. */
KAUN_API void kaun_cache_writer_set_io(kaun_cache_writer *w, kaun_io *io);

/* The temporary file's path (for messages).  Valid until the writer is
 * committed or aborted. */
KAUN_API const char *kaun_cache_writer_temp_path(const kaun_cache_writer *w);

/* Finishes the entry and frees `w`, whatever the outcome: fsyncs the
 * file, checks its size and hash, renames it to the final name (replacing
 * what was there) and fsyncs the folder.  On any failure the temporary is
 * removed and nothing appears under the final name.
 * Errors: KAUN_EIO naming the file with the expected and actual sizes, or
 * for a failed fsync/rename; KAUN_ECHECKSUM naming the file and both
 * hashes; KAUN_ECANCELED when `io` was canceled; KAUN_ENOMEM. */
KAUN_API int kaun_cache_writer_commit(kaun_cache_writer *w, kaun_error *err);

/* Removes the temporary file and frees `w`.  This is how a writer is
 * freed without a commit.  Accepts NULL. */
KAUN_API void kaun_cache_writer_abort(kaun_cache_writer *w);

/* ---- the usual flow ------------------------------------------------------------------ */

/* Fills the writer with the entry's bytes (kaun_cache_writer_write,
 * _pwrite or _fd).  Returns KAUN_OK, or a KAUN_E* code with `err` filled;
 * it must not commit or abort `w`. */
typedef int (*kaun_cache_fill_fn)(kaun_cache_writer *w, void *user, kaun_error *err);

/* Makes sure the entry `final_path` exists: if it does (with `size`
 * bytes, unless size is KAUN_CACHE_SIZE_UNKNOWN), returns at once with
 * nothing transferred.  Otherwise creates its folder, takes the lock
 * `lock_path` (waiting up to `lock_timeout_ms`, as kaun_cache_lock_io:
 * canceling `io` stops the wait),
 * checks again (another process may have filled it meanwhile), removes
 * this entry's stale temporaries (and other ones untouched for a day) from
 * the folder, opens a writer (size, kind, hex, io, progress_uri as in
 * kaun_cache_writer_open), calls `fill`, commits, and unlocks.  So any
 * number of processes or threads asking for one entry transfer it once,
 * and a partial file is never returned.
 * Errors: those of kaun_cache_lock (KAUN_ETRANSIENT on timeout), of the
 * writer (KAUN_EIO, KAUN_ECHECKSUM, KAUN_ECANCELED) and of `fill`. */
KAUN_API int kaun_cache_get_or_fill(const char *final_path, const char *lock_path, uint64_t size,
                                    kaun_cache_hash kind, const char *hex, long lock_timeout_ms,
                                    kaun_cache_fill_fn fill, void *user, kaun_io *io,
                                    const char *progress_uri, kaun_error *err);

/* ---- housekeeping ---------------------------------------------------------------------- */

/* Removes the temporaries (".NAME.PID.RANDOM.incomplete") in `folder`
 * whose process is gone (kill(PID, 0) fails with ESRCH) and whose last
 * change is at least `min_age_s` seconds old (0: any age).  With
 * `entry_name` set, only that entry's temporaries are considered.  A
 * process on another host sharing the folder cannot be checked: call this
 * under the entry's lock, or with a generous `min_age_s`.  `*removed`
 * (may be NULL) gets the number of files removed.
 * Errors: KAUN_ENOENT / KAUN_EIO naming the folder; a file that cannot be
 * removed is KAUN_EIO naming it (the others are still removed). */
KAUN_API int kaun_cache_clean_stale(const char *folder, const char *entry_name, long min_age_s,
                                    unsigned *removed, kaun_error *err);

KAUN_END_DECLS

#endif
