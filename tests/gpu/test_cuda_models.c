/* The models on the CUDA op layer against the same models on the CPU (DESIGN.md section 3):
 * the stories260K teacher (../shared/data/hf/stories260K) and a discrete-mixer student made
 * from it with the attention init (recipes/stories260k.json's student), on 2 x 64 tokens:
 *   - teacher logits and trace (hidden states, q, k, attention outputs);
 *   - stage 1 (layer 0), stage 2 (layer 1, attention-output target) and stage 3
 *     ((1 - w) T^2 KL + w CE through the whole student): loss and every parameter gradient;
 *   - one AdamW step on the F32 masters against the CPU step, and the BF16 refresh against a
 *     fresh move of the stepped masters (the same bits);
 *   - a hybrid student (attention kept in layer 2): stage 3 loss and gradients.
 * The GPU runs BF16 weights and activations with fp32 accumulation, the CPU fp32 throughout,
 * so the comparison is in relative Frobenius error ||gpu - cpu|| / ||cpu||, with tolerances
 * set for BF16 (2^-8 relative rounding per operand, compounded over 5 layers):
 *   teacher logits, hidden states, losses 3e-2; the student's logits 5e-2 (its untrained
 *   mixers compound more: 3.7e-2 measured); a gradient tensor 1.5e-1 (its own norm; gradients
 *   of tiny tensors are mostly rounding; 2.5e-1 in the hybrid, whose attention key gradient
 *   is a difference of near-equal terms), all gradients together (one flat vector) 5e-2.
 * Exits 77 (skipped) without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../test_util.h"
#include "common/error.h"
#include "distill/device_weights.h"
#include "distill/optimizer.h"
#include "distill/stages.h"
#include "distill/student_train.h"
#include "distill/teacher.h"
#include "distill/transfer.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_ctx.h"
#include "kernels/tensor_ops.h"

enum { B = 2, T = 64 };

static sd_ctx g_cpu, g_gpu;

/* ||gpu - cpu||^2 and ||cpu||^2 (gpu on the device, cpu on the host), accumulated. */
static int diff_sums(const sd_tensor *gpu, const sd_tensor *cpu, double *num, double *den) {
    sd_tensor h;
    SD_TRY(sd_tensor_alloc(&h, SD_F32, cpu->ndim, cpu->shape));
    int rc = sd_tensor_into_host(&g_gpu, &h, gpu);
    const float *a = h.data, *b = cpu->data;
    for (int64_t i = 0; rc == SD_OK && i < sd_numel(cpu); i++) {
        double d = (double)a[i] - b[i];
        *num += d * d;
        *den += (double)b[i] * b[i];
    }
    sd_tensor_free(&h);
    return rc;
}

static double rel(const sd_tensor *gpu, const sd_tensor *cpu) {
    double num = 0, den = 0;
    if (diff_sums(gpu, cpu, &num, &den) != SD_OK) return INFINITY;
    return sqrt(num / (den > 0 ? den : 1e-30));
}

static void check_rel(const char *what, const sd_tensor *gpu, const sd_tensor *cpu, double tol) {
    double e = rel(gpu, cpu);
    printf("  %-44s rel %.3e (tol %.0e)\n", what, e, tol > 0 ? tol : 0.0);
    CHECK(e <= tol, "%s: relative error %.3e above %.0e", what, e, tol);
}

static void check_loss(const char *what, float gpu, float cpu) {
    double e = fabs((double)gpu - cpu) / fmax(fabs((double)cpu), 1e-12);
    printf("  %-44s gpu %.6f cpu %.6f rel %.2e\n", what, gpu, cpu, e);
    CHECK(e <= 3e-2, "%s: gpu %g vs cpu %g", what, gpu, cpu);
}

/* Every gradient tensor (those with a non-negligible norm, within tol_tensor) and all of them
 * together (5e-2). */
static void check_grads(const char *what, const sd_student *gg, const sd_student *gc, double tol_tensor) {
    double num = 0, den = 0, worst = 0, total = 0;
    const char *worst_name = "";
    for (int i = 0; i < gc->w.n; i++) {
        double n1 = 0, d1 = 0;
        CHECK_OK(diff_sums(&gg->w.items[i].t, &gc->w.items[i].t, &n1, &d1));
        num += n1;
        den += d1;
        total = fmax(total, d1);
    }
    for (int i = 0; i < gc->w.n; i++) {
        double n1 = 0, d1 = 0;
        CHECK_OK(diff_sums(&gg->w.items[i].t, &gc->w.items[i].t, &n1, &d1));
        if (d1 < 1e-8 * total) continue; /* a gradient that is ~0 on the CPU: nothing to compare */
        double e = sqrt(n1 / d1);
        if (e > worst) worst = e, worst_name = gc->w.items[i].name;
        CHECK(e <= tol_tensor, "%s: gradient of %s: relative error %.3e", what, gc->w.items[i].name, e);
    }
    double all = sqrt(num / (den > 0 ? den : 1e-30));
    printf("  %-44s all %.3e (tol 5e-2), worst tensor %.3e (%s)\n", what, all, worst, worst_name);
    CHECK(all <= 5e-2, "%s: all gradients: relative error %.3e", what, all);
}

