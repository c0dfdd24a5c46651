/* Forward ops of the CPU backend against plain float64 references written here.
 * Every output is poisoned with NaN before the call, so a skipped element fails. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

#define TOL 1e-5

static sd_ctx g_ctx;
static uint64_t g_seed = 20261124;

/* The largest relative error seen per op, printed at the end. */
enum { E_LINEAR, E_MATMUL, E_EMBED, E_RMS, E_LN, E_ROPE, E_INVF, E_ATTN, E_PROBS, E_LSE,
       E_SILU, E_GELU, E_SWIGLU, E_ADD, E_SOFTMAX, E_LOGSOFTMAX, E_COUNT };
static const char *g_err_name[E_COUNT] = {
    "linear", "matmul", "embedding", "rmsnorm", "layernorm", "rotary", "rope inv_freq",
    "attention out", "attention probs", "attention lse", "silu", "gelu_tanh", "swiglu", "add",
    "softmax", "log_softmax"};
static double g_err[E_COUNT];

static void check_err(int which, const char *what, const float *got, const double *ref, size_t n) {
    double e = test_rel_err(got, ref, n);
    if (!(e <= g_err[which])) g_err[which] = e;
    CHECK(e < TOL, "%s: relative error %.3g", what, e);
}

/* A new F32 tensor filled with uniform values in [lo, hi). */
static sd_tensor rand_tensor(int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, float lo,
                             float hi) {
    sd_tensor t;
    if (sd_tensor_f32(&t, ndim, d0, d1, d2, d3) != SD_OK) abort();
    test_fill(t.data, (size_t)sd_numel(&t), &g_seed, lo, hi);
    return t;
}

static sd_tensor poisoned(int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    sd_tensor t;
    if (sd_tensor_f32(&t, ndim, d0, d1, d2, d3) != SD_OK) abort();
    test_poison(t.data, (size_t)sd_numel(&t));
    return t;
}

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) abort();
    return p;
}

#define F(t) ((float *)(t).data)

/* ---- sd_linear ---------------------------------------------------------------------- */

static void ref_linear(double *y, const float *x, const float *w, const float *b, int64_t m,
                       int64_t n, int64_t k) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = b ? b[j] : 0.0;
            for (int64_t p = 0; p < k; p++) s += (double)x[i * k + p] * w[j * k + p];
            y[i * n + j] = s;
        }
}

static void test_linear_case(int ndim, int with_bias) {
    const int64_t K = 37, N = 19;
    sd_tensor x = ndim == 3 ? rand_tensor(3, 2, 5, K, 0, -1, 1) : rand_tensor(2, 6, K, 0, 0, -1, 1);
    sd_tensor w = rand_tensor(2, N, K, 0, 0, -1, 1), b = rand_tensor(1, N, 0, 0, 0, -1, 1);
    sd_tensor out = ndim == 3 ? poisoned(3, 2, 5, N, 0) : poisoned(2, 6, N, 0, 0);
    int64_t m = sd_rows(&x);
    CHECK_OK(sd_linear(&g_ctx, &out, &x, &w, with_bias ? &b : NULL));
    double *ref = dalloc((size_t)(m * N));
    ref_linear(ref, F(x), F(w), with_bias ? F(b) : NULL, m, N, K);
    char what[64];
    snprintf(what, sizeof what, "linear %d-D x, bias %d", ndim, with_bias);
    check_err(E_LINEAR, what, F(out), ref, (size_t)(m * N));
    free(ref);
    sd_tensor_free(&x), sd_tensor_free(&w), sd_tensor_free(&b), sd_tensor_free(&out);
}

static void test_linear(void) {
    for (int ndim = 2; ndim <= 3; ndim++)
        for (int bias = 0; bias <= 1; bias++) test_linear_case(ndim, bias);
    /* a shape mismatch is an internal error naming the shapes */
    sd_tensor x = rand_tensor(2, 4, 8, 0, 0, -1, 1), w = rand_tensor(2, 3, 9, 0, 0, -1, 1);
    sd_tensor out = poisoned(2, 4, 3, 0, 0);
    int rc = sd_linear(&g_ctx, &out, &x, &w, NULL);
    CHECK(rc == SD_ERR_INTERNAL && strstr(sd_errmsg(), "[4, 8]") && strstr(sd_errmsg(), "[3, 9]"),
          "rc %d: %s", rc, sd_errmsg());
    sd_tensor_free(&x), sd_tensor_free(&w), sd_tensor_free(&out);
}

