/* TCP rendezvous: rank 0 serves a blob to world-1 peers (see rendezvous.h).
 *
 * Every socket is non-blocking and every wait is a poll() against one deadline, so that no
 * step (a connect to a silent host, a peer that never reads) can outlast timeout_s. */
#ifndef _GNU_SOURCE /* CMake defines it for the core; a build without it still needs: */
#define _GNU_SOURCE /* accept4, SOCK_CLOEXEC, SOCK_NONBLOCK, MSG_NOSIGNAL */
#endif
#include "distill/rendezvous.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"

enum { k_retry_ms = 100, k_header = 8 };

typedef struct {
    const char *what, *addr; /* for messages */
    char host[256];
    char port[16];
    int port_num;
    int timeout_s;
    int64_t deadline_ms; /* CLOCK_MONOTONIC */
} rdv;

static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int remaining_ms(const rdv *r) {
    int64_t left = r->deadline_ms - now_ms();
    return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

static int sys_fail(const rdv *r, const char *op, int err) {
    if (err == ETIMEDOUT)
        return sd_fail(SD_ERR_SYS, "%s=%s: %s: nothing within %d s (%s)", r->what, r->addr, op, r->timeout_s,
                       strerror(err));
    return sd_fail(SD_ERR_SYS, "%s=%s: %s: %s", r->what, r->addr, op, strerror(err));
}

/* ---- the address -------------------------------------------------------------------------- */

static int bad_addr(const rdv *r, const char *why) {
    return sd_fail(SD_ERR_INPUT, "%s='%s': %s (expected host:port, such as 10.0.0.1:29500 or [fe80::1]:29500)",
                   r->what, r->addr, why);
}

static int parse_port(rdv *r, const char *p) {
    int v = 0;
    if (!*p) return bad_addr(r, "no port after ':'");
    for (const char *c = p; *c; c++) {
        if (*c < '0' || *c > '9') return bad_addr(r, "the port is not a number");
        v = v * 10 + (*c - '0');
        if (v > 65535) return bad_addr(r, "the port is above 65535");
    }
    /* Port 0 would make rank 0 listen on a port the peers cannot know. */
    if (v == 0) return bad_addr(r, "port 0 cannot be agreed on");
    r->port_num = v;
    snprintf(r->port, sizeof r->port, "%d", v);
    return SD_OK;
}

static int parse_addr(rdv *r) {
    const char *a = r->addr, *host = a, *colon;
    if (a[0] == '[') {
        const char *close = strchr(a, ']');
        if (!close || close[1] != ':') return bad_addr(r, "'[host]' must be followed by ':port'");
        host = a + 1;
        colon = close + 1;
    } else {
        colon = strrchr(a, ':');
        if (!colon) return bad_addr(r, "no ':port'");
        /* "fe80::1:29500" could split two ways: make the writer say which. */
        if (memchr(a, ':', (size_t)(colon - a))) return bad_addr(r, "an IPv6 host must be in brackets");
    }
    size_t hlen = (size_t)((a[0] == '[' ? colon - 1 : colon) - host);
    if (hlen == 0) return bad_addr(r, "no host before ':'");
    if (hlen >= sizeof r->host) return bad_addr(r, "the host name is too long");
    memcpy(r->host, host, hlen);
    r->host[hlen] = '\0';
    return parse_port(r, colon + 1);
}

/* ---- timed I/O ---------------------------------------------------------------------------- */

/* 0 once fd is ready for events (or has an error for the next call to report), ETIMEDOUT at
 * the deadline, or poll's errno. */
static int wait_fd(const rdv *r, int fd, short events) {
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int k = poll(&p, 1, remaining_ms(r));
        if (k > 0) return 0;
        if (k == 0) return ETIMEDOUT;
        if (errno != EINTR) return errno;
    }
}

