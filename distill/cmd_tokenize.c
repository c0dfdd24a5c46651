/* `ssdistill encode` (JSON strings on stdin -> JSON id arrays on stdout) and
 * `ssdistill tokenize` (a text or JSONL corpus -> a token shard, EOS after each document). */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/pretokenize.h"
#include "convert/shard.h"
#include "convert/tokenizer.h"
#include "distill/commands.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* ---- encode ----------------------------------------------------------------------------- */

static int write_ids(FILE *f, const int32_t *ids, size_t n) {
    fputc('[', f);
    for (size_t i = 0; i < n; i++) fprintf(f, i ? ",%d" : "%d", ids[i]);
    fputs("]\n", f);
    return ferror(f) ? sd_fail(SD_ERR_SYS, "stdout: write failed") : SD_OK;
}

/* One stdin line: a JSON string, encoded and printed. */
static int encode_line(const sd_tokenizer *tok, const char *line, size_t n, long lineno) {
    while (n && is_space(line[n - 1])) n--;
    size_t i = 0;
    while (i < n && is_space(line[i])) i++;
    char *text;
    size_t len, end;
    if (i >= n || line[i] != '"') return sd_fail(SD_ERR_INPUT, "stdin line %ld: expected a JSON string", lineno);
    int rc = sd_json_string(line + i, n - i, &text, &len, &end);
    if (rc) return sd_error_prefix(rc, "stdin line %ld", lineno);
    if (i + end != n) {
        free(text);
        return sd_fail(SD_ERR_INPUT, "stdin line %ld: text after the JSON string", lineno);
    }
    int32_t *ids;
    size_t nids;
    rc = sd_tokenizer_encode(tok, text, len, &ids, &nids);
    free(text);
    if (rc) return sd_error_prefix(rc, "stdin line %ld", lineno);
    rc = write_ids(stdout, ids, nids);
    free(ids);
    return rc;
}

int cmd_encode(int argc, char **argv) {
    static const char *const with_value[] = {"--tokenizer", NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, NULL));
    const char *path = sd_arg_value(argc, argv, "--tokenizer");
    if (!path) return sd_fail(SD_ERR_INPUT, "encode: --tokenizer PATH is required");
    sd_tokenizer *tok;
    SD_TRY(sd_tokenizer_load(path, &tok));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    int rc = SD_OK;
    while (rc == SD_OK && (n = getline(&line, &cap, stdin)) >= 0) rc = encode_line(tok, line, (size_t)n, ++lineno);
    free(line);
    sd_tokenizer_free(tok);
    if (rc == SD_OK && fflush(stdout) != 0) rc = sd_fail(SD_ERR_SYS, "stdout: write failed");
    return rc;
}

/* ---- tokenize --------------------------------------------------------------------------- */

typedef struct {
    const sd_tokenizer *tok;
    const char *in;
    uint32_t *tokens;
    int64_t n, cap;
    long docs;
    int eos;
    /* progress */
    int progress;
    size_t total;
    double t0, last;
} tok_job;

static int push_tokens(tok_job *j, const int32_t *ids, size_t n) {
    if (j->n + (int64_t)n + 1 > j->cap) {
        int64_t cap = (j->n + (int64_t)n + 1) * 2;
        uint32_t *p = sd_realloc(j->tokens, (size_t)cap * sizeof *p, "token buffer");
        if (!p) return SD_ERR_SYS;
        j->tokens = p;
        j->cap = cap;
    }
    for (size_t i = 0; i < n; i++) j->tokens[j->n++] = (uint32_t)ids[i];
    j->tokens[j->n++] = (uint32_t)j->eos;
    return SD_OK;
}

static int add_doc(tok_job *j, const char *text, size_t len, size_t offset) {
    int32_t *ids;
    size_t n;
    int rc = sd_tokenizer_encode(j->tok, text, len, &ids, &n);
    if (rc) return sd_error_prefix(rc, "%s: document at byte offset %zu", j->in, offset);
    rc = push_tokens(j, ids, n);
    free(ids);
    j->docs++;
    return rc;
}

