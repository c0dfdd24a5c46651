/* Hugging Face tokenizer.json (BPE) in C: loading, encoding, decoding; see tokenizer.h.
 * Ids equal those of the tokenizers library for SentencePiece-style and byte-level BPE. */
#include "convert/tokenizer.h"
#include "common/error.h"
#include "common/fileio.h"
#include "convert/pretokenize.h"

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- hash maps ------------------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix for the low bits */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

/* String -> id, open addressing; keys point into the tokenizer's string arena. */
typedef struct {
    uint32_t *slot; /* 1 + index into the token table, 0 empty */
    size_t mask;
} strmap;

/* Merge (left id, right id) -> rank and merged id. */
typedef struct {
    uint64_t key; /* left << 32 | right, UINT64_MAX empty */
    int32_t rank, new_id;
} merge_entry;

typedef struct {
    merge_entry *e;
    size_t mask;
} mergemap;

static inline size_t hash_pair(uint64_t k) { return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 17); }

static inline const merge_entry *merge_find(const mergemap *m, int32_t a, int32_t b) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = hash_pair(k) & m->mask;; i = (i + 1) & m->mask) {
        if (m->e[i].key == k) return &m->e[i];
        if (m->e[i].key == UINT64_MAX) return NULL;
    }
}

/* ---- the tokenizer -------------------------------------------------------------------- */

enum { DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_BYTELEVEL };

typedef struct {
    int type;
    char *pattern, *content; /* Replace */
    int start, stop;         /* Strip: counts of content characters */
} dec_step;

typedef struct {
    char *content;
    size_t len;
    int id, lstrip, rstrip, single_word;
} added_token;

struct sd_tokenizer {
    char *path;
    uint64_t serial; /* identifies this tokenizer to the per-thread word cache */
    int byte_level;  /* ByteLevel pre-tokenizer and decoder alphabet */
    int pre;         /* SD_PRE_* */
    int add_prefix_space;
    int norm_prepend, norm_replace; /* SentencePiece normalizer: Prepend("▁"), Replace(" ") */
    /* model vocabulary: id -> string (arena), string -> id */
    int nids;
    char **tok_str;
    uint32_t *tok_len;
    strmap vocab;
    mergemap merges;
    int unk_id, byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_tok[256];  /* <0xNN> ids, -1 when missing */
    int32_t bl_byte[256];   /* byte-level: id of the byte's unicode character */
    uint32_t b2u[256];      /* GPT-2 bytes_to_unicode */
    int16_t u2b[512];       /* its inverse, -1 outside the alphabet */
    int32_t *bmp_id;        /* SentencePiece: id of each BMP character, -1 not in vocab */
    int sp_chunks;          /* no token has ▁ after another character: see encode_sp */
    added_token *added;
    int nadded;
    uint8_t added_first[256];
    dec_step *dec;
    int ndec, has_decoder;
    int bos, eos, vocab_size;
    sd_uclass_table cls;
};

static atomic_ullong g_serial = 1;

/* ---- loading -------------------------------------------------------------------------- */

static int strmap_find(const sd_tokenizer *t, const char *s, size_t n) {
    const strmap *m = &t->vocab;
    for (size_t i = hash_bytes(s, n) & m->mask;; i = (i + 1) & m->mask) {
        uint32_t v = m->slot[i];
        if (!v) return -1;
        int id = (int)v - 1;
        if (t->tok_len[id] == n && memcmp(t->tok_str[id], s, n) == 0) return id;
    }
}

static void strmap_insert(sd_tokenizer *t, int id) {
    strmap *m = &t->vocab;
    for (size_t i = hash_bytes(t->tok_str[id], t->tok_len[id]) & m->mask;; i = (i + 1) & m->mask)
        if (!m->slot[i]) { m->slot[i] = (uint32_t)id + 1; return; }
}

static size_t pow2_above(size_t n) {
    size_t c = 16;
    while (c < n * 2) c <<= 1;
    return c;
}

static int load_vocab(sd_tokenizer *t, const cJSON *vocab, const cJSON *added) {
    const char *f = t->path;
    if (!cJSON_IsObject(vocab)) return sd_fail(SD_ERR_INPUT, "%s: field model.vocab: missing or not an object", f);
    int maxid = -1;
    for (const cJSON *v = vocab->child; v; v = v->next) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e8)
            return sd_fail(SD_ERR_INPUT, "%s: field model.vocab: token '%s' has no valid id", f, v->string);
        if (v->valueint > maxid) maxid = v->valueint;
    }
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        if (cJSON_IsNumber(id) && id->valueint > maxid && id->valueint < 100000000) maxid = id->valueint;
    }
    t->nids = maxid + 1;
    t->tok_str = sd_calloc((size_t)t->nids + 1, sizeof(char *), "tokenizer strings");
    t->tok_len = sd_calloc((size_t)t->nids + 1, sizeof(uint32_t), "tokenizer strings");
    t->vocab.mask = pow2_above((size_t)t->nids) - 1;
    t->vocab.slot = sd_calloc(t->vocab.mask + 1, sizeof(uint32_t), "tokenizer vocabulary");
    if (!t->tok_str || !t->tok_len || !t->vocab.slot) return SD_ERR_SYS;
    for (const cJSON *v = vocab->child; v; v = v->next) {
        int id = v->valueint;
        if (t->tok_str[id]) return sd_fail(SD_ERR_INPUT, "%s: field model.vocab: id %d used twice", f, id);
        t->tok_str[id] = sd_strdup(v->string, "tokenizer vocabulary");
        if (!t->tok_str[id]) return SD_ERR_SYS;
        t->tok_len[id] = (uint32_t)strlen(v->string);
        strmap_insert(t, id);
    }
    return SD_OK;
}

static int merge_insert(sd_tokenizer *t, const char *a, size_t na, const char *b, size_t nb, int rank) {
    int ia = strmap_find(t, a, na), ib = strmap_find(t, b, nb);
    char *ab = sd_malloc(na + nb + 1, "merge");
    if (!ab) return SD_ERR_SYS;
    memcpy(ab, a, na);
    memcpy(ab + na, b, nb);
    int iab = strmap_find(t, ab, na + nb);
    free(ab);
    if (ia < 0 || ib < 0 || iab < 0)
        return sd_fail(SD_ERR_INPUT, "%s: field model.merges[%d]: '%.*s' + '%.*s' uses a token not in the vocabulary",
                       t->path, rank, (int)na, a, (int)nb, b);
    uint64_t k = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
    mergemap *m = &t->merges;
    for (size_t i = hash_pair(k) & m->mask;; i = (i + 1) & m->mask) {
        if (m->e[i].key == k) return SD_OK; /* duplicate merge: the first (lowest rank) wins */
        if (m->e[i].key == UINT64_MAX) {
            m->e[i] = (merge_entry){k, rank, iab};
            return SD_OK;
        }
    }
}

