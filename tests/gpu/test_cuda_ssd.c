/* The CUDA chunked SSD (kernels/cuda/ssd_cuda.h) against the CPU reference
 * (sd_ssd_chunked / sd_ssd_chunked_backward of kernels/ssd.h) on the same inputs: x, B, C and
 * dy rounded to bf16 first, so both sides see identical values; dt, loga, D, the states and
 * their gradients stay fp32.  Exits 77 (skipped) where there is no GPU.
 *
 * Error of a tensor: max |gpu - cpu| / max |cpu| over the tensor.  Tolerances:
 *   y, dx, dB, dC (bf16 outputs)          1e-2
 *   final_state, dinit_state (fp32)        5e-3
 *   ddt, dloga (fp32)                      1e-2   (sums of products of bf16-rounded
 *                                                  tensor-core operands)
 *   dD (fp32)                              1e-4   (a plain fp32 sum of dy . x)
 * (dD is checked only where D is given: the CPU reference computes it only then.)
 * The GPU rounds its tensor-core operands (decay-scaled x, the masked C B^T block, states) to
 * bf16, about 2^-9 relative per element; the tolerances leave a few times that.  The backward
 * also runs twice and must give the same bits (no atomics). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/context.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/ssd_cuda.h"
#include "kernels/ssd.h"
#include "kernels/tensor.h"
#include "tests/test_util.h"

static sd_ctx g_ctx;
static uint64_t g_seed = 20261124;

typedef struct {
    const char *name;
    int64_t B, T, H, P, G, N, chunk;
    int has_dt, has_D, has_init;
    float loga_lo, loga_hi; /* discrete: loga ~ U(lo, hi); standard: A ~ -U(-hi, -lo), loga = dt A */
} test_case;

enum { T_Y, T_FINAL, T_DX, T_DDT, T_DLOGA, T_DB, T_DC, T_DD, T_DINIT, T_COUNT };
static const char *g_tname[T_COUNT] = {"y", "final_state", "dx", "ddt", "dloga", "dB", "dC", "dD",
                                       "dinit_state"};
static const double g_tol[T_COUNT] = {1e-2, 5e-3, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2, 1e-4, 5e-3};

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}

/* Rounds v to bf16 in place and returns the bits. */
static uint16_t *to_bf16(float *v, size_t n) {
    uint16_t *h = malloc((n ? n : 1) * sizeof *h);
    if (!h) abort();
    for (size_t i = 0; i < n; i++) {
        h[i] = sd_f32_to_bf16(v[i]);
        v[i] = sd_bf16_to_f32(h[i]);
    }
    return h;
}

/* A device copy of n elements of `bytes_each`. */
static void *dev_copy(const void *src, size_t bytes, const char *what) {
    void *d = NULL;
    if (sd_cuda_alloc(&d, bytes, what) != SD_OK || sd_cuda_upload(d, src, bytes) != SD_OK) {
        fprintf(stderr, "FAIL: %s\n", sd_errmsg());
        exit(1);
    }
    return d;
}

/* A device buffer filled with 0xff bytes: NaN as fp32 and as bf16, so an output element the
 * kernels never write, or a workspace value read before it is written, shows up as NaN. */
static void *dev_poison(size_t bytes, const char *what) {
    void *d = NULL;
    if (sd_cuda_alloc(&d, bytes, what) != SD_OK || cudaMemset(d, 0xff, bytes ? bytes : 1) != cudaSuccess) {
        fprintf(stderr, "FAIL: %s: %s\n", what, sd_errmsg());
        exit(1);
    }
    return d;
}

static void down_f32(float *dst, const void *src, size_t n) {
    if (sd_cuda_download(dst, src, n * sizeof(float)) != SD_OK) {
        fprintf(stderr, "FAIL: %s\n", sd_errmsg());
        exit(1);
    }
}

static void down_bf16(float *dst, const void *src, size_t n) {
    uint16_t *h = malloc((n ? n : 1) * sizeof *h);
    if (!h || sd_cuda_download(h, src, n * sizeof *h) != SD_OK) {
        fprintf(stderr, "FAIL: download: %s\n", sd_errmsg());
        exit(1);
    }
    for (size_t i = 0; i < n; i++) dst[i] = sd_bf16_to_f32(h[i]);
    free(h);
}

