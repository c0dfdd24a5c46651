/* Forward and gradient tests of the ops the student and the losses need: causal depthwise
 * conv1d (full and step forms), gated RMSNorm, cross-entropy, KL, rotary and attention.
 * Forwards against float64 loops; backwards against float64 central differences
 * (tests/grad_util.h), called twice to check that they add, and with NULL gradients. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/grad_util.h"

#define FWD_TOL 1e-5

static void check_fwd(const char *op, const float *got, const double *ref, size_t n) {
    double e = test_rel_err(got, ref, n);
    record(op, e);
    CHECK(e < FWD_TOL, "%s: relative error %.3g", op, e);
}

static void free_all(sd_tensor **ts, size_t n) {
    for (size_t i = 0; i < n; i++) sd_tensor_free(ts[i]);
}
#define FREE_ALL(...)                                                  \
    do {                                                               \
        sd_tensor *ts_[] = {__VA_ARGS__};                              \
        free_all(ts_, sizeof ts_ / sizeof *ts_);                       \
    } while (0)

/* ---- conv1d ---------------------------------------------------------------------------- */

typedef struct {
    double *x, *w, *b, *r;
    int64_t B, T, C, W;
    int silu, has_bias;
} conv_case;

static void conv64(double *out, const conv_case *c) {
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t t = 0; t < c->T; t++)
            for (int64_t ch = 0; ch < c->C; ch++) {
                double s = c->has_bias ? c->b[ch] : 0;
                for (int64_t j = 0; j < c->W; j++) {
                    int64_t ts = t - (c->W - 1) + j;
                    if (ts >= 0) s += c->w[ch * c->W + j] * c->x[(b * c->T + ts) * c->C + ch];
                }
                out[(b * c->T + t) * c->C + ch] = c->silu ? s / (1 + exp(-s)) : s;
            }
}

static double conv_loss(const void *cv) {
    const conv_case *c = cv;
    size_t n = (size_t)(c->B * c->T * c->C);
    double *y = dalloc(n), L = 0;
    conv64(y, c);
    for (size_t i = 0; i < n; i++) L += c->r[i] * y[i];
    free(y);
    return L;
}

