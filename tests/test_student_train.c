/* Training the students (HF Mamba-2 with the standard mixer; ours with the discrete mixer and
 * MLPs; a hybrid keeping attention in one layer): the training loss matches sd_student_forward,
 * every parameter's gradient matches central differences of the loss, forward + backward is
 * deterministic, and AdamW on one batch drives the loss down. */
#include "common/error.h"
#include "distill/optimizer.h"
#include "distill/student_train.h"
#include "kernels/loss.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

enum { BATCH = 2, T = 10, VOCAB = 23 };

static sd_model_config small_config(void) {
    sd_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SD_ARCH_MAMBA2;
    snprintf(c.model_type, sizeof c.model_type, "mamba2");
    snprintf(c.hidden_act, sizeof c.hidden_act, "silu");
    c.vocab_size = VOCAB;
    c.hidden_size = 16;
    c.num_layers = 2;
    c.norm_eps = 1e-5f;
    c.tie_word_embeddings = 0;
    c.bos_token_id = c.eos_token_id = -1;
    c.ssm = (sd_ssm_config){.mixer = SD_MIXER_STANDARD, .num_heads = 2, .head_dim = 8, .state_size = 4,
                            .n_groups = 1, .conv_kernel = 4, .use_conv_bias = 1, .chunk_size = 4,
                            .time_step_min = 0.0, .time_step_max = INFINITY};
    return c;
}

/* Our student layout: Llama-style blocks with SwiGLU MLPs; mixer discrete (H 4 in G 2 groups)
 * or standard; a hybrid keeps a Qwen2-style attention (q/k/v biases, GQA 4/2) in layer 1. */
static sd_model_config student_config(sd_mixer_type mixer, int hybrid) {
    sd_model_config c = small_config();
    c.arch = SD_ARCH_STUDENT;
    snprintf(c.model_type, sizeof c.model_type, "ssdistill_student");
    c.num_layers = hybrid ? 3 : 2;
    c.intermediate_size = 24;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.rope = (sd_rope_config){.head_dim = 4, .rotary_dim = 4, .theta = 10000.0};
    c.attention_bias = hybrid;
    c.ssm.mixer = mixer;
    if (mixer == SD_MIXER_DISCRETE) {
        c.ssm.num_heads = 4;
        c.ssm.head_dim = 4;
        c.ssm.n_groups = 2;
    }
    c.attn_layer[1] = (unsigned char)hybrid;
    return c;
}

static void make_ids(int32_t *ids) {
    uint64_t rng = 7;
    for (int i = 0; i < BATCH * T; i++) ids[i] = (int32_t)(test_rng_u64(&rng) % VOCAB);
}

static double train_loss(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a) {
    float loss = NAN;
    CHECK_OK(sd_student_train_forward(ctx, s, ids, a, &loss));
    return loss;
}

/* The same mean loss from sd_student_forward's logits. */
static void test_loss_matches_forward(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a) {
    double loss = train_loss(ctx, s, ids, a);
    sd_tensor logits, per;
    CHECK_OK(sd_tensor_f32(&logits, 3, BATCH, T, VOCAB, 0));
    CHECK_OK(sd_tensor_f32(&per, 1, BATCH * T, 0, 0, 0));
    CHECK_OK(sd_student_forward(ctx, s, ids, &logits, NULL, NULL));
    CHECK_OK(sd_cross_entropy(ctx, &per, &logits, &a->targets, SD_IGNORE_INDEX));
    double sum = 0;
    for (int i = 0; i < BATCH * T; i++) sum += ((float *)per.data)[i];
    double ref = sum / (BATCH * (T - 1));
    printf("train loss %.7f, from sd_student_forward %.7f\n", loss, ref);
    CHECK(fabs(loss - ref) <= 1e-6 * fabs(ref), "train loss %.8f vs forward %.8f", loss, ref);
    CHECK(a->count == BATCH * (T - 1), "count %lld", (long long)a->count);
    sd_tensor_free(&logits);
    sd_tensor_free(&per);
}

/* Central difference of the loss in one weight element, in double from fp32 losses. */
static double central(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a, float *p,
                      double h) {
    float keep = *p;
    *p = (float)(keep + h);
    double up = train_loss(ctx, s, ids, a);
    *p = (float)(keep - h);
    double down = train_loss(ctx, s, ids, a);
    *p = keep;
    return (up - down) / (2 * h);
}

/* The loss is fp32 (ulp ~2.4e-7 at 3.6), so a central difference carries an absolute noise of
 * about ulp / h ~1e-5: errors are taken relative to max |gradient| of the tensor plus this
 * floor, else a tensor whose gradients are all ~1e-5 (A_log of a quiet layer) measures noise. */
#define FD_FLOOR 1e-3

