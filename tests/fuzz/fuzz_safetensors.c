/* libFuzzer target: any bytes as a SafeTensors file.  Parses, and when the
 * header is valid, re-serialises the tensors and parses the result again:
 * the writer's output must always be accepted by the reader, with every
 * name whole.
 * Build and run: scripts/dev.sh fuzz [SECONDS]. */
#include <stdlib.h>
#include <string.h>

#include "../../core/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void release_nothing(void *d, size_t s, void *c) {
  (void)d;
  (void)s;
  (void)c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  if (kaun_safetensors_parse(data, size, "fuzz", &st, &err) != KAUN_OK) {
    if (err.code >= 0 || !err.message[0]) abort(); /* every failure explains itself */
    return 0;
  }
  kaun_buffer *buf;
  kaun_flat *flat;
  if (kaun_buffer_wrap(data, size, release_nothing, NULL, &buf, &err) || kaun_flat_new(&flat, &err))
    abort();
  for (size_t i = 0; i < kaun_safetensors_count(st); i++) {
    kaun_safetensors_info in;
    kaun_safetensors_info_at(st, i, &in);
    kaun_tensor *t;
    if (kaun_tensor_new_view(in.dtype, in.ndim, in.shape, buf,
                             (size_t)(kaun_safetensors_data_start(st) + in.begin),
                             (size_t)(in.end - in.begin), &t, &err))
      abort();
    /* whole names: a name may hold NUL bytes ("\u0000") */
    if (kaun_flat_add_n(flat, in.name, kaun_safetensors_name_length(st, i), t, &err)) abort();
  }
  char *hdr;
  size_t hsize;
  uint64_t dsize;
  if (kaun_safetensors_serialize_header(flat, &hdr, &hsize, &dsize, NULL, &err)) abort();
  kaun_safetensors *again;
  if (kaun_safetensors_parse_header(hdr + 8, hsize - 8, hsize + dsize, "rewritten", &again, &err))
    abort();
  if (kaun_safetensors_count(again) != kaun_safetensors_count(st)) abort();
  for (size_t i = 0; i < kaun_safetensors_count(st); i++) {
    kaun_safetensors_info in;
    kaun_safetensors_info_at(st, i, &in);
    if (kaun_safetensors_find_n(again, in.name, kaun_safetensors_name_length(st, i)) < 0) abort();
  }
  kaun_safetensors_free(again);
  free(hdr);
  kaun_flat_free(flat);
  kaun_buffer_unref(buf);
  kaun_safetensors_free(st);
  return 0;
}
