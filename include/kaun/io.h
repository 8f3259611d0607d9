/* kaun — progress, cancellation and transfer hints for one operation.
 *
 * A kaun_io travels with a load, a fetch, a put or a copy: the core
 * creates one per operation (from the context's progress callback, or the
 * one given to that call) and hands it to the plugin with each read,
 * fetch and put.  Plugins and the HTTP layer report bytes as they arrive
 * with kaun_io_add(); when it returns KAUN_ECANCELED they stop the
 * transfer, clean up (no partial file under a final name) and return
 * KAUN_ECANCELED.  Every function accepts a NULL io and then does nothing
 * (kaun_io_add returns KAUN_OK).
 *
 * Thread-safe: reads running on many threads report to one io; the
 * callback is called by one thread at a time.
 */
#ifndef KAUN_IO_H
#define KAUN_IO_H

#include <kaun/common.h>
#include <kaun/error.h>

KAUN_BEGIN_DECLS

/* What a progress callback sees.  `object_*` is about the object named by
 * `uri` (total 0 = unknown); `done`/`total` add up every object of the
 * operation.  Fields may be added at the end; check struct_size. */
typedef struct kaun_progress {
  size_t struct_size;
  const char *uri;
  uint64_t object_done;
  uint64_t object_total;
  uint64_t done;
  uint64_t total;
} kaun_progress;

/* Called as bytes arrive (at most every 64 KiB of progress per object,
 * and once at the end of each object).  Return nonzero to cancel the
 * operation: it then fails with KAUN_ECANCELED and leaves nothing
 * behind. */
typedef int (*kaun_progress_fn)(const kaun_progress *progress, void *user);

typedef struct kaun_io kaun_io;

/* A new I/O context (fn may be NULL: cancellation and hints only). */
KAUN_API int kaun_io_new(kaun_progress_fn fn, void *user, kaun_io **out, kaun_error *err);
/* Frees it.  Accepts NULL. */
KAUN_API void kaun_io_free(kaun_io *io);

/* Asks the operation to stop, from any thread (a signal handler may not
 * call it; set a flag and return nonzero from the callback instead). */
KAUN_API void kaun_io_cancel(kaun_io *io);
/* Nonzero once canceled (by kaun_io_cancel or the callback). */
KAUN_API int kaun_io_canceled(const kaun_io *io);

/* Adds `bytes` to the operation's expected total (0 = unknown so far). */
KAUN_API void kaun_io_expect(kaun_io *io, uint64_t bytes);

/* Reports `bytes` more of the object `uri` (whose size is
 * `object_total`, 0 when unknown).  Reports go to the callback at most
 * every 64 KiB of an object, at its end, and at the operation's end; a
 * call with `bytes` 0 reports what is pending (call it when a transfer
 * ends).  Returns KAUN_OK, or KAUN_ECANCELED when the operation is
 * canceled: stop and return that code. */
KAUN_API int kaun_io_add(kaun_io *io, const char *uri, uint64_t object_total, uint64_t bytes);

/* Transfer hints for ranged reads.  Plugins read them to size their
 * requests; the core sets them from the plugin's descriptor, then the
 * context's overrides.  0 = no preference. */
KAUN_API uint64_t kaun_io_chunk_size(const kaun_io *io);
KAUN_API unsigned kaun_io_inflight(const kaun_io *io);
KAUN_API void kaun_io_set_hints(kaun_io *io, uint64_t chunk_size, unsigned inflight);

KAUN_END_DECLS

#endif
