/* ssdistill distill RECIPE [--out DIR] [--resume] [--stop-after STEPS] [--device cpu|cuda]
 *
 * Runs the recipe's stages and writes the run directory (distill/run.h).  --stop-after stops
 * after that many steps in this process, exactly as SIGINT would (checkpoint, exit 0): what
 * the resume test and a time-boxed session use.  --device overrides the recipe's "device". */
#include "common/error.h"
#include "distill/commands.h"
#include "distill/run.h"

#include <stdio.h>
#include <string.h>

int cmd_distill(int argc, char **argv) {
    static const char *const with_value[] = {"--out", "--stop-after", "--device", NULL};
    static const char *const flags[] = {"--resume", NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, flags));
    const char *recipe = sd_arg_positional(argc, argv, with_value, 0);
    if (!recipe)
        return sd_fail(SD_ERR_INPUT, "usage: ssdistill distill RECIPE [--out DIR] [--resume] [--stop-after STEPS] "
                                     "[--device cpu|cuda]");
    long stop_after;
    SD_TRY(sd_arg_int(argc, argv, "--stop-after", 0, &stop_after));
    if (stop_after < 0) return sd_fail(SD_ERR_INPUT, "--stop-after: expected a number of steps >= 0");
    char dir[4096];
    const char *out = sd_arg_value(argc, argv, "--out");
    if (!out) {
        /* runs/<recipe file name without .json> */
        const char *base = strrchr(recipe, '/') ? strrchr(recipe, '/') + 1 : recipe;
        int n = (int)strcspn(base, ".");
        snprintf(dir, sizeof dir, "runs/%.*s", n, base);
        out = dir;
    }
    sd_run run;
    SD_TRY(sd_run_open_on(&run, recipe, out, sd_arg_flag(argc, argv, "--resume"), sd_arg_value(argc, argv, "--device")));
    run.stop_after = stop_after;
    int stopped = 0, rc = sd_run_all(&run, &stopped);
    if (rc == SD_OK && !stopped) fprintf(stderr, "done: %s/student.h5, %s/report.html\n", out, out);
    sd_run_close(&run);
    return rc;
}
