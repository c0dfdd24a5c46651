/* Batched sampling from the teacher: see distill/sample_corpus.h.  The layer step follows
 * distill/teacher.c's layer_forward (pre-norm Llama block) with the same ops for every
 * matrix product and norm; only rotary and attention are written here, because each
 * sequence of the batch sits at its own position. */
#include "distill/sample_corpus.h"
#include "common/error.h"
#include "convert/shard.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The attention and sampling loops are built twice on x86-64, for AVX2 + FMA and for the
 * baseline, and the loader picks one (GCC function multiversioning): the default build
 * flags target the baseline, and these loops are where sampling spends its time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__gnu_linux__)
#define SD_HOT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SD_HOT_CLONES
#endif

/* Positions per block of the attention score loop (cache rows are padded to a multiple). */
#define SD_SBLK 16 /* two 8-lane vectors */

typedef struct {
    int B, cap, capa, L, Hq, Hkv, hd, d, I, V, half;
    sd_tensor *kc, *vc;                  /* per layer: keys [B, Hkv, hd, capa] (transposed), values [B, Hkv, capa, hd] */
    float *cos, *sin;                    /* [cap, half] */
    sd_tensor ids;                       /* [B] I32: the token each sequence feeds now */
    sd_tensor x, xn, q, k, v, att, ao, gate, up, logits;
    int *pos;                            /* position of ids[b] */
    uint32_t *doc;                       /* [B, cap] the document so far */
    int *len;
    uint64_t *rng;
    float *probs;                        /* [B, V] */
    int *order;                          /* [B, V] */
    int32_t *next;                       /* [B] sampled token */
    float *scores;                       /* [B, capa] attention scratch */
} decoder;

static void decoder_free(decoder *D) {
    for (int l = 0; l < D->L; l++) {
        if (D->kc) sd_tensor_free(&D->kc[l]);
        if (D->vc) sd_tensor_free(&D->vc[l]);
    }
    sd_tensor *all[] = {&D->ids, &D->x, &D->xn, &D->q, &D->k, &D->v, &D->att, &D->ao, &D->gate, &D->up, &D->logits};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
    void *mem[] = {D->kc, D->vc, D->cos, D->sin, D->pos, D->doc, D->len, D->rng, D->probs, D->order, D->next, D->scores};
    for (size_t i = 0; i < sizeof mem / sizeof mem[0]; i++) free(mem[i]);
    memset(D, 0, sizeof *D);
}

/* cos/sin of (float)pos * inv_freq[i] in fp32, as HF (kernels/rotary.h). */
static int rope_table(decoder *D, const sd_rope_config *r) {
    float *inv = sd_malloc((size_t)(D->half ? D->half : 1) * sizeof(float), "rotary");
    D->cos = sd_malloc((size_t)D->cap * (D->half ? D->half : 1) * sizeof(float), "rotary");
    D->sin = sd_malloc((size_t)D->cap * (D->half ? D->half : 1) * sizeof(float), "rotary");
    int rc = inv && D->cos && D->sin ? (D->half ? sd_rope_inv_freq(r, inv) : SD_OK) : SD_ERR_SYS;
    for (int p = 0; rc == SD_OK && p < D->cap; p++)
        for (int i = 0; i < D->half; i++) {
            float a = (float)p * inv[i];
            D->cos[(size_t)p * D->half + i] = cosf(a);
            D->sin[(size_t)p * D->half + i] = sinf(a);
        }
    free(inv);
    return rc;
}

