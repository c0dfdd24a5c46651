/* The optimizer: AdamW against a float64 reference, weight-decay groups by name, global-norm
 * clipping, refusal of NaN/Inf gradients, learning-rate schedules and their JSON, and the
 * determinism of the sum of squares. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/error.h"
#include "convert/weights.h"
#include "distill/optimizer.h"
#include "distill/schedule.h"
#include "kernels/ops.h"
#include "kernels/optim.h"
#include "tests/test_util.h"

#define ADAM_TOL 1e-6

static sd_ctx g_ctx;
static uint64_t g_seed = 20261124;

#define F(t) ((float *)(t).data)

static sd_tensor rand_tensor(int ndim, const int64_t *shape, float lo, float hi) {
    sd_tensor t;
    if (sd_tensor_alloc(&t, SD_F32, ndim, shape) != SD_OK) abort();
    test_fill(t.data, (size_t)sd_numel(&t), &g_seed, lo, hi);
    return t;
}

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) abort();
    return p;
}

static float *fcopy(const sd_tensor *t) {
    size_t n = (size_t)sd_numel(t);
    float *c = malloc((n ? n : 1) * sizeof(float));
    if (!c) abort();
    memcpy(c, t->data, n * sizeof(float));
    return c;
}

static int same_bits(const sd_tensor *t, const float *copy) {
    return memcmp(t->data, copy, (size_t)sd_numel(t) * sizeof(float)) == 0;
}

/* ---- the float64 reference ---------------------------------------------------------------- */

typedef struct {
    double *p, *m, *v;
    size_t n;
} ref_state;

static ref_state ref_from(const sd_tensor *p) {
    ref_state r = {dalloc((size_t)sd_numel(p)), dalloc((size_t)sd_numel(p)),
                   dalloc((size_t)sd_numel(p)), (size_t)sd_numel(p)};
    for (size_t i = 0; i < r.n; i++) r.p[i] = F(*p)[i];
    return r;
}

static void ref_free(ref_state *r) { free(r->p), free(r->m), free(r->v); }

/* The update as written in the torch.optim.AdamW documentation. */
static void ref_adamw(ref_state *r, const float *g, double scale, double lr, double b1,
                      double b2, double eps, double wd, int t) {
    for (size_t i = 0; i < r->n; i++) {
        double gi = g[i] * scale;
        r->p[i] -= lr * wd * r->p[i];
        r->m[i] = b1 * r->m[i] + (1 - b1) * gi;
        r->v[i] = b2 * r->v[i] + (1 - b2) * gi * gi;
        double mhat = r->m[i] / (1 - pow(b1, t)), vhat = r->v[i] / (1 - pow(b2, t));
        r->p[i] -= lr * mhat / (sqrt(vhat) + eps);
    }
}

static double g_worst_adam;

static void check_state(const char *what, const sd_tensor *p, const sd_tensor *m,
                        const sd_tensor *v, const ref_state *r) {
    double ep = test_rel_err(p->data, r->p, r->n), em = test_rel_err(m->data, r->m, r->n);
    double ev = test_rel_err(v->data, r->v, r->n);
    double e = fmax(ep, fmax(em, ev));
    if (!(e <= g_worst_adam)) g_worst_adam = e;
    CHECK(ep < ADAM_TOL && em < ADAM_TOL && ev < ADAM_TOL,
          "%s: relative error param %.3g, m %.3g, v %.3g", what, ep, em, ev);
}

/* ---- sd_adamw_step on one tensor --------------------------------------------------------- */