static int load_merges(sd_tokenizer *t, const cJSON *merges) {
    if (!cJSON_IsArray(merges)) return sd_fail(SD_ERR_INPUT, "%s: field model.merges: missing or not an array", t->path);
    size_t n = (size_t)cJSON_GetArraySize(merges);
    t->merges.mask = pow2_above(n) - 1;
    t->merges.e = sd_malloc((t->merges.mask + 1) * sizeof(merge_entry), "merges");
    if (!t->merges.e) return SD_ERR_SYS;
    for (size_t i = 0; i <= t->merges.mask; i++) t->merges.e[i].key = UINT64_MAX;
    int rank = 0;
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        if (cJSON_IsString(m)) { /* older files: "a b" */
            const char *s = m->valuestring, *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return sd_fail(SD_ERR_INPUT, "%s: field model.merges[%d]: expected \"a b\", got \"%s\"", t->path, rank, s);
            SD_TRY(merge_insert(t, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), rank));
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            const char *a = m->child->valuestring, *b = m->child->next->valuestring;
            SD_TRY(merge_insert(t, a, strlen(a), b, strlen(b), rank));
        } else {
            return sd_fail(SD_ERR_INPUT, "%s: field model.merges[%d]: expected [\"a\", \"b\"] or \"a b\"", t->path, rank);
        }
    }
    return SD_OK;
}

static int json_bool(const cJSON *o, const char *name, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

static int load_added(sd_tokenizer *t, const cJSON *added) {
    if (!added || cJSON_IsNull(added)) return SD_OK;
    if (!cJSON_IsArray(added)) return sd_fail(SD_ERR_INPUT, "%s: field added_tokens: not an array", t->path);
    int n = cJSON_GetArraySize(added);
    t->added = sd_calloc((size_t)n + 1, sizeof(added_token), "added tokens");
    if (!t->added) return SD_ERR_SYS;
    int i = 0;
    for (const cJSON *a = added->child; a; a = a->next, i++) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content");
        if (!cJSON_IsNumber(id) || id->valueint < 0 || id->valueint >= t->nids || !cJSON_IsString(c) || !*c->valuestring)
            return sd_fail(SD_ERR_INPUT, "%s: field added_tokens[%d]: needs an id and a non-empty content", t->path, i);
        added_token *at = &t->added[t->nadded++];
        at->content = sd_strdup(c->valuestring, "added token");
        if (!at->content) return SD_ERR_SYS;
        at->len = strlen(at->content);
        at->id = id->valueint;
        at->lstrip = json_bool(a, "lstrip", 0);
        at->rstrip = json_bool(a, "rstrip", 0);
        at->single_word = json_bool(a, "single_word", 0);
        t->added_first[(unsigned char)at->content[0]] = 1;
        if (!t->tok_str[at->id]) { /* an added token outside the model vocabulary */
            t->tok_str[at->id] = sd_strdup(at->content, "added token");
            if (!t->tok_str[at->id]) return SD_ERR_SYS;
            t->tok_len[at->id] = (uint32_t)at->len;
        }
    }
    return SD_OK;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to 256+. */
static uint32_t byte_to_unicode(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
    return 256u + (uint32_t)n;
}

static void init_byte_tables(sd_tokenizer *t) {
    for (int k = 0; k < 512; k++) t->u2b[k] = -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_tok[b] = strmap_find(t, name, 6);
        char u[4];
        t->b2u[b] = byte_to_unicode(b);
        t->u2b[t->b2u[b]] = (int16_t)b;
        int n = sd_utf8_encode(t->b2u[b], u);
        t->bl_byte[b] = strmap_find(t, u, (size_t)n);
    }
}

static int init_bmp_ids(sd_tokenizer *t) {
    t->bmp_id = sd_malloc(65536 * sizeof(int32_t), "character ids");
    if (!t->bmp_id) return SD_ERR_SYS;
    for (uint32_t cp = 0; cp < 65536; cp++) {
        char u[4];
        int n = sd_utf8_encode(cp, u);
        t->bmp_id[cp] = (cp >= 0xD800 && cp <= 0xDFFF) ? -1 : strmap_find(t, u, (size_t)n);
    }
    return SD_OK;
}

/* Whether some token has ▁ after a character other than ▁ (e.g. "a▁b"). */
static int meta_inside(const sd_tokenizer *t) {
    for (int id = 0; id < t->nids; id++) {
        const char *p = t->tok_str[id];
        size_t n = t->tok_len[id], i = 0;
        if (!p) continue;
        while (i + 3 <= n && memcmp(p + i, "\xE2\x96\x81", 3) == 0) i += 3;
        for (; i + 3 <= n; i++)
            if (memcmp(p + i, "\xE2\x96\x81", 3) == 0) return 1;
    }
    return 0;
}

static const char *type_of(const cJSON *o) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : "";
}

static const char *string_pattern(const cJSON *o) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "String");
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

static const char *json_str(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Normalizers: Prepend("▁") and Replace(" " -> "▁") (the SentencePiece pair), NFC as a
 * pass-through (inputs are assumed NFC already), or none. */
static int load_normalizer_one(sd_tokenizer *t, const cJSON *n) {
    const char *ty = type_of(n);
    if (strcmp(ty, "Prepend") == 0 && json_str(n, "prepend") && strcmp(json_str(n, "prepend"), "\xE2\x96\x81") == 0) {
        t->norm_prepend = 1;
    } else if (strcmp(ty, "Replace") == 0 && string_pattern(n) && strcmp(string_pattern(n), " ") == 0 &&
               json_str(n, "content") && strcmp(json_str(n, "content"), "\xE2\x96\x81") == 0) {
        t->norm_replace = 1;
    } else if (strcmp(ty, "NFC") != 0) {
        return sd_fail(SD_ERR_INPUT, "%s: field normalizer: unsupported normalizer '%s'", t->path, ty);
    }
    return SD_OK;
}

static int load_normalizer(sd_tokenizer *t, const cJSON *n) {
    if (!n || cJSON_IsNull(n)) return SD_OK;
    if (strcmp(type_of(n), "Sequence") != 0) return load_normalizer_one(t, n);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
    for (const cJSON *x = list ? list->child : NULL; x; x = x->next) SD_TRY(load_normalizer_one(t, x));
    return SD_OK;
}

static const char PAT_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char PAT_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char PAT_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int load_split(sd_tokenizer *t, const cJSON *s) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(s, "pattern");
    const char *re = json_str(p, "Regex");
    const char *beh = json_str(s, "behavior");
    if (!re || !beh || strcmp(beh, "Isolated") != 0 || json_bool(s, "invert", 0))
        return sd_fail(SD_ERR_INPUT, "%s: field pre_tokenizer: only Split(Regex, Isolated) is supported", t->path);
    if (strcmp(re, PAT_GPT2) == 0) t->pre = SD_PRE_GPT2;
    else if (strcmp(re, PAT_LLAMA3) == 0) t->pre = SD_PRE_LLAMA3;
    else if (strcmp(re, PAT_QWEN2) == 0) t->pre = SD_PRE_QWEN2;
    else return sd_fail(SD_ERR_INPUT, "%s: field pre_tokenizer: unknown Split regex '%.60s'", t->path, re);
    return SD_OK;
}

