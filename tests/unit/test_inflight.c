/* placeholder, replaced below */
#include "shm/inflight.h"
#include "unit.h"
static const unit_test_t tests[] = {{NULL, NULL}};
int main(void) { return unit_run("inflight", tests); }
