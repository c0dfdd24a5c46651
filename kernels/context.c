#include "kernels/context.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* OpenBLAS exports this; a build against another CBLAS defines SD_NO_OPENBLAS. */
#ifndef SD_NO_OPENBLAS
void openblas_set_num_threads(int n);
#endif

void sd_ctx_init_cpu(sd_ctx *ctx, int nthreads) {
    memset(ctx, 0, sizeof *ctx);
    ctx->backend = SD_DEV_CPU;
    if (nthreads <= 0) {
        const char *env = getenv("SSDISTILL_THREADS");
        nthreads = env ? atoi(env) : 0;
    }
    if (nthreads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = n > 0 ? (int)n : 1;
    }
    ctx->nthreads = nthreads;
    sd_rng_seed(&ctx->rng_state, 1337);
    sd_ctx_apply_threads(ctx);
}

void sd_ctx_apply_threads(const sd_ctx *ctx) {
#ifdef _OPENMP
    omp_set_num_threads(ctx->nthreads);
#endif
#ifndef SD_NO_OPENBLAS
    /* BLAS calls run single-threaded inside our OpenMP blocks (kernels/cpu/matmul.c). */
    openblas_set_num_threads(1);
#endif
}

/* splitmix64: small, fast, and the same on every platform. */
void sd_rng_seed(uint64_t *state, uint64_t seed) { *state = seed ^ 0x9e3779b97f4a7c15ull; }

uint64_t sd_rng_u64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float sd_rng_uniform(uint64_t *state) { return (float)(sd_rng_u64(state) >> 40) * (1.0f / 16777216.0f); }

float sd_rng_normal(uint64_t *state) {
    double u1 = ((double)(sd_rng_u64(state) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(sd_rng_u64(state) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