static int send_all(const rdv *r, int fd, const unsigned char *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        /* MSG_NOSIGNAL: a peer gone away is an error to report, not a SIGPIPE that kills us. */
        ssize_t k = send(fd, buf + done, n - done, MSG_NOSIGNAL);
        if (k >= 0) {
            done += (size_t)k;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int e = wait_fd(r, fd, POLLOUT);
            if (e) return sys_fail(r, "send", e);
        } else if (errno != EINTR) {
            return sys_fail(r, "send", errno);
        }
    }
    return SD_OK;
}

static int recv_all(const rdv *r, int fd, unsigned char *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t k = recv(fd, buf + done, n - done, 0);
        if (k > 0) {
            done += (size_t)k;
        } else if (k == 0) {
            return sd_fail(SD_ERR_SYS, "%s=%s: the connection closed after %zu of %zu bytes", r->what, r->addr,
                           done, n);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int e = wait_fd(r, fd, POLLIN);
            if (e) return sys_fail(r, "receive", e);
        } else if (errno != EINTR) {
            return sys_fail(r, "receive", errno);
        }
    }
    return SD_OK;
}

/* ---- the frame: "SDRV", length (4 bytes big-endian), bytes -------------------------------- */

static int send_frame(const rdv *r, int fd, const unsigned char *blob, int n) {
    uint32_t len = (uint32_t)n;
    unsigned char h[k_header] = {'S', 'D', 'R', 'V', (unsigned char)(len >> 24), (unsigned char)(len >> 16),
                                 (unsigned char)(len >> 8), (unsigned char)len};
    SD_TRY(send_all(r, fd, h, sizeof h));
    return send_all(r, fd, blob, (size_t)n);
}

static int recv_frame(const rdv *r, int fd, unsigned char *blob, int n) {
    unsigned char h[k_header];
    SD_TRY(recv_all(r, fd, h, sizeof h));
    /* Another service on the port, or another program's rank 0: refuse rather than hand
     * NCCL someone else's bytes. */
    if (memcmp(h, "SDRV", 4) != 0)
        return sd_fail(SD_ERR_SYS, "%s=%s: the peer is not an ssdistill rank 0 (bad magic %02x %02x %02x %02x, "
                       "expected \"SDRV\")", r->what, r->addr, h[0], h[1], h[2], h[3]);
    uint32_t len = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
    if (len != (uint32_t)n)
        return sd_fail(SD_ERR_SYS, "%s=%s: rank 0 sent %u bytes, expected %d", r->what, r->addr, (unsigned)len, n);
    return recv_all(r, fd, blob, (size_t)n);
}

/* ---- rank 0 ------------------------------------------------------------------------------- */

/* A listener on the wildcard address of family: for IPv6 dual-stack, so that peers that name
 * rank 0 by an IPv4 address arrive too.  0, or the errno with *op the call that failed. */
static int try_listen(const rdv *r, int family, int *out, const char **op) {
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = in6addr_any, .sin6_port = htons(r->port_num)};
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY), .sin_port = htons(r->port_num)};
    struct sockaddr *sa = family == AF_INET6 ? (struct sockaddr *)&a6 : (struct sockaddr *)&a4;
    socklen_t len = family == AF_INET6 ? sizeof a6 : sizeof a4;
    int one = 1, zero = 0;
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        *op = "socket";
        return errno;
    }
    /* SO_REUSEADDR: a run restarted at once must not wait out the last run's TIME_WAIT. */
    *op = "setsockopt";
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
        (family != AF_INET6 || setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) == 0)) {
        *op = "bind";
        if (bind(fd, sa, len) == 0) {
            *op = "listen";
            if (listen(fd, SOMAXCONN) == 0) {
                *out = fd;
                return 0;
            }
        }
    }
    int e = errno;
    close(fd);
    return e;
}

static int listen_any(const rdv *r, int *out) {
    const char *op;
    int e = try_listen(r, AF_INET6, out, &op);
    /* A kernel without IPv6: IPv4 alone. */
    if (e == EAFNOSUPPORT || e == EPROTONOSUPPORT) e = try_listen(r, AF_INET, out, &op);
    return e ? sys_fail(r, op, e) : SD_OK;
}

