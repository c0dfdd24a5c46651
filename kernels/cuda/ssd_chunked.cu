/* Chunked SSD on the GPU, forward and backward (kernels/cuda/ssd_cuda.h has the interface).
 *
 * The algorithm is the Mamba-2 paper's section 6 ("SSD algorithm: block decomposition"),
 * structured as mamba_ssm's Triton SSD.  Per chunk c of Q steps with cs the cumulative sum
 * of loga inside the chunk (fp32), xs = dt x, S0 the state entering the chunk:
 *
 *   1. chunk state     Sloc_c = sum_j exp(cs_last - cs_j) xs_j B_j^T            [P, N]
 *   2. state passing   S0_{c+1} = exp(cs_last) S0_c + Sloc_c  (sequential over chunks)
 *   3. chunk scan      y_i = sum_{j<=i} (C_i . B_j) exp(cs_i - cs_j) xs_j       (diagonal block)
 *                            + exp(cs_i) S0 C_i + D x_i                         (state to output)
 *
 * Kernels: k_chunk_state (1), k_state_pass (2), k_chunk_scan (3); when G < H, k_chunk_cb
 * forms C B^T once per group and chunk for all the heads that share it (mamba_ssm's
 * bmm_chunk; one block per 64 x 64 tile pair).  The running state of step 2 is fp32; the
 * states entering the chunks are stored as bf16, the form in which the tensor cores take
 * them.  The backward recomputes 1 and 2 (k_chunk_state also forms the per-chunk state
 * gradient dY^T diag(exp cs) C) and runs the state passing in reverse inside the same
 * k_state_pass; then (formulas in kernels/cpu/ssd_backward.c, whose names we keep: W, Gm, Z,
 * dcs), for every G (the "slim" path):
 *   k_chunk_cb       C B^T per group (per head when G == H)
 *   k_chunk_bwd      per chunk and head: dx, ddt, dloga, the dD partials (two blocks per SM);
 *                    when G == H it also stores Gm, the group's sum, for k_chunk_dbc
 *   k_cumsum         cs and dt per chunk and head, for the head loops below
 *   k_gsum           (G < H) the sum of Gm over the group's heads per 64 x 64 tile pair
 *   k_chunk_dbc      dB and dC per group and 64-row tile, the state terms summed over the
 *                    group's heads inside one block, then the Gm terms with the shared B, C
 *   k_reduce_dD      dD over batch and chunks.
 * With SD_SSD_OWN_BWD set, G == H takes the former path instead: k_chunk_bwd<true> forms
 * C B^T, dB and dC itself (one block per SM).  No atomics: every sum has one owner and a
 * fixed order.
 *
 * Profiling: with SD_SSD_PROF set in the environment every launch is timed alone (see
 * prof_begin below).
 *
 * Tensor cores: wmma 16x16x16 bf16 -> fp32 on tiles of 64 rows kept in shared memory; the
 * elementwise decay masks are applied in fp32 between the matmuls.  Accumulators that run over
 * several products stay in registers where the register budget allows (acc_mma: k_chunk_state,
 * k_chunk_dbc, k_chunk_scan with cb, k_chunk_bwd pass B); k_gsum and the slim k_chunk_bwd
 * pass A form dY x^T with mma.sync (mma_util.cuh) and apply the masks in registers.  Tiles
 * arrive by cp.async (load_tile).  exp arguments are
 * clamped at 0 (DESIGN.md section 4: rounding in cumulative sums can make them positive). */
#include <cuda_bf16.h>
#include <mma.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/mma_util.cuh"
#include "kernels/cuda/ssd_cuda.h"

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

#define NT 256   /* threads per block: 8 warps */
#define TILE 64  /* rows of a tile inside a chunk */
#define MAXQ 256 /* the largest chunk: one cumulative-sum element per thread */
#define PASS_EPB 1024 /* state elements per block of the state passing (4 per thread) */

/* ---- arguments ------------------------------------------------------------------------- */

struct Args {
    int B, T, H, P, G, N, Q, nch; /* nch = ceil(T / Q) */
    int nsp;                      /* blocks per (b, h) in the state passing */
    int gs_direct;                /* backward, G == H: k_chunk_bwd writes gsum (Gm) itself */
    const bf16 *x, *Bm, *Cm, *dy;
    const float *dt, *loga, *D, *init, *dfinal;
    bf16 *y, *dx, *dB, *dC;
    float *final_, *ddt, *dloga, *dD, *dinit;
    /* workspace */
    float *states;  /* [B, H, nch, P, N]: Sloc; in the backward then the state entering each chunk */
    float *dstates; /* [B, H, nch, P, N]: dY^T diag(exp cs) C, the chunk's own state gradient */
    bf16 *states16;  /* [B, H, nch, P, N]: the state entering each chunk, as the scan's operand */
    bf16 *dstates16; /* [B, H, nch, P, N]: dS leaving each chunk, as the backward's operand */
    float *decay;   /* [B, H, nch]: exp(cs_last) */
    float *dotpart; /* [B, H, nch, nsp]: exp(cs_last) <dS leaving, S entering> partials */
    float *dDpart;  /* [B, H, nch]: sum over the chunk of dy . x */
    float *cb;          /* [B, nch, G, Q, Q] fp32 C B^T per chunk and group; NULL in the forward
                         * when G == H and on the SD_SSD_OWN_BWD backward path */
    float *gsum;        /* [B, nch, G, Q, Q] fp32 sum over the group's heads of Gm (backward, slim path) */
    float *gcs, *gdtv;  /* [B, H, nch, Q] cs and dtv of chunk_scalars (backward, for k_gsum, k_chunk_dbc) */
};

/* ---- shared-memory layout ---------------------------------------------------------------- */

/* Leading dimensions: +8 bf16 / +4 fp32 padding against bank conflicts; both keep the 32-byte
 * alignment wmma needs for every 16-row, 16-column tile pointer. */
__host__ __device__ static inline int ldh(int cols) { return cols + 8; }
__host__ __device__ static inline int ldf(int cols) { return cols + 4; }

struct Bump {
    size_t off;
    __host__ __device__ size_t take(size_t bytes) {
        size_t o = (off + 127) & ~(size_t)127;
        off = o + bytes;
        return o;
    }
};

/* The scalar arrays every kernel keeps: cs, dtv and three more per-row arrays, a reduction
 * scratch. */
struct ScalarLayout {
    size_t cs, dtv, r0, r1, r2, r3, red;
    __host__ __device__ void init(Bump &m) {
        cs = m.take(MAXQ * 4), dtv = m.take(MAXQ * 4), r0 = m.take(MAXQ * 4);
        r1 = m.take(MAXQ * 4), r2 = m.take(MAXQ * 4), r3 = m.take(MAXQ * 4), red = m.take(64 * 4);
    }
};

struct StateLayout { /* k_chunk_state */
    ScalarLayout s;
    size_t U, V, acc, total;
    __host__ __device__ StateLayout(int P, int N) {
        Bump m = {0};
        s.init(m);
        U = m.take((size_t)TILE * ldh(P) * 2);
        V = m.take((size_t)TILE * ldh(N) * 2);
        acc = m.take((size_t)P * ldf(N) * 4);
        total = m.off;
    }
};

struct CbLayout { /* k_chunk_cb */
    size_t Ti, Tj, Sc, total;
    __host__ __device__ CbLayout(int N) {
        Bump m = {0};
        Ti = m.take((size_t)TILE * ldh(N) * 2);
        Tj = m.take((size_t)TILE * ldh(N) * 2);
        Sc = m.take((size_t)TILE * ldf(TILE) * 4);
        total = m.off;
    }
};

#define GS_STAGES 2 /* k_gsum: heads in flight (cp.async double buffering) */
struct GsumLayout { /* k_gsum: per stage, one head's dY (rows i) and x (rows j) tiles, 64 rows
                     * each, and its scalars cs_i, cs_j, dtv_j (64 each) */
    size_t sc, Yo, Xo, total;
    __host__ __device__ GsumLayout(int P) {
        Bump m = {0};
        sc = m.take((size_t)GS_STAGES * 3 * TILE * 4);
        Yo = m.take((size_t)GS_STAGES * TILE * ldh(P) * 2);
        Xo = m.take((size_t)GS_STAGES * TILE * ldh(P) * 2);
        total = m.off;
    }
};

struct DbcLayout { /* k_chunk_dbc */
    ScalarLayout s;
    size_t SS, Ys, Gb, Tn, Acc, total;
    __host__ __device__ DbcLayout(int P, int N) {
        Bump m = {0};
        s.init(m);
        SS = m.take((size_t)P * ldh(N) * 2);
        Ys = m.take((size_t)TILE * ldh(P) * 2);
        Gb = m.take((size_t)TILE * ldh(TILE) * 2);
        Tn = m.take((size_t)TILE * ldh(N) * 2);
        Acc = m.take((size_t)TILE * ldf(N) * 4);
        total = m.off;
    }
};

struct ScanLayout { /* k_chunk_scan */
    ScalarLayout s;
    size_t S0, Ct, Bt, Xt, Sc, Mt, Yt, total;
    __host__ __device__ ScanLayout(int P, int N) {
        Bump m = {0};
        s.init(m);
        S0 = m.take((size_t)P * ldh(N) * 2);
        Ct = m.take((size_t)TILE * ldh(N) * 2);
        Bt = m.take((size_t)TILE * ldh(N) * 2);
        Xt = m.take((size_t)TILE * ldh(P) * 2);
        Sc = m.take((size_t)TILE * ldf(TILE) * 4);
        Mt = m.take((size_t)TILE * ldh(TILE) * 2);
        Yt = m.take((size_t)TILE * ldf(P) * 4);
        total = m.off;
    }
};

/* k_chunk_bwd.  own: the block forms dB, dC and C B^T itself (G == H).  Otherwise (slim) C B^T
 * comes from k_chunk_cb and dB, dC from k_chunk_dbc: pass A reads only C tiles, pass B only B
 * tiles (one buffer, Ti == Tj), and CB, Acc, Ys, Gb are not needed (offset 0, never touched):
 * about 100 KB at P 64, N 128, two blocks per SM. */
struct BwdLayout {
    ScalarLayout s;
    size_t SS, Ti, Tj, Xj, Yi, Ys, CB, DX, Wb, Gb, Acc, Acc2, total;
    __host__ __device__ BwdLayout(int P, int N, bool own) {
        Bump m = {0};
        s.init(m);
        SS = m.take((size_t)P * ldh(N) * 2);
        Ti = m.take((size_t)TILE * ldh(N) * 2);
        Tj = own ? m.take((size_t)TILE * ldh(N) * 2) : Ti;
        Xj = m.take((size_t)TILE * ldh(P) * 2);
        Yi = m.take((size_t)TILE * ldh(P) * 2);
        Ys = own ? m.take((size_t)TILE * ldh(P) * 2) : 0;
        CB = own ? m.take((size_t)TILE * ldf(TILE) * 4) : 0;
        DX = m.take((size_t)TILE * ldf(TILE) * 4);
        Wb = m.take((size_t)TILE * ldh(TILE) * 2);
        Gb = own ? m.take((size_t)TILE * ldh(TILE) * 2) : 0;
        Acc = own ? m.take((size_t)TILE * ldf(N) * 4) : 0;
        Acc2 = m.take((size_t)TILE * ldf(P) * 4);
        total = m.off;
    }
};

/* ---- device helpers ---------------------------------------------------------------------- */

/* exp of a segment sum (<= 0 up to rounding), clamped at 0 first. */
__device__ __forceinline__ float seg_exp(float d) { return __expf(fminf(d, 0.0f)); }

