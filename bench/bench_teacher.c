/* Teacher forward throughput on the CPU backend: tokens/s for one sequence of T tokens
 * (prefill, logits for every position) and for KV-cache decoding, at 1 and 2 threads.
 * usage: bench_teacher [MODEL] [T]   (default: $SSDISTILL_DATA/llama2c-stories260K/stories260K.bin, 256)
 * Prints one JSON object per line. A benchmark, never a test. */
#include "common/error.h"
#include "distill/teacher.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best of `reps` timings of a full forward over T tokens. */
static int time_prefill(sd_ctx *ctx, const sd_teacher *t, const sd_tensor *ids, sd_tensor *logits, int reps,
                        double *best) {
    *best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        SD_TRY(sd_teacher_forward(ctx, t, ids, NULL, logits, NULL));
        double dt = now_s() - t0;
        if (dt < *best) *best = dt;
    }
    return SD_OK;
}

/* One token at a time through the KV cache, T tokens. */
static int time_decode(sd_ctx *ctx, const sd_teacher *t, int32_t *seq, int T, double *secs) {
    sd_kv_cache cache;
    sd_tensor logits;
    SD_TRY(sd_kv_cache_init(&cache, &t->cfg, T));
    int rc = sd_tensor_f32(&logits, 3, 1, 1, t->cfg.vocab_size, 0);
    double t0 = now_s();
    for (int i = 0; rc == SD_OK && i < T; i++) {
        int64_t one[2] = {1, 1};
        sd_tensor id = sd_tensor_view(SD_I32, seq + i, 2, one);
        rc = sd_teacher_forward(ctx, t, &id, &cache, &logits, NULL);
    }
    *secs = now_s() - t0;
    sd_tensor_free(&logits);
    sd_kv_cache_free(&cache);
    return rc;
}

int main(int argc, char **argv) {
    char def[1024];
    const char *data = getenv("SSDISTILL_DATA") ? getenv("SSDISTILL_DATA") : "../shared/data";
    snprintf(def, sizeof def, "%s/llama2c-stories260K/stories260K.bin", data);
    const char *path = argc > 1 ? argv[1] : def;
    int T = argc > 2 ? atoi(argv[2]) : 256;
    sd_teacher t;
    if (sd_teacher_load(&t, path) != SD_OK) {
        fprintf(stderr, "bench_teacher: %s\n", sd_errmsg());
        return 2;
    }
    if (T < 1 || T > t.cfg.max_position_embeddings) T = t.cfg.max_position_embeddings;
    int32_t *seq = malloc((size_t)T * sizeof *seq);
    sd_tensor logits;
    if (!seq || sd_tensor_f32(&logits, 3, 1, T, t.cfg.vocab_size, 0) != SD_OK) return 2;
    for (int i = 0; i < T; i++) seq[i] = (int32_t)((i * 2654435761u) % (unsigned)t.cfg.vocab_size);
    int64_t shape[2] = {1, T};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape);
    for (int threads = 1; threads <= 2; threads++) {
        sd_ctx ctx;
        sd_ctx_init_cpu(&ctx, threads);
        double prefill, decode;
        if (time_prefill(&ctx, &t, &ids, &logits, 20, &prefill) != SD_OK ||
            time_decode(&ctx, &t, seq, T, &decode) != SD_OK) {
            fprintf(stderr, "bench_teacher: %s\n", sd_errmsg());
            return 2;
        }
        printf("{\"bench\": \"teacher_forward\", \"model\": \"%s\", \"threads\": %d, \"T\": %d, "
               "\"prefill_tokens_per_s\": %.1f, \"decode_tokens_per_s\": %.1f}\n",
               path, threads, T, T / prefill, T / decode);
    }
    free(seq);
    sd_tensor_free(&logits);
    sd_teacher_free(&t);
    return 0;
}