/* 10 steps with fresh gradients each; n above the parallel threshold when big. */
static void test_adamw_op(int64_t n, float wd) {
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
    sd_tensor p = rand_tensor(1, &n, -1, 1), g = rand_tensor(1, &n, -1, 1);
    sd_tensor m, v;
    CHECK_OK(sd_tensor_alloc(&m, SD_F32, 1, &n));
    CHECK_OK(sd_tensor_alloc(&v, SD_F32, 1, &n));
    ref_state r = ref_from(&p);
    for (int t = 1; t <= 10; t++) {
        test_fill(g.data, (size_t)n, &g_seed, -2, 2);
        CHECK_OK(sd_adamw_step(&g_ctx, &p, &g, &m, &v, lr, b1, b2, eps, wd, t));
        ref_adamw(&r, g.data, 1.0, lr, b1, b2, eps, wd, t);
    }
    char what[64];
    snprintf(what, sizeof what, "sd_adamw_step n=%lld wd=%g", (long long)n, (double)wd);
    check_state(what, &p, &m, &v, &r);
    ref_free(&r);
    sd_tensor_free(&p), sd_tensor_free(&g), sd_tensor_free(&m), sd_tensor_free(&v);
}

static void test_adamw_op_checks(void) {
    int64_t n3 = 3, n4 = 4;
    sd_tensor p = rand_tensor(1, &n3, -1, 1), g = rand_tensor(1, &n4, -1, 1);
    sd_tensor m = rand_tensor(1, &n3, 0, 1), v = rand_tensor(1, &n3, 0, 1);
    CHECK(sd_adamw_step(&g_ctx, &p, &g, &m, &v, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.f, 1) ==
              SD_ERR_INTERNAL, "shape mismatch accepted");
    CHECK(sd_adamw_step(&g_ctx, &p, &m, &m, &v, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.f, 0) ==
              SD_ERR_INTERNAL, "step 0 accepted");
    sd_tensor_free(&p), sd_tensor_free(&g), sd_tensor_free(&m), sd_tensor_free(&v);
}

/* ---- the optimizer over a named set ----------------------------------------------------- */

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[3];
    int decays;
} param_spec;

static const param_spec k_params[] = {
    {"backbone.embedding.weight", 2, {11, 6}, 1},
    {"backbone.layers.0.input_layernorm.weight", 1, {6}, 0},
    {"backbone.layers.0.mixer.in_proj.weight", 2, {20, 6}, 1},
    {"backbone.layers.0.mixer.conv1d.weight", 3, {8, 1, 4}, 1},
    {"backbone.layers.0.mixer.conv1d.bias", 1, {8}, 0},
    {"backbone.layers.0.mixer.D", 1, {2}, 0},
    {"backbone.layers.0.mixer.z_bias", 1, {6}, 0},
    {"backbone.layers.0.mixer.A_log", 1, {2}, 0},
    {"backbone.layers.0.mixer.dt_bias", 1, {2}, 0},
    {"backbone.layers.0.mixer.norm.weight", 1, {6}, 0},
    {"backbone.layers.0.mixer.out_proj.weight", 2, {6, 6}, 1},
};
#define NPARAMS ((int)(sizeof k_params / sizeof *k_params))

/* params random in [-1, 1), grads zero, in k_params order. */
static void make_sets(sd_weights *params, sd_weights *grads) {
    sd_weights_init(params);
    sd_weights_init(grads);
    for (int i = 0; i < NPARAMS; i++) {
        sd_tensor g;
        if (sd_weights_add(params, k_params[i].name,
                           rand_tensor(k_params[i].ndim, k_params[i].shape, -1, 1)) != SD_OK ||
            sd_tensor_alloc(&g, SD_F32, k_params[i].ndim, k_params[i].shape) != SD_OK ||
            sd_weights_add(grads, k_params[i].name, g) != SD_OK)
            abort();
    }
}

static void fill_grads(sd_weights *grads, float lo, float hi) {
    for (int i = 0; i < grads->n; i++)
        test_fill(grads->items[i].t.data, (size_t)sd_numel(&grads->items[i].t), &g_seed, lo, hi);
}

static double ref_global_norm(const sd_weights *grads) {
    double s = 0.0;
    for (int i = 0; i < grads->n; i++)
        for (int64_t k = 0; k < sd_numel(&grads->items[i].t); k++) {
            double x = F(grads->items[i].t)[k];
            s += x * x;
        }
    return sqrt(s);
}

