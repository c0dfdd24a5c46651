/* Model weights on the context's backend (DESIGN.md section 3, precision on CUDA): the
 * matrices GEMMs read (every 2-D tensor: projections, embeddings, lm_head) in BF16, the rest
 * (norm weights, biases, D, A_log, conv1d) in F32.  Training keeps F32 master copies of every
 * tensor, which AdamW updates; the BF16 matrices are recast from them after each step.
 * On a CPU context everything stays F32 and no copy is made (the model's own set serves). */
#ifndef SD_DEVICE_WEIGHTS_H
#define SD_DEVICE_WEIGHTS_H

#include "convert/weights.h"
#include "kernels/context.h"

/* 1 for a tensor that a GEMM reads (kept in BF16 on CUDA). */
int sd_weight_is_matrix(const sd_tensor *t);

/* dev = host on ctx's backend for inference: matrices BF16, the rest F32 (owning copies).
 * CPU context: SD_ERR_INTERNAL (use host as is). */
int sd_weights_to_ctx(sd_ctx *ctx, const sd_weights *host, sd_weights *dev);

/* Replaces the host set *w by its copy on ctx's backend (as sd_weights_to_ctx); nothing to
 * do on a CPU context.  Views into the old set (a model's wiring) must be made again. */
int sd_weights_move_to_ctx(sd_ctx *ctx, sd_weights *w);

/* Training on ctx's backend: master = F32 copies of every host tensor (owning), compute = BF16
 * copies of the matrices and non-owning views of master for everything else.  Same names
 * and order as host. */
int sd_weights_mixed(sd_ctx *ctx, const sd_weights *host, sd_weights *master, sd_weights *compute);

/* compute's BF16 matrices = master's values again (after the optimizer changed master). */
int sd_weights_refresh(sd_ctx *ctx, sd_weights *compute, const sd_weights *master);

/* host = F32 host copies of every tensor of src (on ctx's backend). */
int sd_weights_to_host(sd_ctx *ctx, const sd_weights *src, sd_weights *host);

#endif
