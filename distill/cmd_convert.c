#include "common/error.h"
#include "distill/commands.h"
/* Placeholder while the converters land (this session). */
int cmd_convert(int argc, char **argv) { return sd_fail(SD_ERR_INTERNAL, "convert is not built yet"); }
int cmd_inspect(int argc, char **argv) { return sd_fail(SD_ERR_INTERNAL, "inspect is not built yet"); }