static void test_decay_groups(void) {
    sd_weights params, grads;
    make_sets(&params, &grads);
    sd_optimizer opt;
    CHECK_OK(sd_optimizer_init(&opt, &params, NULL));
    for (int i = 0; i < NPARAMS; i++)
        CHECK(opt.decays[i] == k_params[i].decays, "'%s': decays %d, expected %d",
              k_params[i].name, opt.decays[i], k_params[i].decays);
    sd_optimizer_free(&opt);
    sd_weights_free(&params), sd_weights_free(&grads);

    /* Names from the other families the toolkit meets. */
    static const struct { const char *name; int ndim, decays; } more[] = {
        {"model.norm.weight", 1, 0},
        {"model.layers.3.post_attention_layernorm.weight", 1, 0},
        {"model.layers.3.self_attn.q_proj.bias", 1, 0},
        {"model.layers.3.self_attn.q_proj.weight", 2, 1},
        {"model.layers.3.mlp.down_proj.weight", 2, 1},
        {"backbone.norm_f.weight", 1, 0},
        {"backbone.final_layernorm.weight", 1, 0},
        {"transformer.h.0.ln_1.weight", 1, 0},
        {"transformer.ln_f.bias", 1, 0},
        {"lm_head.weight", 2, 1},
        {"D", 1, 0},
        {"layers.0.mixer.Dt.weight", 2, 1}, /* ".D" is a whole leaf, not a prefix */
    };
    for (size_t i = 0; i < sizeof more / sizeof *more; i++) {
        int64_t shape[2] = {4, 4};
        sd_tensor t = sd_tensor_view(SD_F32, NULL, more[i].ndim, shape);
        CHECK(sd_param_decays(more[i].name, &t) == more[i].decays, "'%s': expected decays %d",
              more[i].name, more[i].decays);
    }
}

/* 10 optimizer steps without clipping against the reference, each parameter with its group's
 * weight decay, and a different lr each step. */
static void test_optimizer_steps(void) {
    sd_weights params, grads;
    make_sets(&params, &grads);
    sd_adamw_config cfg = sd_adamw_config_default();
    CHECK(cfg.beta1 == 0.9f && cfg.beta2 == 0.95f && cfg.eps == 1e-8f &&
              cfg.weight_decay == 0.1f, "unexpected defaults");
    cfg.weight_decay = 0.5f; /* large, so that a wrongly grouped tensor shows */
    sd_optimizer opt;
    CHECK_OK(sd_optimizer_init(&opt, &params, &cfg));
    ref_state r[NPARAMS];
    for (int i = 0; i < NPARAMS; i++) r[i] = ref_from(&params.items[i].t);
    for (int t = 1; t <= 10; t++) {
        float lr = 2e-2f / (float)t;
        fill_grads(&grads, -3, 3);
        double norm = -1;
        CHECK_OK(sd_optimizer_step(&opt, &g_ctx, &params, &grads, lr, 0.0f, &norm));
        double want = ref_global_norm(&grads);
        CHECK(fabs(norm - want) <= 1e-12 * want, "step %d: norm %.17g, expected %.17g", t, norm,
              want);
        for (int i = 0; i < NPARAMS; i++)
            ref_adamw(&r[i], grads.items[i].t.data, 1.0, lr, cfg.beta1, cfg.beta2, cfg.eps,
                      k_params[i].decays ? cfg.weight_decay : 0.0, t);
    }
    CHECK(opt.step == 10, "step count %lld", (long long)opt.step);
    for (int i = 0; i < NPARAMS; i++) {
        check_state(k_params[i].name, &params.items[i].t, &opt.m.items[i].t, &opt.v.items[i].t,
                    &r[i]);
        ref_free(&r[i]);
    }
    sd_optimizer_free(&opt);
    sd_weights_free(&params), sd_weights_free(&grads);
}

