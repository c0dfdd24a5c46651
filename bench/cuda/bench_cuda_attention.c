/* CUDA attention kernels at the shapes of the issue, one JSON object per line:
 *   flash forward   B 8, H 32 (MHA), T 2048, head dim 64      anchor: PyTorch SDPA flash 0.377 ms
 *   fused stage-1   B 4, T 2048 and B 1, T 8192; H 32, hd 64, N 64, G 32, dt NULL (discrete
 *                   mixer), loss + gradient           anchor: PyTorch materialised 64 ms / 16.5 GiB
 *                                                      and 255 ms / 64 GiB
 * Time: cudaEvent around each call, 3 warm-up calls, the median of 20 (the attention backward,
 * an op-layer call on the context's stream: host time up to sd_cuda_sync).
 * Memory: extra_bytes is what the op needs besides its inputs and outputs (the workspace;
 * nothing else is allocated); total_bytes is the device memory the whole call uses (inputs,
 * outputs, workspace), measured with cudaMemGetInfo before and after allocating them.
 * Floor (H200): max(bytes / 4.28e12 B/s, flops / 777e12 FLOP/s) with
 *   flash:   flops = 4 B H hd T(T+1)/2 (QK^T and PV over the causal triangle),
 *            bytes = 2 (q + k + v + out) + 4 lse = 2 * 4 B T H hd + 4 B H T;
 *   stage-1: flops = 2 B H T(T+1)/2 (hd + 3 N) (QK^T, CB^T, and the two products for dB, dC,
 *            each once over the triangle: the least any method computes),
 *            bytes = 2 (q + k + B + C) + 4 loga + 4 * 2 (dB, dC read and written) + 4 * 2 dloga.
 *   attention backward (sd_attention_backward on CUDA, kernels/cuda/attention_bwd_cuda.cu: fp32
 *            on CUDA cores, not tensor cores), BF16 tensors: tflops counts the FlashAttention-2
 *            backward's 5 products over the triangle, 10 B H hd T(T+1)/2, against the H200's
 *            fp32 CUDA-core peak (about 67e12 FLOP/s), no anchor.
 * Prints a message and exits 0 where there is no GPU.  A benchmark, never a test. */
#include "common/error.h"
#include "kernels/attention.h"
#include "kernels/tensor.h"
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_ctx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WARMUP 3
#define REPS 20
#define HBM_BPS 4.28e12
#define PEAK_FLOPS 777e12

#define TRY(call)                                                        \
    do {                                                                 \
        if ((call) != SD_OK) {                                           \
            fprintf(stderr, "bench_cuda_attention: %s\n", sd_errmsg());  \
            exit(1);                                                     \
        }                                                                \
    } while (0)

static uint64_t g_rng = 20261124;

/* n bf16 values uniform in [lo, hi), uploaded to a new device buffer. */
static void *dev_bf16(size_t n, float lo, float hi) {
    uint16_t *h = malloc(n * 2);
    if (!h) exit(1);
    for (size_t i = 0; i < n; i++) {
        g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
        float u = (float)(g_rng >> 40) * (1.0f / 16777216.0f);
        h[i] = sd_f32_to_bf16(lo + (hi - lo) * u);
    }
    void *d;
    TRY(sd_cuda_alloc(&d, n * 2, "bench input"));
    TRY(sd_cuda_upload(d, h, n * 2));
    free(h);
    return d;
}

static void *dev_f32(size_t n, float lo, float hi) {
    float *h = malloc(n * 4);
    if (!h) exit(1);
    for (size_t i = 0; i < n; i++) {
        g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = lo + (hi - lo) * (float)(g_rng >> 40) * (1.0f / 16777216.0f);
    }
    void *d;
    TRY(sd_cuda_alloc(&d, n * 4, "bench input"));
    TRY(sd_cuda_upload(d, h, n * 4));
    free(h);
    return d;
}

static size_t used_bytes(void) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
    return total_b - free_b;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

typedef int (*op_fn)(void *arg);

