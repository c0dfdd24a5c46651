/* CPU emulation of the CUDA attention backward kernels (k_attn_bwd_rows, k_attn_bwd_keys in
 * kernels/cuda/attention_bwd_cuda.cu, between its emulate-begin and emulate-end comments): that
 * source compiled as host C++ with one std::thread per GPU thread of a block (blocks one after
 * another), a barrier for __syncthreads, a per-warp exchange with barriers for __shfl_xor_sync
 * (a lane that skipped a shuffle would hang the emulation), __shared__ as static storage.
 * It checks the index arithmetic (rows, key rows, GQA groups, the causal bound with a KV prefix,
 * lanes past hd, the block-uniform loops), the shared-memory reductions and the dtype paths
 * against a double-precision reference, with the GPU test's cases and tolerances; it cannot
 * check the hardware (launch limits, memory, timing): tests/gpu/test_cuda_attention_bwd.c does.
 * Not built by CMake (C++20, no GPU needed).  From the repository root:
 *   sed -n '/emulate-begin/,/emulate-end/p' kernels/cuda/attention_bwd_cuda.cu > /tmp/attn_bwd_part.inc
 *   g++ -std=c++20 -O2 -pthread -w -I/tmp -o /tmp/emulate_attention_bwd tests/gpu/emulate_attention_bwd.cpp
 *   /tmp/emulate_attention_bwd      (exit 0: every case within the GPU test's tolerances) */
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__
#define __shared__ static
#define __launch_bounds__(...)
using std::max;
using std::min;
struct dim3 {
    unsigned x = 0, y = 1, z = 1;
};
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim;

static float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return 0x7fc0;
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static float sd_ld(const void *p, int bf16, int64_t i) {
    return bf16 ? bf2f(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
static void sd_st(void *p, int bf16, int64_t i, float v) {
    if (bf16) ((uint16_t *)p)[i] = f2bf(v);
    else ((float *)p)[i] = v;
}

static std::barrier<> *g_cta;
static std::barrier<> *g_warp[32];
static float g_xchg[32][32];
static void __syncthreads() { g_cta->arrive_and_wait(); }
static float __shfl_xor_sync(unsigned, float v, int o) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    g_xchg[w][l] = v;
    g_warp[w]->arrive_and_wait();
    float r = g_xchg[w][l ^ o];
    g_warp[w]->arrive_and_wait();
    return r;
}

#include "attn_bwd_part.inc"

/* Runs body for blocks 0 .. nblocks-1, BWD_THREADS threads each. */
static void grid(int64_t nblocks, const std::function<void()> &body) {
    blockDim.x = BWD_THREADS;
    std::barrier<> cta(BWD_THREADS);
    std::vector<std::barrier<> *> warps;
    for (int w = 0; w < BWD_WARPS; w++) warps.push_back(g_warp[w] = new std::barrier<>(32));
    g_cta = &cta;
    std::vector<std::thread> th;
    for (int tid = 0; tid < BWD_THREADS; tid++)
        th.emplace_back([&, tid] {
            threadIdx.x = tid;
            for (int64_t b = 0; b < nblocks; b++) {
                blockIdx.x = (unsigned)b;
                body();
                cta.arrive_and_wait(); /* the next block reuses the shared storage */
            }
        });
    for (auto &t : th) t.join();
    for (auto *w : warps) delete w;
}

static uint64_t g_rng = 20261124;
static float uni(float lo, float hi) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)(g_rng >> 40) * (1.0f / 16777216.0f);
}

/* A tensor in its device dtype (bf16 bits or floats) with its values as floats. */
struct buf {
    int bf;
    std::vector<float> f;
    std::vector<uint16_t> h;
    void *p() { return bf ? (void *)h.data() : (void *)f.data(); }
    float at(size_t i) const { return bf ? bf2f(h[i]) : f[i]; }
};
static buf mk(size_t n, int bf, float lo, float hi) {
    buf b{bf, std::vector<float>(n), std::vector<uint16_t>(n)};
    for (size_t i = 0; i < n; i++) {
        b.h[i] = f2bf(uni(lo, hi));
        b.f[i] = bf2f(b.h[i]);
    }
    return b;
}

static int g_fail;

static void check(const char *name, const buf &got, const std::vector<double> &ref, int bf) {
    double mr = 0, md = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        mr = std::max(mr, fabs(ref[i]));
        double e = fabs((double)got.at(i) - ref[i]);
        md = e == e ? std::max(md, e) : INFINITY;
    }
    double rel = md / (mr > 0 ? mr : 1), tol = bf ? 1e-2 : 1e-4;
    int bad = !(rel <= tol);
    g_fail += bad;
    printf("    %s rel %.3e (tol %.0e)%s\n", name, rel, tol, bad ? "  FAIL" : "");
}

template <int NPL>
static void run(buf *dq, buf *dk, buf *dv, buf &go, buf &q, buf &k, buf &v, int B, int T, int S, int Hq, int Hkv,
                int hd, float scale) {
    std::vector<float> lse((size_t)B * Hq * T, NAN), dsum((size_t)B * Hq * T, NAN);
    grid((int64_t)B * Hq * T, [&] {
        k_attn_bwd_rows<NPL>(dq ? dq->p() : nullptr, dq ? dq->bf : 0, lse.data(), dsum.data(), go.p(), go.bf, q.p(),
                             q.bf, k.p(), k.bf, v.p(), v.bf, T, S, Hq, Hkv, hd, scale);
    });
    if (!dk && !dv) return;
    grid((int64_t)B * Hkv * S, [&] {
        k_attn_bwd_keys<NPL>(dk ? dk->p() : nullptr, dk ? dk->bf : 0, dv ? dv->p() : nullptr, dv ? dv->bf : 0,
                             lse.data(), dsum.data(), go.p(), go.bf, q.p(), q.bf, k.p(), k.bf, v.p(), v.bf, T, S, Hq,
                             Hkv, hd, scale);
    });
}

