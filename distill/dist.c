/* Data parallelism across processes (distill/dist.h). */
#include "distill/dist.h"
#include "distill/rendezvous.h"
#include "distill/student_train.h"
#include "common/error.h"
#include "common/fileio.h"
#include "kernels/cuda/nccl_cuda.h"
#include "kernels/optim.h"
#include "kernels/tensor_ops.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
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

/* The id file starts with a line naming the launch it belongs to, so that a file left by an
 * earlier launch (a crash, a killed job) is never taken for this one's: the first of
 * SSDISTILL_RUN_ID (tools/sdlaunch sets it), TORCHELASTIC_RUN_ID (torchrun) and SLURM_JOB_ID
 * with SLURM_STEP_ID; "-" when none is set (the file is then trusted as found). */
static void launch_token(char *buf, size_t n) {
    const char *v = getenv("SSDISTILL_RUN_ID");
    if (!v || !*v) v = getenv("TORCHELASTIC_RUN_ID");
    const char *job = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    if (v && *v) snprintf(buf, n, "%s", v);
    else if (job && *job) snprintf(buf, n, "slurm-%s.%s", job, step && *step ? step : "0");
    else snprintf(buf, n, "-");
    for (char *c = buf; *c; c++)
        if (*c == '\n' || *c == ' ') *c = '_';
}

#define ID_MAGIC "ssdistill-nccl-id "

/* Rank 0: the token line and the id into path (temporary name, renamed: a reader never sees
 * half of it). */
int sd_dist_id_write(const char *path, const unsigned char *id) {
    char head[300], tok[256];
    launch_token(tok, sizeof tok);
    int hn = snprintf(head, sizeof head, ID_MAGIC "%s\n", tok);
    sd_atomic_file af;
    SD_TRY(sd_atomic_open(&af, path));
    int rc = sd_atomic_write(&af, head, (size_t)hn);
    if (rc == SD_OK) rc = sd_atomic_write(&af, id, SD_NCCL_ID_BYTES);
    if (rc == SD_OK) return sd_atomic_commit(&af);
    sd_atomic_abort(&af);
    return rc;
}

/* 1 and the id when data is this launch's id file, 0 when it is another launch's. */
static int parse_id(const char *path, const char *data, size_t len, unsigned char *id, int *mine) {
    char tok[256], want[300];
    launch_token(tok, sizeof tok);
    const char *nl = memchr(data, '\n', len);
    size_t hl = nl ? (size_t)(nl - data) + 1 : 0;
    if (!nl || strncmp(data, ID_MAGIC, strlen(ID_MAGIC)) != 0 || len - hl != SD_NCCL_ID_BYTES)
        return sd_fail(SD_ERR_INPUT, "%s: not an NCCL id file written by ssdistill (%zu bytes)", path, len);
    snprintf(want, sizeof want, ID_MAGIC "%s\n", tok);
    *mine = strcmp(tok, "-") == 0 || (hl == strlen(want) && memcmp(data, want, hl) == 0);
    if (*mine) memcpy(id, data + hl, SD_NCCL_ID_BYTES);
    return SD_OK;
}

