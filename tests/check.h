/* Assertions shared by the CUnit suites: an error is checked for its
 * code and for naming the thing at fault. */
#ifndef KAUN_TESTS_CHECK_H
#define KAUN_TESTS_CHECK_H

#include <CUnit/CUnit.h>
#include <kaun/error.h>
#include <stdio.h>
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

#endif