/* max |a - ref| / max |ref| (NaN in a counts as infinite). */
static double rel_err(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= num)) num = d;
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return num / (den + 1e-30);
}

static void run_case(const test_case *tc) {
    int64_t B = tc->B, T = tc->T, H = tc->H, P = tc->P, G = tc->G, N = tc->N;
    size_t nx = (size_t)(B * T * H * P), nh = (size_t)(B * T * H), nbc = (size_t)(B * T * G * N);
    size_t ns = (size_t)(B * H * P * N);
    float *x = falloc(nx), *dy = falloc(nx), *Bm = falloc(nbc), *Cm = falloc(nbc);
    float *dt = falloc(nh), *loga = falloc(nh), *D = falloc((size_t)H), *A = falloc((size_t)H);
    float *init = falloc(ns), *dfinal = falloc(ns);
    float sc = 1.0f / sqrtf((float)N);
    test_fill(x, nx, &g_seed, -1, 1);
    test_fill(dy, nx, &g_seed, -1, 1);
    test_fill(Bm, nbc, &g_seed, -sc, sc);
    test_fill(Cm, nbc, &g_seed, -sc, sc);
    test_fill(D, (size_t)H, &g_seed, -1, 1);
    test_fill(init, ns, &g_seed, -1, 1);
    test_fill(dfinal, ns, &g_seed, -1, 1);
    if (tc->has_dt) { /* standard mixer: loga = dt * A, A = -U(-hi, -lo) per head */
        test_fill(dt, nh, &g_seed, 0.01f, 0.5f);
        test_fill(A, (size_t)H, &g_seed, tc->loga_lo, tc->loga_hi);
        for (size_t i = 0; i < nh; i++) loga[i] = dt[i] * A[i % (size_t)H];
    } else {
        test_fill(loga, nh, &g_seed, tc->loga_lo, tc->loga_hi);
    }
    uint16_t *xh = to_bf16(x, nx), *dyh = to_bf16(dy, nx), *Bh = to_bf16(Bm, nbc), *Ch = to_bf16(Cm, nbc);

    /* ---- CPU reference ---- */
    float *y = falloc(nx), *fin = falloc(ns), *dx = falloc(nx), *ddt = falloc(nh), *dloga = falloc(nh);
    float *dB = falloc(nbc), *dC = falloc(nbc), *dD = falloc((size_t)H), *dinit = falloc(ns);
    int64_t sx[4] = {B, T, H, P}, sh[3] = {B, T, H}, sb[4] = {B, T, G, N}, sd[1] = {H};
    int64_t ss[4] = {B, H, P, N};
    sd_tensor tx = sd_tensor_view(SD_F32, x, 4, sx), tdy = sd_tensor_view(SD_F32, dy, 4, sx);
    sd_tensor ty = sd_tensor_view(SD_F32, y, 4, sx), tdx = sd_tensor_view(SD_F32, dx, 4, sx);
    sd_tensor tdt = sd_tensor_view(SD_F32, dt, 3, sh), tla = sd_tensor_view(SD_F32, loga, 3, sh);
    sd_tensor tddt = sd_tensor_view(SD_F32, ddt, 3, sh), tdla = sd_tensor_view(SD_F32, dloga, 3, sh);
    sd_tensor tB = sd_tensor_view(SD_F32, Bm, 4, sb), tC = sd_tensor_view(SD_F32, Cm, 4, sb);
    sd_tensor tdB = sd_tensor_view(SD_F32, dB, 4, sb), tdC = sd_tensor_view(SD_F32, dC, 4, sb);
    sd_tensor tD = sd_tensor_view(SD_F32, D, 1, sd), tdD = sd_tensor_view(SD_F32, dD, 1, sd);
    sd_tensor tin = sd_tensor_view(SD_F32, init, 4, ss), tfin = sd_tensor_view(SD_F32, fin, 4, ss);
    sd_tensor tdf = sd_tensor_view(SD_F32, dfinal, 4, ss), tdin = sd_tensor_view(SD_F32, dinit, 4, ss);
    const sd_tensor *pdt = tc->has_dt ? &tdt : NULL, *pD = tc->has_D ? &tD : NULL;
    const sd_tensor *pin = tc->has_init ? &tin : NULL;
    CHECK_OK(sd_ssd_chunked(&g_ctx, &ty, &tx, pdt, &tla, &tB, &tC, pD, tc->chunk, pin, &tfin));
    CHECK_OK(sd_ssd_chunked_backward(&g_ctx, &tdx, tc->has_dt ? &tddt : NULL, &tdla, &tdB, &tdC,
                                     tc->has_D ? &tdD : NULL, &tdy, &tx, pdt, &tla, &tB, &tC, pD,
                                     tc->chunk, pin, &tdf, &tdin));

    /* ---- GPU ---- */
    sd_ssd_cuda_dims dims = {B, T, H, P, G, N, tc->chunk};
    void *gx = dev_copy(xh, nx * 2, "x"), *gdy = dev_copy(dyh, nx * 2, "dy");
    void *gB = dev_copy(Bh, nbc * 2, "B"), *gC = dev_copy(Ch, nbc * 2, "C");
    void *gdt = dev_copy(dt, nh * 4, "dt"), *gla = dev_copy(loga, nh * 4, "loga");
    void *gD = dev_copy(D, (size_t)H * 4, "D"), *gin = dev_copy(init, ns * 4, "init");
    void *gdf = dev_copy(dfinal, ns * 4, "dfinal");
    void *gy = dev_poison(nx * 2, "y"), *gfin = dev_poison(ns * 4, "final"), *gdx = dev_poison(nx * 2, "dx");
    void *gddt = dev_poison(nh * 4, "ddt"), *gdla = dev_poison(nh * 4, "dloga");
    void *gdB = dev_poison(nbc * 2, "dB"), *gdC = dev_poison(nbc * 2, "dC");
    void *gdD = dev_poison((size_t)H * 4, "dD"), *gdin = dev_poison(ns * 4, "dinit");
    size_t wsb = sd_ssd_cuda_workspace_bytes(&dims);
    void *ws = dev_poison(wsb, "workspace");
    const float *adt = tc->has_dt ? gdt : NULL, *aD = tc->has_D ? gD : NULL;
    const float *ain = tc->has_init ? gin : NULL;
    CHECK_OK(sd_ssd_cuda_forward(&dims, gy, gx, adt, gla, gB, gC, aD, ain, gfin, ws, wsb, 0));
    CHECK_OK(sd_ssd_cuda_backward(&dims, gdx, tc->has_dt ? gddt : NULL, gdla, gdB, gdC, gdD, gdy,
                                  gx, adt, gla, gB, gC, aD, ain, gdf, gdin, ws, wsb, 0));
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s: kernels failed: %s", tc->name,
          cudaGetErrorString(cudaGetLastError()));

    float *gv[T_COUNT], *cv[T_COUNT] = {y, fin, dx, ddt, dloga, dB, dC, dD, dinit};
    size_t n[T_COUNT] = {nx, ns, nx, nh, nh, nbc, nbc, (size_t)H, ns};
    for (int k = 0; k < T_COUNT; k++) gv[k] = falloc(n[k]);
    down_bf16(gv[T_Y], gy, nx), down_f32(gv[T_FINAL], gfin, ns), down_bf16(gv[T_DX], gdx, nx);
    down_f32(gv[T_DDT], gddt, nh), down_f32(gv[T_DLOGA], gdla, nh), down_bf16(gv[T_DB], gdB, nbc);
    down_bf16(gv[T_DC], gdC, nbc), down_f32(gv[T_DD], gdD, (size_t)H), down_f32(gv[T_DINIT], gdin, ns);

    printf("%-28s B%lld T%lld H%lld P%lld G%lld N%lld chunk %lld%s%s%s\n", tc->name, (long long)B,
           (long long)T, (long long)H, (long long)P, (long long)G, (long long)N,
           (long long)tc->chunk, tc->has_dt ? " dt" : "", tc->has_D ? " D" : "",
           tc->has_init ? " init" : "");
    for (int k = 0; k < T_COUNT; k++) {
        if ((k == T_DDT && !tc->has_dt) || (k == T_DD && !tc->has_D)) continue;
        double e = rel_err(gv[k], cv[k], n[k]);
        printf("    %-12s max err %.3e (tol %.0e)\n", g_tname[k], e, g_tol[k]);
        CHECK(e <= g_tol[k], "%s: %s error %.3e above %.0e", tc->name, g_tname[k], e, g_tol[k]);
    }

    /* Reproducibility: a second backward gives the same bits. */
    float *again = falloc(nbc), *again2 = falloc(nh);
    CHECK_OK(sd_ssd_cuda_backward(&dims, gdx, tc->has_dt ? gddt : NULL, gdla, gdB, gdC, gdD, gdy,
                                  gx, adt, gla, gB, gC, aD, ain, gdf, gdin, ws, wsb, 0));
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s: second backward failed", tc->name);
    down_bf16(again, gdB, nbc);
    down_f32(again2, gdla, nh);
    CHECK(memcmp(again, gv[T_DB], nbc * sizeof(float)) == 0, "%s: dB differs between runs", tc->name);
    CHECK(memcmp(again2, gv[T_DLOGA], nh * sizeof(float)) == 0, "%s: dloga differs between runs", tc->name);
    free(again), free(again2);

    for (int k = 0; k < T_COUNT; k++) free(gv[k]), free(cv[k]);
    void *devs[] = {gx, gdy, gB, gC, gdt, gla, gD, gin, gdf, gy, gfin, gdx, gddt, gdla, gdB, gdC, gdD, gdin, ws};
    for (size_t k = 0; k < sizeof devs / sizeof devs[0]; k++) sd_cuda_free(devs[k]);
    free(x), free(dy), free(Bm), free(Cm), free(dt), free(loga), free(D), free(A), free(init), free(dfinal);
    free(xh), free(dyh), free(Bh), free(Ch);
}