static void test_conv1d(int64_t W, int silu, int has_bias, int hf_weight) {
    const int64_t B = 2, T = 11, C = 6;
    sd_tensor x = rand_tensor(3, B, T, C, 0, -2, 2), b = rand_tensor(1, C, 0, 0, 0, -1, 1);
    sd_tensor w = hf_weight ? rand_tensor(3, C, 1, W, 0, -1, 1) : rand_tensor(2, C, W, 0, 0, -1, 1);
    sd_tensor dy = rand_tensor(3, B, T, C, 0, -1, 1), out = zeros_like(&x);
    const sd_tensor *bias = has_bias ? &b : NULL;
    conv_case c = {to_d(&x), to_d(&w), to_d(&b), to_d(&dy), B, T, C, W, silu, has_bias};

    /* forward against float64 */
    test_poison(F(out), (size_t)sd_numel(&out));
    CHECK_OK(sd_conv1d(&g_ctx, &out, &x, &w, bias, silu));
    double *ref = dalloc((size_t)sd_numel(&out));
    conv64(ref, &c);
    check_fwd("conv1d forward", F(out), ref, (size_t)sd_numel(&out));

    /* the step form, token by token from a zero state, gives the full form's outputs */
    sd_tensor st, xs, ys;
    if (sd_tensor_f32(&st, 3, B, C, W - 1, 0) || sd_tensor_f32(&xs, 2, B, C, 0, 0) ||
        sd_tensor_f32(&ys, 2, B, C, 0, 0))
        abort();
    double step_err = 0;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t bb = 0; bb < B; bb++)
            memcpy(F(xs) + bb * C, F(x) + (bb * T + t) * C, (size_t)C * sizeof(float));
        test_poison(F(ys), (size_t)(B * C));
        CHECK_OK(sd_conv1d_step(&g_ctx, &ys, &xs, &st, &w, bias, silu));
        for (int64_t bb = 0; bb < B; bb++)
            for (int64_t ch = 0; ch < C; ch++) {
                double e = fabs(F(ys)[bb * C + ch] - F(out)[(bb * T + t) * C + ch]);
                if (!(e <= step_err)) step_err = e;
            }
    }
    record("conv1d step vs full", step_err);
    CHECK(step_err <= 1e-6, "conv1d step vs full: max abs difference %.3g", step_err);

    /* backward */
    sd_tensor dx = zeros_like(&x), dw = zeros_like(&w), db = zeros_like(&b);
    CHECK_OK(sd_conv1d_backward(&g_ctx, &dx, &dw, has_bias ? &db : NULL, &dy, &x, &w, bias, silu));
    check_grad("conv1d", "dx", conv_loss, &c, c.x, &dx);
    check_grad("conv1d", "dw", conv_loss, &c, c.w, &dw);
    if (has_bias) check_grad("conv1d", "dbias", conv_loss, &c, c.b, &db);
    if (!has_bias) { /* the bias gradient does not depend on a bias being there */
        CHECK_OK(sd_conv1d_backward(&g_ctx, NULL, NULL, &db, &dy, &x, &w, NULL, silu));
        if (!silu) {
            c.has_bias = 1;
            memset(c.b, 0, (size_t)C * sizeof(double));
            check_grad("conv1d", "dbias", conv_loss, &c, c.b, &db);
        }
    }
    sd_tensor dx1 = clone(&dx), dw1 = clone(&dw);
    CHECK_OK(sd_conv1d_backward(&g_ctx, &dx, &dw, NULL, &dy, &x, &w, bias, silu));
    check_doubled("conv1d dx", &dx1, &dx);
    check_doubled("conv1d dw", &dw1, &dw);
    CHECK_OK(sd_conv1d_backward(&g_ctx, NULL, NULL, NULL, &dy, &x, &w, bias, silu));
    free(ref), free(c.x), free(c.w), free(c.b), free(c.r);
    FREE_ALL(&x, &b, &w, &dy, &out, &st, &xs, &ys, &dx, &dw, &db, &dx1, &dw1);
}

static void test_conv1d_bad_args(void) {
    sd_tensor x = rand_tensor(3, 1, 4, 3, 0, -1, 1), w = rand_tensor(2, 3, 5, 0, 0, -1, 1);
    sd_tensor out = zeros_like(&x);
    CHECK(sd_conv1d(&g_ctx, &out, &x, &w, NULL, 0) == SD_ERR_INTERNAL, "width 5 accepted");
    FREE_ALL(&x, &w, &out);
}

/* ---- gated RMSNorm --------------------------------------------------------------------- */

typedef struct {
    double *y, *z, *w, *r;
    int64_t rows, d, g;
    double eps;
} gn_case;

static void gated64(double *out, const gn_case *c) {
    for (int64_t k = 0; k < c->rows * (c->d / c->g); k++) {
        const double *y = c->y + k * c->g, *z = c->z ? c->z + k * c->g : NULL;
        const double *w = c->w + (k % (c->d / c->g)) * c->g;
        double ss = 0;
        for (int64_t i = 0; i < c->g; i++) {
            double h = z ? y[i] * z[i] / (1 + exp(-z[i])) : y[i];
            ss += h * h;
        }
        double r = 1 / sqrt(ss / (double)c->g + c->eps);
        for (int64_t i = 0; i < c->g; i++) {
            double h = z ? y[i] * z[i] / (1 + exp(-z[i])) : y[i];
            out[k * c->g + i] = w[i] * h * r;
        }
    }
}

static double gated_loss(const void *cv) {
    const gn_case *c = cv;
    size_t n = (size_t)(c->rows * c->d);
    double *o = dalloc(n), L = 0;
    gated64(o, c);
    for (size_t i = 0; i < n; i++) L += c->r[i] * o[i];
    free(o);
    return L;
}