/* ---- sd_matmul ---------------------------------------------------------------------- */

/* element (i, j) of op(m) where m is stored row-major as rows x cols */
static double at(const float *m, int64_t cols, int trans, int64_t i, int64_t j) {
    return trans ? m[j * cols + i] : m[i * cols + j];
}

static void test_matmul_case(int ta, int tb, int batch, float alpha, float beta) {
    const int64_t M = 7, N = 5, K = 11;
    int nd = batch ? 3 : 2;
    int64_t nb = batch ? batch : 1;
    sd_tensor a = ta ? rand_tensor(nd, batch ? nb : K, batch ? K : M, batch ? M : 0, 0, -1, 1)
                     : rand_tensor(nd, batch ? nb : M, batch ? M : K, batch ? K : 0, 0, -1, 1);
    sd_tensor b = tb ? rand_tensor(nd, batch ? nb : N, batch ? N : K, batch ? K : 0, 0, -1, 1)
                     : rand_tensor(nd, batch ? nb : K, batch ? K : N, batch ? N : 0, 0, -1, 1);
    sd_tensor c = rand_tensor(nd, batch ? nb : M, batch ? M : N, batch ? N : 0, 0, -1, 1);
    if (beta == 0.0f) test_poison(c.data, (size_t)sd_numel(&c)); /* beta 0 must not read c */
    double *ref = dalloc((size_t)(nb * M * N));
    for (int64_t z = 0; z < nb; z++) {
        const float *az = F(a) + z * M * K, *bz = F(b) + z * K * N, *cz = F(c) + z * M * N;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t p = 0; p < K; p++)
                    s += at(az, ta ? M : K, ta, i, p) * at(bz, tb ? K : N, tb, p, j);
                ref[(z * M + i) * N + j] = alpha * s + (beta != 0.0f ? beta * cz[i * N + j] : 0.0);
            }
    }
    CHECK_OK(sd_matmul(&g_ctx, &c, &a, &b, ta, tb, alpha, beta));
    char what[96];
    snprintf(what, sizeof what, "matmul ta %d tb %d batch %d alpha %g beta %g", ta, tb, batch,
             alpha, beta);
    check_err(E_MATMUL, what, F(c), ref, (size_t)(nb * M * N));
    free(ref);
    sd_tensor_free(&a), sd_tensor_free(&b), sd_tensor_free(&c);
}

static void test_matmul(void) {
    for (int ta = 0; ta <= 1; ta++)
        for (int tb = 0; tb <= 1; tb++) {
            test_matmul_case(ta, tb, 0, 1.0f, 0.0f);
            test_matmul_case(ta, tb, 3, 1.0f, 0.0f);
            test_matmul_case(ta, tb, 3, 0.7f, 0.5f);
        }
    /* inner dims differ */
    sd_tensor a = rand_tensor(2, 3, 4, 0, 0, -1, 1), b = rand_tensor(2, 5, 6, 0, 0, -1, 1);
    sd_tensor c = poisoned(2, 3, 6, 0, 0);
    CHECK(sd_matmul(&g_ctx, &c, &a, &b, 0, 0, 1, 0) == SD_ERR_INTERNAL, "%s", sd_errmsg());
    sd_tensor_free(&a), sd_tensor_free(&b), sd_tensor_free(&c);
}

/* ---- sd_embedding ------------------------------------------------------------------- */

