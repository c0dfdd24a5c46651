/* SSD (kernels/ssd.h): the quadratic, chunked and step forms against a float64 recurrence
 * written here; the matrix output against a float64 materialisation; the chunked backward
 * against the float64 gradient of the quadratic form and against central differences. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/ssd.h"
#include "tests/test_util.h"

#define TOL 1e-5

static sd_ctx g_ctx;
static uint64_t g_seed = 20261124;

enum { E_QUAD, E_CHUNK, E_STEP, E_FINAL, E_SPLIT, E_MATRIX, E_GRAD_QUAD, E_GRAD_FD, E_FD_REF,
       E_MATRIX_GRAD, E_COUNT };
static const char *g_err_name[E_COUNT] = {
    "quadratic y", "chunked y", "step y", "final state", "split state", "matrix M",
    "grad vs quad64", "grad vs fd", "quad64 vs fd", "matrix grad vs fd"};
static double g_err[E_COUNT];

static void note_err(int which, double e) {
    if (!(e <= g_err[which])) g_err[which] = e;
}

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) abort();
    return p;
}
static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}

/* One test problem: sizes, the options and the inputs. */
typedef struct {
    int64_t B, T, H, P, G, N;
    int has_dt, has_D, has_init;
    float *x, *dt, *loga, *Bm, *Cm, *D, *init;
} problem;

static size_t n_x(const problem *p) { return (size_t)(p->B * p->T * p->H * p->P); }
static size_t n_bt_h(const problem *p) { return (size_t)(p->B * p->T * p->H); }
static size_t n_bc(const problem *p) { return (size_t)(p->B * p->T * p->G * p->N); }
static size_t n_state(const problem *p) { return (size_t)(p->B * p->H * p->P * p->N); }

static problem make_problem(int64_t B, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N,
                            int has_dt, int has_D, int has_init, float loga_lo, float loga_hi) {
    problem p = {B, T, H, P, G, N, has_dt, has_D, has_init, 0, 0, 0, 0, 0, 0, 0};
    p.x = falloc(n_x(&p));
    p.dt = falloc(n_bt_h(&p));
    p.loga = falloc(n_bt_h(&p));
    p.Bm = falloc(n_bc(&p));
    p.Cm = falloc(n_bc(&p));
    p.D = falloc((size_t)H);
    p.init = falloc(n_state(&p));
    float sc = 1.0f / sqrtf((float)N);
    test_fill(p.x, n_x(&p), &g_seed, -1, 1);
    test_fill(p.dt, n_bt_h(&p), &g_seed, 0.1f, 1.0f);
    test_fill(p.loga, n_bt_h(&p), &g_seed, loga_lo, loga_hi);
    test_fill(p.Bm, n_bc(&p), &g_seed, -sc, sc);
    test_fill(p.Cm, n_bc(&p), &g_seed, -sc, sc);
    test_fill(p.D, (size_t)H, &g_seed, -1, 1);
    test_fill(p.init, n_state(&p), &g_seed, -1, 1);
    return p;
}

static void free_problem(problem *p) {
    free(p->x), free(p->dt), free(p->loga), free(p->Bm), free(p->Cm), free(p->D), free(p->init);
}

/* ---- float64 references ---------------------------------------------------------------- */

/* The inputs in double (perturbed by the finite differences). */
typedef struct {
    double *x, *dt, *loga, *Bm, *Cm, *D, *init;
} problem64;

static double *to64(const float *a, size_t n) {
    double *r = dalloc(n);
    for (size_t i = 0; i < n; i++) r[i] = a[i];
    return r;
}

static problem64 make64(const problem *p) {
    problem64 q = {to64(p->x, n_x(p)), to64(p->dt, n_bt_h(p)), to64(p->loga, n_bt_h(p)),
                   to64(p->Bm, n_bc(p)), to64(p->Cm, n_bc(p)), to64(p->D, (size_t)p->H),
                   to64(p->init, n_state(p))};
    return q;
}

static void free64(problem64 *q) {
    free(q->x), free(q->dt), free(q->loga), free(q->Bm), free(q->Cm), free(q->D), free(q->init);
}

/* The recurrence S_t = exp(loga_t) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t + D x_t, in
 * double.  y [B, T, H, P]; Sf [B, H, P, N] (may be NULL). */
static void ref_recurrence(double *y, double *Sf, const problem *p, const problem64 *q) {
    int64_t B = p->B, T = p->T, H = p->H, P = p->P, G = p->G, N = p->N;
    double *S = dalloc((size_t)(P * N));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            int64_t g = h / (H / G);
            for (int64_t i = 0; i < P * N; i++)
                S[i] = p->has_init ? q->init[(b * H + h) * P * N + i] : 0.0;
            for (int64_t t = 0; t < T; t++) {
                int64_t r = (b * T + t) * H + h;
                double a = exp(q->loga[r]), dt = p->has_dt ? q->dt[r] : 1.0;
                const double *xr = q->x + r * P, *Br = q->Bm + ((b * T + t) * G + g) * N;
                const double *Cr = q->Cm + ((b * T + t) * G + g) * N;
                for (int64_t pp = 0; pp < P; pp++) {
                    double acc = 0;
                    for (int64_t n = 0; n < N; n++) {
                        double *s = S + pp * N + n;
                        *s = a * *s + dt * xr[pp] * Br[n];
                        acc += *s * Cr[n];
                    }
                    y[r * P + pp] = acc + (p->has_D ? q->D[h] * xr[pp] : 0.0);
                }
            }
            if (Sf) memcpy(Sf + (b * H + h) * P * N, S, (size_t)(P * N) * sizeof *S);
        }
    free(S);
}