static int load_pretokenizer(sd_tokenizer *t, const cJSON *p) {
    if (!p || cJSON_IsNull(p)) return SD_OK;
    const char *ty = type_of(p);
    if (strcmp(ty, "ByteLevel") == 0) {
        t->byte_level = 1;
        t->add_prefix_space = json_bool(p, "add_prefix_space", 0);
        if (json_bool(p, "use_regex", 1) && t->pre == SD_PRE_NONE) t->pre = SD_PRE_GPT2;
        return SD_OK;
    }
    if (strcmp(ty, "Split") == 0) return load_split(t, p);
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        for (const cJSON *x = list ? list->child : NULL; x; x = x->next) SD_TRY(load_pretokenizer(t, x));
        return SD_OK;
    }
    return sd_fail(SD_ERR_INPUT, "%s: field pre_tokenizer: unsupported pre-tokenizer '%s'", t->path, ty);
}

static int add_dec(sd_tokenizer *t, dec_step st) {
    dec_step *d = sd_realloc(t->dec, (size_t)(t->ndec + 1) * sizeof *d, "decoder");
    if (!d) return SD_ERR_SYS;
    t->dec = d;
    t->dec[t->ndec++] = st;
    return SD_OK;
}

static int load_decoder(sd_tokenizer *t, const cJSON *d) {
    if (!d || cJSON_IsNull(d)) return SD_OK;
    t->has_decoder = 1;
    const char *ty = type_of(d);
    dec_step st = {0};
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        for (const cJSON *x = list ? list->child : NULL; x; x = x->next) SD_TRY(load_decoder(t, x));
        return SD_OK;
    } else if (strcmp(ty, "Replace") == 0 && string_pattern(d) && json_str(d, "content")) {
        st.type = DEC_REPLACE;
        st.pattern = sd_strdup(string_pattern(d), "decoder");
        st.content = sd_strdup(json_str(d, "content"), "decoder");
        if (!st.pattern || !st.content) { free(st.pattern); free(st.content); return SD_ERR_SYS; }
        if (!*st.pattern) { free(st.pattern); free(st.content); return sd_fail(SD_ERR_INPUT, "%s: field decoder: empty Replace pattern", t->path); }
    } else if (strcmp(ty, "ByteFallback") == 0) {
        st.type = DEC_BYTEFALLBACK;
    } else if (strcmp(ty, "Fuse") == 0) {
        st.type = DEC_FUSE;
    } else if (strcmp(ty, "Strip") == 0 && json_str(d, "content")) {
        st.type = DEC_STRIP;
        st.content = sd_strdup(json_str(d, "content"), "decoder");
        if (!st.content) return SD_ERR_SYS;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(d, "start"), *b = cJSON_GetObjectItemCaseSensitive(d, "stop");
        st.start = cJSON_IsNumber(a) ? a->valueint : 0;
        st.stop = cJSON_IsNumber(b) ? b->valueint : 0;
    } else if (strcmp(ty, "ByteLevel") == 0) {
        st.type = DEC_BYTELEVEL;
    } else {
        return sd_fail(SD_ERR_INPUT, "%s: field decoder: unsupported decoder '%s'", t->path, ty);
    }
    int rc = add_dec(t, st);
    if (rc) { free(st.pattern); free(st.content); }
    return rc;
}

static int load_model(sd_tokenizer *t, const cJSON *root) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return sd_fail(SD_ERR_INPUT, "%s: field model: missing or not an object", t->path);
    const char *ty = json_str(model, "type");
    if (ty && strcmp(ty, "BPE") != 0)
        return sd_fail(SD_ERR_INPUT, "%s: field model.type: unsupported model '%s' (only BPE)", t->path, ty);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    SD_TRY(load_vocab(t, cJSON_GetObjectItemCaseSensitive(model, "vocab"), cJSON_IsArray(added) ? added : NULL));
    SD_TRY(load_merges(t, cJSON_GetObjectItemCaseSensitive(model, "merges")));
    const cJSON *cs = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
    const cJSON *ew = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
    if ((cJSON_IsString(cs) && *cs->valuestring) || (cJSON_IsString(ew) && *ew->valuestring))
        return sd_fail(SD_ERR_INPUT, "%s: field model: continuing_subword_prefix / end_of_word_suffix are not supported", t->path);
    const char *unk = json_str(model, "unk_token");
    t->unk_id = unk ? strmap_find(t, unk, strlen(unk)) : -1;
    t->byte_fallback = json_bool(model, "byte_fallback", 0);
    t->fuse_unk = json_bool(model, "fuse_unk", 0);
    t->ignore_merges = json_bool(model, "ignore_merges", 0);
    SD_TRY(load_added(t, added));
    return SD_OK;
}

/* bos_token / eos_token of tokenizer_config.json beside the file: a string or {content}. */
static int config_token(const sd_tokenizer *t, const cJSON *cfg, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, name);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? sd_tokenizer_token_id(t, v->valuestring) : -1;
}

static void load_bos_eos(sd_tokenizer *t) {
    t->bos = t->eos = -1;
    char *dir = sd_strdup(t->path, "path"), *data = NULL;
    size_t len;
    if (!dir) { sd_error_clear(); return; }
    char *slash = strrchr(dir, '/');
    char *cfgpath = slash ? (*slash = 0, sd_path_join(dir, "tokenizer_config.json")) : sd_strdup("tokenizer_config.json", "path");
    if (cfgpath && sd_file_exists(cfgpath) && sd_read_file(cfgpath, &data, &len) == SD_OK) {
        cJSON *cfg = cJSON_Parse(data);
        if (cfg) {
            t->bos = config_token(t, cfg, "bos_token");
            t->eos = config_token(t, cfg, "eos_token");
            cJSON_Delete(cfg);
        }
    }
    sd_error_clear();
    free(data);
    free(cfgpath);
    free(dir);
    if (t->bos < 0) t->bos = sd_tokenizer_token_id(t, "<s>");
    if (t->bos < 0) t->bos = sd_tokenizer_token_id(t, "<|endoftext|>");
    if (t->eos < 0) t->eos = sd_tokenizer_token_id(t, "</s>");
    if (t->eos < 0) t->eos = sd_tokenizer_token_id(t, "<|endoftext|>");
}

