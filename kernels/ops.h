/* All ops of the compute layer; model code includes this one header. */
#ifndef SD_OPS_H
#define SD_OPS_H

#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/context.h"
#include "kernels/conv1d.h"
#include "kernels/embedding.h"
#include "kernels/gated_norm.h"
#include "kernels/loss.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"
#include "kernels/rotary.h"
#include "kernels/softmax.h"
#include "kernels/ssm_discretize.h"
#include "kernels/tensor.h"

#endif
