/* The CUDA plumbing: a round trip through device memory, and errors that name the call.
 * Exits 77 (skipped) where there is no GPU. */
#include "kernels/cuda/cuda_common.h"

#include <stdio.h>
#include <string.h>

int main(void) {
    if (sd_cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    float host[1000], back[1000];
    for (int i = 0; i < 1000; i++) host[i] = (float)i * 0.5f - 7.0f;
    void *dev = NULL;
    if (sd_cuda_alloc(&dev, sizeof host, "test buffer") != SD_OK || sd_cuda_upload(dev, host, sizeof host) != SD_OK ||
        sd_cuda_download(back, dev, sizeof back) != SD_OK) {
        fprintf(stderr, "FAIL: %s\n", sd_errmsg());
        return 1;
    }
    sd_cuda_free(dev);
    if (memcmp(host, back, sizeof host) != 0) {
        fprintf(stderr, "FAIL: round trip changed the data\n");
        return 1;
    }
    /* An impossible allocation must fail with a message naming what it was for. */
    void *huge = NULL;
    if (sd_cuda_alloc(&huge, (size_t)1 << 50, "impossible buffer") == SD_OK || !strstr(sd_errmsg(), "impossible buffer")) {
        fprintf(stderr, "FAIL: a 1 PiB allocation did not fail clearly (%s)\n", sd_errmsg());
        return 1;
    }
    printf("cuda common: ok\n");
    return 0;
}
