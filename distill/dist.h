/* Data parallelism across processes, one GPU each (issue 6): the ranks come from the
 * launcher's environment (torchrun / SLURM / mpirun style), the NCCL unique id travels through
 * a file every rank can read, and a training step averages the ranks' gradients and losses.
 * Every rank holds the whole student and the whole teacher (replicated), sees its own slice
 * of each global batch, and applies the same AdamW step: the parameters stay identical. */
#ifndef SD_DIST_H
#define SD_DIST_H

#include "convert/weights.h"
#include "kernels/context.h"

typedef struct {
    int rank, world, local_rank;
    int active; /* 1 once a communicator exists (world 1 with SSDISTILL_DIST=1, or world > 1) */
    void *comm;
} sd_dist;

/* WORLD_SIZE, RANK and LOCAL_RANK (defaults 1, 0 and RANK; SLURM_NTASKS / SLURM_PROCID /
 * SLURM_LOCALID and OMPI_COMM_WORLD_* are read when the first are absent).  SD_ERR_INPUT
 * naming the variable for a value that is not a number or out of range. */
int sd_dist_from_env(sd_dist *d);

/* 1 when this process should join a communicator: world > 1, or SSDISTILL_DIST=1 (a
 * one-rank run of the multi-GPU path). */
int sd_dist_wanted(const sd_dist *d);

/* Joins the communicator on ctx's GPU: rank 0 makes the unique id and writes it to id_path
 * (under a temporary name, then renamed); the other ranks wait for the file (up to 300 s).
 * After the communicator is up, rank 0 removes the file. */
int sd_dist_init(sd_dist *d, sd_ctx *ctx, const char *id_path);

/* grads (F32, on ctx's GPU) = their mean over the ranks (summed in one NCCL group). */
int sd_dist_mean_grads(sd_dist *d, sd_ctx *ctx, sd_weights *grads);

/* v[0..n) = their mean over the ranks (small host vectors: losses). */
int sd_dist_mean_host(sd_dist *d, sd_ctx *ctx, float *v, int n);

void sd_dist_free(sd_dist *d);

#endif