static void test_gated_norm(int64_t rows, int64_t d, int64_t g, int with_z) {
    float eps = 1e-5f;
    sd_tensor y = rand_tensor(2, rows, d, 0, 0, -2, 2), z = rand_tensor(2, rows, d, 0, 0, -3, 3);
    sd_tensor w = rand_tensor(1, d, 0, 0, 0, 0.5f, 1.5f), dout = rand_tensor(2, rows, d, 0, 0, -1, 1);
    sd_tensor out = zeros_like(&y);
    const sd_tensor *zp = with_z ? &z : NULL;
    gn_case c = {to_d(&y), with_z ? to_d(&z) : NULL, to_d(&w), to_d(&dout), rows, d, g, eps};
    test_poison(F(out), (size_t)sd_numel(&out));
    CHECK_OK(sd_gated_rmsnorm(&g_ctx, &out, &y, zp, &w, g, eps));
    double *ref = dalloc((size_t)sd_numel(&out));
    gated64(ref, &c);
    check_fwd("gated rmsnorm forward", F(out), ref, (size_t)sd_numel(&out));

    sd_tensor dy = zeros_like(&y), dz = zeros_like(&z), dw = zeros_like(&w);
    CHECK_OK(sd_gated_rmsnorm_backward(&g_ctx, &dy, with_z ? &dz : NULL, &dw, &dout, &y, zp, &w, g, eps));
    check_grad("gated rmsnorm", "dy", gated_loss, &c, c.y, &dy);
    if (with_z) check_grad("gated rmsnorm", "dz", gated_loss, &c, c.z, &dz);
    check_grad("gated rmsnorm", "dw", gated_loss, &c, c.w, &dw);
    sd_tensor dy1 = clone(&dy), dz1 = clone(&dz), dw1 = clone(&dw);
    CHECK_OK(sd_gated_rmsnorm_backward(&g_ctx, &dy, with_z ? &dz : NULL, &dw, &dout, &y, zp, &w, g, eps));
    check_doubled("gated rmsnorm dy", &dy1, &dy);
    if (with_z) check_doubled("gated rmsnorm dz", &dz1, &dz);
    check_doubled("gated rmsnorm dw", &dw1, &dw);
    CHECK_OK(sd_gated_rmsnorm_backward(&g_ctx, NULL, NULL, NULL, &dout, &y, zp, &w, g, eps));
    CHECK(sd_gated_rmsnorm(&g_ctx, &out, &y, zp, &w, d + 1, eps) == SD_ERR_INTERNAL,
          "a group size not dividing d accepted");
    free(ref), free(c.y), free(c.z), free(c.w), free(c.r);
    FREE_ALL(&y, &z, &w, &dout, &out, &dy, &dz, &dw, &dy1, &dz1, &dw1);
}

/* ---- cross-entropy and KL -------------------------------------------------------------- */

#define IGNORE (-100)

typedef struct {
    double *s, *t, *g; /* student (or CE) logits, teacher logits, per-row upstream g_r */
    const int32_t *targets;
    int64_t rows, V;
    double T;
    int kl;
} loss_case;

/* log-softmax of x / T into lp (double, max-subtracted) */
static void log_softmax64(double *lp, const double *x, int64_t V, double T) {
    double m = -INFINITY, s = 0;
    for (int64_t i = 0; i < V; i++) m = x[i] / T > m ? x[i] / T : m;
    for (int64_t i = 0; i < V; i++) s += exp(x[i] / T - m);
    for (int64_t i = 0; i < V; i++) lp[i] = x[i] / T - m - log(s);
}

static void losses64(double *loss, const loss_case *c) {
    double *ls = dalloc((size_t)c->V), *lt = dalloc((size_t)c->V);
    for (int64_t r = 0; r < c->rows; r++) {
        loss[r] = 0;
        if (c->targets && c->targets[r] == IGNORE) continue;
        log_softmax64(ls, c->s + r * c->V, c->V, c->kl ? c->T : 1);
        if (!c->kl) {
            loss[r] = -ls[c->targets[r]];
            continue;
        }
        log_softmax64(lt, c->t + r * c->V, c->V, c->T);
        for (int64_t i = 0; i < c->V; i++) loss[r] += exp(lt[i]) * (lt[i] - ls[i]);
    }
    free(ls), free(lt);
}