static int decoder_alloc(decoder *D, const sd_model_config *c, int B, int cap) {
    memset(D, 0, sizeof *D);
    *D = (decoder){.B = B, .cap = cap, .L = c->num_layers, .Hq = c->num_heads, .Hkv = c->num_kv_heads,
                   .hd = c->head_dim, .d = c->hidden_size, .I = c->intermediate_size, .V = c->vocab_size,
                   .half = c->rope.rotary_dim / 2};
    D->capa = (cap + SD_SBLK - 1) / SD_SBLK * SD_SBLK;
    D->kc = sd_calloc((size_t)D->L, sizeof(sd_tensor), "kv cache");
    D->vc = sd_calloc((size_t)D->L, sizeof(sd_tensor), "kv cache");
    if (!D->kc || !D->vc) return SD_ERR_SYS;
    for (int l = 0; l < D->L; l++) {
        SD_TRY(sd_tensor_f32(&D->kc[l], 4, B, D->Hkv, D->hd, D->capa));
        SD_TRY(sd_tensor_f32(&D->vc[l], 4, B, D->Hkv, D->capa, D->hd));
    }
    int64_t ishape[1] = {B};
    SD_TRY(sd_tensor_alloc(&D->ids, SD_I32, 1, ishape));
    SD_TRY(sd_tensor_f32(&D->x, 2, B, D->d, 0, 0));
    SD_TRY(sd_tensor_f32(&D->xn, 2, B, D->d, 0, 0));
    SD_TRY(sd_tensor_f32(&D->q, 2, B, (int64_t)D->Hq * D->hd, 0, 0));
    SD_TRY(sd_tensor_f32(&D->k, 2, B, (int64_t)D->Hkv * D->hd, 0, 0));
    SD_TRY(sd_tensor_f32(&D->v, 2, B, (int64_t)D->Hkv * D->hd, 0, 0));
    SD_TRY(sd_tensor_f32(&D->att, 2, B, (int64_t)D->Hq * D->hd, 0, 0));
    SD_TRY(sd_tensor_f32(&D->ao, 2, B, D->d, 0, 0));
    SD_TRY(sd_tensor_f32(&D->gate, 2, B, D->I, 0, 0));
    SD_TRY(sd_tensor_f32(&D->up, 2, B, D->I, 0, 0));
    SD_TRY(sd_tensor_f32(&D->logits, 2, B, D->V, 0, 0));
    D->pos = sd_calloc((size_t)B, sizeof(int), "sampler");
    D->len = sd_calloc((size_t)B, sizeof(int), "sampler");
    D->rng = sd_calloc((size_t)B, sizeof(uint64_t), "sampler");
    D->next = sd_calloc((size_t)B, sizeof(int32_t), "sampler");
    D->doc = sd_malloc((size_t)B * cap * sizeof(uint32_t), "sampler");
    D->probs = sd_malloc((size_t)B * D->V * sizeof(float), "sampler");
    D->order = sd_malloc((size_t)B * D->V * sizeof(int), "sampler");
    D->scores = sd_malloc((size_t)B * D->capa * sizeof(float), "attention scores");
    if (!D->pos || !D->len || !D->rng || !D->next || !D->doc || !D->probs || !D->order || !D->scores) return SD_ERR_SYS;
    return rope_table(D, &c->rope);
}

/* ---------------------------------------------------------------- one step */

/* Rotates n heads of x (one token) at position p: half-split pairs (i, i + rotary_dim/2) as
 * HF, adjacent pairs when interleaved (kernels/rotary.h). */
static void rotate(const decoder *D, int interleaved, float *x, int n, int p) {
    const float *cs = D->cos + (size_t)p * D->half, *sn = D->sin + (size_t)p * D->half;
    for (int h = 0; h < n; h++) {
        float *y = x + (size_t)h * D->hd;
        for (int i = 0; i < D->half; i++) {
            int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + D->half;
            float x1 = y[a], x2 = y[b];
            y[a] = x1 * cs[i] - x2 * sn[i];
            y[b] = x2 * cs[i] + x1 * sn[i];
        }
    }
}

/* exp(x) for x <= 0 (scores minus their max), in plain arithmetic so that the loops
 * around it vectorise: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2 (n rounded with the
 * 1.5 * 2^23 trick), the degree-6 Taylor polynomial of e^r (relative error below 2e-7), and
 * 2^n built in the exponent bits.  Below -87 the result is 0.  The clamps are arithmetic
 * selects (GCC vectorises those, not a float max): x is pulled into a bounded range so that
 * the conversion to int is defined, and the result then multiplied by 0. */
static inline float exp_neg(float x) {
    float low = x < -87.0f ? 1.0f : 0.0f;
    x = x + low * (-87.0f - x);
    float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f + r * 0.0013888889f)))));
    int32_t k = (int32_t)n;
    k = k < -126 ? -126 : k;
    int32_t e = (k + 127) * (1 << 23);
    float f;
    memcpy(&f, &e, sizeof f);
    return p * f * (1.0f - low);
}