/* ---- clipping ----------------------------------------------------------------------------- */

static void test_clipping(void) {
    sd_weights params, grads;
    make_sets(&params, &grads);
    sd_optimizer opt;
    CHECK_OK(sd_optimizer_init(&opt, &params, NULL));
    fill_grads(&grads, -1, 1);
    double norm0 = ref_global_norm(&grads);

    /* Below the clip norm: gradients untouched, bit for bit. */
    float *before[NPARAMS];
    for (int i = 0; i < NPARAMS; i++) before[i] = fcopy(&grads.items[i].t);
    double norm = -1;
    CHECK_OK(sd_optimizer_step(&opt, &g_ctx, &params, &grads, 1e-3f, (float)(norm0 * 1.01), &norm));
    CHECK(fabs(norm - norm0) <= 1e-12 * norm0, "norm %.17g, expected %.17g", norm, norm0);
    for (int i = 0; i < NPARAMS; i++)
        CHECK(same_bits(&grads.items[i].t, before[i]), "'%s' changed below the clip norm",
              grads.items[i].name);
    /* Disabled (<= 0): untouched however large. */
    CHECK_OK(sd_optimizer_step(&opt, &g_ctx, &params, &grads, 1e-3f, 0.0f, &norm));
    CHECK_OK(sd_optimizer_step(&opt, &g_ctx, &params, &grads, 1e-3f, -1.0f, &norm));
    for (int i = 0; i < NPARAMS; i++)
        CHECK(same_bits(&grads.items[i].t, before[i]), "'%s' changed with clipping off",
              grads.items[i].name);

    /* Above: every gradient times clip / (norm + 1e-6), and the pre-clip norm returned. */
    const float clip = 0.25f;
    CHECK_OK(sd_optimizer_step(&opt, &g_ctx, &params, &grads, 1e-3f, clip, &norm));
    CHECK(fabs(norm - norm0) <= 1e-12 * norm0, "pre-clip norm %.17g, expected %.17g", norm, norm0);
    double coef = clip / (norm0 + 1e-6);
    for (int i = 0; i < NPARAMS; i++) {
        size_t n = (size_t)sd_numel(&grads.items[i].t);
        double *want = dalloc(n);
        for (size_t k = 0; k < n; k++) want[k] = before[i][k] * coef;
        double e = test_rel_err(grads.items[i].t.data, want, n);
        CHECK(e < 1e-6, "'%s' scaled with relative error %.3g", grads.items[i].name, e);
        free(want);
        free(before[i]);
    }
    double after = ref_global_norm(&grads);
    CHECK(fabs(after - clip) < 1e-5, "clipped norm %.9g, expected %g", after, (double)clip);
    sd_optimizer_free(&opt);
    sd_weights_free(&params), sd_weights_free(&grads);
}

/* A clipped step matches the reference fed the scaled gradient. */
static void test_clipped_step_reference(void) {
    sd_weights params, grads;
    make_sets(&params, &grads);
    sd_optimizer opt;
    CHECK_OK(sd_optimizer_init(&opt, &params, NULL));
    ref_state r[NPARAMS];
    for (int i = 0; i < NPARAMS; i++) r[i] = ref_from(&params.items[i].t);
    for (int t = 1; t <= 10; t++) {
        fill_grads(&grads, -3, 3);
        float *orig[NPARAMS];
        for (int i = 0; i < NPARAMS; i++) orig[i] = fcopy(&grads.items[i].t);
        double norm0 = ref_global_norm(&grads), norm;
        CHECK_OK(sd_optimizer_step(&opt, &g_ctx, &params, &grads, 1e-2f, SD_CLIP_NORM_DEFAULT,
                                   &norm));
        double scale = norm0 > 1.0 ? 1.0 / (norm0 + 1e-6) : 1.0;
        for (int i = 0; i < NPARAMS; i++) {
            ref_adamw(&r[i], orig[i], scale, 1e-2, 0.9, 0.95, 1e-8, k_params[i].decays ? 0.1 : 0.0,
                      t);
            free(orig[i]);
        }
    }
    for (int i = 0; i < NPARAMS; i++) {
        check_state(k_params[i].name, &params.items[i].t, &opt.m.items[i].t, &opt.v.items[i].t,
                    &r[i]);
        ref_free(&r[i]);
    }
    sd_optimizer_free(&opt);
    sd_weights_free(&params), sd_weights_free(&grads);
}

