/* Progress, cancellation and transfer hints for one operation. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define REPORT_STEP ((uint64_t)64 << 10)

typedef struct io_object {
  char *uri;
  uint64_t done, total, reported;
} io_object;

struct kaun_io {
  kaun_progress_fn fn;
  void *user;
  atomic_int canceled;
  pthread_mutex_t lock; /* guards everything below, and serialises fn */
  uint64_t done, total;
  io_object *objects;
  size_t nobjects;
  uint64_t chunk_size;
  unsigned inflight;
};

int kaun_io_new(kaun_progress_fn fn, void *user, kaun_io **out, kaun_error *err) {
  *out = NULL;
  kaun_io *io = calloc(1, sizeof *io);
  if (!io) return kaun__error_nomem(err, "creating an I/O context");
  io->fn = fn;
  io->user = user;
  atomic_init(&io->canceled, 0);
  pthread_mutex_init(&io->lock, NULL);
  *out = io;
  return KAUN_OK;
}

void kaun_io_free(kaun_io *io) {
  if (!io) return;
  for (size_t i = 0; i < io->nobjects; i++) free(io->objects[i].uri);
  free(io->objects);
  pthread_mutex_destroy(&io->lock);
  free(io);
}

void kaun_io_cancel(kaun_io *io) {
  if (io) atomic_store(&io->canceled, 1);
}

int kaun_io_canceled(const kaun_io *io) { return io ? atomic_load(&((kaun_io *)io)->canceled) : 0; }

void kaun_io_expect(kaun_io *io, uint64_t bytes) {
  if (!io) return;
  pthread_mutex_lock(&io->lock);
  io->total += bytes;
  pthread_mutex_unlock(&io->lock);
}

static io_object *find_object(kaun_io *io, const char *uri) {
  for (size_t i = 0; i < io->nobjects; i++)
    if (strcmp(io->objects[i].uri, uri) == 0) return &io->objects[i];
  io_object *grown = realloc(io->objects, (io->nobjects + 1) * sizeof *grown);
  if (!grown) return NULL;
  io->objects = grown;
  io_object *o = &io->objects[io->nobjects];
  memset(o, 0, sizeof *o);
  if (!(o->uri = strdup(uri))) return NULL;
  io->nobjects++;
  return o;
}

int kaun_io_add(kaun_io *io, const char *uri, uint64_t object_total, uint64_t bytes) {
  if (!io) return KAUN_OK;
  if (atomic_load(&io->canceled)) return KAUN_ECANCELED;
  if (!io->fn) return KAUN_OK;
  pthread_mutex_lock(&io->lock);
  io->done += bytes;
  if (io->done > io->total && io->total) io->total = io->done;
  io_object *o = find_object(io, uri ? uri : "");
  int stop = 0;
  if (o) {
    o->done += bytes;
    if (object_total) o->total = object_total;
    /* the end of the object, or of the operation: reported once */
    bool finished = (o->total && o->done >= o->total && o->reported < o->total) ||
                    (io->total && io->done >= io->total && o->reported < o->done) ||
                    (bytes == 0 && o->reported < o->done); /* a flush */
    if (finished || o->done - o->reported >= REPORT_STEP || (o->reported == 0 && o->done == 0)) {
      o->reported = o->done;
      kaun_progress p = {sizeof p, o->uri, o->done, o->total, io->done, io->total};
      stop = io->fn(&p, io->user);
    }
  }
  pthread_mutex_unlock(&io->lock);
  if (stop) atomic_store(&io->canceled, 1);
  return atomic_load(&io->canceled) ? KAUN_ECANCELED : KAUN_OK;
}

uint64_t kaun_io_chunk_size(const kaun_io *io) { return io ? io->chunk_size : 0; }
unsigned kaun_io_inflight(const kaun_io *io) { return io ? io->inflight : 0; }

void kaun_io_set_hints(kaun_io *io, uint64_t chunk_size, unsigned inflight) {
  if (!io) return;
  io->chunk_size = chunk_size;
  io->inflight = inflight;
}
