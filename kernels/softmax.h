#ifndef SD_SOFTMAX_H
#define SD_SOFTMAX_H

#include "kernels/context.h"

/* Over the last dim, max-subtracted, fp32. out may alias x. */
int sd_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x);
int sd_log_softmax(sd_ctx *ctx, sd_tensor *out, const sd_tensor *x);

#endif
