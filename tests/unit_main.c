/* The unit test runner: one CUnit suite per module. */
#include <CUnit/Basic.h>
#include <stdlib.h>

#include "unit.h"

void remove_tmp_root(void);

int main(void) {
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  register_tensor_tests();
  register_cast_tests();
  register_ptree_tests();
  register_json_tests();
  register_safetensors_tests();
  register_fixture_tests();
  register_checkpoint_tests();
  register_copy_tests();
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  unsigned run = CU_get_number_of_tests_run();
  CU_cleanup_registry();
  remove_tmp_root();
  if (run == 0) return 1;
  return failed ? 1 : 0;
}