/* Longest added tokens first, so that the first match at a position is the longest. */
static int added_cmp(const void *a, const void *b) {
    size_t la = ((const added_token *)a)->len, lb = ((const added_token *)b)->len;
    return la < lb ? 1 : la > lb ? -1 : 0;
}

static int load_json(sd_tokenizer *t, const cJSON *root) {
    SD_TRY(load_model(t, root));
    SD_TRY(load_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer")));
    SD_TRY(load_pretokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")));
    SD_TRY(load_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder")));
    if (t->nadded > 1) qsort(t->added, (size_t)t->nadded, sizeof *t->added, added_cmp);
    init_byte_tables(t);
    if (!t->byte_level) SD_TRY(init_bmp_ids(t));
    t->sp_chunks = !t->byte_level && t->bmp_id[0x2581] >= 0 && !meta_inside(t);
    sd_uclass_init(&t->cls);
    t->vocab_size = t->nids;
    load_bos_eos(t);
    return SD_OK;
}

int sd_tokenizer_load(const char *path, sd_tokenizer **out) {
    *out = NULL;
    char *data;
    size_t len;
    SD_TRY(sd_read_file(path, &data, &len));
    cJSON *root = cJSON_ParseWithLength(data, len);
    free(data);
    if (!root) return sd_fail(SD_ERR_INPUT, "%s: not valid JSON", path);
    int rc = SD_ERR_SYS;
    sd_tokenizer *t = sd_calloc(1, sizeof *t, "tokenizer");
    if (t) {
        t->serial = atomic_fetch_add(&g_serial, 1);
        t->path = sd_strdup(path, "tokenizer path");
        rc = t->path ? load_json(t, root) : SD_ERR_SYS;
    }
    cJSON_Delete(root);
    if (rc != SD_OK) {
        sd_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return SD_OK;
}

static void word_cache_release(uint64_t serial);

void sd_tokenizer_free(sd_tokenizer *t) {
    if (!t) return;
    word_cache_release(t->serial);
    for (int i = 0; i < t->nids; i++) free(t->tok_str[i]);
    for (int i = 0; i < t->nadded; i++) free(t->added[i].content);
    for (int i = 0; i < t->ndec; i++) { free(t->dec[i].pattern); free(t->dec[i].content); }
    free(t->tok_str);
    free(t->tok_len);
    free(t->vocab.slot);
    free(t->merges.e);
    free(t->bmp_id);
    free(t->added);
    free(t->dec);
    free(t->path);
    free(t);
}

int sd_tokenizer_vocab_size(const sd_tokenizer *t) { return t->vocab_size; }
int sd_tokenizer_bos(const sd_tokenizer *t) { return t->bos; }
int sd_tokenizer_eos(const sd_tokenizer *t) { return t->eos; }

int sd_tokenizer_token_id(const sd_tokenizer *t, const char *token) {
    for (int i = 0; i < t->nadded; i++)
        if (strcmp(t->added[i].content, token) == 0) return t->added[i].id;
    return strmap_find(t, token, strlen(token));
}

/* ---- encoding ------------------------------------------------------------------------- */

/* Growable id output and the reusable BPE work buffers of one encode call. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
    int32_t *sym, *prev, *next; /* symbols of the word being merged (linked list) */
    size_t sym_cap;
    struct heap_item { uint64_t key; int32_t new_id; } *heap; /* key: rank << 32 | pos */
    size_t heap_n, heap_cap;
    char *norm; /* the normalized segment */
    size_t norm_cap;
} enc_ctx;

static int push_id(enc_ctx *c, int32_t id) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        int32_t *p = sd_realloc(c->ids, cap * sizeof *p, "token ids");
        if (!p) return SD_ERR_SYS;
        c->ids = p;
        c->cap = cap;
    }
    c->ids[c->n++] = id;
    return SD_OK;
}

static int reserve_syms(enc_ctx *c, size_t n) {
    if (n <= c->sym_cap) return SD_OK;
    size_t cap = n < 64 ? 64 : n * 2;
    int32_t *a = sd_realloc(c->sym, cap * sizeof *a, "bpe symbols");
    if (!a) return SD_ERR_SYS;
    c->sym = a;
    int32_t *b = sd_realloc(c->prev, cap * sizeof *b, "bpe symbols");
    if (!b) return SD_ERR_SYS;
    c->prev = b;
    int32_t *d = sd_realloc(c->next, cap * sizeof *d, "bpe symbols");
    if (!d) return SD_ERR_SYS;
    c->next = d;
    struct heap_item *h = sd_realloc(c->heap, cap * 2 * sizeof *h, "bpe queue");
    if (!h) return SD_ERR_SYS;
    c->heap = h;
    c->heap_cap = cap * 2;
    c->sym_cap = cap;
    return SD_OK;
}

static int heap_push(enc_ctx *c, uint64_t key, int32_t new_id) {
    if (c->heap_n == c->heap_cap) {
        struct heap_item *h = sd_realloc(c->heap, c->heap_cap * 2 * sizeof *h, "bpe queue");
        if (!h) return SD_ERR_SYS;
        c->heap = h;
        c->heap_cap *= 2;
    }
    size_t i = c->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (c->heap[p].key <= key) break;
        c->heap[i] = c->heap[p];
        i = p;
    }
    c->heap[i].key = key;
    c->heap[i].new_id = new_id;
    return SD_OK;
}

static struct heap_item heap_pop(enc_ctx *c) {
    struct heap_item top = c->heap[0], last = c->heap[--c->heap_n];
    size_t i = 0, n = c->heap_n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        if (l + 1 < n && c->heap[l + 1].key < c->heap[l].key) l++;
        if (c->heap[l].key >= last.key) break;
        c->heap[i] = c->heap[l];
        i = l;
    }
    if (n) c->heap[i] = last;
    return top;
}

static int queue_pair(const sd_tokenizer *t, enc_ctx *c, int32_t pos) {
    int32_t nx = c->next[pos];
    if (nx < 0) return SD_OK;
    const merge_entry *m = merge_find(&t->merges, c->sym[pos], c->sym[nx]);
    if (!m) return SD_OK;
    return heap_push(c, ((uint64_t)(uint32_t)m->rank << 32) | (uint32_t)pos, m->new_id);
}

/* Merges the n symbols in c->sym by rank (lowest first, leftmost on ties), as the
 * tokenizers library's Word::merge_all does, then appends the survivors to the output. */
