/* The shapes the fused CUDA kernels do not take natively, through the public entries, against
 * the CPU reference on the same inputs (kernels/cuda/ssd_attention_cuda.cu and stage1_cuda.cu
 * pad inside; DESIGN.md section 3):
 *   - SSD chunked forward and backward with P = N = 8 (the stories260K student; padded to 16),
 *     P 24 / N 40 (to 32 / 48), G = H and G = 1, T 100, chunk 64 and chunks that are not a
 *     multiple of 16 (50, 7: run as 48, 16), discrete (dt NULL) and standard, with initial
 *     and final states; and F32 x, y, B, C, dy, dx, dB, dC (converted to bf16 inside);
 *   - attention with hd 8 (GQA, S > T; padded to 64), hd 80 (to 128) and F32 q, k, v, out;
 *   - the stage-1 loss with hd 8 and N 8 (padded to 64), G = H and G = 1, GQA, with and
 *     without dt and D, and F32 q, k, B, C: loss, per-head norms and every gradient.
 * Inputs are rounded to bf16 on the host first (also for the F32 tensors), so both sides see
 * identical values.  Gradients start from random values on both sides (the backward adds).
 * Error of a tensor: max |gpu - cpu| / max |cpu|.  Tolerances (those of test_cuda_ssd.c,
 * test_cuda_attention / _ops.c and test_cuda_stage1.c; bf16 tensor-core operands):
 *   SSD y, dx, dB, dC, ddt, dloga 1e-2; final_state, dinit_state 5e-3; dD 1e-3;
 *   attention out 1e-2, lse 1e-3;
 *   stage 1 loss and per-head norms 2e-4; ddt, dloga, dD 1e-2; dB, dC 2e-2.
 * Exits 77 (skipped) where there is no GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_util.h"
#include "common/error.h"
#include "kernels/context.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_ctx.h"
#include "kernels/ops.h"
#include "kernels/ssd.h"
#include "kernels/stage1.h"
#include "kernels/tensor.h"

static sd_ctx g_cpu, g_gpu;
static uint64_t g_rng = 20261124;
static int g_fail, g_checks;

/* A host F32 tensor (the CPU side) and its device twin of dtype dt, same values (rounded to
 * bf16 first whatever dt is). */
typedef struct {
    sd_tensor h, d;
} pair;

static void mk(pair *p, sd_dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, float lo, float hi) {
    int64_t shape[4] = {d0, d1, d2, d3};
    OK(sd_tensor_alloc(&p->h, SD_F32, ndim, shape));
    float *x = p->h.data;
    for (int64_t i = 0; i < sd_numel(&p->h); i++)
        x[i] = sd_bf16_to_f32(sd_f32_to_bf16(lo + (hi - lo) * sd_rng_uniform(&g_rng)));
    OK(sd_tensor_to_cuda(&g_gpu, &p->d, &p->h, dt));
}

/* An fp32 tensor not rounded to bf16 (dt, loga, D, states: fp32 on both sides). */
static void mk32(pair *p, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, float lo, float hi) {
    int64_t shape[4] = {d0, d1, d2, d3};
    OK(sd_tensor_alloc(&p->h, SD_F32, ndim, shape));
    float *x = p->h.data;
    for (int64_t i = 0; i < sd_numel(&p->h); i++) x[i] = lo + (hi - lo) * sd_rng_uniform(&g_rng);
    OK(sd_tensor_to_cuda(&g_gpu, &p->d, &p->h, SD_F32));
}

static void drop(pair *p) {
    sd_tensor_free(&p->h);
    sd_tensor_free(&p->d);
}

static void count(int bad) {
    g_checks++;
    if (bad) g_fail++;
}

/* Compares the device tensor with the host reference; prints the error. */
static void cmp(const char *name, const pair *p, double tol) {
    sd_tensor got;
    OK(sd_cuda_sync(&g_gpu));
    OK(sd_tensor_to_host_f32(&g_gpu, &got, &p->d));
    const float *r = p->h.data, *g = got.data;
    double mr = 0.0, md = 0.0;
    int nan = 0;
    for (int64_t i = 0; i < sd_numel(&p->h); i++) {
        mr = fmax(mr, fabs(r[i]));
        double e = fabs((double)g[i] - r[i]);
        if (!(e == e)) nan = 1;
        md = fmax(md, e);
    }
    double err = md / (mr > 0 ? mr : 1.0);
    int bad = nan || !(err <= tol);
    printf("    %-26s %-4s max|err| %.3e  rel %.3e  (tol %.0e)%s\n", name, sd_dtype_name(p->d.dtype), md, err, tol,
           bad ? "  FAIL" : "");
    count(bad);
    sd_tensor_free(&got);
}

