/* Shared by the gradient tests (tests/test_grad*.c): central differences in float64.
 *
 * A case holds float64 copies of its inputs and a loss function L = sum(r * f(inputs))
 * evaluated in float64.  fd_check perturbs each input element (or up to FD_MAX of them)
 * by +-h, takes (L(x+h) - L(x-h)) / 2h and compares it with the analytic gradient from the
 * fp32 backward called with dy = r.  The error is max |numeric - analytic| / max |numeric|. */
#ifndef SD_GRAD_UTIL_H
#define SD_GRAD_UTIL_H

#include "common/error.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

#define FD_H 1e-6
#define FD_MAX 200
#define FD_TOL 1e-3  /* fp32 backward vs float64 central differences */
/* With h = 1e-6 in float64 the central difference of these smooth losses is exact to ~1e-9
 * relative, so it also stands in for a float64 analytic backward: the fp32 backward must
 * then be within fp32 rounding of it. */
#define FD_TIGHT 1e-4
#define ACC_TOL 1e-6 /* a second backward call doubles the gradient */

static sd_ctx g_ctx;
static uint64_t g_seed = 20261124;

typedef double (*loss64_fn)(const void *c);

static sd_tensor rand_tensor(int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3, float lo,
                             float hi) {
    sd_tensor t;
    if (sd_tensor_f32(&t, ndim, d0, d1, d2, d3) != SD_OK) abort();
    test_fill(t.data, (size_t)sd_numel(&t), &g_seed, lo, hi);
    return t;
}

/* A zeroed tensor shaped like t (gradients accumulate into it). */
static sd_tensor zeros_like(const sd_tensor *t) {
    sd_tensor z;
    if (sd_tensor_alloc(&z, SD_F32, t->ndim, t->shape) != SD_OK) abort();
    return z;
}

static void zero(sd_tensor *t) { memset(t->data, 0, sd_nbytes(t)); }

static double *to_d(const sd_tensor *t) {
    size_t n = (size_t)sd_numel(t);
    double *d = malloc((n ? n : 1) * sizeof(double));
    if (!d) abort();
    for (size_t i = 0; i < n; i++) d[i] = ((const float *)t->data)[i];
    return d;
}

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) abort();
    return p;
}

#define F(t) ((float *)(t).data)

/* Numeric vs analytic gradient of L over x (n elements; x is perturbed and restored). */
static double fd_check(loss64_fn f, const void *c, double *x, size_t n, const float *g) {
    size_t step = n > FD_MAX ? n / FD_MAX : 1;
    double num_max = 0, err = 0;
    for (size_t i = (size_t)(test_rng_u64(&g_seed) % step); i < n; i += step) {
        double x0 = x[i];
        x[i] = x0 + FD_H;
        double lp = f(c);
        x[i] = x0 - FD_H;
        double lm = f(c);
        x[i] = x0;
        double num = (lp - lm) / (2 * FD_H);
        if (fabs(num) > num_max) num_max = fabs(num);
        double e = fabs(num - (double)g[i]);
        if (!(e <= err)) err = e; /* NaN propagates */
    }
    return err / (num_max + 1e-30);
}

/* Per-op largest error (gradients: vs central differences; forwards: vs float64), printed
 * at the end.  op must be a string literal (the pointer is kept). */
#define MAX_OPS 32
static const char *g_op_name[MAX_OPS];
static double g_op_err[MAX_OPS];
static int g_nops;

static void record(const char *op, double e) {
    int i = 0;
    while (i < g_nops && strcmp(g_op_name[i], op)) i++;
    if (i == g_nops) {
        if (g_nops == MAX_OPS) return;
        g_op_name[g_nops++] = op;
    }
    if (!(e <= g_op_err[i])) g_op_err[i] = e;
}

static void print_errors(void) {
    for (int i = 0; i < g_nops; i++) printf("  max rel err %-26s %.3g\n", g_op_name[i], g_op_err[i]);
}

/* fd_check of one input, recorded under op and CHECKed. */
static void check_grad(const char *op, const char *what, loss64_fn f, const void *c, double *x,
                       const sd_tensor *g) {
    double e = fd_check(f, c, x, (size_t)sd_numel(g), F(*g));
    record(op, e);
    CHECK(e < FD_TOL, "%s %s: gradient error %.3g", op, what, e);
    CHECK(e < FD_TIGHT, "%s %s: gradient error %.3g above fp32 rounding", op, what, e);
}

/* Calling the backward a second time must double the gradient (it adds). */
static void check_doubled(const char *op, const sd_tensor *once, const sd_tensor *twice) {
    size_t n = (size_t)sd_numel(once);
    double *ref = dalloc(n);
    for (size_t i = 0; i < n; i++) ref[i] = 2.0 * F(*once)[i];
    double e = test_rel_err(F(*twice), ref, n);
    CHECK(e < ACC_TOL, "%s: second backward call: error %.3g vs twice the first", op, e);
    free(ref);
}

/* Copies src into a new tensor (to keep a first result before a second call). */
static sd_tensor clone(const sd_tensor *src) {
    sd_tensor t = zeros_like(src);
    memcpy(t.data, src->data, sd_nbytes(src));
    return t;
}

#endif
