/* sd_ssm_discretize and its backward (kernels/ssm_discretize.h) on the CPU:
 *   - bit-identical to the student's former host loops (distill/student.c discretise and
 *     distill/student_train.c discretise_backward, replicated here literally: sd_softplus,
 *     the clamp against double limits, sd_softplus_backward on the modified dloga / ddt);
 *   - the forward against a float64 evaluation of the formula;
 *   - the backward against float64 central differences (tests/grad_util.h) of
 *     L = sum r1 dt + sum r2 loga, with ddt = r1, dloga = r2;
 *   - the backward adds (a second call doubles), reads dloga / ddt without changing them,
 *     treats ddt NULL as zero, skips NULL outputs; bad arguments are refused.
 * Both mixers: standard (a_log given; clamps that bite at both ends; dt_raw past the softplus
 * threshold 20) and discrete (a_log NULL). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/grad_util.h"

static double softplus64(double x) { return x > 20.0 ? x : log1p(exp(x)); }

/* ---- the former host code, verbatim in its arithmetic --------------------------------- */

static void host_forward(sd_tensor *dt, sd_tensor *loga, const sd_tensor *dt_raw, const sd_tensor *a_log,
                         double tmin, double tmax) {
    int64_t rows = sd_rows(loga), H = loga->shape[loga->ndim - 1];
    float *lg = loga->data;
    if (!a_log) {
        if (sd_softplus(&g_ctx, loga, dt_raw) != SD_OK) abort();
        for (int64_t i = 0; i < rows * H; i++) lg[i] = -lg[i];
        return;
    }
    if (sd_softplus(&g_ctx, dt, dt_raw) != SD_OK) abort();
    float *d = dt->data;
    const float *al = a_log->data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < H; h++) {
            float v = d[r * H + h];
            if (v < tmin) v = (float)tmin;
            if (v > tmax) v = (float)tmax;
            d[r * H + h] = v;
            lg[r * H + h] = -expf(al[h]) * v;
        }
}

/* dloga_in / ddt_in are copied first: the host code modified them in place. */
static void host_backward(sd_tensor *ddt_raw, sd_tensor *da_log, const sd_tensor *dloga_in, const sd_tensor *ddt_in,
                          const sd_tensor *dt_raw, const sd_tensor *loga, const sd_tensor *a_log, double tmin,
                          double tmax) {
    int64_t rows = sd_rows(loga), H = loga->shape[loga->ndim - 1];
    sd_tensor dl = clone(dloga_in);
    if (!a_log) {
        float *d = dl.data;
        for (int64_t i = 0; i < rows * H; i++) d[i] = -d[i];
        if (sd_softplus_backward(&g_ctx, ddt_raw, &dl, dt_raw) != SD_OK) abort();
        sd_tensor_free(&dl);
        return;
    }
    sd_tensor dd = clone(ddt_in), sp = zeros_like(dt_raw);
    if (sd_softplus(&g_ctx, &sp, dt_raw) != SD_OK) abort();
    float *ddt = dd.data, *dA = da_log->data;
    const float *dloga = dl.data, *lg = loga->data, *s = sp.data, *al = a_log->data;
    for (int64_t h = 0; h < H; h++) {
        float A = -expf(al[h]);
        double acc = 0;
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = r * H + h;
            acc += (double)dloga[i] * lg[i];
            int clamped = s[i] < tmin || s[i] > tmax;
            ddt[i] = clamped ? 0.0f : ddt[i] + dloga[i] * A;
        }
        dA[h] += (float)acc;
    }
    if (sd_softplus_backward(&g_ctx, ddt_raw, &dd, dt_raw) != SD_OK) abort();
    sd_tensor_free(&dl), sd_tensor_free(&dd), sd_tensor_free(&sp);
}

/* ---- float64 loss for the central differences ------------------------------------------ */

typedef struct {
    double *x, *al, *r1, *r2;
    int64_t rows, H;
    double tmin, tmax;
    int discrete;
} disc_case;

static double disc_loss(const void *cv) {
    const disc_case *c = cv;
    double L = 0;
    for (int64_t r = 0; r < c->rows; r++)
        for (int64_t h = 0; h < c->H; h++) {
            int64_t i = r * c->H + h;
            double v = softplus64(c->x[i]);
            if (c->discrete) {
                L += c->r2[i] * -v;
                continue;
            }
            if (v < c->tmin) v = c->tmin;
            if (v > c->tmax) v = c->tmax;
            L += c->r1[i] * v + c->r2[i] * (-exp(c->al[h]) * v);
        }
    return L;
}

