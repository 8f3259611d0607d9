/* Real files written by other tools (../shared/fixtures, read in place). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

typedef struct manifest_row {
  char file[256];
  char name[128];
  char sha[65];
} manifest_row;

/* Reads the per-tensor tables of MANIFEST.md: under "### `FILE`", rows
 * "| # | `name` | DTYPE | shape | offsets | `sha256` |". */
static size_t read_manifest(manifest_row *rows, size_t max) {
  FILE *f = fopen(fixture("MANIFEST.md"), "r");
  if (!f) return 0;
  char line[1024], file[256] = "";
  size_t n = 0;
  while (fgets(line, sizeof line, f) && n < max) {
    char *tick;
    if (strncmp(line, "### `", 5) == 0) {
      char *end = strchr(line + 5, '`');
      if (end) {
        *end = '\0';
        snprintf(file, sizeof file, "%.200s", line + 5);
      }
      continue;
    }
    if (line[0] != '|' || !file[0] || strstr(file, "invalid/")) continue;
    int idx;
    if (sscanf(line, "| %d |", &idx) != 1) continue;
    tick = strchr(line, '`');
    if (!tick) continue;
    char *tick2 = strchr(tick + 1, '`');
    char *last = strrchr(line, '`');
    char *sha_start = last ? last - 64 : NULL;
    if (!tick2 || !sha_start || sha_start <= tick2) continue;
    manifest_row *r = &rows[n++];
    snprintf(r->file, sizeof r->file, "%.200s", file);
    snprintf(r->name, sizeof r->name, "%.*s", (int)(tick2 - tick - 1), tick + 1);
    snprintf(r->sha, sizeof r->sha, "%.64s", sha_start);
  }
  fclose(f);
  return n;
}

static void test_manifest_hashes(void) {
  if (!fixtures_dir("manifest hashes")) return;
  static manifest_row rows[512];
  size_t n = read_manifest(rows, 512);
  CU_ASSERT_TRUE_FATAL(n >= 104); /* the manifest lists 104 tensors today */
  kaun_error err = KAUN_ERROR_INIT;
  size_t checked = 0;
  for (size_t i = 0; i < n; i++) {
    kaun_flat *flat;
    ASSERT_OK(kaun_checkpoint_load_flat(NULL, fixture(rows[i].file), 0, &flat, &err), err);
    const kaun_tensor *t = kaun_flat_find(flat, rows[i].name);
    CU_ASSERT_PTR_NOT_NULL(t);
    if (t) {
      char hex[KAUN_SHA256_HEX_SIZE];
      ASSERT_OK(kaun_sha256_hex(kaun_tensor_data(t), kaun_tensor_nbytes(t), hex, &err), err);
      if (strcmp(hex, rows[i].sha) != 0)
        fprintf(stderr, "\n  %s %s: sha256 %s, manifest says %s\n", rows[i].file, rows[i].name, hex,
                rows[i].sha);
      CU_ASSERT_STRING_EQUAL(hex, rows[i].sha);
      checked++;
    }
    kaun_flat_free(flat);
  }
  CU_ASSERT_EQUAL(checked, n);
}

static const char *valid_files[] = {"fluxml_torch_with_metadata.safetensors",
                                    "fluxml_numpy_arange.safetensors",
                                    "syoyo_f64_model.safetensors",
                                    "raven_bf16_bit_exact.safetensors",
                                    "raven_f16_bit_exact.safetensors",
                                    "candle_encodec_jfk_codes_i64.safetensors",
                                    "fluxml_sharded/model-00001-of-00006.safetensors",
                                    "fluxml_sharded/model-00002-of-00006.safetensors",
                                    "fluxml_sharded/model-00003-of-00006.safetensors",
                                    "fluxml_sharded/model-00004-of-00006.safetensors",
                                    "fluxml_sharded/model-00005-of-00006.safetensors",
                                    "fluxml_sharded/model-00006-of-00006.safetensors",
                                    NULL};

/* Loading each file and saving it again reproduces it byte for byte. */
static void test_resave_is_byte_identical(void) {
  if (!fixtures_dir("byte-identical re-save")) return;
  kaun_error err = KAUN_ERROR_INIT;
  for (const char **f = valid_files; *f; f++) {
    kaun_flat *flat;
    ASSERT_OK(kaun_checkpoint_load_flat(NULL, fixture(*f), 0, &flat, &err), err);
    const char *out = tmp_path("resaved.safetensors");
    ASSERT_OK(kaun_safetensors_save(NULL, out, flat, &err), err);
    size_t la, lb;
    unsigned char *a = read_all(fixture(*f), &la), *b = read_all(out, &lb);
    bool same = a && b && la == lb && memcmp(a, b, la) == 0;
    if (!same) fprintf(stderr, "\n  re-saving %s changed it (%zu vs %zu bytes)\n", *f, la, lb);
    CU_ASSERT_TRUE(same);
    free(a);
    free(b);
    kaun_flat_free(flat);
  }
}

