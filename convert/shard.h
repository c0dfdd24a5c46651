/* Token shards (DESIGN.md section 6): little-endian header of 256 int32
 * [0] magic 20240520 ("ssd shard"), [1] version 1, [2] token count (low 31 bits) ,
 * [3] token count high bits, [4] vocab size, [5] dtype code (2: uint16, 4: uint32),
 * [6] EOS id, rest 0; then the tokens.  Written to NAME.tmp then renamed. */
#ifndef SD_SHARD_H
#define SD_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define SD_SHARD_MAGIC 20240520
#define SD_SHARD_VERSION 1

typedef struct {
    int64_t ntokens;
    int vocab_size;
    int dtype_bytes; /* 2 or 4 */
    int eos_id;
    uint32_t *tokens; /* widened on read */
} sd_shard;

int sd_shard_write(const char *path, const uint32_t *tokens, int64_t n, int vocab_size, int eos_id);
int sd_shard_read(const char *path, sd_shard *s);
void sd_shard_free(sd_shard *s);

#endif
