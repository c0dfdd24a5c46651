/* Model weights on the context's backend (distill/device_weights.h). */
#include "distill/device_weights.h"
#include "common/error.h"
#include "kernels/tensor_ops.h"

#include <string.h>

int sd_weight_is_matrix(const sd_tensor *t) { return t->ndim == 2 && (t->dtype == SD_F32 || t->dtype == SD_BF16); }

static int add_copy(sd_ctx *ctx, sd_weights *set, const char *name, const sd_tensor *src, sd_dtype dt) {
    sd_tensor t;
    SD_TRY(src->device == SD_DEV_CPU ? sd_tensor_from_host(ctx, &t, src, dt)
                                     : sd_tensor_new(ctx, &t, dt, src->ndim, src->shape));
    int rc = src->device == SD_DEV_CPU ? SD_OK : sd_copy(ctx, &t, src);
    if (rc != SD_OK) {
        sd_tensor_free(&t);
        return rc;
    }
    return sd_weights_add(set, name, t); /* frees t itself on failure */
}

/* Floating tensors on the device; integer ones (none in our models) are refused. */
static int check_float(const char *name, const sd_tensor *t) {
    if (t->dtype != SD_F32 && t->dtype != SD_BF16)
        return sd_fail(SD_ERR_INPUT, "tensor '%s' is %s: only floating weights can move to the GPU", name,
                       sd_dtype_name(t->dtype));
    return SD_OK;
}

int sd_weights_to_ctx(sd_ctx *ctx, const sd_weights *host, sd_weights *dev) {
    if (ctx->backend == SD_DEV_CPU) return sd_fail(SD_ERR_INTERNAL, "sd_weights_to_ctx: a CPU context uses the host set");
    sd_weights_init(dev);
    for (int i = 0; i < host->n; i++) {
        const sd_named_tensor *it = &host->items[i];
        int rc = check_float(it->name, &it->t);
        if (rc == SD_OK) rc = add_copy(ctx, dev, it->name, &it->t, sd_weight_is_matrix(&it->t) ? SD_BF16 : SD_F32);
        if (rc != SD_OK) {
            sd_weights_free(dev);
            return rc;
        }
    }
    return SD_OK;
}

int sd_weights_move_to_ctx(sd_ctx *ctx, sd_weights *w) {
    if (ctx->backend == SD_DEV_CPU) return SD_OK;
    sd_weights dev;
    SD_TRY(sd_weights_to_ctx(ctx, w, &dev));
    sd_weights_free(w);
    *w = dev;
    return SD_OK;
}

static int mixed_body(sd_ctx *ctx, const sd_weights *host, sd_weights *master, sd_weights *compute) {
    for (int i = 0; i < host->n; i++) {
        const sd_named_tensor *it = &host->items[i];
        SD_TRY(check_float(it->name, &it->t));
        SD_TRY(add_copy(ctx, master, it->name, &it->t, SD_F32));
        const sd_tensor *m = &master->items[master->n - 1].t;
        if (sd_weight_is_matrix(m)) {
            SD_TRY(add_copy(ctx, compute, it->name, m, SD_BF16));
        } else {
            sd_tensor view = *m;
            view.owns = 0;
            SD_TRY(sd_weights_add(compute, it->name, view));
        }
    }
    return SD_OK;
}

int sd_weights_mixed(sd_ctx *ctx, const sd_weights *host, sd_weights *master, sd_weights *compute) {
    sd_weights_init(master);
    sd_weights_init(compute);
    int rc = mixed_body(ctx, host, master, compute);
    if (rc != SD_OK) {
        sd_weights_free(compute);
        sd_weights_free(master);
    }
    return rc;
}

int sd_weights_refresh(sd_ctx *ctx, sd_weights *compute, const sd_weights *master) {
    if (compute->n != master->n) return sd_fail(SD_ERR_INTERNAL, "sd_weights_refresh: sets of %d and %d", compute->n, master->n);
    for (int i = 0; i < compute->n; i++) {
        sd_tensor *c = &compute->items[i].t;
        const sd_tensor *m = &master->items[i].t;
        if (strcmp(compute->items[i].name, master->items[i].name) != 0)
            return sd_fail(SD_ERR_INTERNAL, "sd_weights_refresh: '%s' vs '%s'", compute->items[i].name,
                           master->items[i].name);
        if (c->data != m->data) SD_TRY(sd_copy(ctx, c, m));
    }
    return SD_OK;
}

int sd_weights_to_host(sd_ctx *ctx, const sd_weights *src, sd_weights *host) {
    sd_weights_init(host);
    for (int i = 0; i < src->n; i++) {
        sd_tensor t;
        int rc = sd_tensor_alloc(&t, SD_F32, src->items[i].t.ndim, src->items[i].t.shape);
        if (rc == SD_OK) rc = sd_tensor_into_host(ctx, &t, &src->items[i].t);
        if (rc == SD_OK) rc = sd_weights_add(host, src->items[i].name, t); /* frees t on failure */
        else sd_tensor_free(&t);
        if (rc != SD_OK) {
            sd_weights_free(host);
            return rc;
        }
    }
    return SD_OK;
}
