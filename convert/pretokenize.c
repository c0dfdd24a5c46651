/* Hand-coded equivalents of the pre-tokenizer regexes (no regex library):
 *  GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *  Llama-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 *           | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *  Qwen2:   the same with \p{N} (one digit).
 * Each matcher tries the alternatives in order at one position, as a backtracking regex
 * engine does, and returns where the leftmost-first match ends. */
#include "convert/pretokenize.h"
#include "convert/unicode_tables.h"

#include <string.h>

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

static int uclass_slow(uint32_t cp) {
    int c = 0;
    if (in_ranges(sd_uni_letter, sd_uni_letter_count, cp)) c |= SD_CLS_L;
    if (in_ranges(sd_uni_number, sd_uni_number_count, cp)) c |= SD_CLS_N;
    if (in_ranges(sd_uni_space, sd_uni_space_count, cp)) c |= SD_CLS_S;
    return c;
}

void sd_uclass_init(sd_uclass_table *t) {
    memset(t->bmp, 0, sizeof t->bmp);
    const uint32_t(*tabs[3])[2] = {sd_uni_letter, sd_uni_number, sd_uni_space};
    size_t counts[3] = {sd_uni_letter_count, sd_uni_number_count, sd_uni_space_count};
    int bits[3] = {SD_CLS_L, SD_CLS_N, SD_CLS_S};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < counts[k]; i++)
            for (uint32_t cp = tabs[k][i][0]; cp <= tabs[k][i][1] && cp < 65536; cp++)
                t->bmp[cp] |= (uint8_t)bits[k];
}

int sd_uclass(const sd_uclass_table *t, uint32_t cp) {
    return cp < 65536 ? t->bmp[cp] : uclass_slow(cp);
}

size_t sd_utf8_check(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        int n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; min = 0x10000; }
        else return i;
        if (i + (size_t)n > len) return i;
        for (int k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += (size_t)n;
    }
    return len;
}

uint32_t sd_utf8_decode(const unsigned char *s, size_t i, size_t len, int *n) {
    unsigned char c = s[i];
    if (c < 0x80) { *n = 1; return c; }
    if ((c & 0xE0) == 0xC0 && i + 1 < len) { *n = 2; return ((uint32_t)(c & 0x1F) << 6) | (s[i + 1] & 0x3F); }
    if ((c & 0xF0) == 0xE0 && i + 2 < len) {
        *n = 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    }
    if ((c & 0xF8) == 0xF0 && i + 3 < len) {
        *n = 4;
        return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
               ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
    }
    *n = 1; /* only reached on invalid input, which encode rejects first */
    return 0xFFFD;
}

int sd_utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A cursor over the text: class and length of the character at a position. */
typedef struct {
    const sd_uclass_table *t;
    const unsigned char *s;
    size_t len;
} scan;

static inline uint32_t cp_at(const scan *sc, size_t i, int *n) {
    if (sc->s[i] < 0x80) { *n = 1; return sc->s[i]; }
    return sd_utf8_decode(sc->s, i, sc->len, n);
}

static inline int cls_at(const scan *sc, size_t i, int *n) {
    return sd_uclass(sc->t, cp_at(sc, i, n));
}

/* Consumes characters whose class satisfies (cls & want) != 0 (or == 0 when other),
 * at most max characters; returns the end. */
static size_t run(const scan *sc, size_t i, int want, int other, int max) {
    int count = 0;
    while (i < sc->len && count < max) {
        int n, c = cls_at(sc, i, &n);
        int ok = other ? (c & (SD_CLS_L | SD_CLS_N | SD_CLS_S)) == 0 : (c & want) != 0;
        if (!ok) break;
        i += (size_t)n;
        count++;
    }
    return i;
}

static int is_other(int c) { return (c & (SD_CLS_L | SD_CLS_N | SD_CLS_S)) == 0; }

