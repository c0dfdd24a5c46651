/* The execution context: which backend runs the ops, how many CPU threads, the RNG.
 * Model code calls ops with a context; the context decides CPU or CUDA at run time. */
#ifndef SD_CONTEXT_H
#define SD_CONTEXT_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stdint.h>
#include "kernels/tensor.h"

typedef struct {
    sd_device backend;
    int nthreads;       /* CPU threads for OpenMP loops and BLAS; >= 1 */
    uint64_t rng_state; /* splitmix64 / xorshift state, see sd_rng_* */
    void *cuda;         /* CUDA backend state (stream, handles, workspace); NULL on CPU.
                           sd_ctx_init_cuda / sd_ctx_free_cuda: kernels/cuda/cuda_ctx.h */
} sd_ctx;

/* nthreads <= 0: the SSDISTILL_THREADS environment variable, else the number of cores. */
void sd_ctx_init_cpu(sd_ctx *ctx, int nthreads);
/* Applies ctx->nthreads to OpenMP; BLAS runs single-threaded inside OpenMP blocks. */
void sd_ctx_apply_threads(const sd_ctx *ctx);

/* Deterministic RNG (xoshiro-style): same seed, same stream on every machine. */
void sd_rng_seed(uint64_t *state, uint64_t seed);
uint64_t sd_rng_u64(uint64_t *state);
float sd_rng_uniform(uint64_t *state);  /* [0, 1) */
float sd_rng_normal(uint64_t *state);   /* N(0, 1), Box-Muller */

#ifdef __cplusplus
}
#endif

#endif
