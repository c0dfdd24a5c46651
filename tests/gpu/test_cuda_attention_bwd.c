/* The CUDA attention backward (kernels/cuda/attention_bwd_cuda.cu) through the public entry
 * sd_attention_backward, against the CPU reference on the same inputs: q, k, v, dout rounded
 * to bf16 on the host first (also for F32 device tensors), so both sides see identical values;
 * dq, dk, dv start from the same random values on both sides (the backward adds).
 * Cases: GQA with hd 8 and T not a multiple of anything; a KV prefix (S > T) with GQA 4 at
 * hd 64; no GQA at hd 128; hd 256 (the largest); T = 1.  Each with all device tensors BF16 and
 * all F32, the first also with BF16 inputs and F32 gradients.
 * Error of a tensor: max |gpu - cpu| / max |cpu|; tolerance by the gradient's device dtype:
 * 1e-2 for BF16 (rounded on the store), 1e-4 for F32 (fp32 end to end, only the order of the
 * sums differs); for F32 gradients also the added part alone (result minus the start) to
 * 1e-4 of its own maximum, so a large start cannot hide a wrong gradient.
 * Also: a second run is bit-identical to the first (no atomics), the gradients asked for one
 * at a time (the others NULL) are bit-identical too, probs != NULL and hd > 256 are refused.
 * Exits 77 (skipped) where there is no GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_util.h"
#include "common/error.h"
#include "kernels/attention.h"
#include "kernels/context.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_ctx.h"
#include "kernels/tensor.h"

static sd_ctx g_cpu, g_gpu;
static uint64_t g_rng = 20261124;
static int g_fail, g_checks;
static double g_worst_bf16, g_worst_f32;

static void count(int bad) {
    g_checks++;
    if (bad) g_fail++;
}

/* A host F32 tensor (the CPU side), the start values it was made with (init), and a device
 * twin of dtype dt holding the same values.  Values are rounded to bf16 whatever dt is. */
typedef struct {
    sd_tensor h, d, init;
    sd_dtype dt;
} pair;

static void mk(pair *p, sd_dtype dt, int64_t d0, int64_t d1, int64_t d2, int64_t d3, float lo, float hi) {
    int64_t shape[4] = {d0, d1, d2, d3};
    OK(sd_tensor_alloc(&p->h, SD_F32, 4, shape));
    OK(sd_tensor_alloc(&p->init, SD_F32, 4, shape));
    float *x = p->h.data;
    for (int64_t i = 0; i < sd_numel(&p->h); i++)
        x[i] = sd_bf16_to_f32(sd_f32_to_bf16(lo + (hi - lo) * sd_rng_uniform(&g_rng)));
    memcpy(p->init.data, p->h.data, (size_t)sd_numel(&p->h) * sizeof(float));
    p->dt = dt;
    OK(sd_tensor_to_cuda(&g_gpu, &p->d, &p->h, dt));
}

/* The device twin back to its start values. */
static void reset(pair *p) {
    sd_tensor_free(&p->d);
    OK(sd_tensor_to_cuda(&g_gpu, &p->d, &p->init, p->dt));
}

static void drop(pair *p) {
    sd_tensor_free(&p->h);
    sd_tensor_free(&p->d);
    sd_tensor_free(&p->init);
}

/* got: the device tensor on the host (F32; BF16 widened exactly). */
static void fetch(sd_tensor *got, const pair *p) {
    OK(sd_cuda_sync(&g_gpu));
    OK(sd_tensor_to_host_f32(&g_gpu, got, &p->d));
}

/* max |a - b| / max |b| over n (NaN counts as failure: returns NaN). */
static double rel_err(const float *a, const float *b, const float *sub, int64_t n) {
    double mr = 0.0, md = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double ref = (double)b[i] - (sub ? sub[i] : 0.0), got = (double)a[i] - (sub ? sub[i] : 0.0);
        mr = fmax(mr, fabs(ref));
        double e = fabs(got - ref);
        if (!(e == e)) return NAN;
        md = fmax(md, e);
    }
    return md / (mr > 0 ? mr : 1.0);
}

