/* Gradient tests of the dense ops: linear, matmul, embedding, RMSNorm, LayerNorm, the
 * activations (SiLU, GELU-tanh, SwiGLU, softplus) and softmax / log-softmax.  Each fp32
 * backward is compared with float64 central differences of a float64 forward written here
 * (tests/grad_util.h); each is called twice to check that it adds, and with NULL gradients. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/grad_util.h"

/* ---- linear ---------------------------------------------------------------------------- */

typedef struct {
    double *x, *w, *b, *r;
    int64_t m, n, k;
} lin_case;

static double lin_loss(const void *cv) {
    const lin_case *c = cv;
    double L = 0;
    for (int64_t i = 0; i < c->m; i++)
        for (int64_t j = 0; j < c->n; j++) {
            double s = c->b[j];
            for (int64_t p = 0; p < c->k; p++) s += c->x[i * c->k + p] * c->w[j * c->k + p];
            L += c->r[i * c->n + j] * s;
        }
    return L;
}

static void test_linear(int64_t m, int64_t n, int64_t k) {
    sd_tensor x = rand_tensor(2, m, k, 0, 0, -1, 1), w = rand_tensor(2, n, k, 0, 0, -1, 1);
    sd_tensor b = rand_tensor(1, n, 0, 0, 0, -1, 1), dy = rand_tensor(2, m, n, 0, 0, -1, 1);
    sd_tensor dx = zeros_like(&x), dw = zeros_like(&w), db = zeros_like(&b);
    CHECK_OK(sd_linear_backward(&g_ctx, &dx, &dw, &db, &dy, &x, &w));
    lin_case c = {to_d(&x), to_d(&w), to_d(&b), to_d(&dy), m, n, k};
    check_grad("linear", "dx", lin_loss, &c, c.x, &dx);
    check_grad("linear", "dw", lin_loss, &c, c.w, &dw);
    check_grad("linear", "db", lin_loss, &c, c.b, &db);
    sd_tensor dx1 = clone(&dx), dw1 = clone(&dw), db1 = clone(&db);
    CHECK_OK(sd_linear_backward(&g_ctx, &dx, &dw, &db, &dy, &x, &w));
    check_doubled("linear dx", &dx1, &dx);
    check_doubled("linear dw", &dw1, &dw);
    check_doubled("linear db", &db1, &db);
    /* NULL outputs are skipped; one gradient alone is the same, bit for bit (deterministic) */
    CHECK_OK(sd_linear_backward(&g_ctx, NULL, NULL, NULL, &dy, &x, &w));
    zero(&dw);
    CHECK_OK(sd_linear_backward(&g_ctx, NULL, &dw, NULL, &dy, &x, &w));
    CHECK(!memcmp(dw.data, dw1.data, sd_nbytes(&dw)), "linear dw alone differs from dw with dx, db");
    /* a wrong gradient shape is refused */
    CHECK(sd_linear_backward(&g_ctx, &dw, NULL, NULL, &dy, &x, &w) == SD_ERR_INTERNAL ||
              sd_same_shape(&dw, &x), "dx shaped like w accepted");
    free(c.x), free(c.w), free(c.b), free(c.r);
    sd_tensor *ts[] = {&x, &w, &b, &dy, &dx, &dw, &db, &dx1, &dw1, &db1};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ts[i]);
}

/* ---- matmul ---------------------------------------------------------------------------- */

typedef struct {
    double *a, *b, *r;
    int64_t batch, m, n, k, a_stride, b_stride;
    int ta, tb;
    double alpha;
} mm_case;

/* element (i, j) of op(x) for x stored [rows, cols] (transposed: x[j, i]) */
static double op_at(const double *x, int64_t rows_op, int64_t cols_op, int trans, int64_t i,
                    int64_t j) {
    return trans ? x[j * rows_op + i] : x[i * cols_op + j];
}

static double mm_loss(const void *cv) {
    const mm_case *c = cv;
    double L = 0;
    for (int64_t bi = 0; bi < c->batch; bi++) {
        const double *a = c->a + bi * c->a_stride, *b = c->b + bi * c->b_stride;
        for (int64_t i = 0; i < c->m; i++)
            for (int64_t j = 0; j < c->n; j++) {
                double s = 0;
                for (int64_t p = 0; p < c->k; p++)
                    s += op_at(a, c->m, c->k, c->ta, i, p) * op_at(b, c->k, c->n, c->tb, p, j);
                L += c->r[(bi * c->m + i) * c->n + j] * c->alpha * s;
            }
    }
    return L;
}

