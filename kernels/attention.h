/* Causal softmax attention with grouped-query heads.
 * CUDA forward (kernels/cuda/attention_cuda.h): q, k, v, out BF16 (or F32, run as bf16), hd
 * up to 128 (the kernel takes 64 or 128: other head dims are padded inside with zero columns,
 * which changes nothing), lse F32 or NULL, probs NULL.
 * CUDA backward (kernels/cuda/attention_bwd_cuda.cu): q, k, v, dout, dq, dk, dv F32 or BF16
 * each (fp32 math), hd up to 256, probs NULL (recomputed); deterministic (no atomics), on CUDA
 * cores: meant for the few attention layers of a hybrid student, not the hot path. */
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

/* Backward convention (all ops): every sd_*_backward ADDS into its gradient outputs
 * (dx += ..., dw += ...), as llm.c, so that residual branches and gradient accumulation sum
 * naturally; the caller zeroes them.  Any gradient output may be NULL to skip it. */

/* Gradients of sd_attention given dout [B, T, Hq, hd]: dq += ..., dk, dv += ... ([B, S,
 * Hkv, hd]; a kv head's gradient sums over the query heads of its group).  probs: the
 * forward's [B, Hq, T, S] probabilities, or NULL to recompute them from q and k. */
int sd_attention_backward(sd_ctx *ctx, sd_tensor *dq, sd_tensor *dk, sd_tensor *dv,
                          const sd_tensor *dout, const sd_tensor *q, const sd_tensor *k,
                          const sd_tensor *v, float scale, const sd_tensor *probs);

#endif
