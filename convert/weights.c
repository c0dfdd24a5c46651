#include "convert/weights.h"
#include "common/error.h"

#include <stdlib.h>
#include <string.h>

void sd_weights_init(sd_weights *w) { memset(w, 0, sizeof *w); }

int sd_weights_add(sd_weights *w, const char *name, sd_tensor t) {
    if (sd_weights_find(w, name)) {
        sd_tensor_free(&t);
        return sd_fail(SD_ERR_INPUT, "tensor '%s' appears twice", name);
    }
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        sd_named_tensor *items = sd_realloc(w->items, (size_t)cap * sizeof *items, "weight table");
        if (!items) {
            sd_tensor_free(&t);
            return SD_ERR_SYS;
        }
        w->items = items;
        w->cap = cap;
    }
    char *copy = sd_strdup(name, "tensor name");
    if (!copy) {
        sd_tensor_free(&t);
        return SD_ERR_SYS;
    }
    w->items[w->n].name = copy;
    w->items[w->n].t = t;
    w->n++;
    return SD_OK;
}

sd_tensor *sd_weights_find(const sd_weights *w, const char *name) {
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->items[i].name, name) == 0) return &w->items[i].t;
    return NULL;
}

int sd_weights_get(const sd_weights *w, const char *src, const char *name, int ndim,
                   const int64_t *shape, sd_tensor **out) {
    sd_tensor *t = sd_weights_find(w, name);
    *out = NULL;
    if (!t) return sd_fail(SD_ERR_INPUT, "%s: missing tensor '%s'", src, name);
    /* host models read F32; a model moved to the GPU (distill/device_weights.h) reads BF16 too */
    if (t->dtype != SD_F32 && !(t->dtype == SD_BF16 && t->device != SD_DEV_CPU))
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': expected F32 after loading, got %s", src, name,
                       sd_dtype_name(t->dtype));
    sd_tensor want = sd_tensor_view(SD_F32, NULL, ndim, shape);
    if (!sd_same_shape(t, &want)) {
        char a[96], b[96];
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': expected shape %s from the config, got %s", src, name,
                       sd_shape_str(&want, a, sizeof a), sd_shape_str(t, b, sizeof b));
    }
    *out = t;
    return SD_OK;
}

void sd_weights_free(sd_weights *w) {
    for (int i = 0; i < w->n; i++) {
        free(w->items[i].name);
        sd_tensor_free(&w->items[i].t);
    }
    free(w->items);
    memset(w, 0, sizeof *w);
}
