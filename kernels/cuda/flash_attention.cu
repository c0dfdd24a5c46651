/* Flash-attention forward (FlashAttention-2, Dao 2023, algorithm 1) with causal masking and
 * GQA, bf16 in and out, fp32 accumulation; kernels/cuda/attention_cuda.h has the contract.
 *
 * One CTA = 128 query rows of one (b, h), 4 warps of 32 rows (two m16 tiles each, so every K
 * and V fragment read from shared memory feeds two mma).  Keys stream in tiles of 64 (32 at
 * head dim 128) through a two-stage cp.async pipeline (the next tile loads while this one is
 * multiplied).  Scores live in registers: S = Q K^T (mma), online softmax in base 2
 * (p = exp2(s scale log2(e) - m): one FFMA and one MUFU op per score), then P re-packed as
 * bf16 A fragments and O += P V (mma).  Causal: a CTA visits only key tiles at or below its
 * diagonal and masks only the tiles that cross it.  The query blocks of one (b, h) are
 * adjacent in the grid (x fastest), so they run together and share K and V through L2; within
 * them the heaviest (last) block is issued first.
 *
 * Hopper path (sm_90a builds, opt-in with SD_FLASH_WGMMA=1 until verified on the machine):
 * the same algorithm on warpgroup MMA (wgmma), 2 warpgroups of 64 rows, 64-key tiles in
 * 128-byte-swizzled smem, 4 cp.async stages at head dim 64 (2 at 128), 2 CTAs per
 * multiprocessor; see flash_fwd_wgmma_kernel.
 * The lse-only pass (the fused stage-1 loss) always takes the mma.sync kernel. */
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/mma_util.cuh"
#include "kernels/cuda/wgmma_util.cuh"

#include <math.h>
#include <stdlib.h>

using namespace sd_mma;

namespace {

constexpr int BM = 128, WARPS = 4, MT = 2; /* MT m16 tiles per warp: 4 x 2 x 16 = BM */
/* Key tile: 64 keys at head dim 64; 32 at 128, where the O accumulators take 128 registers
 * and 64-key scores would push the kernel past 255 registers into spills. */
template <int HD>
__host__ __device__ constexpr int key_tile() {
    return HD <= 64 ? 64 : 32;
}
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;

struct flash_params {
    const __nv_bfloat16 *q, *k, *v;
    __nv_bfloat16 *out;
    float *lse;
    int T, S, H, Hkv;
    long long lse_ld; /* rows between consecutive (b, h) in lse (T, or padded) */
    float scale_log2; /* scale * log2(e) */
};

template <int HD>
constexpr int smem_bytes(bool lse_only) {
    return (BM + (lse_only ? 2 : 4) * key_tile<HD>()) * (HD + PAD) * 2;
}

/* rows x HD bf16 rows of a [.., rows_total, heads, HD] tensor into smem (zero past `limit`). */
template <int HD, int ROWS>
__device__ __forceinline__ void load_tile(__nv_bfloat16 *dst, const __nv_bfloat16 *src, int row0,
                                          int limit, long long row_stride, int tid) {
    constexpr int CH = HD / 8; /* 16-byte chunks per row */
    for (int i = tid; i < ROWS * CH; i += WARPS * 32) {
        int r = i / CH, c = i % CH, row = row0 + r;
        bool ok = row < limit;
        cp_async16(dst + r * (HD + PAD) + c * 8, src + (long long)(ok ? row : 0) * row_stride + c * 8, ok);
    }
}

template <int HD, bool LSE_ONLY>
__global__ void __launch_bounds__(WARPS * 32) flash_fwd_kernel(flash_params p) {
    constexpr int LD = HD + PAD, KT = HD / 16, BN = key_tile<HD>();
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *sQ = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    __nv_bfloat16 *sK = sQ + BM * LD;                     /* [2][BN][LD] */
    __nv_bfloat16 *sV = sK + 2 * BN * LD;                 /* [2][BN][LD], unused for LSE_ONLY */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int qb = gridDim.x - 1 - blockIdx.x; /* heaviest causal blocks first */
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hkv);
    const int m0 = qb * BM, off = p.S - p.T; /* query t sees keys <= t + off */
    const long long q_ld = (long long)p.H * HD, kv_ld = (long long)p.Hkv * HD;
    const __nv_bfloat16 *qg = p.q + ((long long)b * p.T * p.H + h) * HD;
    const __nv_bfloat16 *kg = p.k + ((long long)b * p.S * p.Hkv + hk) * HD;
    const __nv_bfloat16 *vg = LSE_ONLY ? nullptr : p.v + ((long long)b * p.S * p.Hkv + hk) * HD;

    int kv_end = min(p.S, m0 + BM + off); /* keys past the block's last row are all masked */
    int ntiles = (kv_end + BN - 1) / BN;