static double losses_loss(const void *cv) {
    const loss_case *c = cv;
    double *l = dalloc((size_t)c->rows), L = 0;
    losses64(l, c);
    for (int64_t r = 0; r < c->rows; r++) L += c->g[r] * l[r];
    free(l);
    return L;
}

/* kl 0: cross-entropy; else KL at temperature T (with targets marking ignored rows). */
static void test_loss(int kl, double T, float mag) {
    const int64_t rows = 6, V = 37;
    const char *op = kl ? "kl_div" : "cross_entropy";
    sd_tensor s = rand_tensor(2, rows, V, 0, 0, -mag, mag), t = rand_tensor(2, rows, V, 0, 0, -mag, mag);
    sd_tensor dloss = rand_tensor(1, rows, 0, 0, 0, 0.5f, 1.5f), loss, tg;
    int64_t shape[1] = {rows};
    if (sd_tensor_f32(&loss, 1, rows, 0, 0, 0) || sd_tensor_alloc(&tg, SD_I32, 1, shape)) abort();
    int32_t *target = tg.data;
    for (int64_t r = 0; r < rows; r++) target[r] = (int32_t)(test_rng_u64(&g_seed) % (uint64_t)V);
    target[2] = IGNORE;
    float scale = 0.25f;
    loss_case c = {to_d(&s), to_d(&t), to_d(&dloss), target, rows, V, T, kl};
    for (int64_t r = 0; r < rows; r++) c.g[r] *= scale;

    test_poison(F(loss), (size_t)rows);
    CHECK_OK(kl ? sd_kl_div(&g_ctx, &loss, &t, &s, (float)T, &tg, IGNORE)
                : sd_cross_entropy(&g_ctx, &loss, &s, &tg, IGNORE));
    double ref[6];
    losses64(ref, &c);
    /* fp32 logits of magnitude 1000 carry absolute rounding ~1e-4: relative to the largest */
    check_fwd(kl ? "kl_div forward" : "cross_entropy forward", F(loss), ref, (size_t)rows);
    CHECK(F(loss)[2] == 0.0f, "%s: ignored row has loss %g", op, F(loss)[2]);

    sd_tensor ds = zeros_like(&s);
    CHECK_OK(kl ? sd_kl_div_backward(&g_ctx, &ds, &dloss, scale, &t, &s, (float)T, &tg, IGNORE)
                : sd_cross_entropy_backward(&g_ctx, &ds, &dloss, scale, &s, &tg, IGNORE));
    check_grad(op, "dlogits", losses_loss, &c, c.s, &ds);
    int zero_row = 1;
    for (int64_t i = 0; i < V; i++) zero_row &= F(ds)[2 * V + i] == 0.0f;
    CHECK(zero_row, "%s: ignored row has a gradient", op);
    sd_tensor ds1 = clone(&ds);
    CHECK_OK(kl ? sd_kl_div_backward(&g_ctx, &ds, &dloss, scale, &t, &s, (float)T, &tg, IGNORE)
                : sd_cross_entropy_backward(&g_ctx, &ds, &dloss, scale, &s, &tg, IGNORE));
    check_doubled(op, &ds1, &ds);
    /* dloss NULL: every row scaled by scale alone */
    zero(&ds);
    CHECK_OK(kl ? sd_kl_div_backward(&g_ctx, &ds, NULL, scale, &t, &s, (float)T, &tg, IGNORE)
                : sd_cross_entropy_backward(&g_ctx, &ds, NULL, scale, &s, &tg, IGNORE));
    for (int64_t r = 0; r < rows; r++) c.g[r] = scale;
    check_grad(op, "dlogits (scalar scale)", losses_loss, &c, c.s, &ds);
    CHECK_OK(kl ? sd_kl_div_backward(&g_ctx, NULL, NULL, 1, &t, &s, (float)T, NULL, 0)
                : sd_cross_entropy_backward(&g_ctx, NULL, NULL, 1, &s, &tg, IGNORE));
    if (kl) { /* KL(p || p) = 0 and no targets: every row counts */
        CHECK_OK(sd_kl_div(&g_ctx, &loss, &s, &s, (float)T, NULL, 0));
        for (int64_t r = 0; r < rows; r++) CHECK(fabsf(F(loss)[r]) < 1e-5f, "KL(p||p) = %g", F(loss)[r]);
    } else { /* a target outside [0, V) that is not the ignore index is bad input */
        target[0] = (int32_t)V;
        CHECK(sd_cross_entropy(&g_ctx, &loss, &s, &tg, IGNORE) == SD_ERR_INPUT, "bad target accepted");
    }
    free(c.s), free(c.t), free(c.g);
    FREE_ALL(&s, &t, &dloss, &loss, &tg, &ds, &ds1);
}