/* ---- SSD ------------------------------------------------------------------------------- */

static void test_ssd(int64_t P, int64_t N, int64_t H, int64_t G, int64_t chunk, int has_dt, sd_dtype act) {
    int64_t B = 2, T = 100;
    printf("  ssd P %lld N %lld H %lld G %lld T %lld chunk %lld %s, %s operands\n", (long long)P, (long long)N,
           (long long)H, (long long)G, (long long)T, (long long)chunk, has_dt ? "standard (dt)" : "discrete",
           sd_dtype_name(act));
    pair x, dt, loga, Bm, Cm, D, y, s0, s1, dy, dx, ddt, dl, dB, dC, dD, ds1, ds0;
    mk(&x, act, 4, B, T, H, P, -1, 1);
    mk32(&dt, 3, B, T, H, 0, 0.01f, 0.2f);
    mk32(&loga, 3, B, T, H, 0, -0.5f, -0.01f);
    mk(&Bm, act, 4, B, T, G, N, -1, 1);
    mk(&Cm, act, 4, B, T, G, N, -1, 1);
    mk32(&D, 1, H, 0, 0, 0, -1, 1);
    mk(&y, act, 4, B, T, H, P, 0, 0);
    mk32(&s0, 4, B, H, P, N, -0.5f, 0.5f);
    mk32(&s1, 4, B, H, P, N, 0, 0);
    mk(&dy, act, 4, B, T, H, P, -1, 1);
    mk(&dx, act, 4, B, T, H, P, -1, 1);
    mk32(&ddt, 3, B, T, H, 0, -1, 1);
    mk32(&dl, 3, B, T, H, 0, -1, 1);
    mk(&dB, act, 4, B, T, G, N, -1, 1);
    mk(&dC, act, 4, B, T, G, N, -1, 1);
    mk32(&dD, 1, H, 0, 0, 0, -1, 1);
    mk32(&ds1, 4, B, H, P, N, -0.1f, 0.1f);
    mk32(&ds0, 4, B, H, P, N, -1, 1);
    const sd_tensor *dth = has_dt ? &dt.h : NULL, *dtd = has_dt ? &dt.d : NULL;
    OK(sd_ssd_chunked(&g_cpu, &y.h, &x.h, dth, &loga.h, &Bm.h, &Cm.h, &D.h, chunk, &s0.h, &s1.h));
    OK(sd_ssd_chunked(&g_gpu, &y.d, &x.d, dtd, &loga.d, &Bm.d, &Cm.d, &D.d, chunk, &s0.d, &s1.d));
    cmp("y", &y, 1e-2);
    cmp("final_state", &s1, 5e-3);
    OK(sd_ssd_chunked_backward(&g_cpu, &dx.h, has_dt ? &ddt.h : NULL, &dl.h, &dB.h, &dC.h, &dD.h, &dy.h, &x.h, dth,
                               &loga.h, &Bm.h, &Cm.h, &D.h, chunk, &s0.h, &ds1.h, &ds0.h));
    OK(sd_ssd_chunked_backward(&g_gpu, &dx.d, has_dt ? &ddt.d : NULL, &dl.d, &dB.d, &dC.d, &dD.d, &dy.d, &x.d, dtd,
                               &loga.d, &Bm.d, &Cm.d, &D.d, chunk, &s0.d, &ds1.d, &ds0.d));
    cmp("dx (added)", &dx, 1e-2);
    if (has_dt) cmp("ddt (added)", &ddt, 1e-2);
    cmp("dloga (added)", &dl, 1e-2);
    cmp("dB (added)", &dB, 1e-2);
    cmp("dC (added)", &dC, 1e-2);
    cmp("dD (added)", &dD, 1e-3);
    cmp("dinit_state (added)", &ds0, 5e-3);
    /* no states, y only: the other path through the copies */
    OK(sd_ssd_chunked(&g_cpu, &y.h, &x.h, dth, &loga.h, &Bm.h, &Cm.h, NULL, chunk, NULL, NULL));
    OK(sd_ssd_chunked(&g_gpu, &y.d, &x.d, dtd, &loga.d, &Bm.d, &Cm.d, NULL, chunk, NULL, NULL));
    cmp("y (no D, no states)", &y, 1e-2);
    pair *all[] = {&x, &dt, &loga, &Bm, &Cm, &D, &y, &s0, &s1, &dy, &dx, &ddt, &dl, &dB, &dC, &dD, &ds1, &ds0};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) drop(all[i]);
}

