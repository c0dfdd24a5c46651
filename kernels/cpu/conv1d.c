/* Causal depthwise conv1d over time on the CPU (mamba_ssm causal_conv1d):
 *   pre[b, t, c] = bias[c] + sum_{j<W} w[c, j] x[b, t - (W-1) + j, c]  (x = 0 for t < 0),
 *   out = silu(pre) or pre. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>
#include <string.h>

static inline float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

/* pre for one (b, t, c); xc points at x[b, 0, c], channels C apart. */
static inline float conv_pre(const float *xc, const float *wc, float bias, int64_t t, int64_t C,
                             int64_t W) {
    float s = bias;
    for (int64_t j = 0; j < W; j++) {
        int64_t ts = t - (W - 1) + j;
        if (ts >= 0) s += wc[j] * xc[ts * C];
    }
    return s;
}

void sd_cpu_conv1d(float *out, const float *x, const float *w, const float *bias, int64_t B,
                   int64_t T, int64_t C, int64_t W, int silu) {
#pragma omp parallel for schedule(static) if (B * T * C * W >= SD_CPU_PAR_MIN)
    for (int64_t bt = 0; bt < B * T; bt++) {
        int64_t b = bt / T, t = bt % T;
        for (int64_t c = 0; c < C; c++) {
            float p = conv_pre(x + b * T * C + c, w + c * W, bias ? bias[c] : 0.0f, t, C, W);
            out[bt * C + c] = silu ? p * sigmoidf(p) : p;
        }
    }
}

/* One token: state [B, C, W-1] holds the previous W-1 inputs, oldest first; the same sum
 * as the full form (taps in j order), then the window shifts by one. */
void sd_cpu_conv1d_step(float *out, const float *x, float *state, const float *w,
                        const float *bias, int64_t B, int64_t C, int64_t W, int silu) {
#pragma omp parallel for schedule(static) if (B * C * W >= SD_CPU_PAR_MIN)
    for (int64_t bc = 0; bc < B * C; bc++) {
        int64_t c = bc % C;
        float *st = state + bc * (W - 1);
        const float *wc = w + c * W;
        float p = bias ? bias[c] : 0.0f;
        for (int64_t j = 0; j < W - 1; j++) p += wc[j] * st[j];
        p += wc[W - 1] * x[bc];
        if (W > 1) {
            memmove(st, st + 1, (size_t)(W - 2) * sizeof(float));
            st[W - 2] = x[bc];
        }
        out[bc] = silu ? p * sigmoidf(p) : p;
    }
}

/* dp = dy * (silu ? silu'(pre) : 1); dx[.., t - (W-1) + j, c] += w[c, j] dp;
 * dw[c, j] += dp x[.., t - (W-1) + j, c]; dbias[c] += dp.  One task per channel owns every
 * gradient of that channel and sums over (b, t) in order: deterministic, no atomics. */
void sd_cpu_conv1d_backward(float *dx, float *dw, float *dbias, const float *dy, const float *x,
                            const float *w, const float *bias, int64_t B, int64_t T, int64_t C,
                            int64_t W, int silu) {
#pragma omp parallel for schedule(static) if (B * T * C * W >= SD_CPU_PAR_MIN)
    for (int64_t c = 0; c < C; c++) {
        const float *wc = w + c * W;
        double gw[4] = {0}, gb = 0.0; /* W <= 4, checked by the public entry */
        for (int64_t b = 0; b < B; b++) {
            const float *xc = x + b * T * C + c;
            for (int64_t t = 0; t < T; t++) {
                float dp = dy[(b * T + t) * C + c];
                if (silu) {
                    float p = conv_pre(xc, wc, bias ? bias[c] : 0.0f, t, C, W);
                    float s = sigmoidf(p);
                    dp *= s * (1.0f + p * (1.0f - s));
                }
                gb += dp;
                for (int64_t j = 0; j < W; j++) {
                    int64_t ts = t - (W - 1) + j;
                    if (ts < 0) continue;
                    gw[j] += (double)dp * xc[ts * C];
                    if (dx) dx[(b * T + ts) * C + c] += wc[j] * dp;
                }
            }
        }
        if (dw)
            for (int64_t j = 0; j < W; j++) dw[c * W + j] += (float)gw[j];
        if (dbias) dbias[c] += (float)gb;
    }
}