/* ---- rotary ---------------------------------------------------------------------------- */

typedef struct {
    double *x, *r;
    const float *inv_freq;
    int64_t B, T, H, hd, rd, pos0;
    int interleaved;
} rope_case;

static double rope_loss(const void *cv) {
    const rope_case *c = cv;
    int64_t half = c->rd / 2;
    double L = 0;
    for (int64_t bt = 0; bt < c->B * c->T; bt++)
        for (int64_t h = 0; h < c->H; h++) {
            const double *x = c->x + (bt * c->H + h) * c->hd, *r = c->r + (bt * c->H + h) * c->hd;
            double pos = (double)(c->pos0 + bt % c->T);
            for (int64_t i = c->rd; i < c->hd; i++) L += r[i] * x[i];
            for (int64_t i = 0; i < half; i++) {
                double a = (double)((float)pos * c->inv_freq[i]), cs = cos(a), sn = sin(a);
                int64_t lo = c->interleaved ? 2 * i : i, hi = c->interleaved ? 2 * i + 1 : i + half;
                L += r[lo] * (x[lo] * cs - x[hi] * sn) + r[hi] * (x[hi] * cs + x[lo] * sn);
            }
        }
    return L;
}

static void test_rotary(int interleaved, int rotary_dim, int64_t pos0) {
    const int64_t B = 2, T = 5, H = 3, hd = 8;
    sd_rope_config cfg = {.head_dim = hd, .rotary_dim = rotary_dim, .theta = 10000,
                          .interleaved = interleaved};
    float inv_freq[8];
    CHECK_OK(sd_rope_inv_freq(&cfg, inv_freq));
    sd_tensor x = rand_tensor(4, B, T, H, hd, -1, 1), dy = rand_tensor(4, B, T, H, hd, -1, 1);
    sd_tensor dx = clone(&dy);
    CHECK_OK(sd_rotary_backward(&g_ctx, &dx, &cfg, pos0));
    rope_case c = {to_d(&x), to_d(&dy), inv_freq, B, T, H, hd, rotary_dim, pos0, interleaved};
    check_grad("rotary", "dx", rope_loss, &c, c.x, &dx);
    /* forward then backward is the identity */
    sd_tensor y = clone(&x);
    CHECK_OK(sd_rotary(&g_ctx, &y, &cfg, pos0));
    CHECK_OK(sd_rotary_backward(&g_ctx, &y, &cfg, pos0));
    check_fwd("rotary backward(forward)", F(y), c.x, (size_t)sd_numel(&x));
    free(c.x), free(c.r);
    FREE_ALL(&x, &dy, &dx, &y);
}

/* ---- attention ------------------------------------------------------------------------- */

typedef struct {
    double *q, *k, *v, *r;
    int64_t B, T, S, Hq, Hkv, hd;
    double scale;
} attn_case;