/* The other ranks: wait for this launch's file, then read it. */
int sd_dist_id_read(const char *path, unsigned char *id, int timeout_s) {
    for (int tries = 0; tries < timeout_s * 10; tries++) { /* every 100 ms */
        if (sd_file_exists(path)) {
            char *data;
            size_t len;
            int mine = 0;
            SD_TRY(sd_read_file(path, &data, &len));
            int rc = parse_id(path, data, len, id, &mine);
            free(data);
            SD_TRY(rc);
            if (mine) return SD_OK;
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return sd_fail(SD_ERR_SYS, "%s: rank 0 did not write this launch's NCCL id within %d s", path, timeout_s);
}

/* The unique id from rank 0 to every rank: over TCP when SSDISTILL_NCCL_ADDR (host:port, rank
 * 0's address) is set, else through the file id_path. */
static int share_id(sd_dist *d, const char *id_path, unsigned char *id, int *by_file) {
    const char *addr = getenv("SSDISTILL_NCCL_ADDR");
    *by_file = !(addr && *addr);
    if (d->rank == 0) SD_TRY(sd_nccl_unique_id(id));
    if (!*by_file) return sd_rendezvous_tcp("SSDISTILL_NCCL_ADDR", addr, d->rank, d->world, id, SD_NCCL_ID_BYTES, 300);
    return d->rank == 0 ? sd_dist_id_write(id_path, id) : sd_dist_id_read(id_path, id, 300);
}

int sd_dist_init(sd_dist *d, sd_ctx *ctx, const char *id_path) {
    if (ctx->backend != SD_DEV_CUDA)
        return sd_fail(SD_ERR_INPUT, "%d ranks: data parallelism runs on GPUs (device cuda), one per rank", d->world);
    if (!sd_nccl_available()) return sd_fail(SD_ERR_INPUT, "%d ranks: this build has no NCCL", d->world);
    unsigned char id[SD_NCCL_ID_BYTES];
    int by_file;
    SD_TRY(share_id(d, id_path, id, &by_file));
    SD_TRY(sd_nccl_init(&d->comm, id, d->rank, d->world));
    d->active = 1;
    /* every rank has joined once this sum returns: the id file has served */
    float one = 1.0f;
    SD_TRY(sd_dist_mean_host(d, ctx, &one, 1));
    if (d->rank == 0 && by_file) unlink(id_path);
    return SD_OK;
}

int sd_dist_mean_host(sd_dist *d, sd_ctx *ctx, float *v, int n) {
    SD_TRY(sd_dist_sum_host(d, ctx, v, n));
    for (int i = 0; d->active && i < n; i++) v[i] /= (float)d->world;
    return SD_OK;
}

int sd_dist_sum_host(sd_dist *d, sd_ctx *ctx, float *v, int n) {
    if (!d->active || n <= 0) return SD_OK;
    sd_tensor t, h;
    int64_t shape[1] = {n};
    h = sd_tensor_view(SD_F32, v, 1, shape);
    SD_TRY(sd_tensor_from_host(ctx, &t, &h, SD_F32));
    int rc = sd_nccl_allreduce_sum(d->comm, ctx, (float *)t.data, (size_t)n);
    if (rc == SD_OK) rc = sd_tensor_into_host(ctx, &h, &t);
    sd_tensor_free(&t);
    return rc;
}

int sd_dist_sum_host_f64(sd_dist *d, sd_ctx *ctx, double *v, int n) {
    if (!d->active) return SD_OK;
    return sd_nccl_allreduce_sum_host_f64(d->comm, ctx, v, n);
}

int sd_dist_broadcast(sd_dist *d, sd_ctx *ctx, sd_tensor *t, int root) {
    if (!d->active) return SD_OK;
    if (t->dtype != SD_F32 || t->device != SD_DEV_CUDA)
        return sd_fail(SD_ERR_INTERNAL, "broadcast: expected an F32 tensor on the GPU");
    return sd_nccl_broadcast(d->comm, ctx, (float *)t->data, (size_t)sd_numel(t), root);
}

/* ---- ZeRO-1 ------------------------------------------------------------------------------- */

static int reduce_bucket(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, int b) {
    sd_tensor t = sd_zero_slice(z, b, 0); /* the bucket's start; its slices follow */
    return sd_nccl_reduce_scatter_mean(d->comm, ctx, (float *)t.data, (size_t)sd_numel(&t), d->rank, 1);
}

/* SSDISTILL_BUCKET_MB: the size of the gradient buckets (0: the default). */
static int bucket_elems(int64_t *elems) {
    const char *v = getenv("SSDISTILL_BUCKET_MB");
    *elems = 0;
    if (!v || !*v) return SD_OK;
    char *end;
    double mb = strtod(v, &end);
    if (*end || !(mb > 0 && mb <= 65536))
        return sd_fail(SD_ERR_INPUT, "environment variable SSDISTILL_BUCKET_MB: '%s' is not a size in MiB (0..65536]", v);
    *elems = (int64_t)(mb * 1048576.0 / sizeof(float));
    return SD_OK;
}

static int zero_hook(void *arg, int event) {
    sd_dist *d = arg;
    return sd_dist_zero_ready(d, d->hook_ctx, d->hook_zero, event);
}

/* g again, with the gradients of params as views of z's flat buffer. */
static int zero_grads(sd_zero_opt *z, const sd_student *s, sd_student *g, const sd_weights *params) {
    sd_weights views;
    sd_weights_init(&views);
    int rc = SD_OK;
    for (int i = 0; rc == SD_OK && i < params->n; i++)
        rc = sd_weights_add(&views, params->items[i].name, sd_zero_grad_view(z, i, &params->items[i].t));
    if (rc == SD_OK) rc = sd_student_grads_init_in(s, g, &views);
    sd_weights_free(&views); /* not owning: the views stay valid in g */
    return rc;
}

static int zero_layout(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, const sd_student *s, const sd_weights *params,
                       const sd_adamw_config *cfg) {
    int64_t cap;
    SD_TRY(bucket_elems(&cap));
    int *events = sd_calloc(params->n ? (size_t)params->n : 1, sizeof *events, "ZeRO events");
    if (!events) return SD_ERR_SYS;
    const char *embed = sd_student_names_of(&s->cfg).embed;
    for (int i = 0; i < params->n; i++) events[i] = sd_zero_event(params->items[i].name, s->cfg.num_layers, embed);
    int rc = sd_zero_init(z, ctx, params, events, d->rank, d->world, cap, cfg);
    free(events);
    return rc;
}

int sd_dist_zero_begin(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, const sd_student *s, sd_student *g,
                       const sd_weights *params, const sd_adamw_config *cfg) {
    sd_student_free(g); /* first: the old gradients and the flat buffer never live together */
    SD_TRY(zero_layout(d, ctx, z, s, params, cfg));
    int rc = zero_grads(z, s, g, params);
    if (rc != SD_OK) {
        sd_zero_free(z);
        return rc;
    }
    d->hook_ctx = ctx;
    d->hook_zero = z;
    g->grads_ready = zero_hook;
    g->grads_ready_arg = d;
    return SD_OK;
}

int sd_dist_zero_ready(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, int event) {
    if (z->launched >= z->n_buckets || z->b[z->launched].event > event) return SD_OK;
    SD_TRY(sd_nccl_side_begin(d->comm, ctx)); /* after the kernels that wrote these gradients */
    SD_TRY(sd_nccl_group_begin());
    int rc = SD_OK;
    for (; rc == SD_OK && z->launched < z->n_buckets && z->b[z->launched].event <= event; z->launched++)
        rc = reduce_bucket(d, ctx, z, z->launched);
    int rc2 = sd_nccl_group_end();
    SD_TRY(rc);
    return rc2;
}

/* The global norm from every rank's slices; the same verdict on every rank. */
static int zero_norm(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, double *norm) {
    double total;
    SD_TRY(sd_zero_sum_squares(z, ctx, &total));
    SD_TRY(sd_dist_sum_host_f64(d, ctx, &total, 1)); /* in double, as one process sums it */
    if (!isfinite(total))
        return sd_fail(SD_ERR_CHECK, "AdamW: the gradients have NaN or Inf values (summed over %d ranks); no "
                       "parameter was updated", d->world);
    *norm = sqrt(total);
    return SD_OK;
}

static int all_gather_params(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z) {
    SD_TRY(sd_nccl_group_begin());
    int rc = SD_OK;
    for (int b = 0; rc == SD_OK && b < z->n_buckets; b++) {
        sd_tensor t = sd_zero_slice(z, b, 0);
        rc = sd_nccl_all_gather(d->comm, ctx, (float *)t.data, (size_t)sd_numel(&t), d->rank, 0);
    }
    int rc2 = sd_nccl_group_end();
    SD_TRY(rc);
    return rc2;
}

int sd_dist_zero_step(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, sd_weights *params, float lr, float clip,
                      double *grad_norm) {
    SD_TRY(sd_dist_zero_ready(d, ctx, z, INT_MAX));
    z->launched = 0;
    SD_TRY(sd_nccl_side_join(d->comm, ctx));
    double norm = 0;
    SD_TRY(zero_norm(d, ctx, z, &norm));
    if (grad_norm) *grad_norm = norm;
    float coef = sd_clip_coef(norm, clip);
    if (coef != 1.0f) SD_TRY(sd_zero_scale(z, ctx, coef));
    SD_TRY(sd_zero_adamw(z, ctx, params, lr));
    SD_TRY(sd_zero_stage_params(z, ctx, params)); /* the gradients are spent: the buffer carries the masters */
    SD_TRY(all_gather_params(d, ctx, z));
    return sd_zero_unstage_params(z, ctx, params);
}

static int gather_moment(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, const sd_tensor *mom, int b, sd_tensor *full,
                         const sd_weights *params, sd_weights *host) {
    int64_t sl = z->b[b].len / z->world, shape[1] = {sl};
    sd_tensor mine = sd_tensor_sub(mom, z->b[b].off / z->world, 1, shape);
    SD_TRY(sd_nccl_gather_all(d->comm, ctx, (const float *)mine.data, (float *)full->data, (size_t)sl));
    return d->rank == 0 ? sd_zero_bucket_to_host(z, ctx, b, full, params, host) : SD_OK; /* rank 0 writes */
}

int sd_dist_zero_moments(sd_dist *d, sd_ctx *ctx, sd_zero_opt *z, const sd_weights *params, sd_weights *host_m,
                         sd_weights *host_v) {
    int rc = SD_OK;
    for (int b = 0; rc == SD_OK && b < z->n_buckets; b++) {
        sd_tensor full;
        int64_t shape[1] = {z->b[b].len};
        SD_TRY(sd_tensor_new(ctx, &full, SD_F32, 1, shape));
        rc = gather_moment(d, ctx, z, &z->m, b, &full, params, host_m);
        if (rc == SD_OK) rc = gather_moment(d, ctx, z, &z->v, b, &full, params, host_v);
        sd_tensor_free(&full);
    }
    return rc;
}

void sd_dist_free(sd_dist *d) {
    sd_nccl_free(d->comm);
    d->comm = NULL;
    d->active = 0;
}