static int same_bits(const sd_tensor *a, const sd_tensor *b) { return !memcmp(a->data, b->data, sd_nbytes(a)); }

static void run_case(int discrete, int64_t B, int64_t T, int64_t H, float tmin, float tmax) {
    const char *mix = discrete ? "discrete" : "standard";
    /* softplus(dt_raw) spans 3e-4 .. 24: both clamps bite (tmin 0.01, tmax 8) and some
     * elements pass the softplus threshold 20 */
    sd_tensor raw = rand_tensor(3, B, T, H, 0, -8, 24);
    sd_tensor al = rand_tensor(1, H, 0, 0, 0, -1, 2.5f);
    sd_tensor r1 = rand_tensor(3, B, T, H, 0, -1, 1), r2 = rand_tensor(3, B, T, H, 0, -1, 1);
    sd_tensor dt = zeros_like(&raw), loga = zeros_like(&raw), hdt = zeros_like(&raw), hloga = zeros_like(&raw);
    const sd_tensor *a = discrete ? NULL : &al;
    test_poison(dt.data, (size_t)sd_numel(&dt));
    test_poison(loga.data, (size_t)sd_numel(&loga));

    /* forward: the op vs the host loops (bits) and vs float64 */
    CHECK_OK(sd_ssm_discretize(&g_ctx, discrete ? NULL : &dt, &loga, &raw, a, tmin, tmax));
    host_forward(&hdt, &hloga, &raw, a, tmin, tmax);
    CHECK(same_bits(&loga, &hloga), "%s loga differs from the host loop", mix);
    if (!discrete) CHECK(same_bits(&dt, &hdt), "%s dt differs from the host loop", mix);
    size_t n = (size_t)sd_numel(&raw);
    double *rdt = dalloc(n), *rlg = dalloc(n);
    int nclamp = 0, nthr = 0;
    for (int64_t i = 0; i < (int64_t)n; i++) {
        double x = F(raw)[i], v = softplus64(x);
        nthr += x > 20.0;
        if (discrete) {
            rlg[i] = -v;
            continue;
        }
        if (v < tmin || v > tmax) nclamp++;
        v = v < tmin ? tmin : v > tmax ? tmax : v;
        rdt[i] = v;
        rlg[i] = -exp((double)F(al)[i % H]) * v;
    }
    double e = test_rel_err(F(loga), rlg, n);
    record("discretize forward", e);
    CHECK(e < 1e-6, "%s loga vs float64: %.3g", mix, e);
    if (!discrete) {
        e = test_rel_err(F(dt), rdt, n);
        record("discretize forward", e);
        CHECK(e < 1e-6, "%s dt vs float64: %.3g", mix, e);
        if (tmin > 0) CHECK(nclamp > 0, "%s: no element was clamped", mix);
    }
    CHECK(nthr > 0, "%s: no element past the softplus threshold", mix);
    free(rdt), free(rlg);

    /* backward: the op vs the host code (bits), then vs central differences */
    sd_tensor draw = zeros_like(&raw), dal = zeros_like(&al), hdraw = zeros_like(&raw), hdal = zeros_like(&al);
    sd_tensor r1c = clone(&r1), r2c = clone(&r2);
    CHECK_OK(sd_ssm_discretize_backward(&g_ctx, &draw, discrete ? NULL : &dal, &r2, discrete ? NULL : &r1, &raw,
                                        &loga, a, tmin, tmax));
    CHECK(same_bits(&r1, &r1c) && same_bits(&r2, &r2c), "%s backward modified dloga or ddt", mix);
    host_backward(&hdraw, &hdal, &r2, &r1, &raw, &loga, a, tmin, tmax);
    CHECK(same_bits(&draw, &hdraw), "%s ddt_raw differs from the host code", mix);
    if (!discrete) CHECK(same_bits(&dal, &hdal), "%s da_log differs from the host code", mix);
    disc_case c = {to_d(&raw), to_d(&al), to_d(&r1), to_d(&r2), B * T, H, tmin, tmax, discrete};
    check_grad("discretize backward", discrete ? "ddt_raw (discrete)" : "ddt_raw", disc_loss, &c, c.x, &draw);
    if (!discrete) check_grad("discretize backward", "da_log", disc_loss, &c, c.al, &dal);

    /* it adds; ddt NULL is ddt = 0; NULL outputs are skipped */
    sd_tensor draw1 = clone(&draw), dal1 = clone(&dal);
    CHECK_OK(sd_ssm_discretize_backward(&g_ctx, &draw, discrete ? NULL : &dal, &r2, discrete ? NULL : &r1, &raw,
                                        &loga, a, tmin, tmax));
    check_doubled("discretize ddt_raw", &draw1, &draw);
    if (!discrete) {
        check_doubled("discretize da_log", &dal1, &dal);
        sd_tensor z = zeros_like(&raw), dz = zeros_like(&raw), dn = zeros_like(&raw);
        CHECK_OK(sd_ssm_discretize_backward(&g_ctx, &dz, NULL, &r2, &z, &raw, &loga, a, tmin, tmax));
        CHECK_OK(sd_ssm_discretize_backward(&g_ctx, &dn, NULL, &r2, NULL, &raw, &loga, a, tmin, tmax));
        CHECK(same_bits(&dz, &dn), "ddt NULL differs from ddt = 0");
        zero(&dal);
        CHECK_OK(sd_ssm_discretize_backward(&g_ctx, NULL, &dal, &r2, &r1, &raw, &loga, a, tmin, tmax));
        CHECK(same_bits(&dal, &dal1), "da_log alone differs from da_log with ddt_raw");
        sd_tensor_free(&z), sd_tensor_free(&dz), sd_tensor_free(&dn);
    }
    CHECK_OK(sd_ssm_discretize_backward(&g_ctx, NULL, NULL, &r2, NULL, &raw, &loga, a, tmin, tmax));

    free(c.x), free(c.al), free(c.r1), free(c.r2);
    sd_tensor *ts[] = {&raw, &al, &r1, &r2, &dt, &loga, &hdt, &hloga, &draw, &dal, &hdraw, &hdal, &r1c, &r2c,
                       &draw1, &dal1};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ts[i]);
}