/* Inclusive prefix sum of v over the block's threads in thread order; called by all threads.
 * Fixed order: the same bits in every kernel that calls it with the same values. */
__device__ float block_scan(float v, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 1; o < 32; o <<= 1) {
        float u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    if (lane == 31) red[w] = v;
    __syncthreads();
    float pre = 0.0f;
    for (int k = 0; k < w; k++) pre += red[k];
    __syncthreads();
    return v + pre;
}

/* Sum of v over the block (fixed order); every thread gets it. */
__device__ float block_sum(float v, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) red[w] = v;
    __syncthreads();
    float s = 0.0f;
    for (int k = 0; k < NT / 32; k++) s += red[k];
    __syncthreads();
    return s;
}

/* Sum over the lanes of a warp; all lanes get it. */
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The per-step scalars of chunk c of head h: cs[i] = sum_{k<=i} loga (fp32, zero-padded past
 * T, so cs stays at its last value there) and dtv[i] = dt (1 without dt, 0 past T). */
__device__ void chunk_scalars(const Args &a, int b, int h, int c, int Lc, float *cs, float *dtv,
                              float *red) {
    int t = threadIdx.x;
    size_t row = ((size_t)b * a.T + (size_t)c * a.Q + t) * a.H + h;
    float v = t < Lc ? a.loga[row] : 0.0f;
    v = block_scan(v, red);
    if (t < a.Q) {
        cs[t] = v;
        dtv[t] = t < Lc ? (a.dt ? a.dt[row] : 1.0f) : 0.0f;
    }
}

/* dst[r][k] = src[r * lds + k] for r < valid, 0 for valid <= r < rows; cols % 8 == 0.
 * By cp.async (zero fill past valid): all of a thread's 16-byte copies are in flight together.
 * wait: the thread's copies (and any issued before) have landed on return; without it the
 * caller must cp_async_wait<0>() (or call a waiting load_tile) before the barrier that
 * publishes the tile. */
__device__ void load_tile(bf16 *dst, int ldd, const bf16 *src, size_t lds, int rows, int valid,
                          int cols, bool wait = true) {
    int cv = cols / 8;
    for (int e = threadIdx.x; e < rows * cv; e += NT) {
        int r = e / cv, k = (e % cv) * 8;
        sd_mma::cp_async16(dst + r * ldd + k, r < valid ? src + r * lds + k : src, r < valid);
    }
    sd_mma::cp_async_commit();
    if (wait) sd_mma::cp_async_wait<0>();
}

/* As load_tile with row r scaled by sc[r] in fp32 before rounding to bf16. */
__device__ void load_tile_scaled(bf16 *dst, int ldd, const bf16 *src, size_t lds, int rows,
                                 int valid, int cols, const float *sc) {
    int cv = cols / 8;
    for (int e = threadIdx.x; e < rows * cv; e += NT) {
        int r = e / cv, k = (e % cv) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < valid) {
            v = *reinterpret_cast<const uint4 *>(src + r * lds + k);
            bf16 *p = reinterpret_cast<bf16 *>(&v);
            float s = sc[r];
            for (int q = 0; q < 8; q++) p[q] = __float2bfloat16(__bfloat162float(p[q]) * s);
        }
        *reinterpret_cast<uint4 *>(dst + r * ldd + k) = v;
    }
}

/* A [P, N] bf16 state from global into shared memory (ld ldh(N)). */
__device__ void load_state(bf16 *dst, const bf16 *S, int P, int N, bool wait = true) {
    load_tile(dst, ldh(N), S, (size_t)N, P, P, N, wait);
}

/* C[M x Nc] (=|+=) op(A)[M x K] op(B)[K x Nc] on tensor cores, fp32 C in shared memory.
 * TA: A is stored [K][M] (we use its transpose); TB: B is stored [Nc][K].  M, Nc, K are
 * multiples of 16.  Each warp owns (16 FM) x (16 FN) output blocks: FM + FN fragment loads
 * feed FM * FN mma, which eases the shared-memory bandwidth that bounds these small tiles.
 * The caller synchronises before (operands written) and after (C read). */
template <bool TA, bool TB, int FM, int FN>
__device__ void mma_warp_tiles(float *C, int ldc, const bf16 *A, int lda, const bf16 *B, int ldb,
                               int M, int Nc, int K, bool accumulate) {
    typedef typename std::conditional<TA, wmma::col_major, wmma::row_major>::type LA;
    typedef typename std::conditional<TB, wmma::col_major, wmma::row_major>::type LB;
    int warp = threadIdx.x >> 5, tn = Nc / (16 * FN), tiles = (M / (16 * FM)) * tn;
    for (int t = warp; t < tiles; t += NT / 32) {
        int m0 = (t / tn) * 16 * FM, n0 = (t % tn) * 16 * FN;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
        for (int i = 0; i < FM; i++)
#pragma unroll
            for (int j = 0; j < FN; j++) {
                float *cp = C + (m0 + 16 * i) * ldc + n0 + 16 * j;
                if (accumulate) wmma::load_matrix_sync(acc[i][j], cp, ldc, wmma::mem_row_major);
                else wmma::fill_fragment(acc[i][j], 0.0f);
            }
        for (int k = 0; k < K; k += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, LA> fa[FM];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, LB> fb[FN];
#pragma unroll
            for (int i = 0; i < FM; i++) {
                int m = m0 + 16 * i;
                wmma::load_matrix_sync(fa[i], TA ? A + k * lda + m : A + m * lda + k, lda);
            }
#pragma unroll
            for (int j = 0; j < FN; j++) {
                int n = n0 + 16 * j;
                wmma::load_matrix_sync(fb[j], TB ? B + n * ldb + k : B + k * ldb + n, ldb);
            }
#pragma unroll
            for (int i = 0; i < FM; i++)
#pragma unroll
                for (int j = 0; j < FN; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
#pragma unroll
        for (int i = 0; i < FM; i++)
#pragma unroll
            for (int j = 0; j < FN; j++)
                wmma::store_matrix_sync(C + (m0 + 16 * i) * ldc + n0 + 16 * j, acc[i][j], ldc,
                                        wmma::mem_row_major);
    }
}

/* The largest warp block that still gives every warp of the block work. */
template <bool TA, bool TB>
__device__ void mma_tiles(float *C, int ldc, const bf16 *A, int lda, const bf16 *B, int ldb,
                          int M, int Nc, int K, bool accumulate) {
    const int warps = NT / 32;
    if (M % 32 == 0 && Nc % 32 == 0 && (M / 32) * (Nc / 32) >= warps)
        mma_warp_tiles<TA, TB, 2, 2>(C, ldc, A, lda, B, ldb, M, Nc, K, accumulate);
    else if (M % 32 == 0 && (M / 32) * (Nc / 16) >= warps)
        mma_warp_tiles<TA, TB, 2, 1>(C, ldc, A, lda, B, ldb, M, Nc, K, accumulate);
    else
        mma_warp_tiles<TA, TB, 1, 1>(C, ldc, A, lda, B, ldb, M, Nc, K, accumulate);
}

__host__ __device__ static inline int round16(int v) { return (v + 15) & ~15; }

/* Elements per thread of a 64 x 64 tile walked as e = threadIdx.x + k NT. */
#define EW (TILE * TILE / NT)

/* A 64 x Nc fp32 accumulator held in registers across products: warp-owned 32 x 16 blocks
 * t = warp + 8 u (u < U, so Nc <= 64 U); fr[u][i] is rows m0 + 16 i.  acc_mma adds op(A) B
 * (A 64 x K, stored [K][64] when TA; B [K][Nc] row-major, [Nc][K] when TB), K % 16 == 0; every element gets
 * the products of mma_tiles in its order (the same bits).  Rows of A past the valid ones
 * only reach accumulator rows that are never stored. */
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> AccFrag;
template <bool TA, int U, bool TB = false> /* TB: B stored [Nc][K] */
__device__ __forceinline__ void acc_mma(AccFrag (&fr)[U][2], const bf16 *A, int lda, const bf16 *B,
                                        int ldb, int Nc, int K) {
    typedef typename std::conditional<TA, wmma::col_major, wmma::row_major>::type LA;
    typedef typename std::conditional<TB, wmma::col_major, wmma::row_major>::type LB;
    const int tn = Nc / 16, tiles = 2 * tn, warp = threadIdx.x >> 5;
#pragma unroll
    for (int u = 0; u < U; u++) {
        int t = warp + 8 * u;
        if (t >= tiles) break; /* uniform over the warp */
        int m0 = (t / tn) * 32, n0 = (t % tn) * 16;
        for (int k = 0; k < K; k += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, LA> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, LB> fb;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                int m = m0 + 16 * i;
                wmma::load_matrix_sync(fa[i], TA ? A + k * lda + m : A + m * lda + k, lda);
            }
            wmma::load_matrix_sync(fb, TB ? B + n0 * ldb + k : B + k * ldb + n0, ldb);
#pragma unroll
            for (int i = 0; i < 2; i++) wmma::mma_sync(fr[u][i], fa[i], fb, fr[u][i]);
        }
    }
}
template <int U>
__device__ __forceinline__ void acc_load(AccFrag (&fr)[U][2], const float *C, int ldc, int Nc) {
    const int tn = Nc / 16, tiles = 2 * tn, warp = threadIdx.x >> 5;
#pragma unroll
    for (int u = 0; u < U; u++) {
        int t = warp + 8 * u;
        if (t >= tiles) break;
        int m0 = (t / tn) * 32, n0 = (t % tn) * 16;
#pragma unroll
        for (int i = 0; i < 2; i++)
            wmma::load_matrix_sync(fr[u][i], C + (m0 + 16 * i) * ldc + n0, ldc, wmma::mem_row_major);
    }
}
template <int U>
__device__ __forceinline__ void acc_store(AccFrag (&fr)[U][2], float *C, int ldc, int Nc) {
    const int tn = Nc / 16, tiles = 2 * tn, warp = threadIdx.x >> 5;
#pragma unroll
    for (int u = 0; u < U; u++) {
        int t = warp + 8 * u;
        if (t >= tiles) break;
        int m0 = (t / tn) * 32, n0 = (t % tn) * 16;
#pragma unroll
        for (int i = 0; i < 2; i++)
            wmma::store_matrix_sync(C + (m0 + 16 * i) * ldc + n0, fr[u][i], ldc, wmma::mem_row_major);
    }
}

/* ---- 1. chunk state (and, for the backward, the chunk's state gradient) ------------------- */

/* grid (nch, H, B).  fwd: states[b,h,c] = sum_j exp(cs_last - cs_j) dt_j x_j B_j^T and
 * decay[b,h,c] = exp(cs_last).  bwd: dstates[b,h,c] = sum_i dy_i (exp(cs_i) C_i)^T, the
 * gradient that the chunk's outputs send to the state entering it (paper section 6, step 4
 * transposed). */
__global__ void __launch_bounds__(NT) k_chunk_state(Args a, int fwd, int bwd) {
    extern __shared__ __align__(128) unsigned char smem[];
    StateLayout L(a.P, a.N);
    float *cs = (float *)(smem + L.s.cs), *dtv = (float *)(smem + L.s.dtv);
    float *w = (float *)(smem + L.s.r0), *red = (float *)(smem + L.s.red);
    bf16 *U = (bf16 *)(smem + L.U), *V = (bf16 *)(smem + L.V);
    float *acc = (float *)(smem + L.acc);
    int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, g = h / (a.H / a.G);
    int P = a.P, N = a.N, t0 = c * a.Q, Lc = min(a.Q, a.T - t0), Lp = round16(Lc);
    chunk_scalars(a, b, h, c, Lc, cs, dtv, red);
    __syncthreads();
    float cs_last = cs[Lc - 1];
    size_t bhc = ((size_t)b * a.H + h) * a.nch + c;
    const size_t ldx = (size_t)a.H * P, ldbc = (size_t)a.G * N;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0 ? !fwd : !bwd) continue;
        for (int t = threadIdx.x; t < Lp; t += NT)
            w[t] = pass == 0 ? seg_exp(cs_last - cs[t]) * dtv[t] : seg_exp(cs[t]);
        __syncthreads();
        const bf16 *us = pass == 0 ? a.x : a.dy, *vs = pass == 0 ? a.Bm : a.Cm;
        if (P % 32 == 0) {
            /* The [P, N] accumulator stays in registers over the chunk's tiles: warp-owned
             * 32 x 16 blocks t = warp + 8 u (u < 4: P <= 128, N <= 128), stored to acc once.
             * Each element's products and their order are those of mma_tiles: same bits. */
            const int tn = N / 16, tiles = (P / 32) * tn, warp = threadIdx.x >> 5;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> fr[4][2];
#pragma unroll
            for (int u = 0; u < 4; u++)
#pragma unroll
                for (int i = 0; i < 2; i++) wmma::fill_fragment(fr[u][i], 0.0f);
            for (int j0 = 0; j0 < Lp; j0 += TILE) {
                int rj = min(TILE, Lp - j0), vj = min(rj, Lc - j0);
                size_t row = (size_t)b * a.T + t0 + j0;
                load_tile(V, ldh(N), vs + (row * a.G + g) * N, ldbc, rj, vj, N, false);
                load_tile_scaled(U, ldh(P), us + (row * a.H + h) * P, ldx, rj, vj, P, w + j0);
                sd_mma::cp_async_wait<0>();
                __syncthreads();
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    int t = warp + 8 * u;
                    if (t >= tiles) break; /* uniform over the warp */
                    int m0 = (t / tn) * 32, n0 = (t % tn) * 16;
                    for (int k = 0; k < rj; k += 16) {
                        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> fa[2];
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb;
#pragma unroll
                        for (int i = 0; i < 2; i++)
                            wmma::load_matrix_sync(fa[i], U + k * ldh(P) + m0 + 16 * i, ldh(P));
                        wmma::load_matrix_sync(fb, V + k * ldh(N) + n0, ldh(N));
#pragma unroll
                        for (int i = 0; i < 2; i++) wmma::mma_sync(fr[u][i], fa[i], fb, fr[u][i]);
                    }
                }
                __syncthreads(); /* U, V are rewritten next */
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int t = warp + 8 * u;
                if (t >= tiles) break;
                int m0 = (t / tn) * 32, n0 = (t % tn) * 16;
#pragma unroll
                for (int i = 0; i < 2; i++)
                    wmma::store_matrix_sync(acc + (m0 + 16 * i) * ldf(N) + n0, fr[u][i], ldf(N),
                                            wmma::mem_row_major);
            }
            __syncthreads();
        } else
            for (int j0 = 0; j0 < Lp; j0 += TILE) {
                int rj = min(TILE, Lp - j0), vj = min(rj, Lc - j0);
                size_t row = (size_t)b * a.T + t0 + j0;
                load_tile(V, ldh(N), vs + (row * a.G + g) * N, ldbc, rj, vj, N, false);
                load_tile_scaled(U, ldh(P), us + (row * a.H + h) * P, ldx, rj, vj, P, w + j0);
                sd_mma::cp_async_wait<0>();
                __syncthreads();
                mma_tiles<true, false>(acc, ldf(N), U, ldh(P), V, ldh(N), P, N, rj, j0 > 0);
                __syncthreads();
            }
        float *dst = (pass == 0 ? a.states : a.dstates) + bhc * P * N;
        for (int e = threadIdx.x; e < P * N; e += NT) dst[e] = acc[(e / N) * ldf(N) + e % N];
        if (pass == 0 && threadIdx.x == 0) a.decay[bhc] = seg_exp(cs_last);
        __syncthreads();
    }
}