/* batch 0: 2-D; else 3-D c with a 3-D a and a 2-D (broadcast) b. */
static void test_matmul_case(int ta, int tb, int64_t batch) {
    const int64_t M = 7, N = 5, K = 9;
    float alpha = 0.75f;
    int64_t nb = batch ? batch : 1;
    sd_tensor a = batch ? rand_tensor(3, batch, ta ? K : M, ta ? M : K, 0, -1, 1)
                        : rand_tensor(2, ta ? K : M, ta ? M : K, 0, 0, -1, 1);
    sd_tensor b = rand_tensor(2, tb ? N : K, tb ? K : N, 0, 0, -1, 1);
    sd_tensor dc = batch ? rand_tensor(3, batch, M, N, 0, -1, 1) : rand_tensor(2, M, N, 0, 0, -1, 1);
    sd_tensor da = zeros_like(&a), db = zeros_like(&b);
    CHECK_OK(sd_matmul_backward(&g_ctx, &da, &db, &dc, &a, &b, ta, tb, alpha));
    mm_case c = {to_d(&a), to_d(&b), to_d(&dc), nb, M, N, K, batch ? M * K : 0, 0, ta, tb, alpha};
    check_grad("matmul", "da", mm_loss, &c, c.a, &da);
    check_grad("matmul", "db", mm_loss, &c, c.b, &db);
    sd_tensor da1 = clone(&da), db1 = clone(&db);
    CHECK_OK(sd_matmul_backward(&g_ctx, &da, &db, &dc, &a, &b, ta, tb, alpha));
    check_doubled("matmul da", &da1, &da);
    check_doubled("matmul db", &db1, &db);
    CHECK_OK(sd_matmul_backward(&g_ctx, NULL, NULL, &dc, &a, &b, ta, tb, alpha));
    free(c.a), free(c.b), free(c.r);
    sd_tensor *ts[] = {&a, &b, &dc, &da, &db, &da1, &db1};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ts[i]);
}

static void test_matmul(void) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            test_matmul_case(ta, tb, 0);
            test_matmul_case(ta, tb, 3);
        }
}

/* ---- embedding ------------------------------------------------------------------------- */

typedef struct {
    double *table, *r;
    const int32_t *ids;
    int64_t n, d;
} emb_case;

static double emb_loss(const void *cv) {
    const emb_case *c = cv;
    double L = 0;
    for (int64_t i = 0; i < c->n; i++)
        for (int64_t j = 0; j < c->d; j++) L += c->r[i * c->d + j] * c->table[c->ids[i] * c->d + j];
    return L;
}

static void test_embedding(int64_t n, int64_t V, int64_t d) {
    sd_tensor table = rand_tensor(2, V, d, 0, 0, -1, 1), dy = rand_tensor(2, n, d, 0, 0, -1, 1);
    sd_tensor ids;
    int64_t shape[1] = {n};
    if (sd_tensor_alloc(&ids, SD_I32, 1, shape) != SD_OK) abort();
    int32_t *id = ids.data;
    for (int64_t i = 0; i < n; i++) id[i] = (int32_t)(test_rng_u64(&g_seed) % (uint64_t)(V / 2 + 1));
    sd_tensor dt = zeros_like(&table);
    CHECK_OK(sd_embedding_backward(&g_ctx, &dt, &dy, &ids));
    emb_case c = {to_d(&table), to_d(&dy), id, n, d};
    check_grad("embedding", "dtable", emb_loss, &c, c.table, &dt);
    sd_tensor dt1 = clone(&dt);
    CHECK_OK(sd_embedding_backward(&g_ctx, &dt, &dy, &ids));
    check_doubled("embedding", &dt1, &dt);
    zero(&dt);
    CHECK_OK(sd_embedding_backward(&g_ctx, &dt, &dy, &ids));
    CHECK(!memcmp(dt.data, dt1.data, sd_nbytes(&dt)), "embedding backward not bit-identical run to run");
    CHECK_OK(sd_embedding_backward(&g_ctx, NULL, &dy, &ids));
    id[n - 1] = (int32_t)V;
    CHECK(sd_embedding_backward(&g_ctx, &dt, &dy, &ids) == SD_ERR_INPUT, "bad id accepted");
    free(c.table), free(c.r);
    sd_tensor *ts[] = {&table, &dy, &ids, &dt, &dt1};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ts[i]);
}

/* ---- RMSNorm and LayerNorm ------------------------------------------------------------- */

