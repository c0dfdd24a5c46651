/* Tensors on the context's backend (kernels/tensor_ops.h). */
#include "kernels/tensor_ops.h"
#include "common/error.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ctx.h"

#include <stdlib.h>
#include <string.h>

sd_dtype sd_act_dtype(const sd_ctx *ctx) { return ctx->backend == SD_DEV_CUDA ? SD_BF16 : SD_F32; }

int sd_tensor_new_on(sd_device dev, sd_tensor *t, sd_dtype dt, int ndim, const int64_t *shape) {
#ifdef SD_HAVE_CUDA
    if (dev == SD_DEV_CUDA) return sd_tensor_alloc_cuda(t, dt, ndim, shape);
#endif
    if (dev != SD_DEV_CPU) return sd_op_no_backend("sd_tensor_new", dev);
    return sd_tensor_alloc(t, dt, ndim, shape);
}

int sd_tensor_new(sd_ctx *ctx, sd_tensor *t, sd_dtype dt, int ndim, const int64_t *shape) {
    return sd_tensor_new_on(ctx->backend, t, dt, ndim, shape);
}

int sd_tensor_act(sd_ctx *ctx, sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return sd_tensor_new(ctx, t, sd_act_dtype(ctx), ndim, shape);
}

int sd_tensor_new_f32(sd_ctx *ctx, sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return sd_tensor_new(ctx, t, SD_F32, ndim, shape);
}

sd_tensor sd_tensor_sub(const sd_tensor *base, int64_t offset, int ndim, const int64_t *shape) {
    sd_tensor v = sd_tensor_view(base->dtype, (char *)base->data + offset * (int64_t)sd_dtype_size(base->dtype), ndim,
                                 shape);
    v.device = base->device;
    return v;
}

static int check_on(const char *op, const sd_ctx *ctx, const sd_tensor *t, const char *name) {
    if (t->device != ctx->backend)
        return sd_fail(SD_ERR_INTERNAL, "%s: %s is on device %d, the context on %d", op, name, (int)t->device,
                       (int)ctx->backend);
    return SD_OK;
}

static int copy_cpu(sd_tensor *dst, const sd_tensor *src) {
    int64_t n = sd_numel(src);
    if (dst->dtype == src->dtype) {
        if (n) memmove(dst->data, src->data, sd_nbytes(src));
    } else if (dst->dtype == SD_BF16 && src->dtype == SD_F32) {
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst->data)[i] = sd_f32_to_bf16(((const float *)src->data)[i]);
    } else if (dst->dtype == SD_F32 && src->dtype == SD_BF16) {
        for (int64_t i = 0; i < n; i++) ((float *)dst->data)[i] = sd_bf16_to_f32(((const uint16_t *)src->data)[i]);
    } else {
        return sd_fail(SD_ERR_INTERNAL, "sd_copy: no conversion from %s to %s", sd_dtype_name(src->dtype),
                       sd_dtype_name(dst->dtype));
    }
    return SD_OK;
}

int sd_copy(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src) {
    static const char *op = "sd_copy";
    SD_TRY(check_on(op, ctx, dst, "dst"));
    SD_TRY(check_on(op, ctx, src, "src"));
    if (sd_numel(dst) != sd_numel(src)) {
        char a[64], b[64];
        return sd_fail(SD_ERR_INTERNAL, "%s: dst %s vs src %s: element counts differ", op, sd_shape_str(dst, a, sizeof a),
                       sd_shape_str(src, b, sizeof b));
    }
    SD_CUDA_DISPATCH(ctx, sd_cuda_copy(ctx, dst, src));
    return copy_cpu(dst, src);
}

int sd_zero(sd_ctx *ctx, sd_tensor *t) {
    if (!t->data) return SD_OK; /* never allocated (a part the model does not use) */
    SD_TRY(check_on("sd_zero", ctx, t, "t"));
    SD_CUDA_DISPATCH(ctx, sd_cuda_zero(ctx, t));
    if (t->data) memset(t->data, 0, sd_nbytes(t));
    return SD_OK;
}

int sd_tensor_from_host(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src, sd_dtype dt) {
    if (src->device != SD_DEV_CPU) return sd_fail(SD_ERR_INTERNAL, "sd_tensor_from_host: src is not a host tensor");
#ifdef SD_HAVE_CUDA
    if (ctx->backend == SD_DEV_CUDA) return sd_tensor_to_cuda(ctx, dst, src, dt);
#endif
    SD_TRY(sd_tensor_new(ctx, dst, dt, src->ndim, src->shape));
    int rc = copy_cpu(dst, src);
    if (rc != SD_OK) sd_tensor_free(dst);
    return rc;
}

int sd_tensor_into_host(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src) {
    if (dst->device != SD_DEV_CPU) return sd_fail(SD_ERR_INTERNAL, "sd_tensor_into_host: dst is not a host tensor");
    SD_TRY(check_on("sd_tensor_into_host", ctx, src, "src"));
#ifdef SD_HAVE_CUDA
    if (ctx->backend == SD_DEV_CUDA) return sd_tensor_download(ctx, dst, src);
#endif
    if (sd_numel(dst) != sd_numel(src)) return sd_fail(SD_ERR_INTERNAL, "sd_tensor_into_host: element counts differ");
    return copy_cpu(dst, src);
}

int sd_tensor_on_ctx(sd_ctx *ctx, const sd_tensor *src, sd_tensor *tmp, const sd_tensor **use) {
    memset(tmp, 0, sizeof *tmp);
    if (src->device == ctx->backend) {
        *use = src;
        return SD_OK;
    }
    SD_TRY(sd_tensor_from_host(ctx, tmp, src, src->dtype));
    *use = tmp;
    return SD_OK;
}

int sd_copy_from_host(sd_ctx *ctx, sd_tensor *dst, const sd_tensor *src) {
    if (src->device != SD_DEV_CPU) return sd_fail(SD_ERR_INTERNAL, "sd_copy_from_host: src is not a host tensor");
    SD_TRY(check_on("sd_copy_from_host", ctx, dst, "dst"));
#ifdef SD_HAVE_CUDA
    if (ctx->backend == SD_DEV_CUDA) return sd_tensor_upload(ctx, dst, src);
#endif
    if (sd_numel(dst) != sd_numel(src)) return sd_fail(SD_ERR_INTERNAL, "sd_copy_from_host: element counts differ");
    return copy_cpu(dst, src);
}

static double sum_f32(const float *p, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += p[i];
    return s;
}

int sd_sum_host(sd_ctx *ctx, const sd_tensor *t, double *sum) {
    if (t->dtype != SD_F32) return sd_fail(SD_ERR_INTERNAL, "sd_sum_host: expected F32, got %s", sd_dtype_name(t->dtype));
    SD_TRY(check_on("sd_sum_host", ctx, t, "t"));
    if (t->device == SD_DEV_CPU) {
        *sum = sum_f32(t->data, sd_numel(t));
        return SD_OK;
    }
    sd_tensor h;
    SD_TRY(sd_tensor_alloc(&h, SD_F32, t->ndim, t->shape));
    int rc = sd_tensor_into_host(ctx, &h, t);
    if (rc == SD_OK) *sum = sum_f32(h.data, sd_numel(&h));
    sd_tensor_free(&h);
    return rc;
}