/* ---- 2. state passing (paper section 6, step 3), forward and reverse -------------------- */

/* grid (B*H, nsp): each block owns PASS_EPB elements of the [P, N] state of one (b, h) and
 * walks the chunks in order, the running state in fp32 registers: states16[c] receives the
 * state entering chunk c (bf16: it is only a tensor-core operand), and in the backward also
 * states[c] (fp32, for the dot product below) in place of Sloc_c.
 * bwd: then the chunks in reverse: dstates16[c] receives dS leaving chunk c,
 * dS entering c = exp(cs_last) dS leaving c + dstates[c] (the chunk's own); and
 * dotpart[c] = exp(cs_last) <dS leaving c, S entering c> over this block's elements, the
 * d cs_last term of the chunk's decay. */
__global__ void __launch_bounds__(NT) k_state_pass(Args a, int bwd) {
    __shared__ float red[32];
    int bh = blockIdx.x, PN = a.P * a.N;
    int base = blockIdx.y * PASS_EPB + threadIdx.x;
    const int K = PASS_EPB / NT;
    const int nch = a.nch;
    const float *__restrict__ decay = a.decay + (size_t)bh * nch;
    /* Memory-level parallelism: every load of a chunk (and of the next one) is issued before
     * any store, so the K elements' loads are in flight together rather than one after the
     * other behind stores the compiler cannot reorder them with.  The arithmetic is the
     * former one, element by element: the same bits. */
    float S[K], loc[K], nxt[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        int e = base + k * NT;
        S[k] = (e < PN && a.init) ? a.init[(size_t)bh * PN + e] : 0.0f;
        loc[k] = e < PN ? a.states[(size_t)bh * nch * PN + e] : 0.0f;
    }
    for (int c = 0; c < nch; c++) {
        size_t off = ((size_t)bh * nch + c) * PN;
        float dec = decay[c];
#pragma unroll
        for (int k = 0; k < K; k++) {
            int e = base + k * NT;
            nxt[k] = (e < PN && c + 1 < nch) ? a.states[off + PN + e] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < K; k++) {
            int e = base + k * NT;
            if (e >= PN) continue;
            a.states16[off + e] = __float2bfloat16(S[k]);
            if (bwd) a.states[off + e] = S[k];
            S[k] = dec * S[k] + loc[k];
            loc[k] = nxt[k];
        }
    }
    if (a.final_)
        for (int k = 0; k < K; k++) {
            int e = base + k * NT;
            if (e < PN) a.final_[(size_t)bh * PN + e] = S[k];
        }
    if (!bwd) return;
    float st[K], nst[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        int e = base + k * NT;
        size_t off = ((size_t)bh * nch + nch - 1) * PN;
        S[k] = (e < PN && a.dfinal) ? a.dfinal[(size_t)bh * PN + e] : 0.0f;
        loc[k] = e < PN ? a.dstates[off + e] : 0.0f;
        st[k] = e < PN ? a.states[off + e] : 0.0f;
    }
    for (int c = nch - 1; c >= 0; c--) {
        size_t off = ((size_t)bh * nch + c) * PN;
        float dec = decay[c], part = 0.0f;
#pragma unroll
        for (int k = 0; k < K; k++) {
            int e = base + k * NT;
            bool ok = e < PN && c > 0;
            nxt[k] = ok ? a.dstates[off - PN + e] : 0.0f;
            nst[k] = ok ? a.states[off - PN + e] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < K; k++) {
            int e = base + k * NT;
            if (e >= PN) continue;
            a.dstates16[off + e] = __float2bfloat16(S[k]);
            part += S[k] * st[k];
            S[k] = dec * S[k] + loc[k];
            loc[k] = nxt[k];
            st[k] = nst[k];
        }
        part = block_sum(part, red);
        if (threadIdx.x == 0) a.dotpart[((size_t)bh * nch + c) * a.nsp + blockIdx.y] = dec * part;
    }
    if (a.dinit)
        for (int k = 0; k < K; k++) {
            int e = base + k * NT;
            if (e < PN) a.dinit[(size_t)bh * PN + e] = S[k];
        }
}

/* ---- C B^T of a chunk, once per group ------------------------------------------------------ */

/* Tile pair p (0 .. ntile (ntile + 1) / 2 - 1) of a chunk -> the row and column tiles
 * (ti, tj), tj <= ti, in row order: (0,0), (1,0), (1,1), (2,0), ... */
__device__ __forceinline__ void tile_pair(int p, int *ti, int *tj) {
    int i = 0;
    while (p > i) p -= i + 1, i++;
    *ti = i, *tj = p;
}

__host__ __device__ static inline int n_tiles(int Q) { return (Q + TILE - 1) / TILE; }
__host__ __device__ static inline int n_pairs(int Q) { return n_tiles(Q) * (n_tiles(Q) + 1) / 2; }

/* grid (nch * npairs, G, B), only when G < H: one 64 x 64 tile pair on or below the diagonal
 * per block.  cb[b, c, g] = C B^T over the chunk (the tiles on and below the diagonal), which
 * the H/G heads of the group share: computed once here rather than once per head in the scan
 * and the backward (mamba_ssm's bmm_chunk).  Rows and columns past T are zero. */
__global__ void __launch_bounds__(NT) k_chunk_cb(Args a) {
    extern __shared__ __align__(128) unsigned char smem[];
    CbLayout L(a.N);
    bf16 *Ti = (bf16 *)(smem + L.Ti), *Tj = (bf16 *)(smem + L.Tj);
    float *Sc = (float *)(smem + L.Sc);
    int np = n_pairs(a.Q), c = blockIdx.x / np, ti, tj, g = blockIdx.y, b = blockIdx.z;
    tile_pair(blockIdx.x % np, &ti, &tj);
    int N = a.N, Q = a.Q, t0 = c * Q, Lc = min(Q, a.T - t0), Lp = round16(Lc);
    int i0 = ti * TILE, j0 = tj * TILE;
    if (i0 >= Lp) return; /* uniform over the block */
    const size_t ldbc = (size_t)a.G * N;
    float *dst = a.cb + (((size_t)b * a.nch + c) * a.G + g) * Q * Q;
    int ri = min(TILE, Lp - i0), vi = min(ri, Lc - i0);
    int rj = min(TILE, Lp - j0), vj = min(rj, Lc - j0);
    size_t rowi = (size_t)b * a.T + t0 + i0, rowj = (size_t)b * a.T + t0 + j0;
    load_tile(Ti, ldh(N), a.Cm + (rowi * a.G + g) * N, ldbc, ri, vi, N, false);
    load_tile(Tj, ldh(N), a.Bm + (rowj * a.G + g) * N, ldbc, rj, vj, N);
    __syncthreads();
    mma_tiles<false, true>(Sc, ldf(TILE), Ti, ldh(N), Tj, ldh(N), ri, rj, N, false);
    __syncthreads();
    for (int e = threadIdx.x; e < ri * rj; e += NT) {
        int r = e / rj, q = e % rj;
        dst[(size_t)(i0 + r) * Q + j0 + q] = Sc[r * ldf(TILE) + q];
    }
}

/* ---- 3. chunk scan: the outputs -------------------------------------------------------- */

/* grid (nch, H, B).  Per tile of 64 output rows i: Y = diag(exp cs_i) C_i S0^T (state to
 * output), then for every column tile j <= i: Y += (L o C_i B_j^T o dt_j) x_j with
 * L[i, j] = exp(cs_i - cs_j) for j <= i (the diagonal block, paper section 6 step 1),
 * finally y = Y + D x. */
