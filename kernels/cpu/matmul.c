/* GEMMs on the CPU through CBLAS (OpenBLAS).
 *
 * OpenBLAS runs single-threaded (kernels/context.c): its own thread pool and our OpenMP pool
 * would otherwise spin against each other (measured: 2 threads slower than 1).  We split the
 * output into one block per OpenMP thread instead and call sgemm on each block; the k sum of
 * every element stays inside one sgemm call, so a fixed thread count gives bit-identical
 * results. */
#include "kernels/cpu/cpu_ops.h"

#include <cblas.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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
    int nb = 1;
#ifdef _OPENMP
    /* Below ~2 MFLOP a fork costs more than it saves. */
    if ((double)m * (double)n * (double)k >= 1e6) nb = omp_get_max_threads();
#endif
    /* Split the larger of m (rows of x) and n (rows of w) into nb contiguous blocks. */
    int by_rows = m >= n;
    int64_t total = by_rows ? m : n;
    if (nb > total) nb = (int)total;
#pragma omp parallel for schedule(static) num_threads(nb) if (nb > 1)
    for (int b = 0; b < nb; b++) {
        int64_t lo = total * b / nb, hi = total * (b + 1) / nb;
        if (hi == lo) continue;
        if (by_rows)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), (int)n, (int)k, 1.0f,
                        x + lo * k, ld(k), w, ld(k), beta, out + lo * n, ld(n));
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)(hi - lo), (int)k, 1.0f, x,
                        ld(k), w + lo * k, ld(k), beta, out + lo, ld(n));
    }
}

void sd_cpu_matmul(float *c, const float *a, const float *b, int64_t batch, int64_t m,
                   int64_t n, int64_t k, int trans_a, int trans_b, float alpha, float beta,
                   int64_t a_stride, int64_t b_stride) {
    if (m == 0 || n == 0) return;
    /* Row-major storage: a is [m, k], or [k, m] when transposed; likewise b. */
    int lda = ld(trans_a ? m : k), ldb = ld(trans_b ? k : n);
    /* Batches are independent: one per thread when there are several. */
#pragma omp parallel for schedule(static) if (batch > 1 && (double)batch * m * n * k >= 1e6)
    for (int64_t i = 0; i < batch; i++) {
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha,
                    a + i * a_stride, lda, b + i * b_stride, ldb, beta, c + i * m * n, ld(n));
    }
}