static void test_embedding(int64_t D) {
    const int64_t V = 11, shape[2] = {2, 5};
    sd_tensor table = rand_tensor(2, V, D, 0, 0, -1, 1), ids, out = poisoned(3, 2, 5, D, 0);
    if (sd_tensor_alloc(&ids, SD_I32, 2, shape) != SD_OK) abort();
    int32_t *id = ids.data;
    for (int i = 0; i < 10; i++) id[i] = (int32_t)((i * 7 + 3) % V);
    id[0] = 0, id[9] = (int32_t)(V - 1); /* both ends of the table */
    CHECK_OK(sd_embedding(&g_ctx, &out, &ids, &table));
    double *ref = dalloc(10 * D);
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < D; j++) ref[i * D + j] = F(table)[id[i] * D + j];
    check_err(E_EMBED, "embedding", F(out), ref, 10 * D);

    /* ids outside [0, V) are bad input naming the id and its position */
    id[7] = (int32_t)V;
    int rc = sd_embedding(&g_ctx, &out, &ids, &table);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "11") && strstr(sd_errmsg(), "position 7"),
          "rc %d: %s", rc, sd_errmsg());
    id[7] = 1, id[3] = -4;
    rc = sd_embedding(&g_ctx, &out, &ids, &table);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "-4") && strstr(sd_errmsg(), "position 3"),
          "rc %d: %s", rc, sd_errmsg());
    free(ref);
    sd_tensor_free(&table), sd_tensor_free(&ids), sd_tensor_free(&out);
}

/* ---- norms ---------------------------------------------------------------------------- */

static void test_rmsnorm(int64_t d) {
    const float eps = 1e-6f;
    sd_tensor x = rand_tensor(3, 3, 4, d, 0, -2, 2), w = rand_tensor(1, d, 0, 0, 0, 0.5f, 1.5f);
    sd_tensor out = poisoned(3, 3, 4, d, 0);
    CHECK_OK(sd_rmsnorm(&g_ctx, &out, &x, &w, eps));
    int64_t rows = 12;
    double *ref = dalloc((size_t)(rows * d));
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = F(x) + r * d;
        double ss = 0;
        for (int64_t i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
        double inv = 1.0 / sqrt(ss / d + eps);
        for (int64_t i = 0; i < d; i++) ref[r * d + i] = xr[i] * inv * F(w)[i];
    }
    check_err(E_RMS, "rmsnorm", F(out), ref, (size_t)(rows * d));
    free(ref);
    sd_tensor_free(&x), sd_tensor_free(&w), sd_tensor_free(&out);
}

static void test_layernorm(int64_t d, int with_bias) {
    const float eps = 1e-5f;
    /* an offset mean checks that the variance is taken about the mean */
    sd_tensor x = rand_tensor(2, 5, d, 0, 0, 1, 3), w = rand_tensor(1, d, 0, 0, 0, 0.5f, 1.5f);
    sd_tensor b = rand_tensor(1, d, 0, 0, 0, -1, 1), out = poisoned(2, 5, d, 0, 0);
    CHECK_OK(sd_layernorm(&g_ctx, &out, &x, &w, with_bias ? &b : NULL, eps));
    double *ref = dalloc((size_t)(5 * d));
    for (int64_t r = 0; r < 5; r++) {
        const float *xr = F(x) + r * d;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < d; i++) mean += xr[i];
        mean /= d;
        for (int64_t i = 0; i < d; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= d; /* biased, as torch */
        for (int64_t i = 0; i < d; i++)
            ref[r * d + i] = (xr[i] - mean) / sqrt(var + eps) * F(w)[i] + (with_bias ? F(b)[i] : 0.0);
    }
    check_err(E_LN, with_bias ? "layernorm with bias" : "layernorm without bias", F(out), ref,
              (size_t)(5 * d));
    free(ref);
    sd_tensor_free(&x), sd_tensor_free(&w), sd_tensor_free(&b), sd_tensor_free(&out);
}

/* ---- rotary --------------------------------------------------------------------------- */

/* The angle is defined in fp32 by HF ((float)pos * inv_freq, inv_freq fp32 and checked on
 * its own below); from there on the reference is float64. */