/* ---- refused gradients -------------------------------------------------------------------- */

static void test_bad_gradient(float bad) {
    sd_weights params, grads;
    make_sets(&params, &grads);
    sd_optimizer opt;
    CHECK_OK(sd_optimizer_init(&opt, &params, NULL));
    for (int t = 0; t < 3; t++) { /* non-zero moments first */
        fill_grads(&grads, -1, 1);
        CHECK_OK(sd_optimizer_step(&opt, &g_ctx, &params, &grads, 1e-2f, 1.0f, NULL));
    }
    fill_grads(&grads, -5, 5); /* above the clip norm: a careless step would scale them */
    const int bad_i = 4, later_i = 7;
    F(grads.items[bad_i].t)[3] = bad;
    F(grads.items[later_i].t)[0] = bad;
    float *p0[NPARAMS], *m0[NPARAMS], *v0[NPARAMS], *g0[NPARAMS];
    for (int i = 0; i < NPARAMS; i++) {
        p0[i] = fcopy(&params.items[i].t), m0[i] = fcopy(&opt.m.items[i].t);
        v0[i] = fcopy(&opt.v.items[i].t), g0[i] = fcopy(&grads.items[i].t);
    }
    double norm = 123;
    int rc = sd_optimizer_step(&opt, &g_ctx, &params, &grads, 1e-2f, 1.0f, &norm);
    CHECK(rc == SD_ERR_CHECK, "a %g gradient gave %d", (double)bad, rc);
    CHECK(strstr(sd_errmsg(), k_params[bad_i].name) != NULL,
          "message does not name the first bad tensor: %s", sd_errmsg());
    CHECK(opt.step == 3, "step count moved to %lld", (long long)opt.step);
    for (int i = 0; i < NPARAMS; i++) {
        CHECK(same_bits(&params.items[i].t, p0[i]) && same_bits(&opt.m.items[i].t, m0[i]) &&
                  same_bits(&opt.v.items[i].t, v0[i]) && same_bits(&grads.items[i].t, g0[i]),
              "'%s' touched by a refused step", k_params[i].name);
        free(p0[i]), free(m0[i]), free(v0[i]), free(g0[i]);
    }
    sd_optimizer_free(&opt);
    sd_weights_free(&params), sd_weights_free(&grads);
}

/* A parameter without a gradient is skipped; a gradient without a parameter is refused. */
static void test_gradient_sets(void) {
    sd_weights params, grads, part;
    make_sets(&params, &grads);
    sd_weights_init(&part);
    int64_t shape[2] = {6, 6};
    CHECK_OK(sd_weights_add(&part, "backbone.layers.0.mixer.out_proj.weight",
                            rand_tensor(2, shape, -1, 1)));
    sd_optimizer opt;
    CHECK_OK(sd_optimizer_init(&opt, &params, NULL));
    float *p0 = fcopy(&params.items[0].t), *p_last = fcopy(&params.items[NPARAMS - 1].t);
    CHECK_OK(sd_optimizer_step(&opt, &g_ctx, &params, &part, 1e-2f, 1.0f, NULL));
    CHECK(same_bits(&params.items[0].t, p0), "a parameter without gradient moved");
    CHECK(!same_bits(&params.items[NPARAMS - 1].t, p_last), "the parameter with a gradient stayed");
    free(p0), free(p_last);

    CHECK_OK(sd_weights_add(&part, "backbone.layers.9.mixer.D", rand_tensor(1, shape, -1, 1)));
    int rc = sd_optimizer_step(&opt, &g_ctx, &params, &part, 1e-2f, 1.0f, NULL);
    CHECK(rc == SD_ERR_INTERNAL && strstr(sd_errmsg(), "layers.9.mixer.D"),
          "a stray gradient gave %d: %s", rc, sd_errmsg());
    sd_optimizer_free(&opt);
    sd_weights_free(&params), sd_weights_free(&grads), sd_weights_free(&part);
}