__global__ void __launch_bounds__(NT, 2) k_chunk_scan(Args a) { /* two blocks per SM: <= 128 registers */
    extern __shared__ __align__(128) unsigned char smem[];
    ScanLayout L(a.P, a.N);
    float *cs = (float *)(smem + L.s.cs), *dtv = (float *)(smem + L.s.dtv);
    float *red = (float *)(smem + L.s.red);
    bf16 *S0 = (bf16 *)(smem + L.S0), *Ct = (bf16 *)(smem + L.Ct), *Bt = (bf16 *)(smem + L.Bt);
    bf16 *Xt = (bf16 *)(smem + L.Xt), *Mt = (bf16 *)(smem + L.Mt);
    float *Sc = (float *)(smem + L.Sc), *Yt = (float *)(smem + L.Yt);
    int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, g = h / (a.H / a.G);
    int P = a.P, N = a.N, t0 = c * a.Q, Lc = min(a.Q, a.T - t0), Lp = round16(Lc);
    const size_t ldx = (size_t)a.H * P, ldbc = (size_t)a.G * N;
    size_t bhc = ((size_t)b * a.H + h) * a.nch + c;
    const float *cbg = a.cb ? a.cb + (((size_t)b * a.nch + c) * a.G + g) * a.Q * a.Q : NULL;
    chunk_scalars(a, b, h, c, Lc, cs, dtv, red);
    load_state(S0, a.states16 + bhc * P * N, P, N, false);
    float Dh = a.D ? a.D[h] : 0.0f;
    sd_mma::cp_async_wait<0>(); /* the tiles loaded without waiting above */
    __syncthreads();
    /* C B^T from k_chunk_cb and P <= 64: the output tile accumulates in registers (one
     * 32 x 16 block per warp) over the column tiles and reaches Yt once; same bits */
    const bool yreg = cbg && P <= 64;
    AccFrag fy[1][2];
    for (int i0 = 0; i0 < Lp; i0 += TILE) {
        int ri = min(TILE, Lp - i0), vi = min(ri, Lc - i0);
        size_t rowi = (size_t)b * a.T + t0 + i0;
        if (cbg) {
            /* C B^T from k_chunk_cb: Y = (diag(exp cs_i) C_i) S0^T (the decay-scaled C rounded to
             * bf16) and the first column tile's term in one phase.  Both products give each warp
             * the same output tiles (mma_tiles picks them from M and Nc): __syncwarp suffices. */
            for (int e = threadIdx.x, cv = N / 8; e < ri * cv; e += NT) {
                int r = e / cv, k = (e % cv) * 8;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (r < vi) {
                    v = *reinterpret_cast<const uint4 *>(a.Cm + ((rowi + r) * a.G + g) * N + k);
                    bf16 *pv = reinterpret_cast<bf16 *>(&v);
                    float sc = seg_exp(cs[i0 + r]);
                    for (int q = 0; q < 8; q++) pv[q] = __float2bfloat16(__bfloat162float(pv[q]) * sc);
                }
                *reinterpret_cast<uint4 *>(Ct + r * ldh(N) + k) = v;
            }
            int rj = min(TILE, Lp), vj = min(rj, Lc);
            load_tile(Xt, ldh(P), a.x + (((size_t)b * a.T + t0) * a.H + h) * P, ldx, rj, vj, P, false);
            for (int e = threadIdx.x; e < ri * rj; e += NT) {
                int r = e / rj, j = e % rj, i = i0 + r;
                float m = j <= i ? cbg[(size_t)i * a.Q + j] * seg_exp(cs[i] - cs[j]) * dtv[j] : 0.0f;
                Mt[r * ldh(TILE) + j] = __float2bfloat16(m);
            }
            sd_mma::cp_async_wait<0>(); /* the tiles loaded without waiting above */
            __syncthreads();
            if (yreg) {
#pragma unroll
                for (int q = 0; q < 2; q++) wmma::fill_fragment(fy[0][q], 0.0f);
                acc_mma<false, 1, true>(fy, Ct, ldh(N), S0, ldh(N), P, N);
                acc_mma<false, 1>(fy, Mt, ldh(TILE), Xt, ldh(P), P, rj);
            } else {
                mma_tiles<false, true>(Yt, ldf(P), Ct, ldh(N), S0, ldh(N), ri, P, N, false);
                __syncwarp();
                mma_tiles<false, false>(Yt, ldf(P), Mt, ldh(TILE), Xt, ldh(P), ri, P, rj, true);
            }
            __syncthreads();
        } else {
            /* the state term and the first column tile's C B^T in one phase, the decay and the
             * mask in the next */
            int rj = min(TILE, Lp), vj = min(rj, Lc);
            size_t rowj = (size_t)b * a.T + t0;
            load_tile(Ct, ldh(N), a.Cm + (rowi * a.G + g) * N, ldbc, ri, vi, N, false);
            load_tile(Bt, ldh(N), a.Bm + (rowj * a.G + g) * N, ldbc, rj, vj, N, false);
            load_tile(Xt, ldh(P), a.x + (rowj * a.H + h) * P, ldx, rj, vj, P);
            __syncthreads();
            mma_tiles<false, true>(Yt, ldf(P), Ct, ldh(N), S0, ldh(N), ri, P, N, false);
            mma_tiles<false, true>(Sc, ldf(TILE), Ct, ldh(N), Bt, ldh(N), ri, rj, N, false);
            __syncthreads();
            for (int e = threadIdx.x; e < ri * P; e += NT) {
                int r = e / P, p = e % P;
                Yt[r * ldf(P) + p] *= seg_exp(cs[i0 + r]);
            }
            for (int e = threadIdx.x; e < ri * rj; e += NT) {
                int r = e / rj, j = e % rj, i = i0 + r;
                float m = j <= i ? Sc[r * ldf(TILE) + j] * seg_exp(cs[i] - cs[j]) * dtv[j] : 0.0f;
                Mt[r * ldh(TILE) + j] = __float2bfloat16(m);
            }
            __syncthreads();
            mma_tiles<false, false>(Yt, ldf(P), Mt, ldh(TILE), Xt, ldh(P), ri, P, rj, true);
            __syncthreads();
        }
        for (int j0 = TILE; j0 <= i0; j0 += TILE) { /* the first column tile is done above */
            int rj = min(TILE, Lp - j0), vj = min(rj, Lc - j0);
            size_t rowj = (size_t)b * a.T + t0 + j0;
            if (cbg) { /* C B^T from k_chunk_cb: the mask needs nothing loaded here, two barriers */
                load_tile(Xt, ldh(P), a.x + (rowj * a.H + h) * P, ldx, rj, vj, P, false);
                for (int e = threadIdx.x; e < ri * rj; e += NT) {
                    int r = e / rj, s = e % rj, i = i0 + r, j = j0 + s;
                    float m = j <= i ? cbg[(size_t)i * a.Q + j] * seg_exp(cs[i] - cs[j]) * dtv[j] : 0.0f;
                    Mt[r * ldh(TILE) + s] = __float2bfloat16(m);
                }
                sd_mma::cp_async_wait<0>(); /* the tiles loaded without waiting above */
                __syncthreads();
                if (yreg) acc_mma<false, 1>(fy, Mt, ldh(TILE), Xt, ldh(P), P, rj);
                else mma_tiles<false, false>(Yt, ldf(P), Mt, ldh(TILE), Xt, ldh(P), ri, P, rj, true);
                __syncthreads();
                continue;
            }
            load_tile(Bt, ldh(N), a.Bm + (rowj * a.G + g) * N, ldbc, rj, vj, N, false);
            load_tile(Xt, ldh(P), a.x + (rowj * a.H + h) * P, ldx, rj, vj, P);
            __syncthreads();
            if (!cbg) mma_tiles<false, true>(Sc, ldf(TILE), Ct, ldh(N), Bt, ldh(N), ri, rj, N, false);
            __syncthreads();
            for (int e = threadIdx.x; e < ri * rj; e += NT) {
                int r = e / rj, s = e % rj, i = i0 + r, j = j0 + s;
                float cb = cbg ? cbg[(size_t)i * a.Q + j] : Sc[r * ldf(TILE) + s];
                float m = j <= i ? cb * seg_exp(cs[i] - cs[j]) * dtv[j] : 0.0f;
                Mt[r * ldh(TILE) + s] = __float2bfloat16(m);
            }
            __syncthreads();
            mma_tiles<false, false>(Yt, ldf(P), Mt, ldh(TILE), Xt, ldh(P), ri, P, rj, true);
            __syncthreads();
        }
        if (yreg) {
            acc_store(fy, Yt, ldf(P), P);
            __syncthreads();
        }
        /* The last column tile was the diagonal one: Xt holds this tile's x rows. */
        for (int e = threadIdx.x; e < vi * P; e += NT) {
            int r = e / P, p = e % P;
            float v = Yt[r * ldf(P) + p] + Dh * __bfloat162float(Xt[r * ldh(P) + p]);
            a.y[((rowi + r) * a.H + h) * P + p] = __float2bfloat16(v);
        }
        __syncthreads();
    }
}

/* ---- 4. backward of a chunk -------------------------------------------------------------- */

/* grid (nch, H, B): chunk c of head h of batch b.  With S0 the state entering the chunk and
 * dS1 the gradient of the state leaving it (kernels/cpu/ssd_backward.c):
 *
 *   pass A, per row tile i:  dC_i  = exp(cs_i) dY_i S0 + sum_{j<=i} Gm_ij B_j
 *                            dcs_i += exp(cs_i) dY_i . (S0 C_i) + sum_j Z_ij
 *   pass B, per row tile j:  dxs_j = exp(cs_last - cs_j) dS1 B_j + sum_{i>=j} W_ij dY_i
 *                            dB_j  = exp(cs_last - cs_j) dt_j x_j dS1 + sum_{i>=j} Gm_ij C_i
 *                            dcs_j -= dt_j x_j . (exp(cs_last - cs_j) dS1 B_j) + sum_i Z_ij
 *
 * with W = (C B^T) o L, Gm = L o (dY x^T) o dt_j, Z = (C B^T) o Gm.  The state terms of dcs
 * use the identities C_i . (dY_i S0) = dY_i . (S0 C_i) and B_j . (x_j dS1) = x_j . (dS1 B_j),
 * so they stay P-vectors per head.  dB and dC are formed here only on the OWN path (a.cb NULL:
 * SD_SSD_OWN_BWD at G == H); on the slim path the column sums of Z move to pass A and pass B
 * forms only W^T dY; dB and dC come from k_chunk_dbc per group (Gm summed over the group's
 * heads by k_gsum, or written by pass A here when G == H). */