typedef struct {
    sd_teacher t;
    sd_student s, g;
    sd_weights master; /* GPU only */
} side;

static void side_free(side *x);

static void make_student(sd_ctx *ctx, side *x, const sd_model_config *sc) {
    CHECK_OK(sd_student_from_teacher(&x->t, sc, SD_INIT_ATTENTION, 3, &x->s));
    sd_weights_init(&x->master);
    if (ctx->backend == SD_DEV_CUDA) {
        sd_weights compute;
        CHECK_OK(sd_weights_mixed(ctx, &x->s.w, &x->master, &compute));
        sd_student_free(&x->s);
        CHECK_OK(sd_student_init(&x->s, sc, &compute, "student"));
        sd_weights_free(&compute);
        CHECK_OK(sd_teacher_to_ctx(ctx, &x->t));
    }
    CHECK_OK(sd_student_grads_init(&x->s, &x->g));
}

static void test_teacher(side *gc, side *gg, const sd_tensor *ids) {
    printf("teacher forward:\n");
    sd_tensor lc, lg;
    CHECK_OK(sd_tensor_new_f32(&g_cpu, &lc, 3, B, T, gc->t.cfg.vocab_size, 0));
    CHECK_OK(sd_tensor_act(&g_gpu, &lg, 3, B, T, gc->t.cfg.vocab_size, 0)); /* BF16, as distill's */
    sd_teacher_trace tc, tg;
    memset(&tc, 0, sizeof tc);
    memset(&tg, 0, sizeof tg);
    tc.want_hidden = tg.want_hidden = tc.want_qk = tg.want_qk = tc.want_attn_out = tg.want_attn_out = 1;
    CHECK_OK(sd_teacher_forward(&g_cpu, &gc->t, ids, NULL, &lc, &tc));
    CHECK_OK(sd_teacher_forward(&g_gpu, &gg->t, ids, NULL, &lg, &tg));
    check_rel("logits", &lg, &lc, 3e-2);
    int L = gc->t.cfg.num_layers;
    check_rel("hidden state entering the last layer", &tg.hidden[L - 1], &tc.hidden[L - 1], 3e-2);
    check_rel("final hidden state", &tg.final_hidden, &tc.final_hidden, 3e-2);
    check_rel("layer 0 queries after rotary", &tg.q[0], &tc.q[0], 3e-2);
    check_rel("layer 0 keys after rotary", &tg.k[0], &tc.k[0], 3e-2);
    check_rel("last layer attention output", &tg.attn_out[L - 1], &tc.attn_out[L - 1], 3e-2);

    /* stages 1 and 2 on the teacher's traces */
    printf("stage 1 (layer 0) and stage 2 (layer 1, attention output):\n");
    sd_student_layer_acts ac, ag;
    float loss_c, loss_g;
    CHECK_OK(sd_student_layer_acts_init(&g_cpu, &ac, &gc->s.cfg, 0, B, T));
    CHECK_OK(sd_student_layer_acts_init(&g_gpu, &ag, &gg->s.cfg, 0, B, T));
    CHECK_OK(sd_student_grads_zero(&g_cpu, &gc->g));
    CHECK_OK(sd_student_grads_zero(&g_gpu, &gg->g));
    CHECK_OK(sd_stage1_layer(&g_cpu, &gc->s, 0, &ac, &tc.hidden[0], &tc.q[0], &tc.k[0], &loss_c, &gc->g));
    CHECK_OK(sd_stage1_layer(&g_gpu, &gg->s, 0, &ag, &tg.hidden[0], &tg.q[0], &tg.k[0], &loss_g, &gg->g));
    check_loss("stage 1 loss", loss_g, loss_c);
    check_grads("stage 1 gradients", &gg->g, &gc->g, 1.5e-1);
    CHECK_OK(sd_student_grads_zero(&g_cpu, &gc->g));
    CHECK_OK(sd_student_grads_zero(&g_gpu, &gg->g));
    CHECK_OK(sd_stage2_layer(&g_cpu, &gc->s, 1, &ac, &tc.hidden[1], &tc.attn_out[1], 0, &loss_c, &gc->g));
    CHECK_OK(sd_stage2_layer(&g_gpu, &gg->s, 1, &ag, &tg.hidden[1], &tg.attn_out[1], 0, &loss_g, &gg->g));
    check_loss("stage 2 loss", loss_g, loss_c);
    check_grads("stage 2 gradients", &gg->g, &gc->g, 1.5e-1);
    sd_student_layer_acts_free(&ac);
    sd_student_layer_acts_free(&ag);
    sd_teacher_trace_free(&tc);
    sd_teacher_trace_free(&tg);

    printf("stage 3 (temperature 2, ce weight 0.25):\n");
    sd_student_acts sc, sg;
    CHECK_OK(sd_student_acts_init(&g_cpu, &sc, &gc->s.cfg, B, T));
    CHECK_OK(sd_student_acts_init(&g_gpu, &sg, &gg->s.cfg, B, T));
    CHECK_OK(sd_student_grads_zero(&g_cpu, &gc->g));
    CHECK_OK(sd_student_grads_zero(&g_gpu, &gg->g));
    CHECK_OK(sd_stage3(&g_cpu, &gc->s, ids, &sc, &lc, 2.0f, 0.25f, &loss_c, &gc->g));
    CHECK_OK(sd_stage3(&g_gpu, &gg->s, ids, &sg, &lg, 2.0f, 0.25f, &loss_g, &gg->g));
    check_loss("stage 3 loss", loss_g, loss_c);
    check_rel("student logits", &sg.logits, &sc.logits, 5e-2);
    check_grads("stage 3 gradients", &gg->g, &gc->g, 1.5e-1);

    printf("AdamW step (lr 1e-3) on the stage-3 gradients, then the BF16 refresh:\n");
    sd_optimizer oc, og;
    sd_adamw_config cfg = sd_adamw_config_default();
    CHECK_OK(sd_optimizer_init(&oc, &gc->s.w, &cfg));
    CHECK_OK(sd_optimizer_init(&og, &gg->master, &cfg));
    double nc, ng;
    CHECK_OK(sd_optimizer_step(&oc, &g_cpu, &gc->s.w, &gc->g.w, 1e-3f, 1.0f, &nc));
    CHECK_OK(sd_optimizer_step(&og, &g_gpu, &gg->master, &gg->g.w, 1e-3f, 1.0f, &ng));
    CHECK_OK(sd_weights_refresh(&g_gpu, &gg->s.w, &gg->master));
    printf("  gradient norm gpu %.6f cpu %.6f\n", ng, nc);
    CHECK(fabs(ng - nc) <= 5e-2 * nc, "gradient norms %g vs %g", ng, nc);
    double num = 0, den = 0;
    for (int i = 0; i < gc->s.w.n; i++) CHECK_OK(diff_sums(&gg->master.items[i].t, &gc->s.w.items[i].t, &num, &den));
    printf("  %-44s rel %.3e (tol 1e-2)\n", "parameters after the step (F32 masters)", sqrt(num / den));
    CHECK(sqrt(num / den) <= 1e-2, "parameters after one step differ by %.3e", sqrt(num / den));
    check_rel("lm_head (BF16 compute copy) after the refresh", gg->s.lm_head, gc->s.lm_head, 1e-2);
    /* The refreshed compute set must be exactly what a fresh move of the stepped masters gives
     * (logits compared with the CPU after an AdamW step would mostly measure Adam's first step,
     * lr sign(g), on gradient entries whose sign bf16 rounding flips). */
    sd_weights host, master2, compute2;
    sd_student fresh;
    sd_student_acts sf;
    CHECK_OK(sd_weights_to_host(&g_gpu, &gg->master, &host));
    CHECK_OK(sd_weights_mixed(&g_gpu, &host, &master2, &compute2));
    CHECK_OK(sd_student_init(&fresh, &gg->s.cfg, &compute2, "fresh"));
    CHECK_OK(sd_student_acts_init(&g_gpu, &sf, &gg->s.cfg, B, T));
    CHECK_OK(sd_student_train_logits(&g_gpu, &gg->s, ids, &sg));
    CHECK_OK(sd_student_train_logits(&g_gpu, &fresh, ids, &sf));
    sd_tensor lf;
    CHECK_OK(sd_tensor_alloc(&lf, SD_F32, 3, sf.logits.shape));
    CHECK_OK(sd_tensor_into_host(&g_gpu, &lf, &sf.logits));
    check_rel("logits after the refresh vs a fresh move", &sg.logits, &lf, 0.0);
    sd_tensor_free(&lf);
    sd_student_acts_free(&sf);
    sd_student_free(&fresh);
    sd_weights_free(&compute2);
    sd_weights_free(&master2);
    sd_weights_free(&host);
    sd_optimizer_free(&oc);
    sd_optimizer_free(&og);
    sd_student_acts_free(&sc);
    sd_student_acts_free(&sg);
    sd_tensor_free(&lc);
    sd_tensor_free(&lg);
}

