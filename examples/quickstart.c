/* kaun quickstart: build a small model's params and optimizer state as two
 * parameter trees, save them, load them back with the params as a
 * template, and print a summary.  Used by README's first command.
 *
 *   quickstart DIR     writes DIR/params.safetensors and DIR/state.safetensors
 */
#include <kaun.h>

#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                                      \
  do {                                                                                   \
    if ((call) != KAUN_OK) {                                                             \
      fprintf(stderr, "quickstart: %s (%s)\n", err.message, kaun_status_name(err.code)); \
      exit(1);                                                                           \
    }                                                                                    \
  } while (0)

static kaun_error err = KAUN_ERROR_INIT;

/* A F32 tensor of the given shape filled with start, start+step, ... */
static kaun_tensor *ramp(size_t ndim, const uint64_t *shape, float start, float step) {
  kaun_tensor *t;
  CHECK(kaun_tensor_new(KAUN_DTYPE_F32, ndim, shape, &t, &err));
  float *v;
  CHECK(kaun_tensor_data_mut(t, (void **)&v, &err));
  for (uint64_t i = 0; i < kaun_tensor_numel(t); i++) v[i] = start + step * (float)i;
  return t;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: quickstart DIR\n");
    return 2;
  }
  char params_path[4096], state_path[4096];
  snprintf(params_path, sizeof params_path, "%s/params.safetensors", argv[1]);
  snprintf(state_path, sizeof state_path, "%s/state.safetensors", argv[1]);

  /* params: {embed: [8,4], layers: [{weight: [4,4], bias: [4]} x 2]} */
  const uint64_t embed[] = {8, 4}, square[] = {4, 4}, vec[] = {4};
  kaun_ptree *params, *state;
  CHECK(kaun_ptree_new_record(&params, &err));
  CHECK(kaun_ptree_set(params, "embed", ramp(2, embed, 0.0f, 0.25f), &err));
  for (int layer = 0; layer < 2; layer++) {
    char path[64];
    snprintf(path, sizeof path, "layers.%d.weight", layer);
    CHECK(kaun_ptree_set(params, path, ramp(2, square, (float)layer, 0.5f), &err));
    snprintf(path, sizeof path, "layers.%d.bias", layer);
    CHECK(kaun_ptree_set(params, path, ramp(1, vec, 0.0f, 0.0f), &err));
  }
  /* optimizer state: a step counter and one momentum buffer */
  const uint64_t scalar[] = {1};
  CHECK(kaun_ptree_new_record(&state, &err));
  kaun_tensor *step;
  const int64_t step_value = 1000;
  CHECK(
      kaun_tensor_new_copy(KAUN_DTYPE_I64, 1, scalar, &step_value, sizeof step_value, &step, &err));
  CHECK(kaun_ptree_set(state, "step", step, &err));
  CHECK(kaun_ptree_set(state, "momentum.embed", ramp(2, embed, 0.0f, 0.001f), &err));

  kaun_flat *meta;
  CHECK(kaun_flat_new(&meta, &err));
  CHECK(kaun_flat_set_metadata(meta, "format", "pt", &err));
  CHECK(kaun_flat_set_metadata(meta, "created_by", "kaun quickstart", &err));
  CHECK(kaun_checkpoint_save(NULL, params_path, params, meta, &err));
  CHECK(kaun_checkpoint_save(NULL, state_path, state, NULL, &err));
  printf("saved %s and %s\n", params_path, state_path);

  /* resume: the in-memory params act as the template (structure + dtypes) */
  kaun_ptree *loaded, *loaded_state;
  CHECK(kaun_checkpoint_load(NULL, params_path, params, 0, &loaded, &err));
  CHECK(kaun_checkpoint_load_tree(NULL, state_path, 0, &loaded_state, &err));

  kaun_ptree *w;
  CHECK(kaun_ptree_get(loaded, "layers.1.weight", &w, &err));
  const float *wv = kaun_tensor_data(kaun_ptree_tensor(w));
  kaun_ptree *s;
  CHECK(kaun_ptree_get(loaded_state, "step", &s, &err));
  const int64_t *sv = kaun_tensor_data(kaun_ptree_tensor(s));
  printf(
      "loaded params: %zu top-level entries, layers is a %s of %zu\n", kaun_ptree_count(loaded),
      kaun_ptree_kind_of(kaun_ptree_find(loaded, "layers")) == KAUN_PTREE_LIST ? "list" : "record",
      kaun_ptree_count(kaun_ptree_find(loaded, "layers")));
  printf("layers.1.weight[0..3] = %.1f %.1f %.1f %.1f (zero-copy view: %s)\n", wv[0], wv[1], wv[2],
         wv[3], kaun_tensor_is_view(kaun_ptree_tensor(w)) ? "yes" : "no");
  printf("state.step = %lld\n", (long long)sv[0]);

  kaun_ptree_free(loaded);
  kaun_ptree_free(loaded_state);
  kaun_ptree_free(params);
  kaun_ptree_free(state);
  kaun_flat_free(meta);
  return 0;
}
