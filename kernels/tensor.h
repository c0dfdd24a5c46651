/* The tensor: dtype, device, shape (up to 4-D, row-major, contiguous) and a data pointer.
 * DESIGN.md section 3.  Ops take tensors and a context (kernels/context.h). */
#ifndef SD_TENSOR_H
#define SD_TENSOR_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>
#include <stdint.h>

typedef enum { SD_F32 = 0, SD_BF16, SD_F16, SD_I32, SD_U16, SD_U32, SD_I64, SD_DTYPE_COUNT } sd_dtype;
typedef enum { SD_DEV_CPU = 0, SD_DEV_CUDA = 1 } sd_device;

#define SD_MAX_DIMS 4

typedef struct {
    sd_dtype dtype;
    sd_device device;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    void *data;
    int owns; /* 1: sd_tensor_free releases data */
} sd_tensor;

size_t sd_dtype_size(sd_dtype dt);
const char *sd_dtype_name(sd_dtype dt);      /* "F32", "BF16", ... (safetensors spelling) */
int sd_dtype_from_name(const char *name, sd_dtype *dt); /* SD_ERR_INPUT if unknown */

int64_t sd_numel(const sd_tensor *t);
size_t sd_nbytes(const sd_tensor *t);
/* Product of all dims but the last: the number of rows an op over the last dim sees. */
int64_t sd_rows(const sd_tensor *t);
/* "[2, 128, 64]" into buf. */
const char *sd_shape_str(const sd_tensor *t, char *buf, size_t n);
int sd_same_shape(const sd_tensor *a, const sd_tensor *b);

/* Allocates a zeroed CPU tensor. ndim 1..4. */
int sd_tensor_alloc(sd_tensor *t, sd_dtype dt, int ndim, const int64_t *shape);
/* Shorthands for F32 CPU tensors. */
int sd_tensor_f32(sd_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* A non-owning view of data with the given shape. */
sd_tensor sd_tensor_view(sd_dtype dt, void *data, int ndim, const int64_t *shape);
/* Same data, another shape with the same element count (SD_ERR_INTERNAL otherwise). */
int sd_tensor_reshape(sd_tensor *t, int ndim, const int64_t *shape);
void sd_tensor_free(sd_tensor *t);

/* Converts src (F32, BF16 or F16, any device-CPU) into a new owning F32 tensor. */
int sd_tensor_to_f32(sd_tensor *dst, const sd_tensor *src);

float sd_bf16_to_f32(uint16_t h);
uint16_t sd_f32_to_bf16(float f); /* round to nearest even; NaN stays NaN */
float sd_f16_to_f32(uint16_t h);
uint16_t sd_f32_to_f16(float f);  /* round to nearest even */

#ifdef __cplusplus
}
#endif

#endif
