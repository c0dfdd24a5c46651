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
/* Groups the collectives issued between begin and end into one launch (ncclGroupStart/End). */
int sd_nccl_group_begin(void);
int sd_nccl_group_end(void);
void sd_nccl_free(void *comm);

#ifdef __cplusplus
}
#endif

#endif