static void test_refusals(void) {
    sd_tensor raw = rand_tensor(3, 2, 3, 4, 0, -1, 1), al = rand_tensor(1, 4, 0, 0, 0, -1, 1);
    sd_tensor al5 = rand_tensor(1, 5, 0, 0, 0, -1, 1), dt = zeros_like(&raw), loga = zeros_like(&raw);
    sd_tensor d2 = rand_tensor(2, 6, 4, 0, 0, -1, 1), dal = zeros_like(&al);
    CHECK(sd_ssm_discretize(&g_ctx, &dt, &loga, &raw, NULL, 0, INFINITY) != SD_OK, "discrete with dt accepted");
    CHECK(sd_ssm_discretize(&g_ctx, NULL, &loga, &raw, &al, 0, INFINITY) != SD_OK, "standard without dt accepted");
    CHECK(sd_ssm_discretize(&g_ctx, &dt, &loga, &raw, &al5, 0, INFINITY) != SD_OK, "a_log [5] for H 4 accepted");
    CHECK(sd_ssm_discretize(&g_ctx, &dt, &d2, &raw, &al, 0, INFINITY) != SD_OK, "loga of another shape accepted");
    CHECK(sd_ssm_discretize(&g_ctx, &dt, &loga, &raw, &al, 1.0f, 0.5f) != SD_OK, "dt_min > dt_max accepted");
    CHECK(sd_ssm_discretize_backward(&g_ctx, &dt, &dal, &loga, NULL, &raw, &loga, NULL, 0, INFINITY) != SD_OK,
          "discrete with da_log accepted");
    CHECK(sd_ssm_discretize_backward(&g_ctx, &dt, &dal, &loga, NULL, &raw, NULL, &al, 0, INFINITY) != SD_OK,
          "da_log without loga accepted");
    CHECK(sd_ssm_discretize_backward(&g_ctx, &dt, NULL, NULL, NULL, &raw, &loga, &al, 0, INFINITY) != SD_OK,
          "NULL dloga accepted");
    sd_tensor *ts[] = {&raw, &al, &al5, &dt, &loga, &d2, &dal};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) sd_tensor_free(ts[i]);
}

int main(void) {
    sd_ctx_init_cpu(&g_ctx, 0);
    sd_ctx_apply_threads(&g_ctx);
    run_case(0, 3, 37, 5, 0.01f, 8.0f);
    run_case(1, 3, 37, 5, 0.01f, 8.0f);
    run_case(0, 2, 20, 3, 0.0f, INFINITY); /* the default limits: nothing clamps from above */
    run_case(0, 4, 1024, 8, 0.01f, 8.0f);  /* above the OpenMP threshold */
    run_case(1, 4, 1024, 8, 0.0f, INFINITY);
    test_refusals();
    print_errors();
    return test_summary("test_ssm_discretize");
}