/* Checks a few elements of one tensor: the largest gradient and some fixed picks. */
static double check_tensor(sd_ctx *ctx, const sd_student *s, const sd_tensor *ids, sd_student_acts *a,
                           sd_tensor *w, const sd_tensor *g) {
    int64_t n = sd_numel(w), picks[8], np = 0;
    const float *gd = g->data;
    int64_t best = 0;
    double scale = 0;
    for (int64_t i = 0; i < n; i++)
        if (fabs(gd[i]) > scale) scale = fabs(gd[i]), best = i;
    picks[np++] = best;
    for (int k = 1; k < 6 && k < n; k++) picks[np++] = (best + k * 7919) % n;
    double worst = 0;
    for (int k = 0; k < np; k++) {
        /* Richardson, (4 D(h/2) - D(h)) / 3, cancels the h^2 term.  No one h suits every
         * entry (large h: curvature; small h: the fp32 loss's rounding), so two are tried and
         * the closer taken; a wrong gradient is off at both. */
        float *p = (float *)w->data + picks[k];
        double e = INFINITY;
        for (double h = 4e-2; h > 5e-3; h /= 4) {
            double fd = (4 * central(ctx, s, ids, a, p, h / 2) - central(ctx, s, ids, a, p, h)) / 3;
            e = fmin(e, fabs(fd - gd[picks[k]]) / (scale + FD_FLOOR));
        }
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

static void test_gradients(sd_ctx *ctx, sd_student *s, const sd_tensor *ids, sd_student_acts *a) {
    sd_student g;
    CHECK_OK(sd_student_grads_init(s, &g));
    train_loss(ctx, s, ids, a);
    CHECK_OK(sd_student_backward(ctx, s, ids, a, &g));
    double all = 0;
    for (int i = 0; i < s->w.n; i++) {
        sd_tensor *gt = sd_weights_find(&g.w, s->w.items[i].name);
        CHECK(gt != NULL, "no gradient for %s", s->w.items[i].name);
        if (!gt) continue;
        double e = check_tensor(ctx, s, ids, a, &s->w.items[i].t, gt);
        printf("  grad %-40s max rel error %.2e\n", s->w.items[i].name, e);
        CHECK(e < 1e-2, "%s: gradient error %.3e", s->w.items[i].name, e);
        if (!(e <= all)) all = e;
    }
    printf("gradients vs central differences: max rel error %.2e over %d tensors\n", all, s->w.n);
    sd_student_free(&g);
}

static void test_deterministic(sd_ctx *ctx, sd_student *s, const sd_tensor *ids, sd_student_acts *a) {
    sd_student g1, g2;
    CHECK_OK(sd_student_grads_init(s, &g1));
    CHECK_OK(sd_student_grads_init(s, &g2));
    float l1, l2;
    CHECK_OK(sd_student_train_forward(ctx, s, ids, a, &l1));
    CHECK_OK(sd_student_backward(ctx, s, ids, a, &g1));
    CHECK_OK(sd_student_train_forward(ctx, s, ids, a, &l2));
    CHECK_OK(sd_student_backward(ctx, s, ids, a, &g2));
    CHECK(memcmp(&l1, &l2, sizeof l1) == 0, "losses differ: %.9g vs %.9g", l1, l2);
    int same = 1;
    for (int i = 0; i < g1.w.n; i++) same &= memcmp(g1.w.items[i].t.data, g2.w.items[i].t.data, sd_nbytes(&g1.w.items[i].t)) == 0;
    CHECK(same, "gradients of two identical runs differ");
    /* a second backward adds: the gradients double (up to rounding: GEMMs accumulate into
     * their output in their own order) */
    CHECK_OK(sd_student_backward(ctx, s, ids, a, &g1));
    double worst = 0;
    for (int i = 0; i < g1.w.n; i++) {
        const float *x1 = g1.w.items[i].t.data, *x2 = g2.w.items[i].t.data;
        double scale = 1e-30, err = 0;
        for (int64_t j = 0; j < sd_numel(&g1.w.items[i].t); j++) {
            scale = fmax(scale, fabs(2.0 * x2[j]));
            err = fmax(err, fabs(x1[j] - 2.0 * x2[j]));
        }
        worst = fmax(worst, err / scale);
    }
    printf("second backward doubles the gradients: max rel error %.2e\n", worst);
    CHECK(worst < 1e-5, "a second backward does not add into the gradients (%.3e)", worst);
    sd_student_free(&g1);
    sd_student_free(&g2);
}

static void test_loss_falls(sd_ctx *ctx, sd_student *s, const sd_tensor *ids, sd_student_acts *a) {
    sd_student g;
    sd_optimizer opt;
    CHECK_OK(sd_student_grads_init(s, &g));
    CHECK_OK(sd_optimizer_init(&opt, &s->w, NULL));
    float first = NAN, last = NAN, loss = NAN;
    for (int step = 0; step < 30; step++) {
        CHECK_OK(sd_student_grads_zero(ctx, &g));
        CHECK_OK(sd_student_train_forward(ctx, s, ids, a, &loss));
        CHECK_OK(sd_student_backward(ctx, s, ids, a, &g));
        CHECK_OK(sd_optimizer_step(&opt, ctx, &s->w, &g.w, 1e-2f, SD_CLIP_NORM_DEFAULT, NULL));
        if (step == 0) first = loss;
        if (step < 3 || step >= 27) printf("  step %2d loss %.4f\n", step, loss);
    }
    CHECK_OK(sd_student_train_forward(ctx, s, ids, a, &last));
    printf("AdamW 30 steps on one batch: loss %.4f -> %.4f\n", first, last);
    CHECK(last < 0.7f * first, "loss %.4f -> %.4f", first, last);
    sd_optimizer_free(&opt);
    sd_student_free(&g);
}

/* Groups (G 2 of H 4), a tied head, no conv bias, and a clamp that bites everywhere: with dt
 * held at time_step_min the loss no longer depends on dt_bias or the dt rows of in_proj, so
 * their gradients are exactly zero, while the rest still match central differences. */
static void test_groups_and_clamp(sd_ctx *ctx, const sd_tensor *ids) {
    sd_model_config cfg = small_config();
    cfg.ssm.num_heads = 4;
    cfg.ssm.head_dim = 4;
    cfg.ssm.n_groups = 2;
    cfg.ssm.use_conv_bias = 0;
    cfg.tie_word_embeddings = 1;
    cfg.ssm.time_step_min = 2.0; /* above softplus(dt_raw) everywhere with the init's dt_bias */
    sd_student s;
    sd_student_acts a;
    CHECK_OK(sd_student_init_random(&s, &cfg, 5));
    CHECK_OK(sd_student_acts_init(ctx, &a, &cfg, BATCH, T));
    if (s.layers && a.layers) {
        printf("G 2, H 4, tied head, no conv bias, dt clamped to 2:\n");
        test_loss_matches_forward(ctx, &s, ids, &a);
        sd_student g;
        CHECK_OK(sd_student_grads_init(&s, &g));
        CHECK_OK(sd_student_backward(ctx, &s, ids, &a, &g));
        for (int l = 0; g.layers && l < cfg.num_layers; l++) {
            double m = 0;
            const float *db = g.layers[l].dt_bias->data, *dw = g.layers[l].w_dt.data;
            for (int i = 0; i < 4; i++) m = fmax(m, fabs(db[i]));
            for (int64_t i = 0; i < sd_numel(&g.layers[l].w_dt); i++) m = fmax(m, fabs(dw[i]));
            CHECK(m == 0, "layer %d: clamped dt still passes gradient %.3e", l, m);
        }
        sd_student_free(&g);
        test_gradients(ctx, &s, ids, &a);
    }
    sd_student_acts_free(&a);
    sd_student_free(&s);
}

/* The discrete student with MLPs, and a hybrid: the same checks as the standard student. */
static void test_student_layouts(sd_ctx *ctx, const sd_tensor *ids) {
    struct {
        sd_mixer_type mixer;
        int hybrid;
        const char *what;
    } cases[] = {{SD_MIXER_DISCRETE, 0, "discrete mixer + MLPs"},
                 {SD_MIXER_STANDARD, 1, "hybrid: standard mixer + MLPs, attention in layer 1"},
                 {SD_MIXER_DISCRETE, 1, "hybrid: discrete mixer + MLPs, attention in layer 1"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sd_model_config cfg = student_config(cases[i].mixer, cases[i].hybrid);
        sd_student s;
        sd_student_acts a;
        printf("%s:\n", cases[i].what);
        CHECK_OK(sd_student_init_random(&s, &cfg, 11 + i));
        CHECK_OK(sd_student_acts_init(ctx, &a, &cfg, BATCH, T));
        if (s.layers && a.layers) {
            test_loss_matches_forward(ctx, &s, ids, &a);
            test_gradients(ctx, &s, ids, &a);
            if (i == 0) {
                test_deterministic(ctx, &s, ids, &a);
                test_loss_falls(ctx, &s, ids, &a);
            }
        }
        sd_student_acts_free(&a);
        sd_student_free(&s);
    }
}

int main(void) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    sd_model_config cfg = small_config();
    sd_student s;
    CHECK_OK(sd_student_init_random(&s, &cfg, 42));
    /* dt ~ 0.3 .. 1 instead of the init's 0.01 .. 0.1: the SSD then weighs enough in the loss
     * that the A_log and dt_bias gradients stand clear of the fp32 loss's rounding */
    uint64_t rng = 3;
    for (int l = 0; s.layers && l < cfg.num_layers; l++) test_fill(s.layers[l].dt_bias->data, 2, &rng, -1.0f, 0.5f);
    int32_t seq[BATCH * T];
    make_ids(seq);
    int64_t shape[2] = {BATCH, T};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape);
    sd_student_acts a;
    CHECK_OK(sd_student_acts_init(&ctx, &a, &cfg, BATCH, T));
    if (s.layers && a.layers) {
        test_loss_matches_forward(&ctx, &s, &ids, &a);
        test_gradients(&ctx, &s, &ids, &a);
        test_deterministic(&ctx, &s, &ids, &a);
        test_loss_falls(&ctx, &s, &ids, &a);
    }
    sd_student_acts_free(&a);
    sd_student_free(&s);
    test_groups_and_clamp(&ctx, &ids);
    test_student_layouts(&ctx, &ids);
    return test_summary("test_student_train");
}
