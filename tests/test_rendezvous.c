/* sd_rendezvous_tcp: ranks in forked processes meet over loopback and must all end up with
 * rank 0's random bytes (receivers start from a poison pattern); rank 0 may start late; bad
 * addresses, a missing rank 0, missing peers and foreign frames are refused, fast, without
 * leaking descriptors. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fork, kill, nanosleep under -std=c11 */
#endif
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "distill/rendezvous.h"
#include "test_util.h"

enum { N = 128, MAXW = 4 };
static const char *k_what = "SSDISTILL_NCCL_ADDR";

typedef struct {
    int rc, in_use; /* in_use: rank 0 lost its port to someone else (retry on another) */
    double secs;    /* how long the call took */
    unsigned char blob[N];
    char msg[256];
} result;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {}
}

static int open_fds(void) {
    int k = 0;
    for (int fd = 0; fd < 1024; fd++) k += fcntl(fd, F_GETFD) != -1;
    return k;
}

/* A port nobody listens on now: bind port 0 on the loopback of family, read it, close. */
static int free_port(int family) {
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = in6addr_loopback};
    struct sockaddr *sa = family == AF_INET ? (struct sockaddr *)&a4 : (struct sockaddr *)&a6;
    socklen_t len = family == AF_INET ? sizeof a4 : sizeof a6;
    int fd = socket(family, SOCK_STREAM, 0), port = -1;
    if (fd >= 0 && bind(fd, sa, len) == 0 && getsockname(fd, sa, &len) == 0)
        port = ntohs(family == AF_INET ? a4.sin_port : a6.sin6_port);
    if (fd >= 0) close(fd);
    return port;
}

/* A listener on 127.0.0.1 (a fake rank 0); its port in *port. */
static int fake_listener(int *port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, len) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* Forks one rank: it sleeps delay_ms, calls sd_rendezvous_tcp on its copy of blob and writes a
 * result to the pipe whose read end goes to *rfd. */
static pid_t spawn(int rank, int world, const char *addr, const unsigned char *blob, int delay_ms, int timeout_s,
                   int *rfd) {
    int p[2];
    if (pipe(p) != 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        result res = {0};
        memcpy(res.blob, blob, N);
        if (delay_ms) sleep_ms(delay_ms);
        double t0 = now_s();
        res.rc = sd_rendezvous_tcp(k_what, addr, rank, world, res.blob, N, timeout_s);
        res.secs = now_s() - t0;
        snprintf(res.msg, sizeof res.msg, "%s", res.rc ? sd_errmsg() : "");
        res.in_use = res.rc && strstr(res.msg, "Address already in use") != NULL;
        _exit(write(p[1], &res, sizeof res) == (ssize_t)sizeof res ? 0 : 1);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return -1;
    }
    *rfd = p[0];
    return pid;
}

