/* ZeRO-1 (distill/zero.h) on the CPU: the layout's invariants, and W simulated ranks (the
 * reduce-scatter and the all-gather done by hand, as NCCL does them) against plain AdamW on
 * the mean gradient over three clipped steps; the moments gathered into a checkpoint's form
 * and resumed on another number of ranks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "convert/weights.h"
#include "distill/optimizer.h"
#include "distill/zero.h"
#include "kernels/ops.h"
#include "kernels/optim.h"
#include "kernels/tensor_ops.h"
#include "tests/test_util.h"

#define MAXW 4
#define L 2

static sd_ctx g_ctx;
static uint64_t g_seed = 6;

/* A small student-like set: names decide the events and the decay groups. */
static const struct {
    const char *name;
    int ndim;
    int64_t d0, d1;
} k_params[] = {
    {"backbone.embedding.weight", 2, 37, 16},
    {"backbone.layers.0.norm.weight", 1, 16, 0},
    {"backbone.layers.0.mixer.in_proj.weight", 2, 50, 16},
    {"backbone.layers.0.mixer.D", 1, 4, 0},
    {"backbone.layers.1.norm.weight", 1, 16, 0},
    {"backbone.layers.1.mixer.in_proj.weight", 2, 50, 16},
    {"backbone.layers.1.mixer.z_bias", 1, 33, 0},
    {"backbone.layers.1.mlp.down_proj.weight", 2, 3, 1000},
    {"backbone.final_layernorm.weight", 1, 16, 0},
    {"lm_head.weight", 2, 37, 16},
};
#define NP ((int)(sizeof k_params / sizeof *k_params))
#define EMBED "backbone.embedding.weight"

static void make_set(sd_weights *w, int random) {
    sd_weights_init(w);
    for (int i = 0; i < NP; i++) {
        int64_t shape[2] = {k_params[i].d0, k_params[i].d1};
        sd_tensor t;
        if (sd_tensor_alloc(&t, SD_F32, k_params[i].ndim, shape) != SD_OK) abort();
        if (random) test_fill(t.data, (size_t)sd_numel(&t), &g_seed, -1, 1);
        if (sd_weights_add(w, k_params[i].name, t) != SD_OK) abort();
    }
}

static void copy_set(sd_weights *dst, const sd_weights *src) {
    make_set(dst, 0);
    for (int i = 0; i < NP; i++) memcpy(dst->items[i].t.data, src->items[i].t.data, sd_nbytes(&src->items[i].t));
}

static void events_of(int *ev) {
    for (int i = 0; i < NP; i++) ev[i] = sd_zero_event(k_params[i].name, L, EMBED);
}

/* ---- the layout --------------------------------------------------------------------------- */

static void test_events(void) {
    CHECK(sd_zero_event("lm_head.weight", 16, EMBED) == 0, "head");
    CHECK(sd_zero_event("backbone.layers.15.mixer.D", 16, EMBED) == 1, "last layer");
    CHECK(sd_zero_event("backbone.layers.0.mixer.D", 16, EMBED) == 16, "first layer");
    CHECK(sd_zero_event(EMBED, 16, EMBED) == 17, "embedding");
}

static void check_layout(const sd_zero_opt *z, int world, int64_t cap) {
    int seen[NP] = {0};
    int64_t end = 0;
    for (int b = 0; b < z->n_buckets; b++) {
        const sd_zero_bucket *bk = &z->b[b];
        CHECK(bk->off == end, "bucket %d starts at %lld, the last ended at %lld", b, (long long)bk->off, (long long)end);
        CHECK(bk->len % ((int64_t)world * SD_ZERO_ALIGN) == 0, "bucket %d len %lld", b, (long long)bk->len);
        CHECK(b == 0 || z->b[b - 1].event <= bk->event, "bucket events out of order at %d", b);
        int64_t used = 0;
        for (int k = 0; k < bk->count; k++) {
            int i = z->order[bk->first + k];
            seen[i]++;
            CHECK(z->off[i] % SD_ZERO_ALIGN == 0, "offset of %s", k_params[i].name);
            CHECK(z->off[i] >= bk->off && z->off[i] + z->numel[i] <= bk->off + bk->len, "%s outside its bucket",
                  k_params[i].name);
            CHECK(z->off[i] >= bk->off + used, "%s overlaps the parameter before it", k_params[i].name);
            used = z->off[i] + z->numel[i] - bk->off;
            CHECK(sd_zero_event(k_params[i].name, L, EMBED) <= bk->event, "%s in a bucket ready too early",
                  k_params[i].name);
        }
        CHECK(bk->count == 1 || used <= cap, "bucket %d holds %lld > cap %lld", b, (long long)used, (long long)cap);
        end = bk->off + bk->len;
    }
    CHECK(end == z->total && sd_numel(&z->flat) == z->total, "total %lld", (long long)z->total);
    CHECK(sd_numel(&z->m) == z->total / world, "moments hold 1/world");
    for (int i = 0; i < NP; i++) CHECK(seen[i] == 1, "%s in %d buckets", k_params[i].name, seen[i]);
}