static void cmp(const char *name, const pair *p, sd_tensor *got) {
    int bf = p->dt == SD_BF16;
    double tol = bf ? 1e-2 : 1e-4;
    int64_t n = sd_numel(&p->h);
    double err = rel_err(got->data, p->h.data, NULL, n);
    int bad = !(err <= tol);
    printf("    %-3s %-4s rel %.3e (tol %.0e)%s", name, sd_dtype_name(p->dt), err, tol, bad ? "  FAIL" : "");
    count(bad);
    double *worst = bf ? &g_worst_bf16 : &g_worst_f32;
    if (!(err <= *worst)) *worst = err;
    if (!bf) { /* the added part alone */
        double e2 = rel_err(got->data, p->h.data, p->init.data, n);
        int bad2 = !(e2 <= 1e-4);
        printf(";  added part rel %.3e (tol 1e-04)%s", e2, bad2 ? "  FAIL" : "");
        count(bad2);
    }
    printf("\n");
}

static void same_bits(const char *what, const sd_tensor *a, const pair *p) {
    sd_tensor b;
    fetch(&b, p);
    int bad = memcmp(a->data, b.data, (size_t)sd_numel(a) * sizeof(float)) != 0;
    printf("    %-44s %s\n", what, bad ? "DIFFER  FAIL" : "same bits");
    count(bad);
    sd_tensor_free(&b);
}

static void run_case(int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd, sd_dtype in_dt,
                     sd_dtype g_dt) {
    printf("  B %lld T %lld S %lld Hq %lld Hkv %lld hd %lld: q k v dout %s, dq dk dv %s\n", (long long)B,
           (long long)T, (long long)S, (long long)Hq, (long long)Hkv, (long long)hd, sd_dtype_name(in_dt),
           sd_dtype_name(g_dt));
    pair q, k, v, go, dq, dk, dv;
    mk(&q, in_dt, B, T, Hq, hd, -2, 2); /* scaled scores of std ~1.3: peaked rows */
    mk(&k, in_dt, B, S, Hkv, hd, -2, 2);
    mk(&v, in_dt, B, S, Hkv, hd, -1, 1);
    mk(&go, in_dt, B, T, Hq, hd, -1, 1);
    mk(&dq, g_dt, B, T, Hq, hd, -0.5f, 0.5f);
    mk(&dk, g_dt, B, S, Hkv, hd, -0.5f, 0.5f);
    mk(&dv, g_dt, B, S, Hkv, hd, -0.5f, 0.5f);
    float scale = 1.0f / sqrtf((float)hd);

    OK(sd_attention_backward(&g_cpu, &dq.h, &dk.h, &dv.h, &go.h, &q.h, &k.h, &v.h, scale, NULL));
    OK(sd_attention_backward(&g_gpu, &dq.d, &dk.d, &dv.d, &go.d, &q.d, &k.d, &v.d, scale, NULL));
    sd_tensor r1[3];
    pair *g[3] = {&dq, &dk, &dv};
    const char *names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        fetch(&r1[i], g[i]);
        cmp(names[i], g[i], &r1[i]);
    }

    /* again from the same start: the same bits */
    for (int i = 0; i < 3; i++) reset(g[i]);
    OK(sd_attention_backward(&g_gpu, &dq.d, &dk.d, &dv.d, &go.d, &q.d, &k.d, &v.d, scale, NULL));
    same_bits("second run", &r1[0], &dq);
    same_bits("", &r1[1], &dk);
    same_bits("", &r1[2], &dv);

    /* one gradient at a time (the NULL paths): still the same bits */
    for (int i = 0; i < 3; i++) reset(g[i]);
    OK(sd_attention_backward(&g_gpu, &dq.d, NULL, NULL, &go.d, &q.d, &k.d, &v.d, scale, NULL));
    OK(sd_attention_backward(&g_gpu, NULL, &dk.d, NULL, &go.d, &q.d, &k.d, &v.d, scale, NULL));
    OK(sd_attention_backward(&g_gpu, NULL, NULL, &dv.d, &go.d, &q.d, &k.d, &v.d, scale, NULL));
    same_bits("dq alone, dk alone, dv alone", &r1[0], &dq);
    same_bits("", &r1[1], &dk);
    same_bits("", &r1[2], &dv);

    for (int i = 0; i < 3; i++) sd_tensor_free(&r1[i]);
    pair *all[] = {&q, &k, &v, &go, &dq, &dk, &dv};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) drop(all[i]);
}

