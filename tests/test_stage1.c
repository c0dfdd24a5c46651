/* The stage-1 loss (kernels/stage1.h) on the CPU: a float64 loss written here (attention
 * probabilities and the SSD matrix from scratch) against the fp32 op, central differences in
 * float64 against the fp32 analytic gradient of dt, loga, B, C and D, and hand-checkable
 * cases (M built equal to A: loss 0 and zero gradient; one step of D away: a known norm). */
#include "kernels/stage1.h"
#include "tests/grad_util.h"

/* One case in float64, the FD inputs of fd_check. */
typedef struct {
    int64_t B, T, H, Hkv, hd, G, N;
    int has_dt;
    double scale;
    double *q, *k, *dt, *loga, *Bm, *Cm, *D;
} case64;

/* loss = mean_{b,h} ||A - M - diag(D)||_F, everything in double. */
static double loss64(const void *cv) {
    const case64 *c = cv;
    int64_t T = c->T, H = c->H;
    double total = 0.0, *p = dalloc((size_t)T);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < H; h++) {
            int64_t hk = h / (H / c->Hkv), g = h / (H / c->G);
            double ss = 0.0;
            for (int64_t t = 0; t < T; t++) {
                const double *qt = c->q + ((b * T + t) * H + h) * c->hd;
                double mx = -INFINITY, sum = 0.0;
                for (int64_t s = 0; s <= t; s++) {
                    const double *ks = c->k + ((b * T + s) * c->Hkv + hk) * c->hd;
                    double dot = 0.0;
                    for (int64_t d = 0; d < c->hd; d++) dot += qt[d] * ks[d];
                    p[s] = dot * c->scale;
                    if (p[s] > mx) mx = p[s];
                }
                for (int64_t s = 0; s <= t; s++) sum += p[s] = exp(p[s] - mx);
                const double *Ct = c->Cm + ((b * T + t) * c->G + g) * c->N;
                for (int64_t s = 0; s <= t; s++) {
                    const double *Bs = c->Bm + ((b * T + s) * c->G + g) * c->N;
                    double cb = 0.0, seg = 0.0;
                    for (int64_t n = 0; n < c->N; n++) cb += Ct[n] * Bs[n];
                    for (int64_t j = s + 1; j <= t; j++) seg += c->loga[(b * T + j) * H + h];
                    double m = cb * exp(seg) * (c->has_dt ? c->dt[(b * T + s) * H + h] : 1.0);
                    if (s == t && c->D) m += c->D[h];
                    double diff = p[s] / sum - m;
                    ss += diff * diff;
                }
            }
            total += sqrt(ss);
        }
    free(p);
    return total / (double)(c->B * H);
}

static void grad_case(int has_dt, int64_t Hkv, int64_t G) {
    int64_t B = 2, T = 5, H = 4, hd = 3, N = 3;
    sd_tensor q = rand_tensor(4, B, T, H, hd, -1.5f, 1.5f);
    sd_tensor k = rand_tensor(4, B, T, Hkv, hd, -1.5f, 1.5f);
    sd_tensor dt = rand_tensor(3, B, T, H, 0, 0.3f, 1.2f);
    sd_tensor loga = rand_tensor(3, B, T, H, 0, -1.0f, -0.05f);
    sd_tensor Bm = rand_tensor(4, B, T, G, N, -0.8f, 0.8f);
    sd_tensor Cm = rand_tensor(4, B, T, G, N, -0.8f, 0.8f);
    sd_tensor D = rand_tensor(1, H, 0, 0, 0, 0.2f, 0.9f);
    sd_tensor ph;
    if (sd_tensor_f32(&ph, 2, B, H, 0, 0) != SD_OK) abort();
    sd_tensor ddt = zeros_like(&dt), dloga = zeros_like(&loga), dB = zeros_like(&Bm),
              dC = zeros_like(&Cm), dD = zeros_like(&D);
    float scale = 0.6f, loss = 0.0f;
    CHECK_OK(sd_stage1_loss(&g_ctx, &loss, &ph, &q, &k, scale, has_dt ? &dt : NULL, &loga, &Bm,
                            &Cm, &D, has_dt ? &ddt : NULL, &dloga, &dB, &dC, &dD));
    case64 c = {B, T, H, Hkv, hd, G, N, has_dt, scale, to_d(&q), to_d(&k), to_d(&dt),
                to_d(&loga), to_d(&Bm), to_d(&Cm), to_d(&D)};
    double ref = loss64(&c);
    double e = fabs(loss - ref) / fabs(ref);
    record("stage1 loss vs float64", e);
    CHECK(e < 1e-5, "stage1 loss %.9g vs float64 %.9g", loss, ref);
    double mean_ph = 0.0;
    for (int64_t i = 0; i < B * H; i++) mean_ph += F(ph)[i];
    CHECK(fabs(mean_ph / (double)(B * H) - loss) < 1e-5 * fabs(loss), "per-head norms do not average to the loss");

    if (has_dt) check_grad("stage1 grad", "dt", loss64, &c, c.dt, &ddt);
    check_grad("stage1 grad", "loga", loss64, &c, c.loga, &dloga);
    check_grad("stage1 grad", "B", loss64, &c, c.Bm, &dB);
    check_grad("stage1 grad", "C", loss64, &c, c.Cm, &dC);
    check_grad("stage1 grad", "D", loss64, &c, c.D, &dD);

    /* A second call adds the same gradient again. */
    sd_tensor dB1 = clone(&dB);
    CHECK_OK(sd_stage1_loss(&g_ctx, &loss, NULL, &q, &k, scale, has_dt ? &dt : NULL, &loga, &Bm,
                            &Cm, &D, NULL, NULL, &dB, NULL, NULL));
    check_doubled("stage1 dB", &dB1, &dB);

    sd_tensor *all[] = {&q, &k, &dt, &loga, &Bm, &Cm, &D, &ph, &ddt, &dloga, &dB, &dC, &dD, &dB1};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sd_tensor_free(all[i]);
    double *d64[] = {c.q, c.k, c.dt, c.loga, c.Bm, c.Cm, c.D};
    for (size_t i = 0; i < sizeof d64 / sizeof *d64; i++) free(d64[i]);
}