/* Eight lanes with GCC/Clang vector extensions: two SSE operations on the baseline build,
 * one AVX operation in the AVX2 clone.  Loads and stores go through memcpy (no alignment
 * assumed).  The helpers are static and inlined, so the note that a 32-byte vector return
 * would change the ABI without AVX (-Wpsabi) does not concern them. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

static inline v8f splat8(float x) { return (v8f){x, x, x, x, x, x, x, x}; }

static inline float hsum8(v8f v) {
    float s = 0;
    for (int i = 0; i < 8; i++) s += v[i];
    return s;
}

/* exp_neg on eight lanes: the same arithmetic, selects written as masks. */
static inline v8f exp_neg8(v8f x) {
    v8i low = x < splat8(-87.0f);
    x = (v8f)(((v8i)splat8(-87.0f) & low) | ((v8i)x & ~low));
    v8f n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    v8f r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    v8f p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f + r * 0.0013888889f)))));
    v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    return (v8f)((v8i)(p * (v8f)e) & ~low);
}

/* softmax weights of p[0..S) in place (p holds room for S rounded up to 8); returns 1 /
 * their sum. */
static inline __attribute__((always_inline)) float softmax_row(float *p, int S) {
    float mx = p[0], sum = 0;
    int s8 = S / 8 * 8;
    v8f vm = splat8(p[0]);
    for (int s = 0; s < s8; s += 8) {
        v8f x = load8(p + s);
        v8i gt = x > vm;
        vm = (v8f)(((v8i)x & gt) | ((v8i)vm & ~gt));
    }
    for (int i = 0; i < 8; i++) mx = vm[i] > mx ? vm[i] : mx;
    for (int s = s8; s < S; s++) mx = p[s] > mx ? p[s] : mx;
    v8f acc = splat8(0), m = splat8(mx);
    for (int s = 0; s < s8; s += 8) {
        v8f e = exp_neg8(load8(p + s) - m);
        store8(p + s, e);
        acc += e;
    }
    for (int s = s8; s < S; s++) sum += (p[s] = exp_neg(p[s] - mx));
    return 1.0f / (sum + hsum8(acc));
}

/* Query head h of sequence b against its keys 0 .. pos[b] (causal softmax attention, as
 * kernels/attention.h with the query last).  Keys are kept transposed per kv head,
 * [hd, capa], so the scores are computed for blocks of SD_SBLK positions at once with the
 * block's sums in registers (rows are padded to a multiple of the block: the last block may
 * read stale keys past S, whose scores are never used); values are kept as rows [capa, hd],
 * so the output is a sum of rows, eight lanes at a time when hd allows.  hd is a
 * compile-time constant in the common cases (attend_head below). */
static inline __attribute__((always_inline)) void attend_head_hd(const decoder *D, int l, int b, int h, float *sc,
                                                                 const int hd) {
    int S = D->pos[b] + 1, cap = D->capa, g = h / (D->Hq / D->Hkv);
    size_t head = ((size_t)b * D->Hkv + g) * hd * cap;
    const float *q = (const float *)D->q.data + ((size_t)b * D->Hq + h) * hd;
    const float *K = (const float *)D->kc[l].data + head, *V = (const float *)D->vc[l].data + head;
    float scale = 1.0f / sqrtf((float)hd), *out = (float *)D->att.data + ((size_t)b * D->Hq + h) * hd;
    for (int s0 = 0; s0 < S; s0 += SD_SBLK) {
        v8f a0 = splat8(0), a1 = splat8(0);
        for (int i = 0; i < hd; i++) {
            const float *k = K + (size_t)i * cap + s0;
            v8f qi = splat8(q[i] * scale);
            a0 += qi * load8(k);
            a1 += qi * load8(k + 8);
        }
        store8(sc + s0, a0);
        store8(sc + s0 + 8, a1);
    }
    float inv = softmax_row(sc, S);
    if (hd % 8 == 0 && hd <= 64) {
        v8f o[8];
        for (int c = 0; c < hd / 8; c++) o[c] = splat8(0);
        for (int s = 0; s < S; s++) {
            v8f w = splat8(sc[s]);
            for (int c = 0; c < hd / 8; c++) o[c] += w * load8(V + (size_t)s * hd + 8 * c);
        }
        for (int c = 0; c < hd / 8; c++) store8(out + 8 * c, o[c] * inv);
        return;
    }
    for (int i = 0; i < hd; i++) out[i] = 0;
    for (int s = 0; s < S; s++)
        for (int i = 0; i < hd; i++) out[i] += sc[s] * V[(size_t)s * hd + i];
    for (int i = 0; i < hd; i++) out[i] *= inv;
}