typedef struct {
    double *x, *w, *b, *r;
    int64_t rows, d;
    double eps;
    int layer; /* 1: LayerNorm */
} norm_case;

static double norm_loss(const void *cv) {
    const norm_case *c = cv;
    double L = 0;
    for (int64_t i = 0; i < c->rows; i++) {
        const double *x = c->x + i * c->d;
        double mean = 0, ss = 0;
        if (c->layer) {
            for (int64_t j = 0; j < c->d; j++) mean += x[j];
            mean /= (double)c->d;
        }
        for (int64_t j = 0; j < c->d; j++) ss += (x[j] - mean) * (x[j] - mean);
        double r = 1 / sqrt(ss / (double)c->d + c->eps);
        for (int64_t j = 0; j < c->d; j++) {
            double y = (x[j] - mean) * r * c->w[j] + (c->layer ? c->b[j] : 0);
            L += c->r[i * c->d + j] * y;
        }
    }
    return L;
}

static void test_norm(int layer, int64_t rows, int64_t d) {
    const char *op = layer ? "layernorm" : "rmsnorm";
    float eps = 1e-5f;
    sd_tensor x = rand_tensor(2, rows, d, 0, 0, -2, 2), w = rand_tensor(1, d, 0, 0, 0, 0.5f, 1.5f);
    sd_tensor b = rand_tensor(1, d, 0, 0, 0, -1, 1), dy = rand_tensor(2, rows, d, 0, 0, -1, 1);
    sd_tensor dx = zeros_like(&x), dw = zeros_like(&w), db = zeros_like(&b);
#define NORM_BWD(DX, DW, DB)                                                              \
    (layer ? sd_layernorm_backward(&g_ctx, DX, DW, DB, &dy, &x, &w, eps)                  \
           : sd_rmsnorm_backward(&g_ctx, DX, DW, &dy, &x, &w, eps))
    CHECK_OK(NORM_BWD(&dx, &dw, &db));
    norm_case c = {to_d(&x), to_d(&w), to_d(&b), to_d(&dy), rows, d, eps, layer};
    check_grad(op, "dx", norm_loss, &c, c.x, &dx);
    check_grad(op, "dw", norm_loss, &c, c.w, &dw);
    if (layer) check_grad(op, "db", norm_loss, &c, c.b, &db);
    sd_tensor dx1 = clone(&dx), dw1 = clone(&dw);
    CHECK_OK(NORM_BWD(&dx, &dw, &db));
    check_doubled(op, &dx1, &dx);
    check_doubled(op, &dw1, &dw);
    zero(&dw);
    CHECK_OK(NORM_BWD(NULL, &dw, NULL));
    CHECK(!memcmp(dw.data, dw1.data, sd_nbytes(&dw)), "%s: dw alone differs", op);
    CHECK_OK(NORM_BWD(NULL, NULL, NULL));
#undef NORM_BWD
    free(c.x), free(c.w), free(c.b), free(c.r);
    sd_tensor *ts[] = {&x, &w, &b, &dy, &dx, &dw, &db, &dx1, &dw1};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ts[i]);
}

/* ---- elementwise ----------------------------------------------------------------------- */

enum { A_SILU, A_GELU, A_SOFTPLUS, A_SWIGLU };
static const char *g_act_name[] = {"silu", "gelu_tanh", "softplus", "swiglu"};

static double silu64(double x) { return x / (1 + exp(-x)); }
static double act64(int which, double x) {
    switch (which) {
    case A_SILU: return silu64(x);
    case A_GELU: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    default: return x > 20 ? x : log1p(exp(x));
    }
}

typedef struct {
    double *x, *up, *r;
    int64_t n;
    int which;
} act_case;

static double act_loss(const void *cv) {
    const act_case *c = cv;
    double L = 0;
    for (int64_t i = 0; i < c->n; i++)
        L += c->r[i] * (c->which == A_SWIGLU ? silu64(c->x[i]) * c->up[i] : act64(c->which, c->x[i]));
    return L;
}

static int act_backward(int which, sd_tensor *dx, sd_tensor *dup, const sd_tensor *dy,
                        const sd_tensor *x, const sd_tensor *up) {
    switch (which) {
    case A_SILU: return sd_silu_backward(&g_ctx, dx, dy, x);
    case A_GELU: return sd_gelu_tanh_backward(&g_ctx, dx, dy, x);
    case A_SOFTPLUS: return sd_softplus_backward(&g_ctx, dx, dy, x);
    default: return sd_swiglu_backward(&g_ctx, dx, dup, dy, x, up);
    }
}

