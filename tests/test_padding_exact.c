/* The premise of the CUDA wrappers' padding (kernels/cuda/ssd_attention_cuda.cu,
 * stage1_cuda.cu), checked on the CPU reference, where it does not depend on a GPU:
 *   - SSD (chunked, forward and backward): x, dy padded with zero columns along P, B and C
 *     along N, the states along both, give the unpadded results in the real part, and zero
 *     padded gradient rows / columns of nothing that is used;
 *   - the SSD result does not depend on the chunk (50 vs 48, 7 vs 16) beyond rounding;
 *   - attention: q, k, v padded along hd (scale unchanged) give the same out (zero padded
 *     columns) and lse;
 *   - the stage-1 loss: q, k padded along hd and B, C along N give the same loss and
 *     gradients.
 * Tolerance 1e-6 relative to the largest element (the padded sums only add exact zeros; the
 * CPU may still group them differently). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/ops.h"
#include "kernels/ssd.h"
#include "kernels/stage1.h"
#include "tests/test_util.h"

#define TOL 1e-6

static sd_ctx g_ctx;
static uint64_t g_seed = 20261124;

static sd_tensor rnd(int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, float lo, float hi) {
    sd_tensor t;
    if (sd_tensor_f32(&t, ndim, d0, d1, d2, d3) != SD_OK) abort();
    test_fill(t.data, (size_t)sd_numel(&t), &g_seed, lo, hi);
    return t;
}

static sd_tensor zeros(const sd_tensor *like) {
    sd_tensor t;
    if (sd_tensor_alloc(&t, SD_F32, like->ndim, like->shape) != SD_OK) abort();
    return t;
}

/* src viewed as [R, a, b] -> [R, ap, bp] with zeros (the shape: src's with its last one or two
 * dims replaced). */
static sd_tensor pad(const sd_tensor *src, int two, int64_t ap, int64_t bp) {
    int64_t shape[4];
    memcpy(shape, src->shape, sizeof shape);
    int64_t b = shape[src->ndim - 1], a = two ? shape[src->ndim - 2] : 1;
    shape[src->ndim - 1] = bp;
    if (two) shape[src->ndim - 2] = ap;
    else ap = 1;
    sd_tensor t;
    if (sd_tensor_alloc(&t, SD_F32, src->ndim, shape) != SD_OK) abort();
    int64_t R = sd_numel(src) / (a * b);
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < a; i++)
            memcpy((float *)t.data + (r * ap + i) * bp, (const float *)src->data + (r * a + i) * b,
                   (size_t)b * sizeof(float));
    return t;
}

/* max |got[real part] - ref| / max |ref|; *pad_max: the largest |value| in the padded part. */
static double err_real(const sd_tensor *ref, const sd_tensor *got, int two, double *pad_max) {
    int64_t b = ref->shape[ref->ndim - 1], a = two ? ref->shape[ref->ndim - 2] : 1;
    int64_t bp = got->shape[got->ndim - 1], ap = two ? got->shape[got->ndim - 2] : 1;
    int64_t R = sd_numel(ref) / (a * b);
    const float *r = ref->data, *g = got->data;
    double e = 0, m = 0, pm = 0;
    for (int64_t x = 0; x < R; x++)
        for (int64_t i = 0; i < ap; i++)
            for (int64_t j = 0; j < bp; j++) {
                double v = g[(x * ap + i) * bp + j];
                if (i >= a || j >= b) {
                    pm = fmax(pm, fabs(v));
                    continue;
                }
                double w = r[(x * a + i) * b + j];
                m = fmax(m, fabs(w));
                double d = fabs(v - w);
                if (!(d <= e)) e = d;
            }
    if (pad_max) *pad_max = pm;
    return e / (m > 0 ? m : 1);
}

static void expect(const char *what, const sd_tensor *ref, const sd_tensor *got, int two, double tol) {
    double e = err_real(ref, got, two, NULL);
    CHECK(e < tol, "%s: padded vs unpadded %.3g", what, e);
}