static void ref_rotary(double *y, const float *x, int64_t B, int64_t T, int64_t H,
                       const sd_rope_config *cfg, const float *inv_freq, int64_t pos0) {
    int64_t hd = cfg->head_dim, half = cfg->rotary_dim / 2;
    for (int64_t bt = 0; bt < B * T; bt++) {
        float pos = (float)(pos0 + bt % T);
        for (int64_t h = 0; h < H; h++) {
            const float *xh = x + (bt * H + h) * hd;
            double *yh = y + (bt * H + h) * hd;
            for (int64_t i = 0; i < hd; i++) yh[i] = xh[i];
            for (int64_t i = 0; i < half; i++) {
                double a = (double)(pos * inv_freq[i]);
                int64_t lo = cfg->interleaved ? 2 * i : i, hi = cfg->interleaved ? 2 * i + 1 : i + half;
                yh[lo] = xh[lo] * cos(a) - xh[hi] * sin(a);
                yh[hi] = xh[hi] * cos(a) + xh[lo] * sin(a);
            }
        }
    }
}

static void test_rotary_case(int64_t T, int64_t H, int head_dim, int rotary_dim,
                             int interleaved, int64_t pos0, int llama3) {
    sd_rope_config cfg = {head_dim, rotary_dim, 10000.0, interleaved, SD_ROPE_SCALING_NONE,
                          0, 0, 0, 0};
    if (llama3) {
        cfg.theta = 500000.0, cfg.scaling = SD_ROPE_SCALING_LLAMA3;
        cfg.factor = 32, cfg.low_freq_factor = 1, cfg.high_freq_factor = 4;
        cfg.original_max_position_embeddings = 8192;
    }
    const int64_t B = 2;
    sd_tensor x = rand_tensor(4, B, T, H, head_dim, -1, 1);
    size_t n = (size_t)sd_numel(&x);
    float *x0 = malloc(n * sizeof(float));
    float inv_freq[256];
    double *ref = dalloc(n);
    memcpy(x0, x.data, n * sizeof(float));
    CHECK_OK(sd_rope_inv_freq(&cfg, inv_freq));
    ref_rotary(ref, x0, B, T, H, &cfg, inv_freq, pos0);
    CHECK_OK(sd_rotary(&g_ctx, &x, &cfg, pos0));
    char what[128];
    snprintf(what, sizeof what, "rotary T %lld H %lld hd %d rd %d interleaved %d pos0 %lld llama3 %d",
             (long long)T, (long long)H, head_dim, rotary_dim, interleaved, (long long)pos0, llama3);
    check_err(E_ROPE, what, F(x), ref, n);
    /* dims past rotary_dim pass through bit for bit */
    int same = 1;
    for (size_t r = 0; r < n / (size_t)head_dim; r++)
        for (int i = rotary_dim; i < head_dim; i++)
            same &= F(x)[r * head_dim + i] == x0[r * head_dim + i];
    CHECK(same, "%s: pass-through dims changed", what);
    free(x0), free(ref);
    sd_tensor_free(&x);
}

/* HF _compute_default_rope_parameters + _compute_llama3_parameters in float64. */
static void test_llama3_inv_freq(void) {
    const int dim = 64;
    const double base = 500000.0, factor = 32, low = 1, high = 4, old = 8192;
    sd_rope_config cfg = {dim, dim, base, 0, SD_ROPE_SCALING_LLAMA3, factor, low, high, (int)old};
    float got[32];
    CHECK_OK(sd_rope_inv_freq(&cfg, got));
    double worst = 0;
    int n_low = 0, n_mid = 0, n_high = 0;
    for (int i = 0; i < dim / 2; i++) {
        double f = 1.0 / pow(base, (double)(2 * i) / dim), ref;
        double wavelen = 2 * M_PI / f;
        if (wavelen > old / low) ref = f / factor, n_low++;
        else if (wavelen < old / high) ref = f, n_high++;
        else {
            double smooth = (old / wavelen - low) / (high - low);
            ref = (1 - smooth) * f / factor + smooth * f, n_mid++;
        }
        double e = fabs(got[i] - ref) / ref;
        worst = e > worst ? e : worst;
    }
    if (worst > g_err[E_INVF]) g_err[E_INVF] = worst;
    CHECK(worst < TOL, "llama3 inv_freq: worst relative error %.3g", worst);
    CHECK(n_low > 0 && n_mid > 0 && n_high > 0, "all three bands: %d %d %d", n_low, n_mid, n_high);
    /* without scaling the frequencies are base^(-2i/dim) */
    cfg.scaling = SD_ROPE_SCALING_NONE;
    CHECK_OK(sd_rope_inv_freq(&cfg, got));
    worst = 0;
    for (int i = 0; i < dim / 2; i++) {
        double ref = 1.0 / pow(base, (double)(2 * i) / dim), e = fabs(got[i] - ref) / ref;
        worst = e > worst ? e : worst;
    }
    if (worst > g_err[E_INVF]) g_err[E_INVF] = worst;
    CHECK(worst < TOL, "default inv_freq: worst relative error %.3g", worst);
}

