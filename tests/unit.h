/* Shared helpers of the CUnit suites. */
#ifndef KAUN_TESTS_UNIT_H
#define KAUN_TESTS_UNIT_H

#include <CUnit/CUnit.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/internal.h"

void register_tensor_tests(void);
void register_cast_tests(void);
void register_ptree_tests(void);
void register_json_tests(void);
void register_safetensors_tests(void);
void register_fixture_tests(void);
void register_checkpoint_tests(void);
void register_copy_tests(void);

/* A suite named `name` with the given tests (NULL-terminated pairs). */
typedef struct unit_test {
  const char *name;
  void (*fn)(void);
} unit_test;
void add_suite(const char *name, const unit_test *tests);

/* The shared fixtures folder, or NULL (after saying the test is skipped). */
const char *fixtures_dir(const char *test);
/* "<fixtures>/safetensors/<rel>" in a static buffer. */
const char *fixture(const char *rel);

/* A fresh path under this run's temporary directory (static buffer, one
 * of 8 rotating). */
const char *tmp_path(const char *name);

/* Reads a whole file; caller frees. */
unsigned char *read_all(const char *path, size_t *len);
void write_all(const char *path, const void *data, size_t len);

/* A SafeTensors file from a header text and `data_len` data bytes
 * (filled with i & 0xff); caller frees. */
unsigned char *make_st(const char *header, size_t data_len, size_t *out_len);

#include "check.h"

#endif