/* M[b, h, t, s] = (C_t . B_s) exp(sum_{k=s+1..t} loga_k) dt_s, s <= t (direct sums). */
static void ref_matrix(double *M, const problem *p, const problem64 *q) {
    int64_t B = p->B, T = p->T, H = p->H, G = p->G, N = p->N;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            int64_t g = h / (H / G);
            for (int64_t t = 0; t < T; t++) {
                double seg = 0.0; /* sum_{k=s+1..t} loga_k, grown as s falls */
                for (int64_t s = t; s >= 0; s--) {
                    if (s < t) seg += q->loga[(b * T + s + 1) * H + h];
                    double cb = 0;
                    for (int64_t n = 0; n < N; n++)
                        cb += q->Cm[((b * T + t) * G + g) * N + n] * q->Bm[((b * T + s) * G + g) * N + n];
                    double dts = p->has_dt ? q->dt[(b * T + s) * H + h] : 1.0;
                    M[((b * H + h) * T + t) * T + s] = cb * exp(seg) * dts;
                }
                for (int64_t s = t + 1; s < T; s++) M[((b * H + h) * T + t) * T + s] = 0.0;
            }
        }
}

/* ---- calling the op ---------------------------------------------------------------------- */

typedef struct {
    sd_tensor x, dt, loga, Bm, Cm, D, init;
} problem_tensors;

static problem_tensors views(const problem *p) {
    int64_t sx[4] = {p->B, p->T, p->H, p->P}, sh[3] = {p->B, p->T, p->H};
    int64_t sb[4] = {p->B, p->T, p->G, p->N}, sd[1] = {p->H}, ss[4] = {p->B, p->H, p->P, p->N};
    problem_tensors v;
    v.x = sd_tensor_view(SD_F32, p->x, 4, sx);
    v.dt = sd_tensor_view(SD_F32, p->dt, 3, sh);
    v.loga = sd_tensor_view(SD_F32, p->loga, 3, sh);
    v.Bm = sd_tensor_view(SD_F32, p->Bm, 4, sb);
    v.Cm = sd_tensor_view(SD_F32, p->Cm, 4, sb);
    v.D = sd_tensor_view(SD_F32, p->D, 1, sd);
    v.init = sd_tensor_view(SD_F32, p->init, 4, ss);
    return v;
}

#define OPT(p, flag, t) ((p)->flag ? &(t) : NULL)

static int run_chunked(const problem *p, float *y, float *final, int64_t chunk) {
    problem_tensors v = views(p);
    int64_t sx[4] = {p->B, p->T, p->H, p->P}, ss[4] = {p->B, p->H, p->P, p->N};
    sd_tensor ty = sd_tensor_view(SD_F32, y, 4, sx), tf = sd_tensor_view(SD_F32, final, 4, ss);
    return sd_ssd_chunked(&g_ctx, &ty, &v.x, OPT(p, has_dt, v.dt), &v.loga, &v.Bm, &v.Cm,
                          OPT(p, has_D, v.D), chunk, OPT(p, has_init, v.init),
                          final ? &tf : NULL);
}

/* Copies rows [t0, t0 + len) of a [B, T, inner] array into [B, len, inner]. */
static float *slice_t(const float *a, int64_t B, int64_t T, int64_t inner, int64_t t0,
                      int64_t len) {
    float *r = falloc((size_t)(B * len * inner));
    for (int64_t b = 0; b < B; b++)
        memcpy(r + b * len * inner, a + (b * T + t0) * inner, (size_t)(len * inner) * sizeof *r);
    return r;
}

/* The step form token by token from the initial state (or zeros); y [B, T, H, P]. */
static void run_steps(const problem *p, float *y, float *state) {
    int64_t B = p->B, T = p->T, H = p->H, P = p->P, G = p->G, N = p->N;
    if (p->has_init) memcpy(state, p->init, n_state(p) * sizeof *state);
    else memset(state, 0, n_state(p) * sizeof *state);
    int64_t sx[3] = {B, H, P}, sh[2] = {B, H}, sb[3] = {B, G, N}, sd[1] = {H};
    int64_t ss[4] = {B, H, P, N};
    sd_tensor tD = sd_tensor_view(SD_F32, p->D, 1, sd), tS = sd_tensor_view(SD_F32, state, 4, ss);
    float *yt = falloc((size_t)(B * H * P));
    for (int64_t t = 0; t < T; t++) {
        float *xt = slice_t(p->x, B, T, H * P, t, 1), *dtt = slice_t(p->dt, B, T, H, t, 1);
        float *lt = slice_t(p->loga, B, T, H, t, 1), *bt = slice_t(p->Bm, B, T, G * N, t, 1);
        float *ct = slice_t(p->Cm, B, T, G * N, t, 1);
        sd_tensor tx = sd_tensor_view(SD_F32, xt, 3, sx), ty = sd_tensor_view(SD_F32, yt, 3, sx);
        sd_tensor tdt = sd_tensor_view(SD_F32, dtt, 2, sh), tl = sd_tensor_view(SD_F32, lt, 2, sh);
        sd_tensor tb = sd_tensor_view(SD_F32, bt, 3, sb), tc = sd_tensor_view(SD_F32, ct, 3, sb);
        CHECK_OK(sd_ssd_step(&g_ctx, &ty, &tx, p->has_dt ? &tdt : NULL, &tl, &tb, &tc,
                             p->has_D ? &tD : NULL, &tS));
        for (int64_t b = 0; b < B; b++)
            memcpy(y + (b * T + t) * H * P, yt + b * H * P, (size_t)(H * P) * sizeof *y);
        free(xt), free(dtt), free(lt), free(bt), free(ct);
    }
    free(yt);
}

