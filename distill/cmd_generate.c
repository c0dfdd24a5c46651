/* ssdistill generate --model M --tokenizer T [--prompt TEXT] [--greedy | --temperature X
 *                    --top-p P] [--tokens N] [--seed S]
 * Starts from BOS + the encoded prompt, decodes with a KV cache, and prints the text as it
 * comes (the prompt included), then a line of timing on stderr. */
#include "common/error.h"
#include "convert/tokenizer.h"
#include "distill/commands.h"
#include "distill/sampler.h"
#include "distill/teacher.h"

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

/* BOS (from the model config, else the tokenizer) followed by the prompt's ids. */
static int prompt_ids(const sd_teacher *t, const sd_tokenizer *tok, const char *prompt, int32_t **ids, size_t *n,
                      size_t *nbos) {
    int32_t *enc = NULL;
    size_t ne = 0;
    SD_TRY(sd_tokenizer_encode(tok, prompt, strlen(prompt), &enc, &ne));
    int bos = t->cfg.bos_token_id >= 0 ? t->cfg.bos_token_id : sd_tokenizer_bos(tok);
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

/* The decoding loop: prefill the prompt, then one token per step until EOS or the budget. */
static int decode_loop(sd_ctx *ctx, const sd_teacher *t, const sd_tokenizer *tok, sd_sampler *smp, int32_t *seq,
                       size_t nprompt, size_t skip, size_t total, sd_kv_cache *cache) {
    int V = t->cfg.vocab_size, eos = t->cfg.eos_token_id >= 0 ? t->cfg.eos_token_id : sd_tokenizer_eos(tok);
    size_t n = nprompt, printed = 0; /* the first `skip` ids (BOS) are not printed */
    sd_tensor logits = {0}, step = {0};
    int rc = sd_tensor_f32(&logits, 3, 1, (int64_t)nprompt, V, 0);
    if (rc == SD_OK) rc = sd_tensor_f32(&step, 3, 1, 1, V, 0);
    int64_t shape[2] = {1, (int64_t)nprompt};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape);
    double t0 = now_s();
    if (rc == SD_OK) rc = sd_teacher_forward(ctx, t, &ids, cache, &logits, NULL);
    if (rc == SD_OK) rc = print_new_text(tok, seq + skip, n - skip, &printed, 0);
    const float *last = logits.data ? (const float *)logits.data + (nprompt - 1) * (size_t)V : NULL;
    double t1 = now_s();
    while (rc == SD_OK && n < total) {
        int next = sd_sample(smp, last);
        if (next == eos) break;
        seq[n++] = next;
        rc = print_new_text(tok, seq + skip, n - skip, &printed, 0);
        if (rc != SD_OK || n == total) break;
        int64_t one[2] = {1, 1};
        ids = sd_tensor_view(SD_I32, seq + n - 1, 2, one);
        rc = sd_teacher_forward(ctx, t, &ids, cache, &step, NULL);
        last = step.data;
    }
    if (rc == SD_OK) rc = print_new_text(tok, seq + skip, n - skip, &printed, 1);
    double t2 = now_s();
    printf("\n");
    if (rc == SD_OK)
        fprintf(stderr, "prompt %zu tokens in %.3f s; generated %zu tokens at %.1f tokens/s\n", nprompt, t1 - t0,
                n - nprompt, (n - nprompt) / (t2 - t1 > 0 ? t2 - t1 : 1e-9));
    sd_tensor_free(&logits);
    sd_tensor_free(&step);
    return rc;
}

static int generate(const gen_args *a, const sd_teacher *t, const sd_tokenizer *tok) {
    int32_t *prompt = NULL, *seq = NULL;
    size_t np = 0, nbos = 0;
    SD_TRY(prompt_ids(t, tok, a->prompt, &prompt, &np, &nbos));
    size_t total = np + (size_t)a->tokens, limit = (size_t)t->cfg.max_position_embeddings;
    if (limit > 0 && total > limit) total = limit; /* the teacher never saw positions past this */
    int rc = np > total ? sd_fail(SD_ERR_INPUT, "--prompt: %zu tokens exceed the model's %zu positions", np, total)
                        : SD_OK;
    sd_kv_cache cache = {0};
    sd_sampler smp = {0};
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    if (rc == SD_OK && !(seq = sd_malloc(total * sizeof(int32_t), "sequence"))) rc = SD_ERR_SYS;
    if (rc == SD_OK) rc = sd_kv_cache_init(&cache, &t->cfg, (int)total);
    if (rc == SD_OK)
        rc = sd_sampler_init(&smp, t->cfg.vocab_size, a->greedy, (float)a->temperature, (float)a->top_p,
                             (uint64_t)a->seed);
    if (rc == SD_OK) {
        memcpy(seq, prompt, np * sizeof(int32_t));
        rc = decode_loop(&ctx, t, tok, &smp, seq, np, nbos, total, &cache);
    }
    sd_sampler_free(&smp);
    sd_kv_cache_free(&cache);
    free(seq);
    free(prompt);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    gen_args a;
    SD_TRY(parse_args(argc, argv, &a));
    sd_tokenizer *tok = NULL;
    SD_TRY(sd_tokenizer_load(a.tokenizer, &tok));
    sd_teacher t;
    int rc = sd_teacher_load(&t, a.model);
    if (rc == SD_OK) {
        if (sd_tokenizer_vocab_size(tok) > t.cfg.vocab_size)
            rc = sd_fail(SD_ERR_INPUT, "%s: tokenizer has %d tokens but the model %s only %d", a.tokenizer,
                         sd_tokenizer_vocab_size(tok), a.model, t.cfg.vocab_size);
        if (rc == SD_OK) rc = generate(&a, &t, tok);
        sd_teacher_free(&t);
    }
    sd_tokenizer_free(tok);
    return rc;
}
