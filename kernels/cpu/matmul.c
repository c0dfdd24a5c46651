/* GEMMs on the CPU through CBLAS (OpenBLAS).  OpenBLAS splits the output, never the k
 * sum, across threads, so a fixed thread count gives bit-identical results. */
#include "kernels/cpu/cpu_ops.h"

#include <cblas.h>
#include <string.h>

/* CBLAS wants leading dimensions >= 1 even for empty matrices. */
static int ld(int64_t n) { return n > 0 ? (int)n : 1; }

void sd_cpu_linear(float *out, const float *x, const float *w, const float *bias, int64_t m,
                   int64_t n, int64_t k) {
    if (m == 0 || n == 0) return;
    float beta = 0.0f;
    if (bias) {
        /* As torch addmm: C starts as the bias, then C = x . w^T + 1 * C. */
        for (int64_t i = 0; i < m; i++) memcpy(out + i * n, bias, (size_t)n * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f, x, ld(k),
                w, ld(k), beta, out, ld(n));
}

void sd_cpu_matmul(float *c, const float *a, const float *b, int64_t batch, int64_t m,
                   int64_t n, int64_t k, int trans_a, int trans_b, float alpha, float beta,
                   int64_t a_stride, int64_t b_stride) {
    if (m == 0 || n == 0) return;
    /* Row-major storage: a is [m, k], or [k, m] when transposed; likewise b. */
    int lda = ld(trans_a ? m : k), ldb = ld(trans_b ? k : n);
    for (int64_t i = 0; i < batch; i++) {
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha,
                    a + i * a_stride, lda, b + i * b_stride, ldb, beta, c + i * m * n, ld(n));
    }
}