static void check_vs(int which, const char *what, const char *form, const float *got,
                     const double *ref, size_t n) {
    double e = test_rel_err(got, ref, n);
    note_err(which, e);
    CHECK(e < TOL, "%s: %s: relative error %.3g", what, form, e);
}

/* Quadratic (with M when T is small), chunked and step against the float64 recurrence. */
static void test_forms(const char *what, problem *p, int64_t chunk) {
    size_t nx = n_x(p), ns = n_state(p);
    problem64 q = make64(p);
    double *yref = dalloc(nx), *sref = dalloc(ns);
    ref_recurrence(yref, sref, p, &q);
    float *y = falloc(nx), *fs = falloc(ns);

    test_poison(y, nx), test_poison(fs, ns);
    CHECK_OK(run_chunked(p, y, fs, chunk));
    check_vs(E_CHUNK, what, "chunked", y, yref, nx);
    check_vs(E_FINAL, what, "chunked final state", fs, sref, ns);

    test_poison(y, nx), test_poison(fs, ns);
    run_steps(p, y, fs);
    check_vs(E_STEP, what, "step", y, yref, nx);
    check_vs(E_FINAL, what, "step final state", fs, sref, ns);

    if (!p->has_init) { /* the quadratic form starts from zeros */
        problem_tensors v = views(p);
        int64_t sx[4] = {p->B, p->T, p->H, p->P}, sm[4] = {p->B, p->H, p->T, p->T};
        int with_m = p->T <= 256;
        size_t nm = (size_t)(p->B * p->H * p->T * p->T);
        float *M = with_m ? falloc(nm) : NULL;
        if (M) test_poison(M, nm);
        sd_tensor ty = sd_tensor_view(SD_F32, y, 4, sx), tm = sd_tensor_view(SD_F32, M, 4, sm);
        test_poison(y, nx);
        CHECK_OK(sd_ssd_quadratic(&g_ctx, &ty, &v.x, OPT(p, has_dt, v.dt), &v.loga, &v.Bm,
                                  &v.Cm, OPT(p, has_D, v.D), M ? &tm : NULL));
        check_vs(E_QUAD, what, "quadratic", y, yref, nx);
        if (M) {
            double *Mref = dalloc(nm);
            ref_matrix(Mref, p, &q);
            check_vs(E_MATRIX, what, "matrix", M, Mref, nm);
            free(Mref);
        }
        free(M);
    }
    free(y), free(fs), free(yref), free(sref);
    free64(&q);
}

/* Chunked on [0, T) equals chunked on [0, T1) then [T1, T) with the state passed on. */
static void test_split(problem *p, int64_t T1, int64_t chunk) {
    int64_t B = p->B, T = p->T, H = p->H, P = p->P, G = p->G, N = p->N;
    size_t nx = n_x(p), ns = n_state(p);
    float *y = falloc(nx), *fs = falloc(ns), *y2 = falloc(nx), *mid = falloc(ns), *fs2 = falloc(ns);
    CHECK_OK(run_chunked(p, y, fs, chunk));
    problem parts[2];
    int64_t t0s[2] = {0, T1}, lens[2] = {T1, T - T1};
    for (int k = 0; k < 2; k++) {
        problem *s = &parts[k];
        *s = *p;
        s->T = lens[k];
        s->x = slice_t(p->x, B, T, H * P, t0s[k], lens[k]);
        s->dt = slice_t(p->dt, B, T, H, t0s[k], lens[k]);
        s->loga = slice_t(p->loga, B, T, H, t0s[k], lens[k]);
        s->Bm = slice_t(p->Bm, B, T, G * N, t0s[k], lens[k]);
        s->Cm = slice_t(p->Cm, B, T, G * N, t0s[k], lens[k]);
    }
    parts[1].init = mid, parts[1].has_init = 1;
    float *ya = falloc((size_t)(B * T1 * H * P)), *yb = falloc((size_t)(B * (T - T1) * H * P));
    CHECK_OK(run_chunked(&parts[0], ya, mid, chunk));
    CHECK_OK(run_chunked(&parts[1], yb, fs2, chunk));
    for (int64_t b = 0; b < B; b++) {
        memcpy(y2 + b * T * H * P, ya + b * T1 * H * P, (size_t)(T1 * H * P) * sizeof *y2);
        memcpy(y2 + (b * T + T1) * H * P, yb + b * (T - T1) * H * P,
               (size_t)((T - T1) * H * P) * sizeof *y2);
    }
    double *yd = to64(y, nx), *fd = to64(fs, ns);
    check_vs(E_SPLIT, "split", "y", y2, yd, nx);
    check_vs(E_SPLIT, "split", "final state", fs2, fd, ns);
    for (int k = 0; k < 2; k++)
        free(parts[k].x), free(parts[k].dt), free(parts[k].loga), free(parts[k].Bm),
            free(parts[k].Cm);
    free(y), free(fs), free(y2), free(mid), free(fs2), free(ya), free(yb), free(yd), free(fd);
}

