/* GEMMs on CUDA through cuBLASLt: bf16 (or fp32) operands, fp32 accumulation
 * (CUBLAS_COMPUTE_32F: no TF32, so fp32 operands give fp32 results).
 *
 * cuBLAS is column-major; a row-major [R, C] matrix is a column-major [C, R] one, so the
 * row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: cuBLAS's
 * "A" is our b and its "B" our a, with the same transpose flags. */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/cuda_ops.h"

#include <string.h>

static cudaDataType_t cuda_dt(sd_dtype d) { return d == SD_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

/* Layouts, descriptors and the heuristic's first algorithm, released on every path. */
typedef struct {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulPreference_t pref;
} lt_objs;

static void lt_release(lt_objs *o) {
    if (o->pref) cublasLtMatmulPreferenceDestroy(o->pref);
    if (o->lc) cublasLtMatrixLayoutDestroy(o->lc);
    if (o->lb) cublasLtMatrixLayoutDestroy(o->lb);
    if (o->la) cublasLtMatrixLayoutDestroy(o->la);
    if (o->op) cublasLtMatmulDescDestroy(o->op);
}

static int layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld,
                  int64_t batch, int64_t stride) {
    SD_CUBLAS_TRY(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t bc = (int32_t)batch;
        SD_CUBLAS_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
        SD_CUBLAS_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                       sizeof stride));
    }
    return SD_OK;
}

/* The largest power of two up to 256 dividing the address: the heuristic otherwise assumes
 * 256-byte aligned buffers, and the per-batch pointers of the backward are not. */
static uint32_t align_of(const void *p) {
    uint32_t al = 256;
    while (al > 1 && ((uintptr_t)p % al)) al >>= 1;
    return al;
}

static int gemm_run(sd_ctx *ctx, lt_objs *o, void *c, sd_dtype c_dt, const void *a, const void *b,
                    sd_dtype ab, int64_t batch, int64_t M, int64_t N, int64_t K, int trans_a, int trans_b,
                    float alpha, float beta, int64_t a_stride, int64_t b_stride, int64_t c_stride) {
    sd_cuda_state *st = sd_cuda_st(ctx);
    cublasOperation_t opA = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLAS A = our b */
    cublasOperation_t opB = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLAS B = our a */
    SD_CUBLAS_TRY(cublasLtMatmulDescCreate(&o->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    SD_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(o->op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
    SD_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(o->op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
    /* Stored shapes, column-major: b is [K, N] row-major (N x K col-major, ld N) or, when
     * transposed, [N, K] row-major (K x N, ld K); likewise a. */
    SD_TRY(layout(&o->la, cuda_dt(ab), trans_b ? K : N, trans_b ? N : K, trans_b ? K : N, batch, b_stride));
    SD_TRY(layout(&o->lb, cuda_dt(ab), trans_a ? M : K, trans_a ? K : M, trans_a ? M : K, batch, a_stride));
    SD_TRY(layout(&o->lc, cuda_dt(c_dt), N, M, N, batch, c_stride));
    SD_CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&o->pref));
    SD_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(o->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                       &st->lt_ws_bytes, sizeof st->lt_ws_bytes));
    uint32_t al[3] = {align_of(b), align_of(a), align_of(c)};
    SD_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(o->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0],
                                                       sizeof al[0]));
    SD_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(o->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1],
                                                       sizeof al[1]));
    SD_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(o->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2],
                                                       sizeof al[2]));
    SD_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(o->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2],
                                                       sizeof al[2]));
    cublasLtMatmulHeuristicResult_t h;
    int found = 0;
    SD_CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic(st->lt, o->op, o->la, o->lb, o->lc, o->lc, o->pref, 1, &h, &found));
    if (found < 1)
        return sd_fail(SD_ERR_SYS, "cuBLASLt has no algorithm for a %s x %s -> %s GEMM M %lld N %lld K %lld",
                       sd_dtype_name(ab), sd_dtype_name(ab), sd_dtype_name(c_dt), (long long)M, (long long)N,
                       (long long)K);
    SD_CUBLAS_TRY(cublasLtMatmul(st->lt, o->op, &alpha, b, o->la, a, o->lb, &beta, c, o->lc, c, o->lc, &h.algo,
                                 st->lt_ws, st->lt_ws_bytes, st->stream));
    return SD_OK;
}

