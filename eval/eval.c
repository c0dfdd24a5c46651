#include "eval/eval.h"
#include "common/error.h"
#include "common/fileio.h"
#include "convert/model_io.h"
#include "convert/shard.h"
#include "convert/tokenizer.h"
#include "distill/sampler.h"
#include "distill/student_train.h"
#include "kernels/tensor_ops.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- models */

int sd_lm_load(sd_lm *m, const char *path) {
    memset(m, 0, sizeof *m);
    sd_weights w;
    char *src = sd_model_tensor_source(path);
    if (!src) return SD_ERR_SYS;
    int rc = sd_load_model(path, &m->cfg, &w);
    if (rc == SD_OK) {
        m->is_student = sd_is_student(&m->cfg);
        rc = m->is_student ? sd_student_init(&m->student, &m->cfg, &w, src)
                           : sd_teacher_init(&m->teacher, &m->cfg, &w, src);
        sd_weights_free(&w);
    }
    free(src);
    if (rc == SD_OK && !(m->path = sd_strdup(path, "model path"))) rc = SD_ERR_SYS;
    if (rc != SD_OK) sd_lm_free(m);
    return rc;
}

void sd_lm_free(sd_lm *m) {
    if (m->is_student) sd_student_free(&m->student);
    else sd_teacher_free(&m->teacher);
    free(m->path);
    memset(m, 0, sizeof *m);
}

int sd_lm_to_ctx(sd_ctx *ctx, sd_lm *m) {
    return m->is_student ? sd_student_to_ctx(ctx, &m->student) : sd_teacher_to_ctx(ctx, &m->teacher);
}

int sd_lm_forward(sd_ctx *ctx, const sd_lm *m, const sd_tensor *ids, sd_tensor *logits) {
    return m->is_student ? sd_student_forward(ctx, &m->student, ids, logits, NULL, NULL)
                         : sd_teacher_forward(ctx, &m->teacher, ids, NULL, logits, NULL);
}

/* ---------------------------------------------------------------- evaluation */

typedef struct {
    double ce, tce, kl;
    int64_t count, agree;
} sums;

/* Scratch for one batch of B windows of T tokens. */
typedef struct {
    sd_tensor logits, tlogits, targets, loss; /* on the context's backend */
    sd_tensor targets_host, logits_host, tlogits_host;
} batch_bufs;

static void bufs_free(batch_bufs *b) {
    sd_tensor_free(&b->logits);
    sd_tensor_free(&b->tlogits);
    sd_tensor_free(&b->targets);
    sd_tensor_free(&b->loss);
    sd_tensor_free(&b->targets_host);
    sd_tensor_free(&b->logits_host);
    sd_tensor_free(&b->tlogits_host);
}

static int bufs_alloc(sd_ctx *ctx, batch_bufs *b, int64_t B, int64_t T, int V, int teacher) {
    memset(b, 0, sizeof *b);
    int64_t tshape[2] = {B, T};
    SD_TRY(sd_tensor_new_f32(ctx, &b->logits, 3, B, T, V, 0));
    if (teacher) SD_TRY(sd_tensor_new_f32(ctx, &b->tlogits, 3, B, T, V, 0));
    SD_TRY(sd_tensor_new(ctx, &b->targets, SD_I32, 2, tshape));
    SD_TRY(sd_tensor_alloc(&b->targets_host, SD_I32, 2, tshape));
    return sd_tensor_new_f32(ctx, &b->loss, 1, B * T, 0, 0, 0);
}

/* targets[b, t] = ids[b, t + 1]; the window's last position predicts nothing. */
static void fill_targets(sd_tensor *targets, const int32_t *ids, int64_t B, int64_t T) {
    int32_t *tg = targets->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) tg[b * T + t] = t + 1 < T ? ids[b * T + t + 1] : SD_IGNORE_INDEX;
}

/* Adds the sum of the per-row losses (in double, in order) to *acc. */
static int add_rows(sd_ctx *ctx, const sd_tensor *loss, double *acc) {
    double s;
    SD_TRY(sd_sum_host(ctx, loss, &s));
    *acc += s;
    return SD_OK;
}