static void test_forward(void) {
    struct {
        const char *what;
        int64_t B, T, H, P, G, N, chunk;
        int dt, D, init;
        float lo, hi;
    } cases[] = {
        {"basic", 2, 100, 4, 8, 2, 16, 32, 1, 1, 0, -1.0f, 0.0f},
        {"no dt, no D", 2, 100, 4, 8, 4, 16, 32, 0, 0, 0, -1.0f, 0.0f},
        {"G = 1", 1, 77, 4, 6, 1, 10, 16, 1, 1, 0, -0.5f, 0.0f},
        {"chunk 1", 2, 37, 2, 5, 1, 7, 1, 1, 1, 0, -1.0f, 0.0f},
        {"chunk > T", 2, 37, 2, 5, 2, 7, 64, 1, 0, 0, -1.0f, 0.0f},
        {"chunk = T", 1, 64, 2, 5, 2, 7, 64, 0, 1, 0, -1.0f, 0.0f},
        {"strong decay", 2, 150, 4, 8, 2, 16, 64, 1, 1, 0, -6.0f, -4.0f},
        {"near-zero decay", 2, 150, 4, 8, 2, 16, 64, 1, 1, 0, -2e-4f, 0.0f},
        {"init state", 2, 90, 4, 8, 2, 16, 32, 1, 1, 1, -1.0f, 0.0f},
        {"init, no dt", 1, 90, 4, 8, 1, 16, 25, 0, 0, 1, -0.3f, 0.0f},
        {"T = 2048", 1, 2048, 2, 4, 1, 8, 64, 1, 1, 0, -0.1f, 0.0f},
        {"T = 2048 near-zero", 1, 2048, 2, 4, 2, 8, 100, 0, 1, 0, -2e-4f, 0.0f},
        {"T = 2048 strong", 1, 2048, 4, 4, 2, 8, 128, 1, 0, 0, -6.0f, -4.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        problem p = make_problem(cases[i].B, cases[i].T, cases[i].H, cases[i].P, cases[i].G,
                                 cases[i].N, cases[i].dt, cases[i].D, cases[i].init,
                                 cases[i].lo, cases[i].hi);
        test_forms(cases[i].what, &p, cases[i].chunk);
        free_problem(&p);
    }
    problem p = make_problem(2, 130, 4, 8, 2, 16, 1, 1, 1, -0.5f, 0.0f);
    test_split(&p, 47, 32);
    test_split(&p, 64, 32);
    p.has_init = 0;
    test_split(&p, 1, 16);
    free_problem(&p);
}

/* Same inputs, same thread count: bit-identical outputs. */
static void test_determinism(void) {
    problem p = make_problem(2, 300, 4, 16, 2, 16, 1, 1, 1, -1.0f, 0.0f);
    size_t nx = n_x(&p), ns = n_state(&p);
    float *y1 = falloc(nx), *y2 = falloc(nx), *f1 = falloc(ns), *f2 = falloc(ns);
    CHECK_OK(run_chunked(&p, y1, f1, 64));
    CHECK_OK(run_chunked(&p, y2, f2, 64));
    CHECK(!memcmp(y1, y2, nx * sizeof *y1) && !memcmp(f1, f2, ns * sizeof *f1),
          "chunked forward differs between two runs");
    free(y1), free(y2), free(f1), free(f2);
    free_problem(&p);
}

static void test_bad_args(void) {
    problem p = make_problem(1, 8, 4, 2, 3, 2, 1, 1, 0, -1.0f, 0.0f); /* G = 3 does not divide H */
    float *y = falloc(n_x(&p));
    int rc = run_chunked(&p, y, NULL, 4);
    CHECK(rc == SD_ERR_INTERNAL && strstr(sd_errmsg(), "dividing H"), "rc %d: %s", rc, sd_errmsg());
    free(y);
    free_problem(&p);
    p = make_problem(1, 8, 4, 2, 2, 2, 1, 1, 0, -1.0f, 0.0f);
    y = falloc(n_x(&p));
    rc = run_chunked(&p, y, NULL, 0);
    CHECK(rc == SD_ERR_INTERNAL && strstr(sd_errmsg(), "chunk 0"), "rc %d: %s", rc, sd_errmsg());
    free(y);
    free_problem(&p);
}


/* ---- backward ------------------------------------------------------------------------------ */

/* Gradients of every input, in double (reference) or float (the op). */
typedef struct {
    double *dx, *ddt, *dloga, *dB, *dC, *dD, *dinit;
} grads64;

static grads64 grads64_alloc(const problem *p) {
    grads64 g = {dalloc(n_x(p)), dalloc(n_bt_h(p)), dalloc(n_bt_h(p)), dalloc(n_bc(p)),
                 dalloc(n_bc(p)), dalloc((size_t)p->H), dalloc(n_state(p))};
    return g;
}
static void grads64_free(grads64 *g) {
    free(g->dx), free(g->ddt), free(g->dloga), free(g->dB), free(g->dC), free(g->dD),
        free(g->dinit);
}

static double dot64(const double *a, const double *b, int64_t n, int64_t sb) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i * sb];
    return s;
}

/* The loss sum(wy o y) + sum(wS o S_final) in double through the recurrence. */
static double ref_loss(const problem *p, const problem64 *q, const float *wy, const float *wS) {
    size_t nx = n_x(p), ns = n_state(p);
    double *y = dalloc(nx), *Sf = dalloc(ns), L = 0;
    ref_recurrence(y, Sf, p, q);
    for (size_t i = 0; i < nx; i++) L += wy[i] * y[i];
    for (size_t i = 0; i < ns; i++) L += wS[i] * Sf[i];
    free(y), free(Sf);
    return L;
}