/* A hybrid student (layer 2 keeps the teacher's attention): stage 3 through the CUDA attention
 * backward. */
static void test_hybrid(const char *path, const sd_model_config *base, const sd_tensor *ids) {
    printf("hybrid student (attention in layer 2), stage 3:\n");
    side hc, hg;
    memset(&hc, 0, sizeof hc);
    memset(&hg, 0, sizeof hg);
    sd_model_config sc = *base;
    sc.attn_layer[2] = 1;
    CHECK_OK(sd_teacher_load(&hc.t, path));
    CHECK_OK(sd_teacher_load(&hg.t, path));
    if (g_test_fail) return;
    make_student(&g_cpu, &hc, &sc);
    make_student(&g_gpu, &hg, &sc);
    sd_tensor lc, lg;
    CHECK_OK(sd_tensor_new_f32(&g_cpu, &lc, 3, B, T, sc.vocab_size, 0));
    CHECK_OK(sd_tensor_act(&g_gpu, &lg, 3, B, T, sc.vocab_size, 0));
    CHECK_OK(sd_teacher_forward(&g_cpu, &hc.t, ids, NULL, &lc, NULL));
    CHECK_OK(sd_teacher_forward(&g_gpu, &hg.t, ids, NULL, &lg, NULL));
    sd_student_acts ac, ag;
    float loss_c = 0, loss_g = 0;
    CHECK_OK(sd_student_acts_init(&g_cpu, &ac, &sc, B, T));
    CHECK_OK(sd_student_acts_init(&g_gpu, &ag, &sc, B, T));
    CHECK_OK(sd_stage3(&g_cpu, &hc.s, ids, &ac, &lc, 2.0f, 0.25f, &loss_c, &hc.g));
    CHECK_OK(sd_stage3(&g_gpu, &hg.s, ids, &ag, &lg, 2.0f, 0.25f, &loss_g, &hg.g));
    check_loss("stage 3 loss", loss_g, loss_c);
    /* the key projection's gradient is a sum of terms that cancel (sum_s dS_ts = 0 in every
     * softmax row), so BF16 inputs move it most: 1.8e-1 measured, the rest below 1e-1 */
    check_grads("stage 3 gradients", &hg.g, &hc.g, 2.5e-1);
    sd_student_acts_free(&ac);
    sd_student_acts_free(&ag);
    sd_tensor_free(&lc);
    sd_tensor_free(&lg);
    side_free(&hc);
    side_free(&hg);
}