/* ---- sum of squares and scale ------------------------------------------------------------- */

static void test_sum_squares(void) {
    static const int64_t sizes[] = {0, 1, 5, 63, 64, 65, 1000, 1000003};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        int64_t n = sizes[s];
        sd_tensor x;
        CHECK_OK(sd_tensor_alloc(&x, SD_F32, 1, &n));
        test_fill(x.data, (size_t)n, &g_seed, -10, 10);
        double want = 0.0;
        for (int64_t i = 0; i < n; i++) want += (double)F(x)[i] * F(x)[i];
        double first = -1, again = -1;
        CHECK_OK(sd_sum_squares(&g_ctx, &x, &first));
        CHECK(fabs(first - want) <= 1e-12 * want, "n=%lld: %.17g, expected %.17g", (long long)n,
              first, want);
        /* The same bits on every run and with any thread count. */
        int same = 1;
        for (int threads = 1; threads <= 3; threads++) {
            sd_ctx c;
            sd_ctx_init_cpu(&c, threads);
            for (int run = 0; run < 3; run++) {
                CHECK_OK(sd_sum_squares(&c, &x, &again));
                same &= memcmp(&again, &first, sizeof first) == 0;
            }
        }
        sd_ctx_apply_threads(&g_ctx);
        CHECK(same, "n=%lld: sum of squares differs between runs or thread counts", (long long)n);
        sd_tensor_free(&x);
    }
    int64_t n = 4;
    sd_tensor x;
    CHECK_OK(sd_tensor_alloc(&x, SD_F32, 1, &n));
    F(x)[2] = NAN;
    double ss = 0;
    CHECK_OK(sd_sum_squares(&g_ctx, &x, &ss));
    CHECK(isnan(ss), "NaN not propagated: %g", ss);
    F(x)[2] = INFINITY;
    CHECK_OK(sd_sum_squares(&g_ctx, &x, &ss));
    CHECK(isinf(ss), "Inf not propagated: %g", ss);
    sd_tensor_free(&x);
}

static void test_scale(void) {
    int64_t n = 100003;
    sd_tensor x;
    CHECK_OK(sd_tensor_alloc(&x, SD_F32, 1, &n));
    test_fill(x.data, (size_t)n, &g_seed, -1, 1);
    float *orig = fcopy(&x);
    CHECK_OK(sd_scale(&g_ctx, &x, 0.375f));
    int ok = 1;
    for (int64_t i = 0; i < n; i++) ok &= F(x)[i] == orig[i] * 0.375f;
    CHECK(ok, "sd_scale is not x * s");
    free(orig);
    sd_tensor_free(&x);
}

/* ---- schedules ---------------------------------------------------------------------------- */

static void parse_ok(const char *json, int64_t default_total, sd_schedule *s) {
    cJSON *obj = cJSON_Parse(json);
    CHECK(obj != NULL, "test JSON does not parse: %s", json);
    CHECK_OK(sd_schedule_parse(obj, "test", default_total, s));
    cJSON_Delete(obj);
}

static void check_lr(const char *what, const sd_schedule *s, int64_t step, double want) {
    double got = sd_schedule_lr(s, step);
    CHECK(fabs(got - want) <= 1e-12 * fabs(want) + 1e-18, "%s: lr(%lld) = %.12g, expected %.12g",
          what, (long long)step, got, want);
}