template <bool OWN> /* OWN: G == H; one block per SM (shared memory); slim: two */
__global__ void __launch_bounds__(NT, OWN ? 1 : 2) k_chunk_bwd(Args a) {
    extern __shared__ __align__(128) unsigned char smem[];
    BwdLayout L(a.P, a.N, OWN);
    float *cs = (float *)(smem + L.s.cs), *dtv = (float *)(smem + L.s.dtv);
    float *ecs = (float *)(smem + L.s.r0), *edec = (float *)(smem + L.s.r1);
    float *dcs = (float *)(smem + L.s.r2), *rowv = (float *)(smem + L.s.r3);
    float *red = (float *)(smem + L.s.red);
    bf16 *SS = (bf16 *)(smem + L.SS), *Ti = (bf16 *)(smem + L.Ti), *Tj = (bf16 *)(smem + L.Tj);
    bf16 *Xj = (bf16 *)(smem + L.Xj), *Yi = (bf16 *)(smem + L.Yi), *Ys = (bf16 *)(smem + L.Ys);
    bf16 *Wb = (bf16 *)(smem + L.Wb), *Gb = (bf16 *)(smem + L.Gb);
    float *CB = (float *)(smem + L.CB), *DX = (float *)(smem + L.DX);
    float *Acc = (float *)(smem + L.Acc), *Acc2 = (float *)(smem + L.Acc2);

    int c = blockIdx.x, b = blockIdx.z, g = blockIdx.y / (a.H / a.G);
    int P = a.P, N = a.N, t0 = c * a.Q, Lc = min(a.Q, a.T - t0), Lp = round16(Lc);
    const size_t ldx = (size_t)a.H * P, ldbc = (size_t)a.G * N;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* G == H: this block forms dB, dC of its head and C B^T itself.  Otherwise C B^T comes from
     * k_chunk_cb and dB, dC from k_chunk_dbc, and the B (pass A) and C (pass B) tiles of the
     * inner loops are not even loaded. */
    const bool own_bc = OWN; /* the host launches OWN exactly when a.cb == NULL */
    const float *cbg = a.cb ? a.cb + (((size_t)b * a.nch + c) * a.G + g) * a.Q * a.Q : NULL;
    /* G == H on the slim path: Gm of this head is the group's sum, for k_chunk_dbc */
    float *gsd = !OWN && a.gs_direct ? a.gsum + (((size_t)b * a.nch + c) * a.G + g) * a.Q * a.Q : NULL;

    {
        const int h = blockIdx.y;
        size_t bhc = ((size_t)b * a.H + h) * a.nch + c;
        float Dh = a.D ? a.D[h] : 0.0f;
        chunk_scalars(a, b, h, c, Lc, cs, dtv, red);
        __syncthreads();
        float cs_last = cs[Lc - 1];
        for (int t = threadIdx.x; t < MAXQ; t += NT) {
            ecs[t] = t < Lp ? seg_exp(cs[t]) : 0.0f;
            edec[t] = t < Lp ? seg_exp(cs_last - cs[t]) : 0.0f;
            dcs[t] = 0.0f;
            rowv[t] = 0.0f;
        }
        load_state(SS, a.states16 + bhc * P * N, P, N);
        __syncthreads();

        /* pass A: dC and the row terms of dcs */
        for (int i0 = 0; i0 < Lp; i0 += TILE) {
            int ri = min(TILE, Lp - i0), vi = min(ri, Lc - i0);
            size_t rowi = (size_t)b * a.T + t0 + i0;
            load_tile(Ti, ldh(N), a.Cm + (rowi * a.G + g) * N, ldbc, ri, vi, N, false);
            load_tile(Yi, ldh(P), a.dy + (rowi * a.H + h) * P, ldx, ri, vi, P);
            if (own_bc) load_tile_scaled(Ys, ldh(P), a.dy + (rowi * a.H + h) * P, ldx, ri, vi, P, ecs + i0);
            __syncthreads();
            if (own_bc) mma_tiles<false, false>(Acc, ldf(N), Ys, ldh(P), SS, ldh(N), ri, N, P, false);
            mma_tiles<false, true>(Acc2, ldf(P), Ti, ldh(N), SS, ldh(N), ri, P, N, false);
            __syncthreads();
            for (int r = warp; r < ri; r += NT / 32) { /* dcs_i += exp(cs_i) dY_i . (S0 C_i) */
                float s = 0.0f;
                for (int p = lane; p < P; p += 32) s += __bfloat162float(Yi[r * ldh(P) + p]) * Acc2[r * ldf(P) + p];
                s = warp_sum(s);
                if (lane == 0) dcs[i0 + r] += ecs[i0 + r] * s;
            }
            for (int j0 = 0; j0 <= i0; j0 += TILE) {
                int rj = min(TILE, Lp - j0), vj = min(rj, Lc - j0);
                size_t rowj = (size_t)b * a.T + t0 + j0;
                if (own_bc) load_tile(Tj, ldh(N), a.Bm + (rowj * a.G + g) * N, ldbc, rj, vj, N);
                load_tile(Xj, ldh(P), a.x + (rowj * a.H + h) * P, ldx, rj, vj, P);
                __syncthreads();
                if (!OWN) {
                    /* slim: dY x^T on mma.sync in registers (mma_util.cuh fragments; warp block
                     * rows m0 + 0..15, columns n0 + 0..31), Gm and Z formed there and only Z
                     * stored: one barrier less per tile pair.  Rows past ri and columns past rj
                     * (stale Yi, Xj rows) are never used. */
                    const int gq = lane >> 2, cq = lane & 3;
                    const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
                    float cbr[4][4], acc[4][4];
#pragma unroll
                    for (int t = 0; t < 4; t++)
#pragma unroll
                        for (int q = 0; q < 4; q++) {
                            int r = m0 + gq + (q >> 1) * 8, s2 = n0 + 8 * t + 2 * cq + (q & 1);
                            cbr[t][q] = r < ri && s2 < rj ? cbg[(size_t)(i0 + r) * a.Q + j0 + s2] : 0.0f;
                            acc[t][q] = 0.0f;
                        }
                    for (int k0 = 0; k0 < P; k0 += 16) {
                        uint32_t fa[4], fb0[4], fb1[4];
                        sd_mma::load_a(fa, Yi, ldh(P), m0, k0, lane);
                        sd_mma::load_b_nt(fb0, Xj, ldh(P), n0, k0, lane);
                        sd_mma::load_b_nt(fb1, Xj, ldh(P), n0 + 16, k0, lane);
                        sd_mma::mma_bf16(acc[0], fa, fb0[0], fb0[1]);
                        sd_mma::mma_bf16(acc[1], fa, fb0[2], fb0[3]);
                        sd_mma::mma_bf16(acc[2], fa, fb1[0], fb1[1]);
                        sd_mma::mma_bf16(acc[3], fa, fb1[2], fb1[3]);
                    }
#pragma unroll
                    for (int t = 0; t < 4; t++)
#pragma unroll
                        for (int q = 0; q < 4; q++) {
                            int r = m0 + gq + (q >> 1) * 8, s2 = n0 + 8 * t + 2 * cq + (q & 1);
                            if (r >= ri || s2 >= rj) continue;
                            int i = i0 + r, j = j0 + s2;
                            float gm = j <= i ? acc[t][q] * seg_exp(cs[i] - cs[j]) * dtv[j] : 0.0f;
                            if (gsd) gsd[(size_t)i * a.Q + j] = gm;
                            DX[r * ldf(TILE) + s2] = cbr[t][q] * gm; /* Z */
                        }
                } else {
                    if (!cbg) mma_tiles<false, true>(CB, ldf(TILE), Ti, ldh(N), Tj, ldh(N), ri, rj, N, false);
                    mma_tiles<false, true>(DX, ldf(TILE), Yi, ldh(P), Xj, ldh(P), ri, rj, P, false);
                    __syncthreads();
#pragma unroll
                    for (int k = 0; k < EW; k++) {
                        int e = threadIdx.x + k * NT;
                        if (e >= ri * rj) continue;
                        int r = e / rj, s = e % rj, i = i0 + r, j = j0 + s;
                        float gm = j <= i ? DX[r * ldf(TILE) + s] * seg_exp(cs[i] - cs[j]) * dtv[j] : 0.0f;
                        if (own_bc) Gb[r * ldh(TILE) + s] = __float2bfloat16(gm);
                        if (gsd) gsd[(size_t)i * a.Q + j] = gm;
                        DX[r * ldf(TILE) + s] = CB[r * ldf(TILE) + s] * gm; /* Z */
                    }
                }
                __syncthreads();
                for (int r = warp; r < ri; r += NT / 32) { /* dcs_i += sum_j Z_ij */
                    float s = 0.0f;
                    for (int q = lane; q < rj; q += 32) s += DX[r * ldf(TILE) + q];
                    s = warp_sum(s);
                    if (lane == 0) dcs[i0 + r] += s;
                }
                /* slim: dcs_j -= sum_i Z_ij here, so that pass B needs no Z (nor dY x^T).  Tiles
                 * start at multiples of 64: dcs[k] has one writer, warp k % 8, in both loops. */
                if (!OWN)
                    for (int s = warp; s < rj; s += NT / 32) {
                        float z = 0.0f;
                        for (int r = lane; r < ri; r += 32) z += DX[r * ldf(TILE) + s];
                        z = warp_sum(z);
                        if (lane == 0) dcs[j0 + s] -= z;
                    }
                /* slim: no barrier here; the one after the next pair's Xj load keeps its DX
                 * product behind these sums (Xj itself was last read before the last barrier) */
                if (own_bc) {
                    mma_tiles<false, false>(Acc, ldf(N), Gb, ldh(TILE), Tj, ldh(N), ri, N, rj, true);
                    __syncthreads();
                }
            }
            if (own_bc && a.dC)
                for (int e = threadIdx.x; e < vi * N; e += NT) {
                    int r = e / N, n = e % N;
                    size_t t = (size_t)t0 + i0 + r;
                    a.dC[(((size_t)b * a.T + t) * a.G + g) * N + n] = __float2bfloat16(Acc[r * ldf(N) + n]);
                }
            __syncthreads();
        }

        /* pass B: dB, dxs (-> dx, ddt), the column terms of dcs */
        load_state(SS, a.dstates16 + bhc * P * N, P, N, false);
        for (int t = threadIdx.x; t < Lp; t += NT) rowv[t] = edec[t] * dtv[t];
        sd_mma::cp_async_wait<0>(); /* the tiles loaded without waiting above */
        __syncthreads();
        float qsum_part = 0.0f, dD_part = 0.0f; /* per-thread, summed in a fixed order below */
        for (int j0 = 0; j0 < Lp; j0 += TILE) {
            int rj = min(TILE, Lp - j0), vj = min(rj, Lc - j0);
            size_t rowj = (size_t)b * a.T + t0 + j0;
            load_tile(Tj, ldh(N), a.Bm + (rowj * a.G + g) * N, ldbc, rj, vj, N, false);
            load_tile(Xj, ldh(P), a.x + (rowj * a.H + h) * P, ldx, rj, vj, P);
            if (own_bc) load_tile_scaled(Ys, ldh(P), a.x + (rowj * a.H + h) * P, ldx, rj, vj, P, rowv + j0);
            __syncthreads();
            if (own_bc) mma_tiles<false, false>(Acc, ldf(N), Ys, ldh(P), SS, ldh(N), rj, N, P, false);
            mma_tiles<false, true>(Acc2, ldf(P), Tj, ldh(N), SS, ldh(N), rj, P, N, false);
            __syncthreads();
            for (int r = warp; r < rj; r += NT / 32) { /* dxs_state; dcs_j -= dt_j x_j . dxs_state_j */
                float s = 0.0f, e = edec[j0 + r];
                for (int p = lane; p < P; p += 32) {
                    float v = Acc2[r * ldf(P) + p] * e;
                    Acc2[r * ldf(P) + p] = v;
                    s += __bfloat162float(Xj[r * ldh(P) + p]) * v;
                }
                s = warp_sum(s) * dtv[j0 + r];
                if (lane == 0) {
                    dcs[j0 + r] -= s;
                    qsum_part += s;
                }
            }
            /* slim: dxs_j += W^T dY only; for P <= 64 the accumulator in registers over the row
             * tiles i (loaded once from Acc2 after the first barrier, stored back after the
             * loop; each warp its own blocks), otherwise in Acc2 */
            AccFrag fr[1][2];
            const bool regacc = P <= 64;
            for (int i0 = j0; i0 < Lp && !OWN; i0 += TILE) {
                int ri = min(TILE, Lp - i0), vi = min(ri, Lc - i0);
                size_t rowi = (size_t)b * a.T + t0 + i0;
                __syncthreads(); /* Wb, Yi of the previous tile are no longer read */
                load_tile(Yi, ldh(P), a.dy + (rowi * a.H + h) * P, ldx, ri, vi, P, false);
                for (int e = threadIdx.x; e < ri * rj; e += NT) {
                    int r = e / rj, s = e % rj, i = i0 + r, j = j0 + s;
                    float l = j <= i ? seg_exp(cs[i] - cs[j]) : 0.0f;
                    Wb[r * ldh(TILE) + s] = __float2bfloat16(cbg[(size_t)i * a.Q + j] * l);
                }
                sd_mma::cp_async_wait<0>(); /* the tiles loaded without waiting above */
                __syncthreads();
                if (regacc) {
                    if (i0 == j0) acc_load(fr, Acc2, ldf(P), P);
                    acc_mma<true>(fr, Wb, ldh(TILE), Yi, ldh(P), P, ri);
                } else
                    mma_tiles<true, false>(Acc2, ldf(P), Wb, ldh(TILE), Yi, ldh(P), rj, P, ri, true);
            }
            if (!OWN && regacc) acc_store(fr, Acc2, ldf(P), P);
            for (int i0 = j0; i0 < Lp && OWN; i0 += TILE) {
                int ri = min(TILE, Lp - i0), vi = min(ri, Lc - i0);
                size_t rowi = (size_t)b * a.T + t0 + i0;
                __syncthreads(); /* Ti, Yi of the previous tile are no longer read */
                if (own_bc) load_tile(Ti, ldh(N), a.Cm + (rowi * a.G + g) * N, ldbc, ri, vi, N, false);
                load_tile(Yi, ldh(P), a.dy + (rowi * a.H + h) * P, ldx, ri, vi, P);
                __syncthreads();
                if (!cbg) mma_tiles<false, true>(CB, ldf(TILE), Ti, ldh(N), Tj, ldh(N), ri, rj, N, false);
                mma_tiles<false, true>(DX, ldf(TILE), Yi, ldh(P), Xj, ldh(P), ri, rj, P, false);
                __syncthreads();
                for (int e = threadIdx.x; e < ri * rj; e += NT) {
                    int r = e / rj, s = e % rj, i = i0 + r, j = j0 + s;
                    float l = j <= i ? seg_exp(cs[i] - cs[j]) : 0.0f;
                    float cb = cbg ? cbg[(size_t)i * a.Q + j] : CB[r * ldf(TILE) + s];
                    float gm = DX[r * ldf(TILE) + s] * l * dtv[j];
                    Wb[r * ldh(TILE) + s] = __float2bfloat16(cb * l);
                    if (own_bc) Gb[r * ldh(TILE) + s] = __float2bfloat16(gm);
                    DX[r * ldf(TILE) + s] = cb * gm; /* Z */
                }
                __syncthreads();
                for (int s = warp; s < rj; s += NT / 32) { /* dcs_j -= sum_i Z_ij */
                    float z = 0.0f;
                    for (int r = lane; r < ri; r += 32) z += DX[r * ldf(TILE) + s];
                    z = warp_sum(z);
                    if (lane == 0) dcs[j0 + s] -= z;
                }
                mma_tiles<true, false>(Acc2, ldf(P), Wb, ldh(TILE), Yi, ldh(P), rj, P, ri, true);
                if (own_bc) mma_tiles<true, false>(Acc, ldf(N), Gb, ldh(TILE), Ti, ldh(N), rj, N, ri, true);
            }
            __syncthreads();
            /* dy of rows j into Yi (free now), x of rows j is still in Xj: the epilogue reads
             * both from shared memory, the same bf16 values as from global */
            load_tile(Yi, ldh(P), a.dy + (rowj * a.H + h) * P, ldx, rj, vj, P);
            __syncthreads();
            for (int r = warp; r < vj; r += NT / 32) { /* dx, ddt, dD from dxs */
                size_t row = ((rowj + r) * a.H + h) * P;
                float sdt = 0.0f, sdd = 0.0f, dtj = dtv[j0 + r];
                for (int p = lane; p < P; p += 32) {
                    float g2 = Acc2[r * ldf(P) + p];
                    float xv = __bfloat162float(Xj[r * ldh(P) + p]);
                    float dyv = __bfloat162float(Yi[r * ldh(P) + p]);
                    sdt += xv * g2;
                    sdd += xv * dyv;
                    if (a.dx) a.dx[row + p] = __float2bfloat16(dtj * g2 + Dh * dyv);
                }
                sdt = warp_sum(sdt);
                sdd = warp_sum(sdd);
                if (lane == 0) {
                    if (a.ddt) a.ddt[(rowj + r) * a.H + h] = sdt;
                    dD_part += sdd;
                }
            }
            if (own_bc && a.dB)
                for (int e = threadIdx.x; e < vj * N; e += NT) {
                    int r = e / N, n = e % N;
                    size_t t = (size_t)t0 + j0 + r;
                    a.dB[(((size_t)b * a.T + t) * a.G + g) * N + n] = __float2bfloat16(Acc[r * ldf(N) + n]);
                }
            __syncthreads();
        }

        /* d cs_last: sum_j B_j . dB_state_j and exp(cs_last) <dS1, S0>; then
         * dloga_k = sum_{i >= k} dcs_i (the chunk's cumulative sum, transposed). */
        float q = block_sum(qsum_part, red), dDh = block_sum(dD_part, red);
        if (threadIdx.x == 0) {
            float dp = 0.0f;
            for (int s = 0; s < a.nsp; s++) dp += a.dotpart[bhc * a.nsp + s];
            dcs[Lc - 1] += q + dp;
            a.dDpart[bhc] = dDh;
        }
        __syncthreads();
        int k = Lp - 1 - (int)threadIdx.x;
        float v = block_scan(k >= 0 ? dcs[k] : 0.0f, red);
        if (a.dloga && k >= 0 && k < Lc) a.dloga[((size_t)b * a.T + t0 + k) * a.H + h] = v;
        __syncthreads();
    }
}

