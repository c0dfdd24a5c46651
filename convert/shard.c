/* Token shards: a 256 x int32 little-endian header, then uint16 or uint32 tokens. */
#include "convert/shard.h"
#include "common/error.h"
#include "common/fileio.h"

#include <stdlib.h>
#include <string.h>

enum { HEADER_INTS = 256, CHUNK = 1 << 16 };

static void put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int write_tokens(sd_atomic_file *af, const uint32_t *tokens, int64_t n, int bytes) {
    unsigned char *chunk = sd_malloc((size_t)CHUNK * 4, "shard write buffer");
    if (!chunk) return SD_ERR_SYS;
    int rc = SD_OK;
    for (int64_t i = 0; i < n && rc == SD_OK; i += CHUNK) {
        size_t m = (size_t)(n - i < CHUNK ? n - i : CHUNK);
        for (size_t k = 0; k < m; k++) {
            uint32_t v = tokens[i + (int64_t)k];
            if (bytes == 2) { chunk[2 * k] = (unsigned char)v; chunk[2 * k + 1] = (unsigned char)(v >> 8); }
            else put_le32(chunk + 4 * k, v);
        }
        rc = sd_atomic_write(af, chunk, m * (size_t)bytes);
    }
    free(chunk);
    return rc;
}

int sd_shard_write(const char *path, const uint32_t *tokens, int64_t n, int vocab_size, int eos_id) {
    if (n < 0 || vocab_size <= 0) return sd_fail(SD_ERR_INTERNAL, "%s: shard with %lld tokens, vocab %d", path, (long long)n, vocab_size);
    int bytes = vocab_size <= 65536 ? 2 : 4;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] >= (uint32_t)vocab_size)
            return sd_fail(SD_ERR_INTERNAL, "%s: token %u at %lld is outside the vocabulary (%d)", path, tokens[i], (long long)i, vocab_size);
    unsigned char header[HEADER_INTS * 4] = {0};
    put_le32(header, SD_SHARD_MAGIC);
    put_le32(header + 4, SD_SHARD_VERSION);
    put_le32(header + 8, (uint32_t)(n & 0x7FFFFFFF));
    put_le32(header + 12, (uint32_t)(n >> 31));
    put_le32(header + 16, (uint32_t)vocab_size);
    put_le32(header + 20, (uint32_t)bytes);
    put_le32(header + 24, (uint32_t)eos_id);
    sd_atomic_file af;
    SD_TRY(sd_atomic_open(&af, path));
    int rc = sd_atomic_write(&af, header, sizeof header);
    if (rc == SD_OK) rc = write_tokens(&af, tokens, n, bytes);
    if (rc != SD_OK) { sd_atomic_abort(&af); return rc; }
    return sd_atomic_commit(&af);
}

int sd_shard_read(const char *path, sd_shard *s) {
    memset(s, 0, sizeof *s);
    sd_mmap m;
    SD_TRY(sd_mmap_open(path, &m));
    int rc = SD_OK;
    if (m.len < HEADER_INTS * 4) {
        rc = sd_fail(SD_ERR_INPUT, "%s: shard is %zu bytes, shorter than its %d-byte header", path, m.len, HEADER_INTS * 4);
    } else if (get_le32(m.data) != SD_SHARD_MAGIC) {
        rc = sd_fail(SD_ERR_INPUT, "%s: bad magic %u at offset 0 (expected %d)", path, get_le32(m.data), SD_SHARD_MAGIC);
    } else if (get_le32(m.data + 4) != SD_SHARD_VERSION) {
        rc = sd_fail(SD_ERR_INPUT, "%s: unsupported shard version %u at offset 4", path, get_le32(m.data + 4));
    }
    if (rc) { sd_mmap_close(&m); return rc; }
    int64_t n = (int64_t)get_le32(m.data + 8) | ((int64_t)get_le32(m.data + 12) << 31);
    int bytes = (int)get_le32(m.data + 20);
    s->vocab_size = (int)get_le32(m.data + 16);
    s->eos_id = (int)get_le32(m.data + 24);
    if (bytes != 2 && bytes != 4) {
        rc = sd_fail(SD_ERR_INPUT, "%s: dtype code %d at offset 20 (expected 2 or 4)", path, bytes);
    } else if ((uint64_t)(m.len - HEADER_INTS * 4) != (uint64_t)n * (uint64_t)bytes) {
        rc = sd_fail(SD_ERR_INPUT, "%s: header says %lld tokens of %d bytes but the file holds %zu token bytes (truncated?)",
                     path, (long long)n, bytes, m.len - HEADER_INTS * 4);
    }
    if (rc == SD_OK) {
        s->tokens = sd_malloc((size_t)(n ? n : 1) * sizeof(uint32_t), "shard tokens");
        if (!s->tokens) rc = SD_ERR_SYS;
    }
    if (rc == SD_OK) {
        const unsigned char *p = m.data + HEADER_INTS * 4;
        for (int64_t i = 0; i < n; i++)
            s->tokens[i] = bytes == 2 ? (uint32_t)p[2 * i] | ((uint32_t)p[2 * i + 1] << 8) : get_le32(p + 4 * i);
        s->ntokens = n;
        s->dtype_bytes = bytes;
    }
    sd_mmap_close(&m);
    return rc;
}

void sd_shard_free(sd_shard *s) {
    free(s->tokens);
    s->tokens = NULL;
    s->ntokens = 0;
}