int sd_cuda_gemm(sd_ctx *ctx, void *c, sd_dtype c_dt, const void *a, const void *b, sd_dtype ab,
                 int64_t batch, int64_t M, int64_t N, int64_t K, int trans_a, int trans_b,
                 float alpha, float beta, int64_t a_stride, int64_t b_stride, int64_t c_stride) {
    if (M == 0 || N == 0 || batch == 0) return SD_OK;
    if (K == 0) { /* cuBLASLt rejects K = 0; c = beta c is what the product means */
        int64_t n = batch * M * N; /* c is contiguous across batches here */
        if (beta == 0.0f) SD_CUDA_TRY(cudaMemsetAsync(c, 0, (size_t)n * sd_dtype_size(c_dt), sd_cuda_stream(ctx)));
        else if (beta != 1.0f)
            return sd_fail(SD_ERR_INTERNAL, "sd_cuda_gemm: K = 0 with beta %g is not supported", (double)beta);
        return SD_OK;
    }
    lt_objs o;
    memset(&o, 0, sizeof o);
    int rc = gemm_run(ctx, &o, c, c_dt, a, b, ab, batch, M, N, K, trans_a, trans_b, alpha, beta, a_stride,
                      b_stride, c_stride);
    lt_release(&o);
    return rc;
}

/* ---- bias --------------------------------------------------------------------------------- */

__global__ void add_bias(void *out, int obf, const void *bias, int bbf, int64_t rows, int64_t n) {
    int64_t total = rows * n;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        sd_st(out, obf, i, sd_ld(out, obf, i) + sd_ld(bias, bbf, i % n));
}

static int same_ab(const char *op, const sd_tensor *a, const char *an, const sd_tensor *b, const char *bn) {
    if (a->dtype != b->dtype)
        return sd_fail(SD_ERR_INTERNAL, "%s: on CUDA %s (%s) and %s (%s) must share a dtype", op, an,
                       sd_dtype_name(a->dtype), bn, sd_dtype_name(b->dtype));
    return SD_OK;
}

int sd_cuda_linear(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x, const sd_tensor *w,
                   const sd_tensor *bias) {
    SD_TRY(same_ab("sd_linear", x, "x", w, "w"));
    int64_t N = w->shape[0], K = w->shape[1], M = sd_rows(x);
    SD_TRY(sd_cuda_gemm(ctx, out->data, out->dtype, x->data, w->data, x->dtype, 1, M, N, K, 0, 1, 1.0f, 0.0f,
                        0, 0, 0));
    if (bias && M * N > 0) {
        add_bias<<<sd_grid1d(M * N, 256), 256, 0, sd_cuda_stream(ctx)>>>(out->data, sd_is_bf16(out), bias->data,
                                                                        sd_is_bf16(bias), M, N);
        SD_CUDA_LAUNCHED();
    }
    return SD_OK;
}

int sd_cuda_linear_backward(sd_ctx *ctx, sd_tensor *dx, sd_tensor *dw, sd_tensor *db,
                            const sd_tensor *dy, const sd_tensor *x, const sd_tensor *w) {
    static const char *op = "sd_linear_backward";
    int64_t N = w->shape[0], K = w->shape[1], M = sd_rows(x);
    if (dx) { /* dx[M, K] += dy[M, N] . w[N, K] */
        SD_TRY(same_ab(op, dy, "dy", w, "w"));
        SD_TRY(sd_cuda_gemm(ctx, dx->data, dx->dtype, dy->data, w->data, dy->dtype, 1, M, K, N, 0, 0, 1.0f, 1.0f,
                            0, 0, 0));
    }
    if (dw) { /* dw[N, K] += dy^T . x, fp32 */
        SD_TRY(same_ab(op, dy, "dy", x, "x"));
        SD_TRY(sd_cuda_gemm(ctx, dw->data, dw->dtype, dy->data, x->data, dy->dtype, 1, N, K, M, 1, 0, 1.0f, 1.0f,
                            0, 0, 0));
    }
    if (db) {
        void *part = NULL;
        SD_TRY(sd_cuda_scratch(ctx, sd_cuda_colsum_floats(M, N) * sizeof(float), &part));
        SD_TRY(sd_cuda_colsum(ctx, (float *)db->data, dy->data, sd_is_bf16(dy), NULL, 0, NULL, M, N, (float *)part));
    }
    return SD_OK;
}

