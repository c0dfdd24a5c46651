#ifndef SD_EMBEDDING_H
#define SD_EMBEDDING_H

#include "kernels/context.h"

/* out[..., d] = table[ids[...], :]; ids is I32. An id outside [0, V) is SD_ERR_INPUT
 * naming the id and its position. */
int sd_embedding(sd_ctx *ctx, sd_tensor *out, const sd_tensor *ids, const sd_tensor *table);

#endif
