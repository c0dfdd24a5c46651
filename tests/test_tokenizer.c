/* Tokenizer parity with the tokenizers library: every text of expected.dev.json encodes to
 * the same ids and the ids decode to the same text; bad tokenizer.json files are refused. */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/tokenizer.h"
#include "tests/test_util.h"

#include <cjson/cJSON.h>
#include <unistd.h>

/* The strings of the array under "key" in raw JSON, with their true lengths (cJSON cuts
 * strings at an embedded U+0000). */
static int raw_strings(const char *raw, size_t len, const char *key, char ***out, size_t **lens) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(raw, pat);
    if (!p) return 0;
    p = strchr(p + strlen(pat), '[');
    int n = 0;
    *out = NULL;
    *lens = NULL;
    while (p && *p != ']') {
        p++;
        while (*p == ' ' || *p == '\n' || *p == ',') p++;
        if (*p != '"') break;
        char *str;
        size_t sl, end;
        if (sd_json_string(p, len - (size_t)(p - raw), &str, &sl, &end) != SD_OK) break;
        *out = realloc(*out, (size_t)(n + 1) * sizeof **out);
        *lens = realloc(*lens, (size_t)(n + 1) * sizeof **lens);
        (*out)[n] = str;
        (*lens)[n++] = sl;
        p += end;
        while (*p == ' ' || *p == '\n') p++;
        if (*p != ',') break;
    }
    return n;
}

static void free_strings(char **s, size_t *lens, int n) {
    for (int i = 0; i < n; i++) free(s[i]);
    free(s);
    free(lens);
}

/* Encodes every expected text and decodes every expected id list; returns texts matched. */
static int check_expected(const char *name) {
    char path[1024], epath[1024];
    snprintf(path, sizeof path, "%s/tokenizers/%s/tokenizer.json", test_data_dir(), name);
    snprintf(epath, sizeof epath, "%s/tokenizers/%s/expected.dev.json", test_data_dir(), name);
    sd_tokenizer *tok = NULL;
    CHECK_OK(sd_tokenizer_load(path, &tok));
    char *data = NULL;
    size_t len;
    CHECK_OK(sd_read_file(epath, &data, &len));
    if (!tok || !data) { sd_tokenizer_free(tok); free(data); return 0; }
    cJSON *root = cJSON_Parse(data);
    char **rtexts, **rdec;
    size_t *ltexts, *ldec;
    int nraw = raw_strings(data, len, "texts", &rtexts, &ltexts);
    int ndec = raw_strings(data, len, "decoded", &rdec, &ldec);
    free(data);
    const cJSON *texts = cJSON_GetObjectItem(root, "texts"), *ids = cJSON_GetObjectItem(root, "ids");
    int ntext = cJSON_GetArraySize(texts), matched = 0, dec_ok = 0;
    CHECK(nraw == ntext && ndec == ntext, "%s: raw parse found %d texts, %d decoded, cJSON %d", name, nraw, ndec, ntext);
    if (nraw < ntext || ndec < ntext) ntext = 0;
    for (int i = 0; i < ntext; i++) {
        const char *text = rtexts[i];
        const cJSON *want = cJSON_GetArrayItem(ids, i);
        int nwant = cJSON_GetArraySize(want);
        int32_t *got = NULL;
        size_t ngot = 0;
        int rc = sd_tokenizer_encode(tok, text, ltexts[i], &got, &ngot);
        int pos = -1;
        for (int k = 0; rc == SD_OK && k < nwant && k < (int)ngot && pos < 0; k++)
            if (got[k] != cJSON_GetArrayItem(want, k)->valueint) pos = k;
        if (rc == SD_OK && pos < 0 && (int)ngot != nwant) pos = (int)ngot < nwant ? (int)ngot : nwant;
        if (rc == SD_OK && pos < 0) matched++;
        else if (rc) CHECK(0, "%s text %d: %s", name, i, sd_errmsg());
        else CHECK(0, "%s text %d position %d: got %d, expected %d (lengths %zu vs %d)", name, i, pos,
                   pos < (int)ngot ? got[pos] : -1, pos < nwant ? cJSON_GetArrayItem(want, pos)->valueint : -1, ngot, nwant);
        free(got);
        /* decode the expected ids */
        int32_t *w = malloc(((size_t)nwant + 1) * sizeof *w);
        for (int k = 0; k < nwant; k++) w[k] = cJSON_GetArrayItem(want, k)->valueint;
        char *out = NULL;
        size_t nout;
        rc = sd_tokenizer_decode(tok, w, (size_t)nwant, &out, &nout);
        const char *exp = rdec[i];
        if (rc == SD_OK && nout == ldec[i] && memcmp(out, exp, nout) == 0) dec_ok++;
        else CHECK(0, "%s decode %d: got '%.80s', expected '%.80s'", name, i, out ? out : sd_errmsg(), exp);
        free(out);
        free(w);
    }
    CHECK(matched == ntext, "%s: %d of %d texts match", name, matched, ntext);
    CHECK(dec_ok == ntext, "%s: %d of %d decodes match", name, dec_ok, ntext);
    printf("%s: encode %d/%d, decode %d/%d\n", name, matched, ntext, dec_ok, ntext);
    cJSON_Delete(root);
    free_strings(rtexts, ltexts, nraw);
    free_strings(rdec, ldec, ndec);
    sd_tokenizer_free(tok);
    return matched;
}