static void test_rotary(void) {
    for (int il = 0; il <= 1; il++) {
        test_rotary_case(9, 3, 16, 16, il, 0, 0);  /* full rotary */
        test_rotary_case(9, 3, 16, 16, il, 37, 0); /* a KV-cache offset */
        test_rotary_case(9, 3, 24, 8, il, 5, 0);   /* partial rotary */
        test_rotary_case(9, 3, 64, 64, il, 20, 1); /* llama3 scaling */
        test_rotary_case(64, 4, 64, 32, il, 3, 0); /* large enough for the threaded loop */
    }
    test_llama3_inv_freq();
    sd_rope_config bad = {16, 18, 10000.0, 0, SD_ROPE_SCALING_NONE, 0, 0, 0, 0};
    float f[16];
    CHECK(sd_rope_inv_freq(&bad, f) == SD_ERR_INTERNAL, "rotary_dim > head_dim accepted");
}

/* ---- attention ------------------------------------------------------------------------ */

static void ref_attention(double *out, double *probs, double *lse, const float *q, const float *k,
                          const float *v, int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv,
                          int64_t hd, double scale) {
    double *sc = dalloc((size_t)S);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t t = 0; t < T; t++) {
                int64_t hk = h / (Hq / Hkv), nk = S - T + t + 1, row = (b * Hq + h) * T + t;
                const float *qr = q + ((b * T + t) * Hq + h) * hd;
                double m = -INFINITY, sum = 0;
                for (int64_t j = 0; j < nk; j++) {
                    const float *kr = k + ((b * S + j) * Hkv + hk) * hd;
                    double s = 0;
                    for (int64_t d = 0; d < hd; d++) s += (double)qr[d] * kr[d];
                    sc[j] = s * scale;
                    m = sc[j] > m ? sc[j] : m;
                }
                for (int64_t j = 0; j < nk; j++) sum += exp(sc[j] - m);
                lse[row] = m + log(sum);
                double *o = out + ((b * T + t) * Hq + h) * hd;
                for (int64_t d = 0; d < hd; d++) o[d] = 0;
                for (int64_t j = 0; j < S; j++) {
                    double p = j < nk ? exp(sc[j] - m) / sum : 0.0;
                    probs[row * S + j] = p;
                    const float *vr = v + ((b * S + j) * Hkv + hk) * hd;
                    for (int64_t d = 0; d < hd && j < nk; d++) o[d] += p * vr[d];
                }
            }
    free(sc);
}

