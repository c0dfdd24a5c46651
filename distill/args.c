#include "distill/commands.h"
#include "common/error.h"
#include "kernels/cuda/cuda_ctx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int in_list(const char *s, const char *const *list) {
    for (int i = 0; list && list[i]; i++)
        if (strcmp(s, list[i]) == 0) return 1;
    return 0;
}

const char *sd_arg_value(int argc, char **argv, const char *name) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return NULL;
}

int sd_arg_flag(int argc, char **argv, const char *name) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0) return 1;
    return 0;
}

int sd_arg_int(int argc, char **argv, const char *name, long def, long *out) {
    const char *v = sd_arg_value(argc, argv, name);
    *out = def;
    if (!v) return SD_OK;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end) return sd_fail(SD_ERR_INPUT, "%s: expected an integer, got '%s'", name, v);
    *out = x;
    return SD_OK;
}

int sd_arg_double(int argc, char **argv, const char *name, double def, double *out) {
    const char *v = sd_arg_value(argc, argv, name);
    *out = def;
    if (!v) return SD_OK;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end) return sd_fail(SD_ERR_INPUT, "%s: expected a number, got '%s'", name, v);
    *out = x;
    return SD_OK;
}

int sd_args_check(int argc, char **argv, const char *const *with_value, const char *const *flags) {
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0) continue;
        if (in_list(argv[i], with_value)) {
            if (i + 1 >= argc) return sd_fail(SD_ERR_INPUT, "%s: %s needs a value", argv[0], argv[i]);
            i++;
        } else if (!in_list(argv[i], flags)) {
            return sd_fail(SD_ERR_INPUT, "%s: unknown option %s", argv[0], argv[i]);
        }
    }
    return SD_OK;
}

const char *sd_arg_positional(int argc, char **argv, const char *const *with_value, int k) {
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) == 0) {
            if (in_list(argv[i], with_value)) i++;
            continue;
        }
        if (k-- == 0) return argv[i];
    }
    return NULL;
}

int sd_args_ctx(const char *device, int nthreads, sd_ctx *ctx) {
    sd_ctx_init_cpu(ctx, nthreads);
    if (!device || strcmp(device, "cpu") == 0) return SD_OK;
    if (strcmp(device, "cuda") != 0)
        return sd_fail(SD_ERR_INPUT, "--device: '%s' is not a device (cpu or cuda)", device);
#ifdef SD_HAVE_CUDA
    return sd_ctx_init_cuda(ctx, 0);
#else
    return sd_fail(SD_ERR_INPUT, "--device cuda: this build has no CUDA backend (rebuild with nvcc installed)");
#endif
}
