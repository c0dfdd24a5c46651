/* ZeRO-1: the flat gradient layout, the slices' AdamW and the moments' checkpoint form
 * (distill/zero.h). */
#include "distill/zero.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "distill/student.h"
#include "kernels/optim.h"
#include "kernels/tensor_ops.h"

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

int sd_zero_event(const char *name, int num_layers, const char *embed_name) {
    if (embed_name && strcmp(name, embed_name) == 0) return num_layers + 1;
    int l = sd_student_param_layer(name);
    return l >= 0 && l < num_layers ? num_layers - l : 0;
}

/* ---- layout ------------------------------------------------------------------------------ */

/* order = parameter indices by event, stable (the backward's order of completion). */
static void sort_by_event(int *order, const int *events, int n) {
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) {
        int x = order[i], j = i;
        for (; j > 0 && events[order[j - 1]] > events[x]; j--) order[j] = order[j - 1];
        order[j] = x;
    }
}

static void close_bucket(sd_zero_opt *z, sd_zero_bucket *b, int64_t used) {
    b->len = round_up(used > 0 ? used : 1, (int64_t)z->world * SD_ZERO_ALIGN);
    z->total = b->off + b->len;
}

/* Parameters in event order fill buckets up to cap elements each; every offset aligned, every
 * bucket padded to world * SD_ZERO_ALIGN so that the ranks' slices are equal and aligned. */
static void layout(sd_zero_opt *z, const int *events, int64_t cap) {
    sort_by_event(z->order, events, z->n);
    int64_t used = 0;
    sd_zero_bucket *b = NULL;
    for (int k = 0; k < z->n; k++) {
        int i = z->order[k];
        int64_t size = round_up(z->numel[i], SD_ZERO_ALIGN);
        if (!b || (used > 0 && used + size > cap)) {
            if (b) close_bucket(z, b, used);
            b = &z->b[z->n_buckets++];
            b->off = z->total;
            b->first = k;
            b->count = 0;
            used = 0;
        }
        z->off[i] = b->off + used;
        used += size;
        b->count++;
        b->event = events[i]; /* sorted: the bucket's last parameter is its latest */
    }
    if (b) close_bucket(z, b, used);
}

static int alloc_arrays(sd_zero_opt *z) {
    size_t n = z->n ? (size_t)z->n : 1;
    z->off = sd_calloc(n, sizeof *z->off, "ZeRO offsets");
    z->numel = sd_calloc(n, sizeof *z->numel, "ZeRO sizes");
    z->order = sd_calloc(n, sizeof *z->order, "ZeRO order");
    z->decays = sd_calloc(n, 1, "ZeRO decay flags");
    z->b = sd_calloc(n, sizeof *z->b, "ZeRO buckets");
    return z->off && z->numel && z->order && z->decays && z->b ? SD_OK : SD_ERR_SYS;
}

static int check_params(const sd_weights *params, const sd_tensor **first) {
    *first = NULL;
    for (int i = 0; i < params->n; i++) {
        const sd_tensor *p = &params->items[i].t;
        if (p->dtype != SD_F32)
            return sd_fail(SD_ERR_INTERNAL, "ZeRO: parameter '%s' is %s, expected F32 master weights",
                           params->items[i].name, sd_dtype_name(p->dtype));
        if (!*first) *first = p;
    }
    return SD_OK;
}

static int init_body(sd_zero_opt *z, sd_ctx *ctx, const sd_weights *params, const int *events, int64_t cap) {
    const sd_tensor *first;
    SD_TRY(check_params(params, &first));
    if (!first) return sd_fail(SD_ERR_INTERNAL, "ZeRO: no parameters");
    SD_TRY(alloc_arrays(z));
    for (int i = 0; i < z->n; i++) {
        z->numel[i] = sd_numel(&params->items[i].t);
        z->decays[i] = (char)sd_param_decays(params->items[i].name, &params->items[i].t);
    }
    layout(z, events, cap);
    int64_t shape[1] = {z->total}, shard[1] = {z->total / z->world};
    (void)ctx;
    SD_TRY(sd_tensor_new_on(first->device, &z->flat, SD_F32, 1, shape));
    SD_TRY(sd_tensor_new_on(first->device, &z->m, SD_F32, 1, shard));
    return sd_tensor_new_on(first->device, &z->v, SD_F32, 1, shard);
}

