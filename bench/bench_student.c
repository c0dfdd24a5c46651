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

static int run(const char *name, const sd_model_config *cfg, int threads) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, threads);
    sd_student s, g;
    sd_student_acts a;
    SD_TRY(sd_student_init_random(&s, cfg, 1));
    SD_TRY(sd_student_grads_init(&s, &g));
    SD_TRY(sd_student_acts_init(&a, cfg, 1, T));
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
    sd_model_config small = config(64, 5, 8, 16, 16), big = config(512, 8, 16, 64, 64);
    for (int th = 1; th <= 2; th++) {
        if (run("d64_L5_H8", &small, th) != SD_OK) return fprintf(stderr, "%s\n", sd_errmsg()), 1;
        if (run("d512_L8_H16", &big, th) != SD_OK) return fprintf(stderr, "%s\n", sd_errmsg()), 1;
    }
    return 0;
}
