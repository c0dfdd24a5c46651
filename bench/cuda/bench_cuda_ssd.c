/* The CUDA chunked SSD (kernels/cuda/ssd_cuda.h) at the two issue shapes: forward and
 * forward + backward, timed with CUDA events (5 warm-up runs, median of 25).  One JSON object
 * per line and pass, with the PyTorch + mamba_ssm Triton anchor measured on the same H200,
 * the target, and two floors:
 *
 *   floor_bytes_ms = bytes / 4.28 TB/s, bytes = the tensors each pass must read and write once
 *       fwd: x, B, C (bf16) + loga (+ dt) (fp32) read, y (bf16) written;
 *       bwd: x, dy, B, C, loga (+ dt) read, dx, dB, dC (bf16) + dloga (+ ddt) written
 *   floor_flops_ms = flops / 777 TFLOP/s, the matmul flops of the chunked algorithm, causal
 *       halves counted once, the products with B and C once per group (the heads of a group
 *       share them), per chunk of Q steps and per batch element:
 *       fwd: G Q^2 N [C B^T] + H (Q^2 P [M x] + 4 Q P N [chunk state, state to output])
 *       bwd: 3 G Q^2 N [C B^T again, (sum_h Gm) B, (sum_h Gm)^T C]
 *            + H (2 Q^2 P [dY x^T, W^T dY] + 10 Q P N [state recompute, its gradient, dY S0,
 *                 B dS1^T, x dS1])
 *   floor_ms = the larger of the two.
 * usage: bench_cuda_ssd.  Without a GPU it prints a skip line and exits 0.  A benchmark,
 * never a test.  Per-kernel times: SD_SSD_PROF=1 bench_cuda_ssd 2>prof.txt, then e.g.
 *   awk '$1=="ssd_prof"{k=$3" "$2; s[k]+=$4; n[k]++} END{for(k in s) print k, s[k]/n[k]}' prof.txt
 * (each launch timed alone, synchronising; SD_SSD_OWN_BWD=1 selects the former G == H backward). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/ssd_cuda.h"
#include "kernels/tensor.h"

#define WARMUP 5
#define REPS 25

typedef struct {
    const char *mixer;
    int64_t B, T, H, P, G, N, chunk;
    int has_dt;
    double anchor_fwd, anchor_all, target_fwd, target_all;
} shape;

typedef struct {
    void *x, *dy, *Bm, *Cm, *y, *dx, *dB, *dC;
    float *dt, *loga, *D, *ddt, *dloga, *dD;
    void *ws;
    size_t wsb;
} bufs;

static uint64_t g_rng = 12345;

static float uni(float lo, float hi) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return lo + (hi - lo) * (float)(g_rng >> 40) * (1.0f / 16777216.0f);
}

/* n random bf16 values in [lo, hi) on the device. */
static int up_bf16(void **d, size_t n, float lo, float hi, const char *what) {
    uint16_t *h = sd_malloc(n * sizeof *h, what);
    if (!h) return SD_ERR_SYS;
    for (size_t i = 0; i < n; i++) h[i] = sd_f32_to_bf16(uni(lo, hi));
    int rc = sd_cuda_alloc(d, n * 2, what);
    if (rc == SD_OK) rc = sd_cuda_upload(*d, h, n * 2);
    free(h);
    return rc;
}

static int up_f32(float **d, const float *h, size_t n, const char *what) {
    SD_TRY(sd_cuda_alloc((void **)d, n * 4, what));
    return sd_cuda_upload(*d, h, n * 4);
}

