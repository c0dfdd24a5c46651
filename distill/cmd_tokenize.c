#include "common/error.h"
#include "distill/commands.h"
/* Placeholder while the tokenizer lands (this session). */
int cmd_encode(int argc, char **argv) { return sd_fail(SD_ERR_INTERNAL, "encode is not built yet"); }
int cmd_tokenize(int argc, char **argv) { return sd_fail(SD_ERR_INTERNAL, "tokenize is not built yet"); }
