/* The backward of causal GQA attention on CUDA (sd_attention_backward, kernels/attention.h):
 * what hybrid students need to train their kept teacher attention layers on the GPU.
 *
 * Math: the FlashAttention-2 backward (Dao 2023, "FlashAttention-2", section 3.1), with the
 * probabilities recomputed from q, k and the row log-sum-exp instead of stored:
 *   s_tj = scale q_t . k_j,   P_tj = exp(s_tj - L_t),   L_t = log sum_j exp(s_tj)
 *   dP_tj = dout_t . v_j,     D_t = sum_j P_tj dP_tj   (= dout_t . out_t; out is not an
 *                                                       argument, so it comes from P and v)
 *   dS_tj = P_tj (dP_tj - D_t)
 *   dq_t += scale sum_j dS_tj k_j,  dk_j += scale sum_t dS_tj q_t,  dv_j += sum_t P_tj dout_t
 * over the causal pairs j <= S - T + t; the kv head g of query head h is h / (Hq / Hkv), and
 * dk, dv of a kv head sum over every query head of its group.
 *
 * Two passes, no atomics, every sum in a fixed order, so results are bit-identical run to run:
 *   1. one block per query row (b, h, t): L_t (online max / sum per warp, warps combined in
 *      order), then D_t, then dq_t; L_t and D_t go to fp32 scratch [B, Hq, T].
 *   2. one block per key row (b, g, j): dk_j and dv_j over the (h, t) pairs of its group that
 *      see key j, h ascending then t ascending (warp w takes the pairs w, w + W, ..., then the
 *      warps' partial sums are added in warp order), added once into dk and dv.
 * Inside a block each warp takes one key (pass 1) or one (h, t) pair (pass 2) at a time; lane
 * l holds elements l, l + 32, ... of the head dim (hd up to 256: 8 per lane), dot products
 * are a per-lane sum then a butterfly (__shfl_xor) reduction, which leaves the same bits in
 * every lane.  Tensors are read and written in their own dtype (sd_ld / sd_st: F32 or BF16);
 * all math and accumulation in fp32.
 *
 * Cost: per causal pair, 10 multiply-adds of length hd against the forward's 2 (q.k and P v):
 * pass 1 evaluates q.k three times, dout.v twice and the dq update once, pass 2 q.k, dout.v and
 * the dk, dv updates once each; about 5x the forward's FLOPs (FlashAttention-2's tiled backward,
 * which keeps P and dS on chip for all three gradients, does 2.5x).  And it runs on CUDA cores
 * in fp32, not on tensor cores: one to two orders of magnitude slower than a tiled tensor-core
 * backward.  It serves the few attention layers a hybrid student keeps, not the hot path.
 * Tests: tests/gpu/test_cuda_attention_bwd.c (GPU vs CPU); tests/gpu/emulate_attention_bwd.cpp
 * runs the kernels below on the host, a std::thread per GPU thread, to check their indexing
 * and reductions where there is no GPU. */
#include <math.h>

#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

/* emulate-begin: tests/gpu/emulate_attention_bwd.cpp compiles from here to emulate-end on the host */
#define BWD_WARPS 4
#define BWD_THREADS (BWD_WARPS * 32)

/* r[i] = x[off + lane + 32 i] (0 past hd) in fp32. */
template <int NPL>
__device__ __forceinline__ void ld_row(float (&r)[NPL], const void *x, int xbf, int64_t off, int hd, int lane) {
#pragma unroll
    for (int i = 0; i < NPL; i++) {
        int d = lane + 32 * i;
        r[i] = d < hd ? sd_ld(x, xbf, off + d) : 0.0f;
    }
}