/* The host's view of a logits tensor: itself on the CPU, a downloaded copy in *tmp on a GPU. */
static int host_logits(sd_ctx *ctx, const sd_tensor *t, sd_tensor *tmp, const float **out) {
    if (t->device == SD_DEV_CPU) {
        *out = t->data;
        return SD_OK;
    }
    SD_TRY(sd_tensor_alloc(tmp, SD_F32, t->ndim, t->shape));
    SD_TRY(sd_tensor_into_host(ctx, tmp, t));
    *out = tmp->data;
    return SD_OK;
}

/* Positions (with a target) where model and teacher pick the same argmax. */
static int count_agree(sd_ctx *ctx, batch_bufs *b, int64_t rows, int V, int64_t *agree) {
    const int32_t *tg = b->targets_host.data;
    const float *s, *t;
    SD_TRY(host_logits(ctx, &b->logits, &b->logits_host, &s));
    SD_TRY(host_logits(ctx, &b->tlogits, &b->tlogits_host, &t));
    int64_t n = 0;
    for (int64_t r = 0; r < rows; r++)
        if (tg[r] != SD_IGNORE_INDEX) n += sd_argmax(s + r * V, V) == sd_argmax(t + r * V, V);
    *agree += n;
    return SD_OK;
}

static int eval_batch(sd_ctx *ctx, const sd_lm *model, const sd_lm *teacher, const int32_t *ids, int64_t B,
                      int64_t T, sums *acc) {
    int V = model->cfg.vocab_size;
    batch_bufs b;
    int64_t shape[2] = {B, T};
    sd_tensor idt = sd_tensor_view(SD_I32, (void *)ids, 2, shape);
    int rc = bufs_alloc(ctx, &b, B, T, V, teacher != NULL);
    if (rc == SD_OK) rc = sd_lm_forward(ctx, model, &idt, &b.logits);
    if (rc == SD_OK) {
        fill_targets(&b.targets_host, ids, B, T);
        rc = sd_copy_from_host(ctx, &b.targets, &b.targets_host);
    }
    if (rc == SD_OK) rc = sd_cross_entropy(ctx, &b.loss, &b.logits, &b.targets, SD_IGNORE_INDEX);
    if (rc == SD_OK) rc = add_rows(ctx, &b.loss, &acc->ce);
    if (rc == SD_OK && teacher) {
        rc = sd_lm_forward(ctx, teacher, &idt, &b.tlogits);
        if (rc == SD_OK) rc = sd_cross_entropy(ctx, &b.loss, &b.tlogits, &b.targets, SD_IGNORE_INDEX);
        if (rc == SD_OK) rc = add_rows(ctx, &b.loss, &acc->tce);
        if (rc == SD_OK) rc = sd_kl_div(ctx, &b.loss, &b.tlogits, &b.logits, 1.0f, &b.targets, SD_IGNORE_INDEX);
        if (rc == SD_OK) rc = add_rows(ctx, &b.loss, &acc->kl);
        if (rc == SD_OK) rc = count_agree(ctx, &b, B * T, V, &acc->agree);
    }
    acc->count += B * (T - 1);
    bufs_free(&b);
    return rc;
}

static int check_eval_args(const sd_lm *model, const sd_lm *teacher, const sd_eval_options *o) {
    if (o->seq_len < 2) return sd_fail(SD_ERR_INPUT, "--seq-len: must be >= 2, got %d", o->seq_len);
    if (o->batch < 1) return sd_fail(SD_ERR_INPUT, "--batch: must be >= 1, got %d", o->batch);
    if (teacher && teacher->cfg.vocab_size != model->cfg.vocab_size)
        return sd_fail(SD_ERR_INPUT, "%s: vocabulary of %d tokens, but the model %s has %d (KL needs the same vocabulary)",
                       teacher->path, teacher->cfg.vocab_size, model->path, model->cfg.vocab_size);
    /* A Transformer never saw positions past its limit. */
    const sd_lm *ms[2] = {model, teacher};
    for (int i = 0; i < 2; i++)
        if (ms[i] && !ms[i]->is_student && ms[i]->cfg.max_position_embeddings > 0 &&
            o->seq_len > ms[i]->cfg.max_position_embeddings)
            return sd_fail(SD_ERR_INPUT, "--seq-len: %d exceeds the %d positions of %s", o->seq_len,
                           ms[i]->cfg.max_position_embeddings, ms[i]->path);
    return SD_OK;
}

