/* The stage losses (distill/stages.h) on a small random student of our layout: each loss's
 * value against a direct computation, and its gradient against central differences of the
 * loss for every parameter tensor it reaches; parameters it must not reach get none. */
#include "common/error.h"
#include "distill/stages.h"
#include "kernels/loss.h"
#include "test_util.h"

enum { B = 2, T = 9, V = 21, D = 16 };

static sd_model_config config(sd_mixer_type mixer) {
    sd_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SD_ARCH_STUDENT;
    snprintf(c.model_type, sizeof c.model_type, "ssdistill_student");
    snprintf(c.hidden_act, sizeof c.hidden_act, "silu");
    c.vocab_size = V;
    c.hidden_size = D;
    c.num_layers = 2;
    c.intermediate_size = 20;
    c.norm_eps = 1e-5f;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.rope = (sd_rope_config){.head_dim = 4, .rotary_dim = 4, .theta = 10000.0};
    c.bos_token_id = c.eos_token_id = -1;
    c.ssm = (sd_ssm_config){.mixer = mixer, .num_heads = 4, .head_dim = 4, .state_size = 4, .n_groups = 2,
                            .conv_kernel = 4, .use_conv_bias = 1, .chunk_size = 4, .time_step_min = 0.0,
                            .time_step_max = INFINITY};
    return c;
}

typedef struct {
    sd_ctx *ctx;
    const sd_student *s;
    int stage, l, block_out;
    sd_student_layer_acts *la;
    sd_student_acts *a;
    const sd_tensor *u, *target, *ids, *tl, *q, *k;
    float temp, w;
} problem;

static double loss_of(const problem *p, sd_student *g) {
    float loss = NAN;
    if (p->stage == 1) CHECK_OK(sd_stage1_layer(p->ctx, p->s, p->l, p->la, p->u, p->q, p->k, &loss, g));
    else if (p->stage == 2) CHECK_OK(sd_stage2_layer(p->ctx, p->s, p->l, p->la, p->u, p->target, p->block_out, &loss, g));
    else CHECK_OK(sd_stage3(p->ctx, p->s, p->ids, p->a, p->tl, p->temp, p->w, &loss, g));
    return loss;
}

/* Worst error over a few entries of each tensor, relative to the tensor's largest gradient
 * (+ a floor for the fp32 loss's noise); tensors in `untouched` must have zero gradient. */
static void check_grads(const problem *p, sd_student *s, const char *what, const char *untouched) {
    sd_student g;
    CHECK_OK(sd_student_grads_init(s, &g));
    loss_of(p, &g);
    double worst = 0;
    for (int i = 0; i < s->w.n; i++) {
        const char *name = s->w.items[i].name;
        sd_tensor *w = &s->w.items[i].t, *gt = sd_weights_find(&g.w, name);
        const float *gd = gt->data;
        double scale = 0;
        int64_t best = 0, n = sd_numel(w);
        for (int64_t j = 0; j < n; j++)
            if (fabs(gd[j]) > scale) scale = fabs(gd[j]), best = j;
        if (untouched && strstr(name, untouched) == NULL) {
            CHECK(scale == 0, "%s: %s gets gradient %.3e", what, name, scale);
            continue;
        }
        for (int k = 0; k < 4 && k < n; k++) {
            float *x = (float *)w->data + (best + k * 7919) % n, keep = *x;
            double e = INFINITY;
            for (double h = 2e-2; h > 3e-3; h /= 4) {
                *x = keep + (float)h;
                double up = loss_of(p, NULL);
                *x = keep - (float)h;
                double down = loss_of(p, NULL);
                *x = keep;
                double fd = (up - down) / (2 * h);
                e = fmin(e, fabs(fd - gd[(best + k * 7919) % n]) / (scale + 1e-3));
            }
            worst = fmax(worst, e);
            CHECK(e < 1e-2, "%s: %s gradient error %.3e", what, name, e);
        }
    }
    printf("%s: gradients vs central differences: max rel error %.2e\n", what, worst);
    sd_student_free(&g);
}

static void fill_normal(sd_tensor *t, uint64_t *rng, float scale) {
    for (int64_t i = 0; i < sd_numel(t); i++) ((float *)t->data)[i] = scale * sd_rng_normal(rng);
}

static void test_stage2(sd_ctx *ctx, sd_mixer_type mixer) {
    sd_model_config c = config(mixer);
    sd_student s;
    sd_student_layer_acts la;
    CHECK_OK(sd_student_init_random(&s, &c, 3));
    CHECK_OK(sd_student_layer_acts_init(ctx, &la, &c, 1, B, T));
    sd_tensor u, target;
    CHECK_OK(sd_tensor_f32(&u, 3, B, T, D, 0));
    CHECK_OK(sd_tensor_f32(&target, 3, B, T, D, 0));
    uint64_t rng = 9;
    fill_normal(&u, &rng, 1.0f);
    fill_normal(&target, &rng, 0.3f);
    problem p = {.ctx = ctx, .s = &s, .stage = 2, .l = 1, .la = &la, .u = &u, .target = &target};
    /* the value: mean over tokens of the L2 distance, computed here from the mixer output */
    float loss;
    CHECK_OK(sd_stage2_layer(ctx, &s, 1, &la, &u, &target, 0, &loss, NULL));
    double ref = 0;
    for (int64_t r = 0; r < B * T; r++) {
        double ss = 0;
        for (int i = 0; i < D; i++) {
            double d = ((float *)la.mix.data)[r * D + i] - ((float *)target.data)[r * D + i];
            ss += d * d;
        }
        ref += sqrt(ss) / (B * T);
    }
    CHECK(fabs(loss - ref) < 1e-5 * ref, "stage 2 loss %.7f vs %.7f", loss, ref);
    const char *what = mixer == SD_MIXER_DISCRETE ? "stage 2 (discrete, attention-output target)"
                                                  : "stage 2 (standard, attention-output target)";
    check_grads(&p, &s, what, "layers.1.mixer.");
    p.block_out = 1;
    check_grads(&p, &s, "stage 2 (block-output target)", "layers.1.");
    sd_tensor_free(&u);
    sd_tensor_free(&target);
    sd_student_layer_acts_free(&la);
    sd_student_free(&s);
}

