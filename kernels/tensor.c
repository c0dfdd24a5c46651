#include "kernels/tensor.h"
#include "common/error.h"
#ifdef SD_HAVE_CUDA
#include "kernels/cuda/cuda_ctx.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} g_dtypes[SD_DTYPE_COUNT] = {
    [SD_F32] = {"F32", 4}, [SD_BF16] = {"BF16", 2}, [SD_F16] = {"F16", 2}, [SD_I32] = {"I32", 4},
    [SD_U16] = {"U16", 2}, [SD_U32] = {"U32", 4},   [SD_I64] = {"I64", 8},
};

size_t sd_dtype_size(sd_dtype dt) { return (unsigned)dt < SD_DTYPE_COUNT ? g_dtypes[dt].size : 0; }
const char *sd_dtype_name(sd_dtype dt) { return (unsigned)dt < SD_DTYPE_COUNT ? g_dtypes[dt].name : "?"; }

int sd_dtype_from_name(const char *name, sd_dtype *dt) {
    for (int i = 0; i < SD_DTYPE_COUNT; i++)
        if (strcmp(name, g_dtypes[i].name) == 0) {
            *dt = (sd_dtype)i;
            return SD_OK;
        }
    return sd_fail(SD_ERR_INPUT, "unknown dtype '%s'", name);
}

int64_t sd_numel(const sd_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t sd_nbytes(const sd_tensor *t) { return (size_t)sd_numel(t) * sd_dtype_size(t->dtype); }

int64_t sd_rows(const sd_tensor *t) {
    return t->ndim ? sd_numel(t) / (t->shape[t->ndim - 1] ? t->shape[t->ndim - 1] : 1) : 1;
}

const char *sd_shape_str(const sd_tensor *t, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

int sd_same_shape(const sd_tensor *a, const sd_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

int sd_tensor_alloc(sd_tensor *t, sd_dtype dt, int ndim, const int64_t *shape) {
    memset(t, 0, sizeof *t);
    if (ndim < 1 || ndim > SD_MAX_DIMS || (unsigned)dt >= SD_DTYPE_COUNT)
        return sd_fail(SD_ERR_INTERNAL, "sd_tensor_alloc: bad ndim %d or dtype %d", ndim, (int)dt);
    t->dtype = dt;
    t->device = SD_DEV_CPU;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return sd_fail(SD_ERR_INTERNAL, "sd_tensor_alloc: negative dim %lld", (long long)shape[i]);
        t->shape[i] = shape[i];
    }
    t->data = sd_calloc((size_t)sd_numel(t), sd_dtype_size(dt), "tensor");
    if (!t->data) return SD_ERR_SYS;
    t->owns = 1;
    return SD_OK;
}

int sd_tensor_f32(sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return sd_tensor_alloc(t, SD_F32, ndim, shape);
}

sd_tensor sd_tensor_view(sd_dtype dt, void *data, int ndim, const int64_t *shape) {
    sd_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.device = SD_DEV_CPU;
    t.ndim = ndim;
    for (int i = 0; i < ndim && i < SD_MAX_DIMS; i++) t.shape[i] = shape[i];
    t.data = data;
    return t;
}

int sd_tensor_reshape(sd_tensor *t, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    if (ndim < 1 || ndim > SD_MAX_DIMS || n != sd_numel(t))
        return sd_fail(SD_ERR_INTERNAL, "reshape: %lld elements into %d dims of %lld", (long long)sd_numel(t), ndim, (long long)n);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    return SD_OK;
}

void sd_tensor_free(sd_tensor *t) {
    if (t->owns) {
#ifdef SD_HAVE_CUDA
        if (t->device == SD_DEV_CUDA) sd_cuda_tensor_free_data(t->data);
        else
#endif
            free(t->data);
    }
    t->data = NULL;
    t->owns = 0;
}

float sd_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t sd_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* nearest even */
    return (uint16_t)(u >> 16);
}

float sd_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t sd_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);      /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);     /* overflow to inf */
    if (a < 0x38800000u) {                                       /* subnormal or zero */
        float af;
        memcpy(&af, &a, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(af * 16777216.0f)); /* 2^24 */
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
    return (uint16_t)(sign | (r >> 13));
}

int sd_tensor_to_f32(sd_tensor *dst, const sd_tensor *src) {
    SD_TRY(sd_tensor_alloc(dst, SD_F32, src->ndim, src->shape));
    int64_t n = sd_numel(src);
    float *o = dst->data;
    switch (src->dtype) {
    case SD_F32: memcpy(o, src->data, (size_t)n * 4); break;
    case SD_BF16: for (int64_t i = 0; i < n; i++) o[i] = sd_bf16_to_f32(((const uint16_t *)src->data)[i]); break;
    case SD_F16: for (int64_t i = 0; i < n; i++) o[i] = sd_f16_to_f32(((const uint16_t *)src->data)[i]); break;
    default:
        sd_tensor_free(dst);
        return sd_fail(SD_ERR_INPUT, "cannot convert dtype %s to F32", sd_dtype_name(src->dtype));
    }
    return SD_OK;
}