SD_HOT_CLONES static void attend_head(const decoder *D, int l, int b, int h, float *sc) {
    switch (D->hd) {
    case 8: attend_head_hd(D, l, b, h, sc, 8); break;
    case 16: attend_head_hd(D, l, b, h, sc, 16); break;
    case 32: attend_head_hd(D, l, b, h, sc, 32); break;
    case 64: attend_head_hd(D, l, b, h, sc, 64); break;
    default: attend_head_hd(D, l, b, h, sc, D->hd); break;
    }
}

/* Rotary on this step's q and k, k and v into the (transposed) cache, then attention, for
 * the sequences lo .. hi - 1. */
static void rope_cache_attend(const decoder *D, int l, int interleaved, int lo, int hi) {
    int hd = D->hd, cap = D->capa;
    size_t kvrow = (size_t)D->Hkv * hd;
    for (int b = lo; b < hi; b++) {
        int p = D->pos[b];
        float *q = (float *)D->q.data + (size_t)b * D->Hq * hd, *k = (float *)D->k.data + b * kvrow;
        const float *v = (const float *)D->v.data + b * kvrow;
        rotate(D, interleaved, q, D->Hq, p);
        rotate(D, interleaved, k, D->Hkv, p);
        float *kc = (float *)D->kc[l].data + (size_t)b * kvrow * cap, *vc = (float *)D->vc[l].data + (size_t)b * kvrow * cap;
        for (size_t j = 0; j < kvrow; j++) kc[j * cap + p] = k[j]; /* j = g hd + i: row j of [Hkv hd, capa] */
        for (int g = 0; g < D->Hkv; g++) memcpy(vc + ((size_t)g * cap + p) * hd, v + (size_t)g * hd, (size_t)hd * sizeof(float));
        for (int h = 0; h < D->Hq; h++) attend_head(D, l, b, h, D->scores + (size_t)b * D->capa);
    }
}

/* Rows lo .. hi - 1 of the decoder's [B, ...] buffers, as views: one thread's sequences. */
typedef struct {
    int lo, hi;
    sd_tensor ids, x, xn, q, k, v, att, ao, gate, up, logits;
} slice;

static sd_tensor rows_of(const sd_tensor *t, int lo, int hi) {
    int64_t cols = t->ndim > 1 ? t->shape[1] : 1, shape[2] = {hi - lo, cols};
    return sd_tensor_view(t->dtype, (char *)t->data + (size_t)lo * cols * sd_dtype_size(t->dtype), t->ndim, shape);
}

static slice slice_of(const decoder *D, int lo, int hi) {
    return (slice){.lo = lo, .hi = hi, .ids = rows_of(&D->ids, lo, hi), .x = rows_of(&D->x, lo, hi),
                   .xn = rows_of(&D->xn, lo, hi), .q = rows_of(&D->q, lo, hi), .k = rows_of(&D->k, lo, hi),
                   .v = rows_of(&D->v, lo, hi), .att = rows_of(&D->att, lo, hi), .ao = rows_of(&D->ao, lo, hi),
                   .gate = rows_of(&D->gate, lo, hi), .up = rows_of(&D->up, lo, hi),
                   .logits = rows_of(&D->logits, lo, hi)};
}