static int bpe_merge(const sd_tokenizer *t, enc_ctx *c, int32_t n) {
    if (n == 0) return SD_OK;
    for (int32_t i = 0; i < n; i++) {
        c->prev[i] = i - 1;
        c->next[i] = i + 1 < n ? i + 1 : -1;
    }
    c->heap_n = 0;
    for (int32_t i = 0; i + 1 < n; i++) SD_TRY(queue_pair(t, c, i));
    while (c->heap_n) {
        struct heap_item top = heap_pop(c);
        int32_t pos = (int32_t)(top.key & 0xFFFFFFFFu);
        if (c->sym[pos] < 0 || c->next[pos] < 0) continue;
        int32_t right = c->next[pos];
        const merge_entry *m = merge_find(&t->merges, c->sym[pos], c->sym[right]);
        if (!m || m->new_id != top.new_id) continue; /* stale entry */
        c->sym[pos] = top.new_id;
        c->sym[right] = -1;
        c->next[pos] = c->next[right];
        if (c->next[right] >= 0) c->prev[c->next[right]] = pos;
        if (c->prev[pos] >= 0) SD_TRY(queue_pair(t, c, c->prev[pos]));
        SD_TRY(queue_pair(t, c, pos));
    }
    for (int32_t i = 0; i >= 0; i = c->next[i]) SD_TRY(push_id(c, c->sym[i]));
    return SD_OK;
}

/* Initial symbol(s) of one character of the SentencePiece word: its vocab id, else its
 * <0xNN> bytes (byte_fallback), else unk (fused with a previous unk when fuse_unk). */
typedef struct {
    int32_t n;
    int32_t unk_pending; /* symbols index of an open unk, -1 none */
} sym_state;

static void add_char(const sd_tokenizer *t, enc_ctx *c, sym_state *st, const char *s, int len, uint32_t cp) {
    int32_t id = cp < 65536 ? t->bmp_id[cp] : strmap_find(t, s, (size_t)len);
    if (id >= 0) {
        st->unk_pending = -1;
        c->sym[st->n++] = id;
        return;
    }
    if (t->byte_fallback) {
        int ok = 1;
        for (int k = 0; k < len; k++) ok &= t->byte_tok[(unsigned char)s[k]] >= 0;
        if (ok) {
            for (int k = 0; k < len; k++) c->sym[st->n++] = t->byte_tok[(unsigned char)s[k]];
            return;
        }
    }
    if (t->unk_id < 0) return; /* no unk token: the character is dropped, as the library does */
    if (t->fuse_unk && st->unk_pending >= 0 && st->unk_pending == st->n - 1) return;
    st->unk_pending = st->n;
    c->sym[st->n++] = t->unk_id;
}

/* ---- per-thread word cache for byte-level BPE ----------------------------------------- */

typedef struct {
    uint64_t serial;
    uint64_t *hash;   /* 0 empty */
    uint32_t *koff, *ioff;
    uint16_t *klen, *ilen;
    size_t mask, used;
    char *keys;
    int32_t *ids;
    size_t keys_n, keys_cap, ids_n, ids_cap;
} word_cache;

static _Thread_local word_cache *tl_cache;

enum { CACHE_SLOTS = 1 << 17, CACHE_KEYS = 2 << 20, CACHE_IDS = 512 << 10, CACHE_MAX_WORD = 64 };

static void cache_free(word_cache *w) {
    if (!w) return;
    free(w->hash); free(w->koff); free(w->ioff); free(w->klen); free(w->ilen);
    free(w->keys); free(w->ids);
    free(w);
}

static void word_cache_release(uint64_t serial) {
    if (tl_cache && tl_cache->serial == serial) {
        cache_free(tl_cache);
        tl_cache = NULL;
    }
}

/* The cache of this thread for tokenizer t, or NULL when memory is short (no caching). */
static word_cache *cache_get(const sd_tokenizer *t) {
    if (tl_cache && tl_cache->serial == t->serial) return tl_cache;
    cache_free(tl_cache);
    tl_cache = NULL;
    word_cache *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->serial = t->serial;
    w->mask = CACHE_SLOTS - 1;
    w->hash = calloc(CACHE_SLOTS, sizeof *w->hash);
    w->koff = malloc(CACHE_SLOTS * sizeof *w->koff);
    w->ioff = malloc(CACHE_SLOTS * sizeof *w->ioff);
    w->klen = malloc(CACHE_SLOTS * sizeof *w->klen);
    w->ilen = malloc(CACHE_SLOTS * sizeof *w->ilen);
    w->keys = malloc(CACHE_KEYS);
    w->ids = malloc(CACHE_IDS * sizeof *w->ids);
    w->keys_cap = CACHE_KEYS;
    w->ids_cap = CACHE_IDS;
    if (!w->hash || !w->koff || !w->ioff || !w->klen || !w->ilen || !w->keys || !w->ids) {
        cache_free(w);
        return NULL;
    }
    tl_cache = w;
    return w;
}

static size_t cache_slot(const word_cache *w, uint64_t h, const unsigned char *s, size_t n) {
    size_t i = (size_t)h & w->mask;
    while (w->hash[i] && !(w->hash[i] == h && w->klen[i] == n && memcmp(w->keys + w->koff[i], s, n) == 0))
        i = (i + 1) & w->mask;
    return i;
}

static void cache_put(word_cache *w, size_t slot, uint64_t h, const unsigned char *s, size_t n,
                      const int32_t *ids, size_t nids) {
    if (w->used * 2 > w->mask || w->keys_n + n > w->keys_cap || w->ids_n + nids > w->ids_cap) {
        memset(w->hash, 0, (w->mask + 1) * sizeof *w->hash); /* full: start over */
        w->used = w->keys_n = w->ids_n = 0;
        slot = (size_t)h & w->mask;
    }
    w->hash[slot] = h;
    w->koff[slot] = (uint32_t)w->keys_n;
    w->klen[slot] = (uint16_t)n;
    w->ioff[slot] = (uint32_t)w->ids_n;
    w->ilen[slot] = (uint16_t)nids;
    memcpy(w->keys + w->keys_n, s, n);
    memcpy(w->ids + w->ids_n, ids, nids * sizeof *ids);
    w->keys_n += n;
    w->ids_n += nids;
    w->used++;
}

/* One word of normalized text: characters -> symbols -> BPE. */
static int encode_sp_word(const sd_tokenizer *t, enc_ctx *c, const unsigned char *s, size_t len) {
    /* a character never gives more symbols than it has bytes (byte fallback) */
    SD_TRY(reserve_syms(c, len + 1));
    sym_state st = {0, -1};
    for (size_t i = 0; i < len;) {
        int n;
        uint32_t cp = s[i] < 0x80 ? (n = 1, s[i]) : sd_utf8_decode(s, i, len, &n);
        add_char(t, c, &st, (const char *)s + i, n, cp);
        i += (size_t)n;
    }
    if (len > INT32_MAX / 2) return sd_fail(SD_ERR_INPUT, "text too long for one BPE word");
    return bpe_merge(t, c, st.n);
}

