/* SSD: the state-space-duality core of both Mamba-2 mixers (DESIGN.md section 4), on the
 * CPU in three forms that agree to fp32 rounding, plus backward passes.
 *
 * The generic SSD.  Per batch b, head h, time t (head dim P, state size N, G groups; head h
 * reads group h / (H / G)):
 *
 *     S_t = exp(loga_t) S_{t-1} + (dt_t x_t) B_t^T        S: [P, N] per (b, h), fp32
 *     y_t = S_t C_t + D_h x_t
 *
 * Matrix form (Mamba-2 paper section 3, "SSD as a semiseparable matrix"):
 *
 *     M[t, s] = (C_t . B_s) exp(sum_{k=s+1..t} loga_k) dt_s   for s <= t, 0 above;
 *     y = M x + D x.
 *
 * The two mixers map onto it as follows:
 *   discrete Mamba-2 (Phi-Mamba, Llamba): dt = NULL (1), loga = -softplus(a);
 *   standard Mamba-2 (mamba_ssm Mamba2):  dt = softplus(dt + dt_bias), loga = dt * A,
 *                                          A = -exp(A_log).
 *
 * Tensors (all F32, contiguous, row-major):
 *   x, y   [B, T, H, P]      dt, loga [B, T, H] (dt may be NULL: 1; loga <= 0)
 *   Bm, Cm [B, T, G, N]      D [H] (may be NULL: no skip)
 *   states [B, H, P, N]      M [B, H, T, T]
 * Cumulative sums of loga run in double; segment sums are differences of cumulative sums,
 * exp(cs_t - cs_s), with the argument clamped at 0 (DESIGN.md section 4).
 *
 * CPU: OpenMP over independent (b, h) pairs (over (b, g) in the backward, heads of a group
 * in order inside), every reduction in one thread in a fixed order: bit-identical results for
 * a fixed thread count.  Backward entries ADD into their gradient outputs (the caller zeroes
 * them); a NULL gradient output is skipped.
 *
 * CUDA: sd_ssd_chunked and sd_ssd_chunked_backward only (kernels/cuda/ssd_cuda.h), with x, y,
 * Bm, Cm, dy, dx, dB, dC BF16 (or F32, converted to bf16 inside) and dt, loga, D, the states
 * and their gradients F32; P, N up to 128 (the kernels take multiples of 16: others are
 * padded inside with zero columns, which is exact); any chunk (the kernels run the nearest
 * multiple of 16 in 16..128, where they are fastest; the result depends on the chunk only
 * through rounding).  The other forms are CPU-only. */
#ifndef SD_SSD_H
#define SD_SSD_H

#include "kernels/context.h"

/* The quadratic form: materialises M per (b, h) (O(T^2) time and memory), y = M x + D x.
 * M_out (optional) receives M without D, [B, H, T, T], zeros above the diagonal. */
int sd_ssd_quadratic(sd_ctx *ctx, sd_tensor *y, const sd_tensor *x, const sd_tensor *dt,
                     const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                     const sd_tensor *D, sd_tensor *M_out);

/* The chunked form (Mamba-2 paper section 6): per chunk of `chunk` steps (any >= 1; T need not
 * be a multiple), the intra-chunk matmul, the chunk state, the state passing between chunks
 * and the state-to-output term.  O(T * chunk) time.  init_state (optional, NULL = zeros) is
 * S_{-1}; final_state (optional) receives S_{T-1}.  Both [B, H, P, N]. */
int sd_ssd_chunked(sd_ctx *ctx, sd_tensor *y, const sd_tensor *x, const sd_tensor *dt,
                   const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                   const sd_tensor *D, int64_t chunk, const sd_tensor *init_state,
                   sd_tensor *final_state);

/* One recurrent step (generation): y [B, H, P], x [B, H, P], dt [B, H] (may be NULL),
 * loga [B, H], Bm, Cm [B, G, N], D [H] (may be NULL), state [B, H, P, N] updated in place. */
int sd_ssd_step(sd_ctx *ctx, sd_tensor *y, const sd_tensor *x, const sd_tensor *dt,
                const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm,
                const sd_tensor *D, sd_tensor *state);

/* Backward of sd_ssd_chunked (same shapes; same chunk gives the same rounding of the forward
 * it recomputes).  Adds into dx, ddt, dloga, dB, dC, dD (each may be NULL; ddt must be NULL
 * when dt is).  dfinal_state (optional) is the gradient arriving at final_state;
 * dinit_state (optional) receives the gradient of init_state (added). */
int sd_ssd_chunked_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *ddt, sd_tensor *dloga,
                            sd_tensor *dB, sd_tensor *dC, sd_tensor *dD, const sd_tensor *dy,
                            const sd_tensor *x, const sd_tensor *dt, const sd_tensor *loga,
                            const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D,
                            int64_t chunk, const sd_tensor *init_state,
                            const sd_tensor *dfinal_state, sd_tensor *dinit_state);

/* Backward of the matrix form: given dM [B, H, T, T] (the gradient of a loss on M_out of
 * sd_ssd_quadratic, the matrix without D; entries above the diagonal are ignored), adds the
 * gradients with respect to dt, loga, Bm and Cm (each may be NULL; ddt must be NULL when dt
 * is).  For a loss on M + diag(D), dD_h = sum_t dM[t, t] is left to the caller.
 * O(T^2) memory per (b, h) in flight: the stage-1 reference path. */
int sd_ssd_matrix_backward(sd_ctx *ctx, sd_tensor *ddt, sd_tensor *dloga, sd_tensor *dB,
                           sd_tensor *dC, const sd_tensor *dM, const sd_tensor *dt,
                           const sd_tensor *loga, const sd_tensor *Bm, const sd_tensor *Cm);

#endif
