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
  int rc = check_run_all();
  remove_tmp_root();
  return rc;
}
