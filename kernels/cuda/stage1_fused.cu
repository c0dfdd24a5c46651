/* The fused stage-1 loss and gradient on the GPU (kernels/cuda/attention_cuda.h has the
 * contract, kernels/stage1.h the math).  Per (b, h):
 *
 *   A[t, s] = exp(scale q_t . k_s - lse_t)              lse: flash forward, lse only
 *   E[t, s] = exp(cs_t - cs_s),  cs_t = sum_{j <= t} loga_j      (clamped at 0)
 *   M[t, s] = (C_t . B_s) E[t, s] dt_s  (+ D_h on the diagonal),  s <= t
 *   diff    = M - A,   loss_bh = ||diff||_F,   dM = w_bh diff,  w_bh = 1 / (loss_bh B H)
 *
 * and, as kernels/cpu/ssd_matrix.c, with P = dM o E diag(dt) and Z = dM o M (M without D):
 *   dC_t = sum_s P[t, s] B_s        dB_s = sum_t P[t, s] C_t
 *   ddt_s = sum_t dM[t, s] E[t, s] (C_t . B_s)
 *   dcs_t = sum_s Z[t, s] - sum_s Z[s, t],   dloga_k = sum_{t >= k} dcs_t
 *   dD_h = sum_t dM[t, t].
 * Every gradient is linear in dM and w_bh is one number per (b, h), so the tile passes use
 * diff unscaled and the finish multiplies by w_bh once the norm is known: two passes over the
 * lower triangle instead of three.
 *
 *   1. prep (a warp per (b, h)): cs in log2 units (double scan), dt (or 1), zero lse padding;
 *   2. flash forward, lse only (kernels/cuda/flash_attention.cu);
 *   3. row pass, a CTA per (b, h, 64 rows t): tiles s <= t; sum of squares, dD and the row
 *      sums of Z per CTA, dC per (t, head) (rows owned by the CTA: plain stores);
 *   4. column pass, a CTA per (b, h, 64 columns s): tiles t >= s, same tile algebra with the
 *      roles of (q, C) and (k, B) swapped; dB per (s, head), ddt, the column sums of Z;
 *   5. finish: norms, w, loss, dloga (suffix scan), ddt, dD, and dB/dC summed over the heads
 *      of each group.
 * Tiles: S1 = (q or k) (k or q)^T and S2 = (C or B) (B or C)^T by mma.sync bf16 with fp32
 * accumulation, the elementwise algebra in fp32 registers, then P re-packed to bf16 A
 * fragments for d(C or B) += P (B or C) (FlashAttention-2's register re-use).  The fp32
 * workspace is O(B H T (1 + N)): nothing T x T.  No atomics: deterministic. */
#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/mma_util.cuh"

#include <math.h>

using namespace sd_mma;

extern "C" int sd_cuda_flash_attention_ld(uint16_t *out, float *lse, long long lse_ld,
                                          const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                          int B, int T, int S, int H, int Hkv, int hd, float scale,
                                          cudaStream_t stream);

namespace {

constexpr int BT = 64; /* tile edge, both sides */
constexpr int WARPS = 4;
constexpr float LOG2E = 1.4426950408889634f;

/* The workspace, carved in 256-byte aligned float segments. */
struct ws_layout {
    float *lse, *cs2, *dts, *zrow, *zcol, *gdt, *part_ss, *part_dd, *norm, *w, *dCh, *dBh;
    size_t bytes;
};

ws_layout carve(void *base, int B, int T, int H, int N) {
    const long long Tp = (T + BT - 1) / BT * BT, nb = Tp / BT, BH = (long long)B * H;
    const long long n[12] = {BH * Tp, BH * Tp, BH * Tp, BH * Tp, BH * Tp, BH * Tp, BH * nb, BH * nb,
                             BH, BH, (long long)B * T * H * N, (long long)B * T * H * N};
    float **dst[12];
    ws_layout w;
    dst[0] = &w.lse, dst[1] = &w.cs2, dst[2] = &w.dts, dst[3] = &w.zrow, dst[4] = &w.zcol, dst[5] = &w.gdt;
    dst[6] = &w.part_ss, dst[7] = &w.part_dd, dst[8] = &w.norm, dst[9] = &w.w, dst[10] = &w.dCh, dst[11] = &w.dBh;
    size_t off = 0;
    for (int i = 0; i < 12; i++) {
        *dst[i] = base ? reinterpret_cast<float *>(static_cast<char *>(base) + off) : nullptr;
        off += ((size_t)n[i] * sizeof(float) + 255) / 256 * 256;
    }
    w.bytes = off;
    return w;
}

/* ---- 1. prep ------------------------------------------------------------------------- */

/* Inclusive prefix sum over the 32 lanes (Hillis-Steele), in double. */
__device__ __forceinline__ double warp_incl_scan(double v, int lane) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        double u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    return v;
}

