/* Error discipline for ssdistill (SQLite/Redis style).
 *
 * Every fallible function returns an int status: SD_OK (0) or one of the codes below.
 * The failing function records one message naming the file, tensor or field and what was
 * expected; callers add nothing unless they have context the callee lacked, in which case
 * they use sd_error_prefix().  The command line prints sd_errmsg() and exits with
 * sd_exit_code(status): 2 for bad input or a failed system call, 1 for a failed check. */
#ifndef SD_ERROR_H
#define SD_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>

enum {
    SD_OK = 0,
    SD_ERR_CHECK = 1,    /* a comparison failed (check-ref above tolerance): exit 1 */
    SD_ERR_INPUT = 2,    /* bad input: file, field, shape, JSON, UTF-8: exit 2 */
    SD_ERR_SYS = 3,      /* I/O, memory, disk full: exit 2 */
    SD_ERR_INTERNAL = 4  /* a bug or a misuse of an API (wrong shape between ops): exit 2 */
};

/* Records the message (printf-style) and returns code, so that callers write
 *     return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': expected shape [%d], got [%d]", ...); */
int sd_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Puts "context: " in front of the current message; returns code unchanged. */
int sd_error_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *sd_errmsg(void);
void sd_error_clear(void);
int sd_exit_code(int status);

/* Allocation that records "out of memory allocating N bytes for WHAT" on failure. */
void *sd_malloc(size_t n, const char *what);
void *sd_calloc(size_t count, size_t size, const char *what);
void *sd_realloc(void *p, size_t n, const char *what);
char *sd_strdup(const char *s, const char *what);

/* Propagate a non-zero status. */
#define SD_TRY(expr) do { int sd_rc_ = (expr); if (sd_rc_ != SD_OK) return sd_rc_; } while (0)

#ifdef __cplusplus
}
#endif

#endif