static void test_attention_case(int64_t T, int64_t S) {
    const int64_t B = 2, Hq = 4, Hkv = 2, hd = 16;
    const float scale = 1.0f / sqrtf((float)hd);
    sd_tensor q = rand_tensor(4, B, T, Hq, hd, -2, 2), k = rand_tensor(4, B, S, Hkv, hd, -2, 2);
    sd_tensor v = rand_tensor(4, B, S, Hkv, hd, -1, 1), out = poisoned(4, B, T, Hq, hd);
    sd_tensor probs = poisoned(4, B, Hq, T, S), lse = poisoned(3, B, Hq, T, 0);
    size_t no = (size_t)sd_numel(&out), np = (size_t)sd_numel(&probs), nl = (size_t)sd_numel(&lse);
    CHECK_OK(sd_attention(&g_ctx, &out, &q, &k, &v, scale, &probs, &lse));
    double *ro = dalloc(no), *rp = dalloc(np), *rl = dalloc(nl);
    ref_attention(ro, rp, rl, F(q), F(k), F(v), B, T, S, Hq, Hkv, hd, scale);
    char what[64];
    snprintf(what, sizeof what, "attention T %lld S %lld", (long long)T, (long long)S);
    check_err(E_ATTN, what, F(out), ro, no);
    check_err(E_PROBS, what, F(probs), rp, np);
    check_err(E_LSE, what, F(lse), rl, nl);

    /* each probs row sums to 1 and is exactly 0 above the (offset) diagonal */
    int zeros = 1;
    double worst_sum = 0;
    for (int64_t r = 0; r < B * Hq * T; r++) {
        int64_t t = r % T;
        double s = 0;
        for (int64_t j = 0; j < S; j++) {
            float p = F(probs)[r * S + j];
            s += p;
            if (j > S - T + t) zeros &= p == 0.0f && !signbit(p);
        }
        worst_sum = fmax(worst_sum, fabs(s - 1));
    }
    CHECK(zeros, "%s: probs not exactly 0 above the diagonal", what);
    CHECK(worst_sum < 1e-5, "%s: probs row sums off by %.3g", what, worst_sum);

    /* without probs and lse: the same output, bit for bit; and a second call is identical */
    sd_tensor out2 = poisoned(4, B, T, Hq, hd);
    CHECK_OK(sd_attention(&g_ctx, &out2, &q, &k, &v, scale, NULL, NULL));
    CHECK(memcmp(out.data, out2.data, no * sizeof(float)) == 0, "%s: output depends on probs/lse", what);
    test_poison(out2.data, no);
    CHECK_OK(sd_attention(&g_ctx, &out2, &q, &k, &v, scale, &probs, &lse));
    CHECK(memcmp(out.data, out2.data, no * sizeof(float)) == 0, "%s: not deterministic", what);
    free(ro), free(rp), free(rl);
    sd_tensor_free(&q), sd_tensor_free(&k), sd_tensor_free(&v), sd_tensor_free(&out);
    sd_tensor_free(&out2), sd_tensor_free(&probs), sd_tensor_free(&lse);
}

static void test_attention(void) {
    test_attention_case(7, 7);   /* prefill */
    test_attention_case(5, 12);  /* KV cache holds 7 earlier positions */
    test_attention_case(1, 10);  /* one decoded token */
    /* Hq not a multiple of Hkv */
    sd_tensor q = rand_tensor(4, 1, 2, 3, 8, -1, 1), k = rand_tensor(4, 1, 2, 2, 8, -1, 1);
    sd_tensor out = poisoned(4, 1, 2, 3, 8);
    CHECK(sd_attention(&g_ctx, &out, &q, &k, &k, 0.3f, NULL, NULL) == SD_ERR_INTERNAL, "GQA 3/2 accepted");
    sd_tensor_free(&q), sd_tensor_free(&k), sd_tensor_free(&out);
}

/* ---- elementwise ---------------------------------------------------------------------- */

