/* ZeRO-1 for data parallelism (issue 6; Rajbhandari et al. 2020, "ZeRO", stage 1: the
 * optimizer states partitioned over the data-parallel ranks).
 *
 * The gradients of the trainable parameters live in one flat F32 buffer, cut into buckets in
 * the order the backward finishes them (the head first, the embedding last).  Each bucket is
 * split evenly over the ranks and rank r keeps AdamW moments for its slice of every bucket
 * only (1/world of them).  One step:
 *   1. each bucket is reduce-scattered as soon as its gradients are final: the mean over the
 *      ranks of rank r's slice lands in place, while the rest of the backward still runs;
 *   2. the global gradient norm from the slices (a scalar summed over ranks), then clipping;
 *   3. AdamW on the slice: the parameters' F32 masters, the slice's moments;
 *   4. the updated slices are copied into the flat buffer (the gradients are spent),
 *      all-gathered, and copied back into every rank's masters.
 * This file is the layout and the local arithmetic; distill/dist.c issues the collectives.
 * Keeping NCCL out of it lets the CPU tests run a W-rank step (the collectives done by hand)
 * against plain AdamW (distill/optimizer.h) on the mean gradient. */
#ifndef SD_ZERO_H
#define SD_ZERO_H

#include <stdint.h>

#include "convert/weights.h"
#include "distill/optimizer.h"
#include "kernels/context.h"

/* Elements: every parameter's offset and every slice are multiples (256 bytes, the alignment
 * cuBLASLt and the 8-wide kernels want of the gradient views). */
#define SD_ZERO_ALIGN 64
/* Default bucket size in elements (64 MiB of F32: PyTorch DDP uses 25 MiB, Megatron 40M
 * elements; large enough for NCCL's bandwidth, small enough to overlap). */
#define SD_ZERO_BUCKET_DEFAULT (16 << 20)

typedef struct {
    int64_t off, len; /* elements of the flat buffer; len a multiple of world * SD_ZERO_ALIGN */
    int event;        /* ready once the backward has passed this event (sd_zero_event) */
    int first, count; /* its parameters: order[first .. first + count) */
} sd_zero_bucket;

typedef struct sd_zero_opt {
    int rank, world;
    int n;            /* parameters, in the order of the set given to init */
    int64_t *off;     /* [n]: parameter i's gradient is flat[off[i] .. off[i] + numel) */
    int64_t *numel;   /* [n] */
    int *order;       /* [n]: parameter indices, bucket after bucket */
    char *decays;     /* [n]: 1 where weight decay applies (sd_param_decays) */
    int n_buckets;
    sd_zero_bucket *b;
    int64_t total;    /* elements of flat */
    sd_tensor flat;   /* F32 [total] on ctx's backend */
    sd_tensor m, v;   /* F32 [total / world]: the moments of this rank's slices, bucket after bucket */
    sd_adamw_config cfg;
    int64_t step;     /* steps taken */
    int launched;     /* buckets whose reduction was issued in the step under way */
} sd_zero_opt;

/* When the backward has finished a parameter: 0 for the head and the final norm, num_layers - l
 * for anything of layer l ("layers.{l}." in its name), num_layers + 1 for the embedding
 * (embed_name; tied to the head, it is final only after the embedding's backward). */
int sd_zero_event(const char *name, int num_layers, const char *embed_name);

/* The layout for params (F32 masters on ctx's backend) and events[i] (sd_zero_event), buckets
 * of about bucket_elems (<= 0: SD_ZERO_BUCKET_DEFAULT; a larger parameter gets a bucket of its
 * own), a zeroed flat buffer and this rank's zeroed moments.  cfg NULL: the defaults. */
int sd_zero_init(sd_zero_opt *z, sd_ctx *ctx, const sd_weights *params, const int *events, int rank, int world,
                 int64_t bucket_elems, const sd_adamw_config *cfg);
void sd_zero_free(sd_zero_opt *z);

/* Parameter i's gradient as a view of the flat buffer, with the parameter's shape. */
sd_tensor sd_zero_grad_view(const sd_zero_opt *z, int i, const sd_tensor *param);
/* Rank r's slice of bucket b (F32 [len / world] view of the flat buffer). */
sd_tensor sd_zero_slice(const sd_zero_opt *z, int b, int r);

/* *ss = the sum of squares of this rank's slices (the reduced gradients), in bucket order. */
int sd_zero_sum_squares(sd_zero_opt *z, sd_ctx *ctx, double *ss);
/* This rank's slices *= s (clipping). */
int sd_zero_scale(sd_zero_opt *z, sd_ctx *ctx, float s);
/* AdamW at rate lr on this rank's slices: the parts of params' masters they cover, their
 * moments; step advances.  params: the set given to init. */
int sd_zero_adamw(sd_zero_opt *z, sd_ctx *ctx, sd_weights *params, float lr);
/* Before the all-gather: this rank's slices of the flat buffer = the masters they cover. */
int sd_zero_stage_params(sd_zero_opt *z, sd_ctx *ctx, const sd_weights *params);
/* After it: every master = its range of the flat buffer. */
int sd_zero_unstage_params(sd_zero_opt *z, sd_ctx *ctx, sd_weights *params);

/* Checkpoints hold whole moments by parameter name (distill/run.h), whatever the number of
 * ranks.  Saving: full is bucket b gathered from every rank (F32 [len] on ctx's backend, the
 * ranks' slices in order); the parts of its parameters go into host (host F32 tensors named
 * and shaped as params, made on first use).  Resuming: this rank's slices of m and v = the
 * parts of host_m, host_v they cover (SD_ERR_INPUT naming src and the tensor when one is
 * missing or of another shape). */
int sd_zero_bucket_to_host(const sd_zero_opt *z, sd_ctx *ctx, int b, const sd_tensor *full, const sd_weights *params,
                           sd_weights *host);
int sd_zero_moments_from_host(sd_zero_opt *z, sd_ctx *ctx, const sd_weights *params, const sd_weights *host_m,
                              const sd_weights *host_v, const char *src);

#endif
