/* ssdistill sample --teacher T --out shard.bin --tokens N [--seq-len 256] [--temperature 1.0]
 *                  [--top-p 1.0] [--seed 1] [--batch B]
 * A corpus sampled from the teacher from BOS, documents separated by EOS, written as a token
 * shard (distill/sample_corpus.h); the throughput on stderr.  --batch: sequences decoded at once
 * over all threads (default 16 per thread). */
#include "common/error.h"
#include "distill/commands.h"
#include "distill/sample_corpus.h"

#include <stdio.h>

static int parse_args(int argc, char **argv, const char **teacher, const char **out, sd_sample_options *o) {
    static const char *const with_value[] = {"--teacher", "--model", "--out", "--tokens", "--seq-len",
                                             "--temperature", "--top-p", "--seed", "--batch", NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, NULL));
    *teacher = sd_arg_value(argc, argv, "--teacher");
    if (!*teacher) *teacher = sd_arg_value(argc, argv, "--model"); /* DESIGN.md section 7 spells it --model */
    *out = sd_arg_value(argc, argv, "--out");
    long tokens, seq, seed, batch;
    double temp, top_p;
    if (!*teacher || !*out || !sd_arg_value(argc, argv, "--tokens") || sd_arg_positional(argc, argv, with_value, 0))
        return sd_fail(SD_ERR_INPUT, "usage: ssdistill sample --teacher T --out shard.bin --tokens N [--seq-len 256] "
                                     "[--temperature 1.0] [--top-p 1.0] [--seed 1] [--batch B]");
    SD_TRY(sd_arg_int(argc, argv, "--tokens", 0, &tokens));
    SD_TRY(sd_arg_int(argc, argv, "--seq-len", 256, &seq));
    SD_TRY(sd_arg_int(argc, argv, "--seed", 1, &seed));
    SD_TRY(sd_arg_int(argc, argv, "--batch", 0, &batch));
    SD_TRY(sd_arg_double(argc, argv, "--temperature", 1.0, &temp));
    SD_TRY(sd_arg_double(argc, argv, "--top-p", 1.0, &top_p));
    if (seq < 2 || seq > (1 << 20)) return sd_fail(SD_ERR_INPUT, "--seq-len: must be in 2..2^20, got %ld", seq);
    if (batch < 0 || batch > 65536) return sd_fail(SD_ERR_INPUT, "--batch: must be in 1..65536, got %ld", batch);
    *o = (sd_sample_options){.tokens = tokens, .seq_len = (int)seq, .temperature = (float)temp,
                             .top_p = (float)top_p, .seed = (uint64_t)seed, .batch = (int)batch};
    return SD_OK;
}

int cmd_sample(int argc, char **argv) {
    const char *path, *out;
    sd_sample_options o;
    SD_TRY(parse_args(argc, argv, &path, &out, &o));
    sd_teacher t;
    SD_TRY(sd_teacher_load(&t, path));
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    sd_sample_stats st;
    int rc = sd_sample_corpus_to_shard(&ctx, &t, &o, out, &st);
    if (rc == SD_OK)
        fprintf(stderr, "sample: %lld tokens (%lld documents) in %.3f s: %.0f tokens/s with %d threads "
                "(%.0f tokens per CPU second)\n", (long long)st.tokens, (long long)st.documents, st.seconds,
                st.generated / (st.seconds > 0 ? st.seconds : 1e-9), ctx.nthreads,
                st.generated / (st.cpu_seconds > 0 ? st.cpu_seconds : 1e-9));
    sd_teacher_free(&t);
    return rc;
}