/* The quadratic-form terms of the gradient of one (b, h) with dy = wy:
 * y_t = sum_{s<=t} (C_t . B_s) exp(cs_t - cs_s) dt_s x_s, cs inclusive cumulative loga. */
static void ref_grad_matrix_terms(grads64 *g, double *dcs, const double *cs, const problem *p,
                                  const problem64 *q, const double *wy, int64_t b, int64_t h) {
    int64_t T = p->T, H = p->H, P = p->P, G = p->G, N = p->N, gi = h / (H / G);
    for (int64_t t = 0; t < T; t++)
        for (int64_t s = 0; s <= t; s++) {
            int64_t rt = (b * T + t) * H + h, rs = (b * T + s) * H + h;
            const double *Ct = q->Cm + ((b * T + t) * G + gi) * N;
            const double *Bs = q->Bm + ((b * T + s) * G + gi) * N;
            double cb = dot64(Ct, Bs, N, 1), E = exp(cs[t] - cs[s]);
            double dts = p->has_dt ? q->dt[rs] : 1.0, gts = dot64(wy + rt * P, q->x + rs * P, P, 1);
            double M = cb * E * dts;
            for (int64_t k = 0; k < P; k++) g->dx[rs * P + k] += M * wy[rt * P + k];
            if (p->has_dt) g->ddt[rs] += cb * E * gts;
            for (int64_t n = 0; n < N; n++) {
                g->dC[((b * T + t) * G + gi) * N + n] += E * dts * gts * Bs[n];
                g->dB[((b * T + s) * G + gi) * N + n] += E * dts * gts * Ct[n];
            }
            dcs[t] += M * gts;
            dcs[s] -= M * gts;
        }
}

/* The terms of the initial state (y_t += exp(cs_t) S0 C_t) and of the final state
 * (S_f = exp(cs_last) S0 + sum_s exp(cs_last - cs_s) dt_s x_s B_s^T, weighted by wS). */
static void ref_grad_state_terms(grads64 *g, double *dcs, const double *cs, const problem *p,
                                 const problem64 *q, const double *wy, const double *wS,
                                 int64_t b, int64_t h) {
    int64_t T = p->T, H = p->H, P = p->P, G = p->G, N = p->N, gi = h / (H / G);
    const double *S0 = q->init + (b * H + h) * P * N, *W = wS + (b * H + h) * P * N;
    double *dS0 = g->dinit + (b * H + h) * P * N, cl = cs[T - 1], el = exp(cl);
    for (int64_t t = 0; t < T && p->has_init; t++) {
        int64_t r = (b * T + t) * H + h;
        const double *Ct = q->Cm + ((b * T + t) * G + gi) * N, *dy = wy + r * P;
        double e = exp(cs[t]);
        for (int64_t k = 0; k < P; k++) {
            dcs[t] += e * dy[k] * dot64(S0 + k * N, Ct, N, 1);
            for (int64_t n = 0; n < N; n++) {
                g->dC[((b * T + t) * G + gi) * N + n] += e * S0[k * N + n] * dy[k];
                dS0[k * N + n] += e * dy[k] * Ct[n];
            }
        }
    }
    for (int64_t i = 0; i < P * N; i++) {
        dS0[i] += el * W[i];
        if (p->has_init) dcs[T - 1] += el * W[i] * S0[i];
    }
    for (int64_t s = 0; s < T; s++) {
        int64_t r = (b * T + s) * H + h;
        const double *Bs = q->Bm + ((b * T + s) * G + gi) * N, *xs = q->x + r * P;
        double E = exp(cl - cs[s]), dts = p->has_dt ? q->dt[r] : 1.0, rr = 0;
        for (int64_t k = 0; k < P; k++) {
            double v = dot64(W + k * N, Bs, N, 1); /* (wS B_s)_k */
            rr += xs[k] * v;
            g->dx[r * P + k] += E * dts * v;
        }
        for (int64_t n = 0; n < N; n++)
            g->dB[((b * T + s) * G + gi) * N + n] += E * dts * dot64(xs, W + n, P, N);
        if (p->has_dt) g->ddt[r] += E * rr;
        dcs[T - 1] += E * dts * rr;
        dcs[s] -= E * dts * rr;
    }
}

/* The float64 gradient of ref_loss through the quadratic form. */
static void ref_grad(grads64 *g, const problem *p, const problem64 *q, const double *wy,
                     const double *wS) {
    int64_t T = p->T, H = p->H, P = p->P;
    double *cs = dalloc((size_t)T), *dcs = dalloc((size_t)T);
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < H; h++) {
            double acc = 0;
            for (int64_t t = 0; t < T; t++) cs[t] = acc += q->loga[(b * T + t) * H + h], dcs[t] = 0;
            ref_grad_matrix_terms(g, dcs, cs, p, q, wy, b, h);
            ref_grad_state_terms(g, dcs, cs, p, q, wy, wS, b, h);
            acc = 0;
            for (int64_t t = T - 1; t >= 0; t--) g->dloga[(b * T + t) * H + h] = acc += dcs[t];
            for (int64_t t = 0; t < T && p->has_D; t++) {
                int64_t r = (b * T + t) * H + h;
                g->dD[h] += dot64(wy + r * P, q->x + r * P, P, 1);
                for (int64_t k = 0; k < P; k++) g->dx[r * P + k] += q->D[h] * wy[r * P + k];
            }
        }
    free(cs), free(dcs);
}