    load_tile<HD, BM>(sQ, qg, m0, p.T, q_ld, tid);
    load_tile<HD, BN>(sK, kg, 0, p.S, kv_ld, tid);
    if (!LSE_ONLY) load_tile<HD, BN>(sV, vg, 0, p.S, kv_ld, tid);
    cp_async_commit();

    const int g = lane >> 2, c = lane & 3;
    const int wrow = warp * (MT * 16); /* first of the warp's 32 rows inside the block */
    float o[MT][LSE_ONLY ? 1 : HD / 8][4];
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        mrow[mt][0] = mrow[mt][1] = -INFINITY;
        lrow[mt][0] = lrow[mt][1] = 0.0f;
#pragma unroll
        for (int d = 0; d < (LSE_ONLY ? 1 : HD / 8); d++) o[mt][d][0] = o[mt][d][1] = o[mt][d][2] = o[mt][d][3] = 0.0f;
    }
    /* Q stays in registers for head dim 64 (32 registers); at 128 it is re-read from smem. */
    constexpr bool Q_REGS = HD <= 64;
    uint32_t qf[MT][Q_REGS ? KT : 1][4];

    for (int j = 0; j < ntiles; j++) {
        const int st = j & 1;
        if (j + 1 < ntiles) { /* prefetch the next key tile into the other stage */
            load_tile<HD, BN>(sK + (st ^ 1) * BN * LD, kg, (j + 1) * BN, p.S, kv_ld, tid);
            if (!LSE_ONLY) load_tile<HD, BN>(sV + (st ^ 1) * BN * LD, vg, (j + 1) * BN, p.S, kv_ld, tid);
        }
        cp_async_commit();
        cp_async_wait<1>(); /* everything but the prefetch just issued has landed */
        __syncthreads();
        if (Q_REGS && j == 0) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int kk = 0; kk < (Q_REGS ? KT : 1); kk++) load_a(qf[mt][kk], sQ, LD, wrow + mt * 16, kk * 16, lane);
        }
        const __nv_bfloat16 *tK = sK + st * BN * LD, *tV = sV + st * BN * LD;

        /* S = Q K^T over the head dim */
        float s[MT][BN / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int n = 0; n < BN / 8; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                if constexpr (Q_REGS) {
#pragma unroll
                    for (int r = 0; r < 4; r++) a[mt][r] = qf[mt][Q_REGS ? kk : 0][r];
                } else {
                    load_a(a[mt], sQ, LD, wrow + mt * 16, kk * 16, lane);
                }
            }
#pragma unroll
            for (int np = 0; np < BN / 16; np++) {
                uint32_t bf[4];
                load_b_nt(bf, tK, LD, np * 16, kk * 16, lane);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_bf16(s[mt][2 * np], a[mt], bf[0], bf[1]);
                    mma_bf16(s[mt][2 * np + 1], a[mt], bf[2], bf[3]);
                }
            }
        }

        /* online softmax (base 2); mask keys past t + off on tiles that cross the diagonal */
        const int n0 = j * BN;
        const bool crosses = n0 + BN - 1 > m0 + wrow + off;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int hr = 0; hr < 2; hr++) { /* rows g and g + 8 */
                const int t = m0 + wrow + mt * 16 + g + hr * 8;
                /* max of the raw scores (scale > 0 keeps the order), then one FFMA per score:
                 * p = exp2(s scale log2(e) - m) */
                float mraw = -INFINITY;
#pragma unroll
                for (int n = 0; n < BN / 8; n++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        if (crosses && n0 + n * 8 + 2 * c + e > t + off) s[mt][n][hr * 2 + e] = -INFINITY;
                        mraw = fmaxf(mraw, s[mt][n][hr * 2 + e]);
                    }
                mraw = fmaxf(mraw, __shfl_xor_sync(0xffffffffu, mraw, 1));
                mraw = fmaxf(mraw, __shfl_xor_sync(0xffffffffu, mraw, 2));
                const float mx = fmaxf(mrow[mt][hr], mraw * p.scale_log2);
                /* key 0 is visible to every row, so after tile 0 mx is finite; guard anyway */
                const float mu = mx == -INFINITY ? 0.0f : mx;
                const float alpha = exp2f(mrow[mt][hr] - mu);
                mrow[mt][hr] = mx;
                float sum = 0.0f;
#pragma unroll
                for (int n = 0; n < BN / 8; n++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        float pe = exp2f(fmaf(s[mt][n][hr * 2 + e], p.scale_log2, -mu));
                        s[mt][n][hr * 2 + e] = pe;
                        sum += pe;
                    }
                lrow[mt][hr] = lrow[mt][hr] * alpha + sum; /* per-thread partial; quad-summed at the end */
                if constexpr (!LSE_ONLY) {
#pragma unroll
                    for (int d = 0; d < HD / 8; d++) o[mt][d][hr * 2] *= alpha, o[mt][d][hr * 2 + 1] *= alpha;
                }
            }
        }

        if constexpr (!LSE_ONLY) { /* O += P V, P re-packed from the score accumulators */
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    a[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                    a[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                    a[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                    a[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
                }
#pragma unroll
                for (int dp = 0; dp < HD / 16; dp++) {
                    uint32_t bf[4];
                    load_b_t(bf, tV, LD, kk * 16, dp * 16, lane);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        mma_bf16(o[mt][2 * dp], a[mt], bf[0], bf[1]);
                        mma_bf16(o[mt][2 * dp + 1], a[mt], bf[2], bf[3]);
                    }
                }
            }
        }
        __syncthreads(); /* this stage is overwritten by the prefetch of iteration j + 1 */
    }
    cp_async_wait<0>();