/* a . b over the head dim, for a whole warp (every lane gets the same bits). */
template <int NPL>
__device__ __forceinline__ float warp_dot(const float (&a)[NPL], const float (&b)[NPL]) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < NPL; i++) s += a[i] * b[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

/* Pass 1: block = query row r = (b * Hq + h) * T + t (the [B, Hq, T] index of L and D).
 * The key loops run in steps of BWD_WARPS keys with a block-uniform trip count, warp w taking
 * key j0 + w; a warp past the last key recomputes that key (jc) and adds nothing.  Keeping the
 * shuffles out of divergent loops lets ptxas emit plain SHFL (with per-warp bounds, sm_80 code
 * called the __cuda_sm70_shflsync_bfly_p fallback, which spilled). */
template <int NPL>
__global__ void __launch_bounds__(BWD_THREADS)
    k_attn_bwd_rows(void *dq, int dqbf, float *lse, float *dsum, const void *dout, int gobf, const void *q, int qbf,
                    const void *k, int kbf, const void *v, int vbf, int T, int S, int Hq, int Hkv, int hd, float scale) {
    __shared__ float s_m[BWD_WARPS], s_l[BWD_WARPS], s_d[BWD_WARPS];
    __shared__ float s_acc[BWD_WARPS][NPL * 32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t r = blockIdx.x;
    const int t = (int)(r % T), h = (int)((r / T) % Hq);
    const int64_t b = r / ((int64_t)T * Hq);
    const int g = h / (Hq / Hkv);
    const int nk = S - T + t + 1;                              /* keys 0 .. S - T + t */
    const int64_t qo = ((b * T + t) * Hq + h) * hd;            /* q, dout, dq row */
    const int64_t kv0 = (b * S * Hkv + g) * (int64_t)hd, kvs = (int64_t)Hkv * hd; /* key j: kv0 + j kvs */

    float qr[NPL], gr[NPL], kr[NPL], vr[NPL];
    ld_row(qr, q, qbf, qo, hd, lane);
    ld_row(gr, dout, gobf, qo, hd, lane);

    /* L_t: each warp keeps a running max m and sum l = sum exp(s - m) over its keys */
    float m = -INFINITY, l = 0.0f;
    for (int j0 = 0; j0 < nk; j0 += BWD_WARPS) {
        const int j = j0 + w, jc = min(j, nk - 1);
        ld_row(kr, k, kbf, kv0 + jc * kvs, hd, lane);
        float s = scale * warp_dot(qr, kr);
        if (j < nk) {
            float mn = fmaxf(m, s);
            l = l * expf(m - mn) + expf(s - mn); /* m = -inf at first: expf(-inf) = 0 */
            m = mn;
        }
    }
    if (lane == 0) s_m[w] = m, s_l[w] = l;
    __syncthreads();
    float M = -INFINITY, Lsum = 0.0f;
    for (int i = 0; i < BWD_WARPS; i++) M = fmaxf(M, s_m[i]);   /* finite: nk >= 1 */
    for (int i = 0; i < BWD_WARPS; i++)
        if (s_l[i] > 0.0f) Lsum += s_l[i] * expf(s_m[i] - M);   /* warps without keys add 0 */
    const float L = M + logf(Lsum);

    /* D_t = sum_j P_tj dP_tj */
    float dacc = 0.0f;
    for (int j0 = 0; j0 < nk; j0 += BWD_WARPS) {
        const int j = j0 + w, jc = min(j, nk - 1);
        ld_row(kr, k, kbf, kv0 + jc * kvs, hd, lane);
        ld_row(vr, v, vbf, kv0 + jc * kvs, hd, lane);
        float p = expf(scale * warp_dot(qr, kr) - L);
        float dp = warp_dot(gr, vr);
        if (j < nk) dacc += p * dp;
    }
    if (lane == 0) s_d[w] = dacc;
    __syncthreads();
    float D = 0.0f;
    for (int i = 0; i < BWD_WARPS; i++) D += s_d[i];
    if (threadIdx.x == 0) lse[r] = L, dsum[r] = D;
    if (!dq) return; /* uniform across the block */

    /* dq_t += scale sum_j P_tj (dP_tj - D_t) k_j */
    float acc[NPL];
#pragma unroll
    for (int i = 0; i < NPL; i++) acc[i] = 0.0f;
    for (int j0 = 0; j0 < nk; j0 += BWD_WARPS) {
        const int j = j0 + w, jc = min(j, nk - 1);
        ld_row(kr, k, kbf, kv0 + jc * kvs, hd, lane);
        ld_row(vr, v, vbf, kv0 + jc * kvs, hd, lane);
        float p = expf(scale * warp_dot(qr, kr) - L);
        float ds = p * (warp_dot(gr, vr) - D);
        if (j < nk) {
#pragma unroll
            for (int i = 0; i < NPL; i++) acc[i] += ds * kr[i];
        }
    }
#pragma unroll
    for (int i = 0; i < NPL; i++) s_acc[w][lane + 32 * i] = acc[i];
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float sum = 0.0f;
        for (int i = 0; i < BWD_WARPS; i++) sum += s_acc[i][d];
        sd_st(dq, dqbf, qo + d, sd_ld(dq, dqbf, qo + d) + scale * sum);
    }
}

/* Pass 2: block = key row r = (b * Hkv + g) * S + j.  Query t sees key j when
 * j <= S - T + t, i.e. t >= t0 = max(0, j - (S - T)); t0 <= T - 1 since j <= S - 1. */
template <int NPL>
__global__ void __launch_bounds__(BWD_THREADS)
    k_attn_bwd_keys(void *dk, int dkbf, void *dv, int dvbf, const float *lse, const float *dsum, const void *dout,
                    int gobf, const void *q, int qbf, const void *k, int kbf, const void *v, int vbf, int T, int S,
                    int Hq, int Hkv, int hd, float scale) {
    __shared__ float s_k[BWD_WARPS][NPL * 32], s_v[BWD_WARPS][NPL * 32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t r = blockIdx.x;
    const int j = (int)(r % S), g = (int)((r / S) % Hkv);
    const int64_t b = r / ((int64_t)S * Hkv);
    const int group = Hq / Hkv;
    const int t0 = max(0, j - (S - T)), nt = T - t0;
    const int64_t ko = ((b * S + j) * Hkv + g) * hd; /* k, v, dk, dv row */

    float kr[NPL], vr[NPL], qr[NPL], gr[NPL], ak[NPL], av[NPL];
    ld_row(kr, k, kbf, ko, hd, lane);
    ld_row(vr, v, vbf, ko, hd, lane);
#pragma unroll
    for (int i = 0; i < NPL; i++) ak[i] = av[i] = 0.0f;
    /* pair i: h = g group + i / nt, t = t0 + i % nt; steps of BWD_WARPS pairs, block-uniform
     * trip count as in pass 1 (a warp past the last pair recomputes it and adds nothing) */
    const int64_t npair = (int64_t)group * nt;
    for (int64_t i0 = 0; i0 < npair; i0 += BWD_WARPS) {
        const int64_t i = i0 + w, ic = i < npair ? i : npair - 1;
        const int h = g * group + (int)(ic / nt), t = t0 + (int)(ic % nt);
        const int64_t qo = ((b * T + t) * Hq + h) * hd, ro = (b * Hq + h) * T + t;
        ld_row(qr, q, qbf, qo, hd, lane);
        ld_row(gr, dout, gobf, qo, hd, lane);
        /* the same expression as pass 1, so P matches the L it normalises */
        float p = expf(scale * warp_dot(qr, kr) - lse[ro]);
        float ds = p * (warp_dot(gr, vr) - dsum[ro]);
        if (i < npair) {
#pragma unroll
            for (int e = 0; e < NPL; e++) ak[e] += ds * qr[e], av[e] += p * gr[e];
        }
    }
#pragma unroll
    for (int e = 0; e < NPL; e++) s_k[w][lane + 32 * e] = ak[e], s_v[w][lane + 32 * e] = av[e];
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float sk = 0.0f, sv = 0.0f;
        for (int i = 0; i < BWD_WARPS; i++) sk += s_k[i][d], sv += s_v[i][d];
        if (dk) sd_st(dk, dkbf, ko + d, sd_ld(dk, dkbf, ko + d) + scale * sk);
        if (dv) sd_st(dv, dvbf, ko + d, sd_ld(dv, dvbf, ko + d) + sv);
    }
}

/* emulate-end */

template <int NPL>
static int launch(sd_ctx *ctx, sd_tensor *dq, sd_tensor *dk, sd_tensor *dv, const sd_tensor *dout, const sd_tensor *q,
                  const sd_tensor *k, const sd_tensor *v, float scale, float *lse, float *dsum, int64_t rows,
                  int64_t keys, int T, int S, int Hq, int Hkv, int hd) {
    cudaStream_t st = sd_cuda_stream(ctx);
    k_attn_bwd_rows<NPL><<<(unsigned)rows, BWD_THREADS, 0, st>>>(
        dq ? dq->data : NULL, sd_is_bf16(dq), lse, dsum, dout->data, sd_is_bf16(dout), q->data, sd_is_bf16(q),
        k->data, sd_is_bf16(k), v->data, sd_is_bf16(v), T, S, Hq, Hkv, hd, scale);
    SD_CUDA_LAUNCHED();
    if (!dk && !dv) return SD_OK;
    k_attn_bwd_keys<NPL><<<(unsigned)keys, BWD_THREADS, 0, st>>>(
        dk ? dk->data : NULL, sd_is_bf16(dk), dv ? dv->data : NULL, sd_is_bf16(dv), lse, dsum, dout->data,
        sd_is_bf16(dout), q->data, sd_is_bf16(q), k->data, sd_is_bf16(k), v->data, sd_is_bf16(v), T, S, Hq, Hkv, hd,
        scale);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_cuda_attention_backward(sd_ctx *ctx, sd_tensor *dq, sd_tensor *dk, sd_tensor *dv, const sd_tensor *dout,
                               const sd_tensor *q, const sd_tensor *k, const sd_tensor *v, float scale,
                               const sd_tensor *probs) {
    static const char *op = "sd_attention_backward";
    if (probs)
        return sd_fail(SD_ERR_INTERNAL, "%s: the CUDA attention backward recomputes the probabilities: pass probs NULL",
                       op);
    int64_t B = q->shape[0], T = q->shape[1], Hq = q->shape[2], hd = q->shape[3];
    int64_t S = k->shape[1], Hkv = k->shape[2];
    if (hd > 256)
        return sd_fail(SD_ERR_INTERNAL, "%s: the CUDA attention backward needs hd up to 256, got %lld", op,
                       (long long)hd);
    if (B * Hq * T == 0 || hd == 0 || (!dq && !dk && !dv)) return SD_OK;
    int64_t rows = B * Hq * T, keys = B * Hkv * S; /* one block each: a 1-D grid (2^31 - 1 blocks) */
    if (rows > 0x7fffffffLL || keys > 0x7fffffffLL)
        return sd_fail(SD_ERR_INTERNAL, "%s: sizes too large (%lld query rows, %lld key rows)", op, (long long)rows,
                       (long long)keys);
    void *ws = NULL;
    size_t lbytes = ((size_t)rows * sizeof(float) + 255) & ~(size_t)255;
    SD_TRY(sd_cuda_scratch(ctx, 2 * lbytes, &ws));
    float *lse = (float *)ws, *dsum = (float *)((char *)ws + lbytes);
    int iT = (int)T, iS = (int)S, iHq = (int)Hq, iHkv = (int)Hkv, ihd = (int)hd;
    if (hd <= 32) return launch<1>(ctx, dq, dk, dv, dout, q, k, v, scale, lse, dsum, rows, keys, iT, iS, iHq, iHkv, ihd);
    if (hd <= 64) return launch<2>(ctx, dq, dk, dv, dout, q, k, v, scale, lse, dsum, rows, keys, iT, iS, iHq, iHkv, ihd);
    if (hd <= 128) return launch<4>(ctx, dq, dk, dv, dout, q, k, v, scale, lse, dsum, rows, keys, iT, iS, iHq, iHkv, ihd);
    return launch<8>(ctx, dq, dk, dv, dout, q, k, v, scale, lse, dsum, rows, keys, iT, iS, iHq, iHkv, ihd);
}