/* The op's gradients (float), zeroed first; entries the problem lacks stay NULL. */
typedef struct {
    float *dx, *ddt, *dloga, *dB, *dC, *dD, *dinit;
} grads32;

static int run_backward(const problem *p, grads32 *g, const float *wy, const float *wS,
                        int64_t chunk) {
    problem_tensors v = views(p);
    int64_t sx[4] = {p->B, p->T, p->H, p->P}, sh[3] = {p->B, p->T, p->H};
    int64_t sb[4] = {p->B, p->T, p->G, p->N}, sd[1] = {p->H}, ss[4] = {p->B, p->H, p->P, p->N};
    sd_tensor tdy = sd_tensor_view(SD_F32, (void *)wy, 4, sx);
    sd_tensor tws = sd_tensor_view(SD_F32, (void *)wS, 4, ss);
    sd_tensor tdx = sd_tensor_view(SD_F32, g->dx, 4, sx), tddt = sd_tensor_view(SD_F32, g->ddt, 3, sh);
    sd_tensor tdl = sd_tensor_view(SD_F32, g->dloga, 3, sh);
    sd_tensor tdB = sd_tensor_view(SD_F32, g->dB, 4, sb), tdC = sd_tensor_view(SD_F32, g->dC, 4, sb);
    sd_tensor tdD = sd_tensor_view(SD_F32, g->dD, 1, sd), tdi = sd_tensor_view(SD_F32, g->dinit, 4, ss);
    return sd_ssd_chunked_backward(&g_ctx, &tdx, p->has_dt ? &tddt : NULL, &tdl, &tdB, &tdC,
                                   p->has_D ? &tdD : NULL, &tdy, &v.x, OPT(p, has_dt, v.dt),
                                   &v.loga, &v.Bm, &v.Cm, OPT(p, has_D, v.D), chunk,
                                   OPT(p, has_init, v.init), &tws, &tdi);
}

/* One input of the problem: its float values, double copy and both gradients. */
typedef struct {
    const char *name;
    int present;
    size_t n;
    double *q;   /* the double copy perturbed by the finite differences */
    double *ref; /* quadratic-form gradient */
    float *got;  /* the op's gradient */
} grad_slot;

/* Central differences on up to 12 elements of the slot: checks both gradients. */
static void check_fd(const char *what, grad_slot *s, const problem *p, const problem64 *q,
                     const float *wy, const float *wS) {
    const double h = 1e-4;
    double num_got = 0, num_ref = 0, den = 0;
    size_t step = s->n / 12 + 1;
    for (size_t i = (size_t)(test_rng_u64(&g_seed) % step); i < s->n; i += step) {
        double keep = s->q[i];
        s->q[i] = keep + h;
        double lp = ref_loss(p, q, wy, wS);
        s->q[i] = keep - h;
        double lm = ref_loss(p, q, wy, wS);
        s->q[i] = keep;
        double fd = (lp - lm) / (2 * h);
        if (fabs(fd) > den) den = fabs(fd);
        if (fabs(fd - s->got[i]) > num_got) num_got = fabs(fd - s->got[i]);
        if (fabs(fd - s->ref[i]) > num_ref) num_ref = fabs(fd - s->ref[i]);
    }
    double eg = num_got / (den + 1e-30), er = num_ref / (den + 1e-30);
    note_err(E_GRAD_FD, eg), note_err(E_FD_REF, er);
    CHECK(eg < 1e-3, "%s: d%s vs central differences: relative error %.3g", what, s->name, eg);
    CHECK(er < 1e-6, "%s: d%s of the float64 quadratic form vs central differences: %.3g", what,
          s->name, er);
}

static void test_backward_case(const char *what, problem *p, int64_t chunk, int with_fd) {
    size_t nx = n_x(p), ns = n_state(p), nh = n_bt_h(p), nb = n_bc(p);
    float *wy = falloc(nx), *wS = falloc(ns);
    test_fill(wy, nx, &g_seed, -1, 1);
    test_fill(wS, ns, &g_seed, -1, 1);
    problem64 q = make64(p);
    double *wy64 = to64(wy, nx), *wS64 = to64(wS, ns);
    grads64 ref = grads64_alloc(p);
    ref_grad(&ref, p, &q, wy64, wS64);
    grads32 got = {falloc(nx), falloc(nh), falloc(nh), falloc(nb), falloc(nb),
                   falloc((size_t)p->H), falloc(ns)};
    CHECK_OK(run_backward(p, &got, wy, wS, chunk));
    grad_slot slots[] = {
        {"x", 1, nx, q.x, ref.dx, got.dx},
        {"dt", p->has_dt, nh, q.dt, ref.ddt, got.ddt},
        {"loga", 1, nh, q.loga, ref.dloga, got.dloga},
        {"B", 1, nb, q.Bm, ref.dB, got.dB},
        {"C", 1, nb, q.Cm, ref.dC, got.dC},
        {"D", p->has_D, (size_t)p->H, q.D, ref.dD, got.dD},
        {"init", p->has_init, ns, q.init, ref.dinit, got.dinit},
    };
    for (size_t k = 0; k < sizeof slots / sizeof slots[0]; k++) {
        grad_slot *s = &slots[k];
        if (!s->present) continue;
        double e = test_rel_err(s->got, s->ref, s->n);
        note_err(E_GRAD_QUAD, e);
        CHECK(e < 2e-5, "%s: d%s vs float64 quadratic form: relative error %.3g", what, s->name, e);
        if (with_fd) check_fd(what, s, p, &q, wy, wS);
    }
    free(got.dx), free(got.ddt), free(got.dloga), free(got.dB), free(got.dC), free(got.dD),
        free(got.dinit);
    grads64_free(&ref);
    free64(&q);
    free(wy), free(wS), free(wy64), free(wS64);
}

