/* Token embedding.  CUDA dtypes: table, out, dy F32 or BF16; dtable F32; ids I32 on the
 * device (copied to the host to be checked; the backward sorts them there to sum each id's
 * rows in order, without atomics). */
#ifndef SD_EMBEDDING_H
#define SD_EMBEDDING_H

#include "kernels/context.h"

/* out[..., d] = table[ids[...], :]; ids is I32. An id outside [0, V) is SD_ERR_INPUT
 * naming the id and its position. */
int sd_embedding(sd_ctx *ctx, sd_tensor *out, const sd_tensor *ids, const sd_tensor *table);

/* Backward convention (all ops): every sd_*_backward ADDS into its gradient outputs
 * (dx += ..., dw += ...), as llm.c, so that residual branches and gradient accumulation sum
 * naturally; the caller zeroes them.  Any gradient output may be NULL to skip it. */

/* dtable[ids[i], :] += dy[i, :].  Deterministic (no atomics): each column sums its rows in
 * the order of the ids.  ids are checked as in the forward. */
int sd_embedding_backward(sd_ctx *ctx, sd_tensor *dtable, const sd_tensor *dy,
                          const sd_tensor *ids);

#endif