int sd_cuda_matmul(sd_ctx *ctx, sd_tensor *c, const sd_tensor *a, const sd_tensor *b,
                   int64_t batch, int64_t M, int64_t N, int64_t K, int trans_a, int trans_b,
                   float alpha, float beta, int64_t a_stride, int64_t b_stride) {
    SD_TRY(same_ab("sd_matmul", a, "a", b, "b"));
    return sd_cuda_gemm(ctx, c->data, c->dtype, a->data, b->data, a->dtype, batch, M, N, K, trans_a, trans_b,
                        alpha, beta, a_stride, b_stride, M * N);
}

/* The gradient of one operand, per batch when it is batched, else summed over the batches in
 * order by GEMMs that accumulate (beta 1) one after the other on the stream: deterministic.
 *   C = alpha op(A) op(B):  dop(A) = alpha dC op(B)^T,  dop(B) = alpha op(A)^T dC;
 *   dA = dop(A) or its transpose when trans_a, likewise dB. */
int sd_cuda_matmul_backward(sd_ctx *ctx, sd_tensor *da, sd_tensor *db, const sd_tensor *dc,
                            const sd_tensor *a, const sd_tensor *b, int64_t batch, int64_t M,
                            int64_t N, int64_t K, int trans_a, int trans_b, float alpha,
                            int64_t a_stride, int64_t b_stride) {
    static const char *op = "sd_matmul_backward";
    size_t esz_dc = sd_dtype_size(dc->dtype), esz_a = sd_dtype_size(a->dtype), esz_b = sd_dtype_size(b->dtype);
    if (da) {
        SD_TRY(same_ab(op, dc, "dc", b, "b"));
        size_t esz_da = sd_dtype_size(da->dtype);
        /* !trans_a: dA[M,K] = dC[M,N] . op(B)^T: op(B) = B when !trans_b ([K,N]) -> dC . B^T.
         *  trans_a: dA[K,M] = op(B) . dC^T. */
        int64_t nb = a_stride ? batch : 1, inner = a_stride ? 1 : batch;
        for (int64_t i = 0; i < nb; i++)
            for (int64_t j = 0; j < inner; j++) {
                int64_t bi = i * inner + j;
                const char *dcp = (const char *)dc->data + (size_t)(bi * M * N) * esz_dc;
                const char *bp = (const char *)b->data + (size_t)(bi * b_stride) * esz_b;
                char *dap = (char *)da->data + (size_t)(i * a_stride) * esz_da;
                if (!trans_a)
                    SD_TRY(sd_cuda_gemm(ctx, dap, da->dtype, dcp, bp, dc->dtype, 1, M, K, N, 0, !trans_b, alpha,
                                        1.0f, 0, 0, 0));
                else
                    SD_TRY(sd_cuda_gemm(ctx, dap, da->dtype, bp, dcp, dc->dtype, 1, K, M, N, trans_b, 1, alpha,
                                        1.0f, 0, 0, 0));
            }
    }
    if (db) {
        SD_TRY(same_ab(op, dc, "dc", a, "a"));
        size_t esz_db = sd_dtype_size(db->dtype);
        /* !trans_b: dB[K,N] = op(A)^T . dC;  trans_b: dB[N,K] = dC^T . op(A). */
        int64_t nb = b_stride ? batch : 1, inner = b_stride ? 1 : batch;
        for (int64_t i = 0; i < nb; i++)
            for (int64_t j = 0; j < inner; j++) {
                int64_t bi = i * inner + j;
                const char *dcp = (const char *)dc->data + (size_t)(bi * M * N) * esz_dc;
                const char *ap = (const char *)a->data + (size_t)(bi * a_stride) * esz_a;
                char *dbp = (char *)db->data + (size_t)(i * b_stride) * esz_db;
                if (!trans_b)
                    SD_TRY(sd_cuda_gemm(ctx, dbp, db->dtype, ap, dcp, dc->dtype, 1, K, N, M, !trans_a, 0, alpha,
                                        1.0f, 0, 0, 0));
                else
                    SD_TRY(sd_cuda_gemm(ctx, dbp, db->dtype, dcp, ap, dc->dtype, 1, N, K, M, 1, trans_a, alpha,
                                        1.0f, 0, 0, 0));
            }
    }
    return SD_OK;
}
