/* NCCL collectives on the context's stream (kernels/cuda/nccl_cuda.h).  NVLink multicast
 * (NVLS) is switched off unless the user set NCCL_NVLS_ENABLE: the GPU machines here do not
 * support it (issue 6). */
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/cuda/nccl_cuda.h"

#include <stdlib.h>
#include <string.h>

#ifdef SD_HAVE_NCCL
#include <nccl.h>

static int nccl_fail(ncclResult_t r, const char *call) {
    return sd_fail(SD_ERR_SYS, "%s: nccl error %d (%s)", call, (int)r, ncclGetErrorString(r));
}
#define SD_NCCL_TRY(call)                                          \
    do {                                                           \
        ncclResult_t sd_nr_ = (call);                              \
        if (sd_nr_ != ncclSuccess) return nccl_fail(sd_nr_, #call); \
    } while (0)

int sd_nccl_available(void) { return 1; }

int sd_nccl_unique_id(unsigned char id[SD_NCCL_ID_BYTES]) {
    ncclUniqueId u;
    SD_NCCL_TRY(ncclGetUniqueId(&u));
    memcpy(id, u.internal, SD_NCCL_ID_BYTES);
    return SD_OK;
}

int sd_nccl_init(void **comm, const unsigned char id[SD_NCCL_ID_BYTES], int rank, int world) {
    setenv("NCCL_NVLS_ENABLE", "0", 0); /* keep a user's explicit choice */
    ncclUniqueId u;
    memcpy(u.internal, id, SD_NCCL_ID_BYTES);
    ncclComm_t c;
    SD_NCCL_TRY(ncclCommInitRank(&c, world, u, rank));
    *comm = c;
    return SD_OK;
}

int sd_nccl_allreduce_sum(void *comm, sd_ctx *ctx, float *buf, size_t n) {
    if (n == 0) return SD_OK;
    SD_NCCL_TRY(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, (ncclComm_t)comm, sd_cuda_stream(ctx)));
    return SD_OK;
}

int sd_nccl_group_begin(void) {
    SD_NCCL_TRY(ncclGroupStart());
    return SD_OK;
}

int sd_nccl_group_end(void) {
    SD_NCCL_TRY(ncclGroupEnd());
    return SD_OK;
}

void sd_nccl_free(void *comm) {
    if (comm) ncclCommDestroy((ncclComm_t)comm);
}

#else /* built without NCCL: every entry says so */

static int no_nccl(void) { return sd_fail(SD_ERR_INPUT, "this build has no NCCL (several GPUs need it)"); }
int sd_nccl_available(void) { return 0; }
int sd_nccl_unique_id(unsigned char id[SD_NCCL_ID_BYTES]) { (void)id; return no_nccl(); }
int sd_nccl_init(void **comm, const unsigned char id[SD_NCCL_ID_BYTES], int rank, int world) {
    (void)comm, (void)id, (void)rank, (void)world;
    return no_nccl();
}
int sd_nccl_allreduce_sum(void *comm, sd_ctx *ctx, float *buf, size_t n) {
    (void)comm, (void)ctx, (void)buf, (void)n;
    return no_nccl();
}
int sd_nccl_group_begin(void) { return no_nccl(); }
int sd_nccl_group_end(void) { return no_nccl(); }
void sd_nccl_free(void *comm) { (void)comm; }
#endif