static double attn_loss(const void *cv) {
    const attn_case *c = cv;
    double L = 0, *p = dalloc((size_t)c->S);
    int64_t kv_row = c->Hkv * c->hd;
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->Hq; h++)
            for (int64_t t = 0; t < c->T; t++) {
                int64_t hk = h / (c->Hq / c->Hkv), nk = c->S - c->T + t + 1;
                const double *q = c->q + ((b * c->T + t) * c->Hq + h) * c->hd;
                const double *k = c->k + (b * c->S * c->Hkv + hk) * c->hd;
                const double *v = c->v + (b * c->S * c->Hkv + hk) * c->hd;
                const double *r = c->r + ((b * c->T + t) * c->Hq + h) * c->hd;
                double m = -INFINITY, s = 0;
                for (int64_t j = 0; j < nk; j++) {
                    double d = 0;
                    for (int64_t e = 0; e < c->hd; e++) d += q[e] * k[j * kv_row + e];
                    p[j] = d * c->scale;
                    m = p[j] > m ? p[j] : m;
                }
                for (int64_t j = 0; j < nk; j++) s += p[j] = exp(p[j] - m);
                for (int64_t e = 0; e < c->hd; e++) {
                    double o = 0;
                    for (int64_t j = 0; j < nk; j++) o += p[j] / s * v[j * kv_row + e];
                    L += r[e] * o;
                }
            }
    free(p);
    return L;
}

static void test_attention(int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int use_probs) {
    const int64_t B = 2, hd = 8;
    float scale = 1.0f / sqrtf((float)hd);
    sd_tensor q = rand_tensor(4, B, T, Hq, hd, -1.5f, 1.5f), k = rand_tensor(4, B, S, Hkv, hd, -1.5f, 1.5f);
    sd_tensor v = rand_tensor(4, B, S, Hkv, hd, -1, 1), dout = rand_tensor(4, B, T, Hq, hd, -1, 1);
    sd_tensor out = zeros_like(&q), probs;
    if (sd_tensor_f32(&probs, 4, B, Hq, T, S)) abort();
    CHECK_OK(sd_attention(&g_ctx, &out, &q, &k, &v, scale, &probs, NULL));
    const sd_tensor *pp = use_probs ? &probs : NULL;
    sd_tensor dq = zeros_like(&q), dk = zeros_like(&k), dv = zeros_like(&v);
    CHECK_OK(sd_attention_backward(&g_ctx, &dq, &dk, &dv, &dout, &q, &k, &v, scale, pp));
    attn_case c = {to_d(&q), to_d(&k), to_d(&v), to_d(&dout), B, T, S, Hq, Hkv, hd, scale};
    check_grad("attention", "dq", attn_loss, &c, c.q, &dq);
    check_grad("attention", "dk", attn_loss, &c, c.k, &dk);
    check_grad("attention", "dv", attn_loss, &c, c.v, &dv);
    sd_tensor dq1 = clone(&dq), dk1 = clone(&dk), dv1 = clone(&dv);
    CHECK_OK(sd_attention_backward(&g_ctx, &dq, &dk, &dv, &dout, &q, &k, &v, scale, pp));
    check_doubled("attention dq", &dq1, &dq);
    check_doubled("attention dk", &dk1, &dk);
    check_doubled("attention dv", &dv1, &dv);
    zero(&dk);
    CHECK_OK(sd_attention_backward(&g_ctx, NULL, &dk, NULL, &dout, &q, &k, &v, scale, pp));
    CHECK(!memcmp(dk.data, dk1.data, sd_nbytes(&dk)), "attention dk alone differs");
    CHECK_OK(sd_attention_backward(&g_ctx, NULL, NULL, NULL, &dout, &q, &k, &v, scale, pp));
    free(c.q), free(c.k), free(c.v), free(c.r);
    FREE_ALL(&q, &k, &v, &dout, &out, &probs, &dq, &dk, &dv, &dq1, &dk1, &dv1);
}

/* ---- determinism --------------------------------------------------------------------- */

