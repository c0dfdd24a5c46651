/* The fused CUDA stage-1 loss and gradient (sd_cuda_stage1_loss, kernels/cuda/attention_cuda.h)
 * against the CPU reference sd_stage1_loss (kernels/stage1.h) on the same bf16-rounded q, k,
 * B, C (fp32 dt, loga, D).  Gradients start from non-zero values on both sides, so the "adds"
 * contract is checked too.  Tolerances (max |gpu - cpu| / max |cpu| per tensor):
 *   loss and per-head norms 2e-4 (fp32 throughout; only summation order and exp2 differ);
 *   dD, ddt, dloga 1e-2 and dB, dC 2e-2 (P = dM o E diag(dt) is rounded to bf16 for the
 *   tensor-core product with B or C, as the attention kernels round P).
 * Exits 77 (skipped) without a GPU. */
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/stage1.h"
#include "tests/test_util.h"

#define LOSS_TOL 2e-4
#define GRAD_TOL 1e-2
#define BC_TOL 2e-2

static uint64_t g_seed = 20261124;
static sd_ctx g_ctx;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static void rand_bf16(float *f, uint16_t *h, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) {
        h[i] = sd_f32_to_bf16(test_uniform(&g_seed, lo, hi));
        f[i] = sd_bf16_to_f32(h[i]);
    }
}

/* A device copy of n floats (NULL stays NULL). */
static float *dev_f32(const float *h, size_t n, const char *what) {
    void *d = NULL;
    if (!h) return NULL;
    if (sd_cuda_alloc(&d, n * 4, what) != SD_OK || sd_cuda_upload(d, h, n * 4) != SD_OK) {
        fprintf(stderr, "FAIL: %s\n", sd_errmsg());
        exit(1);
    }
    return d;
}

static double rel_err(const float *got, const float *ref, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= e)) e = d;
        if (fabs(ref[i]) > m) m = fabs(ref[i]);
    }
    return e / (m + 1e-30);
}