static void show_progress(tok_job *j, size_t done, int final) {
    if (!j->progress) return;
    double t = now_s();
    if (!final && t - j->last < 0.25) return;
    j->last = t;
    double mb = (double)done / 1e6, rate = mb / (t - j->t0 + 1e-9);
    double eta = rate > 0 ? ((double)j->total / 1e6 - mb) / rate : 0;
    fprintf(stderr, "\rtokenize: %.1f / %.1f MB, %.1f MB/s, ETA %.0f s   ", mb, (double)j->total / 1e6, rate, eta);
    if (final) fputc('\n', stderr);
}

/* Plain text: documents are separated by one or more empty lines. */
static int tokenize_text(tok_job *j, const char *s, size_t len) {
    size_t i = 0, doc = 0, doc_end = 0;
    int in_doc = 0;
    while (i < len) {
        const char *nl = memchr(s + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - s) : len;
        size_t content = e;
        if (content > i && s[content - 1] == '\r') content--; /* CRLF files */
        if (content == i) { /* an empty line ends the document */
            if (in_doc) SD_TRY(add_doc(j, s + doc, doc_end - doc, doc));
            in_doc = 0;
        } else {
            if (!in_doc) doc = i;
            in_doc = 1;
            doc_end = e;
        }
        i = e + 1;
        show_progress(j, i < len ? i : len, 0);
    }
    if (in_doc) SD_TRY(add_doc(j, s + doc, doc_end - doc, doc));
    return SD_OK;
}

static size_t skip_ws(const char *s, size_t i, size_t n) {
    while (i < n && is_space(s[i])) i++;
    return i;
}

/* End of the JSON value at s[i] of an already validated document. */
static size_t skip_value(const char *s, size_t i, size_t n) {
    int depth = 0;
    do {
        if (s[i] == '"') {
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\') i++;
            i++;
        } else if (s[i] == '{' || s[i] == '[') {
            depth++;
            i++;
        } else if (s[i] == '}' || s[i] == ']') {
            depth--;
            i++;
        } else {
            while (i < n && !is_space(s[i]) && s[i] != ',' && s[i] != '}' && s[i] != ']') i++;
        }
        if (depth) while (i < n && (is_space(s[i]) || s[i] == ',' || s[i] == ':')) i++;
    } while (depth > 0 && i < n);
    return i;
}

/* The "text" member of the validated JSON object line, decoded exactly (cJSON would cut
 * the string at an escaped U+0000). 0 when absent or not a string. */
static int raw_text_member(const char *s, size_t n, char **text, size_t *len) {
    size_t i = skip_ws(s, 0, n);
    if (i >= n || s[i] != '{') return 0;
    for (i = skip_ws(s, i + 1, n); i < n && s[i] == '"';) {
        char *key;
        size_t klen, end;
        if (sd_json_string(s + i, n - i, &key, &klen, &end) != SD_OK) return 0;
        int is_text = klen == 4 && memcmp(key, "text", 4) == 0;
        free(key);
        i = skip_ws(s, i + end, n);
        if (i >= n || s[i] != ':') return 0;
        i = skip_ws(s, i + 1, n);
        if (is_text) return i < n && s[i] == '"' && sd_json_string(s + i, n - i, text, len, &end) == SD_OK;
        i = skip_ws(s, skip_value(s, i, n), n);
        if (i < n && s[i] == ',') i = skip_ws(s, i + 1, n);
    }
    return 0;
}