/* probs != NULL (the CUDA backward recomputes them) and hd > 256 fail with a message. */
static void refusals(void) {
    pair q, k, v, go, dq;
    mk(&q, SD_BF16, 1, 4, 2, 8, -1, 1);
    mk(&k, SD_BF16, 1, 4, 2, 8, -1, 1);
    mk(&v, SD_BF16, 1, 4, 2, 8, -1, 1);
    mk(&go, SD_BF16, 1, 4, 2, 8, -1, 1);
    mk(&dq, SD_BF16, 1, 4, 2, 8, -1, 1);
    int64_t sp[4] = {1, 2, 4, 4};
    sd_tensor probs;
    OK(sd_tensor_alloc_cuda(&probs, SD_F32, 4, sp));
    int rc = sd_attention_backward(&g_gpu, &dq.d, NULL, NULL, &go.d, &q.d, &k.d, &v.d, 0.5f, &probs);
    int bad = rc == SD_OK || !strstr(sd_errmsg(), "probs");
    printf("  probs != NULL refused: %s%s\n", rc == SD_OK ? "accepted" : sd_errmsg(), bad ? "  FAIL" : "");
    count(bad);
    sd_tensor_free(&probs);
    pair *all[] = {&q, &k, &v, &go, &dq};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) drop(all[i]);

    mk(&q, SD_BF16, 1, 2, 1, 264, -1, 1);
    mk(&k, SD_BF16, 1, 2, 1, 264, -1, 1);
    mk(&v, SD_BF16, 1, 2, 1, 264, -1, 1);
    mk(&go, SD_BF16, 1, 2, 1, 264, -1, 1);
    mk(&dq, SD_BF16, 1, 2, 1, 264, -1, 1);
    rc = sd_attention_backward(&g_gpu, &dq.d, NULL, NULL, &go.d, &q.d, &k.d, &v.d, 0.5f, NULL);
    bad = rc == SD_OK || !strstr(sd_errmsg(), "256");
    printf("  hd 264 refused: %s%s\n", rc == SD_OK ? "accepted" : sd_errmsg(), bad ? "  FAIL" : "");
    count(bad);
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) drop(all[i]);
}

int main(void) {
    if (!gpu_test_begin(&g_cpu, &g_gpu)) return 77;
    printf("attention backward, CUDA vs CPU\n");
    static const sd_dtype dts[2] = {SD_BF16, SD_F32};
    for (int i = 0; i < 2; i++) {
        run_case(2, 37, 37, 4, 2, 8, dts[i], dts[i]);    /* GQA 2, hd 8, T a multiple of nothing */
        run_case(1, 64, 80, 8, 2, 64, dts[i], dts[i]);   /* a KV prefix (S > T), GQA 4 */
        run_case(2, 128, 128, 4, 4, 128, dts[i], dts[i]); /* no GQA, hd 128 */
        run_case(1, 19, 33, 2, 1, 256, dts[i], dts[i]);  /* hd 256, the largest; S > T */
        run_case(1, 1, 5, 2, 1, 40, dts[i], dts[i]);     /* one query after a prefix, hd 40 */
    }
    run_case(2, 37, 37, 4, 2, 8, SD_BF16, SD_F32); /* mixed: bf16 activations, fp32 gradients */
    refusals();
    sd_ctx_free_cuda(&g_gpu);
    printf("worst rel err: BF16 %.3g (tol 1e-2), F32 %.3g (tol 1e-4)\n", g_worst_bf16, g_worst_f32);
    printf("cuda attention backward: %d checks, %d failed\n", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
