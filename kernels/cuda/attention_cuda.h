/* CUDA attention kernels (tensor cores, mma.sync bf16): the flash-attention forward and the
 * fused stage-1 loss (kernels/stage1.h) built on it.  C interface on raw device pointers;
 * bf16 tensors are passed as uint16_t bit patterns (the upper half of an IEEE float).
 * Nothing here allocates: callers pass a workspace sized by the *_workspace functions. */
#ifndef SD_ATTENTION_CUDA_H
#define SD_ATTENTION_CUDA_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Causal softmax attention with GQA, as kernels/attention.h (FlashAttention-2 forward, Dao 2023:
 * key tiles streamed through shared memory, online softmax, nothing T x S in memory).
 * q, out [B, T, H, hd] bf16; k, v [B, S, Hkv, hd] bf16 with S >= T, Hkv dividing H (query
 * head h reads kv head h / (H / Hkv)); query t attends keys 0 .. S - T + t.
 * lse (optional, NULL to skip): [B, H, T] fp32, natural log of the sum of exp(scaled scores).
 * out may be NULL when only lse is wanted (then v is not read and may be NULL).
 * hd: 64 or 128; scale > 0.  q, k, v 16-byte aligned (cudaMalloc memory is).  fp32
 * accumulation and softmax.  Asynchronous on stream. */
int sd_cuda_flash_attention(uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                            const uint16_t *v, int B, int T, int S, int H, int Hkv, int hd,
                            float scale, cudaStream_t stream);

/* 1 when calls with out run the Hopper kernel (wgmma): a build for sm_90a on an sm_90 device,
 * unless SD_FLASH_WGMMA=0 in the environment; else 0 (the mma.sync kernel).  Fixed at the
 * first call of either function. */
int sd_cuda_flash_attention_wgmma(void);

/* The fused stage-1 loss and gradient (kernels/stage1.h for the math), never holding a T x T
 * matrix: the teacher's per-row lse (flash kernel above), then one pass over the lower
 * triangle tile by tile that accumulates the per-(b, h) sum of squares of A - M together with
 * the row-side gradient (dC, sum_s dM o M), a second pass over the triangle column-wise for
 * the column-side gradient (dB, ddt, sum_t dM o M), and a finish that scales everything by
 * 1 / (||A - M||_F B H) (the gradient is linear in dM, so the scale can come last).
 *
 * Inputs (device): q [B, T, H, hd] and k [B, T, Hkv, hd] bf16; dt (NULL: 1) and loga
 * [B, T, H] fp32; Bm, Cm [B, T, G, N] bf16 (G divides H); D [H] fp32 (NULL: none).
 * Outputs (device, each optional but loss): loss [1] fp32 (written), per_head [B, H] fp32
 * norms (written); gradients fp32 ADDED into: ddt, dloga [B, T, H], dB, dC [B, T, G, N], dD [H]
 * (ddt must be NULL when dt is, dD when D is).
 * hd and N: 64 or 128; q, k, Bm, Cm 16-byte aligned.  workspace: at least
 * sd_cuda_stage1_workspace(...) bytes, 256-byte aligned (cudaMalloc memory is): fp32
 * O(B H T (6 + 2 N)) (the per-head, unscaled dB and dC rows are most of it; 134 MiB at
 * B 4, T 2048, H 32, N 64).  Asynchronous on stream. */
typedef struct {
    int B, T, H, Hkv, hd, G, N;
    float scale;
    const uint16_t *q, *k, *Bm, *Cm;
    const float *dt, *loga, *D;
    float *loss, *per_head, *ddt, *dloga, *dB, *dC, *dD;
} sd_cuda_stage1_args;

size_t sd_cuda_stage1_workspace(int B, int T, int H, int N);
int sd_cuda_stage1_loss(const sd_cuda_stage1_args *a, void *workspace, size_t workspace_bytes,
                        cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