/* Median milliseconds of REPS calls after WARMUP. */
static float time_op(op_fn f, void *arg) {
    cudaEvent_t e0, e1;
    float ms[REPS];
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        fprintf(stderr, "bench_cuda_attention: cudaEventCreate failed\n");
        exit(1);
    }
    for (int i = 0; i < WARMUP; i++) TRY(f(arg));
    if (cudaDeviceSynchronize() != cudaSuccess) {
        fprintf(stderr, "bench_cuda_attention: warm-up failed: %s\n", cudaGetErrorString(cudaGetLastError()));
        exit(1);
    }
    for (int i = 0; i < REPS; i++) {
        cudaError_t e = cudaEventRecord(e0, 0);
        if (e == cudaSuccess && f(arg) != SD_OK) {
            fprintf(stderr, "bench_cuda_attention: %s\n", sd_errmsg());
            exit(1);
        }
        if (e == cudaSuccess) e = cudaEventRecord(e1, 0);
        if (e == cudaSuccess) e = cudaEventSynchronize(e1);
        if (e == cudaSuccess) e = cudaEventElapsedTime(&ms[i], e0, e1);
        if (e != cudaSuccess) {
            fprintf(stderr, "bench_cuda_attention: timed run failed: %s\n", cudaGetErrorString(e));
            exit(1);
        }
    }
    if (cudaEventDestroy(e0) != cudaSuccess || cudaEventDestroy(e1) != cudaSuccess) exit(1);
    qsort(ms, REPS, sizeof ms[0], cmp_float);
    return ms[REPS / 2];
}

typedef struct {
    void *q, *k, *v, *out;
    float *lse;
    int B, T, H, Hkv, hd;
} flash_arg;

static int flash_call(void *p) {
    flash_arg *a = p;
    return sd_cuda_flash_attention(a->out, a->lse, a->q, a->k, a->v, a->B, a->T, a->T, a->H, a->Hkv, a->hd,
                                   0.125f, 0);
}

static void bench_flash(int B, int T, int H, int Hkv, int hd, double anchor_ms, double target_ms) {
    size_t before = used_bytes();
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * Hkv * hd;
    flash_arg a = {dev_bf16(nq, -2, 2), dev_bf16(nk, -2, 2), dev_bf16(nk, -1, 1), NULL, NULL, B, T, H, Hkv, hd};
    TRY(sd_cuda_alloc(&a.out, nq * 2, "out"));
    TRY(sd_cuda_alloc((void **)&a.lse, (size_t)B * H * T * 4, "lse"));
    size_t total = used_bytes() - before;
    float ms = time_op(flash_call, &a);
    double flops = 4.0 * B * H * hd * (double)T * (T + 1) / 2.0;
    double bytes = 2.0 * (2.0 * nq + 2.0 * nk) + 4.0 * B * H * T;
    double floor_ms = 1e3 * (bytes / HBM_BPS > flops / PEAK_FLOPS ? bytes / HBM_BPS : flops / PEAK_FLOPS);
    printf("{\"bench\": \"flash_attention_fwd\", \"B\": %d, \"T\": %d, \"H\": %d, \"Hkv\": %d, \"hd\": %d, "
           "\"ms\": %.4f, \"tflops\": %.1f, \"target_ms\": %.3f, \"anchor_ms\": %.3f, "
           "\"anchor\": \"PyTorch SDPA flash\", \"floor_ms\": %.4f, "
           "\"floor\": \"max(bytes/4.28e12, flops/777e12), flops = 4 B H hd T(T+1)/2, bytes = 2(q+k+v+out) + 4 lse\", "
           "\"extra_bytes\": 0, \"total_bytes\": %zu, \"kernel\": \"%s\"}\n",
           B, T, H, Hkv, hd, ms, flops / (ms * 1e-3) / 1e12, target_ms, anchor_ms, floor_ms, total,
           sd_cuda_flash_attention_wgmma() ? "wgmma" : "mma.sync");
    fflush(stdout);
    sd_cuda_free(a.q), sd_cuda_free(a.k), sd_cuda_free(a.v), sd_cuda_free(a.out), sd_cuda_free(a.lse);
}

typedef struct {
    sd_cuda_stage1_args s;
    void *ws;
    size_t ws_bytes;
} stage1_arg;

static int stage1_call(void *p) {
    stage1_arg *a = p;
    return sd_cuda_stage1_loss(&a->s, a->ws, a->ws_bytes, 0);
}