int sd_eval_tokens(sd_ctx *ctx, const sd_lm *model, const sd_lm *teacher, const int32_t *tokens, int64_t n,
                   const sd_eval_options *opt, sd_eval_result *res) {
    memset(res, 0, sizeof *res);
    SD_TRY(check_eval_args(model, teacher, opt));
    if (opt->max_tokens > 0 && n > opt->max_tokens) n = opt->max_tokens;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= model->cfg.vocab_size)
            return sd_fail(SD_ERR_INPUT, "eval data: token %d at position %lld is outside the vocabulary of %d",
                           tokens[i], (long long)i, model->cfg.vocab_size);
    int64_t T = opt->seq_len, full = n / T, rest = n % T;
    sums acc = {0};
    for (int64_t w = 0; w < full; w += opt->batch) {
        int64_t B = full - w < opt->batch ? full - w : opt->batch;
        SD_TRY(eval_batch(ctx, model, teacher, tokens + w * T, B, T, &acc));
    }
    if (rest >= 2) SD_TRY(eval_batch(ctx, model, teacher, tokens + full * T, 1, rest, &acc));
    if (acc.count == 0) return sd_fail(SD_ERR_INPUT, "eval data: %lld tokens, too few to predict any", (long long)n);
    res->tokens = acc.count;
    res->windows = full + (rest >= 2);
    res->loss = acc.ce / (double)acc.count;
    res->ppl = exp(res->loss);
    if (teacher) {
        res->has_teacher = 1;
        res->teacher_loss = acc.tce / (double)acc.count;
        res->teacher_ppl = exp(res->teacher_loss);
        res->kl = acc.kl / (double)acc.count;
        res->top1 = (double)acc.agree / (double)acc.count;
    }
    return SD_OK;
}

/* ---------------------------------------------------------------- data */

static int read_shard_tokens(const char *path, int64_t max_tokens, int32_t **tokens, int64_t *n) {
    sd_shard s;
    SD_TRY(sd_shard_read(path, &s));
    int64_t m = max_tokens > 0 && s.ntokens > max_tokens ? max_tokens : s.ntokens;
    int32_t *t = sd_malloc((size_t)(m ? m : 1) * sizeof(int32_t), "eval tokens");
    for (int64_t i = 0; t && i < m; i++) t[i] = (int32_t)s.tokens[i];
    sd_shard_free(&s);
    if (!t) return SD_ERR_SYS;
    *tokens = t;
    *n = m;
    return SD_OK;
}

