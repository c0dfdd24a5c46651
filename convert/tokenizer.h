/* Hugging Face tokenizer.json: BPE models of two kinds:
 *  - SentencePiece-style (Llama-2, TinyLlama, tok512): normalizer Prepend("▁") + Replace(" ",
 *    "▁"), no pre-tokenizer, merges by rank, byte fallback (<0xNN>) for unknown characters;
 *  - byte-level (GPT-2, Llama-3, Qwen2): ByteLevel pre-tokenizer, or a Split with the GPT-2 /
 *    Llama-3 / Qwen2 regex followed by ByteLevel; bytes mapped to the GPT-2 unicode alphabet.
 * Added tokens (special or not) are matched first, longest first, in the raw text. */
#ifndef SD_TOKENIZER_H
#define SD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct sd_tokenizer sd_tokenizer;

int sd_tokenizer_load(const char *path, sd_tokenizer **out);
void sd_tokenizer_free(sd_tokenizer *tok);
int sd_tokenizer_vocab_size(const sd_tokenizer *tok);
/* Id of a token string (e.g. "</s>", "<|endoftext|>"), or -1. */
int sd_tokenizer_token_id(const sd_tokenizer *tok, const char *token);
/* BOS / EOS ids found from tokenizer_config.json beside the file or the usual names; -1. */
int sd_tokenizer_bos(const sd_tokenizer *tok);
int sd_tokenizer_eos(const sd_tokenizer *tok);

/* Encodes UTF-8 text (no special tokens added). Invalid UTF-8 is SD_ERR_INPUT with the byte
 * offset. *ids is malloc'ed; caller frees. */
int sd_tokenizer_encode(const sd_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n);
/* Decodes ids with the tokenizer's decoder (as tokenizers' decode with
 * skip_special_tokens=False). *text is malloc'ed and NUL-terminated. */
int sd_tokenizer_decode(const sd_tokenizer *tok, const int32_t *ids, size_t n, char **text,
                        size_t *len);

/* Decodes the JSON string literal at s[0] == '"' (escapes, \uXXXX with surrogate pairs,
 * embedded NULs kept, which cJSON would cut). *out is malloc'ed, NUL-terminated, *out_len
 * its length; *end gets the offset just past the closing quote. SD_ERR_INPUT on a
 * malformed literal. */
int sd_json_string(const char *s, size_t len, char **out, size_t *out_len, size_t *end);

#endif
