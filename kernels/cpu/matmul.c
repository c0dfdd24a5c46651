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

/* Blocks for a GEMM of m x n x k: one per OpenMP thread above ~2 MFLOP, else 1. */
static int gemm_blocks(int64_t m, int64_t n, int64_t k, int64_t total) {
    int nb = 1;
#ifdef _OPENMP
    if ((double)m * (double)n * (double)k >= 1e6) nb = omp_get_max_threads();
#endif
    if (nb > total) nb = (int)total;
    return nb < 1 ? 1 : nb;
}

/* y = x . w^T, so dx = dy . w and dw = dy^T . x (beta 1: accumulate).  dx splits by rows
 * of x, dw by rows of w; each element's m or n sum stays inside one sgemm call. */
void sd_cpu_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, int64_t m, int64_t n, int64_t k) {
    if (m == 0 || n == 0) return;
    if (dx && k > 0) {
        int nb = gemm_blocks(m, n, k, m);
#pragma omp parallel for schedule(static) num_threads(nb) if (nb > 1)
        for (int b = 0; b < nb; b++) {
            int64_t lo = m * b / nb, hi = m * (b + 1) / nb;
            if (hi == lo) continue;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)k, (int)n,
                        1.0f, dy + lo * n, ld(n), w, ld(k), 1.0f, dx + lo * k, ld(k));
        }
    }
    if (dw && k > 0) {
        int nb = gemm_blocks(m, n, k, n);
#pragma omp parallel for schedule(static) num_threads(nb) if (nb > 1)
        for (int b = 0; b < nb; b++) {
            int64_t lo = n * b / nb, hi = n * (b + 1) / nb;
            if (hi == lo) continue;
            /* dw[lo:hi, :] += dy[:, lo:hi]^T . x */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(hi - lo), (int)k, (int)m,
                        1.0f, dy + lo, ld(n), x, ld(k), 1.0f, dw + lo * k, ld(k));
        }
    }
    if (db) sd_cpu_colsum(db, dy, NULL, NULL, NULL, m, n);
}

/* c = alpha A B with A = op(a) [m, k], B = op(b) [k, n]:
 *   dA = alpha dC B^T  -> da = dA (a as is) or dA^T = alpha B dC^T (a transposed);
 *   dB = alpha A^T dC  -> db = dB (b as is) or dB^T = alpha dC^T A (b transposed).
 * Each is one sgemm with beta 1 per batch.  A broadcast operand gets the batches' sum, added
 * in batch order on one thread; otherwise batches are independent and run in parallel. */
static void grad_a(float *da, const float *dc, const float *b, int64_t m, int64_t n, int64_t k,
                   int ta, int tb, float alpha) {
    if (!ta) /* da [m, k] = dC [m, n] . B^T; B^T is b^T (b [k, n]) or b (b [n, k]) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasNoTrans : CblasTrans, (int)m, (int)k,
                    (int)n, alpha, dc, ld(n), b, ld(tb ? k : n), 1.0f, da, ld(k));
    else /* da [k, m] = B [k, n] . dC^T */
        cblas_sgemm(CblasRowMajor, tb ? CblasTrans : CblasNoTrans, CblasTrans, (int)k, (int)m,
                    (int)n, alpha, b, ld(tb ? k : n), dc, ld(n), 1.0f, da, ld(m));
}

static void grad_b(float *db, const float *dc, const float *a, int64_t m, int64_t n, int64_t k,
                   int ta, int tb, float alpha) {
    if (!tb) /* db [k, n] = A^T [k, m] . dC; A^T is a^T (a [m, k]) or a (a [k, m]) */
        cblas_sgemm(CblasRowMajor, ta ? CblasNoTrans : CblasTrans, CblasNoTrans, (int)k, (int)n,
                    (int)m, alpha, a, ld(ta ? m : k), dc, ld(n), 1.0f, db, ld(n));
    else /* db [n, k] = dC^T [n, m] . A */
        cblas_sgemm(CblasRowMajor, CblasTrans, ta ? CblasTrans : CblasNoTrans, (int)n, (int)k,
                    (int)m, alpha, dc, ld(n), a, ld(ta ? m : k), 1.0f, db, ld(k));
}

void sd_cpu_matmul_backward(float *da, float *db, const float *dc, const float *a,
                            const float *b, int64_t batch, int64_t m, int64_t n, int64_t k,
                            int trans_a, int trans_b, float alpha, int64_t a_stride,
                            int64_t b_stride) {
    if (m == 0 || n == 0 || k == 0) return;
    int par = batch > 1 && (double)batch * m * n * k >= 1e6;
    if (da) {
#pragma omp parallel for schedule(static) if (par && a_stride != 0)
        for (int64_t i = 0; i < batch; i++)
            grad_a(da + i * a_stride, dc + i * m * n, b + i * b_stride, m, n, k, trans_a, trans_b,
                   alpha);
    }
    if (db) {
#pragma omp parallel for schedule(static) if (par && b_stride != 0)
        for (int64_t i = 0; i < batch; i++)
            grad_b(db + i * b_stride, dc + i * m * n, a + i * a_stride, m, n, k, trans_a, trans_b,
                   alpha);
    }
}
