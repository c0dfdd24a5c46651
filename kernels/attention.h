/* Causal softmax attention with grouped-query heads. */
#ifndef SD_ATTENTION_H
#define SD_ATTENTION_H

#include "kernels/context.h"

/* q: [B, T, Hq, hd]; k, v: [B, S, Hkv, hd] with S >= T and Hq % Hkv == 0 (query head h
 * reads kv head h / (Hq/Hkv)).  The T queries are the last T positions of the S keys:
 * query t attends keys 0 .. S - T + t (a KV cache holds the first S - T).
 * out: [B, T, Hq, hd].  scale: usually 1/sqrt(hd).
 * probs (optional, NULL to skip): [B, Hq, T, S] softmax probabilities, 0 above the diagonal.
 * lse (optional): [B, Hq, T] natural-log log-sum-exp of the scaled scores of each row. */
int sd_attention(sd_ctx *ctx, sd_tensor *out, const sd_tensor *q, const sd_tensor *k,
                 const sd_tensor *v, float scale, sd_tensor *probs, sd_tensor *lse);

#endif
