/* ssdistill generate --model M --tokenizer T [--prompt TEXT] [--greedy | --temperature X
 *                    --top-p P] [--tokens N] [--seed S]
 * Starts from BOS + the encoded prompt, decodes with a KV cache, and prints the text as it
 * comes (the prompt included), then a line of timing on stderr. */
#include "common/error.h"
#include "convert/tokenizer.h"
#include "distill/commands.h"
#include "distill/sampler.h"
#include "distill/student.h"
#include "distill/teacher.h"
#include "eval/eval.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *model, *tokenizer, *prompt;
    long tokens, seed;
    int greedy;
    double temperature, top_p;
} gen_args;

static int parse_args(int argc, char **argv, gen_args *a) {
    static const char *const with_value[] = {"--model", "--tokenizer", "--prompt", "--tokens", "--temperature",
                                             "--top-p", "--seed", NULL};
    static const char *const flags[] = {"--greedy", NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, flags));
    a->model = sd_arg_value(argc, argv, "--model");
    a->tokenizer = sd_arg_value(argc, argv, "--tokenizer");
    a->prompt = sd_arg_value(argc, argv, "--prompt");
    a->greedy = sd_arg_flag(argc, argv, "--greedy");
    if (!a->prompt) a->prompt = "";
    if (!a->model || !a->tokenizer || sd_arg_positional(argc, argv, with_value, 0))
        return sd_fail(SD_ERR_INPUT, "usage: ssdistill generate --model M --tokenizer T [--prompt TEXT] "
                                     "[--greedy | --temperature X --top-p P] [--tokens N] [--seed S]");
    SD_TRY(sd_arg_int(argc, argv, "--tokens", 256, &a->tokens));
    SD_TRY(sd_arg_int(argc, argv, "--seed", 42, &a->seed));
    SD_TRY(sd_arg_double(argc, argv, "--temperature", 1.0, &a->temperature));
    SD_TRY(sd_arg_double(argc, argv, "--top-p", 0.9, &a->top_p));
    if (a->tokens < 1) return sd_fail(SD_ERR_INPUT, "--tokens: must be >= 1, got %ld", a->tokens);
    return SD_OK;
}

/* Prints the part of the decoded text not printed yet.  A trailing U+FFFD may be half of a
 * character whose remaining bytes come with the next token: hold it back until then. */
static int print_new_text(const sd_tokenizer *tok, const int32_t *ids, size_t n, size_t *printed, int final) {
    char *text;
    size_t len;
    SD_TRY(sd_tokenizer_decode(tok, ids, n, &text, &len));
    size_t end = len;
    if (!final && end >= 3 && memcmp(text + end - 3, "\xEF\xBF\xBD", 3) == 0) end -= 3;
    if (end > *printed) {
        fwrite(text + *printed, 1, end - *printed, stdout);
        fflush(stdout);
        *printed = end;
    }
    free(text);
    return SD_OK;
}

/* A teacher with its KV cache, or a student with its recurrent state: what generation feeds. */
typedef struct {
    sd_lm lm;        /* either kind, loaded by eval/eval.h's one loader */
    sd_kv_cache cache;
    sd_student_state state;
    sd_tensor last;  /* [1, 1, V]: logits after the last token fed */
} gen_model;

static int model_load(gen_model *g, const char *path) {
    memset(g, 0, sizeof *g);
    SD_TRY(sd_lm_load(&g->lm, path));
    return sd_tensor_f32(&g->last, 3, 1, 1, g->lm.cfg.vocab_size, 0);
}

/* Room for `capacity` positions: a KV cache grows with the sequence, a student's state does
 * not (a hybrid's attention layers keep a cache). */
static int model_start(gen_model *g, int capacity) {
    return g->lm.is_student ? sd_student_state_init(&g->state, &g->lm.cfg, 1, capacity)
                            : sd_kv_cache_init(&g->cache, &g->lm.cfg, capacity);
}

static void model_free(gen_model *g) {
    if (g->lm.is_student) sd_student_state_free(&g->state);
    else sd_kv_cache_free(&g->cache);
    sd_lm_free(&g->lm);
    sd_tensor_free(&g->last);
}

/* Feeds n tokens; g->last holds the logits after the last one.  The teacher takes the n
 * tokens in one forward; the student steps through them (its memory stays constant). */
static int model_feed(gen_model *g, sd_ctx *ctx, int32_t *ids, size_t n) {
    int64_t one[2] = {1, 1};
    if (g->lm.is_student) {
        for (size_t i = 0; i < n; i++) {
            sd_tensor id = sd_tensor_view(SD_I32, ids + i, 2, one);
            SD_TRY(sd_student_step(ctx, &g->lm.student, &id, &g->state, &g->last));
        }
        return SD_OK;
    }
    if (n == 1) {
        sd_tensor id = sd_tensor_view(SD_I32, ids, 2, one);
        return sd_teacher_forward(ctx, &g->lm.teacher, &id, &g->cache, &g->last, NULL);
    }
    int64_t shape[2] = {1, (int64_t)n};
    sd_tensor idn = sd_tensor_view(SD_I32, ids, 2, shape), logits;
    int V = g->lm.cfg.vocab_size;
    SD_TRY(sd_tensor_f32(&logits, 3, 1, (int64_t)n, V, 0));
    int rc = sd_teacher_forward(ctx, &g->lm.teacher, &idn, &g->cache, &logits, NULL);
    if (rc == SD_OK) memcpy(g->last.data, (float *)logits.data + (n - 1) * (size_t)V, (size_t)V * sizeof(float));
    sd_tensor_free(&logits);
    return rc;
}