static void test_ssd(int64_t P, int64_t N, int64_t G, int has_dt) {
    int64_t B = 2, T = 100, H = 8, Pp = 16, Np = 16, chunk = 64;
    sd_tensor x = rnd(4, B, T, H, P, -1, 1), dt = rnd(3, B, T, H, 0, 0.01f, 0.2f);
    sd_tensor loga = rnd(3, B, T, H, 0, -0.5f, -0.01f), Bm = rnd(4, B, T, G, N, -1, 1);
    sd_tensor Cm = rnd(4, B, T, G, N, -1, 1), D = rnd(1, H, 0, 0, 0, -1, 1);
    sd_tensor s0 = rnd(4, B, H, P, N, -0.5f, 0.5f), ds1 = rnd(4, B, H, P, N, -0.1f, 0.1f);
    sd_tensor dy = rnd(4, B, T, H, P, -1, 1);
    sd_tensor xp = pad(&x, 0, 1, Pp), Bp = pad(&Bm, 0, 1, Np), Cp = pad(&Cm, 0, 1, Np), dyp = pad(&dy, 0, 1, Pp);
    sd_tensor s0p = pad(&s0, 1, Pp, Np), ds1p = pad(&ds1, 1, Pp, Np);
    sd_tensor y = zeros(&x), yp = zeros(&xp), s1 = zeros(&s0), s1p = zeros(&s0p), y48 = zeros(&x);
    const sd_tensor *dtp = has_dt ? &dt : NULL;
    CHECK_OK(sd_ssd_chunked(&g_ctx, &y, &x, dtp, &loga, &Bm, &Cm, &D, chunk, &s0, &s1));
    CHECK_OK(sd_ssd_chunked(&g_ctx, &yp, &xp, dtp, &loga, &Bp, &Cp, &D, chunk, &s0p, &s1p));
    expect("ssd y", &y, &yp, 0, TOL);
    expect("ssd final_state", &s1, &s1p, 1, TOL);
    /* another chunk: the kernels' nearest allowed one */
    CHECK_OK(sd_ssd_chunked(&g_ctx, &y48, &x, dtp, &loga, &Bm, &Cm, &D, 48, &s0, NULL));
    CHECK_OK(sd_ssd_chunked(&g_ctx, &y, &x, dtp, &loga, &Bm, &Cm, &D, 50, &s0, NULL));
    expect("ssd y chunk 50 vs 48", &y, &y48, 0, 1e-5);
    CHECK_OK(sd_ssd_chunked(&g_ctx, &y48, &x, dtp, &loga, &Bm, &Cm, &D, 16, &s0, NULL));
    CHECK_OK(sd_ssd_chunked(&g_ctx, &y, &x, dtp, &loga, &Bm, &Cm, &D, 7, &s0, NULL));
    expect("ssd y chunk 7 vs 16", &y, &y48, 0, 1e-5);

    sd_tensor dx = zeros(&x), dxp = zeros(&xp), ddt = zeros(&dt), ddtp = zeros(&dt), dl = zeros(&loga);
    sd_tensor dlp = zeros(&loga), dB = zeros(&Bm), dBp = zeros(&Bp), dC = zeros(&Cm), dCp = zeros(&Cp);
    sd_tensor dD = zeros(&D), dDp = zeros(&D), ds0 = zeros(&s0), ds0p = zeros(&s0p);
    CHECK_OK(sd_ssd_chunked_backward(&g_ctx, &dx, has_dt ? &ddt : NULL, &dl, &dB, &dC, &dD, &dy, &x, dtp, &loga,
                                     &Bm, &Cm, &D, chunk, &s0, &ds1, &ds0));
    CHECK_OK(sd_ssd_chunked_backward(&g_ctx, &dxp, has_dt ? &ddtp : NULL, &dlp, &dBp, &dCp, &dDp, &dyp, &xp, dtp,
                                     &loga, &Bp, &Cp, &D, chunk, &s0p, &ds1p, &ds0p));
    expect("ssd dx", &dx, &dxp, 0, TOL);
    if (has_dt) expect("ssd ddt", &ddt, &ddtp, 0, TOL);
    expect("ssd dloga", &dl, &dlp, 0, TOL);
    expect("ssd dB", &dB, &dBp, 0, TOL);
    expect("ssd dC", &dC, &dCp, 0, TOL);
    expect("ssd dD", &dD, &dDp, 0, TOL);
    expect("ssd dinit_state", &ds0, &ds0p, 1, TOL);
    sd_tensor *all[] = {&x, &dt, &loga, &Bm, &Cm, &D, &s0, &ds1, &dy, &xp, &Bp, &Cp, &dyp, &s0p, &ds1p, &y, &yp,
                        &s1, &s1p, &y48, &dx, &dxp, &ddt, &ddtp, &dl, &dlp, &dB, &dBp, &dC, &dCp, &dD, &dDp, &ds0,
                        &ds0p};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sd_tensor_free(all[i]);
}

