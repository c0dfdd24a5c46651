/* The CUDA op layer's two roofline anchors: cuBLASLt bf16 GEMM throughput (bf16 operands and
 * output, fp32 accumulation, through sd_cuda_gemm as sd_linear uses it) at 8192^3 and at
 * M 4096, N 2048, K 8192 (the shape of one projection of a batch of 4096 tokens), and the
 * effective bandwidth of two memory-bound ops through their public entries, RMSNorm and
 * SwiGLU on bf16 [16384, 2048].  One JSON object per line, with the fraction of the H200's
 * dense bf16 peak (777 TFLOP/s, the figure the project uses) or of its 4.28 TB/s.
 *
 * Timing: 3 warm-up runs, then REPS runs between two stream synchronisations, wall clock;
 * bytes = each tensor read or written once (RMSNorm: x, out, w; SwiGLU: gate, up, out).
 * usage: bench_cuda_ops.  Without a GPU it prints a skip line and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/error.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_ctx.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"

#define REPS 20
#define PEAK_TFLOPS 777.0
#define PEAK_TBS 4.28

static sd_ctx g_ctx;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void die(void) {
    fprintf(stderr, "bench_cuda_ops: %s\n", sd_errmsg());
    exit(2);
}

#define TRY(x)                   \
    do {                         \
        if ((x) != SD_OK) die(); \
    } while (0)

/* A device tensor of small random bf16 values (uploaded from the host). */
static void rand_bf16(sd_tensor *t, int ndim, int64_t d0, int64_t d1) {
    int64_t shape[2] = {d0, d1};
    sd_tensor h;
    TRY(sd_tensor_alloc(&h, SD_F32, ndim, shape));
    uint64_t s = 7;
    for (int64_t i = 0; i < sd_numel(&h); i++) ((float *)h.data)[i] = sd_rng_uniform(&s) - 0.5f;
    TRY(sd_tensor_to_cuda(&g_ctx, t, &h, SD_BF16));
    sd_tensor_free(&h);
}

static void bench_gemm(int64_t M, int64_t N, int64_t K) {
    sd_tensor a, b, c;
    rand_bf16(&a, 2, M, K);
    rand_bf16(&b, 2, N, K);
    int64_t cs[2] = {M, N};
    TRY(sd_tensor_alloc_cuda(&c, SD_BF16, 2, cs));
    for (int i = 0; i < 3; i++) TRY(sd_linear(&g_ctx, &c, &a, &b, NULL));
    TRY(sd_cuda_sync(&g_ctx));
    double t0 = now();
    for (int i = 0; i < REPS; i++) TRY(sd_linear(&g_ctx, &c, &a, &b, NULL));
    TRY(sd_cuda_sync(&g_ctx));
    double ms = (now() - t0) * 1e3 / REPS, tf = 2.0 * (double)M * N * K / (ms * 1e-3) / 1e12;
    printf("{\"bench\": \"cuda_gemm_bf16\", \"M\": %lld, \"N\": %lld, \"K\": %lld, \"ms\": %.4f, \"tflops\": %.1f, "
           "\"peak_tflops\": %.0f, \"fraction_of_peak\": %.3f}\n",
           (long long)M, (long long)N, (long long)K, ms, tf, PEAK_TFLOPS, tf / PEAK_TFLOPS);
    sd_tensor_free(&a), sd_tensor_free(&b), sd_tensor_free(&c);
}

static void bench_eltwise(int64_t R, int64_t D) {
    sd_tensor x, u, w, o;
    rand_bf16(&x, 2, R, D);
    rand_bf16(&u, 2, R, D);
    rand_bf16(&w, 1, D, 0);
    int64_t sh[2] = {R, D};
    TRY(sd_tensor_alloc_cuda(&o, SD_BF16, 2, sh));
    for (int op = 0; op < 2; op++) {
        for (int i = 0; i < 3; i++)
            TRY(op ? sd_swiglu(&g_ctx, &o, &x, &u) : sd_rmsnorm(&g_ctx, &o, &x, &w, 1e-5f));
        TRY(sd_cuda_sync(&g_ctx));
        double t0 = now();
        for (int i = 0; i < REPS; i++)
            TRY(op ? sd_swiglu(&g_ctx, &o, &x, &u) : sd_rmsnorm(&g_ctx, &o, &x, &w, 1e-5f));
        TRY(sd_cuda_sync(&g_ctx));
        double ms = (now() - t0) * 1e3 / REPS;
        double bytes = op ? 3.0 * 2 * R * D : 2.0 * 2 * R * D + 2.0 * D;
        double tbs = bytes / (ms * 1e-3) / 1e12;
        printf("{\"bench\": \"cuda_%s_bf16\", \"rows\": %lld, \"d\": %lld, \"ms\": %.4f, \"bytes\": %.0f, "
               "\"tb_per_s\": %.3f, \"peak_tb_per_s\": %.2f, \"fraction_of_peak\": %.3f}\n",
               op ? "swiglu" : "rmsnorm", (long long)R, (long long)D, ms, bytes, tbs, PEAK_TBS, tbs / PEAK_TBS);
    }
    sd_tensor_free(&x), sd_tensor_free(&u), sd_tensor_free(&w), sd_tensor_free(&o);
}

int main(void) {
    if (sd_cuda_device_count() == 0) {
        printf("{\"bench\": \"cuda_ops\", \"skipped\": \"no CUDA device\"}\n");
        return 0;
    }
    TRY(sd_ctx_init_cuda(&g_ctx, 0));
    bench_gemm(8192, 8192, 8192);
    bench_gemm(4096, 2048, 8192);
    bench_eltwise(16384, 2048);
    sd_ctx_free_cuda(&g_ctx);
    return 0;
}
