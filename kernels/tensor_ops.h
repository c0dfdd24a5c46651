/* Tensors on the context's backend (DESIGN.md section 3): what model code needs to allocate,
 * copy and clear activations without knowing whether they live on the host or the GPU.
 *
 * Activations take the backend's dtype (sd_act_dtype: F32 on the CPU, BF16 on CUDA); tensors
 * the kernels need in fp32 (decays, losses, parameter gradients, logits) are asked for as F32
 * on either backend. */
#ifndef SD_TENSOR_OPS_H
#define SD_TENSOR_OPS_H

#include "kernels/context.h"
#include "kernels/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* F32 on the CPU, BF16 on CUDA: the dtype of activations and of the weights GEMMs read. */
sd_dtype sd_act_dtype(const sd_ctx *ctx);

/* A zeroed tensor of dtype dt on ctx's backend. */
int sd_tensor_new(sd_ctx *ctx, sd_tensor *t, sd_dtype dt, int ndim, const int64_t *shape);
/* The same on an explicit device (for sets that follow another tensor's device). */
int sd_tensor_new_on(sd_device dev, sd_tensor *t, sd_dtype dt, int ndim, const int64_t *shape);
/* Shorthands: an activation (sd_act_dtype) and an F32 tensor on ctx's backend. */
int sd_tensor_act(sd_ctx *ctx, sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
int sd_tensor_new_f32(sd_ctx *ctx, sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3);

/* A non-owning view of base's memory from element offset `offset` with another shape (same
 * dtype and device as base). */
sd_tensor sd_tensor_sub(const sd_tensor *base, int64_t offset, int ndim, const int64_t *shape);

/* dst = src (same element count, both on ctx's backend), converting F32 <-> BF16 (round to
 * nearest even); other dtypes must match.  Asynchronous on CUDA. */
int sd_copy(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src);
/* t = 0 (t on ctx's backend; nothing for a tensor never allocated, data NULL). */
int sd_zero(sd_ctx *ctx, sd_tensor *t);

/* A new tensor of dtype dt on ctx's backend holding the host tensor src (converted). */
int sd_tensor_from_host(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src, sd_dtype dt);
/* Copies src (on ctx's backend) into the existing host tensor dst of the same element count
 * (F32 <-> BF16 converted); synchronises on CUDA. */
int sd_tensor_into_host(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src);

/* Copies the host tensor src into dst on ctx's backend (same element count; F32 <-> BF16
 * converted); synchronous. */
int sd_copy_from_host(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src);
/* *sum = the sum of the F32 tensor t (on ctx's backend) in index order, in double: the same
 * value on every backend for the same data. */
int sd_sum_host(sd_ctx *ctx, const sd_tensor *t, double *sum);

/* *use = src when src is on ctx's backend; else a copy of the host tensor src in *tmp (same
 * dtype; the caller frees tmp, which stays empty in the first case) and *use = tmp.  For
 * inputs such as token ids that callers keep on the host. */
int sd_tensor_on_ctx(sd_ctx *ctx, const sd_tensor *src, sd_tensor *tmp, const sd_tensor **use);

#ifdef __cplusplus
}
#endif

#endif