static void test_invalid_fixture(void) {
  if (!fixtures_dir("invalid fixture")) return;
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  const char *p = fixture("invalid/abuse_attempt_1_header_len_1000.safetensors");
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, p, 0, &flat, &err), err, KAUN_EHEADER_LENGTH,
               "abuse_attempt_1_header_len_1000.safetensors");
  kaun_safetensors *st;
  ASSERT_FAILS(kaun_safetensors_read_file(p, &st, &err), err, KAUN_EHEADER_LENGTH, "1000");
}

static void test_sharded_fixture(void) {
  if (!fixtures_dir("sharded fixture")) return;
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *sharded, *single;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, fixture("fluxml_sharded"), 0, &sharded, &err), err);
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, fixture("fluxml_torch_with_metadata.safetensors"), 0,
                                      &single, &err),
            err);
  CU_ASSERT_EQUAL(kaun_flat_count(sharded), 36);
  CU_ASSERT_EQUAL(kaun_flat_count(single), 36);
  for (size_t i = 0; i < kaun_flat_count(single); i++) {
    const kaun_tensor *a = kaun_flat_tensor(single, i);
    const kaun_tensor *b = kaun_flat_find(sharded, kaun_flat_name(single, i));
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(kaun_tensor_nbytes(a), kaun_tensor_nbytes(b));
    CU_ASSERT_EQUAL(memcmp(kaun_tensor_data(a), kaun_tensor_data(b), kaun_tensor_nbytes(a)), 0);
  }
  CU_ASSERT_STRING_EQUAL(kaun_flat_metadata_get(sharded, "format"), "pt");
  kaun_flat_free(sharded);
  /* the index file itself, and a template load through it */
  kaun_ptree *like, *out;
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  const uint64_t s357[] = {3, 5, 7};
  kaun_tensor *t;
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F32, 3, s357, &t, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "bfloat16_357", t, &err), err);
  ASSERT_OK(kaun_checkpoint_load(NULL, fixture("fluxml_sharded/model.safetensors.index.json"), like,
                                 0, &out, &err),
            err);
  kaun_ptree *leaf;
  ASSERT_OK(kaun_ptree_get(out, "bfloat16_357", &leaf, &err), err);
  const kaun_tensor *bf = kaun_flat_find(single, "bfloat16_357");
  float want[105];
  ASSERT_OK(kaun_cast(KAUN_DTYPE_BF16, kaun_tensor_data(bf), KAUN_DTYPE_F32, want, 105, &err), err);
  CU_ASSERT_EQUAL(memcmp(kaun_tensor_data(kaun_ptree_tensor(leaf)), want, sizeof want), 0);
  kaun_ptree_free(like);
  kaun_ptree_free(out);
  kaun_flat_free(single);
}

static void test_bit_exact_values(void) {
  if (!fixtures_dir("bit-exact F16/BF16 values")) return;
  kaun_error err = KAUN_ERROR_INIT;
  const char *files[] = {"raven_f16_bit_exact.safetensors", "raven_bf16_bit_exact.safetensors"};
  for (int k = 0; k < 2; k++) {
    kaun_flat *flat;
    ASSERT_OK(kaun_checkpoint_load_flat(NULL, fixture(files[k]), 0, &flat, &err), err);
    kaun_tensor *f32;
    ASSERT_OK(kaun_tensor_cast(kaun_flat_tensor(flat, 0), KAUN_DTYPE_F32, &f32, &err), err);
    const float *v = kaun_tensor_data(f32);
    CU_ASSERT_EQUAL(v[0], 0.0f);
    CU_ASSERT_EQUAL(v[1], k == 0 ? 0x1p-24f : 0x1p-133f); /* smallest subnormal */
    CU_ASSERT_EQUAL(v[2], 1.0f);
    CU_ASSERT_TRUE(v[3] > 3e38f);
    CU_ASSERT_TRUE(v[4] != v[4]);
    kaun_tensor_free(f32);
    kaun_flat_free(flat);
  }
}

void register_fixture_tests(void) {
  static const unit_test tests[] = {
      {"every tensor matches MANIFEST.md's sha256", test_manifest_hashes},
      {"re-saving each fixture is byte-identical", test_resave_is_byte_identical},
      {"the invalid fixture is rejected", test_invalid_fixture},
      {"the sharded fixture equals the single file", test_sharded_fixture},
      {"F16/BF16 bit-exact values decode", test_bit_exact_values},
      {NULL, NULL}};
  add_suite("fixtures", tests);
}
