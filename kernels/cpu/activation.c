/* Elementwise activations, fp32 with the formulas of torch's CPU kernels. out may alias
 * an input: each element is read before it is written. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

/* torch silu: x / (1 + exp(-x)); exp overflow gives x / inf = -0, the right limit. */
static inline float silu(float x) { return x / (1.0f + expf(-x)); }

void sd_cpu_silu(float *out, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = silu(x[i]);
}

/* torch gelu(approximate='tanh'): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static inline float gelu_tanh(float x) {
    const float k_beta = 0.7978845608028654f, k_kappa = 0.044715f;
    float x3 = x * x * x;
    return 0.5f * x * (1.0f + tanhf(k_beta * (x + k_kappa * x3)));
}

void sd_cpu_gelu_tanh(float *out, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh(x[i]);
}

/* HF LlamaMLP: act_fn(gate_proj(x)) * up_proj(x). */
void sd_cpu_swiglu(float *out, const float *gate, const float *up, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = silu(gate[i]) * up[i];
}

void sd_cpu_add(float *out, const float *a, const float *b, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