static void test_activation(int which, int64_t n) {
    const char *op = g_act_name[which];
    sd_tensor x = rand_tensor(1, n, 0, 0, 0, -6, 6), up = rand_tensor(1, n, 0, 0, 0, -2, 2);
    sd_tensor dy = rand_tensor(1, n, 0, 0, 0, -1, 1);
    if (which == A_SOFTPLUS) { /* both sides of the threshold, and far below */
        F(x)[0] = 25.0f, F(x)[1] = -30.0f, F(x)[2] = 19.5f;
    }
    sd_tensor dx = zeros_like(&x), dup = zeros_like(&up);
    CHECK_OK(act_backward(which, &dx, &dup, &dy, &x, &up));
    act_case c = {to_d(&x), to_d(&up), to_d(&dy), n, which};
    check_grad(op, "dx", act_loss, &c, c.x, &dx);
    if (which == A_SWIGLU) check_grad(op, "dup", act_loss, &c, c.up, &dup);
    sd_tensor dx1 = clone(&dx);
    CHECK_OK(act_backward(which, &dx, &dup, &dy, &x, &up));
    check_doubled(op, &dx1, &dx);
    CHECK_OK(act_backward(which, NULL, NULL, &dy, &x, &up));
    free(c.x), free(c.up), free(c.r);
    sd_tensor *ts[] = {&x, &up, &dy, &dx, &dup, &dx1};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ts[i]);
}

/* softplus forward against float64, incl. the threshold and large negative inputs */
static void test_softplus_forward(void) {
    const int64_t n = 4096;
    sd_tensor x = rand_tensor(1, n, 0, 0, 0, -40, 40), out = zeros_like(&x);
    test_poison(F(out), (size_t)n);
    CHECK_OK(sd_softplus(&g_ctx, &out, &x));
    double *ref = dalloc((size_t)n);
    for (int64_t i = 0; i < n; i++) ref[i] = act64(A_SOFTPLUS, F(x)[i]);
    double e = 0;
    for (int64_t i = 0; i < n; i++) {
        double ei = fabs(F(out)[i] - ref[i]) / (fabs(ref[i]) + 1e-30);
        if (!(ei <= e)) e = ei;
    }
    record("softplus forward", e);
    CHECK(e < 1e-5, "softplus forward: elementwise relative error %.3g", e);
    free(ref);
    sd_tensor_free(&x), sd_tensor_free(&out);
}

/* ---- softmax / log-softmax ------------------------------------------------------------- */

typedef struct {
    double *x, *r;
    int64_t rows, d;
    int log;
} sm_case;

static double sm_loss(const void *cv) {
    const sm_case *c = cv;
    double L = 0;
    for (int64_t i = 0; i < c->rows; i++) {
        const double *x = c->x + i * c->d;
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < c->d; j++) m = x[j] > m ? x[j] : m;
        for (int64_t j = 0; j < c->d; j++) s += exp(x[j] - m);
        for (int64_t j = 0; j < c->d; j++) {
            double lp = x[j] - m - log(s);
            L += c->r[i * c->d + j] * (c->log ? lp : exp(lp));
        }
    }
    return L;
}

static void test_softmax(int log, int64_t rows, int64_t d) {
    const char *op = log ? "log_softmax" : "softmax";
    sd_tensor x = rand_tensor(2, rows, d, 0, 0, -4, 4), dy = rand_tensor(2, rows, d, 0, 0, -1, 1);
    sd_tensor y = zeros_like(&x), dx = zeros_like(&x);
    CHECK_OK(log ? sd_log_softmax(&g_ctx, &y, &x) : sd_softmax(&g_ctx, &y, &x));
    CHECK_OK(log ? sd_log_softmax_backward(&g_ctx, &dx, &dy, &y) : sd_softmax_backward(&g_ctx, &dx, &dy, &y));
    sm_case c = {to_d(&x), to_d(&dy), rows, d, log};
    check_grad(op, "dx", sm_loss, &c, c.x, &dx);
    sd_tensor dx1 = clone(&dx);
    CHECK_OK(log ? sd_log_softmax_backward(&g_ctx, &dx, &dy, &y) : sd_softmax_backward(&g_ctx, &dx, &dy, &y));
    check_doubled(op, &dx1, &dx);
    CHECK_OK(log ? sd_log_softmax_backward(&g_ctx, NULL, &dy, &y) : sd_softmax_backward(&g_ctx, NULL, &dy, &y));
    free(c.x), free(c.r);
    sd_tensor *ts[] = {&x, &dy, &y, &dx, &dx1};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ts[i]);
}