/* Prepend("▁") (non-empty text) and Replace(" " -> "▁") into c->norm; returns its length. */
static int normalize_sp(const sd_tokenizer *t, enc_ctx *c, const unsigned char *s, size_t len, size_t *out) {
    size_t cap = len * 3 + 4;
    if (cap > c->norm_cap) {
        char *p = sd_realloc(c->norm, cap, "normalized text");
        if (!p) return SD_ERR_SYS;
        c->norm = p;
        c->norm_cap = cap;
    }
    char *o = c->norm;
    if (t->norm_prepend) { memcpy(o, "\xE2\x96\x81", 3); o += 3; }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ' && t->norm_replace) { memcpy(o, "\xE2\x96\x81", 3); o += 3; }
        else *o++ = (char)s[i];
    }
    *out = (size_t)(o - c->norm);
    return SD_OK;
}

static int encode_word_sp_cached(const sd_tokenizer *t, enc_ctx *c, word_cache *w, const unsigned char *s, size_t n);

/* A segment without pre-tokenizer: normalized, then one BPE word, as the library does.
 * When no token has ▁ after another character (true of SentencePiece vocabularies), no
 * symbol can span a "x▁" boundary, so the word splits there into chunks that merge
 * independently to the same result; chunks repeat, so they are cached. */
static int encode_sp(const sd_tokenizer *t, enc_ctx *c, const unsigned char *s, size_t len) {
    if (len == 0) return SD_OK;
    size_t n;
    SD_TRY(normalize_sp(t, c, s, len, &n));
    const unsigned char *u = (const unsigned char *)c->norm;
    if (!t->sp_chunks) return encode_sp_word(t, c, u, n);
    word_cache *w = cache_get(t);
    size_t start = 0;
    for (size_t i = 1; i + 3 <= n; i++) {
        if (u[i] != 0xE2 || u[i + 1] != 0x96 || u[i + 2] != 0x81) continue;
        int after_meta = i >= 3 && u[i - 3] == 0xE2 && u[i - 2] == 0x96 && u[i - 1] == 0x81;
        if (after_meta || i == start) continue;
        SD_TRY(encode_word_sp_cached(t, c, w, u + start, i - start));
        start = i;
        i += 2;
    }
    return encode_word_sp_cached(t, c, w, u + start, n - start);
}

/* Id of the whole pre-token mapped to the GPT-2 alphabet, or -1 (also when out of memory:
 * BPE then runs as usual). */
static int32_t whole_word_id(const sd_tokenizer *t, enc_ctx *c, const unsigned char *s, size_t n) {
    if (c->norm_cap < n * 2 + 1) {
        char *p = realloc(c->norm, n * 2 + 1);
        if (!p) return -1;
        c->norm = p;
        c->norm_cap = n * 2 + 1;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)sd_utf8_encode(t->b2u[s[i]], c->norm + k);
    return strmap_find(t, c->norm, k);
}

/* One pre-token of a byte-level tokenizer: bytes -> GPT-2 alphabet ids -> BPE. */
static int encode_word_bl(const sd_tokenizer *t, enc_ctx *c, word_cache *w, const unsigned char *s, size_t n) {
    uint64_t h = 0;
    size_t slot = 0;
    if (w && n <= CACHE_MAX_WORD) {
        h = hash_bytes((const char *)s, n) | 1;
        slot = cache_slot(w, h, s, n);
        if (w->hash[slot]) {
            for (size_t k = 0; k < w->ilen[slot]; k++) SD_TRY(push_id(c, w->ids[w->ioff[slot] + k]));
            return SD_OK;
        }
    }
    if (t->ignore_merges) { /* Llama-3 style: a pre-token in the vocabulary is one token */
        int32_t id = whole_word_id(t, c, s, n);
        if (id >= 0) return push_id(c, id);
    }
    SD_TRY(reserve_syms(c, n + 1));
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->bl_byte[s[i]];
        if (id < 0) id = t->unk_id;
        if (id >= 0) c->sym[m++] = id;
    }
    size_t start = c->n;
    SD_TRY(bpe_merge(t, c, m));
    if (w && n <= CACHE_MAX_WORD) cache_put(w, slot, h, s, n, c->ids + start, c->n - start);
    return SD_OK;
}

static int encode_word_sp_cached(const sd_tokenizer *t, enc_ctx *c, word_cache *w, const unsigned char *s, size_t n) {
    uint64_t h = 0;
    size_t slot = 0;
    int cacheable = w && n <= CACHE_MAX_WORD;
    if (cacheable) {
        h = hash_bytes((const char *)s, n) | 1;
        slot = cache_slot(w, h, s, n);
        if (w->hash[slot]) {
            for (size_t k = 0; k < w->ilen[slot]; k++) SD_TRY(push_id(c, w->ids[w->ioff[slot] + k]));
            return SD_OK;
        }
    }
    size_t start = c->n;
    SD_TRY(encode_sp_word(t, c, s, n));
    if (cacheable) cache_put(w, slot, h, s, n, c->ids + start, c->n - start);
    return SD_OK;
}

static int encode_bl(const sd_tokenizer *t, enc_ctx *c, const unsigned char *s, size_t len) {
    if (len == 0) return SD_OK;
    word_cache *w = cache_get(t);
    unsigned char *tmp = NULL;
    if (t->add_prefix_space && s[0] != ' ') { /* ByteLevel(add_prefix_space): one leading space */
        tmp = sd_malloc(len + 1, "text");
        if (!tmp) return SD_ERR_SYS;
        tmp[0] = ' ';
        memcpy(tmp + 1, s, len);
        s = tmp;
        len++;
    }
    int rc = SD_OK;
    for (size_t i = 0; i < len && rc == SD_OK;) {
        size_t e = t->pre == SD_PRE_NONE || t->pre == SD_PRE_WHOLE ? len : sd_pretok_next(&t->cls, t->pre, s, i, len);
        rc = encode_word_bl(t, c, w, s + i, e - i);
        i = e;
    }
    free(tmp);
    return rc;
}

static int encode_segment(const sd_tokenizer *t, enc_ctx *c, const unsigned char *s, size_t len) {
    return t->byte_level ? encode_bl(t, c, s, len) : encode_sp(t, c, s, len);
}

static int is_word_char(unsigned char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' || ch >= 0x80;
}