#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float l = lrow[mt][hr];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int t = m0 + wrow + mt * 16 + g + hr * 8;
            if (t >= p.T) continue;
            if (p.lse && c == 0) p.lse[(long long)bh * p.lse_ld + t] = (mrow[mt][hr] + log2f(l)) * LN2;
            if constexpr (!LSE_ONLY) {
                const float inv = 1.0f / l;
                __nv_bfloat16 *og = p.out + (((long long)b * p.T + t) * p.H + h) * HD;
#pragma unroll
                for (int d = 0; d < HD / 8; d++)
                    *reinterpret_cast<uint32_t *>(og + d * 8 + 2 * c) =
                        pack_bf16(o[mt][d][hr * 2] * inv, o[mt][d][hr * 2 + 1] * inv);
            }
        }
}

/* ---- Hopper path (sm_90a): wgmma, out wanted ------------------------------------------------
 * One CTA = 128 query rows of one (b, h) = 2 warpgroups of 64 rows (block order: heaviest first
 * across chunks of 16 (b, h), see the kernel).
 * Q, and K and V tiles of WBN keys (cp.async stages), sit in 128-byte-swizzled smem
 * (wgmma_util.cuh); at head dim 64, Q is in registers instead.  Per key tile each warpgroup:
 * S = Q K^T (wgmma; Q from smem at head dim 128, from registers at 64), online softmax on the
 * S accumulators as above, then O += P V with P straight from registers (wgmma A from
 * registers) and V as an N-major smem operand.  At head dim 64 the P V of a tile runs under
 * the next tile's softmax.  A warpgroup skips the key tiles wholly past its own 64 rows'
 * diagonal. */
/* emulate-begin: tests/gpu/emulate_flash_wgmma.cpp runs the code from here to emulate-end on
 * the CPU (one thread per GPU thread, wgmma emulated from the PTX operand layouts). */
constexpr int WBM = 128, WTHREADS = 256;
/* 64-key tiles: S (32 fp32) and O (HD / 2) accumulators then fit the 128 registers a thread
 * may use with two CTAs per multiprocessor (128-key tiles spill at head dim 64).  Stages: 4 at
 * head dim 64: tiles are prefetched 2 ahead, one barrier per key tile, and O += P V of a tile
 * is issued behind the next tile's Q K^T and runs under its softmax (the stage it reads is
 * refilled only after the following barrier); 2 at 128 (more would leave room for one CTA
 * only). */
constexpr int WBN = 64;
template <int HD>
__host__ __device__ constexpr int wgmma_stages() {
    return HD <= 64 ? 4 : 2;
}
template <int HD>
constexpr int wgmma_smem_bytes() {
    return (WBM + 2 * wgmma_stages<HD>() * WBN) * HD * 2 + 1024; /* + 1024: alignment slack */
}

/* Rows row0 .. row0 + ROWS - 1 of a [.., rows, heads, HD] bf16 tensor into a swizzled tile
 * (64-column blocks of ROWS x 128 bytes), zeros past `limit`.  Thread tid always moves the
 * 16-byte chunk tid % (HD / 8) of rows tid / (HD / 8) + i * (WTHREADS * 8 / HD); the row step
 * is a multiple of 8, so the swizzle term is the same for all of its rows. */
template <int HD, int ROWS>
__device__ __forceinline__ void load_tile_sw(__nv_bfloat16 *dst, const __nv_bfloat16 *src, int row0, int limit,
                                             long long row_stride, int tid) {
    constexpr int CH = HD / 8, STEP = WTHREADS / CH;
    static_assert(WTHREADS % CH == 0 && STEP % 8 == 0 && ROWS % STEP == 0, "load_tile_sw shape");
    const int ch = tid % CH, r = tid / CH;
    __nv_bfloat16 *d = dst + (ch >> 3) * ROWS * 64 + r * 64 + (((ch & 7) ^ (r & 7)) << 3);
    const __nv_bfloat16 *sp = src + ch * 8;
#pragma unroll
    for (int i = 0; i < ROWS / STEP; i++) {
        const int row = row0 + r + i * STEP;
        const bool ok = row < limit;
        cp_async16(d + i * STEP * 64, sp + (long long)(ok ? row : 0) * row_stride, ok);
    }
}