/* ---- attention ---------------------------------------------------------------------------- */

static void test_attention(int64_t hd, int64_t Hq, int64_t Hkv, int64_t T, int64_t S, sd_dtype act) {
    printf("  attention hd %lld Hq %lld Hkv %lld T %lld S %lld, %s q k v out\n", (long long)hd, (long long)Hq,
           (long long)Hkv, (long long)T, (long long)S, sd_dtype_name(act));
    pair q, k, v, o, lse;
    mk(&q, act, 4, 2, T, Hq, hd, -1, 1);
    mk(&k, act, 4, 2, S, Hkv, hd, -1, 1);
    mk(&v, act, 4, 2, S, Hkv, hd, -1, 1);
    mk(&o, act, 4, 2, T, Hq, hd, 0, 0);
    mk32(&lse, 3, 2, Hq, T, 0, 0, 0);
    float scale = 1.0f / sqrtf((float)hd); /* of the real hd: the padded one must not leak in */
    OK(sd_attention(&g_cpu, &o.h, &q.h, &k.h, &v.h, scale, NULL, &lse.h));
    OK(sd_attention(&g_gpu, &o.d, &q.d, &k.d, &v.d, scale, NULL, &lse.d));
    cmp("out", &o, 1e-2);
    cmp("lse", &lse, 1e-3);
    drop(&q), drop(&k), drop(&v), drop(&o), drop(&lse);
}

/* ---- stage 1 ------------------------------------------------------------------------------ */

static void test_stage1(int64_t hd, int64_t N, int64_t H, int64_t Hkv, int64_t G, int has_dt, int has_D,
                        sd_dtype act) {
    int64_t B = 2, T = 100;
    printf("  stage 1 hd %lld N %lld H %lld Hkv %lld G %lld T %lld dt %d D %d, %s q k B C\n", (long long)hd,
           (long long)N, (long long)H, (long long)Hkv, (long long)G, (long long)T, has_dt, has_D, sd_dtype_name(act));
    pair q, k, dt, loga, Bm, Cm, D, ph, ddt, dl, dB, dC, dD;
    mk(&q, act, 4, B, T, H, hd, -2, 2);
    mk(&k, act, 4, B, T, Hkv, hd, -2, 2);
    mk32(&dt, 3, B, T, H, 0, 0.2f, 1.5f);
    mk32(&loga, 3, B, T, H, 0, -0.3f, -0.005f);
    /* C . B of std ~0.17 whatever N (U(-r, r) products: var (r^2 / 3)^2 each): M of the size
     * of the attention probabilities, as test_cuda_stage1.c at N 64 */
    float r = 0.45f * powf(8.0f / (float)N, 0.25f);
    mk(&Bm, act, 4, B, T, G, N, -r, r);
    mk(&Cm, act, 4, B, T, G, N, -r, r);
    mk32(&D, 1, H, 0, 0, 0, 0.3f, 1.0f);
    mk32(&ph, 2, B, H, 0, 0, 0, 0);
    mk32(&ddt, 3, B, T, H, 0, -0.01f, 0.01f);
    mk32(&dl, 3, B, T, H, 0, -0.01f, 0.01f);
    mk32(&dB, 4, B, T, G, N, -0.01f, 0.01f);
    mk32(&dC, 4, B, T, G, N, -0.01f, 0.01f);
    mk32(&dD, 1, H, 0, 0, 0, -0.01f, 0.01f);
    float scale = 1.0f / sqrtf((float)hd), lc = -1.0f, lg = -2.0f;
    OK(sd_stage1_loss(&g_cpu, &lc, &ph.h, &q.h, &k.h, scale, has_dt ? &dt.h : NULL, &loga.h, &Bm.h, &Cm.h,
                      has_D ? &D.h : NULL, has_dt ? &ddt.h : NULL, &dl.h, &dB.h, &dC.h, has_D ? &dD.h : NULL));
    OK(sd_stage1_loss(&g_gpu, &lg, &ph.d, &q.d, &k.d, scale, has_dt ? &dt.d : NULL, &loga.d, &Bm.d, &Cm.d,
                      has_D ? &D.d : NULL, has_dt ? &ddt.d : NULL, &dl.d, &dB.d, &dC.d, has_D ? &dD.d : NULL));
    double e = fabs((double)lg - lc) / fabs((double)lc);
    int bad = !(e < 2e-4);
    printf("    %-26s cpu %.7g gpu %.7g rel %.3e  (tol 2e-04)%s\n", "loss", lc, lg, e, bad ? "  FAIL" : "");
    count(bad);
    cmp("per-head norms", &ph, 2e-4);
    if (has_dt) cmp("ddt (added)", &ddt, 1e-2);
    cmp("dloga (added)", &dl, 1e-2);
    cmp("dB (added)", &dB, 2e-2);
    cmp("dC (added)", &dC, 2e-2);
    if (has_D) cmp("dD (added)", &dD, 1e-2);
    /* the loss alone (no gradients, no per-head norms) is the same number */
    float lg2 = -3.0f;
    OK(sd_stage1_loss(&g_gpu, &lg2, NULL, &q.d, &k.d, scale, has_dt ? &dt.d : NULL, &loga.d, &Bm.d, &Cm.d,
                      has_D ? &D.d : NULL, NULL, NULL, NULL, NULL, NULL));
    printf("    %-26s %s\n", "loss alone: same bits", lg2 == lg ? "ok" : "DIFFER  FAIL");
    count(lg2 != lg);
    pair *all[] = {&q, &k, &dt, &loga, &Bm, &Cm, &D, &ph, &ddt, &dl, &dB, &dC, &dD};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) drop(all[i]);
}

