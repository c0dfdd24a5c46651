#include "common/error.h"
#include "distill/commands.h"
/* Placeholder while the teacher lands (this session). */
int cmd_generate(int argc, char **argv) { return sd_fail(SD_ERR_INTERNAL, "generate is not built yet"); }
