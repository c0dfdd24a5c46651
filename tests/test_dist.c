/* The data-parallel set-up that needs no GPU (distill/dist.h): ranks from the launcher's
 * environment (torchrun / SLURM / Open MPI names, defaults, refusals), when a communicator is
 * wanted, the refusal of a CPU context, and the NCCL id file (stale files of another launch
 * ignored).  The NCCL path itself runs on the GPU machine (tests/gpu/dist_gpu.sh). */
#include "common/error.h"
#include "distill/dist.h"
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cuda/nccl_cuda.h"

static const char *const g_vars[] = {"WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID",
                                     "SLURM_LOCALID", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                                     "OMPI_COMM_WORLD_LOCAL_RANK", "SSDISTILL_DIST", NULL};

static void clear_env(void) {
    for (int i = 0; g_vars[i]; i++) unsetenv(g_vars[i]);
}

static void test_defaults(void) {
    clear_env();
    sd_dist d;
    CHECK_OK(sd_dist_from_env(&d));
    CHECK(d.world == 1 && d.rank == 0 && d.local_rank == 0, "defaults: world %d rank %d local %d", d.world, d.rank,
          d.local_rank);
    CHECK(!sd_dist_wanted(&d), "one process without SSDISTILL_DIST wants no communicator");
    setenv("SSDISTILL_DIST", "1", 1);
    CHECK(sd_dist_wanted(&d), "SSDISTILL_DIST=1 asks for the one-rank NCCL path");
}

static void test_torchrun_and_slurm(void) {
    clear_env();
    setenv("WORLD_SIZE", "8", 1);
    setenv("RANK", "5", 1);
    setenv("LOCAL_RANK", "1", 1);
    sd_dist d;
    CHECK_OK(sd_dist_from_env(&d));
    CHECK(d.world == 8 && d.rank == 5 && d.local_rank == 1, "torchrun: %d %d %d", d.world, d.rank, d.local_rank);
    CHECK(sd_dist_wanted(&d), "8 ranks want a communicator");
    clear_env();
    setenv("SLURM_NTASKS", "4", 1);
    setenv("SLURM_PROCID", "3", 1);
    CHECK_OK(sd_dist_from_env(&d));
    CHECK(d.world == 4 && d.rank == 3 && d.local_rank == 3, "SLURM (no local id: the rank): %d %d %d", d.world,
          d.rank, d.local_rank);
    clear_env();
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    setenv("OMPI_COMM_WORLD_RANK", "1", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0", 1);
    CHECK_OK(sd_dist_from_env(&d));
    CHECK(d.world == 2 && d.rank == 1 && d.local_rank == 0, "Open MPI: %d %d %d", d.world, d.rank, d.local_rank);
}

static void test_refusals(void) {
    sd_dist d;
    clear_env();
    setenv("WORLD_SIZE", "two", 1);
    CHECK(sd_dist_from_env(&d) == SD_ERR_INPUT && strstr(sd_errmsg(), "WORLD_SIZE"), "a word: %s", sd_errmsg());
    clear_env();
    setenv("WORLD_SIZE", "2", 1);
    setenv("RANK", "2", 1);
    CHECK(sd_dist_from_env(&d) == SD_ERR_INPUT && strstr(sd_errmsg(), "RANK"), "rank past the world: %s", sd_errmsg());
    clear_env();
    setenv("WORLD_SIZE", "0", 1);
    CHECK(sd_dist_from_env(&d) == SD_ERR_INPUT, "world 0 refused");
    clear_env();
    setenv("WORLD_SIZE", "2", 1);
    CHECK_OK(sd_dist_from_env(&d));
    sd_ctx cpu;
    sd_ctx_init_cpu(&cpu, 1);
    CHECK(sd_dist_init(&d, &cpu, "/nonexistent/nccl.id") == SD_ERR_INPUT && strstr(sd_errmsg(), "cuda"),
          "a CPU context refused: %s", sd_errmsg());
    clear_env();
}

/* The id file: this launch's id is read back; another launch's (a stale file) is not taken,
 * the reader waits and times out; a file that is no id file is refused naming it. */
static void test_id_file(void) {
    char dir[] = "/tmp/sd_dist_XXXXXX", path[64];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/nccl.id", dir);
    unsigned char id[SD_NCCL_ID_BYTES], got[SD_NCCL_ID_BYTES];
    for (int i = 0; i < SD_NCCL_ID_BYTES; i++) id[i] = (unsigned char)(i * 37 + 11);
    unsetenv("TORCHELASTIC_RUN_ID");
    unsetenv("SLURM_JOB_ID");
    setenv("SSDISTILL_RUN_ID", "launch-a", 1);
    CHECK_OK(sd_dist_id_write(path, id));
    memset(got, 0, sizeof got);
    CHECK_OK(sd_dist_id_read(path, got, 1));
    CHECK(memcmp(got, id, sizeof id) == 0, "the id read back");
    setenv("SSDISTILL_RUN_ID", "launch-b", 1); /* a later launch finds the old file */
    time_t t0 = time(NULL);
    CHECK(sd_dist_id_read(path, got, 1) == SD_ERR_SYS && strstr(sd_errmsg(), "within 1 s"),
          "a stale id file is not taken: %s", sd_errmsg());
    CHECK(time(NULL) - t0 <= 3, "the wait is bounded");
    unsetenv("SSDISTILL_RUN_ID"); /* no launcher token: the file is trusted */
    memset(got, 0, sizeof got);
    CHECK_OK(sd_dist_id_read(path, got, 1));
    CHECK(memcmp(got, id, sizeof id) == 0, "the id read without a token");
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs("garbage", f);
        fclose(f);
    }
    CHECK(sd_dist_id_read(path, got, 1) == SD_ERR_INPUT && strstr(sd_errmsg(), path), "a foreign file refused: %s",
          sd_errmsg());
    unlink(path);
    rmdir(dir);
}

int main(void) {
    test_defaults();
    test_torchrun_and_slurm();
    test_refusals();
    test_id_file();
    return test_summary("test_dist");
}
