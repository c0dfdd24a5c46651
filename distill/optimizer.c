/* AdamW over a named parameter set: grouping by name, global-norm clipping, the step. */
#include "distill/optimizer.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/optim.h"
#include "kernels/tensor_ops.h"

sd_adamw_config sd_adamw_config_default(void) {
    sd_adamw_config c = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    return c;
}

/* ---- which parameters decay --------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* name is exactly leaf, or ends with ".leaf". */
static int has_leaf(const char *name, const char *leaf) {
    size_t n = strlen(name), k = strlen(leaf);
    if (n < k || strcmp(name + n - k, leaf) != 0) return 0;
    return n == k || name[n - k - 1] == '.';
}

/* "norm" anywhere, any case: input_layernorm, final_layernorm, mixer.norm, LayerNorm. */
static int mentions_norm(const char *name) {
    for (const char *s = name; *s; s++)
        if (tolower((unsigned char)s[0]) == 'n' && tolower((unsigned char)s[1]) == 'o' &&
            tolower((unsigned char)s[2]) == 'r' && tolower((unsigned char)s[3]) == 'm')
            return 1;
    return 0;
}

/* A path component starting with "ln" (GPT-2 style ln_1, ln_f). */
static int in_ln_module(const char *name) {
    for (const char *s = name; *s; s++)
        if ((s == name || s[-1] == '.') && s[0] == 'l' && s[1] == 'n') return 1;
    return 0;
}

int sd_param_decays(const char *name, const sd_tensor *t) {
    static const char *no_decay_leaves[] = {"D", "z_bias", "A_log", "dt_bias"};
    for (size_t i = 0; i < sizeof no_decay_leaves / sizeof *no_decay_leaves; i++)
        if (has_leaf(name, no_decay_leaves[i])) return 0;
    /* Biases shift, they do not scale: decaying them only biases the model (as GPT-2 / nanoGPT
     * and the Mamba recipes do it). */
    if (ends_with(name, "bias")) return 0;
    if (mentions_norm(name)) return 0;
    if (t && t->ndim == 1 && in_ln_module(name)) return 0;
    return 1;
}

/* ---- init / free -------------------------------------------------------------------------- */

static int check_config(const sd_adamw_config *c) {
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) || !(c->beta2 >= 0.0f && c->beta2 < 1.0f))
        return sd_fail(SD_ERR_INTERNAL, "AdamW: betas (%g, %g), expected each in [0, 1)",
                       (double)c->beta1, (double)c->beta2);
    if (!(c->eps > 0.0f) || !isfinite(c->eps))
        return sd_fail(SD_ERR_INTERNAL, "AdamW: eps %g, expected > 0", (double)c->eps);
    if (!(c->weight_decay >= 0.0f) || !isfinite(c->weight_decay))
        return sd_fail(SD_ERR_INTERNAL, "AdamW: weight decay %g, expected >= 0",
                       (double)c->weight_decay);
    return SD_OK;
}

static int add_zeros_like(sd_weights *set, const char *name, const sd_tensor *p) {
    sd_tensor z; /* zeroed, on the parameter's device */
    SD_TRY(sd_tensor_new_on(p->device, &z, SD_F32, p->ndim, p->shape));
    return sd_weights_add(set, name, z);
}

static int init_moments(sd_optimizer *opt, const sd_weights *params) {
    for (int i = 0; i < params->n; i++) {
        const char *name = params->items[i].name;
        const sd_tensor *p = &params->items[i].t;
        if (p->dtype != SD_F32)
            return sd_fail(SD_ERR_INTERNAL, "AdamW: parameter '%s' is %s, expected F32 master weights",
                           name, sd_dtype_name(p->dtype));
        opt->decays[i] = (char)sd_param_decays(name, p);
        SD_TRY(add_zeros_like(&opt->m, name, p));
        SD_TRY(add_zeros_like(&opt->v, name, p));
    }
    return SD_OK;
}

int sd_optimizer_init(sd_optimizer *opt, const sd_weights *params, const sd_adamw_config *cfg) {
    memset(opt, 0, sizeof *opt);
    sd_weights_init(&opt->m);
    sd_weights_init(&opt->v);
    opt->cfg = cfg ? *cfg : sd_adamw_config_default();
    SD_TRY(check_config(&opt->cfg));
    opt->decays = sd_calloc(params->n ? (size_t)params->n : 1, 1, "AdamW decay flags");
    if (!opt->decays) return SD_ERR_SYS;
    opt->n = params->n;
    int rc = init_moments(opt, params);
    if (rc != SD_OK) sd_optimizer_free(opt);
    return rc;
}

void sd_optimizer_free(sd_optimizer *opt) {
    sd_weights_free(&opt->m);
    sd_weights_free(&opt->v);
    free(opt->decays);
    opt->decays = NULL;
    opt->n = 0;
}