static void run_case(int B, int T, int H, int Hkv, int G, int hd, int N, int has_dt, int has_D) {
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * Hkv * hd, nh = (size_t)B * T * H,
           nbc = (size_t)B * T * G * N, nph = (size_t)B * H;
    float *q = xmalloc(nq * 4), *k = xmalloc(nk * 4), *Bm = xmalloc(nbc * 4), *Cm = xmalloc(nbc * 4);
    uint16_t *qh = xmalloc(nq * 2), *kh = xmalloc(nk * 2), *Bh = xmalloc(nbc * 2), *Ch = xmalloc(nbc * 2);
    float *dt = xmalloc(nh * 4), *loga = xmalloc(nh * 4), *D = xmalloc((size_t)H * 4);
    rand_bf16(q, qh, nq, -2.0f, 2.0f);
    rand_bf16(k, kh, nk, -2.0f, 2.0f);
    /* C . B of std ~0.05 .. 0.2 at N 64 .. 128: M of the size of the attention probabilities */
    rand_bf16(Bm, Bh, nbc, -0.25f, 0.25f);
    rand_bf16(Cm, Ch, nbc, -0.25f, 0.25f);
    test_fill(dt, nh, &g_seed, 0.2f, 1.5f);
    test_fill(loga, nh, &g_seed, -0.3f, -0.005f);
    test_fill(D, (size_t)H, &g_seed, 0.3f, 1.0f);
    float scale = 1.0f / sqrtf((float)hd);

    /* gradient buffers start at the same non-zero values on both sides */
    float *g0[5], *gc[5], *gg[5];
    size_t gn[5] = {nh, nh, nbc, nbc, (size_t)H};
    for (int i = 0; i < 5; i++) {
        g0[i] = xmalloc(gn[i] * 4), gc[i] = xmalloc(gn[i] * 4), gg[i] = xmalloc(gn[i] * 4);
        test_fill(g0[i], gn[i], &g_seed, -0.01f, 0.01f);
        memcpy(gc[i], g0[i], gn[i] * 4);
    }
    float *ph = xmalloc(nph * 4), *gph = xmalloc(nph * 4);

    /* CPU reference */
    int64_t sq[4] = {B, T, H, hd}, sk[4] = {B, T, Hkv, hd}, sh[3] = {B, T, H}, sbc[4] = {B, T, G, N},
            sd[1] = {H}, sp[2] = {B, H};
    sd_tensor tq = sd_tensor_view(SD_F32, q, 4, sq), tk = sd_tensor_view(SD_F32, k, 4, sk),
              tdt = sd_tensor_view(SD_F32, dt, 3, sh), tla = sd_tensor_view(SD_F32, loga, 3, sh),
              tB = sd_tensor_view(SD_F32, Bm, 4, sbc), tC = sd_tensor_view(SD_F32, Cm, 4, sbc),
              tD = sd_tensor_view(SD_F32, D, 1, sd), tph = sd_tensor_view(SD_F32, ph, 2, sp),
              gddt = sd_tensor_view(SD_F32, gc[0], 3, sh), gdla = sd_tensor_view(SD_F32, gc[1], 3, sh),
              gdB = sd_tensor_view(SD_F32, gc[2], 4, sbc), gdC = sd_tensor_view(SD_F32, gc[3], 4, sbc),
              gdD = sd_tensor_view(SD_F32, gc[4], 1, sd);
    float loss = 0.0f, gloss = -1.0f;
    CHECK_OK(sd_stage1_loss(&g_ctx, &loss, &tph, &tq, &tk, scale, has_dt ? &tdt : NULL, &tla, &tB, &tC,
                            has_D ? &tD : NULL, has_dt ? &gddt : NULL, &gdla, &gdB, &gdC,
                            has_D ? &gdD : NULL));

    /* GPU */
    void *dq, *dk, *dB, *dC, *ws, *dloss, *dph;
    CHECK_OK(sd_cuda_alloc(&dq, nq * 2, "q"));
    CHECK_OK(sd_cuda_alloc(&dk, nk * 2, "k"));
    CHECK_OK(sd_cuda_alloc(&dB, nbc * 2, "B"));
    CHECK_OK(sd_cuda_alloc(&dC, nbc * 2, "C"));
    CHECK_OK(sd_cuda_upload(dq, qh, nq * 2));
    CHECK_OK(sd_cuda_upload(dk, kh, nk * 2));
    CHECK_OK(sd_cuda_upload(dB, Bh, nbc * 2));
    CHECK_OK(sd_cuda_upload(dC, Ch, nbc * 2));
    size_t wsb = sd_cuda_stage1_workspace(B, T, H, N);
    CHECK_OK(sd_cuda_alloc(&ws, wsb, "stage-1 workspace"));
    CHECK_OK(sd_cuda_alloc(&dloss, 4, "loss"));
    CHECK_OK(sd_cuda_alloc(&dph, nph * 4, "per-head norms"));
    float *dgr[5];
    for (int i = 0; i < 5; i++) dgr[i] = dev_f32(g0[i], gn[i], "gradient");
    sd_cuda_stage1_args a = {B, T, H, Hkv, hd, G, N, scale, dq, dk, dB, dC,
                             has_dt ? dev_f32(dt, nh, "dt") : NULL, dev_f32(loga, nh, "loga"),
                             has_D ? dev_f32(D, (size_t)H, "D") : NULL, dloss, dph,
                             has_dt ? dgr[0] : NULL, dgr[1], dgr[2], dgr[3], has_D ? dgr[4] : NULL};
    CHECK_OK(sd_cuda_stage1_loss(&a, ws, wsb, 0));
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "kernels failed: %s", cudaGetErrorString(cudaGetLastError()));
    CHECK_OK(sd_cuda_download(&gloss, dloss, 4));
    CHECK_OK(sd_cuda_download(gph, dph, nph * 4));
    for (int i = 0; i < 5; i++) CHECK_OK(sd_cuda_download(gg[i], dgr[i], gn[i] * 4));

    /* the loss alone (no gradient: the column pass is skipped) */
    float gloss2 = -1.0f;
    sd_cuda_stage1_args a2 = a;
    a2.ddt = a2.dloga = a2.dB = a2.dC = a2.dD = NULL;
    CHECK_OK(sd_cuda_stage1_loss(&a2, ws, wsb, 0));
    CHECK_OK(sd_cuda_download(&gloss2, dloss, 4));
    CHECK(gloss2 == gloss, "loss without gradients %.9g differs from %.9g", gloss2, gloss);

    double el = fabs((double)gloss - loss) / fabs(loss), eph = rel_err(gph, ph, nph);
    double eg[5];
    for (int i = 0; i < 5; i++) eg[i] = rel_err(gg[i], gc[i], gn[i]);
    printf("  B %d T %4d H %d Hkv %d G %d hd %3d N %3d dt %d D %d: loss %.6g vs %.6g (rel %.2g), "
           "per-head %.2g, ddt %.2g, dloga %.2g, dB %.2g, dC %.2g, dD %.2g  [workspace %.1f MiB]\n",
           B, T, H, Hkv, G, hd, N, has_dt, has_D, gloss, loss, el, eph, eg[0], eg[1], eg[2], eg[3], eg[4],
           wsb / 1048576.0);
    CHECK(el < LOSS_TOL, "loss: rel err %.3g", el);
    CHECK(eph < LOSS_TOL, "per-head norms: rel err %.3g", eph);
    CHECK(eg[0] < GRAD_TOL, "ddt: rel err %.3g", eg[0]);
    CHECK(eg[1] < GRAD_TOL, "dloga: rel err %.3g", eg[1]);
    CHECK(eg[2] < BC_TOL, "dB: rel err %.3g", eg[2]);
    CHECK(eg[3] < BC_TOL, "dC: rel err %.3g", eg[3]);
    CHECK(eg[4] < GRAD_TOL, "dD: rel err %.3g", eg[4]);

    sd_cuda_free(dq), sd_cuda_free(dk), sd_cuda_free(dB), sd_cuda_free(dC), sd_cuda_free(ws);
    sd_cuda_free(dloss), sd_cuda_free(dph), sd_cuda_free((void *)a.dt), sd_cuda_free((void *)a.loga);
    sd_cuda_free((void *)a.D);
    for (int i = 0; i < 5; i++) sd_cuda_free(dgr[i]), free(g0[i]), free(gc[i]), free(gg[i]);
    free(q), free(k), free(Bm), free(Cm), free(qh), free(kh), free(Bh), free(Ch);
    free(dt), free(loga), free(D), free(ph), free(gph);
}

int main(void) {
    if (sd_cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    sd_ctx_init_cpu(&g_ctx, 0);
    sd_ctx_apply_threads(&g_ctx);
    run_case(2, 200, 4, 2, 2, 64, 64, 0, 1);  /* discrete mixer (dt = 1), partial tile, GQA */
    run_case(1, 130, 2, 1, 1, 128, 128, 1, 1); /* dt, head dim and N 128, B/C shared by both heads */
    run_case(1, 64, 2, 2, 2, 64, 128, 1, 0);  /* exactly one tile, no D */
    run_case(1, 512, 4, 4, 4, 64, 64, 1, 1);  /* many tiles: the scans over T */
    run_case(2, 300, 4, 1, 4, 128, 64, 0, 1); /* head dim 128, N 64 */
    printf("  tolerances: loss and per-head %.0e, ddt/dloga/dD %.0e, dB/dC %.0e (rel to max)\n", LOSS_TOL,
           GRAD_TOL, BC_TOL);
    return test_summary("cuda stage1");
}