static int is_shard(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char h[4];
    int ok = fread(h, 1, 4, f) == 4;
    fclose(f);
    int32_t magic = (int32_t)((uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24);
    return ok && magic == SD_SHARD_MAGIC;
}

/* The tokenizer.json beside a model: in its folder, or in the folder holding the file. */
static char *tokenizer_beside(const char *model_path) {
    if (sd_is_dir(model_path)) return sd_path_join(model_path, "tokenizer.json");
    const char *slash = strrchr(model_path, '/');
    if (!slash) return sd_path_join(".", "tokenizer.json");
    size_t k = slash == model_path ? 1 : (size_t)(slash - model_path);
    char *dir = sd_malloc(k + 1, "path");
    if (!dir) return NULL;
    memcpy(dir, model_path, k);
    dir[k] = 0;
    char *p = sd_path_join(dir, "tokenizer.json");
    free(dir);
    return p;
}

typedef struct {
    int32_t *ids;
    int64_t n, cap;
} id_buf;

static int push_ids(id_buf *b, const int32_t *ids, int64_t k) {
    if (b->n + k > b->cap) {
        int64_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + k) cap *= 2;
        int32_t *p = sd_realloc(b->ids, (size_t)cap * sizeof(int32_t), "eval tokens");
        if (!p) return SD_ERR_SYS;
        b->ids = p;
        b->cap = cap;
    }
    memcpy(b->ids + b->n, ids, (size_t)k * sizeof(int32_t));
    b->n += k;
    return SD_OK;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* End of the document starting at i: the start of the first blank line (a line of only
 * whitespace) after it, or len. */
static size_t doc_end(const char *s, size_t i, size_t len) {
    while (i < len) {
        const char *nl = memchr(s + i, '\n', len - i);
        if (!nl) return len;
        size_t j = (size_t)(nl - s) + 1, k = j;
        while (k < len && s[k] != '\n' && is_ws(s[k])) k++;
        if (k >= len || s[k] == '\n') return j;
        i = j;
    }
    return len;
}

static int encode_docs(const sd_tokenizer *tok, const char *src, const char *s, size_t len, int bos,
                       int64_t max_tokens, id_buf *out) {
    size_t i = 0;
    while (i < len && (max_tokens <= 0 || out->n < max_tokens)) {
        while (i < len && is_ws(s[i])) i++;
        if (i >= len) break;
        size_t e = doc_end(s, i, len), end = e;
        while (end > i && is_ws(s[end - 1])) end--;
        int32_t *ids = NULL;
        size_t k = 0;
        int rc = sd_tokenizer_encode(tok, s + i, end - i, &ids, &k);
        if (rc != SD_OK) return sd_error_prefix(rc, "%s: document at byte %zu", src, i);
        int32_t b = bos;
        rc = bos >= 0 ? push_ids(out, &b, 1) : SD_OK;
        if (rc == SD_OK) rc = push_ids(out, ids, (int64_t)k);
        free(ids);
        SD_TRY(rc);
        i = e;
    }
    return SD_OK;
}

static int read_text_tokens(const char *path, const char *tokenizer, const char *model_path,
                            const sd_model_config *cfg, int64_t max_tokens, int32_t **tokens, int64_t *n) {
    char *tpath = tokenizer ? sd_strdup(tokenizer, "path") : tokenizer_beside(model_path);
    if (!tpath) return SD_ERR_SYS;
    int rc = SD_OK;
    if (!tokenizer && !sd_file_exists(tpath))
        rc = sd_fail(SD_ERR_INPUT, "%s: no tokenizer.json beside the model to encode the text %s (pass --tokenizer)",
                     tpath, path);
    sd_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    id_buf buf = {0};
    if (rc == SD_OK) rc = sd_tokenizer_load(tpath, &tok);
    if (rc == SD_OK && sd_tokenizer_vocab_size(tok) > cfg->vocab_size)
        rc = sd_fail(SD_ERR_INPUT, "%s: tokenizer has %d tokens but the model only %d", tpath,
                     sd_tokenizer_vocab_size(tok), cfg->vocab_size);
    if (rc == SD_OK) rc = sd_read_file(path, &text, &len);
    if (rc == SD_OK) {
        int bos = cfg->bos_token_id >= 0 ? cfg->bos_token_id : sd_tokenizer_bos(tok);
        rc = encode_docs(tok, path, text, len, bos, max_tokens, &buf);
    }
    if (rc == SD_OK && buf.n == 0) rc = sd_fail(SD_ERR_INPUT, "%s: no text to evaluate", path);
    if (rc == SD_OK) {
        *tokens = buf.ids;
        *n = max_tokens > 0 && buf.n > max_tokens ? max_tokens : buf.n;
    } else {
        free(buf.ids);
    }
    free(text);
    sd_tokenizer_free(tok);
    free(tpath);
    return rc;
}

int sd_eval_load_data(const char *data, const char *tokenizer, const char *model_path, const sd_model_config *cfg,
                      int64_t max_tokens, int32_t **tokens, int64_t *n) {
    *tokens = NULL;
    *n = 0;
    if (!sd_file_exists(data) || sd_is_dir(data)) return sd_fail(SD_ERR_INPUT, "%s: no such file", data);
    if (is_shard(data)) return read_shard_tokens(data, max_tokens, tokens, n);
    return read_text_tokens(data, tokenizer, model_path, cfg, max_tokens, tokens, n);
}

char *sd_eval_result_json(const sd_eval_result *r, const char *model, const char *data) {
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        sd_fail(SD_ERR_SYS, "out of memory building the eval JSON");
        return NULL;
    }
    cJSON_AddStringToObject(o, "model", model);
    cJSON_AddStringToObject(o, "data", data);
    cJSON_AddNumberToObject(o, "tokens", (double)r->tokens);
    cJSON_AddNumberToObject(o, "ppl", r->ppl);
    if (r->has_teacher) {
        cJSON_AddNumberToObject(o, "teacher_ppl", r->teacher_ppl);
        cJSON_AddNumberToObject(o, "kl", r->kl);
        cJSON_AddNumberToObject(o, "top1", r->top1);
    } else {
        cJSON_AddNullToObject(o, "teacher_ppl");
        cJSON_AddNullToObject(o, "kl");
        cJSON_AddNullToObject(o, "top1");
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) sd_fail(SD_ERR_SYS, "out of memory printing the eval JSON");
    return s;
}