static double ref_silu(double x) { return x / (1 + exp(-x)); }
static double ref_gelu(double x) {
    return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

static void test_elementwise(void) {
    const int64_t n = 40000; /* above SD_CPU_PAR_MIN: the threaded loop */
    sd_tensor x = rand_tensor(2, 10, 4000, 0, 0, -8, 8), y = rand_tensor(2, 10, 4000, 0, 0, -3, 3);
    F(x)[0] = -100, F(x)[1] = 100, F(x)[2] = 0, F(x)[3] = -20; /* tails */
    sd_tensor out = poisoned(2, 10, 4000, 0, 0);
    double *ref = dalloc(n);

    CHECK_OK(sd_silu(&g_ctx, &out, &x));
    for (int64_t i = 0; i < n; i++) ref[i] = ref_silu(F(x)[i]);
    check_err(E_SILU, "silu", F(out), ref, n);

    test_poison(out.data, n);
    CHECK_OK(sd_gelu_tanh(&g_ctx, &out, &x));
    for (int64_t i = 0; i < n; i++) ref[i] = ref_gelu(F(x)[i]);
    check_err(E_GELU, "gelu_tanh", F(out), ref, n);

    test_poison(out.data, n);
    CHECK_OK(sd_swiglu(&g_ctx, &out, &x, &y));
    for (int64_t i = 0; i < n; i++) ref[i] = ref_silu(F(x)[i]) * F(y)[i];
    check_err(E_SWIGLU, "swiglu", F(out), ref, n);

    test_poison(out.data, n);
    CHECK_OK(sd_add(&g_ctx, &out, &x, &y));
    for (int64_t i = 0; i < n; i++) ref[i] = (double)F(x)[i] + F(y)[i];
    check_err(E_ADD, "add", F(out), ref, n);

    /* out may alias the input */
    for (int64_t i = 0; i < n; i++) ref[i] = ref_silu(F(x)[i]);
    CHECK_OK(sd_silu(&g_ctx, &x, &x));
    check_err(E_SILU, "silu in place", F(x), ref, n);
    CHECK(sd_add(&g_ctx, &out, &x, &out) == SD_OK, "%s", sd_errmsg());
    free(ref);
    sd_tensor_free(&x), sd_tensor_free(&y), sd_tensor_free(&out);
}

/* ---- softmax -------------------------------------------------------------------------- */

static void test_softmax(int64_t R, int64_t D) {
    sd_tensor x = rand_tensor(2, R, D, 0, 0, -5, 5), out = poisoned(2, R, D, 0, 0);
    for (int64_t i = 0; i < D; i++) F(x)[3 * D + i] *= 200.0f; /* magnitudes up to 1000 */
    F(x)[4 * D + 7] = 1000.0f, F(x)[4 * D + 8] = -1000.0f;
    size_t n = (size_t)(R * D);
    double *rs = dalloc(n), *rl = dalloc(n);
    for (int64_t r = 0; r < R; r++) {
        const float *xr = F(x) + r * D;
        double m = -INFINITY, s = 0;
        for (int64_t i = 0; i < D; i++) m = fmax(m, xr[i]);
        for (int64_t i = 0; i < D; i++) s += exp(xr[i] - m);
        for (int64_t i = 0; i < D; i++) {
            rs[r * D + i] = exp(xr[i] - m) / s;
            rl[r * D + i] = xr[i] - m - log(s);
        }
    }
    CHECK_OK(sd_softmax(&g_ctx, &out, &x));
    check_err(E_SOFTMAX, "softmax", F(out), rs, n);
    /* per row too: the large row must not hide an error in a small one */
    for (int64_t r = 0; r < R; r++) check_err(E_SOFTMAX, "softmax row", F(out) + r * D, rs + r * D, D);
    test_poison(out.data, n);
    CHECK_OK(sd_log_softmax(&g_ctx, &out, &x));
    for (int64_t r = 0; r < R; r++)
        check_err(E_LOGSOFTMAX, "log_softmax row", F(out) + r * D, rl + r * D, D);
    CHECK_OK(sd_softmax(&g_ctx, &x, &x)); /* in place */
    check_err(E_SOFTMAX, "softmax in place", F(x), rs, n);
    free(rs), free(rl);
    sd_tensor_free(&x), sd_tensor_free(&out);
}

/* ---- determinism and backend dispatch ----------------------------------------------- */

static void test_linear_determinism(void) {
    sd_tensor x = rand_tensor(2, 256, 64, 0, 0, -1, 1), w = rand_tensor(2, 192, 64, 0, 0, -1, 1);
    sd_tensor b = rand_tensor(1, 192, 0, 0, 0, -1, 1);
    sd_tensor o1 = poisoned(2, 256, 192, 0, 0), o2 = poisoned(2, 256, 192, 0, 0);
    CHECK_OK(sd_linear(&g_ctx, &o1, &x, &w, &b));
    CHECK_OK(sd_linear(&g_ctx, &o2, &x, &w, &b));
    CHECK(memcmp(o1.data, o2.data, sd_nbytes(&o1)) == 0, "linear not bit-identical run to run");
    sd_tensor_free(&x), sd_tensor_free(&w), sd_tensor_free(&b);
    sd_tensor_free(&o1), sd_tensor_free(&o2);
}

/* Row-parallel ops give the same bits on 1 and 2 threads (each row runs on one thread). */
static void test_thread_independence(void) {
    sd_ctx one;
    sd_tensor q = rand_tensor(4, 2, 64, 4, 16, -2, 2), k = rand_tensor(4, 2, 80, 2, 16, -2, 2);
    sd_tensor v = rand_tensor(4, 2, 80, 2, 16, -1, 1), x = rand_tensor(2, 64, 1024, 0, 0, -3, 3);
    sd_tensor w = rand_tensor(1, 1024, 0, 0, 0, 0.5f, 1.5f);
    sd_tensor o1 = poisoned(4, 2, 64, 4, 16), o2 = poisoned(4, 2, 64, 4, 16);
    sd_tensor n1 = poisoned(2, 64, 1024, 0, 0), n2 = poisoned(2, 64, 1024, 0, 0);
    sd_tensor s1 = poisoned(2, 64, 1024, 0, 0), s2 = poisoned(2, 64, 1024, 0, 0);
    sd_ctx_init_cpu(&one, 1);
    CHECK_OK(sd_attention(&one, &o1, &q, &k, &v, 0.25f, NULL, NULL));
    CHECK_OK(sd_rmsnorm(&one, &n1, &x, &w, 1e-5f));
    CHECK_OK(sd_softmax(&one, &s1, &x));
    sd_ctx_init_cpu(&g_ctx, 2);
    CHECK_OK(sd_attention(&g_ctx, &o2, &q, &k, &v, 0.25f, NULL, NULL));
    CHECK_OK(sd_rmsnorm(&g_ctx, &n2, &x, &w, 1e-5f));
    CHECK_OK(sd_softmax(&g_ctx, &s2, &x));
    CHECK(memcmp(o1.data, o2.data, sd_nbytes(&o1)) == 0, "attention: 1 vs 2 threads differ");
    CHECK(memcmp(n1.data, n2.data, sd_nbytes(&n1)) == 0, "rmsnorm: 1 vs 2 threads differ");
    CHECK(memcmp(s1.data, s2.data, sd_nbytes(&s1)) == 0, "softmax: 1 vs 2 threads differ");
    sd_ctx_init_cpu(&g_ctx, 0); /* back to SSDISTILL_THREADS */
    sd_tensor *all[] = {&q, &k, &v, &x, &w, &o1, &o2, &n1, &n2, &s1, &s2};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sd_tensor_free(all[i]);
}

static void test_cuda_not_built(void) {
    sd_ctx cuda = g_ctx;
    cuda.backend = SD_DEV_CUDA;
    sd_tensor x = rand_tensor(2, 2, 4, 0, 0, -1, 1), out = poisoned(2, 2, 4, 0, 0);
    /* CPU tensors under a CUDA context: a device mismatch */
    CHECK(sd_silu(&cuda, &out, &x) == SD_ERR_INTERNAL, "device mismatch accepted");
    x.device = out.device = SD_DEV_CUDA; /* pretend; the data is never touched */
    int rc = sd_silu(&cuda, &out, &x);
#ifdef SD_HAVE_CUDA /* built, but this context never went through sd_ctx_init_cuda */
    CHECK(rc == SD_ERR_INTERNAL && strstr(sd_errmsg(), "CUDA context not initialised"), "rc %d: %s",
          rc, sd_errmsg());
#else
    CHECK(rc == SD_ERR_INTERNAL && strstr(sd_errmsg(), "CUDA backend not built"), "rc %d: %s", rc,
          sd_errmsg());
#endif
    x.device = out.device = SD_DEV_CPU;
    sd_tensor_free(&x), sd_tensor_free(&out);
}

int main(void) {
    sd_ctx_init_cpu(&g_ctx, 0);
    test_linear();
    test_matmul();
    test_embedding(6);
    test_embedding(4096); /* large enough for the threaded loop */
    test_rmsnorm(32);
    test_rmsnorm(4096);
    test_layernorm(48, 1);
    test_layernorm(48, 0);
    test_layernorm(8192, 1);
    test_rotary();
    test_attention();
    test_elementwise();
    test_softmax(5, 33);
    test_softmax(48, 1024);
    test_linear_determinism();
    test_thread_independence();
    test_cuda_not_built();
    for (int i = 0; i < E_COUNT; i++) printf("  max rel err %-16s %.3g\n", g_err_name[i], g_err[i]);
    return test_summary("test_ops");
}
