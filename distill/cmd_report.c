/* ssdistill report RUN_DIR [--out FILE]
 * Renders RUN_DIR/metrics.jsonl (with eval.json and recipe.json when present) into
 * RUN_DIR/report.html (eval/report.h) and prints the path written. */
#include "common/error.h"
#include "distill/commands.h"
#include "eval/report.h"

#include <stdio.h>

int cmd_report(int argc, char **argv) {
    static const char *const with_value[] = {"--out", NULL};
    static const char *const flags[] = {NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, flags));
    const char *dir = sd_arg_positional(argc, argv, with_value, 0);
    const char *out = sd_arg_value(argc, argv, "--out");
    if (!dir || sd_arg_positional(argc, argv, with_value, 1))
        return sd_fail(SD_ERR_INPUT, "usage: ssdistill report RUN_DIR [--out FILE]");
    SD_TRY(sd_report_write(dir, out));
    if (out) printf("%s\n", out);
    else printf("%s/report.html\n", dir);
    return SD_OK;
}