/* 's 't 're 've 'm 'll 'd at i (s[i] == '\''); fold: case-insensitive. Returns end or 0. */
static size_t contraction(const scan *sc, size_t i, int fold) {
    const unsigned char *s = sc->s;
    size_t r = sc->len - i;
    if (r < 2) return 0;
    unsigned char a = s[i + 1], b = r >= 3 ? s[i + 2] : 0;
    if (fold) {
        if (a >= 'A' && a <= 'Z') a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z') b = (unsigned char)(b + 32);
        /* (?i) folds U+017F LATIN SMALL LETTER LONG S to s */
        if (r >= 3 && s[i + 1] == 0xC5 && s[i + 2] == 0xBF) return i + 3;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return 0;
}

/* \s+(?!\S)|\s+ at i (a whitespace character): the whole run when it reaches the end or
 * is one character; else the run less its last character. */
static size_t space_run(const scan *sc, size_t i) {
    size_t e = i, last = i;
    int count = 0;
    while (e < sc->len) {
        int n, c = cls_at(sc, e, &n);
        if (!(c & SD_CLS_S)) break;
        last = e;
        e += (size_t)n;
        count++;
    }
    if (e == sc->len || count < 2) return e;
    return last;
}

static size_t gpt2_next(const scan *sc, size_t i) {
    if (sc->s[i] == '\'') {
        size_t e = contraction(sc, i, 0);
        if (e) return e;
    }
    size_t k = i;
    if (sc->s[i] == ' ' && i + 1 < sc->len) k = i + 1;
    if (k < sc->len) {
        int n, c = cls_at(sc, k, &n);
        if (c & SD_CLS_L) return run(sc, k, SD_CLS_L, 0, 1 << 30);
        if (c & SD_CLS_N) return run(sc, k, SD_CLS_N, 0, 1 << 30);
        if (is_other(c)) return run(sc, k, 0, 1, 1 << 30);
    }
    return space_run(sc, i);
}

static size_t llama3_next(const scan *sc, size_t i, int max_digits) {
    const unsigned char *s = sc->s;
    if (s[i] == '\'') {
        size_t e = contraction(sc, i, 1);
        if (e) return e;
    }
    int n, c = cls_at(sc, i, &n);
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (c & SD_CLS_L) return run(sc, i, SD_CLS_L, 0, 1 << 30);
    if (!(c & SD_CLS_N) && s[i] != '\r' && s[i] != '\n' && i + (size_t)n < sc->len) {
        int n2, c2 = cls_at(sc, i + (size_t)n, &n2);
        if (c2 & SD_CLS_L) return run(sc, i + (size_t)n, SD_CLS_L, 0, 1 << 30);
    }
    if (c & SD_CLS_N) return run(sc, i, SD_CLS_N, 0, max_digits);
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t k = i;
    if (s[i] == ' ' && i + 1 < sc->len) k = i + 1;
    if (k < sc->len) {
        int n3, c3 = cls_at(sc, k, &n3);
        if (is_other(c3)) {
            size_t e = run(sc, k, 0, 1, 1 << 30);
            while (e < sc->len && (s[e] == '\r' || s[e] == '\n')) e++;
            return e;
        }
    }
    /* \s*[\r\n]+ : up to the last CR/LF of the whitespace run */
    size_t e = i, crlf_end = 0;
    while (e < sc->len) {
        int n4, c4 = cls_at(sc, e, &n4);
        if (!(c4 & SD_CLS_S)) break;
        if (s[e] == '\r' || s[e] == '\n') crlf_end = e + 1;
        e += (size_t)n4;
    }
    if (crlf_end) return crlf_end;
    return space_run(sc, i);
}

size_t sd_pretok_next(const sd_uclass_table *t, int pre, const unsigned char *s, size_t i,
                      size_t len) {
    scan sc = {t, s, len};
    size_t e;
    switch (pre) {
    case SD_PRE_GPT2: e = gpt2_next(&sc, i); break;
    case SD_PRE_LLAMA3: e = llama3_next(&sc, i, 3); break;
    case SD_PRE_QWEN2: e = llama3_next(&sc, i, 1); break;
    default: e = len; break;
    }
    if (e <= i) { /* cannot happen: every character is L, N, S or other; stay safe */
        int n;
        cp_at(&sc, i, &n);
        e = i + (size_t)n;
    }
    return e;
}