/* Accepts the next peer (got of them came before) and sends it the blob. */
static int serve_one(const rdv *r, int lfd, int got, int peers, const unsigned char *blob, int n) {
    int fd;
    for (;;) {
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) break;
        /* A connection reset before we took it is that peer's retry's business, not ours. */
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return sys_fail(r, "accept", errno);
        int e = wait_fd(r, lfd, POLLIN);
        if (e == ETIMEDOUT)
            return sd_fail(SD_ERR_SYS, "%s=%s: %d of %d peers connected within %d s (%s)", r->what, r->addr, got,
                           peers, r->timeout_s, strerror(e));
        if (e) return sys_fail(r, "poll", e);
    }
    int rc = send_frame(r, fd, blob, n);
    close(fd); /* graceful: the peer still reads what was sent */
    return rc;
}

static int serve(const rdv *r, int world, const unsigned char *blob, int n) {
    int lfd;
    SD_TRY(listen_any(r, &lfd));
    int rc = SD_OK;
    for (int got = 0; rc == SD_OK && got < world - 1; got++) rc = serve_one(r, lfd, got, world - 1, blob, n);
    close(lfd);
    return rc;
}

/* ---- the other ranks ---------------------------------------------------------------------- */

/* A connected socket to ai, or -1 with *err set; waits at most until the deadline. */
static int connect_one(const rdv *r, const struct addrinfo *ai, int *err) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    int e = connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : errno;
    if (e == EINPROGRESS || e == EINTR) { /* either way the handshake goes on without us */
        socklen_t len = sizeof e;
        e = wait_fd(r, fd, POLLOUT);
        if (!e && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0) e = errno;
    }
    if (e) {
        close(fd);
        *err = e;
        return -1;
    }
    return fd;
}

/* One attempt: resolve the host each time (a launcher may register a node's name only once it
 * is up) and try each of its addresses.  A socket, or -1 with why filled. */
static int try_connect(const rdv *r, char *why, size_t wn) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(r->host, r->port, &hints, &res);
    if (g != 0) {
        snprintf(why, wn, "cannot resolve '%s': %s", r->host, g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
        return -1;
    }
    int fd = -1, err = 0;
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) fd = connect_one(r, ai, &err);
    freeaddrinfo(res);
    if (fd < 0) snprintf(why, wn, "connect: %s", strerror(err));
    return fd;
}

static int fetch(const rdv *r, unsigned char *blob, int n) {
    char why[320] = "";
    int fd;
    /* Rank 0 may start after us: a refused connection means "not yet" until the deadline. */
    while ((fd = try_connect(r, why, sizeof why)) < 0) {
        int left = remaining_ms(r);
        if (left == 0)
            return sd_fail(SD_ERR_SYS, "%s=%s: no rank 0 answered within %d s: %s", r->what, r->addr, r->timeout_s, why);
        poll(NULL, 0, left < k_retry_ms ? left : k_retry_ms); /* a sleep; EINTR only shortens it */
    }
    int rc = recv_frame(r, fd, blob, n);
    close(fd);
    return rc;
}

int sd_rendezvous_tcp(const char *what, const char *addr, int rank, int world, unsigned char *blob, int n,
                      int timeout_s) {
    if (!what || !addr || (!blob && n > 0) || world < 1 || rank < 0 || rank >= world || n < 0 || timeout_s < 1)
        return sd_fail(SD_ERR_INTERNAL, "sd_rendezvous_tcp: bad arguments (rank %d, world %d, %d bytes, %d s)", rank,
                       world, n, timeout_s);
    rdv r = {.what = what, .addr = addr, .timeout_s = timeout_s};
    SD_TRY(parse_addr(&r));
    if (world == 1) return SD_OK; /* nobody to meet */
    r.deadline_ms = now_ms() + (int64_t)timeout_s * 1000;
    return rank == 0 ? serve(&r, world, blob, n) : fetch(&r, blob, n);
}
