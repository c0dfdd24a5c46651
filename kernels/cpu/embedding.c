#include "kernels/cpu/cpu_ops.h"

#include <string.h>

void sd_cpu_embedding(float *out, const int32_t *ids, const float *table, int64_t n, int64_t d) {
#pragma omp parallel for schedule(static) if (n * d >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * d, table + (int64_t)ids[i] * d, (size_t)d * sizeof(float));
}