int sd_zero_init(sd_zero_opt *z, sd_ctx *ctx, const sd_weights *params, const int *events, int rank, int world,
                 int64_t bucket_elems, const sd_adamw_config *cfg) {
    memset(z, 0, sizeof *z);
    if (world < 1 || rank < 0 || rank >= world)
        return sd_fail(SD_ERR_INTERNAL, "ZeRO: rank %d of %d", rank, world);
    z->rank = rank;
    z->world = world;
    z->n = params->n;
    z->cfg = cfg ? *cfg : sd_adamw_config_default();
    int rc = init_body(z, ctx, params, events, bucket_elems > 0 ? bucket_elems : SD_ZERO_BUCKET_DEFAULT);
    if (rc != SD_OK) sd_zero_free(z);
    return rc;
}

void sd_zero_free(sd_zero_opt *z) {
    sd_tensor_free(&z->flat);
    sd_tensor_free(&z->m);
    sd_tensor_free(&z->v);
    free(z->off);
    free(z->numel);
    free(z->order);
    free(z->decays);
    free(z->b);
    memset(z, 0, sizeof *z);
}

/* ---- views and segments ------------------------------------------------------------------- */

sd_tensor sd_zero_grad_view(const sd_zero_opt *z, int i, const sd_tensor *param) {
    return sd_tensor_sub(&z->flat, z->off[i], param->ndim, param->shape);
}

static int64_t slice_len(const sd_zero_opt *z, int b) { return z->b[b].len / z->world; }

sd_tensor sd_zero_slice(const sd_zero_opt *z, int b, int r) {
    int64_t shape[1] = {slice_len(z, b)};
    return sd_tensor_sub(&z->flat, z->b[b].off + r * shape[0], 1, shape);
}

/* The part of bucket b's k-th parameter inside this rank's slice: flat[lo, hi), its moments at
 * mom (the slices of all buckets follow each other in m and v).  0 when empty. */
typedef struct {
    int i;
    int64_t lo, hi, mom;
} segment;

static int segment_of(const sd_zero_opt *z, int b, int k, segment *s) {
    const sd_zero_bucket *bk = &z->b[b];
    int64_t len = slice_len(z, b), s0 = bk->off + z->rank * len, s1 = s0 + len;
    s->i = z->order[bk->first + k];
    int64_t p0 = z->off[s->i], p1 = p0 + z->numel[s->i];
    s->lo = p0 > s0 ? p0 : s0;
    s->hi = p1 < s1 ? p1 : s1;
    s->mom = bk->off / z->world + (s->lo - s0);
    return s->hi > s->lo;
}

/* 1-D views of a segment: in the flat buffer, in the master (param), in a moment tensor. */
static sd_tensor flat_part(const sd_zero_opt *z, const segment *s) {
    int64_t shape[1] = {s->hi - s->lo};
    return sd_tensor_sub(&z->flat, s->lo, 1, shape);
}

static sd_tensor param_part(const sd_zero_opt *z, const sd_tensor *param, const segment *s) {
    int64_t shape[1] = {s->hi - s->lo};
    return sd_tensor_sub(param, s->lo - z->off[s->i], 1, shape);
}

static sd_tensor moment_part(const sd_tensor *mom, const segment *s) {
    int64_t shape[1] = {s->hi - s->lo};
    return sd_tensor_sub(mom, s->mom, 1, shape);
}

/* ---- the step ----------------------------------------------------------------------------- */

int sd_zero_sum_squares(sd_zero_opt *z, sd_ctx *ctx, double *ss) {
    *ss = 0;
    for (int b = 0; b < z->n_buckets; b++) {
        sd_tensor s = sd_zero_slice(z, b, z->rank);
        double x;
        SD_TRY(sd_sum_squares(ctx, &s, &x)); /* the padding is zero: it adds nothing */
        *ss += x;
    }
    return SD_OK;
}

int sd_zero_scale(sd_zero_opt *z, sd_ctx *ctx, float s) {
    for (int b = 0; b < z->n_buckets; b++) {
        sd_tensor t = sd_zero_slice(z, b, z->rank);
        SD_TRY(sd_scale(ctx, &t, s));
    }
    return SD_OK;
}

static int check_set(const sd_zero_opt *z, const sd_weights *params) {
    if (params->n != z->n)
        return sd_fail(SD_ERR_INTERNAL, "ZeRO: %d parameters, the layout was made for %d", params->n, z->n);
    for (int i = 0; i < z->n; i++)
        if (sd_numel(&params->items[i].t) != z->numel[i])
            return sd_fail(SD_ERR_INTERNAL, "ZeRO: parameter '%s' changed size", params->items[i].name);
    return SD_OK;
}