/* grid (nch * npairs, G, B), only when G < H: gsum[b, c, g] over one 64 x 64 tile pair (i, j)
 * on or below the diagonal, the sum over the H/G heads of the group, in head order, of
 * Gm_ij = L_ij (dY_i . x_j) dt_j (fp32, zero above the diagonal), for k_chunk_dbc.  One
 * product dY x^T per head and tile pair (k_chunk_dbc formed it twice, once for dC, once for
 * dB); the running sum lives in registers.  mma.sync m16n8k16 (mma_util.cuh) with the product
 * dY x^T in registers too (no shared fp32 tile), one barrier per head, the next head's tiles
 * loaded by cp.async while this one computes (two stages). */
__global__ void __launch_bounds__(NT, 3) k_gsum(Args a) { /* 3 blocks per SM: <= 80 registers */
    extern __shared__ __align__(128) unsigned char smem[];
    GsumLayout L(a.P);
    float *sc = (float *)(smem + L.sc);
    bf16 *Yo = (bf16 *)(smem + L.Yo), *Xo = (bf16 *)(smem + L.Xo);
    int np = n_pairs(a.Q), c = blockIdx.x / np, ti, tj, g = blockIdx.y, b = blockIdx.z;
    tile_pair(blockIdx.x % np, &ti, &tj);
    int hpg = a.H / a.G, P = a.P, Q = a.Q, t0 = c * Q, Lc = min(Q, a.T - t0), Lp = round16(Lc);
    int i0 = ti * TILE, j0 = tj * TILE;
    if (i0 >= Lp) return; /* uniform over the block */
    int ri = min(TILE, Lp - i0), vi = min(ri, Lc - i0);
    int rj = min(TILE, Lp - j0), vj = min(rj, Lc - j0);
    const size_t ldx = (size_t)a.H * P;
    const int ld = ldh(P), sx = TILE * ld; /* per-stage stride of the tiles */
    size_t rowi = (size_t)b * a.T + t0 + i0, rowj = (size_t)b * a.T + t0 + j0;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gq = lane >> 2, cq = lane & 3;
    /* this warp's 16 x 32 block of the 64 x 64 tile pair: rows m0.., columns n0.. */
    const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);

    /* Head hh's tiles into stage st: all 64 rows, zero past the valid ones (cp.async zero
     * fill), so the products never read stale shared memory. */
    auto issue = [&](int hh, int st) {
        const bf16 *ys = a.dy + (rowi * a.H + hh) * P, *xs = a.x + (rowj * a.H + hh) * P;
        bf16 *yd = Yo + st * sx, *xd = Xo + st * sx;
        int cv = P / 8;
        for (int e = tid; e < TILE * cv; e += NT) {
            int r = e / cv, k = (e % cv) * 8;
            sd_mma::cp_async16(yd + r * ld + k, r < vi ? ys + r * ldx + k : ys, r < vi);
            sd_mma::cp_async16(xd + r * ld + k, r < vj ? xs + r * ldx + k : xs, r < vj);
        }
        sd_mma::cp_async_commit();
    };
    /* One scalar of head hh per thread < 3 * TILE: cs_i, cs_j, dtv_j (0 past the tiles). */
    const float *sbase = tid < TILE ? a.gcs + i0 + tid
                         : tid < 2 * TILE ? a.gcs + j0 + (tid - TILE)
                                          : a.gdtv + j0 + (tid - 2 * TILE);
    const bool sok = tid < TILE ? tid < ri : tid < 2 * TILE ? tid - TILE < rj : tid - 2 * TILE < rj;
    auto scalar = [&](int hh) {
        return sok && tid < 3 * TILE ? sbase[(((size_t)b * a.H + hh) * a.nch + c) * Q] : 0.0f;
    };

    float gs[4][4]; /* the running sum over heads, in the accumulator layout of this warp's block */
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
        for (int q = 0; q < 4; q++) gs[t][q] = 0.0f;

    const int hbeg = g * hpg, hend = (g + 1) * hpg;
    issue(hbeg, 0);
    {
        float v = scalar(hbeg);
        if (tid < 3 * TILE) sc[tid] = v;
    }
    for (int h = hbeg; h < hend; h++) {
        int st = (h - hbeg) & 1;
        sd_mma::cp_async_wait<0>();
        __syncthreads(); /* stage st landed and is visible; stage st ^ 1 is no longer read */
        bool more = h + 1 < hend;
        float nv = 0.0f;
        if (more) {
            issue(h + 1, st ^ 1);
            nv = scalar(h + 1);
        }
        const bf16 *Y = Yo + st * sx, *X = Xo + st * sx;
        float acc[4][4];
#pragma unroll
        for (int t = 0; t < 4; t++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[t][q] = 0.0f;
#pragma unroll 1
        for (int k0 = 0; k0 < P; k0 += 16) {
            uint32_t fa[4], fb0[4], fb1[4];
            sd_mma::load_a(fa, Y, ld, m0, k0, lane);
            sd_mma::load_b_nt(fb0, X, ld, n0, k0, lane);
            sd_mma::load_b_nt(fb1, X, ld, n0 + 16, k0, lane);
            sd_mma::mma_bf16(acc[0], fa, fb0[0], fb0[1]);
            sd_mma::mma_bf16(acc[1], fa, fb0[2], fb0[3]);
            sd_mma::mma_bf16(acc[2], fa, fb1[0], fb1[1]);
            sd_mma::mma_bf16(acc[3], fa, fb1[2], fb1[3]);
        }
        const float *csi = sc + st * 3 * TILE, *csj = csi + TILE, *dtj = csi + 2 * TILE;
        /* heads in order: the bits of a head-by-head sum; (DX * L) * dt as before */
#pragma unroll
        for (int t = 0; t < 4; t++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int r = m0 + gq + (q >> 1) * 8, s2 = n0 + 8 * t + 2 * cq + (q & 1);
                if (r < ri && s2 < rj && j0 + s2 <= i0 + r)
                    gs[t][q] += acc[t][q] * seg_exp(csi[r] - csj[s2]) * dtj[s2];
            }
        /* the next head's scalars into the other stage: read no more since the barrier above,
         * read again only after the next one */
        if (more && tid < 3 * TILE) sc[(st ^ 1) * 3 * TILE + tid] = nv;
    }
    float *dst = a.gsum + (((size_t)b * a.nch + c) * a.G + g) * Q * Q;
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
        for (int hq = 0; hq < 2; hq++) {
            int r = m0 + gq + hq * 8, s2 = n0 + 8 * t + 2 * cq; /* s2 even, rj % 16 == 0 */
            if (r < ri && s2 < rj)
                *reinterpret_cast<float2 *>(dst + (size_t)(i0 + r) * Q + j0 + s2) =
                    make_float2(gs[t][2 * hq], gs[t][2 * hq + 1]);
        }
}