static void test_schedules(void) {
    sd_schedule s;
    parse_ok("{\"type\": \"constant\", \"lr\": 1e-3, \"warmup_steps\": 10}", 0, &s);
    check_lr("constant", &s, 0, 0.0);
    check_lr("constant", &s, 5, 5e-4);
    check_lr("constant", &s, 10, 1e-3);
    check_lr("constant", &s, 1000000, 1e-3);
    parse_ok("{\"type\": \"constant\", \"lr\": 3e-4}", 0, &s);
    check_lr("constant, no warmup", &s, 0, 3e-4);

    parse_ok("{\"type\": \"cosine\", \"lr\": 1e-3, \"warmup_steps\": 100, \"min_lr\": 1e-5,"
             " \"total_steps\": 1000}", 0, &s);
    check_lr("cosine", &s, 0, 0.0);
    check_lr("cosine", &s, 50, 5e-4);
    check_lr("cosine", &s, 100, 1e-3);
    check_lr("cosine", &s, 325, 1e-5 + 9.9e-4 * 0.85355339059327376); /* (1 + cos(pi/4)) / 2 */
    check_lr("cosine", &s, 550, 5.05e-4);
    check_lr("cosine", &s, 1000, 1e-5);
    check_lr("cosine", &s, 5000, 1e-5);

    const char *wsd = "{\"type\": \"wsd\", \"lr\": 1e-3, \"warmup_steps\": 100,"
                      " \"decay_fraction\": 0.2, \"min_lr\": 1e-5, \"total_steps\": 1000%s}";
    char json[256];
    snprintf(json, sizeof json, wsd, "");
    parse_ok(json, 0, &s);
    CHECK(s.decay_shape == SD_DECAY_LINEAR, "default decay shape %d", (int)s.decay_shape);
    check_lr("wsd", &s, 0, 0.0);
    check_lr("wsd", &s, 40, 4e-4);
    check_lr("wsd", &s, 100, 1e-3);
    check_lr("wsd", &s, 450, 1e-3);
    check_lr("wsd", &s, 800, 1e-3); /* decay starts at 1000 - 0.2 * 1000 */
    check_lr("wsd", &s, 850, 1e-5 + 9.9e-4 * 0.75);
    check_lr("wsd", &s, 900, 5.05e-4);
    check_lr("wsd", &s, 1000, 1e-5);
    check_lr("wsd", &s, 1200, 1e-5);
    snprintf(json, sizeof json, wsd, ", \"decay_shape\": \"1-sqrt\"");
    parse_ok(json, 0, &s);
    check_lr("wsd 1-sqrt", &s, 100, 1e-3);
    check_lr("wsd 1-sqrt", &s, 800, 1e-3);
    check_lr("wsd 1-sqrt", &s, 850, 5.05e-4);                       /* 1 - sqrt(1/4) */
    check_lr("wsd 1-sqrt", &s, 900, 1e-5 + 9.9e-4 * 0.29289321881345248); /* 1 - sqrt(1/2) */
    check_lr("wsd 1-sqrt", &s, 1000, 1e-5);
    snprintf(json, sizeof json, wsd, ", \"decay_shape\": \"cosine\"");
    parse_ok(json, 0, &s);
    check_lr("wsd cosine", &s, 900, 5.05e-4);

    /* total_steps from the runner when the JSON has none. */
    parse_ok("{\"type\": \"wsd\", \"lr\": 2e-3}", 500, &s);
    CHECK(s.total_steps == 500 && s.warmup_steps == 0 && s.min_lr == 0.0 &&
              s.decay_fraction == 0.2, "defaults: total %lld warmup %lld min %g fraction %g",
          (long long)s.total_steps, (long long)s.warmup_steps, s.min_lr, s.decay_fraction);
    check_lr("wsd defaults", &s, 0, 2e-3);
    check_lr("wsd defaults", &s, 450, 1e-3);
    check_lr("wsd defaults", &s, 500, 0.0);
}