/* One warp per (b, h): cs2[t] = log2(e) sum_{j <= t} loga[b, j, h] (double, then fp32),
 * dts[t] = dt[b, t, h] or 1; padding rows t >= T get cs2 = last, dts = 0, lse = 0. */
__global__ void prep_kernel(const float *loga, const float *dt, float *cs2, float *dts, float *lse,
                            int B, int T, int Tp, int H) {
    const int lane = threadIdx.x & 31;
    const long long bh = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (bh >= (long long)B * H) return;
    const int b = (int)(bh / H), h = (int)(bh % H);
    const int L = (Tp + 31) / 32, t0 = lane * L, t1 = min(t0 + L, Tp);
    double part = 0.0;
    for (int t = t0; t < t1 && t < T; t++) part += loga[((long long)b * T + t) * H + h];
    double run = warp_incl_scan(part, lane) - part; /* exclusive prefix of this lane's chunk */
    for (int t = t0; t < t1; t++) {
        const long long i = bh * Tp + t;
        if (t < T) {
            const long long x = ((long long)b * T + t) * H + h;
            run += loga[x];
            dts[i] = dt ? dt[x] : 1.0f;
        } else {
            dts[i] = 0.0f;
            lse[i] = 0.0f;
        }
        cs2[i] = (float)(run * 1.4426950408889634);
    }
}

/* ---- 3./4. the tile passes ------------------------------------------------------------ */

struct tile_params {
    const __nv_bfloat16 *q, *k, *Bm, *Cm;
    const float *D, *lse, *cs2, *dts;
    float *z, *gdt, *part_ss, *part_dd, *dY; /* dY: dCh (row pass) or dBh (column pass) */
    int T, Tp, H, Hkv, G;
    float scale_log2;
};

template <int HD, int N>
constexpr int tile_smem() {
    return 3 * BT * (HD + PAD) * 2 + 3 * BT * (N + PAD) * 2 + 2 * 3 * BT * 4;
}

/* ROWS rows of D bf16 values from a [.., T, heads, D] tensor (zero past T). */
template <int D>
__device__ __forceinline__ void load_rows(__nv_bfloat16 *dst, const __nv_bfloat16 *src, int row0,
                                          int T, long long ld, int tid) {
    constexpr int CH = D / 8;
    for (int i = tid; i < BT * CH; i += WARPS * 32) {
        int r = i / CH, c = i % CH, row = row0 + r;
        bool ok = row < T;
        cp_async16(dst + r * (D + PAD) + c * 8, src + (long long)(ok ? row : 0) * ld + c * 8, ok);
    }
}

/* COL = false: the row pass (own index t, other s <= t).  COL = true: the column pass (own s,
 * other t >= s).  "X" is the attention side (q or k), "Y" the SSD side (C or B). */
/* Occupancy: 2 CTAs per SM (up to 255 registers).  At 3 (170 registers) the head dim 64,
 * N 64 row pass already spills a few bytes. */