/* grid (nch, H, B), backward with G < H: gcs, gdtv = cs, dtv of chunk_scalars for every chunk
 * and head (the same bits), read by the head loops of k_gsum and k_chunk_dbc. */
__global__ void __launch_bounds__(NT) k_cumsum(Args a) {
    __shared__ float red[NT / 32];
    int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, t0 = c * a.Q, Lc = min(a.Q, a.T - t0);
    size_t bhc = ((size_t)b * a.H + h) * a.nch + c;
    chunk_scalars(a, b, h, c, Lc, a.gcs + bhc * a.Q, a.gdtv + bhc * a.Q, red);
}

/* grid (nch * tiles * 2, G, B), only when G < H: dC (mode 0) or dB (mode 1) of one 64-row
 * tile of chunk c of group g, summed over the H/G heads of the group in head order (the
 * accumulator stays in this block: deterministic, no atomics).  As in k_chunk_bwd:
 *
 *   dC_i = sum_h exp(cs_i) dY_i S0 + sum_{j<=i} (sum_h Gm_ij) B_j
 *   dB_j = sum_h exp(cs_last - cs_j) dt_j x_j dS1 + sum_{i>=j} (sum_h Gm_ij) C_i
 *
 * with Gm = L o (dY x^T) o dt_j per head, summed over the heads by k_gsum (fp32): one
 * matmul with the shared B or C per tile pair instead of one per head. */
__global__ void __launch_bounds__(NT) k_chunk_dbc(Args a) {
    extern __shared__ __align__(128) unsigned char smem[];
    DbcLayout L(a.P, a.N);
    bf16 *SS = (bf16 *)(smem + L.SS), *Ys = (bf16 *)(smem + L.Ys);
    bf16 *Gb = (bf16 *)(smem + L.Gb), *Tn = (bf16 *)(smem + L.Tn);
    float *Acc = (float *)(smem + L.Acc);
    int ntile = n_tiles(a.Q), mode = blockIdx.x & 1;
    int c = (blockIdx.x >> 1) / ntile, tile = (blockIdx.x >> 1) % ntile;
    int g = blockIdx.y, b = blockIdx.z, hpg = a.H / a.G;
    int P = a.P, N = a.N, Q = a.Q, t0 = c * Q, Lc = min(Q, a.T - t0), Lp = round16(Lc);
    int o0 = tile * TILE; /* this block's rows: i (mode 0) or j (mode 1) */
    if (o0 >= Lp) return; /* uniform over the block */
    int ro = min(TILE, Lp - o0), vo = min(ro, Lc - o0);
    const size_t ldx = (size_t)a.H * P, ldbc = (size_t)a.G * N, rowo = (size_t)b * a.T + t0 + o0;
    /* the other tiles: j0 = 0 .. o0 (mode 0) or i0 = o0 .. Lp (mode 1) */
    int k_begin = mode == 0 ? 0 : o0, k_end = mode == 0 ? o0 + 1 : Lp;
    const float *gsg = a.gsum + (((size_t)b * a.nch + c) * a.G + g) * Q * Q;
    /* The Gm term of tile k0 with the shared B (mode 0) or C (mode 1): its operands into Tn, Gb. */
    auto load_gm = [&](int k0) {
        int rk = min(TILE, Lp - k0), vk = min(rk, Lc - k0);
        int i0 = mode == 0 ? o0 : k0, j0 = mode == 0 ? k0 : o0;
        int ri = mode == 0 ? ro : rk, rj = mode == 0 ? rk : ro;
        size_t rowk = (size_t)b * a.T + t0 + k0;
        load_tile(Tn, ldh(N), (mode == 0 ? a.Bm : a.Cm) + (rowk * a.G + g) * N, ldbc, rk, vk, N);
        for (int e = threadIdx.x; e < ri * rj; e += NT) {
            int r = e / rj, q = e % rj;
            Gb[r * ldh(TILE) + q] = __float2bfloat16(gsg[(size_t)(i0 + r) * Q + j0 + q]);
        }
    };
    /* The accumulator in registers over the heads and the Gm terms (acc_mma), stored to Acc
     * once at the end. */
    AccFrag fr[2][2];
#pragma unroll
    for (int u = 0; u < 2; u++)
#pragma unroll
        for (int i = 0; i < 2; i++) wmma::fill_fragment(fr[u][i], 0.0f);
    auto mma_gm = [&](int k0) {
        int rk = min(TILE, Lp - k0);
        if (mode == 0) acc_mma<false>(fr, Gb, ldh(TILE), Tn, ldh(N), N, rk);
        else acc_mma<true>(fr, Gb, ldh(TILE), Tn, ldh(N), N, rk);
    };
    for (int h = g * hpg; h < (g + 1) * hpg; h++) {
        const bool last = h == (g + 1) * hpg - 1; /* also the first Gm term, in the same phases */
        size_t bhc = ((size_t)b * a.H + h) * a.nch + c;
        const float *hcs = a.gcs + bhc * Q + o0, *hdtv = a.gdtv + bhc * Q + o0;
        float cs_last = a.gcs[bhc * Q + Lc - 1];
        load_state(SS, (mode == 0 ? a.states16 : a.dstates16) + bhc * P * N, P, N);
        /* the state term: exp(cs_i) dY_i S0 or exp(cs_last - cs_j) dt_j x_j dS1; the rows
         * scaled as load_tile_scaled does, the scale read from gcs */
        const bf16 *own = (mode == 0 ? a.dy : a.x) + (rowo * a.H + h) * P;
        for (int e = threadIdx.x, cv = P / 8; e < ro * cv; e += NT) {
            int r = e / cv, k = (e % cv) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (r < vo) {
                v = *reinterpret_cast<const uint4 *>(own + r * ldx + k);
                bf16 *pv = reinterpret_cast<bf16 *>(&v);
                float sc = mode == 0 ? seg_exp(hcs[r]) : seg_exp(cs_last - hcs[r]) * hdtv[r];
                for (int q = 0; q < 8; q++) pv[q] = __float2bfloat16(__bfloat162float(pv[q]) * sc);
            }
            *reinterpret_cast<uint4 *>(Ys + r * ldh(P) + k) = v;
        }
        if (last) load_gm(k_begin); /* k_begin < k_end always */
        __syncthreads();
        acc_mma<false>(fr, Ys, ldh(P), SS, ldh(N), N, P);
        if (last) mma_gm(k_begin);
        __syncthreads(); /* SS, Ys (and Tn, Gb) are rewritten next */
    }
    /* the remaining Gm terms */
    for (int k0 = k_begin + TILE; k0 < k_end; k0 += TILE) {
        load_gm(k0);
        __syncthreads();
        mma_gm(k0);
        __syncthreads();
    }
    acc_store(fr, Acc, ldf(N), N);
    __syncthreads();
    bf16 *out = mode == 0 ? a.dC : a.dB;
    if (out)
        for (int e = threadIdx.x; e < vo * N; e += NT) {
            int r = e / N, n = e % N;
            out[((rowo + r) * a.G + g) * N + n] = __float2bfloat16(Acc[r * ldf(N) + n]);
        }
}

/* dD[h] = sum over b, then chunks, of the per-chunk partials. */
__global__ void k_reduce_dD(Args a) {
    int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= a.H) return;
    float s = 0.0f;
    for (int b = 0; b < a.B; b++)
        for (int c = 0; c < a.nch; c++) s += a.dDpart[((size_t)b * a.H + h) * a.nch + c];
    a.dD[h] = s;
}

/* ---- host side ----------------------------------------------------------------------------- */

/* SD_SSD_PROF=1 in the environment: every launch is timed alone with CUDA events (the stream
 * synchronises after each) and one line "ssd_prof <kernel> H.. N.. <ms>" goes to stderr. */
static int prof_on(void) {
    static int on = -1;
    if (on < 0) on = getenv("SD_SSD_PROF") != NULL;
    return on;
}
static cudaEvent_t g_prof_e[2];
static void prof_begin(cudaStream_t st) {
    if (!prof_on()) return;
    if (!g_prof_e[0]) cudaEventCreate(&g_prof_e[0]), cudaEventCreate(&g_prof_e[1]);
    cudaEventRecord(g_prof_e[0], st);
}
static void prof_end(cudaStream_t st, const char *name, int H, int N) {
    if (!prof_on()) return;
    float ms = 0.0f;
    cudaEventRecord(g_prof_e[1], st);
    cudaEventSynchronize(g_prof_e[1]);
    cudaEventElapsedTime(&ms, g_prof_e[0], g_prof_e[1]);
    fprintf(stderr, "ssd_prof %s H%d_N%d %.4f\n", name, H, N, ms);
}

typedef struct {
    size_t states, dstates, states16, dstates16, decay, dotpart, dDpart, cb, gsum, gcs, gdtv, total;
} ws_layout;

static size_t ws_take(size_t *off, size_t bytes) {
    size_t o = (*off + 255) & ~(size_t)255;
    *off = o + bytes;
    return o;
}

static ws_layout ws_plan(const sd_ssd_cuda_dims *d) {
    ws_layout w = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    if (d->T <= 0) return w;
    int64_t Q = d->chunk, nch = (d->T + Q - 1) / Q, PN = d->P * d->N;
    int64_t nsp = (PN + PASS_EPB - 1) / PASS_EPB;
    size_t bhc = (size_t)(d->B * d->H * nch), off = 0;
    w.states = ws_take(&off, bhc * PN * 4);
    w.dstates = ws_take(&off, bhc * PN * 4);
    w.states16 = ws_take(&off, bhc * PN * 2);
    w.dstates16 = ws_take(&off, bhc * PN * 2);
    w.decay = ws_take(&off, bhc * 4);
    w.dotpart = ws_take(&off, bhc * nsp * 4);
    w.dDpart = ws_take(&off, bhc * 4);
    w.cb = ws_take(&off, (size_t)d->B * nch * d->G * Q * Q * 4);
    w.gsum = ws_take(&off, (size_t)d->B * nch * d->G * Q * Q * 4);
    w.gcs = ws_take(&off, bhc * Q * 4);
    w.gdtv = ws_take(&off, bhc * Q * 4);
    w.total = off;
    return w;
}

size_t sd_ssd_cuda_workspace_bytes(const sd_ssd_cuda_dims *d) { return ws_plan(d).total; }