static void test_backward(void) {
    struct {
        const char *what;
        int64_t B, T, H, P, G, N, chunk;
        int dt, D, init, fd;
        float lo, hi;
    } cases[] = {
        {"bw basic", 2, 37, 4, 3, 2, 5, 8, 1, 1, 1, 1, -1.0f, 0.0f},
        {"bw no dt, D, init", 1, 29, 2, 3, 1, 4, 8, 0, 0, 0, 1, -1.0f, 0.0f},
        {"bw chunk 1", 1, 13, 2, 3, 2, 4, 1, 1, 1, 1, 1, -1.0f, 0.0f},
        {"bw chunk > T", 2, 13, 4, 3, 1, 4, 64, 1, 1, 1, 1, -1.0f, 0.0f},
        {"bw strong decay", 1, 33, 2, 3, 2, 4, 16, 1, 1, 1, 1, -6.0f, -4.0f},
        {"bw near-zero decay", 1, 33, 2, 3, 1, 4, 10, 1, 1, 1, 1, -2e-4f, 0.0f},
        {"bw T 300", 1, 300, 4, 8, 2, 8, 64, 1, 1, 1, 0, -0.3f, 0.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        problem p = make_problem(cases[i].B, cases[i].T, cases[i].H, cases[i].P, cases[i].G,
                                 cases[i].N, cases[i].dt, cases[i].D, cases[i].init,
                                 cases[i].lo, cases[i].hi);
        test_backward_case(cases[i].what, &p, cases[i].chunk, cases[i].fd);
        free_problem(&p);
    }
}

/* The backward adds: a second call doubles every gradient; and it is bit-identical run to run. */
static void test_backward_accumulates(void) {
    problem p = make_problem(2, 70, 4, 4, 2, 6, 1, 1, 1, -1.0f, 0.0f);
    size_t nx = n_x(&p), ns = n_state(&p), nh = n_bt_h(&p), nb = n_bc(&p);
    float *wy = falloc(nx), *wS = falloc(ns);
    test_fill(wy, nx, &g_seed, -1, 1);
    test_fill(wS, ns, &g_seed, -1, 1);
    grads32 a = {falloc(nx), falloc(nh), falloc(nh), falloc(nb), falloc(nb), falloc(4), falloc(ns)};
    grads32 c = {falloc(nx), falloc(nh), falloc(nh), falloc(nb), falloc(nb), falloc(4), falloc(ns)};
    CHECK_OK(run_backward(&p, &a, wy, wS, 16));
    CHECK_OK(run_backward(&p, &c, wy, wS, 16));
    CHECK(!memcmp(a.dB, c.dB, nb * sizeof(float)) && !memcmp(a.dloga, c.dloga, nh * sizeof(float)),
          "backward differs between two runs");
    CHECK_OK(run_backward(&p, &c, wy, wS, 16));
    double *twice = dalloc(nb);
    for (size_t i = 0; i < nb; i++) twice[i] = 2.0 * a.dC[i];
    double e = test_rel_err(c.dC, twice, nb);
    CHECK(e < 1e-6, "a second backward call does not add: %.3g", e);
    free(twice);
    float *ga[] = {a.dx, a.ddt, a.dloga, a.dB, a.dC, a.dD, a.dinit};
    float *gc[] = {c.dx, c.ddt, c.dloga, c.dB, c.dC, c.dD, c.dinit};
    for (int k = 0; k < 7; k++) free(ga[k]), free(gc[k]);
    free(wy), free(wS);
    free_problem(&p);
}

/* sd_ssd_matrix_backward against central differences of sum(dM o M) in float64. */
static void test_matrix_backward_case(const char *what, problem *p) {
    int64_t B = p->B, T = p->T, H = p->H;
    size_t nm = (size_t)(B * H * T * T), nh = n_bt_h(p), nb = n_bc(p);
    float *dM = falloc(nm);
    test_fill(dM, nm, &g_seed, -1, 1); /* entries above the diagonal must be ignored */
    problem64 q = make64(p);
    float *ddt = falloc(nh), *dl = falloc(nh), *dB = falloc(nb), *dC = falloc(nb);
    problem_tensors v = views(p);
    int64_t sh[3] = {B, T, H}, sb[4] = {B, T, p->G, p->N}, sm[4] = {B, H, T, T};
    sd_tensor tddt = sd_tensor_view(SD_F32, ddt, 3, sh), tdl = sd_tensor_view(SD_F32, dl, 3, sh);
    sd_tensor tdB = sd_tensor_view(SD_F32, dB, 4, sb), tdC = sd_tensor_view(SD_F32, dC, 4, sb);
    sd_tensor tdM = sd_tensor_view(SD_F32, dM, 4, sm);
    CHECK_OK(sd_ssd_matrix_backward(&g_ctx, p->has_dt ? &tddt : NULL, &tdl, &tdB, &tdC, &tdM,
                                    OPT(p, has_dt, v.dt), &v.loga, &v.Bm, &v.Cm));
    struct { const char *name; int present; size_t n; double *q; float *got; } slots[] = {
        {"dt", p->has_dt, nh, q.dt, ddt}, {"loga", 1, nh, q.loga, dl},
        {"B", 1, nb, q.Bm, dB}, {"C", 1, nb, q.Cm, dC}};
    double *M = dalloc(nm);
    for (size_t k = 0; k < 4; k++) {
        if (!slots[k].present) continue;
        double num = 0, den = 0;
        size_t step = slots[k].n / 16 + 1;
        for (size_t i = (size_t)(test_rng_u64(&g_seed) % step); i < slots[k].n; i += step) {
            double keep = slots[k].q[i], L[2] = {0, 0};
            for (int side = 0; side < 2; side++) {
                slots[k].q[i] = keep + (side ? -1e-4 : 1e-4);
                ref_matrix(M, p, &q);
                for (size_t j = 0; j < nm; j++) L[side] += dM[j] * M[j];
            }
            slots[k].q[i] = keep;
            double fd = (L[0] - L[1]) / 2e-4;
            if (fabs(fd) > den) den = fabs(fd);
            if (fabs(fd - slots[k].got[i]) > num) num = fabs(fd - slots[k].got[i]);
        }
        double e = num / (den + 1e-30);
        note_err(E_MATRIX_GRAD, e);
        CHECK(e < 1e-4, "%s: d%s vs central differences: relative error %.3g", what,
              slots[k].name, e);
    }
    free(M), free(dM), free(ddt), free(dl), free(dB), free(dC);
    free64(&q);
}

static void test_matrix_backward(void) {
    problem p = make_problem(2, 19, 4, 1, 2, 5, 1, 0, 0, -1.0f, 0.0f);
    test_matrix_backward_case("matrix bw", &p);
    free_problem(&p);
    p = make_problem(1, 23, 2, 1, 1, 6, 0, 0, 0, -3.0f, 0.0f);
    test_matrix_backward_case("matrix bw, no dt, G = 1", &p);
    free_problem(&p);
}

/* 1 and 2 threads give the same bits: the forward splits only (b, h); the backward takes the
 * per-group path on one thread and the per-head path on two (B * G = 1 < 2). */
static void test_thread_independence(void) {
    problem p = make_problem(1, 200, 4, 8, 1, 8, 1, 1, 1, -1.0f, 0.0f);
    size_t nx = n_x(&p), ns = n_state(&p), nh = n_bt_h(&p), nb = n_bc(&p);
    float *wy = falloc(nx), *wS = falloc(ns), *y[2], *f[2];
    test_fill(wy, nx, &g_seed, -1, 1);
    test_fill(wS, ns, &g_seed, -1, 1);
    grads32 g[2];
    int saved = g_ctx.nthreads;
    for (int k = 0; k < 2; k++) {
        g_ctx.nthreads = k + 1;
        sd_ctx_apply_threads(&g_ctx);
        y[k] = falloc(nx), f[k] = falloc(ns);
        grads32 z = {falloc(nx), falloc(nh), falloc(nh), falloc(nb), falloc(nb), falloc(4), falloc(ns)};
        g[k] = z;
        CHECK_OK(run_chunked(&p, y[k], f[k], 48));
        CHECK_OK(run_backward(&p, &g[k], wy, wS, 48));
    }
    g_ctx.nthreads = saved;
    sd_ctx_apply_threads(&g_ctx);
    CHECK(!memcmp(y[0], y[1], nx * sizeof(float)), "forward differs between 1 and 2 threads");
    CHECK(!memcmp(g[0].dB, g[1].dB, nb * sizeof(float)) &&
              !memcmp(g[0].dC, g[1].dC, nb * sizeof(float)) &&
              !memcmp(g[0].dx, g[1].dx, nx * sizeof(float)) &&
              !memcmp(g[0].dloga, g[1].dloga, nh * sizeof(float)),
          "backward differs between 1 and 2 threads");
    for (int k = 0; k < 2; k++) {
        float *all[] = {y[k], f[k], g[k].dx, g[k].ddt, g[k].dloga, g[k].dB, g[k].dC, g[k].dD,
                        g[k].dinit};
        for (int i = 0; i < 9; i++) free(all[i]);
    }
    free(wy), free(wS);
    free_problem(&p);
}

/* T = 0: the final state is the initial one, and its gradient passes straight through. */
static void test_empty(void) {
    problem p = make_problem(1, 0, 2, 3, 1, 4, 1, 1, 1, -1.0f, 0.0f);
    size_t ns = n_state(&p);
    float *y = falloc(1), *f = falloc(ns), *wS = falloc(ns);
    test_fill(wS, ns, &g_seed, -1, 1);
    CHECK_OK(run_chunked(&p, y, f, 8));
    CHECK(!memcmp(f, p.init, ns * sizeof(float)), "T = 0: final state is not the initial state");
    grads32 g = {falloc(1), falloc(1), falloc(1), falloc(1), falloc(1), falloc(2), falloc(ns)};
    CHECK_OK(run_backward(&p, &g, y, wS, 8));
    CHECK(!memcmp(g.dinit, wS, ns * sizeof(float)), "T = 0: dinit_state is not dfinal_state");
    free(g.dx), free(g.ddt), free(g.dloga), free(g.dB), free(g.dC), free(g.dD), free(g.dinit);
    free(y), free(f), free(wS);
    free_problem(&p);
}

int main(void) {
    sd_ctx_init_cpu(&g_ctx, 0);
    test_forward();
    test_determinism();
    test_bad_args();
    test_backward();
    test_backward_accumulates();
    test_matrix_backward();
    test_thread_independence();
    test_empty();
    for (int i = 0; i < E_COUNT; i++) printf("  max rel err %-16s %.3g\n", g_err_name[i], g_err[i]);
    return test_summary("test_ssd");
}
