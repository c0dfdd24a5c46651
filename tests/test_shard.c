/* Token shards: uint16 and uint32 round trips, truncated files and bad magic refused. */
#include "common/error.h"
#include "convert/shard.h"
#include "tests/test_util.h"

#include <unistd.h>

static void round_trip(int vocab, int want_bytes) {
    char path[] = "/tmp/sd_shard_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) { CHECK(0, "mkstemp"); return; }
    close(fd);
    enum { N = 100003 };
    uint32_t *tok = malloc(N * sizeof *tok);
    uint64_t seed = 7;
    for (int i = 0; i < N; i++) tok[i] = (uint32_t)(test_rng_u64(&seed) % (uint64_t)vocab);
    tok[N - 1] = (uint32_t)vocab - 1;
    CHECK_OK(sd_shard_write(path, tok, N, vocab, vocab - 1));
    sd_shard s;
    CHECK_OK(sd_shard_read(path, &s));
    CHECK(s.ntokens == N && s.vocab_size == vocab && s.dtype_bytes == want_bytes && s.eos_id == vocab - 1,
          "header: n %lld vocab %d bytes %d eos %d", (long long)s.ntokens, s.vocab_size, s.dtype_bytes, s.eos_id);
    CHECK(s.tokens && memcmp(s.tokens, tok, N * sizeof *tok) == 0, "tokens differ after a round trip (vocab %d)", vocab);
    sd_shard_free(&s);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    CHECK(ftell(f) == 1024 + (long)N * want_bytes, "file size %ld", ftell(f));
    fclose(f);
    /* a token outside the vocabulary is refused */
    tok[3] = (uint32_t)vocab;
    CHECK(sd_shard_write(path, tok, N, vocab, 0) != SD_OK, "token outside vocabulary accepted");
    free(tok);
    unlink(path);
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(p, 1, n, f);
    fclose(f);
}

static void refused(void) {
    char path[] = "/tmp/sd_shard_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return;
    close(fd);
    uint32_t tok[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    CHECK_OK(sd_shard_write(path, tok, 10, 512, 2));
    /* truncated: drop the last token */
    FILE *f = fopen(path, "rb");
    unsigned char buf[2048];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    CHECK(n == 1024 + 20, "size %zu", n);
    sd_shard s;
    write_bytes(path, buf, n - 2);
    int rc = sd_shard_read(path, &s);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "truncated") && strstr(sd_errmsg(), path), "truncated: %d %s", rc, sd_errmsg());
    write_bytes(path, buf, 100);
    rc = sd_shard_read(path, &s);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "header"), "short header: %d %s", rc, sd_errmsg());
    buf[0] ^= 0xFF;
    write_bytes(path, buf, n);
    rc = sd_shard_read(path, &s);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "magic"), "bad magic: %d %s", rc, sd_errmsg());
    /* the empty shard is valid */
    CHECK_OK(sd_shard_write(path, tok, 0, 512, 2));
    CHECK_OK(sd_shard_read(path, &s));
    CHECK(s.ntokens == 0, "empty shard");
    sd_shard_free(&s);
    unlink(path);
}

int main(void) {
    round_trip(512, 2);
    round_trip(65536, 2);
    round_trip(65537, 4);
    round_trip(151936, 4);
    refused();
    return test_summary("test_shard");
}