static void test_layout(void) {
    sd_weights p;
    make_set(&p, 1);
    int ev[NP];
    events_of(ev);
    for (int world = 1; world <= MAXW; world++) {
        sd_zero_opt z;
        CHECK_OK(sd_zero_init(&z, &g_ctx, &p, ev, world - 1, world, 900, NULL));
        check_layout(&z, world, 900);
        CHECK(z.n_buckets >= 3, "%d buckets: the test wants several", z.n_buckets);
        CHECK(z.b[z.n_buckets - 1].event == L + 1, "the embedding's bucket comes last");
        sd_zero_free(&z);
    }
    sd_zero_opt z;
    CHECK(sd_zero_init(&z, &g_ctx, &p, ev, 2, 2, 0, NULL) == SD_ERR_INTERNAL, "rank 2 of 2 refused");
    sd_weights_free(&p);
}

/* ---- W simulated ranks -------------------------------------------------------------------- */

typedef struct {
    int world;
    sd_zero_opt z[MAXW];
    sd_weights p[MAXW];
} sim;

static void sim_init(sim *s, int world, const sd_weights *p0, const sd_adamw_config *cfg) {
    int ev[NP];
    events_of(ev);
    s->world = world;
    for (int r = 0; r < world; r++) {
        copy_set(&s->p[r], p0);
        if (sd_zero_init(&s->z[r], &g_ctx, &s->p[r], ev, r, world, 500, cfg) != SD_OK) abort();
    }
}

static void sim_free(sim *s) {
    for (int r = 0; r < s->world; r++) {
        sd_zero_free(&s->z[r]);
        sd_weights_free(&s->p[r]);
    }
}

/* Rank r's slice of bucket b in every rank = the mean over the ranks of that slice. */
static void reduce_scatter(sim *s) {
    for (int b = 0; b < s->z[0].n_buckets; b++)
        for (int r = 0; r < s->world; r++) {
            sd_tensor mine = sd_zero_slice(&s->z[r], b, r);
            for (int64_t e = 0; e < sd_numel(&mine); e++) {
                float sum = 0;
                for (int q = 0; q < s->world; q++) sum += ((float *)sd_zero_slice(&s->z[q], b, r).data)[e];
                ((float *)mine.data)[e] = sum / (float)s->world;
            }
        }
}

static void all_gather(sim *s) {
    for (int b = 0; b < s->z[0].n_buckets; b++)
        for (int r = 0; r < s->world; r++)
            for (int q = 0; q < s->world; q++) {
                sd_tensor src = sd_zero_slice(&s->z[r], b, r), dst = sd_zero_slice(&s->z[q], b, r);
                if (q != r) memcpy(dst.data, src.data, sd_nbytes(&src));
            }
}

/* grads[r]: rank r's gradients.  The data-parallel step of distill/dist.c, collectives by hand. */
static void sim_step(sim *s, sd_weights *grads, float lr, float clip, double *norm) {
    for (int r = 0; r < s->world; r++)
        for (int i = 0; i < NP; i++) {
            sd_tensor g = sd_zero_grad_view(&s->z[r], i, &s->p[r].items[i].t);
            memcpy(g.data, grads[r].items[i].t.data, sd_nbytes(&g));
        }
    reduce_scatter(s);
    double ss = 0;
    for (int r = 0; r < s->world; r++) {
        double x;
        CHECK_OK(sd_zero_sum_squares(&s->z[r], &g_ctx, &x));
        ss += x;
    }
    *norm = sqrt(ss);
    float coef = sd_clip_coef(*norm, clip);
    for (int r = 0; r < s->world; r++) {
        if (coef != 1.0f) CHECK_OK(sd_zero_scale(&s->z[r], &g_ctx, coef));
        CHECK_OK(sd_zero_adamw(&s->z[r], &g_ctx, &s->p[r], lr));
        CHECK_OK(sd_zero_stage_params(&s->z[r], &g_ctx, &s->p[r]));
    }
    all_gather(s);
    for (int r = 0; r < s->world; r++) CHECK_OK(sd_zero_unstage_params(&s->z[r], &g_ctx, &s->p[r]));
}

static double set_diff(const sd_weights *a, const sd_weights *b) {
    double worst = 0;
    for (int i = 0; i < NP; i++) {
        const float *x = a->items[i].t.data, *y = sd_weights_find(b, a->items[i].name)->data;
        for (int64_t e = 0; e < sd_numel(&a->items[i].t); e++) {
            double d = fabs((double)x[e] - y[e]);
            if (!(d <= worst)) worst = d;
        }
    }
    return worst;
}

/* The reference: the mean gradient (in the simulation's order of summation), plain AdamW. */
static void mean_grads(sd_weights *mean, sd_weights *grads, int world) {
    make_set(mean, 0);
    for (int i = 0; i < NP; i++) {
        float *m = mean->items[i].t.data;
        for (int64_t e = 0; e < sd_numel(&mean->items[i].t); e++) {
            float sum = 0;
            for (int q = 0; q < world; q++) sum += ((float *)grads[q].items[i].t.data)[e];
            m[e] = sum / (float)world;
        }
    }
}