/* ---- determinism --------------------------------------------------------------------- */

/* The row- and column-parallel backwards give the same bits on 1 and 2 threads; the GEMM
 * backwards (blocked per thread) the same bits run to run. */
static void test_determinism(void) {
    sd_ctx one;
    const int64_t R = 64, D = 1024, V = 50;
    sd_tensor x = rand_tensor(2, R, D, 0, 0, -2, 2), w = rand_tensor(1, D, 0, 0, 0, 0.5f, 1.5f);
    sd_tensor dy = rand_tensor(2, R, D, 0, 0, -1, 1), tab = rand_tensor(2, V, D, 0, 0, -1, 1);
    sd_tensor ids;
    int64_t shape[1] = {R};
    if (sd_tensor_alloc(&ids, SD_I32, 1, shape) != SD_OK) abort();
    for (int64_t i = 0; i < R; i++) ((int32_t *)ids.data)[i] = (int32_t)(i % 7);
    sd_tensor g[2][4];
    for (int run = 0; run < 2; run++) {
        sd_ctx *ctx = &g_ctx;
        if (run == 0) sd_ctx_init_cpu(&one, 1), ctx = &one;
        else sd_ctx_init_cpu(&g_ctx, 2);
        g[run][0] = zeros_like(&x), g[run][1] = zeros_like(&w), g[run][2] = zeros_like(&w);
        g[run][3] = zeros_like(&tab);
        CHECK_OK(sd_layernorm_backward(ctx, &g[run][0], &g[run][1], &g[run][2], &dy, &x, &w, 1e-5f));
        CHECK_OK(sd_rmsnorm_backward(ctx, &g[run][0], &g[run][1], &dy, &x, &w, 1e-5f));
        CHECK_OK(sd_embedding_backward(ctx, &g[run][3], &dy, &ids));
    }
    for (int i = 0; i < 4; i++)
        CHECK(!memcmp(g[0][i].data, g[1][i].data, sd_nbytes(&g[0][i])),
              "norm / embedding backward: gradient %d differs on 1 and 2 threads", i);
    sd_ctx_init_cpu(&g_ctx, 0); /* back to SSDISTILL_THREADS */
    /* linear: run to run */
    sd_tensor lw = rand_tensor(2, 96, D, 0, 0, -1, 1), ly = rand_tensor(2, R, 96, 0, 0, -1, 1);
    sd_tensor dx1 = zeros_like(&x), dx2 = zeros_like(&x), dw1 = zeros_like(&lw), dw2 = zeros_like(&lw);
    CHECK_OK(sd_linear_backward(&g_ctx, &dx1, &dw1, NULL, &ly, &x, &lw));
    CHECK_OK(sd_linear_backward(&g_ctx, &dx2, &dw2, NULL, &ly, &x, &lw));
    CHECK(!memcmp(dx1.data, dx2.data, sd_nbytes(&dx1)) && !memcmp(dw1.data, dw2.data, sd_nbytes(&dw1)),
          "linear backward not bit-identical run to run");
    sd_tensor *ts[] = {&x, &w, &dy, &tab, &ids, &lw, &ly, &dx1, &dx2, &dw1, &dw2};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ts[i]);
    for (int run = 0; run < 2; run++)
        for (int i = 0; i < 4; i++) sd_tensor_free(&g[run][i]);
}

int main(void) {
    sd_ctx_init_cpu(&g_ctx, 0);
    test_linear(6, 5, 7);
    test_linear(256, 96, 64); /* above the GEMM blocking threshold: one block per thread */
    test_matmul();
    test_embedding(9, 6, 5);
    test_embedding(512, 100, 96); /* repeated ids, threaded column blocks */
    test_norm(0, 5, 33);
    test_norm(0, 64, 1024);
    test_norm(1, 5, 33);
    test_norm(1, 64, 1024);
    for (int a = A_SILU; a <= A_SWIGLU; a++) {
        test_activation(a, 257);
        test_activation(a, 40000);
    }
    test_softplus_forward();
    test_softmax(0, 5, 17);
    test_softmax(1, 5, 17);
    test_softmax(0, 40, 1000);
    test_softmax(1, 40, 1000);
    test_determinism();
    print_errors();
    return test_summary("test_grad");
}
