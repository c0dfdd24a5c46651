#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One message per thread: the innermost failure with its context. */
static _Thread_local char g_msg[2048];

int sd_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return code;
}

int sd_error_prefix(int code, const char *fmt, ...) {
    char prefix[1024], old[sizeof g_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_msg, sizeof old);
    size_t k = strlen(prefix);
    memcpy(g_msg, prefix, k);                 /* prefix is < 1024 < sizeof g_msg */
    g_msg[k++] = ':';
    g_msg[k++] = ' ';
    size_t room = sizeof g_msg - k - 1, n = strlen(old);
    if (n > room) n = room;
    memcpy(g_msg + k, old, n);
    g_msg[k + n] = 0;
    return code;
}

const char *sd_errmsg(void) { return g_msg[0] ? g_msg : "unknown error"; }
void sd_error_clear(void) { g_msg[0] = 0; }

int sd_exit_code(int status) {
    if (status == SD_OK) return 0;
    return status == SD_ERR_CHECK ? 1 : 2;
}

void *sd_malloc(size_t n, const char *what) {
    void *p = malloc(n ? n : 1);
    if (!p) sd_fail(SD_ERR_SYS, "out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *sd_calloc(size_t count, size_t size, const char *what) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) sd_fail(SD_ERR_SYS, "out of memory allocating %zu x %zu bytes for %s", count, size, what);
    return p;
}

void *sd_realloc(void *p, size_t n, const char *what) {
    void *q = realloc(p, n ? n : 1);
    if (!q) sd_fail(SD_ERR_SYS, "out of memory growing %s to %zu bytes", what, n);
    return q;
}

char *sd_strdup(const char *s, const char *what) {
    size_t n = strlen(s) + 1;
    char *p = sd_malloc(n, what);
    if (p) memcpy(p, s, n);
    return p;
}
