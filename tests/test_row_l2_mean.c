/* sd_row_l2_mean (kernels/loss.h), the stage-2 loss, on the CPU:
 *   - loss and d bit-identical to the former host function (distill/stages.c row_l2_mean,
 *     replicated here), also above the OpenMP threshold;
 *   - loss against float64, d against float64 central differences of the loss (a row with
 *     out == target included: its zero subgradient is what the symmetric difference gives);
 *   - d is written (poisoned first), d NULL gives the same loss, bad arguments are refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/grad_util.h"

/* distill/stages.c row_l2_mean before it became an op, verbatim. */
static float host_row_l2_mean(const sd_tensor *out, const sd_tensor *target, sd_tensor *d) {
    int64_t rows = sd_rows(out), n = out->shape[out->ndim - 1];
    const float *o = out->data, *t = target->data;
    double sum = 0;
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int64_t i = 0; i < n; i++) {
            double diff = (double)o[r * n + i] - t[r * n + i];
            ss += diff * diff;
        }
        double norm = sqrt(ss);
        sum += norm;
        if (!d) continue;
        float *dr = (float *)d->data + r * n;
        double scale = norm > 0 ? 1.0 / (norm * (double)rows) : 0.0;
        for (int64_t i = 0; i < n; i++) dr[i] = (float)(((double)o[r * n + i] - t[r * n + i]) * scale);
    }
    return (float)(sum / (double)rows);
}

typedef struct {
    double *o, *t;
    int64_t rows, n;
} l2_case;

static double l2_loss(const void *cv) {
    const l2_case *c = cv;
    double sum = 0;
    for (int64_t r = 0; r < c->rows; r++) {
        double ss = 0;
        for (int64_t i = 0; i < c->n; i++) {
            double diff = c->o[r * c->n + i] - c->t[r * c->n + i];
            ss += diff * diff;
        }
        sum += sqrt(ss);
    }
    return sum / (double)c->rows;
}

static void run_case(int64_t B, int64_t T, int64_t n) {
    sd_tensor out = rand_tensor(3, B, T, n, 0, -2, 2), tg = rand_tensor(3, B, T, n, 0, -2, 2);
    memcpy(F(tg) + 5 * n, F(out) + 5 * n, (size_t)n * sizeof(float)); /* row 5: zero distance */
    sd_tensor d = zeros_like(&out), hd = zeros_like(&out);
    test_poison(d.data, (size_t)sd_numel(&d));
    float loss = -1.0f, loss2 = -1.0f;
    CHECK_OK(sd_row_l2_mean(&g_ctx, &loss, &d, &out, &tg));
    float hl = host_row_l2_mean(&out, &tg, &hd);
    CHECK(memcmp(&loss, &hl, sizeof loss) == 0, "loss %.9g differs from the host function's %.9g", loss, hl);
    CHECK(!memcmp(d.data, hd.data, sd_nbytes(&d)), "d differs from the host function's");
    for (int64_t i = 0; i < n; i++) CHECK(F(d)[5 * n + i] == 0.0f, "zero-distance row: d[%lld] != 0", (long long)i);
    CHECK_OK(sd_row_l2_mean(&g_ctx, &loss2, NULL, &out, &tg));
    CHECK(loss2 == loss, "loss without d %.9g differs from %.9g", loss2, loss);
    /* d is overwritten, not added: a second call from other contents gives the same bits */
    sd_tensor d1 = clone(&d);
    zero(&d);
    for (int64_t i = 0; i < sd_numel(&d); i += 3) F(d)[i] = 7.0f;
    CHECK_OK(sd_row_l2_mean(&g_ctx, &loss2, &d, &out, &tg));
    CHECK(!memcmp(d.data, d1.data, sd_nbytes(&d)), "a second call did not overwrite d");
    sd_tensor_free(&d1);

    l2_case c = {to_d(&out), to_d(&tg), B * T, n};
    double ref = l2_loss(&c), e = fabs(loss - ref) / ref;
    record("row_l2_mean loss", e);
    CHECK(e < 1e-6, "loss %.9g vs float64 %.9g: %.3g", loss, ref, e);
    check_grad("row_l2_mean d", "d", l2_loss, &c, c.o, &d);
    /* the zero-distance row in particular (fd_check samples) */
    double *x = c.o + 5 * n, num_max = 0, err = 0;
    for (int64_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_H;
        double lp = l2_loss(&c);
        x[i] = x0 - FD_H;
        double lm = l2_loss(&c);
        x[i] = x0;
        double num = (lp - lm) / (2 * FD_H);
        num_max = fmax(num_max, fabs(num));
        err = fmax(err, fabs(num - F(d)[5 * n + i]));
    }
    CHECK(err < 1e-6, "zero-distance row: central differences %.3g from d (max %.3g)", err, num_max);
    free(c.o), free(c.t);
    sd_tensor_free(&out), sd_tensor_free(&tg), sd_tensor_free(&d), sd_tensor_free(&hd);
}

static void test_refusals(void) {
    sd_tensor a = rand_tensor(2, 4, 8, 0, 0, -1, 1), b = rand_tensor(2, 4, 9, 0, 0, -1, 1);
    sd_tensor d = rand_tensor(2, 8, 4, 0, 0, -1, 1);
    float loss;
    CHECK(sd_row_l2_mean(&g_ctx, &loss, NULL, &a, &b) != SD_OK, "target of another shape accepted");
    CHECK(sd_row_l2_mean(&g_ctx, &loss, &d, &a, &a) != SD_OK, "d of another shape accepted");
    CHECK(sd_row_l2_mean(&g_ctx, NULL, NULL, &a, &a) != SD_OK, "NULL loss accepted");
    CHECK(sd_row_l2_mean(&g_ctx, &loss, NULL, &a, NULL) != SD_OK, "NULL target accepted");
    CHECK_OK(sd_row_l2_mean(&g_ctx, &loss, NULL, &a, &a));
    CHECK(loss == 0.0f, "out == target: loss %g", loss);
    sd_tensor_free(&a), sd_tensor_free(&b), sd_tensor_free(&d);
}

int main(void) {
    (void)check_doubled; /* a grad_util.h helper for backwards that add; d is written */
    sd_ctx_init_cpu(&g_ctx, 0);
    sd_ctx_apply_threads(&g_ctx);
    run_case(2, 7, 33);
    run_case(4, 300, 64); /* above the OpenMP threshold */
    test_refusals();
    print_errors();
    return test_summary("test_row_l2_mean");
}
