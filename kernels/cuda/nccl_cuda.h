/* NCCL for data parallelism (issue 6; DESIGN.md section 3): the few collectives the trainer
 * needs, on the CUDA context's stream, behind a C interface.  distill/dist.h builds the
 * launcher-facing part (ranks from the environment, the unique id through a shared file). */
#ifndef SD_NCCL_CUDA_H
#define SD_NCCL_CUDA_H

#include <stddef.h>

#include "kernels/context.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SD_NCCL_ID_BYTES 128

/* 1 when the build links NCCL. */
int sd_nccl_available(void);
/* A fresh unique id (rank 0 makes it, every rank passes it to sd_nccl_init). */
int sd_nccl_unique_id(unsigned char id[SD_NCCL_ID_BYTES]);
/* Joins the communicator of `world` ranks as `rank` (the context's device). */
int sd_nccl_init(void **comm, const unsigned char id[SD_NCCL_ID_BYTES], int rank, int world);
/* In place, on ctx's stream: buf[0..n) = the sum over ranks (F32). */
int sd_nccl_allreduce_sum(void *comm, sd_ctx *ctx, float *buf, size_t n);

/* v[0..n) (host doubles) = their sum over the ranks (through ctx's stream; synchronises).
 * Gradient norms are summed in double, as one process sums them (distill/optimizer.h). */
int sd_nccl_allreduce_sum_host_f64(void *comm, sd_ctx *ctx, double *v, int n);

/* ZeRO-1 (distill/zero.h) works bucket by bucket on a flat F32 buffer of world * shard
 * elements; rank r owns buf[r * shard, (r + 1) * shard).  Both collectives are in place.
 * side 1 issues them on the communicator's own stream, so that they overlap the kernels still
 * running on ctx's stream (sd_nccl_side_begin orders them after what ctx has issued so far,
 * sd_nccl_side_join makes ctx wait for them); side 0 issues them on ctx's stream. */
/* buf[r * shard ...] = the mean over ranks of that slice of every rank's buf. */
int sd_nccl_reduce_scatter_mean(void *comm, sd_ctx *ctx, float *buf, size_t shard, int rank, int side);
/* every rank's buf = the concatenation of the ranks' own slices. */
int sd_nccl_all_gather(void *comm, sd_ctx *ctx, float *buf, size_t shard, int rank, int side);
/* recv[0 .. world * shard) = the ranks' send[0 .. shard), in rank order (ctx's stream). */
int sd_nccl_gather_all(void *comm, sd_ctx *ctx, const float *send, float *recv, size_t shard);
/* buf[0..n) = root's buf (ctx's stream). */
int sd_nccl_broadcast(void *comm, sd_ctx *ctx, float *buf, size_t n, int root);
int sd_nccl_side_begin(void *comm, sd_ctx *ctx);
int sd_nccl_side_join(void *comm, sd_ctx *ctx);
/* Groups the collectives issued between begin and end into one launch (ncclGroupStart/End). */
int sd_nccl_group_begin(void);
int sd_nccl_group_end(void);
void sd_nccl_free(void *comm);

#ifdef __cplusplus
}
#endif

#endif
