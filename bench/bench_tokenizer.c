/* Single-thread tokenizer throughput: tok512 and gpt2 over the TinyStories dev text and
 * WikiText-2 validation, documents split at blank lines as `ssdistill tokenize` does.
 * Usage: bench_tokenizer [DATA_DIR]  (default $SSDISTILL_DATA, then ../shared/data).
 * Prints one JSON object per (tokenizer, file). */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Encodes every blank-line separated document; returns the token count. */
static long long encode_all(const sd_tokenizer *tok, const char *s, size_t len) {
    long long total = 0;
    size_t i = 0;
    while (i < len) {
        const char *sep = strstr(s + i, "\n\n");
        size_t e = sep ? (size_t)(sep - s) : len;
        int32_t *ids;
        size_t n;
        if (e > i) {
            if (sd_tokenizer_encode(tok, s + i, e - i, &ids, &n) != SD_OK) {
                fprintf(stderr, "bench_tokenizer: %s\n", sd_errmsg());
                exit(2);
            }
            total += (long long)n;
            free(ids);
        }
        i = e + 2;
    }
    return total;
}

int main(int argc, char **argv) {
    const char *data = argc > 1 ? argv[1] : getenv("SSDISTILL_DATA");
    if (!data || !*data) data = "../shared/data";
    const char *toks[] = {"tok512", "gpt2"};
    const char *files[] = {"text/tinystories_val_dev.txt", "text/wikitext2_valid.txt"};
    for (int t = 0; t < 2; t++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizers/%s/tokenizer.json", data, toks[t]);
        sd_tokenizer *tok;
        if (sd_tokenizer_load(path, &tok) != SD_OK) {
            fprintf(stderr, "bench_tokenizer: %s\n", sd_errmsg());
            return 2;
        }
        for (int f = 0; f < 2; f++) {
            snprintf(path, sizeof path, "%s/%s", data, files[f]);
            char *text;
            size_t len;
            if (sd_read_file(path, &text, &len) != SD_OK) {
                fprintf(stderr, "bench_tokenizer: %s\n", sd_errmsg());
                return 2;
            }
            /* best of 3 runs; the first also warms gpt2's word cache, as a long corpus would */
            double best = 1e30;
            long long ntok = 0;
            for (int r = 0; r < 3; r++) {
                double t0 = now_s();
                ntok = encode_all(tok, text, len);
                double dt = now_s() - t0;
                if (dt < best) best = dt;
            }
            double mb = (double)len / 1e6;
            printf("{\"tokenizer\": \"%s\", \"file\": \"%s\", \"mb\": %.3f, \"seconds\": %.4f, \"mb_per_s\": %.2f, \"tokens\": %lld}\n",
                   toks[t], files[f], mb, best, mb / best, ntok);
            free(text);
        }
        sd_tokenizer_free(tok);
    }
    return 0;
}