static void check_stories260k(void) {
    char a[1024], b[1024];
    test_path(a, sizeof a, "tokenizers/tok512/tokenizer.json");
    test_path(b, sizeof b, "hf/stories260K/tokenizer.json");
    sd_tokenizer *t1 = NULL, *t2 = NULL;
    CHECK_OK(sd_tokenizer_load(a, &t1));
    CHECK_OK(sd_tokenizer_load(b, &t2));
    if (!t1 || !t2) { sd_tokenizer_free(t1); sd_tokenizer_free(t2); return; }
    const char *texts[] = {"Once upon a time, there was a little girl.", " two  spaces", "caf\xC3\xA9 \xF0\x9F\x98\x80", "<s>x</s>"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        CHECK_OK(sd_tokenizer_encode(t1, texts[i], strlen(texts[i]), &x, &nx));
        CHECK_OK(sd_tokenizer_encode(t2, texts[i], strlen(texts[i]), &y, &ny));
        CHECK(nx == ny && x && y && memcmp(x, y, nx * sizeof *x) == 0, "stories260K differs from tok512 on text %zu", i);
        free(x);
        free(y);
    }
    CHECK(sd_tokenizer_bos(t2) == 1 && sd_tokenizer_eos(t2) == 2, "stories260K bos %d eos %d", sd_tokenizer_bos(t2), sd_tokenizer_eos(t2));
    CHECK(sd_tokenizer_vocab_size(t2) == 512, "vocab %d", sd_tokenizer_vocab_size(t2));
    /* invalid UTF-8 names the byte offset */
    int32_t *ids = NULL;
    size_t n;
    int rc = sd_tokenizer_encode(t1, "ab\xC3(", 4, &ids, &n);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "offset 2"), "invalid UTF-8: rc %d: %s", rc, sd_errmsg());
    free(ids);
    sd_tokenizer_free(t1);
    sd_tokenizer_free(t2);
}

static void check_specials(void) {
    char p[1024];
    test_path(p, sizeof p, "tokenizers/gpt2/tokenizer.json");
    sd_tokenizer *t = NULL;
    CHECK_OK(sd_tokenizer_load(p, &t));
    if (!t) return;
    CHECK(sd_tokenizer_eos(t) == 50256 && sd_tokenizer_bos(t) == 50256, "gpt2 eos %d", sd_tokenizer_eos(t));
    CHECK(sd_tokenizer_token_id(t, "<|endoftext|>") == 50256, "token id");
    CHECK(sd_tokenizer_vocab_size(t) == 50257, "vocab %d", sd_tokenizer_vocab_size(t));
    int32_t *ids = NULL;
    size_t n = 0;
    const char *s = "a<|endoftext|>b";
    CHECK_OK(sd_tokenizer_encode(t, s, strlen(s), &ids, &n));
    CHECK(n == 3 && ids && ids[1] == 50256, "special token split: %zu ids", n);
    free(ids);
    sd_tokenizer_free(t);
}

/* Byte sequences that are not UTF-8 decode to U+FFFD as the library does: one per byte for
 * byte fallback, one per maximal invalid subpart for byte-level. */
