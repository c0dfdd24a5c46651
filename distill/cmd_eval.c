/* ssdistill eval --model M [--teacher T] --data D [--tokenizer J] [--seq-len 256] [--tokens N]
 *                [--batch 8] [--out F.json]
 * Prints one JSON object {"model", "data", "tokens", "ppl", "teacher_ppl", "kl", "top1"} on
 * stdout (and writes it atomically to --out), the throughput on stderr.  eval/eval.h. */
#include "common/error.h"
#include "common/fileio.h"
#include "distill/commands.h"
#include "eval/eval.h"
#include "kernels/cuda/cuda_ctx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *model, *teacher, *data, *tokenizer, *out, *device;
    sd_eval_options opt;
} eval_args;

static int parse_args(int argc, char **argv, eval_args *a) {
    static const char *const with_value[] = {"--model", "--teacher", "--data", "--tokenizer", "--seq-len",
                                             "--tokens", "--batch", "--out", "--device", NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, NULL));
    a->model = sd_arg_value(argc, argv, "--model");
    a->teacher = sd_arg_value(argc, argv, "--teacher");
    a->data = sd_arg_value(argc, argv, "--data");
    a->tokenizer = sd_arg_value(argc, argv, "--tokenizer");
    a->out = sd_arg_value(argc, argv, "--out");
    a->device = sd_arg_value(argc, argv, "--device");
    if (!a->model || !a->data || sd_arg_positional(argc, argv, with_value, 0))
        return sd_fail(SD_ERR_INPUT, "usage: ssdistill eval --model M [--teacher T] --data D [--tokenizer J] "
                                     "[--seq-len 256] [--tokens N] [--batch 8] [--out F.json] [--device cpu|cuda]");
    long seq, tokens, batch;
    SD_TRY(sd_arg_int(argc, argv, "--seq-len", 256, &seq));
    SD_TRY(sd_arg_int(argc, argv, "--tokens", 0, &tokens));
    SD_TRY(sd_arg_int(argc, argv, "--batch", 8, &batch));
    if (seq < 2 || seq > (1 << 20)) return sd_fail(SD_ERR_INPUT, "--seq-len: must be in 2..2^20, got %ld", seq);
    if (batch < 1 || batch > 4096) return sd_fail(SD_ERR_INPUT, "--batch: must be in 1..4096, got %ld", batch);
    if (tokens < 0) return sd_fail(SD_ERR_INPUT, "--tokens: must be >= 0 (0: all), got %ld", tokens);
    a->opt = (sd_eval_options){.seq_len = (int)seq, .batch = (int)batch, .max_tokens = tokens};
    return SD_OK;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int write_json(const char *path, const char *json) {
    sd_atomic_file af;
    SD_TRY(sd_atomic_open(&af, path));
    int rc = sd_atomic_write(&af, json, strlen(json));
    if (rc == SD_OK) rc = sd_atomic_write(&af, "\n", 1);
    if (rc == SD_OK) return sd_atomic_commit(&af);
    sd_atomic_abort(&af);
    return rc;
}

static int run_eval(sd_ctx *ctx, const eval_args *a, const sd_lm *model, const sd_lm *teacher) {
    int32_t *tokens = NULL;
    int64_t n = 0;
    SD_TRY(sd_eval_load_data(a->data, a->tokenizer, a->model, &model->cfg, a->opt.max_tokens, &tokens, &n));
    sd_eval_result r;
    double t0 = now_s();
    int rc = sd_eval_tokens(ctx, model, teacher, tokens, n, &a->opt, &r);
    double dt = now_s() - t0;
    free(tokens);
    char *json = rc == SD_OK ? sd_eval_result_json(&r, a->model, a->data) : NULL;
    if (rc == SD_OK && !json) rc = SD_ERR_SYS;
    if (rc == SD_OK) {
        printf("%s\n", json);
        fflush(stdout);
        fprintf(stderr, "eval: %lld tokens in %lld windows, %.3f s (%.0f tokens/s)\n", (long long)r.tokens,
                (long long)r.windows, dt, r.tokens / (dt > 0 ? dt : 1e-9));
    }
    if (rc == SD_OK && a->out) rc = write_json(a->out, json);
    free(json);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    eval_args a;
    SD_TRY(parse_args(argc, argv, &a));
    sd_lm model, teacher;
    memset(&teacher, 0, sizeof teacher);
    sd_ctx ctx;
    SD_TRY(sd_args_ctx(a.device, 0, &ctx));
    int rc = sd_lm_load(&model, a.model);
    if (rc != SD_OK) goto done;
    rc = a.teacher ? sd_lm_load(&teacher, a.teacher) : SD_OK;
    if (rc == SD_OK) rc = sd_lm_to_ctx(&ctx, &model);
    if (rc == SD_OK && a.teacher) rc = sd_lm_to_ctx(&ctx, &teacher);
    if (rc == SD_OK) rc = run_eval(&ctx, &a, &model, a.teacher ? &teacher : NULL);
    if (a.teacher) sd_lm_free(&teacher);
    sd_lm_free(&model);
done:
#ifdef SD_HAVE_CUDA
    sd_ctx_free_cuda(&ctx);
#endif
    return rc;
}