/* ---- the step ----------------------------------------------------------------------------- */

/* The gradient of parameter i, or NULL if it has none.  The gradient set is usually built in
 * parameter order, so the same index is tried before a search by name. */
static sd_tensor *grad_of(const sd_weights *params, sd_weights *grads, int i) {
    const char *name = params->items[i].name;
    if (i < grads->n && strcmp(grads->items[i].name, name) == 0) return &grads->items[i].t;
    return sd_weights_find(grads, name);
}

static int check_sets(const sd_optimizer *opt, const sd_weights *params, sd_weights *grads) {
    if (params->n != opt->n)
        return sd_fail(SD_ERR_INTERNAL, "AdamW: %d parameters, the optimizer was made for %d",
                       params->n, opt->n);
    for (int i = 0; i < opt->n; i++)
        if (strcmp(params->items[i].name, opt->m.items[i].name) != 0)
            return sd_fail(SD_ERR_INTERNAL, "AdamW: parameter %d is '%s', the optimizer has '%s'",
                           i, params->items[i].name, opt->m.items[i].name);
    for (int j = 0; j < grads->n; j++) {
        const char *name = grads->items[j].name;
        int same_slot = j < params->n && strcmp(params->items[j].name, name) == 0;
        const sd_tensor *p = same_slot ? &params->items[j].t : sd_weights_find(params, name);
        const sd_tensor *g = &grads->items[j].t;
        char a[64], b[64];
        if (!p) return sd_fail(SD_ERR_INTERNAL, "AdamW: gradient '%s' has no parameter", name);
        if (g->dtype != SD_F32 || !sd_same_shape(g, p))
            return sd_fail(SD_ERR_INTERNAL, "AdamW: gradient '%s' is %s %s, the parameter %s %s",
                           name, sd_dtype_name(g->dtype), sd_shape_str(g, a, sizeof a),
                           sd_dtype_name(p->dtype), sd_shape_str(p, b, sizeof b));
    }
    return SD_OK;
}

int sd_optimizer_grad_sum_squares(sd_optimizer *opt, sd_ctx *ctx, const sd_weights *params, sd_weights *grads,
                                   double *total, const char **bad) {
    SD_TRY(check_sets(opt, params, grads));
    *total = 0.0;
    *bad = NULL;
    for (int i = 0; i < params->n; i++) {
        sd_tensor *g = grad_of(params, grads, i);
        if (!g) continue;
        double ss;
        SD_TRY(sd_sum_squares(ctx, g, &ss));
        if (!isfinite(ss) && !*bad) *bad = params->items[i].name;
        *total += ss;
    }
    return SD_OK;
}

float sd_clip_coef(double norm, float clip_norm) {
    if (clip_norm > 0.0f && norm > (double)clip_norm) return (float)((double)clip_norm / (norm + 1e-6));
    return 1.0f;
}

int sd_optimizer_apply(sd_optimizer *opt, sd_ctx *ctx, sd_weights *params, sd_weights *grads, float lr,
                       float coef) {
    if (!(lr >= 0.0f) || !isfinite(lr))
        return sd_fail(SD_ERR_INTERNAL, "AdamW: learning rate %g, expected finite >= 0", (double)lr);
    SD_TRY(check_sets(opt, params, grads));
    for (int i = 0; coef != 1.0f && i < params->n; i++) {
        sd_tensor *g = grad_of(params, grads, i);
        if (g) SD_TRY(sd_scale(ctx, g, coef));
    }
    int64_t t = opt->step + 1;
    const sd_adamw_config *c = &opt->cfg;
    for (int i = 0; i < params->n; i++) {
        sd_tensor *g = grad_of(params, grads, i);
        if (!g) continue;
        float wd = opt->decays[i] ? c->weight_decay : 0.0f;
        SD_TRY(sd_adamw_step(ctx, &params->items[i].t, g, &opt->m.items[i].t,
                             &opt->v.items[i].t, lr, c->beta1, c->beta2, c->eps, wd, t));
    }
    opt->step = t;
    return SD_OK;
}

int sd_optimizer_step(sd_optimizer *opt, sd_ctx *ctx, sd_weights *params, sd_weights *grads,
                      float lr, float clip_norm, double *grad_norm) {
    double total;
    const char *bad;
    SD_TRY(sd_optimizer_grad_sum_squares(opt, ctx, params, grads, &total, &bad));
    if (bad)
        return sd_fail(SD_ERR_CHECK, "AdamW: gradient of '%s' has NaN or Inf values; "
                       "no parameter was updated", bad);
    double norm = sqrt(total);
    if (grad_norm) *grad_norm = norm;
    /* Nothing above has written anything: a refused step leaves the state as it was. */
    return sd_optimizer_apply(opt, ctx, params, grads, lr, sd_clip_coef(norm, clip_norm));
}
