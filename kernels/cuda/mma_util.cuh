/* Warp-level tensor-core helpers shared by the attention-like CUDA kernels (flash attention,
 * the fused stage-1 loss): cp.async with zero fill, ldmatrix, mma.sync m16n8k16 bf16 with
 * fp32 accumulation.  Fragment layouts are those of the PTX ISA, "Matrix Fragments for
 * mma.m16n8k16" (groupID g = lane / 4, thread-in-group c = lane % 4):
 *   A (16 x 16, row-major)  a0: (g, 2c..2c+1)  a1: (g+8, 2c..)  a2: (g, 2c+8..)  a3: (g+8, 2c+8..)
 *   B (16 x 8, "col")       b0: (k = 2c..2c+1, n = g)           b1: (k = 2c+8.., n = g)
 *   C (16 x 8, fp32)        c0, c1: (g, 2c..2c+1)               c2, c3: (g+8, 2c..2c+1)
 * An accumulator pair of n-tiles therefore re-packs, in place, into the A fragment of the
 * next product (FlashAttention-2, Dao 2023, section 3.1: P stays in registers). */
#ifndef SD_MMA_UTIL_CUH
#define SD_MMA_UTIL_CUH

#include <cuda_bf16.h>
#include <stdint.h>

namespace sd_mma {

/* Shared-memory rows of a [rows][D] bf16 tile are padded by 8 elements (16 bytes): a row of
 * D + 8 elements with D a multiple of 64 is 16 bytes past a multiple of 128, so the 8 row
 * addresses of one ldmatrix phase hit 8 different 16-byte bank groups. */
constexpr int PAD = 8;

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16-byte async copy global -> shared; copies zeros when !pred (src-size 0 reads nothing), so
 * rows past the end are 0 and never NaN garbage that a 0 probability would multiply. */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* d += a b  (16 x 8 += 16 x 16 . 16 x 8), bf16 inputs, fp32 accumulation. */
__device__ __forceinline__ void mma_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats as bf16x2, the first in the low half (the lower column index of a fragment). */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* A fragment (16 rows x 16 columns at column k0) of a row-major smem tile with row stride ld
 * elements, rows r0 .. r0+15. */
__device__ __forceinline__ void load_a(uint32_t a[4], const __nv_bfloat16 *tile, int ld, int r0,
                                       int k0, int lane) {
    ldmatrix_x4(a, tile + (r0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8);
}

/* B fragments of two n-tiles (rows n0 .. n0+15 of the tile, columns k0 .. k0+15 as k) for
 * a product X . tile^T: {b[0], b[1]} for n-tile n0, {b[2], b[3]} for n0 + 8. */
__device__ __forceinline__ void load_b_nt(uint32_t b[4], const __nv_bfloat16 *tile, int ld, int n0,
                                          int k0, int lane) {
    ldmatrix_x4(b, tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + ((lane >> 3) & 1) * 8);
}

/* B fragments for a product P . tile (tile rows k0 .. k0+15 as k, columns n0 .. n0+15 as n):
 * {b[0], b[1]} for columns n0 .. n0+7, {b[2], b[3]} for n0+8 .. n0+15. */
__device__ __forceinline__ void load_b_t(uint32_t b[4], const __nv_bfloat16 *tile, int ld, int k0,
                                         int n0, int lane) {
    ldmatrix_x4_trans(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}

} // namespace sd_mma

#endif
