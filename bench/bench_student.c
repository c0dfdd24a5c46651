/* Student forward + backward throughput (tokens/s), one JSON line per (model, threads).
 * A benchmark, never a test. */
#include "common/error.h"
#include "distill/student_train.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum { T = 256 };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* HF Mamba-2 layout: standard mixer (expand 2), no MLPs. */
static sd_model_config config(int d, int layers, int H, int P, int N) {
    sd_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SD_ARCH_MAMBA2;
    snprintf(c.hidden_act, sizeof c.hidden_act, "silu");
    c.vocab_size = 512;
    c.hidden_size = d;
    c.num_layers = layers;
    c.norm_eps = 1e-5f;
    c.bos_token_id = c.eos_token_id = -1;
    c.ssm = (sd_ssm_config){.mixer = SD_MIXER_STANDARD, .num_heads = H, .head_dim = P, .state_size = N,
                            .n_groups = 1, .conv_kernel = 4, .use_conv_bias = 1, .chunk_size = 64,
                            .time_step_min = 0.0, .time_step_max = INFINITY};
    return c;
}

/* What distillation makes of a Llama teacher: its blocks (SwiGLU MLP of width I) with a
 * discrete mixer of H heads (expand 1, B/C per head) in place of attention. */
static sd_model_config llamba(int d, int layers, int H, int N, int I) {
    sd_model_config c = config(d, layers, H, d / H, N);
    c.arch = SD_ARCH_STUDENT;
    c.intermediate_size = I;
    c.num_heads = H;
    c.num_kv_heads = H / 2;
    c.head_dim = d / H;
    c.rope = (sd_rope_config){.head_dim = d / H, .rotary_dim = d / H, .theta = 10000.0};
    c.ssm.mixer = SD_MIXER_DISCRETE;
    c.ssm.n_groups = H;
    return c;
}

static int run(const char *name, const sd_model_config *cfg, int threads) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, threads);
    sd_student s, g;
    sd_student_acts a;
    SD_TRY(sd_student_init_random(&s, cfg, 1));
    SD_TRY(sd_student_grads_init(&s, &g));
    SD_TRY(sd_student_acts_init(&ctx, &a, cfg, 1, T));
    int32_t seq[T];
    for (int i = 0; i < T; i++) seq[i] = (i * 131 + 7) % cfg->vocab_size;
    int64_t shape[2] = {1, T};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape);
    float loss;
    int iters = 0;
    double t0 = now(), t1 = t0;
    /* at least 3 iterations and 1 s after a warm-up */
    SD_TRY(sd_student_train_forward(&ctx, &s, &ids, &a, &loss));
    SD_TRY(sd_student_backward(&ctx, &s, &ids, &a, &g));
    t0 = now();
    while (iters < 3 || t1 - t0 < 1.0) {
        SD_TRY(sd_student_train_forward(&ctx, &s, &ids, &a, &loss));
        SD_TRY(sd_student_backward(&ctx, &s, &ids, &a, &g));
        iters++;
        t1 = now();
    }
    printf("{\"bench\":\"student_fwd_bwd\",\"model\":\"%s\",\"threads\":%d,\"T\":%d,\"batch\":1,"
           "\"iters\":%d,\"tokens_per_s\":%.1f}\n",
           name, threads, T, iters, iters * (double)T / (t1 - t0));
    sd_student_acts_free(&a);
    sd_student_free(&g);
    sd_student_free(&s);
    return SD_OK;
}

int main(void) {
    /* stories260K's shape (d 64, 5 layers, 8 heads, MLP 172, vocab 512) as the distilled
     * student (discrete, N 16) and as HF Mamba-2; then d 512, 8 layers. */
    struct {
        const char *name;
        sd_model_config cfg;
    } models[] = {{"discrete_mlp_d64_L5_H8", llamba(64, 5, 8, 16, 172)},
                  {"mamba2_d64_L5_H8", config(64, 5, 8, 16, 16)},
                  {"discrete_mlp_d512_L8_H16", llamba(512, 8, 16, 64, 1376)},
                  {"mamba2_d512_L8_H16", config(512, 8, 16, 64, 64)}};
    for (int th = 1; th <= 2; th++)
        for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
            if (run(models[i].name, &models[i].cfg, th) != SD_OK) return fprintf(stderr, "%s\n", sd_errmsg()), 1;
    return 0;
}