/* JSONL: one object per line with a "text" string; empty lines are skipped. */
static int tokenize_jsonl(tok_job *j, const char *s, size_t len) {
    long lineno = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(s + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - s) : len;
        lineno++;
        size_t a = i;
        while (a < e && is_space(s[a])) a++;
        if (a < e) {
            cJSON *obj = cJSON_ParseWithLength(s + a, e - a); /* validates the line */
            int valid = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(obj, "text"));
            cJSON_Delete(obj);
            char *text = NULL;
            size_t tlen = 0;
            if (!valid || !raw_text_member(s + a, e - a, &text, &tlen))
                return sd_fail(SD_ERR_INPUT, "%s line %ld: expected a JSON object with a \"text\" string", j->in, lineno);
            int rc = add_doc(j, text, tlen, i);
            free(text);
            SD_TRY(rc);
        }
        i = e + 1;
        show_progress(j, i < len ? i : len, 0);
    }
    return SD_OK;
}

static int is_jsonl(const char *path, const char *s, size_t len) {
    size_t pl = strlen(path);
    if (pl >= 6 && strcmp(path + pl - 6, ".jsonl") == 0) return 1;
    size_t i = 0;
    while (i < len && is_space(s[i])) i++;
    return i < len && s[i] == '{';
}

static int run_tokenize(tok_job *j, const char *out, long vocab_arg) {
    sd_mmap m;
    SD_TRY(sd_mmap_open(j->in, &m));
    const char *s = (const char *)m.data;
    /* validate the whole input first, so that bad input never leaves a shard behind */
    size_t bad = sd_utf8_check(m.data, m.len);
    int rc = SD_OK;
    if (bad < m.len) rc = sd_fail(SD_ERR_INPUT, "%s: invalid UTF-8 at byte offset %zu", j->in, bad);
    j->total = m.len;
    j->progress = m.len > (8u << 20) || isatty(2);
    j->t0 = j->last = now_s();
    if (rc == SD_OK) rc = is_jsonl(j->in, s, m.len) ? tokenize_jsonl(j, s, m.len) : tokenize_text(j, s, m.len);
    show_progress(j, m.len, 1);
    double secs = now_s() - j->t0;
    int vocab = vocab_arg > 0 ? (int)vocab_arg : sd_tokenizer_vocab_size(j->tok);
    if (rc == SD_OK) rc = sd_shard_write(out, j->tokens, j->n, vocab, j->eos);
    if (rc == SD_OK)
        printf("tokenize: %ld documents, %lld tokens, %.2f MB in %.2f s (%.1f MB/s) -> %s\n", j->docs, (long long)j->n,
               (double)m.len / 1e6, secs, (double)m.len / 1e6 / (secs + 1e-9), out);
    sd_mmap_close(&m);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    static const char *const with_value[] = {"--tokenizer", "--in", "--out", "--vocab-size", NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, NULL));
    const char *tpath = sd_arg_value(argc, argv, "--tokenizer"), *in = sd_arg_value(argc, argv, "--in");
    const char *out = sd_arg_value(argc, argv, "--out");
    if (!tpath || !in || !out) return sd_fail(SD_ERR_INPUT, "tokenize: --tokenizer, --in and --out are required");
    long vocab_arg;
    SD_TRY(sd_arg_int(argc, argv, "--vocab-size", 0, &vocab_arg));
    sd_tokenizer *tok;
    SD_TRY(sd_tokenizer_load(tpath, &tok));
    int rc = SD_OK;
    if (vocab_arg && (vocab_arg < sd_tokenizer_vocab_size(tok) || vocab_arg > INT32_MAX))
        rc = sd_fail(SD_ERR_INPUT, "--vocab-size %ld is smaller than the tokenizer's vocabulary (%d)", vocab_arg, sd_tokenizer_vocab_size(tok));
    if (rc == SD_OK && sd_tokenizer_eos(tok) < 0) rc = sd_fail(SD_ERR_INPUT, "%s: the tokenizer has no EOS token", tpath);
    tok_job j = {.tok = tok, .in = in, .eos = sd_tokenizer_eos(tok)};
    if (rc == SD_OK) rc = run_tokenize(&j, out, vocab_arg);
    free(j.tokens);
    sd_tokenizer_free(tok);
    return rc;
}
