#include "common/error.h"
#include "distill/commands.h"
int cmd_export(int argc, char **argv) { return sd_fail(SD_ERR_INPUT, "todo"); }
