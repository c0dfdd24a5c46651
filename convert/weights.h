/* A named set of tensors: what every loader produces and every model consumes.
 * Names are HF-style ("model.layers.0.self_attn.q_proj.weight"). */
#ifndef SD_WEIGHTS_H
#define SD_WEIGHTS_H

#include "kernels/tensor.h"

typedef struct {
    char *name;
    sd_tensor t;
} sd_named_tensor;

typedef struct {
    int n, cap;
    sd_named_tensor *items;
} sd_weights;

void sd_weights_init(sd_weights *w);
/* Takes ownership of t (its data is freed with the set). Duplicate names: SD_ERR_INPUT. */
int sd_weights_add(sd_weights *w, const char *name, sd_tensor t);
/* NULL when absent. */
sd_tensor *sd_weights_find(const sd_weights *w, const char *name);
/* The tensor, checked: present (else SD_ERR_INPUT "SRC: missing tensor 'NAME'"), F32 (or BF16
 * on a GPU, distill/device_weights.h), and of
 * the given shape (ndim dims; else "SRC: tensor 'NAME': expected shape [..], got [..]").
 * src names the file for the message. */
int sd_weights_get(const sd_weights *w, const char *src, const char *name, int ndim,
                   const int64_t *shape, sd_tensor **out);
void sd_weights_free(sd_weights *w);

#endif