template <int HD, int N, bool COL>
__global__ void __launch_bounds__(WARPS * 32, 2) stage1_tile_kernel(tile_params p) {
    constexpr int LX = HD + PAD, LY = N + PAD;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *sOX = reinterpret_cast<__nv_bfloat16 *>(smem_raw); /* own X [BT][LX] */
    __nv_bfloat16 *sX = sOX + BT * LX;                                /* other X [2][BT][LX] */
    __nv_bfloat16 *sOY = sX + 2 * BT * LX;                            /* own Y [BT][LY] */
    __nv_bfloat16 *sY = sOY + BT * LY;                                /* other Y [2][BT][LY] */
    float *sSc = reinterpret_cast<float *>(sY + 2 * BT * LY);         /* [2][3][BT]: lse, cs2, dts */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, c = lane & 3;
    const int nb = p.Tp / BT;
    const int ib = COL ? blockIdx.x : nb - 1 - blockIdx.x; /* longest rows of tiles first */
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
    const int hk = h / (p.H / p.Hkv), g = h / (p.H / p.G);
    const int i0 = ib * BT;

    const long long q_ld = (long long)p.H * HD, k_ld = (long long)p.Hkv * HD, y_ld = (long long)p.G * N;
    const __nv_bfloat16 *qg = p.q + ((long long)b * p.T * p.H + h) * HD;
    const __nv_bfloat16 *kg = p.k + ((long long)b * p.T * p.Hkv + hk) * HD;
    const __nv_bfloat16 *Cg = p.Cm + ((long long)b * p.T * p.G + g) * N;
    const __nv_bfloat16 *Bg = p.Bm + ((long long)b * p.T * p.G + g) * N;
    const __nv_bfloat16 *ownX = COL ? kg : qg, *othX = COL ? qg : kg;
    const __nv_bfloat16 *ownY = COL ? Bg : Cg, *othY = COL ? Cg : Bg;
    const long long ownX_ld = COL ? k_ld : q_ld, othX_ld = COL ? q_ld : k_ld;
    const float *lse = p.lse + (long long)bh * p.Tp, *cs2 = p.cs2 + (long long)bh * p.Tp,
                *dts = p.dts + (long long)bh * p.Tp;

    const int jfirst = COL ? ib : 0, jlast = COL ? nb - 1 : ib;

    load_rows<HD>(sOX, ownX, i0, p.T, ownX_ld, tid);
    load_rows<N>(sOY, ownY, i0, p.T, y_ld, tid);
    auto load_other = [&](int jb, int st) {
        const int j0 = jb * BT;
        load_rows<HD>(sX + st * BT * LX, othX, j0, p.T, othX_ld, tid);
        load_rows<N>(sY + st * BT * LY, othY, j0, p.T, y_ld, tid);
        if (tid < 3 * BT / 4) { /* 48 chunks of 4 floats: the padded arrays are always in bounds */
            const int a = tid / (BT / 4), q4 = tid % (BT / 4);
            const float *src = (a == 0 ? lse : a == 1 ? cs2 : dts) + j0 + q4 * 4;
            cp_async16(sSc + (st * 3 + a) * BT + q4 * 4, src, true);
        }
    };
    load_other(jfirst, 0);
    cp_async_commit();

    /* the own scalars of this thread's two rows (gq and gq + 8 of the warp's 16) */
    float o_lse[2], o_cs[2], o_dt[2];
    int o_i[2];
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        o_i[hr] = i0 + warp * 16 + gq + hr * 8;
        o_lse[hr] = lse[o_i[hr]] * LOG2E, o_cs[hr] = cs2[o_i[hr]], o_dt[hr] = dts[o_i[hr]];
    }
    const float Dh = p.D ? p.D[h] : 0.0f;

    float acc[N / 8][4]; /* d(own Y), 16 rows x N per warp */