/* The backwards that sum over rows or query heads give the same bits on 1 and 2 threads. */
static void test_thread_independence(void) {
    sd_ctx one;
    const int64_t B = 2, T = 64, C = 256, Hq = 4, Hkv = 2, hd = 16;
    sd_tensor x = rand_tensor(3, B, T, C, 0, -2, 2), cw = rand_tensor(2, C, 4, 0, 0, -1, 1);
    sd_tensor cb = rand_tensor(1, C, 0, 0, 0, -1, 1), dy = rand_tensor(3, B, T, C, 0, -1, 1);
    sd_tensor z = rand_tensor(3, B, T, C, 0, -3, 3), nw = rand_tensor(1, C, 0, 0, 0, 0.5f, 1.5f);
    sd_tensor q = rand_tensor(4, B, T, Hq, hd, -2, 2), k = rand_tensor(4, B, T, Hkv, hd, -2, 2);
    sd_tensor v = rand_tensor(4, B, T, Hkv, hd, -1, 1), dout = rand_tensor(4, B, T, Hq, hd, -1, 1);
    enum { NG = 9 };
    sd_tensor g[2][NG];
    for (int run = 0; run < 2; run++) {
        sd_ctx *ctx = &g_ctx;
        if (run == 0) sd_ctx_init_cpu(&one, 1), ctx = &one;
        else sd_ctx_init_cpu(&g_ctx, 2);
        sd_tensor *r = g[run];
        r[0] = zeros_like(&x), r[1] = zeros_like(&cw), r[2] = zeros_like(&cb);
        r[3] = zeros_like(&x), r[4] = zeros_like(&z), r[5] = zeros_like(&nw);
        r[6] = zeros_like(&q), r[7] = zeros_like(&k), r[8] = zeros_like(&v);
        CHECK_OK(sd_conv1d_backward(ctx, &r[0], &r[1], &r[2], &dy, &x, &cw, &cb, 1));
        CHECK_OK(sd_gated_rmsnorm_backward(ctx, &r[3], &r[4], &r[5], &dy, &x, &z, &nw, C / 2, 1e-5f));
        CHECK_OK(sd_attention_backward(ctx, &r[6], &r[7], &r[8], &dout, &q, &k, &v, 0.25f, NULL));
    }
    for (int i = 0; i < NG; i++)
        CHECK(!memcmp(g[0][i].data, g[1][i].data, sd_nbytes(&g[0][i])),
              "conv1d / gated norm / attention backward: gradient %d differs on 1 and 2 threads", i);
    sd_ctx_init_cpu(&g_ctx, 0); /* back to SSDISTILL_THREADS */
    FREE_ALL(&x, &cw, &cb, &dy, &z, &nw, &q, &k, &v, &dout);
    for (int run = 0; run < 2; run++)
        for (int i = 0; i < NG; i++) sd_tensor_free(&g[run][i]);
}

int main(void) {
    sd_ctx_init_cpu(&g_ctx, 0);
    for (int64_t W = 2; W <= 4; W++) {
        test_conv1d(W, 0, 1, 0);
        test_conv1d(W, 1, 1, W == 4);
        test_conv1d(W, 0, 0, 0);
        test_conv1d(W, 1, 0, 0);
    }
    test_conv1d_bad_args();
    test_gated_norm(4, 32, 32, 1);
    test_gated_norm(4, 32, 8, 1);
    test_gated_norm(64, 512, 256, 1); /* threaded rows */
    test_gated_norm(4, 32, 16, 0);
    test_loss(0, 1, 4);
    test_loss(0, 1, 1000);
    test_loss(1, 1, 4);
    test_loss(1, 2, 4);
    test_loss(1, 2, 1000);
    test_rotary(0, 8, 0);
    test_rotary(1, 8, 3);
    test_rotary(0, 4, 7); /* partial rotary */
    test_attention(5, 5, 4, 2, 0);
    test_attention(4, 7, 4, 2, 1); /* KV offset S > T, probs from the forward */
    test_attention(3, 6, 6, 1, 0); /* one kv head for all query heads */
    test_thread_independence();
    print_errors();
    return test_summary("test_grad_model");
}
