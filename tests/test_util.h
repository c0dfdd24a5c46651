/* A tiny test harness: CHECK records a failure with file:line and goes on; the test's main
 * returns test_summary(), which prints "N passed, N failed" and is non-zero on failure. */
#ifndef SD_TEST_UTIL_H
#define SD_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_test_pass, g_test_fail;

#define CHECK(cond, ...)                                               \
    do {                                                               \
        if (cond) {                                                    \
            g_test_pass++;                                             \
        } else {                                                       \
            g_test_fail++;                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                              \
            fputc('\n', stderr);                                       \
        }                                                              \
    } while (0)

/* CHECK that an ssdistill call returned SD_OK, printing its error message if not. */
#define CHECK_OK(expr)                                                           \
    do {                                                                         \
        int rc_ = (expr);                                                        \
        CHECK(rc_ == 0, "returned %d: %s", rc_, sd_errmsg());                    \
    } while (0)

static inline int test_summary(const char *name) {
    printf("%s: %d passed, %d failed\n", name, g_test_pass, g_test_fail);
    return g_test_fail ? 1 : 0;
}

/* The shared data folder (SSDISTILL_DATA, default ../shared/data). */
static inline const char *test_data_dir(void) {
    const char *d = getenv("SSDISTILL_DATA");
    return d && *d ? d : "../shared/data";
}

static inline void test_path(char *buf, size_t n, const char *rel) {
    snprintf(buf, n, "%s/%s", test_data_dir(), rel);
}

/* Deterministic inputs: splitmix64 with a fixed seed. */
static inline uint64_t test_rng_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline float test_uniform(uint64_t *s, float lo, float hi) {
    return lo + (hi - lo) * (float)(test_rng_u64(s) >> 40) * (1.0f / 16777216.0f);
}
static inline void test_fill(float *x, size_t n, uint64_t *s, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = test_uniform(s, lo, hi);
}
/* Poison outputs before an op runs so that an op that skips an element is caught. */
static inline void test_poison(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}
/* max |a - b| / (max |b| + tiny): the relative error of a vector against a reference. */
static inline double test_rel_err(const float *a, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= num)) num = d; /* NaN propagates */
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return num / (den + 1e-30);
}

#endif
