/* What the op-level gpu tests share: a fatal check of an ssdistill call, and the start of
 * main (skip without a GPU, else a CPU and a CUDA context side by side). */
#ifndef SD_GPU_UTIL_H
#define SD_GPU_UTIL_H

#include <stdio.h>
#include <stdlib.h>

#include "common/error.h"
#include "kernels/context.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_ctx.h"

/* A failing call ends the test: what follows would only report its consequences. */
#define OK(expr)                                                                              \
    do {                                                                                      \
        int rc_ = (expr);                                                                     \
        if (rc_ != SD_OK) {                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #expr, sd_errmsg()); \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

/* 0 (after printing why) where there is no GPU: main then returns 77, ctest's skip.  Else 1
 * with cpu (all cores) and gpu (device 0) ready. */
static inline int gpu_test_begin(sd_ctx *cpu, sd_ctx *gpu) {
    if (sd_cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        return 0;
    }
    sd_ctx_init_cpu(cpu, 0);
    sd_ctx_apply_threads(cpu);
    OK(sd_ctx_init_cuda(gpu, 0));
    return 1;
}

#endif