static int is_ws(unsigned char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f'; }

/* The longest added token at s[i], honouring single_word; NULL if none. */
static const added_token *added_at(const sd_tokenizer *t, const unsigned char *s, size_t i, size_t len) {
    if (!t->added_first[s[i]]) return NULL;
    for (int k = 0; k < t->nadded; k++) {
        const added_token *a = &t->added[k];
        if (a->len > len - i || memcmp(s + i, a->content, a->len) != 0) continue;
        if (a->single_word && ((i > 0 && is_word_char(s[i - 1])) || (i + a->len < len && is_word_char(s[i + a->len]))))
            continue;
        return a;
    }
    return NULL;
}

static int encode_text(const sd_tokenizer *t, enc_ctx *c, const unsigned char *s, size_t len) {
    size_t seg = 0; /* start of the pending ordinary segment */
    for (size_t i = 0; i < len;) {
        const added_token *a = t->nadded ? added_at(t, s, i, len) : NULL;
        if (!a) { i++; continue; }
        size_t seg_end = i, next = i + a->len;
        if (a->lstrip) while (seg_end > seg && is_ws(s[seg_end - 1])) seg_end--;
        if (a->rstrip) while (next < len && is_ws(s[next])) next++;
        SD_TRY(encode_segment(t, c, s + seg, seg_end - seg));
        SD_TRY(push_id(c, a->id));
        seg = i = next;
    }
    return encode_segment(t, c, s + seg, len - seg);
}

int sd_tokenizer_encode(const sd_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    if (len == 0) text = ""; /* the empty text may come as NULL */
    size_t bad = sd_utf8_check((const unsigned char *)text, len);
    if (bad < len) return sd_fail(SD_ERR_INPUT, "invalid UTF-8 at byte offset %zu", bad);
    enc_ctx c = {0};
    int rc = encode_text(t, &c, (const unsigned char *)text, len);
    free(c.sym);
    free(c.prev);
    free(c.next);
    free(c.heap);
    free(c.norm);
    if (rc == SD_OK && !c.ids) c.ids = sd_malloc(sizeof(int32_t), "token ids");
    if (rc != SD_OK || !c.ids) {
        free(c.ids);
        return rc ? rc : SD_ERR_SYS;
    }
    *ids = c.ids;
    *n = c.n;
    return SD_OK;
}

/* ---- decoding ------------------------------------------------------------------------- */

/* The decoder chain works on a list of strings, as the library's decode_chain does. */
typedef struct {
    char **s;
    size_t *len;
    size_t n;
} strlist;

static void strlist_free(strlist *l) {
    for (size_t i = 0; i < l->n; i++) free(l->s[i]);
    free(l->s);
    free(l->len);
    l->s = NULL;
    l->len = NULL;
    l->n = 0;
}

static int strlist_init(strlist *l, size_t cap) {
    l->n = 0;
    l->s = sd_calloc(cap + 1, sizeof *l->s, "decode");
    l->len = sd_calloc(cap + 1, sizeof *l->len, "decode");
    return l->s && l->len ? SD_OK : SD_ERR_SYS;
}

static int strlist_add(strlist *l, const char *s, size_t n) {
    char *p = sd_malloc(n + 1, "decode");
    if (!p) return SD_ERR_SYS;
    memcpy(p, s, n);
    p[n] = 0;
    l->s[l->n] = p;
    l->len[l->n++] = n;
    return SD_OK;
}

/* Growable byte buffer. */
typedef struct {
    char *p;
    size_t n, cap;
} buf;

static int buf_add(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *p = sd_realloc(b->p, cap, "decode");
        if (!p) return SD_ERR_SYS;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return SD_OK;
}

static int dec_replace(strlist *l, const dec_step *d) {
    size_t pl = strlen(d->pattern), cl = strlen(d->content);
    for (size_t i = 0; i < l->n; i++) {
        buf b = {0};
        const char *s = l->s[i];
        size_t n = l->len[i];
        if (buf_add(&b, "", 0)) return SD_ERR_SYS;
        for (size_t k = 0; k < n;) {
            int rc;
            if (k + pl <= n && memcmp(s + k, d->pattern, pl) == 0) { rc = buf_add(&b, d->content, cl); k += pl; }
            else rc = buf_add(&b, s + k++, 1);
            if (rc) { free(b.p); return rc; }
        }
        free(l->s[i]);
        l->s[i] = b.p;
        l->len[i] = b.n;
    }
    return SD_OK;
}

static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char ch = s[k];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Pending <0xNN> bytes: valid UTF-8 becomes one string, else one U+FFFD per byte. */
static int flush_bytes(strlist *out, unsigned char *bytes, size_t *nb) {
    if (!*nb) return SD_OK;
    if (sd_utf8_check(bytes, *nb) == *nb) SD_TRY(strlist_add(out, (const char *)bytes, *nb));
    else for (size_t k = 0; k < *nb; k++) SD_TRY(strlist_add(out, "\xEF\xBF\xBD", 3));
    *nb = 0;
    return SD_OK;
}

static int dec_bytefallback(strlist *l) {
    strlist out = {0};
    unsigned char *bytes = sd_malloc(l->n + 1, "decode");
    int rc = bytes ? strlist_init(&out, l->n * 1) : SD_ERR_SYS;
    size_t nb = 0;
    for (size_t i = 0; i < l->n && rc == SD_OK; i++) {
        int b = byte_token(l->s[i], l->len[i]);
        if (b >= 0) { bytes[nb++] = (unsigned char)b; continue; }
        rc = flush_bytes(&out, bytes, &nb);
        if (rc == SD_OK) rc = strlist_add(&out, l->s[i], l->len[i]);
    }
    if (rc == SD_OK) rc = flush_bytes(&out, bytes, &nb);
    free(bytes);
    if (rc != SD_OK) { strlist_free(&out); return rc; }
    strlist_free(l);
    *l = out;
    return SD_OK;
}

static int dec_fuse(strlist *l) {
    buf b = {0};
    SD_TRY(buf_add(&b, "", 0));
    for (size_t i = 0; i < l->n; i++)
        if (buf_add(&b, l->s[i], l->len[i])) { free(b.p); return SD_ERR_SYS; }
    strlist_free(l);
    if (strlist_init(l, 1)) { free(b.p); return SD_ERR_SYS; }
    l->s[0] = b.p;
    l->len[0] = b.n;
    l->n = 1;
    return SD_OK;
}

static void dec_strip(strlist *l, const dec_step *d) {
    size_t cl = strlen(d->content);
    for (size_t i = 0; i < l->n; i++) {
        char *s = l->s[i];
        size_t n = l->len[i], a = 0;
        for (int k = 0; k < d->start && a + cl <= n && memcmp(s + a, d->content, cl) == 0; k++) a += cl;
        for (int k = 0; k < d->stop && n >= a + cl && memcmp(s + n - cl, d->content, cl) == 0; k++) n -= cl;
        memmove(s, s + a, n - a);
        s[n - a] = 0;
        l->len[i] = n - a;
    }
}

/* Length of the maximal prefix of an invalid sequence at s[i] that could start a valid one
 * (Rust's from_utf8_lossy emits one U+FFFD per such prefix). */
static size_t invalid_prefix(const unsigned char *s, size_t i, size_t len) {
    unsigned char c = s[i];
    int need = (c & 0xE0) == 0xC0 && c >= 0xC2 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 && c <= 0xF4 ? 4 : 1;
    size_t k = 1;
    for (; k < (size_t)need && i + k < len; k++) {
        unsigned char x = s[i + k];
        unsigned char lo = 0x80, hi = 0xBF;
        if (k == 1 && c == 0xE0) lo = 0xA0;
        if (k == 1 && c == 0xED) hi = 0x9F;
        if (k == 1 && c == 0xF0) lo = 0x90;
        if (k == 1 && c == 0xF4) hi = 0x8F;
        if (x < lo || x > hi) break;
    }
    return k;
}

static int utf8_lossy(buf *out, const unsigned char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        size_t ok = sd_utf8_check(s + i, len - i);
        SD_TRY(buf_add(out, (const char *)s + i, ok));
        i += ok;
        if (i >= len) break;
        SD_TRY(buf_add(out, "\xEF\xBF\xBD", 3));
        i += invalid_prefix(s, i, len);
    }
    return SD_OK;
}