/* Reads a rank's result and reaps it; 1 when the child reported (whatever its rc). */
static int collect(pid_t pid, int rfd, result *res) {
    size_t got = 0;
    while (got < sizeof *res) {
        ssize_t k = read(rfd, (char *)res + got, sizeof *res - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(rfd);
    int st = 0;
    waitpid(pid, &st, 0);
    return got == sizeof *res && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* world ranks meet at host:<a free port>, rank 0 starting delay0_ms late; every rank reports
 * into res.  Tries another port when rank 0's was taken between free_port and bind. */
static int run_world(const char *host, int family, int world, int delay0_ms, const unsigned char *blob,
                     const unsigned char *poison, result *res) {
    for (int attempt = 0; attempt < 5; attempt++) {
        char addr[64];
        snprintf(addr, sizeof addr, "%s:%d", host, free_port(family));
        pid_t pid[MAXW];
        int fd[MAXW];
        for (int r = 0; r < world; r++) {
            pid[r] = spawn(r, world, addr, r == 0 ? blob : poison, r == 0 ? delay0_ms : 0, 5, &fd[r]);
            if (pid[r] < 0) return 0;
        }
        int ok = collect(pid[0], fd[0], &res[0]);
        if (ok && res[0].in_use) {
            for (int r = 1; r < world; r++) kill(pid[r], SIGKILL);
        }
        for (int r = 1; r < world; r++) ok &= collect(pid[r], fd[r], &res[r]);
        if (!res[0].in_use) return ok;
    }
    return 0;
}

static void fill_random(unsigned char *b, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) b[i] = (unsigned char)(test_rng_u64(&seed) >> 56);
}

/* ---- the exchange ------------------------------------------------------------------------- */

static void check_world(const char *label, const char *host, int family, int world, int delay0_ms) {
    unsigned char blob[N], poison[N];
    fill_random(blob, N, (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20) ^ (uint64_t)world);
    memset(poison, 0xa5, N);
    CHECK(memcmp(blob, poison, N) != 0, "%s: the random blob equals the poison", label);
    result res[MAXW];
    memset(res, 0, sizeof res);
    double t0 = now_s();
    int ok = run_world(host, family, world, delay0_ms, blob, poison, res);
    double secs = now_s() - t0;
    CHECK(ok, "%s: a rank did not report", label);
    for (int r = 0; ok && r < world; r++) {
        CHECK(res[r].rc == SD_OK, "%s: rank %d returned %d: %s", label, r, res[r].rc, res[r].msg);
        CHECK(memcmp(res[r].blob, blob, N) == 0, "%s: rank %d holds other bytes than rank 0's", label, r);
    }
    CHECK(secs < 4.0, "%s: took %.2f s", label, secs);
    if (delay0_ms && ok) /* the peers really did wait for (retry until) the late rank 0 */
        for (int r = 1; r < world; r++)
            CHECK(res[r].secs > 0.8 * delay0_ms / 1000.0, "%s: rank %d returned after %.3f s, before rank 0 began",
                  label, r, res[r].secs);
}

static int have_ipv6_loopback(void) {
    return free_port(AF_INET6) > 0;
}

/* ---- refusals ----------------------------------------------------------------------------- */

static void check_malformed(void) {
    static const char *bad[] = {"nocolon", "host:", "host:99999", ":12", "host:12x", "host:0", "host:-1",
                                "[::1]", "[::1]:", "[::1]12", "[::1", "[]:12", "fe80::1:29500", ""};
    unsigned char blob[N] = {0};
    int fds = open_fds();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (int rank = 0; rank < 2; rank++) {
            sd_error_clear();
            double t0 = now_s();
            int rc = sd_rendezvous_tcp(k_what, bad[i], rank, 2, blob, N, 5);
            CHECK(rc == SD_ERR_INPUT, "'%s' (rank %d): returned %d: %s", bad[i], rank, rc, sd_errmsg());
            CHECK(strstr(sd_errmsg(), k_what) != NULL, "'%s': message lacks %s: %s", bad[i], k_what, sd_errmsg());
            char quoted[64];
            snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
            CHECK(strstr(sd_errmsg(), quoted) != NULL, "'%s': message does not name it: %s", bad[i], sd_errmsg());
            CHECK(now_s() - t0 < 0.5, "'%s': refusing took %.2f s", bad[i], now_s() - t0);
        }
    }
    /* Well-formed addresses pass the parse (world 1 goes no further). */
    static const char *good[] = {"localhost:29500", "10.0.0.1:1", "[::1]:65535", "[fe80::1%eth0]:29500", "a.b:080"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK_OK(sd_rendezvous_tcp(k_what, good[i], 0, 1, blob, N, 5));
    CHECK(sd_rendezvous_tcp(k_what, "h:1", 2, 2, blob, N, 5) == SD_ERR_INTERNAL, "rank == world accepted");
    CHECK(sd_rendezvous_tcp(k_what, "h:1", 0, 2, blob, N, 0) == SD_ERR_INTERNAL, "timeout 0 accepted");
    CHECK(open_fds() == fds, "descriptors leaked: %d open, %d before", open_fds(), fds);
}

/* A rank 1 with nobody at the address: SD_ERR_SYS after about timeout_s. */
static void check_no_rank0(void) {
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", free_port(AF_INET));
    unsigned char blob[N] = {0};
    int fds = open_fds();
    double t0 = now_s();
    int rc = sd_rendezvous_tcp(k_what, addr, 1, 3, blob, N, 1);
    double secs = now_s() - t0;
    CHECK(rc == SD_ERR_SYS, "no rank 0: returned %d: %s", rc, sd_errmsg());
    CHECK(secs > 0.9 && secs < 2.5, "no rank 0: gave up after %.2f s, expected about 1 s", secs);
    CHECK(strstr(sd_errmsg(), addr) && strstr(sd_errmsg(), k_what), "no rank 0: message lacks the address: %s",
          sd_errmsg());
    CHECK(strstr(sd_errmsg(), "Connection refused") != NULL, "no rank 0: message lacks the errno text: %s",
          sd_errmsg());
    CHECK(open_fds() == fds, "no rank 0: descriptors leaked: %d open, %d before", open_fds(), fds);
}

/* A rank 0 of world 3 that sees one peer only: that peer gets the blob, rank 0 gives up after
 * about timeout_s with SD_ERR_SYS; and a port taken by someone else fails at once. */
static void check_missing_peer(void) {
    int port = 0, lfd = fake_listener(&port);
    CHECK(lfd >= 0, "cannot listen on loopback");
    if (lfd < 0) return;
    close(lfd); /* a free port, known to the peer before rank 0 binds it */
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    unsigned char blob[N], poison[N];
    fill_random(blob, N, 77);
    memset(poison, 0x5a, N);
    int rfd, fds = open_fds();
    pid_t pid = spawn(1, 3, addr, poison, 0, 5, &rfd);
    double t0 = now_s();
    int rc = sd_rendezvous_tcp(k_what, addr, 0, 3, blob, N, 1);
    double secs = now_s() - t0;
    result res = {0};
    int ok = pid > 0 && collect(pid, rfd, &res);
    CHECK(rc == SD_ERR_SYS, "missing peer: rank 0 returned %d: %s", rc, sd_errmsg());
    CHECK(secs > 0.9 && secs < 2.5, "missing peer: rank 0 gave up after %.2f s, expected about 1 s", secs);
    CHECK(strstr(sd_errmsg(), "1 of 2 peers") && strstr(sd_errmsg(), addr), "missing peer: message: %s",
          sd_errmsg());
    CHECK(ok && res.rc == SD_OK && memcmp(res.blob, blob, N) == 0, "missing peer: the one peer got no blob: %s",
          res.msg);
    CHECK(open_fds() == fds, "missing peer: descriptors leaked: %d open, %d before", open_fds(), fds);

    /* Rank 0 on a port already listened on. */
    lfd = fake_listener(&port);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    fds = open_fds();
    rc = sd_rendezvous_tcp(k_what, addr, 0, 2, blob, N, 5);
    CHECK(rc == SD_ERR_SYS && strstr(sd_errmsg(), "bind") && strstr(sd_errmsg(), "Address already in use"),
          "busy port: returned %d: %s", rc, sd_errmsg());
    CHECK(open_fds() == fds, "busy port: descriptors leaked: %d open, %d before", open_fds(), fds);
    close(lfd);
}

/* A fake rank 0 sends `len` bytes of frame to a real rank 1; returns the rank's result. */
static result fake_rank0(const unsigned char *frame, size_t len) {
    result res = {.rc = -1};
    int port = 0, lfd = fake_listener(&port);
    if (lfd < 0) return res;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    unsigned char poison[N];
    memset(poison, 0x5a, N);
    int rfd;
    pid_t pid = spawn(1, 2, addr, poison, 0, 3, &rfd);
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (pid > 0 && poll(&p, 1, 5000) == 1) {
        int fd = accept(lfd, NULL, NULL);
        if (fd >= 0) {
            if (write(fd, frame, len) != (ssize_t)len) fprintf(stderr, "fake rank 0: short write\n");
            close(fd);
        }
    }
    close(lfd);
    if (pid > 0 && !collect(pid, rfd, &res)) res.rc = -1;
    return res;
}

static void check_foreign_frames(void) {
    unsigned char frame[8 + N];
    memcpy(frame, "SDRV", 4);
    frame[4] = 0, frame[5] = 0, frame[6] = 0, frame[7] = N; /* big-endian 128 */
    fill_random(frame + 8, N, 99);

    /* The control: a hand-made frame in the documented format is taken. */
    result res = fake_rank0(frame, sizeof frame);
    CHECK(res.rc == SD_OK && memcmp(res.blob, frame + 8, N) == 0, "a well-formed frame: rc %d: %s", res.rc, res.msg);

    memcpy(frame, "SDRW", 4);
    res = fake_rank0(frame, sizeof frame);
    CHECK(res.rc == SD_ERR_SYS && strstr(res.msg, "magic") && strstr(res.msg, "127.0.0.1:"),
          "a wrong magic: rc %d: %s", res.rc, res.msg);

    memcpy(frame, "SDRV", 4);
    frame[7] = 64; /* and yet 128 bytes follow: only the length check can refuse it */
    res = fake_rank0(frame, sizeof frame);
    CHECK(res.rc == SD_ERR_SYS && strstr(res.msg, "64"), "a wrong length: rc %d: %s", res.rc, res.msg);

    frame[6] = 1, frame[7] = N; /* 384: little- and big-endian readings differ */
    res = fake_rank0(frame, sizeof frame);
    CHECK(res.rc == SD_ERR_SYS && strstr(res.msg, "384"), "length 384: rc %d: %s", res.rc, res.msg);

    frame[6] = 0;
    res = fake_rank0(frame, 8 + 10);
    CHECK(res.rc == SD_ERR_SYS && strstr(res.msg, "closed after 10 of 128"), "a cut frame: rc %d: %s", res.rc,
          res.msg);
}

int main(void) {
    signal(SIGPIPE, SIG_DFL); /* the library must not need SIGPIPE ignored */
    double t0 = now_s();
    check_world("3 ranks", "127.0.0.1", AF_INET, 3, 0);
    check_world("rank 0 300 ms late", "127.0.0.1", AF_INET, 3, 300);
    check_world("by name", "localhost", AF_INET, 2, 0);
    if (have_ipv6_loopback()) check_world("IPv6", "[::1]", AF_INET6, 2, 0);
    else printf("no IPv6 loopback: skipping [::1]\n");
    check_malformed();
    check_no_rank0();
    check_missing_peer();
    check_foreign_frames();
    printf("%.2f s\n", now_s() - t0);
    return test_summary("test_rendezvous");
}