static void bench_stage1(int B, int T, int H, int hd, int N, double target_ms, double target_gib,
                         double anchor_ms, double anchor_gib) {
    size_t before = used_bytes();
    int G = H, Hkv = H;
    size_t nq = (size_t)B * T * H * hd, nbc = (size_t)B * T * G * N, nh = (size_t)B * T * H;
    stage1_arg a;
    memset(&a, 0, sizeof a);
    sd_cuda_stage1_args *s = &a.s;
    s->B = B, s->T = T, s->H = H, s->Hkv = Hkv, s->hd = hd, s->G = G, s->N = N, s->scale = 0.125f;
    s->q = dev_bf16(nq, -2, 2), s->k = dev_bf16(nq, -2, 2);
    s->Bm = dev_bf16(nbc, -0.25f, 0.25f), s->Cm = dev_bf16(nbc, -0.25f, 0.25f);
    s->loga = dev_f32(nh, -0.3f, -0.005f), s->D = dev_f32((size_t)H, 0.3f, 1.0f);
    s->dt = NULL, s->ddt = NULL; /* the discrete mixer */
    TRY(sd_cuda_alloc((void **)&s->loss, 4, "loss"));
    TRY(sd_cuda_alloc((void **)&s->dloga, nh * 4, "dloga"));
    TRY(sd_cuda_alloc((void **)&s->dB, nbc * 4, "dB"));
    TRY(sd_cuda_alloc((void **)&s->dC, nbc * 4, "dC"));
    TRY(sd_cuda_alloc((void **)&s->dD, (size_t)H * 4, "dD"));
    a.ws_bytes = sd_cuda_stage1_workspace(B, T, H, N);
    TRY(sd_cuda_alloc(&a.ws, a.ws_bytes, "stage-1 workspace"));
    size_t total = used_bytes() - before;
    float ms = time_op(stage1_call, &a);
    double tri = (double)T * (T + 1) / 2.0;
    double flops = 2.0 * B * H * tri * (hd + 3.0 * N);
    double bytes = 2.0 * (2.0 * nq + 2.0 * nbc) + 4.0 * nh + 8.0 * 2.0 * nbc + 8.0 * nh;
    double floor_ms = 1e3 * (bytes / HBM_BPS > flops / PEAK_FLOPS ? bytes / HBM_BPS : flops / PEAK_FLOPS);
    printf("{\"bench\": \"stage1_fused_loss_grad\", \"B\": %d, \"T\": %d, \"H\": %d, \"hd\": %d, \"N\": %d, "
           "\"dt\": null, \"ms\": %.3f, \"target_ms\": %.1f, \"anchor_ms\": %.1f, "
           "\"anchor\": \"PyTorch materialised A and M\", \"floor_ms\": %.4f, "
           "\"floor\": \"max(bytes/4.28e12, flops/777e12), flops = 2 B H T(T+1)/2 (hd + 3N), "
           "bytes = 2(q+k+B+C) + 4 loga + 8(dB+dC) + 8 dloga\", "
           "\"extra_bytes\": %zu, \"extra_gib\": %.3f, \"total_bytes\": %zu, \"total_gib\": %.3f, "
           "\"target_gib\": %.2f, \"anchor_gib\": %.1f}\n",
           B, T, H, hd, N, ms, target_ms, anchor_ms, floor_ms, a.ws_bytes, a.ws_bytes / 1073741824.0, total,
           total / 1073741824.0, target_gib, anchor_gib);
    fflush(stdout);

    /* Where the time goes: the lse pass alone (flash forward, lse only, into the workspace),
     * and the loss without any gradient (lse, row pass, finish; no column pass). */
    flash_arg fa = {(void *)s->q, (void *)s->k, NULL, NULL, (float *)a.ws, B, T, H, Hkv, hd};
    float ms_lse = time_op(flash_call, &fa);
    sd_cuda_stage1_args full = a.s;
    s->dloga = NULL, s->dB = NULL, s->dC = NULL, s->dD = NULL;
    float ms_loss = time_op(stage1_call, &a);
    printf("{\"bench\": \"stage1_parts\", \"B\": %d, \"T\": %d, \"lse_pass_ms\": %.3f, "
           "\"loss_only_ms\": %.3f, \"column_pass_and_grad_finish_ms\": %.3f}\n",
           B, T, ms_lse, ms_loss, ms - ms_loss);
    fflush(stdout);
    a.s = full;

    sd_cuda_free((void *)s->q), sd_cuda_free((void *)s->k), sd_cuda_free((void *)s->Bm);
    sd_cuda_free((void *)s->Cm), sd_cuda_free((void *)s->loga), sd_cuda_free((void *)s->D);
    sd_cuda_free(s->loss), sd_cuda_free(s->dloga), sd_cuda_free(s->dB), sd_cuda_free(s->dC);
    sd_cuda_free(s->dD), sd_cuda_free(a.ws);
}