/* Online softmax (base 2) of one 64-row x BN-key score tile held as a wgmma accumulator, as in
 * the mma.sync kernel: masks keys past the diagonal (key n0 + col > query row + off), updates
 * the running max and sum, leaves the probabilities in s and the factor for O in alpha (1.0f
 * exactly where the row's max stayed). */
template <int BN>
__device__ __forceinline__ void flash_wgmma_softmax(float s[BN / 2], float alpha[2], float mrow[2], float lrow[2],
                                                    int n0, int row_wg, int row0, int off, int c, float scale_log2) {
    constexpr float RESCALE_LOG2 = 8.0f;
    const bool crosses = n0 + BN - 1 > row_wg + off;
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        const int t = row0 + hr * 8;
        float mraw = -INFINITY;
#pragma unroll
        for (int n = 0; n < BN / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                if (crosses && n0 + n * 8 + 2 * c + e > t + off) s[n * 4 + hr * 2 + e] = -INFINITY;
                mraw = fmaxf(mraw, s[n * 4 + hr * 2 + e]);
            }
        mraw = fmaxf(mraw, __shfl_xor_sync(0xffffffffu, mraw, 1));
        mraw = fmaxf(mraw, __shfl_xor_sync(0xffffffffu, mraw, 2));
        /* lazy rescaling (as FlashAttention-4): the running max moves only when it would grow
         * by more than 8 (log2 units), so O needs rescaling only on the rare tiles where some
         * row's max does; exact, since O and l stay relative to the same max and p <= 2^8 */
        const float mx = fmaxf(mrow[hr], mraw * scale_log2);
        const bool up = mx > mrow[hr] + RESCALE_LOG2; /* true on a row's first tile (-inf) */
        alpha[hr] = up ? exp2f(mrow[hr] - mx) : 1.0f;
        if (up) mrow[hr] = mx;
        const float mu = mrow[hr] == -INFINITY ? 0.0f : mrow[hr];
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < BN / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float pe = exp2f(fmaf(s[n * 4 + hr * 2 + e], scale_log2, -mu));
                s[n * 4 + hr * 2 + e] = pe;
                sum += pe;
            }
        lrow[hr] = lrow[hr] * alpha[hr] + sum;
    }
}

/* O *= alpha per row, skipped by a warp none of whose rows changed its max (most tiles). */
template <int HD>
__device__ __forceinline__ void flash_wgmma_rescale(float o[HD / 2], const float alpha[2]) {
    if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
        for (int d = 0; d < HD / 8; d++)
#pragma unroll
            for (int hr = 0; hr < 2; hr++) o[d * 4 + hr * 2] *= alpha[hr], o[d * 4 + hr * 2 + 1] *= alpha[hr];
    }
}

