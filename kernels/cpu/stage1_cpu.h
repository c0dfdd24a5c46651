/* The CPU reference of the stage-1 loss (kernels/stage1.h), behind the public entry
 * kernels/stage1.c, which checks the arguments first.  Tensor-level: it runs sd_attention
 * (probabilities) and sd_ssd_quadratic (M) on the CPU context, so it takes the tensors. */
#ifndef SD_STAGE1_CPU_H
#define SD_STAGE1_CPU_H

#include "kernels/context.h"

/* All F32 CPU tensors, as sd_stage1_loss.  SD_ERR_SYS if the T x T matrices cannot be
 * allocated. */
int sd_cpu_stage1_loss(sd_ctx *ctx, float *loss, sd_tensor *per_head, const sd_tensor *q,
                       const sd_tensor *k, float scale, const sd_tensor *dt, const sd_tensor *loga,
                       const sd_tensor *Bm, const sd_tensor *Cm, const sd_tensor *D, sd_tensor *ddt,
                       sd_tensor *dloga, sd_tensor *dB, sd_tensor *dC, sd_tensor *dD);

#endif