static void step_both(sim *s, sd_optimizer *opt, sd_weights *ref, float lr, float clip, int step) {
    sd_weights grads[MAXW], mean;
    for (int r = 0; r < s->world; r++) make_set(&grads[r], 1);
    mean_grads(&mean, grads, s->world);
    double n_ref, n_sim;
    CHECK_OK(sd_optimizer_step(opt, &g_ctx, ref, &mean, lr, clip, &n_ref));
    sim_step(s, grads, lr, clip, &n_sim);
    CHECK(fabs(n_ref - n_sim) <= 1e-6 * n_ref, "W %d step %d: norm %.9g vs %.9g", s->world, step, n_sim, n_ref);
    for (int r = 0; r < s->world; r++) {
        double d = set_diff(&s->p[r], ref);
        CHECK(d <= 1e-6, "W %d step %d rank %d: parameters differ from AdamW by %g", s->world, step, r, d);
    }
    for (int r = 0; r < s->world; r++) sd_weights_free(&grads[r]);
    sd_weights_free(&mean);
}

/* Moments in a checkpoint's form: bucket by bucket, the ranks' slices gathered by hand. */
static void gather_moments(sim *s, sd_weights *hm, sd_weights *hv) {
    sd_weights_init(hm);
    sd_weights_init(hv);
    for (int b = 0; b < s->z[0].n_buckets; b++) {
        int64_t len = s->z[0].b[b].len, sl = len / s->world, shape[1] = {len};
        sd_tensor fm, fv;
        if (sd_tensor_alloc(&fm, SD_F32, 1, shape) != SD_OK || sd_tensor_alloc(&fv, SD_F32, 1, shape) != SD_OK)
            abort();
        for (int r = 0; r < s->world; r++) {
            int64_t at = s->z[r].b[b].off / s->world;
            memcpy((float *)fm.data + r * sl, (float *)s->z[r].m.data + at, (size_t)sl * sizeof(float));
            memcpy((float *)fv.data + r * sl, (float *)s->z[r].v.data + at, (size_t)sl * sizeof(float));
        }
        CHECK_OK(sd_zero_bucket_to_host(&s->z[0], &g_ctx, b, &fm, &s->p[0], hm));
        CHECK_OK(sd_zero_bucket_to_host(&s->z[0], &g_ctx, b, &fv, &s->p[0], hv));
        sd_tensor_free(&fm);
        sd_tensor_free(&fv);
    }
}

static void test_steps(int world, int resume_world) {
    sd_weights p0, ref;
    make_set(&p0, 1);
    copy_set(&ref, &p0);
    sd_adamw_config cfg = sd_adamw_config_default();
    sd_optimizer opt;
    CHECK_OK(sd_optimizer_init(&opt, &ref, &cfg));
    sim s;
    sim_init(&s, world, &p0, &cfg);
    /* clip 5 < the norm of ~2600 uniform(-1, 1) values (about 29): clipping is on */
    for (int step = 1; step <= 3; step++) step_both(&s, &opt, &ref, 1e-2f, step == 2 ? 0.0f : 5.0f, step);
    sd_weights hm, hv;
    gather_moments(&s, &hm, &hv);
    CHECK(set_diff(&hm, &opt.m) <= 1e-7 && set_diff(&hv, &opt.v) <= 1e-7, "W %d: gathered moments differ", world);
    /* resume on another number of ranks from the checkpoint's form */
    sim t;
    sim_init(&t, resume_world, &s.p[0], &cfg);
    for (int r = 0; r < resume_world; r++) {
        CHECK_OK(sd_zero_moments_from_host(&t.z[r], &g_ctx, &t.p[r], &hm, &hv, "ckpt.h5"));
        t.z[r].step = 3;
    }
    step_both(&t, &opt, &ref, 1e-2f, 5.0f, 4);
    sd_weights_free(&hv);
    hv.n = 0;
    sd_weights_init(&hv);
    CHECK(sd_zero_moments_from_host(&t.z[0], &g_ctx, &t.p[0], &hm, &hv, "ckpt.h5") == SD_ERR_INPUT &&
              strstr(sd_errmsg(), "ckpt.h5") && strstr(sd_errmsg(), "moments of"),
          "missing moments refused: %s", sd_errmsg());
    sim_free(&t);
    sim_free(&s);
    sd_weights_free(&hm);
    sd_weights_free(&hv);
    sd_optimizer_free(&opt);
    sd_weights_free(&ref);
    sd_weights_free(&p0);
}

int main(void) {
    sd_ctx_init_cpu(&g_ctx, 1);
    test_events();
    test_layout();
    test_steps(1, 2);
    test_steps(3, 2);
    test_steps(4, 1);
    test_steps(2, 3);
    return test_summary("test_zero");
}
