/* Data parallelism across processes, one GPU each (issue 6): the ranks come from the
 * launcher's environment (torchrun / SLURM / mpirun style), the NCCL unique id travels through
 * a file every rank can read, and a training step averages the ranks' gradients and losses.
 * Every rank holds the whole student and the whole teacher (replicated) and sees its own slice
 * of each global batch; the gradients are averaged and AdamW's moments sharded over the ranks
 * (ZeRO-1, distill/zero.h), so that the parameters stay identical on every rank. */
#ifndef SD_DIST_H
#define SD_DIST_H

#include "convert/weights.h"
#include "distill/student.h"
#include "distill/zero.h"
#include "kernels/context.h"

typedef struct {
    int rank, world, local_rank;
    int active; /* 1 once a communicator exists (world 1 with SSDISTILL_DIST=1, or world > 1) */
    void *comm;
    sd_ctx *hook_ctx; /* what the gradient set's hook reduces (sd_dist_zero_begin) */
    struct sd_zero_opt *hook_zero;
} sd_dist;

/* WORLD_SIZE, RANK and LOCAL_RANK (defaults 1, 0 and RANK; SLURM_NTASKS / SLURM_PROCID /
 * SLURM_LOCALID and OMPI_COMM_WORLD_* are read when the first are absent).  SD_ERR_INPUT
 * naming the variable for a value that is not a number or out of range. */
int sd_dist_from_env(sd_dist *d);

/* 1 when this process should join a communicator: world > 1, or SSDISTILL_DIST=1 (a
 * one-rank run of the multi-GPU path). */
int sd_dist_wanted(const sd_dist *d);

/* Joins the communicator on ctx's GPU.  The unique id goes from rank 0 to the others over TCP
 * when SSDISTILL_NCCL_ADDR is set (host:port of rank 0; distill/rendezvous.h), else through
 * the file id_path: rank 0 writes it (under a temporary name, then renamed) headed by a token
 * of this launch (SSDISTILL_RUN_ID, TORCHELASTIC_RUN_ID or SLURM_JOB_ID.SLURM_STEP_ID) so that a
 * stale file from an earlier launch is not read; the other ranks wait for it (up to 300 s)
 * and rank 0 removes it once every rank has joined. */
int sd_dist_init(sd_dist *d, sd_ctx *ctx, const char *id_path);
/* The id file of sd_dist_init: written by rank 0; read by the others, waiting up to timeout_s
 * for one of this launch (SD_ERR_SYS naming path after that; SD_ERR_INPUT for a file that is
 * not an id file). */
int sd_dist_id_write(const char *path, const unsigned char *id);
int sd_dist_id_read(const char *path, unsigned char *id, int timeout_s);

/* v[0..n) = their mean (sum) over the ranks (small host vectors: losses). */
int sd_dist_mean_host(sd_dist *d, sd_ctx *ctx, float *v, int n);
int sd_dist_sum_host(sd_dist *d, sd_ctx *ctx, float *v, int n);
int sd_dist_sum_host_f64(sd_dist *d, sd_ctx *ctx, double *v, int n);
/* t (F32, on ctx's GPU) = root's t. */
int sd_dist_broadcast(sd_dist *d, sd_ctx *ctx, sd_tensor *t, int root);

/* ZeRO-1 (distill/zero.h) over NCCL for the student's parameters params (F32 masters, a
 * subset of s's): buckets of SSDISTILL_BUCKET_MB MiB (default 64), cfg NULL the AdamW defaults;
 * the gradient set *g is made again (sd_student_grads_init_in) with params' gradients as views
 * of z's flat buffer, and its hook reduces each bucket once the backward has finished it.  On
 * failure z and *g are left empty. */
int sd_dist_zero_begin(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, const sd_student *s, sd_student *g,
                       const sd_weights *params, const sd_adamw_config *cfg);

/* During the backward: issues the reduce-scatter of every bucket ready at `event` and not
 * issued yet, on the communicator's own stream, so that it overlaps the backward's remaining
 * kernels.  No other collective may be issued between a step's first sd_dist_zero_ready and
 * its sd_dist_zero_step (which waits for them): one communicator's collectives must not
 * overlap, and every rank must issue them in the same order. */
int sd_dist_zero_ready(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, int event);
/* The rest of the step: the remaining buckets, the global gradient norm (summed over the
 * ranks: a NaN or Inf anywhere is refused on every rank before anything changes; *grad_norm
 * is the norm before clipping), clipping, AdamW on this rank's slices, the all-gather of the
 * updated masters into every rank's params. */
int sd_dist_zero_step(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, sd_weights *params, float lr, float clip,
                      double *grad_norm);
/* host_m, host_v (empty sets) = the whole moments, by parameter name, on rank 0 (a
 * collective: every rank calls it; the others' sets stay empty). */
int sd_dist_zero_moments(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, const sd_weights *params, sd_weights *host_m,
                         sd_weights *host_v);

void sd_dist_free(sd_dist *d);

#endif