/* T = 2, one head, N = 1, q = 0 (so A = [[1, 0], [0.5, 0.5]]), B = [1, 1], C = [1.5, 1],
 * loga_1 = log 0.5, D = -0.5:  M = [[1.5 - 0.5, 0], [1 * 0.5, 1 - 0.5]] = A exactly. */
static void hand_case(void) {
    sd_tensor q, k, loga, Bm, Cm, D;
    if (sd_tensor_f32(&q, 4, 1, 2, 1, 2) || sd_tensor_f32(&k, 4, 1, 2, 1, 2) ||
        sd_tensor_f32(&loga, 3, 1, 2, 1, 0) || sd_tensor_f32(&Bm, 4, 1, 2, 1, 1) ||
        sd_tensor_f32(&Cm, 4, 1, 2, 1, 1) || sd_tensor_f32(&D, 1, 1, 0, 0, 0))
        abort();
    F(k)[0] = 0.3f, F(k)[1] = -0.7f, F(k)[2] = 1.1f, F(k)[3] = 0.2f; /* q = 0: k is irrelevant */
    F(loga)[0] = -0.25f, F(loga)[1] = logf(0.5f);                   /* loga_0 plays no part */
    F(Bm)[0] = 1.0f, F(Bm)[1] = 1.0f, F(Cm)[0] = 1.5f, F(Cm)[1] = 1.0f, F(D)[0] = -0.5f;
    sd_tensor dloga = zeros_like(&loga), dB = zeros_like(&Bm), dC = zeros_like(&Cm),
              dD = zeros_like(&D);
    float loss = -1.0f;
    CHECK_OK(sd_stage1_loss(&g_ctx, &loss, NULL, &q, &k, 0.125f, NULL, &loga, &Bm, &Cm, &D, NULL,
                            &dloga, &dB, &dC, &dD));
    CHECK(fabsf(loss) < 1e-7f, "M built equal to A: loss %g, expected 0", loss);
    float gmax = 0.0f;
    for (int i = 0; i < 2; i++)
        gmax = fmaxf(gmax, fmaxf(fabsf(F(dloga)[i]), fmaxf(fabsf(F(dB)[i]), fabsf(F(dC)[i]))));
    CHECK(gmax == 0.0f && F(dD)[0] == 0.0f, "loss 0: gradient must be the zero subgradient, got %g", gmax);
    /* D = 0: the diagonal is off by 0.5 twice, ||A - M|| = sqrt(0.5); dD = (0.5 + 0.5) / sqrt(0.5). */
    F(D)[0] = 0.0f;
    zero(&dD);
    CHECK_OK(sd_stage1_loss(&g_ctx, &loss, NULL, &q, &k, 0.125f, NULL, &loga, &Bm, &Cm, &D, NULL,
                            NULL, NULL, NULL, &dD));
    CHECK(fabsf(loss - sqrtf(0.5f)) < 1e-6f, "D = 0: loss %.8g, expected sqrt(0.5)", loss);
    CHECK(fabsf(F(dD)[0] - sqrtf(2.0f)) < 1e-6f, "D = 0: dD %.8g, expected sqrt(2)", F(dD)[0]);
    sd_tensor *all[] = {&q, &k, &loga, &Bm, &Cm, &D, &dloga, &dB, &dC, &dD};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) sd_tensor_free(all[i]);
}

int main(void) {
    sd_ctx_init_cpu(&g_ctx, 0);
    sd_ctx_apply_threads(&g_ctx);
    grad_case(0, 2, 2); /* discrete mixer: dt = 1; GQA 2 query heads per kv head; B/C groups */
    grad_case(1, 1, 4); /* standard mixer with dt; one kv head; B/C per head */
    grad_case(1, 4, 1); /* B/C shared by all heads */
    hand_case();
    print_errors();
    return test_summary("stage1");
}