static int bufs_make(bufs *b, const shape *s) {
    memset(b, 0, sizeof *b);
    size_t nx = (size_t)(s->B * s->T * s->H * s->P), nh = (size_t)(s->B * s->T * s->H);
    size_t nbc = (size_t)(s->B * s->T * s->G * s->N);
    float sc = 1.0f / 8.0f;
    SD_TRY(up_bf16(&b->x, nx, -1, 1, "x"));
    SD_TRY(up_bf16(&b->dy, nx, -1, 1, "dy"));
    SD_TRY(up_bf16(&b->Bm, nbc, -sc, sc, "B"));
    SD_TRY(up_bf16(&b->Cm, nbc, -sc, sc, "C"));
    SD_TRY(sd_cuda_alloc(&b->y, nx * 2, "y"));
    SD_TRY(sd_cuda_alloc(&b->dx, nx * 2, "dx"));
    SD_TRY(sd_cuda_alloc(&b->dB, nbc * 2, "dB"));
    SD_TRY(sd_cuda_alloc(&b->dC, nbc * 2, "dC"));
    float *dt = sd_malloc(nh * 4, "dt"), *loga = sd_malloc(nh * 4, "loga"), *D = sd_malloc((size_t)s->H * 4, "D");
    if (!dt || !loga || !D) return SD_ERR_SYS;
    for (int64_t h = 0; h < s->H; h++) D[h] = 1.0f;
    for (size_t i = 0; i < nh; i++) {
        dt[i] = uni(0.001f, 0.1f);
        loga[i] = s->has_dt ? -dt[i] * uni(1.0f, 16.0f) : uni(-0.7f, -0.01f); /* dt A ; -softplus(a) */
    }
    int rc = up_f32(&b->dt, dt, nh, "dt");
    if (rc == SD_OK) rc = up_f32(&b->loga, loga, nh, "loga");
    if (rc == SD_OK) rc = up_f32(&b->D, D, (size_t)s->H, "D");
    free(dt), free(loga), free(D);
    SD_TRY(rc);
    SD_TRY(sd_cuda_alloc((void **)&b->ddt, nh * 4, "ddt"));
    SD_TRY(sd_cuda_alloc((void **)&b->dloga, nh * 4, "dloga"));
    SD_TRY(sd_cuda_alloc((void **)&b->dD, (size_t)s->H * 4, "dD"));
    sd_ssd_cuda_dims d = {s->B, s->T, s->H, s->P, s->G, s->N, s->chunk};
    b->wsb = sd_ssd_cuda_workspace_bytes(&d);
    return sd_cuda_alloc(&b->ws, b->wsb, "SSD workspace");
}

static void bufs_free(bufs *b) {
    void *all[] = {b->x, b->dy, b->Bm, b->Cm, b->y, b->dx, b->dB, b->dC, b->dt, b->loga,
                   b->D, b->ddt, b->dloga, b->dD, b->ws};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_cuda_free(all[i]);
}

