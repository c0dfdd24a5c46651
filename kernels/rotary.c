/* Public rotary entries: configuration and shape checks, inv_freq (backend-independent),
 * then dispatch on the backend. */
#include "kernels/rotary.h"

#include <math.h>
#include <stdlib.h>

#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"

static int check_config(const char *op, const sd_rope_config *cfg) {
    if (!cfg) return sd_fail(SD_ERR_INTERNAL, "%s: NULL config", op);
    if (cfg->rotary_dim <= 0 || cfg->rotary_dim % 2 || cfg->rotary_dim > cfg->head_dim)
        return sd_fail(SD_ERR_INTERNAL, "%s: rotary_dim %d must be even and in (0, head_dim %d]",
                       op, cfg->rotary_dim, cfg->head_dim);
    if (!(cfg->theta > 0)) return sd_fail(SD_ERR_INTERNAL, "%s: theta %g must be > 0", op, cfg->theta);
    if (cfg->scaling == SD_ROPE_SCALING_LLAMA3 &&
        (!(cfg->factor > 0) || !(cfg->low_freq_factor > 0) ||
         cfg->high_freq_factor == cfg->low_freq_factor ||
         cfg->original_max_position_embeddings <= 0))
        return sd_fail(SD_ERR_INTERNAL,
                       "%s: llama3 scaling needs factor > 0, low_freq_factor > 0, "
                       "high_freq_factor != low_freq_factor, original_max_position_embeddings > 0 "
                       "(got %g, %g, %g, %d)", op, cfg->factor, cfg->low_freq_factor,
                       cfg->high_freq_factor, cfg->original_max_position_embeddings);
    if (cfg->scaling != SD_ROPE_SCALING_NONE && cfg->scaling != SD_ROPE_SCALING_LLAMA3)
        return sd_fail(SD_ERR_INTERNAL, "%s: unknown scaling type %d", op, (int)cfg->scaling);
    return SD_OK;
}

/* HF _compute_llama3_parameters, every tensor op in fp32 (python scalars become fp32):
 * wavelen = 2 pi / f; wavelen > old/low: f / factor; wavelen < old/high: f;
 * else smooth = (old / wavelen - low) / (high - low), (1 - smooth) f / factor + smooth f. */
static float llama3_scale(const sd_rope_config *cfg, float f) {
    float factor = (float)cfg->factor, low = (float)cfg->low_freq_factor;
    float old = (float)cfg->original_max_position_embeddings;
    float low_freq_wavelen = (float)(cfg->original_max_position_embeddings / cfg->low_freq_factor);
    float high_freq_wavelen = (float)(cfg->original_max_position_embeddings / cfg->high_freq_factor);
    float wavelen = (float)(2.0 * M_PI) / f;
    if (wavelen > low_freq_wavelen) return f / factor;
    if (wavelen < high_freq_wavelen) return f;
    float smooth = (old / wavelen - low) / (float)(cfg->high_freq_factor - cfg->low_freq_factor);
    return (1.0f - smooth) * f / factor + smooth * f;
}

int sd_rope_inv_freq(const sd_rope_config *cfg, float *inv_freq) {
    SD_TRY(check_config("sd_rope_inv_freq", cfg));
    /* HF: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all fp32 */
    for (int i = 0; i < cfg->rotary_dim / 2; i++) {
        float f = 1.0f / powf((float)cfg->theta, (float)(2 * i) / (float)cfg->rotary_dim);
        inv_freq[i] = cfg->scaling == SD_ROPE_SCALING_LLAMA3 ? llama3_scale(cfg, f) : f;
    }
    return SD_OK;
}

/* inverse 1: the backward (rotation by minus the angle). */
static int rotary(sd_ctx *ctx, sd_tensor *x, const sd_rope_config *cfg, int64_t pos0,
                  int inverse) {
    const char *op = inverse ? "sd_rotary_backward" : "sd_rotary";
    if (!ctx) return sd_fail(SD_ERR_INTERNAL, "%s: NULL context", op);
    SD_TRY(sd_op_check_act(ctx->backend, op, "x", x));
    SD_TRY(check_config(op, cfg));
    char sx[64];
    if (x->ndim != 4 || x->shape[3] != cfg->head_dim)
        return sd_fail(SD_ERR_INTERNAL, "%s: x %s: expected [B, T, H, head_dim %d]", op,
                       sd_shape_str(x, sx, sizeof sx), cfg->head_dim);
    if (pos0 < 0) return sd_fail(SD_ERR_INTERNAL, "%s: negative pos0 %lld", op, (long long)pos0);
    if (!SD_BACKEND_BUILT(ctx->backend)) return sd_op_no_backend(op, ctx->backend);
    float *inv_freq = sd_malloc((size_t)(cfg->rotary_dim / 2) * sizeof(float), "rotary inv_freq");
    if (!inv_freq) return SD_ERR_SYS;
    int rc = sd_rope_inv_freq(cfg, inv_freq);
#ifdef SD_HAVE_CUDA
    if (rc == SD_OK && ctx->backend == SD_DEV_CUDA) {
        rc = !ctx->cuda ? sd_cuda_uninit()
                        : sd_cuda_rotary(ctx, x, x->shape[0], x->shape[1], x->shape[2],
                                         cfg->head_dim, cfg->rotary_dim / 2, cfg->interleaved,
                                         inv_freq, pos0, inverse ? -1.0f : 1.0f);
        free(inv_freq);
        return rc;
    }
#endif
    if (rc == SD_OK)
        rc = (inverse ? sd_cpu_rotary_backward : sd_cpu_rotary)(
            x->data, x->shape[0], x->shape[1], x->shape[2], cfg->head_dim, cfg->rotary_dim,
            cfg->interleaved, inv_freq, pos0);
    free(inv_freq);
    return rc;
}

int sd_rotary(sd_ctx *ctx, sd_tensor *x, const sd_rope_config *cfg, int64_t pos0) {
    return rotary(ctx, x, cfg, pos0, 0);
}

int sd_rotary_backward(sd_ctx *ctx, sd_tensor *dx, const sd_rope_config *cfg, int64_t pos0) {
    return rotary(ctx, dx, cfg, pos0, 1);
}