static void side_free(side *x) {
    sd_student_free(&x->g);
    sd_student_free(&x->s);
    sd_weights_free(&x->master);
    sd_teacher_free(&x->t);
}

int main(void) {
    if (sd_cuda_device_count() == 0) {
        printf("test_cuda_models: no CUDA device, skipped\n");
        return 77;
    }
    sd_ctx_init_cpu(&g_cpu, 0);
    if (sd_ctx_init_cuda(&g_gpu, 0) != SD_OK) {
        fprintf(stderr, "FAIL: %s\n", sd_errmsg());
        return 1;
    }
    char path[4096];
    test_path(path, sizeof path, "hf/stories260K");
    side gc, gg;
    memset(&gc, 0, sizeof gc);
    memset(&gg, 0, sizeof gg);
    CHECK_OK(sd_teacher_load(&gc.t, path));
    CHECK_OK(sd_teacher_load(&gg.t, path));
    sd_student_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.mixer = SD_MIXER_DISCRETE;
    spec.state_size = 8;
    spec.chunk_size = 64;
    spec.conv_kernel = 4;
    spec.expand = 1;
    spec.init = SD_INIT_ATTENTION;
    sd_model_config sc;
    CHECK_OK(sd_student_config_for(&gc.t.cfg, &spec, "test student", &sc));
    if (g_test_fail) return test_summary("test_cuda_models");
    make_student(&g_cpu, &gc, &sc);
    make_student(&g_gpu, &gg, &sc);
    int32_t seq[B * T];
    for (int i = 0; i < B * T; i++) seq[i] = (i * 37 + 11) % gc.t.cfg.vocab_size;
    int64_t shape[2] = {B, T};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape);
    if (!g_test_fail) test_teacher(&gc, &gg, &ids);
    if (!g_test_fail) test_hybrid(path, &sc, &ids);
    side_free(&gc);
    side_free(&gg);
    sd_ctx_free_cuda(&g_gpu);
    return test_summary("test_cuda_models");
}