int sd_zero_adamw(sd_zero_opt *z, sd_ctx *ctx, sd_weights *params, float lr) {
    SD_TRY(check_set(z, params));
    int64_t t = z->step + 1;
    const sd_adamw_config *c = &z->cfg;
    for (int b = 0; b < z->n_buckets; b++)
        for (int k = 0; k < z->b[b].count; k++) {
            segment s;
            if (!segment_of(z, b, k, &s)) continue;
            sd_tensor p = param_part(z, &params->items[s.i].t, &s), g = flat_part(z, &s);
            sd_tensor m = moment_part(&z->m, &s), v = moment_part(&z->v, &s);
            float wd = z->decays[s.i] ? c->weight_decay : 0.0f;
            SD_TRY(sd_adamw_step(ctx, &p, &g, &m, &v, lr, c->beta1, c->beta2, c->eps, wd, t));
        }
    z->step = t;
    return SD_OK;
}

int sd_zero_stage_params(sd_zero_opt *z, sd_ctx *ctx, const sd_weights *params) {
    SD_TRY(check_set(z, params));
    for (int b = 0; b < z->n_buckets; b++)
        for (int k = 0; k < z->b[b].count; k++) {
            segment s;
            if (!segment_of(z, b, k, &s)) continue;
            sd_tensor dst = flat_part(z, &s), src = param_part(z, &params->items[s.i].t, &s);
            SD_TRY(sd_copy(ctx, &dst, &src));
        }
    return SD_OK;
}

int sd_zero_unstage_params(sd_zero_opt *z, sd_ctx *ctx, sd_weights *params) {
    SD_TRY(check_set(z, params));
    for (int i = 0; i < z->n; i++) {
        sd_tensor *p = &params->items[i].t, src = sd_zero_grad_view(z, i, p);
        SD_TRY(sd_copy(ctx, p, &src));
    }
    return SD_OK;
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static int host_tensor(sd_weights *host, const char *name, const sd_tensor *like, sd_tensor **out) {
    *out = sd_weights_find(host, name);
    if (*out) return SD_OK;
    sd_tensor t;
    SD_TRY(sd_tensor_alloc(&t, SD_F32, like->ndim, like->shape));
    SD_TRY(sd_weights_add(host, name, t));
    *out = sd_weights_find(host, name);
    return SD_OK;
}

int sd_zero_bucket_to_host(const sd_zero_opt *z, sd_ctx *ctx, int b, const sd_tensor *full, const sd_weights *params,
                           sd_weights *host) {
    const sd_zero_bucket *bk = &z->b[b];
    if (sd_numel(full) != bk->len) return sd_fail(SD_ERR_INTERNAL, "ZeRO: bucket %d gathered with the wrong size", b);
    for (int k = 0; k < bk->count; k++) {
        int i = z->order[bk->first + k];
        const sd_tensor *p = &params->items[i].t;
        sd_tensor *h, src = sd_tensor_sub(full, z->off[i] - bk->off, p->ndim, p->shape);
        SD_TRY(host_tensor(host, params->items[i].name, p, &h));
        SD_TRY(sd_tensor_into_host(ctx, h, &src));
    }
    return SD_OK;
}

static int host_moment(const sd_weights *host, const char *name, const sd_tensor *p, const char *src,
                       const sd_tensor **out) {
    *out = sd_weights_find(host, name);
    if (!*out || (*out)->dtype != SD_F32 || !sd_same_shape(*out, p))
        return sd_fail(SD_ERR_INPUT, "%s: /optim: moments of '%s' missing or of the wrong shape", src, name);
    return SD_OK;
}

int sd_zero_moments_from_host(sd_zero_opt *z, sd_ctx *ctx, const sd_weights *params, const sd_weights *host_m,
                              const sd_weights *host_v, const char *src) {
    SD_TRY(check_set(z, params));
    for (int b = 0; b < z->n_buckets; b++)
        for (int k = 0; k < z->b[b].count; k++) {
            segment s;
            if (!segment_of(z, b, k, &s)) continue;
            const char *name = params->items[s.i].name;
            const sd_tensor *p = &params->items[s.i].t, *hm, *hv;
            SD_TRY(host_moment(host_m, name, p, src, &hm));
            SD_TRY(host_moment(host_v, name, p, src, &hv));
            sd_tensor m = moment_part(&z->m, &s), v = moment_part(&z->v, &s);
            sd_tensor hm_part = param_part(z, hm, &s), hv_part = param_part(z, hv, &s);
            SD_TRY(sd_copy_from_host(ctx, &m, &hm_part));
            SD_TRY(sd_copy_from_host(ctx, &v, &hv_part));
        }
    return SD_OK;
}