int main(void) {
    if (sd_cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    sd_ctx_init_cpu(&g_ctx, 0);
    sd_ctx_apply_threads(&g_ctx);
    static const test_case cases[] = {
        /* name                        B  T     H  P   G  N    chunk dt D init loga range */
        {"discrete G<H, init",         2, 200,  4, 32, 2, 32,  64,   0, 1, 1, -0.5f, 0.0f},
        {"standard G=1",               2, 300,  4, 64, 1, 64,  128,  1, 1, 0, -2.0f, -0.5f},
        {"strong decay G==H, T<chunk", 1, 77,   3, 16, 3, 48,  128,  0, 0, 0, -6.0f, -2.0f},
        {"near-zero decay, init",      2, 130,  2, 32, 2, 16,  32,   1, 1, 1, -2e-3f, 0.0f},
        {"T=2048 standard",            1, 2048, 2, 64, 1, 128, 256,  1, 1, 1, -1.0f, -0.1f},
        {"T=2048 discrete",            1, 2048, 2, 64, 2, 64,  128,  0, 1, 0, -0.3f, 0.0f},
        {"138 chunks of 16, G<H",      1, 2200, 4, 16, 2, 16,  16,   1, 1, 1, -1.0f, -0.1f},
        {"G<H, chunk 80",              2, 333,  6, 48, 3, 32,  80,   1, 0, 1, -0.8f, -0.05f},
        {"tiny T",                     3, 5,    2, 16, 1, 16,  64,   1, 1, 1, -1.0f, -0.1f},
        {"T a multiple of chunk",      1, 256,  2, 32, 1, 32,  64,   0, 1, 1, -0.2f, 0.0f},
        {"P=128 N=32",                 1, 150,  2, 128, 1, 32, 64,   1, 1, 0, -0.5f, -0.05f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
    return test_summary("cuda ssd");
}