static void run_any(buf *dq, buf *dk, buf *dv, buf &go, buf &q, buf &k, buf &v, int B, int T, int S, int Hq,
                    int Hkv, int hd, float scale) {
    if (hd <= 32) run<1>(dq, dk, dv, go, q, k, v, B, T, S, Hq, Hkv, hd, scale);
    else if (hd <= 64) run<2>(dq, dk, dv, go, q, k, v, B, T, S, Hq, Hkv, hd, scale);
    else if (hd <= 128) run<4>(dq, dk, dv, go, q, k, v, B, T, S, Hq, Hkv, hd, scale);
    else run<8>(dq, dk, dv, go, q, k, v, B, T, S, Hq, Hkv, hd, scale);
}

static void one_case(int B, int T, int S, int Hq, int Hkv, int hd, int in_bf, int g_bf) {
    printf("  B %d T %d S %d Hq %d Hkv %d hd %d: inputs %s, gradients %s\n", B, T, S, Hq, Hkv, hd,
           in_bf ? "bf16" : "f32", g_bf ? "bf16" : "f32");
    size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * S * Hkv * hd;
    buf q = mk(nq, in_bf, -2, 2), k = mk(nk, in_bf, -2, 2), v = mk(nk, in_bf, -1, 1), go = mk(nq, in_bf, -1, 1);
    buf dq = mk(nq, g_bf, -0.5f, 0.5f), dk = mk(nk, g_bf, -0.5f, 0.5f), dv = mk(nk, g_bf, -0.5f, 0.5f);
    float scale = 1.0f / sqrtf((float)hd);
    /* double reference from the same start */
    std::vector<double> rq(nq), rk(nk), rv(nk);
    for (size_t i = 0; i < nq; i++) rq[i] = dq.at(i);
    for (size_t i = 0; i < nk; i++) rk[i] = dk.at(i), rv[i] = dv.at(i);
    std::vector<double> p(S), dp(S);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++)
            for (int t = 0; t < T; t++) {
                int g = h / (Hq / Hkv), nkeys = S - T + t + 1;
                size_t qo = (((size_t)b * T + t) * Hq + h) * hd;
                double m = -INFINITY, sum = 0, D = 0;
                for (int j = 0; j < nkeys; j++) {
                    size_t ko = (((size_t)b * S + j) * Hkv + g) * hd;
                    double s = 0, d2 = 0;
                    for (int d = 0; d < hd; d++) s += (double)q.at(qo + d) * k.at(ko + d), d2 += (double)go.at(qo + d) * v.at(ko + d);
                    p[j] = s * scale, dp[j] = d2;
                    m = std::max(m, p[j]);
                }
                for (int j = 0; j < nkeys; j++) sum += p[j] = exp(p[j] - m);
                for (int j = 0; j < nkeys; j++) p[j] /= sum, D += p[j] * dp[j];
                for (int j = 0; j < nkeys; j++) {
                    size_t ko = (((size_t)b * S + j) * Hkv + g) * hd;
                    double ds = p[j] * (dp[j] - D);
                    for (int d = 0; d < hd; d++) {
                        rq[qo + d] += scale * ds * k.at(ko + d);
                        rk[ko + d] += scale * ds * q.at(qo + d);
                        rv[ko + d] += p[j] * go.at(qo + d);
                    }
                }
            }
    buf dq0 = dq, dk0 = dk, dv0 = dv;
    run_any(&dq, &dk, &dv, go, q, k, v, B, T, S, Hq, Hkv, hd, scale);
    check("dq", dq, rq, g_bf);
    check("dk", dk, rk, g_bf);
    check("dv", dv, rv, g_bf);
    /* one gradient at a time: the same bits */
    buf dq1 = dq0, dk1 = dk0, dv1 = dv0;
    run_any(&dq1, nullptr, nullptr, go, q, k, v, B, T, S, Hq, Hkv, hd, scale);
    run_any(nullptr, &dk1, nullptr, go, q, k, v, B, T, S, Hq, Hkv, hd, scale);
    run_any(nullptr, nullptr, &dv1, go, q, k, v, B, T, S, Hq, Hkv, hd, scale);
    int same = dq1.f == dq.f && dq1.h == dq.h && dk1.f == dk.f && dk1.h == dk.h && dv1.f == dv.f && dv1.h == dv.h;
    g_fail += !same;
    printf("    one gradient at a time: %s\n", same ? "same bits" : "DIFFER  FAIL");
}

int main() {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    for (int bf = 1; bf >= 0; bf--) {
        one_case(2, 37, 37, 4, 2, 8, bf, bf);
        one_case(1, 64, 80, 8, 2, 64, bf, bf);
        one_case(2, 128, 128, 4, 4, 128, bf, bf);
        one_case(1, 19, 33, 2, 1, 256, bf, bf);
        one_case(1, 1, 5, 2, 1, 40, bf, bf);
    }
    one_case(2, 37, 37, 4, 2, 8, 1, 0);
    printf("emulated attention backward: %d failed\n", g_fail);
    return g_fail ? 1 : 0;
}
