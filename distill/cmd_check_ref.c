#include "common/error.h"
#include "distill/commands.h"
/* Placeholder while the teacher lands (this session). */
int cmd_check_ref(int argc, char **argv) { return sd_fail(SD_ERR_INTERNAL, "check-ref is not built yet"); }
