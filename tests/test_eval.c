/* Evaluation: stories260K against itself on the TinyStories dev text gives KL 0 and top-1
 * agreement 1 exactly and a sane perplexity; a random student against it gives KL > 0; a
 * token shard sampled from the teacher is read directly, deterministically for a seed. */
#include "common/error.h"
#include "convert/shard.h"
#include "distill/sample_corpus.h"
#include "distill/student_train.h"
#include "eval/eval.h"
#include "test_util.h"

#include <unistd.h>

/* A random discrete student with the teacher's vocabulary, as an sd_lm. */
static int random_student(sd_lm *m, const sd_model_config *teacher) {
    memset(m, 0, sizeof *m);
    sd_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SD_ARCH_STUDENT;
    snprintf(c.model_type, sizeof c.model_type, "ssdistill_student");
    snprintf(c.hidden_act, sizeof c.hidden_act, "silu");
    c.vocab_size = teacher->vocab_size;
    c.hidden_size = 32;
    c.num_layers = 2;
    c.intermediate_size = 64;
    c.norm_eps = 1e-5f;
    c.num_heads = c.num_kv_heads = 4;
    c.head_dim = 8;
    c.rope = (sd_rope_config){.head_dim = 8, .rotary_dim = 8, .theta = 10000.0};
    c.bos_token_id = teacher->bos_token_id;
    c.eos_token_id = teacher->eos_token_id;
    c.ssm = (sd_ssm_config){.mixer = SD_MIXER_DISCRETE, .num_heads = 4, .head_dim = 8, .state_size = 8, .n_groups = 4,
                            .conv_kernel = 4, .use_conv_bias = 1, .chunk_size = 32, .time_step_max = INFINITY};
    m->cfg = c;
    m->is_student = 1;
    return sd_student_init_random(&m->student, &c, 5);
}

static void test_self_and_random(sd_ctx *ctx, const sd_lm *teacher) {
    char text[1024];
    test_path(text, sizeof text, "text/tinystories_val_dev.txt");
    int32_t *tokens = NULL;
    int64_t n = 0;
    CHECK_OK(sd_eval_load_data(text, NULL, teacher->path, &teacher->cfg, 16384, &tokens, &n));
    CHECK(n == 16384 && tokens && tokens[0] == 1, "text: %lld tokens, first %d (expected BOS 1)", (long long)n,
          tokens ? tokens[0] : -1);
    sd_eval_options opt = {.seq_len = 256, .batch = 8, .max_tokens = 0};
    sd_eval_result r;
    CHECK_OK(sd_eval_tokens(ctx, teacher, teacher, tokens, n, &opt, &r));
    printf("stories260K on %lld dev tokens: ppl %.4f, teacher ppl %.4f, kl %g, top1 %g\n", (long long)r.tokens, r.ppl,
           r.teacher_ppl, r.kl, r.top1);
    CHECK(r.kl == 0.0 && r.top1 == 1.0, "against itself: kl %g, top1 %g", r.kl, r.top1);
    CHECK(r.ppl == r.teacher_ppl && r.ppl > 2 && r.ppl < 12, "ppl %g, teacher ppl %g", r.ppl, r.teacher_ppl);
    CHECK(r.tokens == n / 256 * 255, "counted %lld positions", (long long)r.tokens);
    sd_lm student;
    CHECK_OK(random_student(&student, &teacher->cfg));
    if (student.student.layers) {
        CHECK_OK(sd_eval_tokens(ctx, &student, teacher, tokens, 4096, &opt, &r));
        printf("random student: ppl %.2f, kl %.4f, top1 %.4f\n", r.ppl, r.kl, r.top1);
        CHECK(r.kl > 0.1 && r.top1 < 1.0 && r.ppl > r.teacher_ppl, "random student: kl %g, top1 %g", r.kl, r.top1);
    }
    sd_lm_free(&student);
    free(tokens);
}

/* Sampling twice with one seed gives the same shard; ids stay in the vocabulary; every
 * document ends in EOS; eval reads the shard as tokens. */
static void test_sampled_shard(sd_ctx *ctx, const sd_lm *teacher) {
    char a[256], b[256];
    snprintf(a, sizeof a, "/tmp/ssdistill_test_eval_%d_a.bin", (int)getpid());
    snprintf(b, sizeof b, "/tmp/ssdistill_test_eval_%d_b.bin", (int)getpid());
    sd_sample_options o = {.tokens = 3000, .seq_len = 128, .temperature = 1.0f, .top_p = 0.95f, .seed = 9, .batch = 8};
    sd_sample_stats st;
    CHECK_OK(sd_sample_corpus_to_shard(ctx, &teacher->teacher, &o, a, &st));
    CHECK_OK(sd_sample_corpus_to_shard(ctx, &teacher->teacher, &o, b, &st));
    sd_shard x, y;
    memset(&x, 0, sizeof x);
    memset(&y, 0, sizeof y);
    CHECK_OK(sd_shard_read(a, &x));
    CHECK_OK(sd_shard_read(b, &y));
    CHECK(x.ntokens == 3000 && y.ntokens == 3000, "shard sizes %lld, %lld", (long long)x.ntokens, (long long)y.ntokens);
    CHECK(x.tokens && y.tokens && memcmp(x.tokens, y.tokens, 3000 * sizeof(uint32_t)) == 0, "same seed, different shards");
    int64_t eos = 0, run = 0, longest = 0, bad = 0;
    for (int64_t i = 0; x.tokens && i < x.ntokens; i++) {
        bad += x.tokens[i] >= 512;
        if (x.tokens[i] == 2) {
            eos++;
            run = 0;
        } else if (++run > longest) {
            longest = run;
        }
    }
    CHECK(bad == 0 && eos > 3 && longest <= 127, "tokens >= vocab: %lld, EOS: %lld, longest document %lld", (long long)bad,
          (long long)eos, (long long)longest);
    int32_t *tok = NULL;
    int64_t n = 0;
    CHECK_OK(sd_eval_load_data(a, NULL, teacher->path, &teacher->cfg, 0, &tok, &n));
    CHECK(n == 3000 && tok && (uint32_t)tok[10] == x.tokens[10], "shard read as %lld tokens", (long long)n);
    sd_eval_options opt = {.seq_len = 128, .batch = 4};
    sd_eval_result r;
    CHECK_OK(sd_eval_tokens(ctx, teacher, NULL, tok, n, &opt, &r));
    printf("teacher on its own samples: ppl %.3f over %lld tokens (%lld documents sampled)\n", r.ppl, (long long)r.tokens,
           (long long)st.documents);
    CHECK(r.ppl > 1 && r.ppl < 12 && !r.has_teacher, "ppl on its own samples %g", r.ppl);
    free(tok);
    sd_shard_free(&x);
    sd_shard_free(&y);
    remove(a);
    remove(b);
}

int main(void) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    char path[1024];
    test_path(path, sizeof path, "hf/stories260K");
    sd_lm teacher;
    CHECK_OK(sd_lm_load(&teacher, path));
    if (teacher.path) {
        test_self_and_random(&ctx, &teacher);
        test_sampled_shard(&ctx, &teacher);
        sd_lm_free(&teacher);
    }
    return test_summary("test_eval");
}