static void test_attention(void) {
    int64_t B = 2, T = 60, S = 100, Hq = 8, Hkv = 4, hd = 8, hdp = 64;
    sd_tensor q = rnd(4, B, T, Hq, hd, -1, 1), k = rnd(4, B, S, Hkv, hd, -1, 1), v = rnd(4, B, S, Hkv, hd, -1, 1);
    sd_tensor qp = pad(&q, 0, 1, hdp), kp = pad(&k, 0, 1, hdp), vp = pad(&v, 0, 1, hdp);
    sd_tensor o = zeros(&q), op = zeros(&qp), lse, lsep;
    if (sd_tensor_f32(&lse, 3, B, Hq, T, 0) || sd_tensor_f32(&lsep, 3, B, Hq, T, 0)) abort();
    float scale = 1.0f / sqrtf((float)hd);
    CHECK_OK(sd_attention(&g_ctx, &o, &q, &k, &v, scale, NULL, &lse));
    CHECK_OK(sd_attention(&g_ctx, &op, &qp, &kp, &vp, scale, NULL, &lsep));
    double pm = 0;
    double e = err_real(&o, &op, 0, &pm);
    CHECK(e < TOL, "attention out: padded vs unpadded %.3g", e);
    CHECK(pm == 0.0, "attention: padded output columns %.3g, expected 0", pm);
    expect("attention lse", &lse, &lsep, 0, TOL);
    sd_tensor *all[] = {&q, &k, &v, &qp, &kp, &vp, &o, &op, &lse, &lsep};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sd_tensor_free(all[i]);
}

static void test_stage1(int64_t G) {
    int64_t B = 2, T = 50, H = 8, Hkv = 4, hd = 8, N = 8, hdp = 64, Np = 64;
    sd_tensor q = rnd(4, B, T, H, hd, -2, 2), k = rnd(4, B, T, Hkv, hd, -2, 2);
    sd_tensor dt = rnd(3, B, T, H, 0, 0.2f, 1.5f), loga = rnd(3, B, T, H, 0, -0.3f, -0.005f);
    sd_tensor Bm = rnd(4, B, T, G, N, -0.45f, 0.45f), Cm = rnd(4, B, T, G, N, -0.45f, 0.45f);
    sd_tensor D = rnd(1, H, 0, 0, 0, 0.3f, 1.0f);
    sd_tensor qp = pad(&q, 0, 1, hdp), kp = pad(&k, 0, 1, hdp), Bp = pad(&Bm, 0, 1, Np), Cp = pad(&Cm, 0, 1, Np);
    sd_tensor ddt = zeros(&dt), ddtp = zeros(&dt), dl = zeros(&loga), dlp = zeros(&loga), dB = zeros(&Bm);
    sd_tensor dBp = zeros(&Bp), dC = zeros(&Cm), dCp = zeros(&Cp), dD = zeros(&D), dDp = zeros(&D);
    float scale = 1.0f / sqrtf((float)hd), l = -1, lp = -2;
    CHECK_OK(sd_stage1_loss(&g_ctx, &l, NULL, &q, &k, scale, &dt, &loga, &Bm, &Cm, &D, &ddt, &dl, &dB, &dC, &dD));
    CHECK_OK(sd_stage1_loss(&g_ctx, &lp, NULL, &qp, &kp, scale, &dt, &loga, &Bp, &Cp, &D, &ddtp, &dlp, &dBp, &dCp,
                            &dDp));
    CHECK(fabs((double)l - lp) <= TOL * fabs((double)l), "stage 1 loss: padded %.9g vs %.9g", lp, l);
    expect("stage 1 ddt", &ddt, &ddtp, 0, TOL);
    expect("stage 1 dloga", &dl, &dlp, 0, TOL);
    expect("stage 1 dB", &dB, &dBp, 0, TOL);
    expect("stage 1 dC", &dC, &dCp, 0, TOL);
    expect("stage 1 dD", &dD, &dDp, 0, TOL);
    sd_tensor *all[] = {&q, &k, &dt, &loga, &Bm, &Cm, &D, &qp, &kp, &Bp, &Cp, &ddt, &ddtp, &dl, &dlp, &dB, &dBp,
                        &dC, &dCp, &dD, &dDp};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sd_tensor_free(all[i]);
}

int main(void) {
    sd_ctx_init_cpu(&g_ctx, 0);
    sd_ctx_apply_threads(&g_ctx);
    test_ssd(8, 8, 8, 0); /* stories260K: P = N = 8, B/C per head, discrete */
    test_ssd(8, 8, 1, 1); /* B/C shared by all heads, dt */
    test_ssd(12, 5, 2, 1);
    test_attention();
    test_stage1(8);
    test_stage1(1);
    return test_summary("test_padding_exact");
}