/* Stage 1 against random queries and keys (4 query heads, 2 KV heads, as the student's 4). */
static void test_stage1(sd_ctx *ctx, sd_mixer_type mixer) {
    sd_model_config c = config(mixer);
    sd_student s;
    sd_student_layer_acts la;
    CHECK_OK(sd_student_init_random(&s, &c, 5));
    CHECK_OK(sd_student_layer_acts_init(ctx, &la, &c, 1, B, T));
    sd_tensor u, q, k;
    CHECK_OK(sd_tensor_f32(&u, 3, B, T, D, 0));
    CHECK_OK(sd_tensor_f32(&q, 4, B, T, 4, 4));
    CHECK_OK(sd_tensor_f32(&k, 4, B, T, 2, 4));
    uint64_t rng = 12;
    fill_normal(&u, &rng, 1.0f);
    fill_normal(&q, &rng, 1.0f);
    fill_normal(&k, &rng, 1.0f);
    problem p = {.ctx = ctx, .s = &s, .stage = 1, .l = 1, .la = &la, .u = &u, .q = &q, .k = &k};
    check_grads(&p, &s, mixer == SD_MIXER_DISCRETE ? "stage 1 (discrete)" : "stage 1 (standard)", "layers.1.mixer.");
    /* fewer student heads than teacher query heads cannot be paired */
    sd_tensor q8;
    CHECK_OK(sd_tensor_f32(&q8, 4, B, T, 8, 4));
    float loss;
    int rc = sd_stage1_layer(ctx, &s, 1, &la, &u, &q8, &k, &loss, NULL);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "query heads"), "8 teacher heads vs 4: rc %d '%s'", rc, sd_errmsg());
    sd_tensor_free(&q8);
    sd_tensor_free(&u);
    sd_tensor_free(&q);
    sd_tensor_free(&k);
    sd_student_layer_acts_free(&la);
    sd_student_free(&s);
}

static void test_stage3(sd_ctx *ctx) {
    sd_model_config c = config(SD_MIXER_DISCRETE);
    sd_student s;
    sd_student_acts a;
    CHECK_OK(sd_student_init_random(&s, &c, 4));
    CHECK_OK(sd_student_acts_init(ctx, &a, &c, B, T));
    int32_t seq[B * T];
    for (int i = 0; i < B * T; i++) seq[i] = (i * 7 + 2) % V;
    int64_t shape[2] = {B, T};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape), tl, per;
    CHECK_OK(sd_tensor_f32(&tl, 3, B, T, V, 0));
    CHECK_OK(sd_tensor_f32(&per, 1, B * T, 0, 0, 0));
    uint64_t rng = 10;
    fill_normal(&tl, &rng, 2.0f);
    problem p = {.ctx = ctx, .s = &s, .stage = 3, .a = &a, .ids = &ids, .tl = &tl, .temp = 2.0f, .w = 0.3f};
    /* the value: 0.7 * 4 * mean KL at T = 2 + 0.3 * mean CE, from the student's logits */
    float loss, ce;
    CHECK_OK(sd_stage3(ctx, &s, &ids, &a, &tl, 2.0f, 0.3f, &loss, NULL));
    CHECK_OK(sd_student_train_forward(ctx, &s, &ids, &a, &ce));
    CHECK_OK(sd_kl_div(ctx, &per, &tl, &a.logits, 2.0f, NULL, SD_IGNORE_INDEX));
    double kl = 0;
    for (int i = 0; i < B * T; i++) kl += ((float *)per.data)[i] / (B * T);
    double ref = 0.7 * 4 * kl + 0.3 * ce;
    CHECK(fabs(loss - ref) < 1e-5 * ref, "stage 3 loss %.7f vs %.7f", loss, ref);
    check_grads(&p, &s, "stage 3 (KD at T 2, CE weight 0.3)", NULL);
    /* the teacher's own logits as the student's: KD 0, the loss is the CE part only */
    CHECK_OK(sd_stage3(ctx, &s, &ids, &a, &a.logits, 1.0f, 0.0f, &loss, NULL));
    sd_tensor same;
    CHECK_OK(sd_tensor_f32(&same, 3, B, T, V, 0));
    memcpy(same.data, a.logits.data, sd_nbytes(&same));
    CHECK_OK(sd_stage3(ctx, &s, &ids, &a, &same, 1.0f, 0.0f, &loss, NULL));
    CHECK(fabs(loss) < 1e-6, "KD against itself: %.3e", loss);
    sd_tensor_free(&same);
    sd_tensor_free(&tl);
    sd_tensor_free(&per);
    sd_student_acts_free(&a);
    sd_student_free(&s);
}

int main(void) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    test_stage1(&ctx, SD_MIXER_DISCRETE);
    test_stage1(&ctx, SD_MIXER_STANDARD);
    test_stage2(&ctx, SD_MIXER_DISCRETE);
    test_stage2(&ctx, SD_MIXER_STANDARD);
    test_stage3(&ctx);
    return test_summary("test_stages");
}
