/* The Mamba-2 discretisation on the CPU (kernels/ssm_discretize.h has the math): the same
 * fp32 expressions, in the same order, as the student's former host loops (softplus as
 * sd_cpu_softplus, its derivative as sd_cpu_softplus_backward), so results are
 * bit-identical to them.  Elementwise work is parallel over rows; the da_log sums run per
 * head over the rows in order, in double. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

/* torch softplus (beta 1, threshold 20), as sd_cpu_softplus. */
static inline float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* g * softplus'(x): sigmoid(x) = z / (z + 1), z = exp(x); 1 above the threshold.  The same
 * expression as sd_cpu_softplus_backward. */
static inline float softplus_grad(float g, float x) {
    float z = expf(x);
    return x > 20.0f ? g : g * (z / (z + 1.0f));
}

void sd_cpu_ssm_discretize(float *dt, float *loga, const float *dt_raw, const float *a_log,
                           int64_t rows, int64_t H, float dt_min, float dt_max) {
    int64_t n = rows * H;
    if (!a_log) { /* discrete: loga = -softplus(dt_raw) */
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) loga[i] = -softplus(dt_raw[i]);
        return;
    }
    /* standard: dt = clamp(softplus(dt_raw), dt_min, dt_max), loga = -exp(a_log[h]) dt */
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < H; h++) {
            int64_t i = r * H + h;
            float v = softplus(dt_raw[i]);
            if (v < dt_min) v = dt_min;
            if (v > dt_max) v = dt_max;
            dt[i] = v;
            loga[i] = -expf(a_log[h]) * v;
        }
}

void sd_cpu_ssm_discretize_backward(float *ddt_raw, float *da_log, const float *dloga,
                                    const float *ddt, const float *dt_raw, const float *loga,
                                    const float *a_log, int64_t rows, int64_t H, float dt_min,
                                    float dt_max) {
    int64_t n = rows * H;
    if (!a_log) { /* discrete: d loga / d dt_raw = -softplus'(dt_raw) */
        if (!ddt_raw) return;
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) ddt_raw[i] += softplus_grad(-dloga[i], dt_raw[i]);
        return;
    }
    /* standard: loga = A dt, A = -exp(a_log[h]): d/d dt = A (through the clamp only where it
     * did not bite); d/d a_log = A dt = loga. */
    if (ddt_raw) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t h = 0; h < H; h++) {
                int64_t i = r * H + h;
                float A = -expf(a_log[h]), sp = softplus(dt_raw[i]);
                int clamped = sp < dt_min || sp > dt_max;
                float g = clamped ? 0.0f : (ddt ? ddt[i] : 0.0f) + dloga[i] * A;
                ddt_raw[i] += softplus_grad(g, dt_raw[i]);
            }
    }
    if (da_log) {
        /* per head, the rows in order: independent of the thread count */
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
        for (int64_t h = 0; h < H; h++) {
            double acc = 0;
            for (int64_t r = 0; r < rows; r++) acc += (double)dloga[r * H + h] * loga[r * H + h];
            da_log[h] += (float)acc;
        }
    }
}