/* ByteLevel: characters back to bytes (a token with a character outside the alphabet
 * keeps its own UTF-8 bytes), then lossy UTF-8, as one string. */
static int dec_bytelevel(const sd_tokenizer *t, strlist *l) {
    const int16_t *inv = t->u2b;
    buf bytes = {0}, out = {0};
    int rc = buf_add(&bytes, "", 0);
    for (size_t i = 0; i < l->n && rc == SD_OK; i++) {
        const unsigned char *s = (const unsigned char *)l->s[i];
        size_t n = l->len[i], start = bytes.n;
        for (size_t k = 0; k < n && rc == SD_OK;) {
            int cl;
            uint32_t cp = sd_utf8_decode(s, k, n, &cl);
            if (cp >= 512 || inv[cp] < 0) { bytes.n = start; rc = buf_add(&bytes, (const char *)s, n); break; }
            char b = (char)inv[cp];
            rc = buf_add(&bytes, &b, 1);
            k += (size_t)cl;
        }
    }
    if (rc == SD_OK) rc = buf_add(&out, "", 0);
    if (rc == SD_OK) rc = utf8_lossy(&out, (const unsigned char *)bytes.p, bytes.n);
    free(bytes.p);
    if (rc == SD_OK) {
        strlist_free(l);
        rc = strlist_init(l, 1);
    }
    if (rc != SD_OK) { free(out.p); return rc; }
    l->s[0] = out.p;
    l->len[0] = out.n;
    l->n = 1;
    return SD_OK;
}

static int run_decoders(const sd_tokenizer *t, strlist *l) {
    for (int k = 0; k < t->ndec; k++) {
        const dec_step *d = &t->dec[k];
        switch (d->type) {
        case DEC_REPLACE: SD_TRY(dec_replace(l, d)); break;
        case DEC_BYTEFALLBACK: SD_TRY(dec_bytefallback(l)); break;
        case DEC_FUSE: SD_TRY(dec_fuse(l)); break;
        case DEC_STRIP: dec_strip(l, d); break;
        case DEC_BYTELEVEL: SD_TRY(dec_bytelevel(t, l)); break;
        }
    }
    return SD_OK;
}

int sd_tokenizer_decode(const sd_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len) {
    *text = NULL;
    *len = 0;
    strlist l;
    SD_TRY(strlist_init(&l, n));
    int rc = SD_OK;
    for (size_t i = 0; i < n && rc == SD_OK; i++) {
        /* ids without a token (a model's padded vocabulary) are skipped, as the library does */
        if (ids[i] >= 0 && ids[i] < t->nids && t->tok_str[ids[i]]) rc = strlist_add(&l, t->tok_str[ids[i]], t->tok_len[ids[i]]);
    }
    if (rc == SD_OK) rc = run_decoders(t, &l);
    buf out = {0};
    if (rc == SD_OK) rc = buf_add(&out, "", 0);
    for (size_t i = 0; i < l.n && rc == SD_OK; i++) {
        /* without a decoder the library joins the tokens with spaces */
        if (i && !t->has_decoder) rc = buf_add(&out, " ", 1);
        if (rc == SD_OK) rc = buf_add(&out, l.s[i], l.len[i]);
    }
    strlist_free(&l);
    if (rc != SD_OK) { free(out.p); return rc; }
    *text = out.p;
    *len = out.n;
    return SD_OK;
}

/* ---- JSON string literals ------------------------------------------------------------- */

static int hex4(const char *s, uint32_t *v) {
    *v = 0;
    for (int k = 0; k < 4; k++) {
        char ch = s[k];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
        if (d < 0) return 0;
        *v = *v * 16 + (uint32_t)d;
    }
    return 1;
}

int sd_json_string(const char *s, size_t len, char **out, size_t *out_len, size_t *end) {
    *out = NULL;
    *out_len = 0;
    if (len == 0 || s[0] != '"') return sd_fail(SD_ERR_INPUT, "expected a JSON string");
    buf b = {0};
    SD_TRY(buf_add(&b, "", 0));
    size_t i = 1;
    int rc = SD_OK;
    while (rc == SD_OK) {
        if (i >= len) { rc = sd_fail(SD_ERR_INPUT, "unterminated JSON string"); break; }
        char ch = s[i];
        if (ch == '"') break;
        if ((unsigned char)ch < 0x20) { rc = sd_fail(SD_ERR_INPUT, "control character in JSON string at offset %zu", i); break; }
        if (ch != '\\') { rc = buf_add(&b, &ch, 1); i++; continue; }
        if (i + 1 >= len) { rc = sd_fail(SD_ERR_INPUT, "unterminated JSON string"); break; }
        char e = s[i + 1], c = 0;
        i += 2;
        switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (i + 4 > len || !hex4(s + i, &cp)) { rc = sd_fail(SD_ERR_INPUT, "bad \\u escape in JSON string at offset %zu", i); break; }
            i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
                if (i + 6 > len || s[i] != '\\' || s[i + 1] != 'u' || !hex4(s + i + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    rc = sd_fail(SD_ERR_INPUT, "unpaired surrogate in JSON string at offset %zu", i);
                    break;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                rc = sd_fail(SD_ERR_INPUT, "unpaired surrogate in JSON string at offset %zu", i);
                break;
            }
            char u[4];
            rc = buf_add(&b, u, (size_t)sd_utf8_encode(cp, u));
            continue;
        }
        default: rc = sd_fail(SD_ERR_INPUT, "bad escape '\\%c' in JSON string", e); break;
        }
        if (rc == SD_OK) rc = buf_add(&b, &c, 1);
    }
    if (rc != SD_OK) { free(b.p); return rc; }
    *out = b.p;
    *out_len = b.n;
    *end = i + 1;
    return SD_OK;
}