#pragma unroll
    for (int n = 0; n < N / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float zsum[2] = {0.0f, 0.0f}, gsum[2] = {0.0f, 0.0f}, ss = 0.0f, dd = 0.0f;

    for (int jb = jfirst, it = 0; jb <= jlast; jb++, it++) {
        const int st = it & 1;
        if (jb + 1 <= jlast) load_other(jb + 1, st ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const __nv_bfloat16 *tX = sX + st * BT * LX, *tY = sY + st * BT * LY;
        const float *tl = sSc + st * 3 * BT, *tc = tl + BT, *td = tc + BT;

        float s1[BT / 8][4], s2[BT / 8][4];
#pragma unroll
        for (int n = 0; n < BT / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) s1[n][e] = s2[n][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t a[4], bf[4];
            load_a(a, sOX, LX, warp * 16, kk * 16, lane);
#pragma unroll
            for (int np = 0; np < BT / 16; np++) {
                load_b_nt(bf, tX, LX, np * 16, kk * 16, lane);
                mma_bf16(s1[2 * np], a, bf[0], bf[1]);
                mma_bf16(s1[2 * np + 1], a, bf[2], bf[3]);
            }
        }
#pragma unroll
        for (int kk = 0; kk < N / 16; kk++) {
            uint32_t a[4], bf[4];
            load_a(a, sOY, LY, warp * 16, kk * 16, lane);
#pragma unroll
            for (int np = 0; np < BT / 16; np++) {
                load_b_nt(bf, tY, LY, np * 16, kk * 16, lane);
                mma_bf16(s2[2 * np], a, bf[0], bf[1]);
                mma_bf16(s2[2 * np + 1], a, bf[2], bf[3]);
            }
        }

        /* the elementwise algebra; s1 becomes P = diff E dt_s */
        const int j0 = jb * BT;
#pragma unroll
        for (int n = 0; n < BT / 8; n++)
#pragma unroll
            for (int hr = 0; hr < 2; hr++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int jl = n * 8 + 2 * c + e, j = j0 + jl, i = o_i[hr];
                    const int t = COL ? j : i, s = COL ? i : j;
                    const float lse_t = COL ? tl[jl] * LOG2E : o_lse[hr];
                    const float cs_t = COL ? tc[jl] : o_cs[hr], cs_s = COL ? o_cs[hr] : tc[jl];
                    const float dt_s = COL ? o_dt[hr] : td[jl];
                    const bool valid = s <= t && t < p.T;
                    const float cb = s2[n][hr * 2 + e];
                    const float A = exp2f(s1[n][hr * 2 + e] * p.scale_log2 - lse_t);
                    const float E = exp2f(fminf(cs_t - cs_s, 0.0f));
                    const float m = valid ? cb * E * dt_s : 0.0f;
                    const float diff = valid ? m + (s == t ? Dh : 0.0f) - A : 0.0f;
                    s1[n][hr * 2 + e] = diff * E * dt_s;
                    zsum[hr] += diff * m;
                    if (COL) {
                        gsum[hr] += diff * E * cb;
                    } else {
                        ss += diff * diff;
                        dd += s == t ? diff : 0.0f;
                    }
                }

        /* d(own Y) += P (other Y) */
#pragma unroll
        for (int kk = 0; kk < BT / 16; kk++) {
            uint32_t a[4];
            a[0] = pack_bf16(s1[2 * kk][0], s1[2 * kk][1]);
            a[1] = pack_bf16(s1[2 * kk][2], s1[2 * kk][3]);
            a[2] = pack_bf16(s1[2 * kk + 1][0], s1[2 * kk + 1][1]);
            a[3] = pack_bf16(s1[2 * kk + 1][2], s1[2 * kk + 1][3]);
#pragma unroll
            for (int np = 0; np < N / 16; np++) {
                uint32_t bf[4];
                load_b_t(bf, tY, LY, kk * 16, np * 16, lane);
                mma_bf16(acc[2 * np], a, bf[0], bf[1]);
                mma_bf16(acc[2 * np + 1], a, bf[2], bf[3]);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();

    /* per-row sums across the 4 threads of a quad, then one writer per row */
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        float z = zsum[hr], gd = gsum[hr];
        z += __shfl_xor_sync(0xffffffffu, z, 1);
        z += __shfl_xor_sync(0xffffffffu, z, 2);
        gd += __shfl_xor_sync(0xffffffffu, gd, 1);
        gd += __shfl_xor_sync(0xffffffffu, gd, 2);
        if (c == 0) {
            p.z[(long long)bh * p.Tp + o_i[hr]] = z;
            if (COL) p.gdt[(long long)bh * p.Tp + o_i[hr]] = gd;
        }
        const int i = o_i[hr];
        if (i < p.T) {
            float *row = p.dY + (((long long)b * p.T + i) * p.H + h) * N;
#pragma unroll
            for (int n = 0; n < N / 8; n++)
                *reinterpret_cast<float2 *>(row + n * 8 + 2 * c) = make_float2(acc[n][hr * 2], acc[n][hr * 2 + 1]);
        }
    }
    if (!COL) { /* the CTA's share of ||diff||^2 and of sum_t diff[t, t], in a fixed order */
        __shared__ float red[2][WARPS];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            ss += __shfl_xor_sync(0xffffffffu, ss, o);
            dd += __shfl_xor_sync(0xffffffffu, dd, o);
        }
        if (lane == 0) red[0][warp] = ss, red[1][warp] = dd;
        __syncthreads();
        if (tid == 0) {
            float a = 0.0f, d = 0.0f;
            for (int w = 0; w < WARPS; w++) a += red[0][w], d += red[1][w];
            p.part_ss[(long long)bh * nb + ib] = a;
            p.part_dd[(long long)bh * nb + ib] = d;
        }
    }
}

/* ---- 5. finish ------------------------------------------------------------------------ */

struct finish_params {
    const float *part_ss, *part_dd, *zrow, *zcol, *gdt, *dCh, *dBh;
    float *norm, *w, *loss, *per_head, *ddt, *dloga, *dB, *dC, *dD;
    int B, T, Tp, H, G, N;
};

/* One warp per (b, h): the norm and w_bh, then dloga_k += w sum_{t >= k} (zrow - zcol)_t
 * (a suffix scan in double) and ddt += w gdt. */
__global__ void finish_head_kernel(finish_params p) {
    const int lane = threadIdx.x & 31;
    const long long bh = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (bh >= (long long)p.B * p.H) return;
    const int b = (int)(bh / p.H), h = (int)(bh % p.H), nb = p.Tp / BT;
    double ss = 0.0;
    for (int i = lane; i < nb; i += 32) ss += p.part_ss[bh * nb + i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const double norm = sqrt(ss);
    const float w = norm > 0.0 ? (float)(1.0 / (norm * (double)p.B * p.H)) : 0.0f; /* 0: zero subgradient */
    if (lane == 0) {
        p.norm[bh] = (float)norm;
        p.w[bh] = w;
        if (p.per_head) p.per_head[bh] = (float)norm;
    }
    if (!p.dloga && !p.ddt) return;
    const float *zr = p.zrow + bh * p.Tp, *zc = p.zcol + bh * p.Tp, *gd = p.gdt + bh * p.Tp;
    /* lane l takes the l-th chunk from the end, so an inclusive scan over lanes is a suffix sum */
    const int L = (p.T + 31) / 32, hi = p.T - lane * L, lo = max(hi - L, 0);
    double part = 0.0;
    for (int t = lo; t < hi; t++) part += (double)zr[t] - zc[t];
    double run = warp_incl_scan(part, lane) - part; /* the sum over t >= hi */
    for (int t = hi - 1; t >= lo; t--) {
        const long long x = ((long long)b * p.T + t) * p.H + h;
        run += (double)zr[t] - zc[t];
        if (p.dloga) p.dloga[x] += (float)(w * run);
        if (p.ddt) p.ddt[x] += w * gd[t];
    }
}

/* One block: the loss (mean of the norms) and dD_h += sum_b w_bh sum_t diff[t, t]. */
__global__ void finish_scalar_kernel(finish_params p) {
    const int nb = p.Tp / BT;
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (long long i = 0; i < (long long)p.B * p.H; i++) s += p.norm[i];
        *p.loss = (float)(s / ((double)p.B * p.H));
    }
    if (!p.dD) return;
    for (int h = threadIdx.x; h < p.H; h += blockDim.x) {
        double s = 0.0;
        for (int b = 0; b < p.B; b++) {
            const long long bh = (long long)b * p.H + h;
            double d = 0.0;
            for (int i = 0; i < nb; i++) d += p.part_dd[bh * nb + i];
            s += p.w[bh] * d;
        }
        p.dD[h] += (float)s;
    }
}

/* dC[b, t, g, n] += sum_{h in g} w_bh dCh[b, t, h, n], and dB likewise. */
__global__ void finish_bc_kernel(finish_params p) {
    const long long total = (long long)p.B * p.T * p.G * p.N;
    const int hpg = p.H / p.G;
    for (long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x; x < total;
         x += (long long)gridDim.x * blockDim.x) {
        const int n = (int)(x % p.N);
        const long long r = x / p.N;
        const int g = (int)(r % p.G);
        const long long bt = r / p.G;
        const int b = (int)(bt / p.T);
        float sc = 0.0f, sb = 0.0f;
        for (int hh = 0; hh < hpg; hh++) {
            const int h = g * hpg + hh;
            const float w = p.w[(long long)b * p.H + h];
            const long long y = (bt * p.H + h) * p.N + n;
            if (p.dC) sc += w * p.dCh[y];
            if (p.dB) sb += w * p.dBh[y]; /* dBh is not computed when dB is NULL */
        }
        if (p.dC) p.dC[x] += sc;
        if (p.dB) p.dB[x] += sb;
    }
}

template <int HD, int N, bool COL>
int launch_tiles(const tile_params &tp, int nb, int BH, cudaStream_t stream) {
    constexpr int smem = tile_smem<HD, N>();
    SD_CUDA_TRY(cudaFuncSetAttribute(stage1_tile_kernel<HD, N, COL>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    stage1_tile_kernel<HD, N, COL><<<dim3(nb, BH), WARPS * 32, smem, stream>>>(tp);
    SD_CUDA_LAUNCHED();
    return SD_OK;
}

template <int HD, int N>
int launch_both(tile_params tp, float *zrow, float *zcol, float *gdt, float *dCh, float *dBh, int nb,
                int BH, bool col_pass, cudaStream_t stream) {
    tp.z = zrow, tp.gdt = nullptr, tp.dY = dCh;
    SD_TRY((launch_tiles<HD, N, false>(tp, nb, BH, stream)));
    if (!col_pass) return SD_OK; /* nothing wants dB, ddt or dloga: the loss and dC, dD only */
    tp.z = zcol, tp.gdt = gdt, tp.dY = dBh;
    return launch_tiles<HD, N, true>(tp, nb, BH, stream);
}

} // namespace

extern "C" size_t sd_cuda_stage1_workspace(int B, int T, int H, int N) {
    if (B < 1 || T < 1 || H < 1 || N < 1) return 0;
    return carve(nullptr, B, T, H, N).bytes;
}

extern "C" int sd_cuda_stage1_loss(const sd_cuda_stage1_args *a, void *workspace, size_t workspace_bytes,
                                   cudaStream_t stream) {
    static const char *op = "sd_cuda_stage1_loss";
    if (!a) return sd_fail(SD_ERR_INTERNAL, "%s: NULL arguments", op);
    if (a->B < 1 || a->T < 1 || a->H < 1 || a->Hkv < 1 || a->H % a->Hkv || a->G < 1 || a->H % a->G ||
        (a->hd != 64 && a->hd != 128) || (a->N != 64 && a->N != 128))
        return sd_fail(SD_ERR_INTERNAL,
                       "%s: B %d, T %d, H %d, Hkv %d, G %d, hd %d, N %d: need Hkv and G dividing H, "
                       "hd and N 64 or 128", op, a->B, a->T, a->H, a->Hkv, a->G, a->hd, a->N);
    if (!a->q || !a->k || !a->Bm || !a->Cm || !a->loga || !a->loss)
        return sd_fail(SD_ERR_INTERNAL, "%s: q, k, Bm, Cm, loga and loss are required", op);
    if ((a->ddt && !a->dt) || (a->dD && !a->D))
        return sd_fail(SD_ERR_INTERNAL, "%s: ddt (dD) given but dt (D) is NULL", op);
    if ((long long)a->B * a->H > 65535)
        return sd_fail(SD_ERR_INTERNAL, "%s: B * H = %lld exceeds the grid", op, (long long)a->B * a->H);
    if (((uintptr_t)a->q | (uintptr_t)a->k | (uintptr_t)a->Bm | (uintptr_t)a->Cm) & 15)
        return sd_fail(SD_ERR_INTERNAL, "%s: q, k, Bm and Cm must be 16-byte aligned (cp.async)", op);
    const size_t need = sd_cuda_stage1_workspace(a->B, a->T, a->H, a->N);
    if (!workspace || workspace_bytes < need || ((uintptr_t)workspace & 255))
        return sd_fail(SD_ERR_INTERNAL, "%s: workspace %zu bytes at %p, need %zu bytes 256-byte aligned", op,
                       workspace_bytes, workspace, need);

    ws_layout w = carve(workspace, a->B, a->T, a->H, a->N);
    const int Tp = (a->T + BT - 1) / BT * BT, nb = Tp / BT, BH = a->B * a->H;
    const int warps_per_block = 8, head_blocks = (BH + warps_per_block - 1) / warps_per_block;

    prep_kernel<<<head_blocks, warps_per_block * 32, 0, stream>>>(a->loga, a->dt, w.cs2, w.dts, w.lse, a->B,
                                                                  a->T, Tp, a->H);
    SD_CUDA_LAUNCHED();
    SD_TRY(sd_cuda_flash_attention_ld(nullptr, w.lse, Tp, a->q, a->k, nullptr, a->B, a->T, a->T, a->H,
                                      a->Hkv, a->hd, a->scale, stream));

    tile_params tp;
    tp.q = reinterpret_cast<const __nv_bfloat16 *>(a->q);
    tp.k = reinterpret_cast<const __nv_bfloat16 *>(a->k);
    tp.Bm = reinterpret_cast<const __nv_bfloat16 *>(a->Bm);
    tp.Cm = reinterpret_cast<const __nv_bfloat16 *>(a->Cm);
    tp.D = a->D, tp.lse = w.lse, tp.cs2 = w.cs2, tp.dts = w.dts;
    tp.part_ss = w.part_ss, tp.part_dd = w.part_dd;
    tp.T = a->T, tp.Tp = Tp, tp.H = a->H, tp.Hkv = a->Hkv, tp.G = a->G;
    tp.scale_log2 = a->scale * LOG2E;
    int rc;
    const bool col = a->dB || a->ddt || a->dloga;
    if (a->hd == 64 && a->N == 64) rc = launch_both<64, 64>(tp, w.zrow, w.zcol, w.gdt, w.dCh, w.dBh, nb, BH, col, stream);
    else if (a->hd == 64) rc = launch_both<64, 128>(tp, w.zrow, w.zcol, w.gdt, w.dCh, w.dBh, nb, BH, col, stream);
    else if (a->N == 64) rc = launch_both<128, 64>(tp, w.zrow, w.zcol, w.gdt, w.dCh, w.dBh, nb, BH, col, stream);
    else rc = launch_both<128, 128>(tp, w.zrow, w.zcol, w.gdt, w.dCh, w.dBh, nb, BH, col, stream);
    SD_TRY(rc);

    finish_params fp;
    fp.part_ss = w.part_ss, fp.part_dd = w.part_dd, fp.zrow = w.zrow, fp.zcol = w.zcol, fp.gdt = w.gdt;
    fp.dCh = w.dCh, fp.dBh = w.dBh, fp.norm = w.norm, fp.w = w.w;
    fp.loss = a->loss, fp.per_head = a->per_head, fp.ddt = a->ddt, fp.dloga = a->dloga;
    fp.dB = a->dB, fp.dC = a->dC, fp.dD = a->dD;
    fp.B = a->B, fp.T = a->T, fp.Tp = Tp, fp.H = a->H, fp.G = a->G, fp.N = a->N;
    finish_head_kernel<<<head_blocks, warps_per_block * 32, 0, stream>>>(fp);
    SD_CUDA_LAUNCHED();
    finish_scalar_kernel<<<1, 256, 0, stream>>>(fp);
    SD_CUDA_LAUNCHED();
    if (a->dB || a->dC) {
        const long long total = (long long)a->B * a->T * a->G * a->N;
        const int blocks = (int)((total + 255) / 256 < 4096 ? (total + 255) / 256 : 4096);
        finish_bc_kernel<<<blocks, 256, 0, stream>>>(fp);
        SD_CUDA_LAUNCHED();
    }
    return SD_OK;
}
