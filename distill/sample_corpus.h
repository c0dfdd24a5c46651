/* A corpus sampled from the teacher (DESIGN.md section 7, `sample`): documents start from BOS
 * (from EOS for a teacher without BOS, such as Qwen2) and end at EOS or when they fill
 * seq_len positions (the start token included); each document is followed by the EOS id in
 * the output, as in the shards `tokenize` writes (the start token is not kept).
 *
 * Fast on a few CPU cores for small teachers: `batch` documents decode in lockstep, one
 * token each per step, each at its own position, through a batched KV cache of its own
 * (the projections and the MLP run as [batch, d] matrix products; rotary, attention and
 * sampling are per sequence, from a precomputed cos/sin table); every buffer is allocated
 * once.  A slot whose document ends starts the next one at position 0 at the next step.
 *
 * Threads do not share steps: each samples its own share of the corpus (its documents, its
 * decoder with batch / threads sequences), and the shares are joined in thread order; each
 * share ends with EOS (its last document cut short if needed).
 *
 * Deterministic: every document draws from its own RNG seeded by (seed, document index),
 * and documents are written in the order they finish (fixed for a given batch and thread
 * count; the thread count also decides which documents each share holds). */
#ifndef SD_SAMPLE_CORPUS_H
#define SD_SAMPLE_CORPUS_H

#include <stdint.h>

#include "distill/teacher.h"

typedef struct {
    int64_t tokens;    /* tokens to write, EOS separators included */
    int seq_len;       /* positions per document, BOS included (<= max_position_embeddings) */
    float temperature; /* > 0 */
    float top_p;       /* (0, 1] */
    uint64_t seed;
    int batch;         /* documents decoded at once, over all threads; <= 0: 16 per thread (the
                          KV caches of a thread's batch then stay in its L2 for small teachers) */
} sd_sample_options;

typedef struct {
    int64_t tokens;    /* written */
    int64_t documents; /* documents written, each followed by EOS (the last of a thread's share may be cut) */
    int64_t generated; /* tokens the teacher produced, including discarded unfinished ones */
    double seconds;     /* wall clock */
    double cpu_seconds; /* CPU time of the process over the same span (all threads) */
} sd_sample_stats;

/* *out: malloc'ed, opt->tokens ids. */
int sd_sample_corpus(sd_ctx *ctx, const sd_teacher *t, const sd_sample_options *opt, uint32_t **out,
                     sd_sample_stats *stats);
/* sd_sample_corpus written to a token shard at path (atomically: path.tmp then rename). */
int sd_sample_corpus_to_shard(sd_ctx *ctx, const sd_teacher *t, const sd_sample_options *opt, const char *path,
                              sd_sample_stats *stats);

#endif
