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

/* The communicator and the stream its overlapped collectives run on; `ready` carries the
 * ordering between that stream and the context's. */
typedef struct {
    ncclComm_t comm;
    cudaStream_t side;
    cudaEvent_t ready;
} nccl_comm;

static ncclComm_t comm_of(void *c) { return ((nccl_comm *)c)->comm; }

int sd_nccl_init(void **comm, const unsigned char id[SD_NCCL_ID_BYTES], int rank, int world) {
    setenv("NCCL_NVLS_ENABLE", "0", 0); /* keep a user's explicit choice */
    ncclUniqueId u;
    memcpy(u.internal, id, SD_NCCL_ID_BYTES);
    nccl_comm *c = (nccl_comm *)sd_calloc(1, sizeof *c, "NCCL communicator");
    if (!c) return SD_ERR_SYS;
    ncclResult_t r = ncclCommInitRank(&c->comm, world, u, rank);
    if (r != ncclSuccess) {
        free(c);
        return nccl_fail(r, "ncclCommInitRank");
    }
    *comm = c; /* sd_nccl_free releases what follows if it fails */
    SD_CUDA_TRY(cudaStreamCreateWithFlags(&c->side, cudaStreamNonBlocking));
    SD_CUDA_TRY(cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming));
    return SD_OK;
}

static cudaStream_t stream_for(void *comm, sd_ctx *ctx, int side) {
    return side ? ((nccl_comm *)comm)->side : sd_cuda_stream(ctx);
}

int sd_nccl_allreduce_sum(void *comm, sd_ctx *ctx, float *buf, size_t n) {
    if (n == 0) return SD_OK;
    SD_NCCL_TRY(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, comm_of(comm), sd_cuda_stream(ctx)));
    return SD_OK;
}

int sd_nccl_allreduce_sum_host_f64(void *comm, sd_ctx *ctx, double *v, int n) {
    if (n <= 0) return SD_OK;
    size_t bytes = (size_t)n * sizeof(double);
    cudaStream_t st = sd_cuda_stream(ctx);
    double *d;
    SD_TRY(sd_cuda_alloc((void **)&d, bytes, "NCCL sum"));
    int rc = SD_OK;
    cudaError_t e = cudaMemcpyAsync(d, v, bytes, cudaMemcpyHostToDevice, st);
    if (e != cudaSuccess) rc = sd_cuda_fail(e, "cudaMemcpyAsync", __FILE__, __LINE__);
    ncclResult_t r = rc == SD_OK ? ncclAllReduce(d, d, (size_t)n, ncclFloat64, ncclSum, comm_of(comm), st) : ncclSuccess;
    if (r != ncclSuccess) rc = nccl_fail(r, "ncclAllReduce");
    if (rc == SD_OK && (e = cudaMemcpyAsync(v, d, bytes, cudaMemcpyDeviceToHost, st)) != cudaSuccess)
        rc = sd_cuda_fail(e, "cudaMemcpyAsync", __FILE__, __LINE__);
    if (rc == SD_OK && (e = cudaStreamSynchronize(st)) != cudaSuccess)
        rc = sd_cuda_fail(e, "cudaStreamSynchronize", __FILE__, __LINE__);
    sd_cuda_free(d);
    return rc;
}

int sd_nccl_reduce_scatter_mean(void *comm, sd_ctx *ctx, float *buf, size_t shard, int rank, int side) {
    if (shard == 0) return SD_OK;
    SD_NCCL_TRY(ncclReduceScatter(buf, buf + (size_t)rank * shard, shard, ncclFloat32, ncclAvg, comm_of(comm),
                                  stream_for(comm, ctx, side)));
    return SD_OK;
}

int sd_nccl_all_gather(void *comm, sd_ctx *ctx, float *buf, size_t shard, int rank, int side) {
    if (shard == 0) return SD_OK;
    SD_NCCL_TRY(ncclAllGather(buf + (size_t)rank * shard, buf, shard, ncclFloat32, comm_of(comm),
                              stream_for(comm, ctx, side)));
    return SD_OK;
}

int sd_nccl_gather_all(void *comm, sd_ctx *ctx, const float *send, float *recv, size_t shard) {
    if (shard == 0) return SD_OK;
    SD_NCCL_TRY(ncclAllGather(send, recv, shard, ncclFloat32, comm_of(comm), sd_cuda_stream(ctx)));
    return SD_OK;
}

int sd_nccl_broadcast(void *comm, sd_ctx *ctx, float *buf, size_t n, int root) {
    if (n == 0) return SD_OK;
    SD_NCCL_TRY(ncclBroadcast(buf, buf, n, ncclFloat32, root, comm_of(comm), sd_cuda_stream(ctx)));
    return SD_OK;
}

int sd_nccl_side_begin(void *comm, sd_ctx *ctx) {
    nccl_comm *c = (nccl_comm *)comm;
    SD_CUDA_TRY(cudaEventRecord(c->ready, sd_cuda_stream(ctx)));
    SD_CUDA_TRY(cudaStreamWaitEvent(c->side, c->ready, 0));
    return SD_OK;
}

int sd_nccl_side_join(void *comm, sd_ctx *ctx) {
    nccl_comm *c = (nccl_comm *)comm;
    SD_CUDA_TRY(cudaEventRecord(c->ready, c->side));
    SD_CUDA_TRY(cudaStreamWaitEvent(sd_cuda_stream(ctx), c->ready, 0));
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
    nccl_comm *c = (nccl_comm *)comm;
    if (!c) return;
    if (c->side) cudaStreamSynchronize(c->side);
    ncclCommDestroy(c->comm);
    if (c->ready) cudaEventDestroy(c->ready);
    if (c->side) cudaStreamDestroy(c->side);
    free(c);
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
int sd_nccl_reduce_scatter_mean(void *comm, sd_ctx *ctx, float *buf, size_t shard, int rank, int side) {
    (void)comm, (void)ctx, (void)buf, (void)shard, (void)rank, (void)side;
    return no_nccl();
}
int sd_nccl_all_gather(void *comm, sd_ctx *ctx, float *buf, size_t shard, int rank, int side) {
    (void)comm, (void)ctx, (void)buf, (void)shard, (void)rank, (void)side;
    return no_nccl();
}
int sd_nccl_allreduce_sum_host_f64(void *comm, sd_ctx *ctx, double *v, int n) {
    (void)comm, (void)ctx, (void)v, (void)n;
    return no_nccl();
}
int sd_nccl_gather_all(void *comm, sd_ctx *ctx, const float *send, float *recv, size_t shard) {
    (void)comm, (void)ctx, (void)send, (void)recv, (void)shard;
    return no_nccl();
}
int sd_nccl_broadcast(void *comm, sd_ctx *ctx, float *buf, size_t n, int root) {
    (void)comm, (void)ctx, (void)buf, (void)n, (void)root;
    return no_nccl();
}
int sd_nccl_side_begin(void *comm, sd_ctx *ctx) { (void)comm, (void)ctx; return no_nccl(); }
int sd_nccl_side_join(void *comm, sd_ctx *ctx) { (void)comm, (void)ctx; return no_nccl(); }
int sd_nccl_group_begin(void) { return no_nccl(); }
int sd_nccl_group_end(void) { return no_nccl(); }
void sd_nccl_free(void *comm) { (void)comm; }
#endif