static int run_once(const shape *s, bufs *b, int with_bwd) {
    sd_ssd_cuda_dims d = {s->B, s->T, s->H, s->P, s->G, s->N, s->chunk};
    const float *dt = s->has_dt ? b->dt : NULL;
    SD_TRY(sd_ssd_cuda_forward(&d, b->y, b->x, dt, b->loga, b->Bm, b->Cm, b->D, NULL, NULL, b->ws,
                               b->wsb, 0));
    if (with_bwd)
        SD_TRY(sd_ssd_cuda_backward(&d, b->dx, s->has_dt ? b->ddt : NULL, b->dloga, b->dB, b->dC,
                                    b->dD, b->dy, b->x, dt, b->loga, b->Bm, b->Cm, b->D, NULL,
                                    NULL, NULL, b->ws, b->wsb, 0));
    return SD_OK;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median over REPS runs of one pass, in ms. */
static int time_pass(const shape *s, bufs *b, int with_bwd, double *ms) {
    cudaEvent_t e0, e1;
    float t[REPS];
    SD_CUDA_TRY(cudaEventCreate(&e0));
    SD_CUDA_TRY(cudaEventCreate(&e1));
    for (int r = 0; r < WARMUP; r++) SD_TRY(run_once(s, b, with_bwd));
    SD_CUDA_TRY(cudaDeviceSynchronize());
    for (int r = 0; r < REPS; r++) {
        SD_CUDA_TRY(cudaEventRecord(e0, 0));
        SD_TRY(run_once(s, b, with_bwd));
        SD_CUDA_TRY(cudaEventRecord(e1, 0));
        SD_CUDA_TRY(cudaEventSynchronize(e1));
        SD_CUDA_TRY(cudaEventElapsedTime(&t[r], e0, e1));
    }
    SD_CUDA_TRY(cudaEventDestroy(e0));
    SD_CUDA_TRY(cudaEventDestroy(e1));
    qsort(t, REPS, sizeof t[0], cmp_float);
    *ms = t[REPS / 2];
    return SD_OK;
}

/* Bytes and FLOPs of one pass (see the header comment). */
static void floors(const shape *s, int with_bwd, double *bytes, double *flops) {
    double B = (double)s->B, T = (double)s->T, H = (double)s->H, P = (double)s->P;
    double G = (double)s->G, N = (double)s->N, Q = (double)s->chunk;
    double nch = (double)((s->T + s->chunk - 1) / s->chunk);
    double x = B * T * H * P * 2, bc = B * T * G * N * 2, sc = B * T * H * 4 * (s->has_dt ? 2 : 1);
    double fwd_b = 2 * x + 2 * bc + sc, bwd_b = 3 * x + 4 * bc + 2 * sc;
    double fwd_f = B * nch * (G * Q * Q * N + H * (Q * Q * P + 4 * Q * P * N));
    double bwd_f = B * nch * (3 * G * Q * Q * N + H * (2 * Q * Q * P + 10 * Q * P * N));
    *bytes = fwd_b + (with_bwd ? bwd_b : 0);
    *flops = fwd_f + (with_bwd ? bwd_f : 0);
}

int main(void) {
    if (sd_cuda_device_count() == 0) {
        printf("{\"bench\": \"cuda_ssd\", \"skipped\": \"no CUDA device\"}\n");
        return 0;
    }
    static const shape shapes[] = {
        {"discrete", 8, 2048, 32, 64, 32, 64, 128, 0, 0.613, 3.21, 0.20, 1.0},
        {"standard", 8, 2048, 64, 64, 1, 128, 256, 1, 0.827, 3.64, 0.30, 1.2},
    };
    /* SD_SSD_BENCH_CHUNKS="64 128": each shape again with those chunk lengths (the result is
     * the same SSD; which chunk the kernels run fastest at is what the op layer could pick). */
    shape all[16];
    size_t n = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) all[n++] = shapes[i];
    const char *extra = getenv("SD_SSD_BENCH_CHUNKS");
    for (size_t i = 0; extra && i < sizeof shapes / sizeof shapes[0]; i++) {
        char *end;
        for (const char *p = extra; n < 16; p = end) {
            long c = strtol(p, &end, 10);
            if (end == p) break;
            if (c < 16 || c > 256 || c % 16) continue;
            all[n] = shapes[i];
            all[n++].chunk = c;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const shape *s = &all[i];
        bufs b;
        if (bufs_make(&b, s) != SD_OK) {
            fprintf(stderr, "bench_cuda_ssd: %s\n", sd_errmsg());
            return 1;
        }
        for (int with_bwd = 0; with_bwd < 2; with_bwd++) {
            double ms = 0, bytes, flops;
            if (time_pass(s, &b, with_bwd, &ms) != SD_OK) {
                fprintf(stderr, "bench_cuda_ssd: %s\n", sd_errmsg());
                return 1;
            }
            floors(s, with_bwd, &bytes, &flops);
            double fb = bytes / 4.28e12 * 1e3, ff = flops / 777e12 * 1e3;
            printf("{\"bench\": \"cuda_ssd\", \"mixer\": \"%s\", \"pass\": \"%s\", \"B\": %lld, "
                   "\"T\": %lld, \"H\": %lld, \"P\": %lld, \"G\": %lld, \"N\": %lld, \"chunk\": %lld, "
                   "\"ms\": %.4f, \"anchor_ms\": %.3f, \"target_ms\": %.2f, \"floor_bytes_ms\": %.4f, "
                   "\"floor_flops_ms\": %.4f, \"floor_ms\": %.4f, \"bytes\": %.0f, \"flops\": %.0f, "
                   "\"workspace_bytes\": %zu}\n",
                   s->mixer, with_bwd ? "fwd+bwd" : "fwd", (long long)s->B, (long long)s->T,
                   (long long)s->H, (long long)s->P, (long long)s->G, (long long)s->N,
                   (long long)s->chunk, ms, with_bwd ? s->anchor_all : s->anchor_fwd,
                   with_bwd ? s->target_all : s->target_fwd, fb, ff, fb > ff ? fb : ff, bytes, flops,
                   b.wsb);
        }
        bufs_free(&b);
    }
    return 0;
}