static int check_dims(const char *op, const sd_ssd_cuda_dims *d) {
    if (d->B < 1 || d->T < 0 || d->H < 1 || d->P < 1 || d->G < 1 || d->N < 1 || d->H % d->G)
        return sd_fail(SD_ERR_INTERNAL, "%s: dims B %lld T %lld H %lld P %lld G %lld N %lld: "
                       "expected positive sizes and G dividing H", op, (long long)d->B,
                       (long long)d->T, (long long)d->H, (long long)d->P, (long long)d->G,
                       (long long)d->N);
    if (d->P % 16 || d->N % 16 || d->P > 128 || d->N > 128)
        return sd_fail(SD_ERR_INTERNAL, "%s: P %lld and N %lld must be multiples of 16 up to 128",
                       op, (long long)d->P, (long long)d->N);
    if (d->chunk < 16 || d->chunk > MAXQ || d->chunk % 16)
        return sd_fail(SD_ERR_INTERNAL, "%s: chunk %lld must be a multiple of 16 in 16..%d", op,
                       (long long)d->chunk, MAXQ);
    int64_t nch = (d->T + d->chunk - 1) / d->chunk;
    if (d->B * d->T * d->H * d->P > ((int64_t)1 << 40) || nch > 65535 || d->B > 65535 ||
        d->H * d->G > 65535)
        return sd_fail(SD_ERR_INTERNAL, "%s: sizes too large for the launch grid", op);
    return SD_OK;
}

/* Opts a kernel into `bytes` of dynamic shared memory, failing clearly past the device's limit. */
static int smem_opt_in(const void *kernel, size_t bytes, const char *name) {
    int dev = 0, maxb = 0;
    SD_CUDA_TRY(cudaGetDevice(&dev));
    SD_CUDA_TRY(cudaDeviceGetAttribute(&maxb, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (bytes > (size_t)maxb)
        return sd_fail(SD_ERR_INTERNAL, "%s needs %zu bytes of shared memory, the device allows %d "
                       "(reduce P or N)", name, bytes, maxb);
    SD_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    return SD_OK;
}

/* SD_SSD_OWN_BWD=1: the backward with G == H forms dB, dC and C B^T inside k_chunk_bwd (one
 * block per SM) rather than through k_chunk_cb, the slim k_chunk_bwd and k_chunk_dbc. */
static int own_bwd_env(void) {
    static int on = -1;
    if (on < 0) on = getenv("SD_SSD_OWN_BWD") != NULL;
    return on;
}

/* bwd: the backward's arguments.  a.cb is set (C B^T per group from k_chunk_cb) when heads
 * share B and C, and in the backward also when G == H (unless SD_SSD_OWN_BWD). */
static Args make_args(const sd_ssd_cuda_dims *d, void *workspace, int bwd) {
    Args a;
    memset(&a, 0, sizeof a);
    a.B = (int)d->B, a.T = (int)d->T, a.H = (int)d->H, a.P = (int)d->P, a.G = (int)d->G;
    a.N = (int)d->N, a.Q = (int)d->chunk, a.nch = (int)((d->T + d->chunk - 1) / d->chunk);
    a.nsp = (int)((d->P * d->N + PASS_EPB - 1) / PASS_EPB);
    ws_layout w = ws_plan(d);
    char *base = (char *)workspace;
    a.states = (float *)(base + w.states), a.dstates = (float *)(base + w.dstates);
    a.states16 = (bf16 *)(base + w.states16), a.dstates16 = (bf16 *)(base + w.dstates16);
    a.decay = (float *)(base + w.decay), a.dotpart = (float *)(base + w.dotpart);
    a.dDpart = (float *)(base + w.dDpart);
    a.cb = d->H / d->G > 1 || (bwd && !own_bwd_env()) ? (float *)(base + w.cb) : NULL;
    a.gsum = (float *)(base + w.gsum);
    a.gcs = (float *)(base + w.gcs), a.gdtv = (float *)(base + w.gdtv);
    return a;
}

static int check_ws(const char *op, const sd_ssd_cuda_dims *d, void *ws, size_t bytes) {
    size_t need = sd_ssd_cuda_workspace_bytes(d);
    if (need && (!ws || bytes < need))
        return sd_fail(SD_ERR_INTERNAL, "%s: workspace of %zu bytes at %p, need %zu", op, bytes, ws,
                       need);
    return SD_OK;
}

/* Steps 1 and 2 shared by the forward and the backward, and C B^T per group when G < H. */
static int run_states(Args &a, int bwd, cudaStream_t stream) {
    size_t sm = StateLayout(a.P, a.N).total;
    SD_TRY(smem_opt_in((const void *)k_chunk_state, sm, "k_chunk_state"));
    prof_begin(stream);
    k_chunk_state<<<dim3(a.nch, a.H, a.B), NT, sm, stream>>>(a, 1, bwd);
    prof_end(stream, bwd ? "k_chunk_state(bwd)" : "k_chunk_state", a.H, a.N);
    SD_CUDA_LAUNCHED();
    prof_begin(stream);
    k_state_pass<<<dim3(a.B * a.H, a.nsp), NT, 0, stream>>>(a, bwd);
    prof_end(stream, bwd ? "k_state_pass(bwd)" : "k_state_pass", a.H, a.N);
    SD_CUDA_LAUNCHED();
    if (a.cb) {
        size_t smc = CbLayout(a.N).total;
        SD_TRY(smem_opt_in((const void *)k_chunk_cb, smc, "k_chunk_cb"));
        prof_begin(stream);
        k_chunk_cb<<<dim3(a.nch * n_pairs(a.Q), a.G, a.B), NT, smc, stream>>>(a);
        prof_end(stream, bwd ? "k_chunk_cb(bwd)" : "k_chunk_cb", a.H, a.N);
        SD_CUDA_LAUNCHED();
    }
    return SD_OK;
}

int sd_ssd_cuda_forward(const sd_ssd_cuda_dims *d, sd_cuda_bf16 *y, const sd_cuda_bf16 *x,
                        const float *dt, const float *loga, const sd_cuda_bf16 *Bm,
                        const sd_cuda_bf16 *Cm, const float *D, const float *init_state,
                        float *final_state, void *workspace, size_t workspace_bytes,
                        cudaStream_t stream) {
    const char *op = "sd_ssd_cuda_forward";
    SD_TRY(check_dims(op, d));
    if (!y || !x || !loga || !Bm || !Cm)
        return sd_fail(SD_ERR_INTERNAL, "%s: y, x, loga, Bm and Cm are required", op);
    size_t state_bytes = (size_t)(d->B * d->H * d->P * d->N) * sizeof(float);
    if (d->T == 0) { /* no steps: the final state is the initial one */
        if (final_state && init_state)
            SD_CUDA_TRY(cudaMemcpyAsync(final_state, init_state, state_bytes, cudaMemcpyDeviceToDevice, stream));
        else if (final_state)
            SD_CUDA_TRY(cudaMemsetAsync(final_state, 0, state_bytes, stream));
        return SD_OK;
    }
    SD_TRY(check_ws(op, d, workspace, workspace_bytes));
    Args a = make_args(d, workspace, 0);
    a.x = x, a.Bm = Bm, a.Cm = Cm, a.dt = dt, a.loga = loga, a.D = D, a.init = init_state;
    a.y = y, a.final_ = final_state;
    SD_TRY(run_states(a, 0, stream));
    size_t sm = ScanLayout(a.P, a.N).total;
    SD_TRY(smem_opt_in((const void *)k_chunk_scan, sm, "k_chunk_scan"));
    prof_begin(stream);
    k_chunk_scan<<<dim3(a.nch, a.H, a.B), NT, sm, stream>>>(a);
    prof_end(stream, "k_chunk_scan", a.H, a.N);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

int sd_ssd_cuda_backward(const sd_ssd_cuda_dims *d, sd_cuda_bf16 *dx, float *ddt, float *dloga,
                         sd_cuda_bf16 *dB, sd_cuda_bf16 *dC, float *dD, const sd_cuda_bf16 *dy,
                         const sd_cuda_bf16 *x, const float *dt, const float *loga,
                         const sd_cuda_bf16 *Bm, const sd_cuda_bf16 *Cm, const float *D,
                         const float *init_state, const float *dfinal_state, float *dinit_state,
                         void *workspace, size_t workspace_bytes, cudaStream_t stream) {
    const char *op = "sd_ssd_cuda_backward";
    SD_TRY(check_dims(op, d));
    if (!dy || !x || !loga || !Bm || !Cm)
        return sd_fail(SD_ERR_INTERNAL, "%s: dy, x, loga, Bm and Cm are required", op);
    if (ddt && !dt) return sd_fail(SD_ERR_INTERNAL, "%s: ddt given without dt", op);
    if (d->T == 0) {
        size_t state_bytes = (size_t)(d->B * d->H * d->P * d->N) * sizeof(float);
        if (dinit_state && dfinal_state)
            SD_CUDA_TRY(cudaMemcpyAsync(dinit_state, dfinal_state, state_bytes, cudaMemcpyDeviceToDevice, stream));
        else if (dinit_state)
            SD_CUDA_TRY(cudaMemsetAsync(dinit_state, 0, state_bytes, stream));
        if (dD) SD_CUDA_TRY(cudaMemsetAsync(dD, 0, (size_t)d->H * sizeof(float), stream));
        return SD_OK;
    }
    SD_TRY(check_ws(op, d, workspace, workspace_bytes));
    Args a = make_args(d, workspace, 1);
    a.x = x, a.Bm = Bm, a.Cm = Cm, a.dy = dy, a.dt = dt, a.loga = loga, a.D = D;
    a.init = init_state, a.dfinal = dfinal_state;
    a.dx = dx, a.dB = dB, a.dC = dC, a.ddt = ddt, a.dloga = dloga, a.dD = dD, a.dinit = dinit_state;
    SD_TRY(run_states(a, 1, stream));
    const bool own = a.cb == NULL;
    a.gs_direct = !own && a.H == a.G && (dB || dC);
    size_t sm = BwdLayout(a.P, a.N, own).total;
    const void *kb = own ? (const void *)k_chunk_bwd<true> : (const void *)k_chunk_bwd<false>;
    SD_TRY(smem_opt_in(kb, sm, "k_chunk_bwd"));
    prof_begin(stream);
    if (own) k_chunk_bwd<true><<<dim3(a.nch, a.H, a.B), NT, sm, stream>>>(a);
    else k_chunk_bwd<false><<<dim3(a.nch, a.H, a.B), NT, sm, stream>>>(a);
    prof_end(stream, "k_chunk_bwd", a.H, a.N);
    SD_CUDA_LAUNCHED();
    if (a.cb && (dB || dC)) {
        size_t smg = GsumLayout(a.P).total, smd = DbcLayout(a.P, a.N).total;
        int ntile = n_tiles(a.Q);
        SD_TRY(smem_opt_in((const void *)k_gsum, smg, "k_gsum"));
        prof_begin(stream);
        k_cumsum<<<dim3(a.nch, a.H, a.B), NT, 0, stream>>>(a);
        SD_CUDA_LAUNCHED();
        prof_end(stream, "k_cumsum", a.H, a.N);
        if (!a.gs_direct) {
            prof_begin(stream);
            k_gsum<<<dim3(a.nch * n_pairs(a.Q), a.G, a.B), NT, smg, stream>>>(a);
            SD_CUDA_LAUNCHED();
            prof_end(stream, "k_gsum", a.H, a.N);
        }
        SD_TRY(smem_opt_in((const void *)k_chunk_dbc, smd, "k_chunk_dbc"));
        prof_begin(stream);
        k_chunk_dbc<<<dim3(a.nch * ntile * 2, a.G, a.B), NT, smd, stream>>>(a);
        prof_end(stream, "k_chunk_dbc", a.H, a.N);
        SD_CUDA_LAUNCHED();
    }
    if (dD) {
        prof_begin(stream);
        k_reduce_dD<<<(a.H + 127) / 128, 128, 0, stream>>>(a);
        prof_end(stream, "k_reduce_dD", a.H, a.N);
        SD_CUDA_LAUNCHED();
    }
    return SD_OK;
}