int main(void) {
    if (!gpu_test_begin(&g_cpu, &g_gpu)) return 77;
    printf("padded SSD (P, N to multiples of 16; chunk to the nearest allowed)\n");
    test_ssd(8, 8, 8, 8, 64, 0, SD_BF16);  /* stories260K: discrete, B/C per head */
    test_ssd(8, 8, 8, 1, 64, 1, SD_BF16);  /* B/C shared by all heads, dt */
    test_ssd(8, 8, 8, 8, 50, 1, SD_BF16);  /* chunk 50: runs as 48 */
    test_ssd(8, 8, 8, 1, 7, 0, SD_BF16);   /* chunk 7: runs as 16 */
    test_ssd(24, 40, 4, 2, 64, 1, SD_BF16); /* P 24 -> 32, N 40 -> 48 */
    test_ssd(8, 8, 8, 2, 64, 1, SD_F32);    /* F32 operands, padded too */
    test_ssd(32, 64, 4, 2, 64, 0, SD_F32);  /* F32 operands, no padding (conversion only) */
    printf("padded attention (hd to 64 or 128)\n");
    test_attention(8, 8, 4, 100, 100, SD_BF16); /* stories260K: hd 8, GQA */
    test_attention(8, 8, 4, 60, 100, SD_BF16);  /* S > T (a KV cache) */
    test_attention(80, 4, 2, 70, 70, SD_BF16);  /* hd 80 -> 128 */
    test_attention(64, 4, 1, 50, 50, SD_F32);   /* F32: conversion only */
    test_attention(16, 4, 2, 50, 50, SD_F32);   /* F32 and padded */
    printf("padded stage-1 loss (hd and N to 64 or 128)\n");
    test_stage1(8, 8, 8, 4, 8, 0, 1, SD_BF16); /* stories260K: discrete, GQA, B/C per head */
    test_stage1(8, 8, 8, 4, 1, 1, 1, SD_BF16); /* dt, B/C shared by all heads */
    test_stage1(8, 8, 8, 8, 2, 1, 0, SD_BF16); /* no D, 2 groups */
    test_stage1(96, 16, 4, 2, 4, 1, 1, SD_F32); /* hd 96 -> 128, N 16 -> 64, F32 operands */
    sd_ctx_free_cuda(&g_gpu);
    printf("cuda padded: %d checks, %d failed\n", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