/* One decoder layer for one token per sequence of the slice, as teacher.c's layer_forward. */
static int layer_step(sd_ctx *ctx, const sd_teacher *t, int l, const decoder *D, slice *S) {
    const sd_model_config *c = &t->cfg;
    const sd_teacher_layer *L = &t->layers[l];
    SD_TRY(sd_rmsnorm(ctx, &S->xn, &S->x, L->input_norm, c->norm_eps));
    SD_TRY(sd_linear(ctx, &S->q, &S->xn, L->wq, L->bq));
    SD_TRY(sd_linear(ctx, &S->k, &S->xn, L->wk, L->bk));
    SD_TRY(sd_linear(ctx, &S->v, &S->xn, L->wv, L->bv));
    rope_cache_attend(D, l, c->rope.interleaved, S->lo, S->hi);
    SD_TRY(sd_linear(ctx, &S->ao, &S->att, L->wo, L->bo));
    SD_TRY(sd_add(ctx, &S->x, &S->x, &S->ao));
    SD_TRY(sd_rmsnorm(ctx, &S->xn, &S->x, L->post_norm, c->norm_eps));
    SD_TRY(sd_linear(ctx, &S->gate, &S->xn, L->w_gate, L->b_gate));
    SD_TRY(sd_linear(ctx, &S->up, &S->xn, L->w_up, L->b_up));
    SD_TRY(sd_swiglu(ctx, &S->gate, &S->gate, &S->up));
    SD_TRY(sd_linear(ctx, &S->ao, &S->gate, L->w_down, L->b_down));
    return sd_add(ctx, &S->x, &S->x, &S->ao);
}

static int32_t draw(const decoder *D, int b, float temperature, float top_p);

/* The teacher on one token per sequence of the slice, then a draw for each. */
static int step_slice(sd_ctx *ctx, const sd_teacher *t, decoder *D, int lo, int hi, float temperature,
                      float top_p) {
    slice S = slice_of(D, lo, hi);
    SD_TRY(sd_embedding(ctx, &S.x, &S.ids, t->embed));
    for (int l = 0; l < D->L; l++) SD_TRY(layer_step(ctx, t, l, D, &S));
    SD_TRY(sd_rmsnorm(ctx, &S.xn, &S.x, t->final_norm, t->cfg.norm_eps));
    SD_TRY(sd_linear(ctx, &S.logits, &S.xn, t->lm_head, NULL));
    for (int b = lo; b < hi; b++) D->next[b] = draw(D, b, temperature, top_p);
    return SD_OK;
}

/* ---------------------------------------------------------------- sampling */