/* BOS (from the model config, else the tokenizer) followed by the prompt's ids. */
static int prompt_ids(const sd_model_config *cfg, const sd_tokenizer *tok, const char *prompt, int32_t **ids,
                      size_t *n, size_t *nbos) {
    int32_t *enc = NULL;
    size_t ne = 0;
    SD_TRY(sd_tokenizer_encode(tok, prompt, strlen(prompt), &enc, &ne));
    int bos = cfg->bos_token_id >= 0 ? cfg->bos_token_id : sd_tokenizer_bos(tok);
    size_t k = bos >= 0 ? 1 : 0;
    if (k + ne == 0) {
        free(enc);
        return sd_fail(SD_ERR_INPUT, "--prompt: empty, and neither the model nor the tokenizer has a BOS token");
    }
    *ids = sd_malloc((k + ne) * sizeof(int32_t), "prompt");
    if (!*ids) {
        free(enc);
        return SD_ERR_SYS;
    }
    if (k) (*ids)[0] = bos;
    if (ne) memcpy(*ids + k, enc, ne * sizeof(int32_t));
    *n = k + ne;
    *nbos = k;
    free(enc);
    return SD_OK;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The decoding loop: feed the prompt, then one token per step until EOS or the budget. */
static int decode_loop(sd_ctx *ctx, gen_model *g, const sd_tokenizer *tok, sd_sampler *smp, int32_t *seq,
                       size_t nprompt, size_t skip, size_t total) {
    int eos = g->lm.cfg.eos_token_id >= 0 ? g->lm.cfg.eos_token_id : sd_tokenizer_eos(tok);
    size_t n = nprompt, printed = 0; /* the first `skip` ids (BOS) are not printed */
    double t0 = now_s();
    int rc = model_feed(g, ctx, seq, nprompt);
    if (rc == SD_OK) rc = print_new_text(tok, seq + skip, n - skip, &printed, 0);
    double t1 = now_s();
    while (rc == SD_OK && n < total) {
        int next = sd_sample(smp, g->last.data);
        if (next == eos) break;
        seq[n++] = next;
        rc = print_new_text(tok, seq + skip, n - skip, &printed, 0);
        if (rc != SD_OK || n == total) break;
        rc = model_feed(g, ctx, seq + n - 1, 1);
    }
    if (rc == SD_OK) rc = print_new_text(tok, seq + skip, n - skip, &printed, 1);
    double t2 = now_s();
    printf("\n");
    if (rc == SD_OK)
        fprintf(stderr, "prompt %zu tokens in %.3f s; generated %zu tokens at %.1f tokens/s\n", nprompt, t1 - t0,
                n - nprompt, (n - nprompt) / (t2 - t1 > 0 ? t2 - t1 : 1e-9));
    return rc;
}

static int generate(const gen_args *a, gen_model *g, const sd_tokenizer *tok) {
    int32_t *prompt = NULL, *seq = NULL;
    size_t np = 0, nbos = 0;
    SD_TRY(prompt_ids(&g->lm.cfg, tok, a->prompt, &prompt, &np, &nbos));
    size_t total = np + (size_t)a->tokens, limit = (size_t)g->lm.cfg.max_position_embeddings;
    /* A Transformer never saw positions past its limit; a student has none. */
    if (!g->lm.is_student && limit > 0 && total > limit) total = limit;
    int rc = np > total ? sd_fail(SD_ERR_INPUT, "--prompt: %zu tokens exceed the model's %zu positions", np, total)
                        : SD_OK;
    sd_sampler smp = {0};
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    if (rc == SD_OK && !(seq = sd_malloc(total * sizeof(int32_t), "sequence"))) rc = SD_ERR_SYS;
    if (rc == SD_OK) rc = model_start(g, (int)total);
    if (rc == SD_OK)
        rc = sd_sampler_init(&smp, g->lm.cfg.vocab_size, a->greedy, (float)a->temperature, (float)a->top_p,
                             (uint64_t)a->seed);
    if (rc == SD_OK) {
        memcpy(seq, prompt, np * sizeof(int32_t));
        rc = decode_loop(&ctx, g, tok, &smp, seq, np, nbos, total);
    }
    sd_sampler_free(&smp);
    free(seq);
    free(prompt);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    gen_args a;
    SD_TRY(parse_args(argc, argv, &a));
    sd_tokenizer *tok = NULL;
    SD_TRY(sd_tokenizer_load(a.tokenizer, &tok));
    gen_model g;
    int rc = model_load(&g, a.model);
    if (rc == SD_OK && sd_tokenizer_vocab_size(tok) > g.lm.cfg.vocab_size)
        rc = sd_fail(SD_ERR_INPUT, "%s: tokenizer has %d tokens but the model %s only %d", a.tokenizer,
                     sd_tokenizer_vocab_size(tok), a.model, g.lm.cfg.vocab_size);
    if (rc == SD_OK) rc = generate(&a, &g, tok);
    model_free(&g);
    sd_tokenizer_free(tok);
    return rc;
}