static void check_decode_invalid(void) {
    char p[1024];
    sd_tokenizer *t = NULL;
    test_path(p, sizeof p, "tokenizers/tok512/tokenizer.json");
    CHECK_OK(sd_tokenizer_load(p, &t));
    if (t) {
        int32_t ids[3] = {sd_tokenizer_token_id(t, "<0xE2>"), sd_tokenizer_token_id(t, "<0x96>"), sd_tokenizer_token_id(t, "a")};
        char *out = NULL;
        size_t n = 0;
        CHECK(ids[0] >= 0 && ids[1] >= 0 && ids[2] >= 0, "byte tokens");
        CHECK_OK(sd_tokenizer_decode(t, ids, 3, &out, &n));
        CHECK(out && strcmp(out, "\xEF\xBF\xBD\xEF\xBF\xBD" "a") == 0, "byte fallback decode: '%s'", out ? out : "");
        free(out);
        int32_t pad[2] = {100000, ids[2]}; /* an id beyond the vocabulary is skipped */
        CHECK_OK(sd_tokenizer_decode(t, pad, 2, &out, &n));
        CHECK(out && strcmp(out, "a") == 0, "unknown id decode: '%s'", out ? out : "");
        free(out);
    }
    sd_tokenizer_free(t);
    test_path(p, sizeof p, "tokenizers/gpt2/tokenizer.json");
    t = NULL;
    CHECK_OK(sd_tokenizer_load(p, &t));
    if (t) {
        const char *woman = "\xF0\x9F\x91\xA9";
        int32_t *ids = NULL;
        size_t n = 0;
        char *out = NULL;
        size_t nout = 0;
        CHECK_OK(sd_tokenizer_encode(t, woman, 4, &ids, &n));
        CHECK(n == 2, "emoji: %zu ids", n);
        if (n == 2) {
            CHECK_OK(sd_tokenizer_decode(t, ids, 1, &out, &nout));
            CHECK(out && strcmp(out, "\xEF\xBF\xBD") == 0, "byte-level partial decode: '%s'", out ? out : "");
            free(out);
            CHECK_OK(sd_tokenizer_decode(t, ids, 2, &out, &nout));
            CHECK(out && strcmp(out, woman) == 0, "byte-level decode: '%s'", out ? out : "");
            free(out);
        }
        free(ids);
    }
    sd_tokenizer_free(t);
}

/* Writes text to a temporary tokenizer.json and expects SD_ERR_INPUT naming want. */
static void expect_bad(const char *json, const char *want) {
    char path[] = "/tmp/sd_tok_bad_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) { CHECK(0, "mkstemp"); return; }
    if (write(fd, json, strlen(json)) != (ssize_t)strlen(json)) CHECK(0, "write");
    close(fd);
    sd_tokenizer *t = NULL;
    int rc = sd_tokenizer_load(path, &t);
    CHECK(rc == SD_ERR_INPUT && t == NULL && strstr(sd_errmsg(), want) && strstr(sd_errmsg(), path),
          "bad tokenizer (%s): rc %d: %s", want, rc, sd_errmsg());
    sd_tokenizer_free(t);
    unlink(path);
}

static void check_bad_files(void) {
    expect_bad("{not json", "not valid JSON");
    expect_bad("{\"added_tokens\": []}", "model");
    expect_bad("{\"model\": {\"type\": \"BPE\", \"merges\": []}}", "model.vocab");
    expect_bad("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", "model.merges");
    expect_bad("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", "WordPiece");
    expect_bad("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "Unigram");
    expect_bad("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}", "model.merges[0]");
    expect_bad("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
               " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+\"}, \"behavior\": \"Isolated\"}}",
               "pre_tokenizer");
}

/* Merges as "a b" strings (older files) load and encode like lists. */
static void check_string_merges(void) {
    const char *json = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"c\": 3, \"abc\": 4},"
                       " \"merges\": [\"a b\", \"ab c\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"use_regex\": false}}";
    char path[] = "/tmp/sd_tok_str_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return;
    if (write(fd, json, strlen(json)) != (ssize_t)strlen(json)) CHECK(0, "write");
    close(fd);
    sd_tokenizer *t = NULL;
    CHECK_OK(sd_tokenizer_load(path, &t));
    if (t) {
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK_OK(sd_tokenizer_encode(t, "abcab", 5, &ids, &n));
        CHECK(n == 2 && ids && ids[0] == 4 && ids[1] == 2, "string merges: %zu ids", n);
        free(ids);
    }
    sd_tokenizer_free(t);
    unlink(path);
}

int main(void) {
    check_expected("tok512");
    check_expected("llama2");
    check_expected("gpt2");
    check_stories260k();
    check_specials();
    check_decode_invalid();
    check_bad_files();
    check_string_merges();
    return test_summary("test_tokenizer");
}
