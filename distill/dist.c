/* Data parallelism across processes (distill/dist.h). */
#include "distill/dist.h"
#include "common/error.h"
#include "common/fileio.h"
#include "kernels/cuda/nccl_cuda.h"
#include "kernels/optim.h"
#include "kernels/tensor_ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The first of the variables that is set, parsed as an integer in [lo, hi]; def when none is. */
static int env_int(const char *const *names, int def, int lo, int hi, int *out) {
    for (int i = 0; names[i]; i++) {
        const char *v = getenv(names[i]);
        if (!v || !*v) continue;
        char *end;
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || *end || x < lo || x > hi)
            return sd_fail(SD_ERR_INPUT, "environment variable %s: '%s' is not a number in %d..%d", names[i], v, lo, hi);
        *out = (int)x;
        return SD_OK;
    }
    *out = def;
    return SD_OK;
}

int sd_dist_from_env(sd_dist *d) {
    memset(d, 0, sizeof *d);
    static const char *const world[] = {"WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", NULL};
    static const char *const rank[] = {"RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", NULL};
    static const char *const local[] = {"LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", NULL};
    SD_TRY(env_int(world, 1, 1, 1 << 20, &d->world));
    SD_TRY(env_int(rank, 0, 0, d->world - 1, &d->rank));
    return env_int(local, d->rank, 0, 1 << 20, &d->local_rank);
}

int sd_dist_wanted(const sd_dist *d) {
    const char *v = getenv("SSDISTILL_DIST");
    return d->world > 1 || (v && strcmp(v, "1") == 0);
}

/* Rank 0: the id into path (temporary name, renamed: a reader never sees half of it). */
static int write_id(const char *path, const unsigned char *id) {
    sd_atomic_file af;
    SD_TRY(sd_atomic_open(&af, path));
    int rc = sd_atomic_write(&af, id, SD_NCCL_ID_BYTES);
    if (rc == SD_OK) return sd_atomic_commit(&af);
    sd_atomic_abort(&af);
    return rc;
}

/* The other ranks: wait for the file, then read it. */
static int read_id(const char *path, unsigned char *id) {
    for (int tries = 0; tries < 3000; tries++) { /* 300 s */
        if (sd_file_exists(path)) {
            char *data;
            size_t len;
            SD_TRY(sd_read_file(path, &data, &len));
            int ok = len == SD_NCCL_ID_BYTES;
            if (ok) memcpy(id, data, SD_NCCL_ID_BYTES);
            free(data);
            if (ok) return SD_OK;
            return sd_fail(SD_ERR_INPUT, "%s: %zu bytes, expected an NCCL unique id of %d", path, len,
                           SD_NCCL_ID_BYTES);
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return sd_fail(SD_ERR_SYS, "%s: rank 0 did not write the NCCL id within 300 s", path);
}

int sd_dist_init(sd_dist *d, sd_ctx *ctx, const char *id_path) {
    if (ctx->backend != SD_DEV_CUDA)
        return sd_fail(SD_ERR_INPUT, "%d ranks: data parallelism runs on GPUs (device cuda), one per rank", d->world);
    if (!sd_nccl_available()) return sd_fail(SD_ERR_INPUT, "%d ranks: this build has no NCCL", d->world);
    unsigned char id[SD_NCCL_ID_BYTES];
    if (d->rank == 0) {
        SD_TRY(sd_nccl_unique_id(id));
        SD_TRY(write_id(id_path, id));
    } else {
        SD_TRY(read_id(id_path, id));
    }
    SD_TRY(sd_nccl_init(&d->comm, id, d->rank, d->world));
    d->active = 1;
    /* every rank has joined once this sum returns: the id file has served */
    float one = 1.0f;
    SD_TRY(sd_dist_mean_host(d, ctx, &one, 1));
    if (d->rank == 0) unlink(id_path);
    return SD_OK;
}

int sd_dist_mean_grads(sd_dist *d, sd_ctx *ctx, sd_weights *grads) {
    if (!d->active) return SD_OK; /* one active rank still goes through NCCL: the path under test */
    SD_TRY(sd_nccl_group_begin());
    int rc = SD_OK;
    for (int i = 0; rc == SD_OK && i < grads->n; i++) {
        sd_tensor *g = &grads->items[i].t;
        rc = sd_nccl_allreduce_sum(d->comm, ctx, (float *)g->data, (size_t)sd_numel(g));
    }
    int rc2 = sd_nccl_group_end();
    SD_TRY(rc);
    SD_TRY(rc2);
    for (int i = 0; i < grads->n; i++) SD_TRY(sd_scale(ctx, &grads->items[i].t, 1.0f / (float)d->world));
    return SD_OK;
}

int sd_dist_mean_host(sd_dist *d, sd_ctx *ctx, float *v, int n) {
    if (!d->active || n <= 0) return SD_OK;
    sd_tensor t, h;
    int64_t shape[1] = {n};
    h = sd_tensor_view(SD_F32, v, 1, shape);
    SD_TRY(sd_tensor_from_host(ctx, &t, &h, SD_F32));
    int rc = sd_nccl_allreduce_sum(d->comm, ctx, (float *)t.data, (size_t)n);
    if (rc == SD_OK) rc = sd_tensor_into_host(ctx, &h, &t);
    sd_tensor_free(&t);
    for (int i = 0; rc == SD_OK && i < n; i++) v[i] /= (float)d->world;
    return rc;
}

void sd_dist_free(sd_dist *d) {
    sd_nccl_free(d->comm);
    d->comm = NULL;
    d->active = 0;
}
