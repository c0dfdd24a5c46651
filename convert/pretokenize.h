/* UTF-8 helpers, Unicode classes and the hand-coded pre-tokenizer regex matchers (GPT-2,
 * Llama-3, Qwen2) used by convert/tokenizer.c. */
#ifndef SD_PRETOKENIZE_H
#define SD_PRETOKENIZE_H

#include <stddef.h>
#include <stdint.h>

enum { SD_CLS_L = 1, SD_CLS_N = 2, SD_CLS_S = 4 };

enum { SD_PRE_NONE = 0, SD_PRE_WHOLE, SD_PRE_GPT2, SD_PRE_LLAMA3, SD_PRE_QWEN2 };

/* Class bits of every code point of the Basic Multilingual Plane, filled by
 * sd_uclass_init; above it sd_uclass searches the range tables. */
typedef struct {
    uint8_t bmp[65536];
} sd_uclass_table;

void sd_uclass_init(sd_uclass_table *t);
int sd_uclass(const sd_uclass_table *t, uint32_t cp);

/* Offset of the first invalid UTF-8 byte (overlong, surrogate, > U+10FFFF, truncated), or
 * len when the text is valid. */
size_t sd_utf8_check(const unsigned char *s, size_t len);
/* Decodes the (valid) character at s[i]; *n gets its byte length. */
uint32_t sd_utf8_decode(const unsigned char *s, size_t i, size_t len, int *n);
/* Encodes cp; returns the byte count (1-4). */
int sd_utf8_encode(uint32_t cp, char *out);

/* End (byte offset) of the pre-token starting at i for regex kind pre (SD_PRE_GPT2 ...).
 * Every character belongs to some pre-token, so the result is always > i. */
size_t sd_pretok_next(const sd_uclass_table *t, int pre, const unsigned char *s, size_t i,
                      size_t len);

#endif