static void test_bad_schedules(void) {
    static const struct { const char *json, *field; } bad[] = {
        {"{\"lr\": 1e-3}", "'type'"},
        {"{\"type\": \"step\", \"lr\": 1e-3}", "'type'"},
        {"{\"type\": 3, \"lr\": 1e-3}", "'type'"},
        {"{\"type\": \"constant\"}", "'lr'"},
        {"{\"type\": \"constant\", \"lr\": -1}", "'lr'"},
        {"{\"type\": \"constant\", \"lr\": 0}", "'lr'"},
        {"{\"type\": \"constant\", \"lr\": \"big\"}", "'lr'"},
        {"{\"type\": \"constant\", \"lr\": 1e-3, \"min_lr\": 0}", "'min_lr'"},
        {"{\"type\": \"cosine\", \"lr\": 1e-3}", "'total_steps'"},
        {"{\"type\": \"cosine\", \"lr\": 1e-3, \"total_steps\": 10.5}", "'total_steps'"},
        {"{\"type\": \"cosine\", \"lr\": 1e-3, \"total_steps\": 0}", "'total_steps'"},
        {"{\"type\": \"cosine\", \"lr\": 1e-3, \"total_steps\": 100, \"warmup_steps\": 100}",
         "'warmup_steps'"},
        {"{\"type\": \"cosine\", \"lr\": 1e-3, \"total_steps\": 100, \"decay_fraction\": 0.1}",
         "'decay_fraction'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"warmup_steps\": -1}",
         "'warmup_steps'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"warmup_steps\": \"10\"}",
         "'warmup_steps'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"warmup_steps\": 90}",
         "'warmup_steps'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"decay_fraction\": 1.5}",
         "'decay_fraction'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"decay_fraction\": 0}",
         "'decay_fraction'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"decay_fraction\": 0.001}",
         "'decay_fraction'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"decay_shape\": \"exp\"}",
         "'decay_shape'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"min_lr\": 1e-2}", "'min_lr'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"min_lr\": -1e-5}", "'min_lr'"},
        {"{\"type\": \"wsd\", \"lr\": 1e-3, \"total_steps\": 100, \"warmup_step\": 10}",
         "'warmup_step'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cJSON *obj = cJSON_Parse(bad[i].json);
        CHECK(obj != NULL, "test JSON does not parse: %s", bad[i].json);
        sd_schedule s;
        int rc = sd_schedule_parse(obj, "recipe.json: stages[0].schedule", 0, &s);
        CHECK(rc == SD_ERR_INPUT, "%s: returned %d", bad[i].json, rc);
        CHECK(strstr(sd_errmsg(), bad[i].field) && strstr(sd_errmsg(), "stages[0].schedule"),
              "%s: message does not name %s: %s", bad[i].json, bad[i].field, sd_errmsg());
        cJSON_Delete(obj);
    }
    cJSON *arr = cJSON_Parse("[1, 2]");
    sd_schedule s;
    CHECK(sd_schedule_parse(arr, "x", 0, &s) == SD_ERR_INPUT, "an array accepted");
    cJSON_Delete(arr);
}

int main(void) {
    sd_ctx_init_cpu(&g_ctx, 0);
    test_adamw_op(1000, 0.0f);
    test_adamw_op(1000, 0.1f);
    test_adamw_op(100003, 0.1f); /* the parallel path */
    test_adamw_op_checks();
    test_decay_groups();
    test_optimizer_steps();
    test_clipping();
    test_clipped_step_reference();
    test_bad_gradient(NAN);
    test_bad_gradient(INFINITY);
    test_bad_gradient(-INFINITY);
    test_gradient_sets();
    test_sum_squares();
    test_scale();
    test_schedules();
    test_bad_schedules();
    printf("worst AdamW relative error %.3g (tolerance %g)\n", g_worst_adam, ADAM_TOL);
    return test_summary("test_optim");
}