/* Probabilities (accumulator layout) -> bf16 A fragments of P V, one per 16 keys. */
template <int BN>
__device__ __forceinline__ void flash_wgmma_pack(uint32_t pa[BN / 16][4], const float s[BN / 2]) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
        pa[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
        pa[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
        pa[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
        pa[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
}

/* S = Q K^T over the head dim: Q (64 rows of this warpgroup) at aQ, K tile at aK, both
 * swizzled K-major smem tiles of 64-column blocks.  S needs no zeroing (scale-d 0 on the first
 * k16 step): callers need not zero it, which saves 32 register moves a tile. */
template <int HD, int BN>
__device__ __forceinline__ void flash_wgmma_qk(float s[BN / 2], uint32_t aQ, uint32_t aK) {
#if SD_HAVE_WGMMA
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        const uint64_t da = sd_wgmma::desc_sw128(aQ + (kk >> 2) * WBM * 128 + (kk & 3) * 32, 16, 1024);
        const uint64_t db = sd_wgmma::desc_sw128(aK + (kk >> 2) * BN * 128 + (kk & 3) * 32, 16, 1024);
        sd_wgmma::wgmma_ss_n64(s, da, db, kk > 0);
    }
#endif
}

/* Head dim 64: S = Q K^T with Q from registers (qa: this thread's A fragments of the
 * warpgroup's 64 x 64 Q, one per k16 step), so only K is read from smem: Q K^T as SS wgmma
 * of N 64 reads as many smem bytes for A as for B. */
template <int HD>
__device__ __forceinline__ void flash_wgmma_qk_rs64(float s[WBN / 2], const uint32_t qa[4][4], uint32_t aK) {
    static_assert(HD == 64, "one 64-column block of Q and K");
#if SD_HAVE_WGMMA
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
        sd_wgmma::wgmma_rs_n64_kb(s, qa[kk], sd_wgmma::desc_sw128(aK + kk * 32, 16, 1024), kk > 0);
#endif
}

/* O (+)= P V at head dim 64 over one 64-key tile: P from registers, V tile at aV (N-major);
 * first: O = P V (scale-d 0 on the first k16 step). */
template <int HD>
__device__ __forceinline__ void flash_wgmma_pv64(float o[32], const uint32_t pa[WBN / 16][4], uint32_t aV, bool first) {
    static_assert(HD == 64, "m64n64 P V");
#if SD_HAVE_WGMMA
#pragma unroll
    for (int kk = 0; kk < WBN / 16; kk++) {
        const uint64_t db = sd_wgmma::desc_sw128(aV + kk * 16 * 128, WBN * 128, 1024);
        sd_wgmma::wgmma_rs_n64(o, pa[kk], db, !first || kk > 0);
    }
#endif
}

template <int HD>
__global__ void __launch_bounds__(WTHREADS, 2) flash_fwd_wgmma_kernel(flash_params p) {
#if SD_HAVE_WGMMA
    using namespace sd_wgmma;
    constexpr int BN = WBN, STAGES = wgmma_stages<HD>();
    constexpr bool DEFER = STAGES >= 4; /* O += P V of tile j runs under the softmax of tile j + 1 */
    static_assert(DEFER || STAGES == 2, "the two-stage loop alternates stages with st ^ 1");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *sQ = reinterpret_cast<__nv_bfloat16 *>(
        (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~static_cast<uintptr_t>(1023));
    __nv_bfloat16 *sK = sQ + WBM * HD; /* [STAGES][BN * HD] */
    __nv_bfloat16 *sV = sK + STAGES * BN * HD;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wi = warp & 3;
    /* the warpgroup index through a shuffle from lane 0: ptxas then knows it is warp-uniform,
     * and the branches on it around wgmma do not serialize them (C7520) */
    const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);
    /* Causal schedule: the (b, h) go in chunks of WCHUNK consecutive ones, and inside a chunk
     * the query blocks from the heaviest (last) to the lightest, across all of its (b, h): the
     * blocks dispatched last are then the light ones, and a chunk's K and V (8 MB at T 2048,
     * hd 64) stay in L2 while its blocks run.  (A list-scheduling model of B 8, H 32, T 2048
     * on 264 CTA slots: 1.7% over the ideal makespan, against 7.5% with the heaviest block
     * first per (b, h) only.)  A bijection of the block index. */
    constexpr int WCHUNK = 16;
    const long long lin = blockIdx.x + (long long)blockIdx.y * gridDim.x;
    const long long per_chunk = (long long)WCHUNK * gridDim.x;
    const int chunk = (int)(lin / per_chunk), r = (int)(lin % per_chunk);
    const int gc = min(WCHUNK, (int)gridDim.y - chunk * WCHUNK); /* (b, h) in this chunk */
    const int qb = gridDim.x - 1 - r / gc;
    const int bh = chunk * WCHUNK + r % gc, b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hkv);
    const int m0 = qb * WBM, off = p.S - p.T;
    const long long q_ld = (long long)p.H * HD, kv_ld = (long long)p.Hkv * HD;
    const __nv_bfloat16 *qg = p.q + ((long long)b * p.T * p.H + h) * HD;
    const __nv_bfloat16 *kg = p.k + ((long long)b * p.S * p.Hkv + hk) * HD;
    const __nv_bfloat16 *vg = p.v + ((long long)b * p.S * p.Hkv + hk) * HD;

    const int kv_end = min(p.S, m0 + WBM + off);
    const int ntiles = (kv_end + BN - 1) / BN;

    if constexpr (HD != 64) load_tile_sw<HD, WBM>(sQ, qg, m0, p.T, q_ld, tid); /* 64: registers */
    load_tile_sw<HD, BN>(sK, kg, 0, p.S, kv_ld, tid);
    load_tile_sw<HD, BN>(sV, vg, 0, p.S, kv_ld, tid);
    cp_async_commit();
    if (STAGES >= 3) {
        if (ntiles > 1) {
            load_tile_sw<HD, BN>(sK + BN * HD, kg, BN, p.S, kv_ld, tid);
            load_tile_sw<HD, BN>(sV + BN * HD, vg, BN, p.S, kv_ld, tid);
        }
        cp_async_commit(); /* possibly empty: the group count stays one per tile */
    }

    const int g = lane >> 2, c = lane & 3;
    const int row_wg = m0 + wg * 64;          /* first row of this warpgroup */
    const int row0 = row_wg + wi * 16 + g;    /* rows row0 and row0 + 8 of this thread */
    const uint32_t aQ = smem_addr(sQ) + wg * 64 * 128, aK = smem_addr(sK), aV = smem_addr(sV);
    /* head dim 64: Q as wgmma A fragments in registers (rows row0 and row0 + 8, columns
     * 16 kk + 2 c (+ 8)), straight from global memory; zeros past T */
    uint32_t qa[HD == 64 ? 4 : 1][4];
    if constexpr (HD == 64) {
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            const int t = row0 + hr * 8;
            const __nv_bfloat16 *qr = qg + (long long)(t < p.T ? t : 0) * q_ld + 2 * c;
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                    qa[kk][hr + 2 * e] = t < p.T ? *reinterpret_cast<const uint32_t *>(qr + kk * 16 + e * 8) : 0u;
        }
    }

    /* O is not zeroed: the P V of tile 0 (never skipped) overwrites it (scale-d 0), and any
     * garbage times the 0 rescale of tile 0 is discarded there.  (Zeroing it with ordinary
     * instructions makes ptxas serialize the wgmma pipeline, C7515.) */
    float o[HD / 2];
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    /* Key tiles this warpgroup multiplies: a tile wholly past the diagonal for all 64 of its
     * rows (the last tile of the first warpgroup) is skipped, every probability would be 0. */
    const int nt_wg = min(ntiles, (row_wg + 64 + off + BN - 1) / BN);
    uint32_t pa[BN / 16][4]; /* P of the last softmaxed tile as bf16 A fragments */

    if constexpr (DEFER) {
        /* Intra-warpgroup pipelining (FlashAttention-3, algorithm 2): iteration j issues
         * S = Q K_j^T, then O += P_{j-1} V_{j-1}, and runs the softmax of tile j while that P V
         * is still on the tensor cores; O is rescaled once it has landed. */
        for (int j = 0, st = 0; j < ntiles; j++, st = st + 1 == STAGES ? 0 : st + 1) {
            /* groups so far: tiles 0 .. j + 1; all but the newest (tile j + 1) have landed */
            cp_async_wait<1>();
            fence_proxy_async();
            /* also: every warpgroup is done with tile j + 2 - STAGES = j - 2 (its P V was
             * waited for during iteration j - 1), whose stage the prefetch below overwrites */
            __syncthreads();
            const int sn = st + 2 >= STAGES ? st + 2 - STAGES : st + 2; /* (j + 2) % STAGES */
            if (j + 2 < ntiles) {
                load_tile_sw<HD, BN>(sK + sn * BN * HD, kg, (j + 2) * BN, p.S, kv_ld, tid);
                load_tile_sw<HD, BN>(sV + sn * BN * HD, vg, (j + 2) * BN, p.S, kv_ld, tid);
            }
            cp_async_commit();

            if (j == 0) { /* S and softmax only; O is garbage until the P V of tile 0 (scale-d 0) */
                float s[BN / 2];
                fence(); /* orders the register writes above before the wgmma that read them */
                flash_wgmma_qk_rs64<HD>(s, qa, aK + st * BN * HD * 2);
                commit();
                wait<0>();
#pragma unroll
                for (int i = 0; i < BN / 2; i++) fence_reg(s[i]);
                float alpha[2];
                flash_wgmma_softmax<BN>(s, alpha, mrow, lrow, 0, row_wg, row0, off, c, p.scale_log2);
                flash_wgmma_pack<BN>(pa, s);
            } else if (j < nt_wg) {
#pragma unroll
                for (int i = 0; i < HD / 2; i++) fence_reg(o[i]);
#pragma unroll
                for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
                    for (int r = 0; r < 4; r++) fence_reg(pa[kk][r]);
                float s[BN / 2];
                fence(); /* orders the register writes above before the wgmma that read them */
                flash_wgmma_qk_rs64<HD>(s, qa, aK + st * BN * HD * 2);
                commit();
                /* O += P V of tile j - 1 */
                flash_wgmma_pv64<HD>(o, pa, aV + (st == 0 ? STAGES - 1 : st - 1) * BN * HD * 2, j == 1);
                commit();
                wait<1>(); /* S has landed (groups complete in order); P V may run on */
#pragma unroll
                for (int i = 0; i < BN / 2; i++) fence_reg(s[i]);
                float alpha[2];
                flash_wgmma_softmax<BN>(s, alpha, mrow, lrow, j * BN, row_wg, row0, off, c, p.scale_log2);
                wait<0>();
#pragma unroll
                for (int i = 0; i < HD / 2; i++) fence_reg(o[i]);
#pragma unroll
                for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
                    for (int r = 0; r < 4; r++) fence_reg(pa[kk][r]);
                flash_wgmma_rescale<HD>(o, alpha);
                flash_wgmma_pack<BN>(pa, s);
            } else if (j == nt_wg) { /* skipped tile: only the P V of tile j - 1 (j >= 1) */
                const int sp = st == 0 ? STAGES - 1 : st - 1;
#pragma unroll
                for (int i = 0; i < HD / 2; i++) fence_reg(o[i]);
#pragma unroll
                for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
                    for (int r = 0; r < 4; r++) fence_reg(pa[kk][r]);
                fence();
                flash_wgmma_pv64<HD>(o, pa, aV + sp * BN * HD * 2, j == 1);
                commit();
                wait<0>(); /* its V stage is refilled after the next barrier */
#pragma unroll
                for (int i = 0; i < HD / 2; i++) fence_reg(o[i]);
            }
        }
        if (nt_wg == ntiles) { /* P V of the last tile */
            const int sl = (ntiles - 1) % STAGES;
#pragma unroll
            for (int i = 0; i < HD / 2; i++) fence_reg(o[i]);
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
                for (int r = 0; r < 4; r++) fence_reg(pa[kk][r]);
            fence();
            flash_wgmma_pv64<HD>(o, pa, aV + sl * BN * HD * 2, ntiles == 1);
            commit();
            wait<0>();
#pragma unroll
            for (int i = 0; i < HD / 2; i++) fence_reg(o[i]);
        }
    } else {
        for (int j = 0, st = 0; j < ntiles; j++, st ^= 1) {
            if (j + 1 < ntiles) { /* prefetch the next tile into the other stage */
                load_tile_sw<HD, BN>(sK + (st ^ 1) * BN * HD, kg, (j + 1) * BN, p.S, kv_ld, tid);
                load_tile_sw<HD, BN>(sV + (st ^ 1) * BN * HD, vg, (j + 1) * BN, p.S, kv_ld, tid);
            }
            cp_async_commit();
            cp_async_wait<1>();
            fence_proxy_async();
            __syncthreads();

            if (j < nt_wg) {
                /* S = Q K^T (zeroed first: without, ptxas spills here at head dim 128) */
                float s[BN / 2];
#pragma unroll
                for (int i = 0; i < BN / 2; i++) s[i] = 0.0f, fence_reg(s[i]);
                fence(); /* orders the register writes above before the wgmma that read them */
                flash_wgmma_qk<HD, BN>(s, aQ, aK + st * BN * HD * 2);
                commit();
                wait<0>();
#pragma unroll
                for (int i = 0; i < BN / 2; i++) fence_reg(s[i]);

                float alpha[2];
                flash_wgmma_softmax<BN>(s, alpha, mrow, lrow, j * BN, row_wg, row0, off, c, p.scale_log2);
                flash_wgmma_rescale<HD>(o, alpha);

                /* O += P V */
                flash_wgmma_pack<BN>(pa, s);
#pragma unroll
                for (int i = 0; i < HD / 2; i++) fence_reg(o[i]);
#pragma unroll
                for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
                    for (int r = 0; r < 4; r++) fence_reg(pa[kk][r]);
                fence();
#pragma unroll
                for (int kk = 0; kk < BN / 16; kk++) {
                    const uint64_t db = desc_sw128(aV + st * BN * HD * 2 + kk * 16 * 128, BN * 128, 1024);
                    if constexpr (HD == 128) wgmma_rs_n128(o, pa[kk], db, j > 0 || kk > 0);
                    else wgmma_rs_n64(o, pa[kk], db, j > 0 || kk > 0);
                }
                commit();
                wait<0>();
#pragma unroll
                for (int i = 0; i < HD / 2; i++) fence_reg(o[i]);
            }
            __syncthreads(); /* the prefetch of iteration j + 1 overwrites this stage */
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        float l = lrow[hr];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int t = row0 + hr * 8;
        if (t >= p.T) continue;
        if (p.lse && c == 0) p.lse[(long long)bh * p.lse_ld + t] = (mrow[hr] + log2f(l)) * LN2;
        const float inv = 1.0f / l;
        __nv_bfloat16 *og = p.out + (((long long)b * p.T + t) * p.H + h) * HD;
#pragma unroll
        for (int d = 0; d < HD / 8; d++)
            *reinterpret_cast<uint32_t *>(og + d * 8 + 2 * c) =
                pack_bf16(o[d * 4 + hr * 2] * inv, o[d * 4 + hr * 2 + 1] * inv);
    }
#else
    (void)p;
#endif
}

/* emulate-end */

/* 1 where the loaded machine code has the wgmma kernel (built for sm_90a), else 0. */
#if SD_HAVE_WGMMA
__device__ int g_flash_has_wgmma = 1;
#else
__device__ int g_flash_has_wgmma = 0;
#endif

/* The wgmma kernel is opt-in (SD_FLASH_WGMMA=1 in the environment) until it has passed
 * tests/gpu/test_cuda_attention on a Hopper machine; then it only needs the device check. */
int use_wgmma() {
    static int cached = -1;
    if (cached < 0) {
        /* on by default where the device code has it (sm_90a); SD_FLASH_WGMMA=0 forces the
         * mma.sync kernel (measured on the H200: 0.474 vs 0.606 ms at B 8, H 32, T 2048, hd 64) */
        const char *env = getenv("SD_FLASH_WGMMA");
        int v = 0, wanted = !(env && env[0] == '0');
        if (wanted && cudaMemcpyFromSymbol(&v, g_flash_has_wgmma, sizeof v) != cudaSuccess) {
            (void)cudaGetLastError();
            v = 0;
        }
        cached = v;
    }
    return cached;
}

template <int HD>
int launch_wgmma(const flash_params &p, int B, cudaStream_t stream) {
    const int smem = wgmma_smem_bytes<HD>();
    SD_CUDA_TRY(cudaFuncSetAttribute(flash_fwd_wgmma_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    dim3 grid((p.T + WBM - 1) / WBM, B * p.H);
    flash_fwd_wgmma_kernel<HD><<<grid, WTHREADS, smem, stream>>>(p);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

template <int HD, bool LSE_ONLY>
int launch(const flash_params &p, int B, cudaStream_t stream) {
    const int smem = smem_bytes<HD>(LSE_ONLY);
    SD_CUDA_TRY(cudaFuncSetAttribute(flash_fwd_kernel<HD, LSE_ONLY>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    dim3 grid((p.T + BM - 1) / BM, B * p.H);
    flash_fwd_kernel<HD, LSE_ONLY><<<grid, WARPS * 32, smem, stream>>>(p);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

} // namespace

/* Also used by the fused stage-1 loss (lse only, into a padded [B, H, lse_ld] buffer). */
extern "C" int sd_cuda_flash_attention_ld(uint16_t *out, float *lse, long long lse_ld,
                                          const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                          int B, int T, int S, int H, int Hkv, int hd, float scale,
                                          cudaStream_t stream) {
    if (B < 1 || T < 1 || S < T || H < 1 || Hkv < 1 || H % Hkv || (hd != 64 && hd != 128) ||
        !q || !k || (out && !v) || (!out && !lse) || lse_ld < T || !(scale > 0.0f))
        return sd_fail(SD_ERR_INTERNAL,
                       "sd_cuda_flash_attention: bad arguments (B %d, T %d, S %d, H %d, Hkv %d, hd %d; "
                       "need S >= T, Hkv | H, hd 64 or 128, scale > 0, q, k, and v with out, lse or out)",
                       B, T, S, H, Hkv, hd);
    if ((long long)B * H > 65535)
        return sd_fail(SD_ERR_INTERNAL, "sd_cuda_flash_attention: B * H = %lld exceeds the grid", (long long)B * H);
    /* cp.async moves 16-byte chunks; out is stored as bf16 pairs */
    if (((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) & 15 || (uintptr_t)out & 3 || (uintptr_t)lse & 3)
        return sd_fail(SD_ERR_INTERNAL, "sd_cuda_flash_attention: q, k, v must be 16-byte aligned, out and lse 4-byte");
    flash_params p;
    p.q = reinterpret_cast<const __nv_bfloat16 *>(q);
    p.k = reinterpret_cast<const __nv_bfloat16 *>(k);
    p.v = reinterpret_cast<const __nv_bfloat16 *>(v);
    p.out = reinterpret_cast<__nv_bfloat16 *>(out);
    p.lse = lse;
    p.T = T, p.S = S, p.H = H, p.Hkv = Hkv;
    p.lse_ld = lse_ld;
    p.scale_log2 = scale * LOG2E;
    if (out && use_wgmma()) return hd == 64 ? launch_wgmma<64>(p, B, stream) : launch_wgmma<128>(p, B, stream);
    if (hd == 64) return out ? launch<64, false>(p, B, stream) : launch<64, true>(p, B, stream);
    return out ? launch<128, false>(p, B, stream) : launch<128, true>(p, B, stream);
}

extern "C" int sd_cuda_flash_attention_wgmma(void) { return use_wgmma(); }

extern "C" int sd_cuda_flash_attention(uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                                       const uint16_t *v, int B, int T, int S, int H, int Hkv, int hd,
                                       float scale, cudaStream_t stream) {
    return sd_cuda_flash_attention_ld(out, lse, T, q, k, v, B, T, S, H, Hkv, hd, scale, stream);
}
