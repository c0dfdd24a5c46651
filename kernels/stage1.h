/* The stage-1 loss of MOHAWK (Bick et al. 2024, "matrix orientation"; DESIGN.md section 5):
 * the distance between the teacher's attention matrix and the student's SSD matrix.
 *
 * Per batch b and head h (student heads H == teacher query heads; teacher KV heads Hkv
 * divide H, query head h reads kv head h / (H / Hkv)):
 *
 *     A[t, s] = softmax_s(scale q_t . k_s)          causal (s <= t), 0 above
 *     M[t, s] = (C_t . B_s) exp(cs_t - cs_s) dt_s   s <= t, 0 above  (kernels/ssd.h)
 *               + D_h on the diagonal
 *     loss    = mean_{b, h} || A - M ||_F            (unsquared Frobenius norm)
 *
 * Gradient: with w_bh = 1 / (||A - M||_F B H) and dM = w_bh (M - A) (0 where the norm is 0),
 * the SSD matrix backward gives ddt, dloga, dB, dC, and dD_h = sum_{b, t} dM[t, t].
 * The teacher (q, k) gets no gradient: it is frozen in stage 1. */
#ifndef SD_STAGE1_H
#define SD_STAGE1_H

#include "kernels/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* q [B, T, H, hd], k [B, T, Hkv, hd], dt (NULL: 1) and loga [B, T, H], Bm and Cm
 * [B, T, G, N] (G divides H), D [H] (NULL: no skip).
 * loss: one host float.  per_head (optional, F32 [B, H]): the norms ||A - M||_F (written).
 * ddt, dloga, dB, dC, dD: optional gradient outputs shaped like their inputs, ADDED into
 * (the caller zeroes them); ddt must be NULL when dt is, dD NULL when D is.
 * CPU (kernels/cpu/stage1_cpu.c, the reference): everything F32; materialises both T x T
 * matrices per (b, h) (O(B H T^2) memory).
 * CUDA (kernels/cuda/stage1_cuda.cu): the fused kernel (kernels/cuda/attention_cuda.h), nothing
 * T x T in memory; q, k, Bm, Cm F32 or BF16 (run as bf16), everything else F32; hd and N up
 * to 128 (padded inside with zero columns to 64 or 128, which changes nothing); B H up to
 * 65535.  The call synchronises to return the loss. */
int sd_stage1_loss(sd_ctx *ctx, float *loss, sd_tensor *per_head, const sd_tensor *q,
                   const sd_tensor *k, float scale, const sd_tensor *dt, const sd_tensor *loga,
                   const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D, sd_tensor *ddt,
                   sd_tensor *dloga, sd_tensor *dB, sd_tensor *dC, sd_tensor *dD);

#ifdef __cplusplus
}
#endif

#endif