typedef struct {
    sd_ctx *ctx;
    sd_tensor q, k, v, dout, dq, dk, dv;
    float scale;
} bwd_arg;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Median milliseconds of an op-layer call: it queues on the context's own stream, which
 * events on the legacy stream would not see, so each call is timed on the host up to
 * sd_cuda_sync (the launch overhead, microseconds, is inside). */
static float time_ctx_op(sd_ctx *ctx, op_fn f, void *arg) {
    float ms[REPS];
    for (int i = 0; i < WARMUP; i++) TRY(f(arg));
    TRY(sd_cuda_sync(ctx));
    for (int i = 0; i < REPS; i++) {
        double t0 = now_ms();
        TRY(f(arg));
        TRY(sd_cuda_sync(ctx));
        ms[i] = (float)(now_ms() - t0);
    }
    qsort(ms, REPS, sizeof ms[0], cmp_float);
    return ms[REPS / 2];
}

static int bwd_call(void *p) {
    bwd_arg *a = p;
    return sd_attention_backward(a->ctx, &a->dq, &a->dk, &a->dv, &a->dout, &a->q, &a->k, &a->v, a->scale, NULL);
}

static sd_tensor bf16_tensor(void *data, int64_t B, int64_t T, int64_t H, int64_t hd) {
    int64_t shape[4] = {B, T, H, hd};
    sd_tensor t = sd_tensor_view(SD_BF16, data, 4, shape);
    t.device = SD_DEV_CUDA;
    return t;
}

static void bench_attn_bwd(int B, int T, int H, int Hkv, int hd) {
    sd_ctx ctx;
    TRY(sd_ctx_init_cuda(&ctx, 0));
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * Hkv * hd;
    bwd_arg a = {&ctx,
                 bf16_tensor(dev_bf16(nq, -2, 2), B, T, H, hd),
                 bf16_tensor(dev_bf16(nk, -2, 2), B, T, Hkv, hd),
                 bf16_tensor(dev_bf16(nk, -1, 1), B, T, Hkv, hd),
                 bf16_tensor(dev_bf16(nq, -1, 1), B, T, H, hd),
                 bf16_tensor(dev_bf16(nq, 0, 0), B, T, H, hd),
                 bf16_tensor(dev_bf16(nk, 0, 0), B, T, Hkv, hd),
                 bf16_tensor(dev_bf16(nk, 0, 0), B, T, Hkv, hd),
                 1.0f / 8.0f};
    float ms = time_ctx_op(&ctx, bwd_call, &a);
    double flops = 10.0 * B * H * hd * (double)T * (T + 1) / 2.0;
    printf("{\"bench\": \"attention_bwd\", \"B\": %d, \"T\": %d, \"H\": %d, \"Hkv\": %d, \"hd\": %d, "
           "\"ms\": %.3f, \"tflops\": %.2f, \"fp32_core_floor_ms\": %.3f, "
           "\"floor\": \"flops / 67e12, flops = 10 B H hd T(T+1)/2 (FA2 backward, fp32 CUDA cores)\"}\n",
           B, T, H, Hkv, hd, ms, flops / (ms * 1e-3) / 1e12, 1e3 * flops / 67e12);
    fflush(stdout);
    sd_tensor *all[] = {&a.q, &a.k, &a.v, &a.dout, &a.dq, &a.dk, &a.dv};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sd_cuda_free(all[i]->data);
    sd_ctx_free_cuda(&ctx);
}

int main(void) {
    if (sd_cuda_device_count() == 0) {
        printf("bench_cuda_attention: no CUDA device, nothing to measure\n");
        return 0;
    }
    bench_flash(8, 2048, 32, 32, 64, 0.377, 0.35);
    bench_flash(8, 2048, 32, 8, 64, 0.377, 0.35);  /* GQA 4: same FLOPs, less K/V traffic */
    bench_flash(4, 2048, 32, 32, 128, 0.0, 0.0);   /* head dim 128: no anchor, for reference */
    bench_stage1(4, 2048, 32, 64, 64, 4.0, 0.5, 64.0, 16.5);
    bench_stage1(1, 8192, 32, 64, 64, 16.0, 1.0, 255.0, 64.0);
    bench_attn_bwd(1, 2048, 32, 8, 64);  /* one hybrid layer of a Llama-3.2-1B-like teacher */
    bench_attn_bwd(4, 2048, 32, 8, 64);
    return 0;
}
