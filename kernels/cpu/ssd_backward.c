/* SSD chunked backward on the CPU. */
#include "kernels/cpu/ssd_cpu.h"

#include "common/error.h"

int sd_cpu_ssd_chunked_backward(const sd_ssd_grads *g, const float *dy, const sd_ssd_in *in,
                                const sd_ssd_dims *d, int64_t chunk, const float *init_state,
                                const float *dfinal_state) {
    return sd_fail(SD_ERR_INTERNAL, "sd_ssd_chunked_backward: not implemented");
}
