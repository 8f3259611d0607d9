/* Assertions shared by the CUnit suites: an error is checked for its
 * code and for naming the thing at fault. */
#ifndef KAUN_TESTS_CHECK_H
#define KAUN_TESTS_CHECK_H

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <kaun/error.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Asserts that `call` failed with `want`, in its return value and in the
 * error record, and that the message contains `needle`. */
#define ASSERT_FAILS(call, err, want, needle)                                                  \
  do {                                                                                         \
    kaun_error_clear(&(err));                                                                  \
    int rc_ = (call);                                                                          \
    CU_ASSERT_EQUAL(rc_, (want));                                                              \
    CU_ASSERT_EQUAL((err).code, (want));                                                       \
    if (rc_ != (want) || !strstr((err).message, (needle))) {                                   \
      fprintf(stderr, "\n  %s:%d: got %s \"%s\", wanted %s with \"%s\"\n", __FILE__, __LINE__, \
              kaun_status_name(rc_), (err).message, kaun_status_name(want), (needle));         \
      CU_FAIL("wrong error, or a message that does not name the thing at fault");              \
    }                                                                                          \
  } while (0)

/* Asserts success, printing the error otherwise; stops the test. */
#define ASSERT_OK(call, err)                                                                   \
  do {                                                                                         \
    int rc_ = (call);                                                                          \
    if (rc_ != KAUN_OK) fprintf(stderr, "\n  %s:%d: %s\n", __FILE__, __LINE__, (err).message); \
    CU_ASSERT_FATAL(rc_ == KAUN_OK);                                                           \
  } while (0)

/* Runs every registered suite verbosely and frees the registry: 0 when
 * tests ran and none failed, else 1 (a suite whose setup failed — a test
 * server that did not start — counts as a failure, and so does running no
 * test at all). */
/* "ROOT/NAME", NAME from a printf format, in a ring of 64 buffers (a test
 * holds at most that many paths at once).  A test file with a temporary
 * folder tmp_root says: #define tmp(...) check_path(tmp_root, __VA_ARGS__) */
static inline const char *check_path(const char *root, const char *fmt, ...) {
  static char buf[64][8400];
  static int k;
  char name[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  char *b = buf[k++ % 64];
  snprintf(b, sizeof buf[0], "%s/%s", root, name);
  return b;
}

static inline int check_run_all(void) {
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  unsigned run = CU_get_number_of_tests_run();
  if (CU_get_run_summary()->nSuitesFailed) failed++;
  CU_cleanup_registry();
  return run && !failed ? 0 : 1;
}

/* Removes a test's temporary folder (rm -rf), saying so when it cannot. */
static inline void check_remove_tree(const char *dir) {
  char cmd[8400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

#endif