static int by_prob_desc(const void *a, const void *b, void *ctx) {
    const float *p = ctx;
    float pa = p[*(const int *)a], pb = p[*(const int *)b];
    if (pa != pb) return pa > pb ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

/* Temperature softmax, then the nucleus (the most probable tokens until their mass reaches
 * top_p; all of them at top_p 1, without sorting) and an inverse-CDF draw. */
SD_HOT_CLONES static int32_t draw(const decoder *D, int b, float temperature, float top_p) {
    const float *lg = (const float *)D->logits.data + (size_t)b * D->V;
    float *p = D->probs + (size_t)b * D->V, mx = lg[0];
    for (int i = 1; i < D->V; i++)
        if (lg[i] > mx) mx = lg[i];
    double sum = 0;
    float it = 1.0f / temperature, fsum = 0;
    for (int i = 0; i < D->V; i++) p[i] = exp_neg((lg[i] - mx) * it);
#pragma omp simd reduction(+ : fsum)
    for (int i = 0; i < D->V; i++) fsum += p[i];
    sum = fsum;
    double r = sd_rng_uniform(&D->rng[b]), acc = 0;
    if (top_p >= 1.0f) {
        r *= sum;
        for (int i = 0; i < D->V; i++)
            if (r < (acc += p[i])) return i;
        return D->V - 1;
    }
    int *ord = D->order + (size_t)b * D->V, keep = 0;
    for (int i = 0; i < D->V; i++) ord[i] = i;
    qsort_r(ord, (size_t)D->V, sizeof(int), by_prob_desc, p);
    double mass = 0;
    while (keep < D->V && (keep == 0 || mass < top_p * sum)) mass += p[ord[keep++]];
    r *= mass;
    for (int i = 0; i < keep; i++)
        if (r < (acc += p[ord[i]])) return ord[i];
    return ord[keep - 1];
}

/* ---------------------------------------------------------------- the corpus loop */

/* One thread's share of the corpus: its own documents (indices first, first + stride, ...),
 * its own decoder, its own output. */
typedef struct {
    uint32_t *out;
    int64_t n, cap, next_doc, stride, docs, generated;
    int bos, eos;
    uint64_t seed;
} corpus;

static void start_doc(decoder *D, corpus *C, int b) {
    sd_rng_seed(&D->rng[b], C->seed * 0x9e3779b97f4a7c15ull + (uint64_t)C->next_doc);
    C->next_doc += C->stride;
    D->pos[b] = 0;
    D->len[b] = 0;
    ((int32_t *)D->ids.data)[b] = C->bos;
}

/* The document of slot b, then EOS; the last one is cut to leave room for its EOS, so that
 * every share ends with EOS and shares never run documents together. */
static void finish_doc(decoder *D, corpus *C, int b) {
    const uint32_t *doc = D->doc + (size_t)b * D->cap;
    int64_t room = C->cap - C->n;
    if (room <= 0) return;
    int64_t k = D->len[b] < room - 1 ? D->len[b] : room - 1;
    memcpy(C->out + C->n, doc, (size_t)k * sizeof(uint32_t));
    C->n += k;
    C->out[C->n++] = (uint32_t)C->eos;
    C->docs++;
}

/* Takes each slot's sampled token, in slot order: EOS or a full document ends it. */
static void advance(decoder *D, corpus *C) {
    for (int b = 0; b < D->B && C->n < C->cap; b++) {
        int32_t tok = D->next[b];
        C->generated++;
        if (tok != C->eos) D->doc[(size_t)b * D->cap + D->len[b]++] = (uint32_t)tok;
        if (tok == C->eos || D->len[b] + 1 >= D->cap) {
            finish_doc(D, C, b);
            start_doc(D, C, b);
            continue;
        }
        ((int32_t *)D->ids.data)[b] = tok;
        D->pos[b] = D->len[b];
    }
}

static int sample_part(sd_ctx *ctx, const sd_teacher *t, const sd_sample_options *o, int batch, corpus *C) {
    decoder D;
    int rc = decoder_alloc(&D, &t->cfg, batch, o->seq_len);
    for (int b = 0; rc == SD_OK && b < D.B; b++) start_doc(&D, C, b);
    while (rc == SD_OK && C->n < C->cap) {
        rc = step_slice(ctx, t, &D, 0, D.B, o->temperature, o->top_p);
        if (rc == SD_OK) advance(&D, C);
    }
    decoder_free(&D);
    return rc;
}

/* Documents start from BOS; a teacher without one (Qwen2, GPT-2) starts them from EOS, the
 * separator its training documents followed. */
static int start_token(const sd_model_config *c) { return c->bos_token_id >= 0 ? c->bos_token_id : c->eos_token_id; }

static int check_options(const sd_teacher *t, const sd_sample_options *o) {
    const sd_model_config *c = &t->cfg;
    if (o->tokens < 1) return sd_fail(SD_ERR_INPUT, "--tokens: must be >= 1, got %lld", (long long)o->tokens);
    if (o->seq_len < 2) return sd_fail(SD_ERR_INPUT, "--seq-len: must be >= 2, got %d", o->seq_len);
    if (c->max_position_embeddings > 0 && o->seq_len > c->max_position_embeddings)
        return sd_fail(SD_ERR_INPUT, "--seq-len: %d exceeds the teacher's %d positions (%s)", o->seq_len,
                       c->max_position_embeddings, t->src);
    if (!(o->temperature > 0)) return sd_fail(SD_ERR_INPUT, "--temperature: must be > 0, got %g", o->temperature);
    if (!(o->top_p > 0 && o->top_p <= 1)) return sd_fail(SD_ERR_INPUT, "--top-p: must be in (0, 1], got %g", o->top_p);
    if (c->eos_token_id < 0 || c->eos_token_id >= c->vocab_size)
        return sd_fail(SD_ERR_INPUT, "%s: field 'eos_token_id': the teacher needs an EOS id to end documents", t->src);
    if (c->bos_token_id >= c->vocab_size)
        return sd_fail(SD_ERR_INPUT, "%s: field 'bos_token_id': %d is outside the vocabulary of %d", t->src,
                       c->bos_token_id, c->vocab_size);
    return SD_OK;
}

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double now_s(void) { return clock_s(CLOCK_MONOTONIC); }

/* The threads' shares, each sampled by one thread with no synchronisation between them
 * (a step of a few dozen small sequences is too short to split across threads), then
 * joined in thread order.  A failing thread's message is carried out of its thread. */
static int sample_parts(sd_ctx *ctx, const sd_teacher *t, const sd_sample_options *o, int nt, corpus *parts) {
    int rc = SD_OK, batch = o->batch > 0 ? o->batch / nt : 16;
    char msg[1024] = "";
#pragma omp parallel num_threads(nt)
    {
        int id = omp_get_thread_num();
        int r = sample_part(ctx, t, o, batch > 0 ? batch : 1, &parts[id]);
        if (r != SD_OK) {
#pragma omp critical(sd_sample_error)
            if (rc == SD_OK) {
                rc = r;
                snprintf(msg, sizeof msg, "%s", sd_errmsg());
            }
        }
    }
    return rc == SD_OK ? SD_OK : sd_fail(rc, "%s", msg);
}

static int join_parts(corpus *parts, int nt, int64_t total, uint32_t **out, sd_sample_stats *st) {
    uint32_t *all = sd_malloc((size_t)total * sizeof(uint32_t), "sampled corpus");
    if (!all) return SD_ERR_SYS;
    int64_t at = 0;
    for (int i = 0; i < nt; i++) {
        memcpy(all + at, parts[i].out, (size_t)parts[i].n * sizeof(uint32_t));
        at += parts[i].n;
        st->documents += parts[i].docs;
        st->generated += parts[i].generated;
    }
    st->tokens = at;
    *out = all;
    return SD_OK;
}

int sd_sample_corpus(sd_ctx *ctx, const sd_teacher *t, const sd_sample_options *opt, uint32_t **out,
                     sd_sample_stats *stats) {
    *out = NULL;
    memset(stats, 0, sizeof *stats);
    SD_TRY(check_options(t, opt));
    sd_ctx_apply_threads(ctx);
    int nt = ctx->nthreads < 1 ? 1 : ctx->nthreads;
    if (nt > opt->tokens) nt = (int)opt->tokens;
    corpus *parts = sd_calloc((size_t)nt, sizeof *parts, "sampler");
    if (!parts) return SD_ERR_SYS;
    int rc = SD_OK;
    for (int i = 0; i < nt && rc == SD_OK; i++) {
        int64_t lo = opt->tokens * i / nt, hi = opt->tokens * (i + 1) / nt;
        parts[i] = (corpus){.cap = hi - lo, .next_doc = i, .stride = nt, .bos = start_token(&t->cfg),
                            .eos = t->cfg.eos_token_id, .seed = opt->seed};
        if (!(parts[i].out = sd_malloc((size_t)(hi - lo > 0 ? hi - lo : 1) * sizeof(uint32_t), "sampled corpus")))
            rc = SD_ERR_SYS;
    }
    int levels = omp_get_max_active_levels();
    omp_set_max_active_levels(1); /* the ops a thread calls stay on that thread */
    double t0 = now_s(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    if (rc == SD_OK) rc = sample_parts(ctx, t, opt, nt, parts);
    stats->seconds = now_s() - t0;
    stats->cpu_seconds = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    omp_set_max_active_levels(levels);
    if (rc == SD_OK) rc = join_parts(parts, nt, opt->tokens, out, stats);
    for (int i = 0; i < nt; i++) free(parts[i].out);
    free(parts);
    return rc;
}

int sd_sample_corpus_to_shard(sd_ctx *ctx, const sd_teacher *t, const sd_sample_options *opt, const char *path,
                              sd_sample_stats *stats) {
    uint32_t *tokens;
    SD_TRY(sd_sample_corpus(ctx, t, opt, &tokens, stats));
    int rc = sd_shard_write(path, tokens, stats->tokens, t->cfg.vocab_size, t->cfg.eos_token_id);
    free(tokens);
    return rc;
}
