/* SSD on the CPU: chunked vs quadratic forward time at several T, and the chunked
 * forward + backward.  usage: bench_ssd [H P N chunk G]  (default 8 64 64 64 1), B = 1.
 * Prints one JSON object per line.  A benchmark, never a test. */
#include "common/error.h"
#include "kernels/ssd.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fill(sd_tensor *t, uint64_t *rng, float lo, float hi) {
    float *p = t->data;
    for (int64_t i = 0; i < sd_numel(t); i++) p[i] = lo + (hi - lo) * sd_rng_uniform(rng);
}

typedef struct {
    sd_tensor x, dt, loga, Bm, Cm, D, y, dy, dx, ddt, dloga, dB, dC, dD;
} bufs;

static int bufs_alloc(bufs *b, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N) {
    SD_TRY(sd_tensor_f32(&b->x, 4, 1, T, H, P));
    SD_TRY(sd_tensor_f32(&b->y, 4, 1, T, H, P));
    SD_TRY(sd_tensor_f32(&b->dy, 4, 1, T, H, P));
    SD_TRY(sd_tensor_f32(&b->dx, 4, 1, T, H, P));
    SD_TRY(sd_tensor_f32(&b->dt, 3, 1, T, H, 0));
    SD_TRY(sd_tensor_f32(&b->loga, 3, 1, T, H, 0));
    SD_TRY(sd_tensor_f32(&b->ddt, 3, 1, T, H, 0));
    SD_TRY(sd_tensor_f32(&b->dloga, 3, 1, T, H, 0));
    SD_TRY(sd_tensor_f32(&b->Bm, 4, 1, T, G, N));
    SD_TRY(sd_tensor_f32(&b->Cm, 4, 1, T, G, N));
    SD_TRY(sd_tensor_f32(&b->dB, 4, 1, T, G, N));
    SD_TRY(sd_tensor_f32(&b->dC, 4, 1, T, G, N));
    SD_TRY(sd_tensor_f32(&b->D, 1, H, 0, 0, 0));
    SD_TRY(sd_tensor_f32(&b->dD, 1, H, 0, 0, 0));
    uint64_t rng;
    sd_rng_seed(&rng, 7);
    fill(&b->x, &rng, -1, 1), fill(&b->dy, &rng, -1, 1), fill(&b->dt, &rng, 0.01f, 0.1f);
    fill(&b->loga, &rng, -0.5f, 0), fill(&b->Bm, &rng, -0.1f, 0.1f);
    fill(&b->Cm, &rng, -0.1f, 0.1f), fill(&b->D, &rng, -1, 1);
    return SD_OK;
}

static void bufs_free(bufs *b) {
    sd_tensor *all[] = {&b->x, &b->dt, &b->loga, &b->Bm, &b->Cm, &b->D, &b->y, &b->dy,
                        &b->dx, &b->ddt, &b->dloga, &b->dB, &b->dC, &b->dD};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

/* Best of reps; which: 0 quadratic, 1 chunked, 2 chunked forward + backward. */
static int time_it(sd_ctx *ctx, bufs *b, int which, int64_t chunk, int reps, double *best) {
    *best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        if (which == 0)
            SD_TRY(sd_ssd_quadratic(ctx, &b->y, &b->x, &b->dt, &b->loga, &b->Bm, &b->Cm, &b->D, NULL));
        else
            SD_TRY(sd_ssd_chunked(ctx, &b->y, &b->x, &b->dt, &b->loga, &b->Bm, &b->Cm, &b->D,
                                  chunk, NULL, NULL));
        if (which == 2)
            SD_TRY(sd_ssd_chunked_backward(ctx, &b->dx, &b->ddt, &b->dloga, &b->dB, &b->dC,
                                           &b->dD, &b->dy, &b->x, &b->dt, &b->loga, &b->Bm,
                                           &b->Cm, &b->D, chunk, NULL, NULL, NULL));
        double dt = now_s() - t0;
        if (dt < *best) *best = dt;
    }
    return SD_OK;
}

int main(int argc, char **argv) {
    int64_t H = argc > 1 ? atoll(argv[1]) : 8, P = argc > 2 ? atoll(argv[2]) : 64;
    int64_t N = argc > 3 ? atoll(argv[3]) : 64, chunk = argc > 4 ? atoll(argv[4]) : 64;
    int64_t G = argc > 5 ? atoll(argv[5]) : 1;
    int64_t Ts[] = {256, 1024, 4096};
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    double first = 0;
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
        int64_t T = Ts[i];
        bufs b;
        double tq, tc, tb;
        int reps = T <= 256 ? 30 : T <= 1024 ? 10 : 3;
        if (bufs_alloc(&b, T, H, P, G, N) != SD_OK || time_it(&ctx, &b, 0, chunk, reps, &tq) ||
            time_it(&ctx, &b, 1, chunk, reps, &tc) || time_it(&ctx, &b, 2, chunk, reps, &tb)) {
            fprintf(stderr, "bench_ssd: %s\n", sd_errmsg());
            return 2;
        }
        if (i == 0) first = tc / (double)T;
        printf("{\"bench\": \"ssd\", \"B\": 1, \"T\": %lld, \"H\": %lld, \"P\": %lld, \"N\": %lld, "
               "\"G\": %lld, \"chunk\": %lld, \"threads\": %d, \"quadratic_s\": %.6f, "
               "\"chunked_s\": %.6f, \"quadratic_over_chunked\": %.2f, "
               "\"chunked_per_token_vs_T256\": %.2f, \"chunked_fwd_bwd_s\": %.6f}\n",
               (long long)T, (long long)H, (long long)P, (long long)N, (long long)G,
               (long long)chunk, ctx.nthreads, tq, tc, tq / tc, tc / (double)T / first, tb);
        fflush(stdout);
        bufs_free(&b);
    }
    return 0;
}
