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

/* ---- softplus and the backwards ----------------------------------------------------- */

/* torch softplus (beta 1, threshold 20): x > 20 ? x : log1p(exp(x)). */
void sd_cpu_softplus(float *out, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = x[i] > 20.0f ? x[i] : log1pf(expf(x[i]));
}

/* d softplus / dx = sigmoid(x) = z / (z + 1), z = exp(x); 1 above the threshold (torch). */
void sd_cpu_softplus_backward(float *dx, const float *dy, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float z = expf(x[i]);
        dx[i] += x[i] > 20.0f ? dy[i] : dy[i] * (z / (z + 1.0f));
    }
}

/* silu'(x) = s (1 + x (1 - s)), s = sigmoid(x). */
static inline float silu_grad(float x) {
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

void sd_cpu_silu_backward(float *dx, const float *dy, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * silu_grad(x[i]);
}

/* y = 0.5 x (1 + t), t = tanh(u), u = b (x + k x^3):
 * y' = 0.5 (1 + t) + 0.5 x (1 - t^2) b (1 + 3 k x^2)   (torch GeluBackward, tanh). */
void sd_cpu_gelu_tanh_backward(float *dx, const float *dy, const float *x, int64_t n) {
    const float k_beta = 0.7978845608028654f, k_kappa = 0.044715f;
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], t = tanhf(k_beta * (v + k_kappa * v * v * v));
        float g = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * k_beta * (1.0f + 3.0f * k_kappa * v * v);
        dx[i] += dy[i] * g;
    }
}

/* out = silu(gate) up: dgate = dy up silu'(gate), dup = dy silu(gate). */
void sd_cpu_swiglu_backward(float *dgate, float *dup, const float *dy, const float *gate,
                            const float *up, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= SD_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        if (dgate) dgate[i] += dy[i] * up[i] * silu_grad(gate[i]);
        if (dup) dup[i] += dy[i] * silu(gate[i]);
    }
}
