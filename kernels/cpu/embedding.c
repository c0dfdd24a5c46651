#include "kernels/cpu/cpu_ops.h"

#include <string.h>

void sd_cpu_embedding(float *out, const int32_t *ids, const float *table, int64_t n, int64_t d) {
#pragma omp parallel for schedule(static) if (n * d >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * d, table + (int64_t)ids[i] * d, (size_t)d * sizeof(float));
}

/* dtable[ids[i], c] += dy[i, c].  Deterministic without atomics: threads split the columns,
 * and each column adds its rows in i order, so a repeated id sums in one fixed order. */
void sd_cpu_embedding_backward(float *dtable, const float *dy, const int32_t *ids, int64_t n,
                               int64_t d) {
    enum { COLS = 64 };
    int64_t nblk = (d + COLS - 1) / COLS;
#pragma omp parallel for schedule(static) if (n * d >= SD_CPU_PAR_MIN)
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t lo = blk * COLS, hi = lo + COLS < d ? lo + COLS : d;
        for (int64_t i = 0; i < n; i++) {
            float *dst = dtable + (int64_t)ids[i] * d;
            const float *src = dy + i * d;
            for (int64_t c = lo; c < hi; c++) dst[c] += src[c];
        }
    }
}
