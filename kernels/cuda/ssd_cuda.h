/* The chunked SSD on the GPU (kernels/ssd.h has the math; Mamba-2 paper section 6 the
 * algorithm): forward and backward of the generic SSD
 *
 *     S_t = exp(loga_t) S_{t-1} + (dt_t x_t) B_t^T ;   y_t = S_t C_t + D_h x_t
 *
 * for both mixers (discrete: dt NULL, loga = -softplus(a); standard: dt given, loga = dt*A).
 *
 * Raw device pointers, contiguous row-major, the layouts of kernels/ssd.h:
 *   x, y, dy, dx     [B, T, H, P]  bf16        dt, loga, ddt, dloga  [B, T, H]  fp32
 *   Bm, Cm, dB, dC   [B, T, G, N]  bf16        D, dD                 [H]        fp32
 *   init_state, final_state, dfinal_state, dinit_state  [B, H, P, N]  fp32
 * Cumulative decay sums, chunk states and every accumulation are fp32; the intra-chunk
 * matmuls run on tensor cores with bf16 operands (states and decay-scaled operands are
 * rounded to bf16 for them, as mamba_ssm's Triton kernels do).
 *
 * Limits: P and N multiples of 16 up to 128, chunk a multiple of 16 in 16..256, G dividing
 * H; any T >= 0 (the last chunk is padded inside the kernels).  Everything up to P = N = 128
 * fits an H100/H200's 227 KiB of shared memory per block (with SD_SSD_OWN_BWD set, see
 * below, the backward at G == H keeps 64-row tiles of everything in one block: P * N up to
 * 128 * 96; P = N = 128 is then refused with an error naming the kernel).  Base pointers must
 * be 16-byte aligned (cudaMalloc's are).
 *
 * Unlike the CPU entries, the backward WRITES its gradient outputs (no accumulation): each
 * non-NULL output is overwritten.  dB and dC sum over the H/G heads of a group in a fixed
 * order (no atomics anywhere): the results are bit-for-bit reproducible run to run.
 *
 * Workspace: both calls take a device buffer of at least sd_ssd_cuda_workspace_bytes(dims)
 * bytes (the same buffer serves both; about 3 fp32 states per chunk and head plus two fp32
 * chunk x chunk blocks per chunk and group: e.g. 445 MB at B 8, T 2048, H 64, P 64, N 128,
 * G 1, chunk 256; 742 MB at B 8, T 2048, H 32, P 64, N 64, G 32, chunk 128); nothing is
 * allocated inside the calls.  Everything is queued on `stream`; the calls do not synchronise.
 *
 * Environment (read once): SD_SSD_PROF times every kernel launch alone (synchronising) and
 * prints "ssd_prof <kernel> H<h>_N<n> <ms>" lines to stderr; SD_SSD_OWN_BWD makes the
 * backward at G == H form dB, dC and C B^T inside its per-chunk kernel (the former path)
 * instead of through the per-group kernels that G < H uses. */
#ifndef SD_SSD_CUDA_H
#define SD_SSD_CUDA_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
#include <cuda_bf16.h>
typedef __nv_bfloat16 sd_cuda_bf16;
extern "C" {
#else
typedef uint16_t sd_cuda_bf16; /* the bits of a __nv_bfloat16 */
#endif

typedef struct {
    int64_t B, T, H, P, G, N, chunk;
} sd_ssd_cuda_dims;

/* Bytes of workspace the forward and the backward need for these dims (0 when T == 0). */
size_t sd_ssd_cuda_workspace_bytes(const sd_ssd_cuda_dims *d);

/* y = SSD(x, dt, loga, Bm, Cm) + D x.  dt, D, init_state, final_state may be NULL
 * (dt: 1; D: no skip; init_state: zeros; final_state: not written). */
int sd_ssd_cuda_forward(const sd_ssd_cuda_dims *d, sd_cuda_bf16 *y, const sd_cuda_bf16 *x,
                        const float *dt, const float *loga, const sd_cuda_bf16 *Bm,
                        const sd_cuda_bf16 *Cm, const float *D, const float *init_state,
                        float *final_state, void *workspace, size_t workspace_bytes,
                        cudaStream_t stream);

/* Gradients of the forward above given dy (and dfinal_state, the gradient arriving at
 * final_state; NULL: zero).  Every gradient output may be NULL (skipped); ddt must be NULL
 * when dt is.  dinit_state receives the gradient of init_state. */
int sd_ssd_cuda_backward(const sd_ssd_cuda_dims *d, sd_cuda_bf16 *dx, float *ddt, float *dloga,
                         sd_cuda_bf16 *dB, sd_cuda_bf16 *dC, float *dD, const sd_cuda_bf16 *dy,
                         const sd_cuda_bf16 *x, const float *dt, const float *loga,
                         const sd_cuda_bf16 *Bm, const sd_cuda_bf16 *Cm, const float *D,
                         const float *init_state, const float *dfinal_state, float *dinit_state,
                         void *workspace, size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
