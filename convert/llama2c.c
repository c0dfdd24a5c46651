/* llama2.c legacy .bin -> HF Llama names. Layout as llama2.c run.c memory_map_weights. */
#include "convert/llama2c.h"
#include "common/error.h"
#include "common/fileio.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    int dim, hidden, layers, heads, kv_heads, vocab, seq_len, shared;
} l2c_header;

/* Offsets (in floats, from the end of the header) of each weight block. */
typedef struct {
    int64_t emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls, total;
} l2c_layout;

static int read_header(const char *path, const sd_mmap *m, l2c_header *h) {
    if (m->len < 28)
        return sd_fail(SD_ERR_INPUT, "%s: file is %zu bytes, too short for the 28-byte llama2.c header", path, m->len);
    int32_t v[7];
    memcpy(v, m->data, sizeof v);
    if ((uint32_t)v[0] == 0x616b3432u) /* "ak42": llama2.c export.py version 1+ files */
        return sd_fail(SD_ERR_INPUT, "%s: llama2.c export version %d is not supported (expected the legacy format)",
                       path, v[1]);
    h->dim = v[0];
    h->hidden = v[1];
    h->layers = v[2];
    h->heads = v[3];
    h->kv_heads = v[4];
    h->shared = v[5] > 0;
    h->vocab = v[5] < 0 ? -v[5] : v[5];
    h->seq_len = v[6];
    /* The bounds keep every size product below 2^62; real files are far smaller. */
    if (v[0] <= 0 || v[1] <= 0 || v[2] <= 0 || v[3] <= 0 || v[4] <= 0 || v[5] == 0 || v[5] == INT32_MIN || v[6] <= 0 ||
        v[0] > (1 << 16) || v[1] > (1 << 18) || v[2] > 1024 || h->vocab > (1 << 22) || v[6] > (1 << 22))
        return sd_fail(SD_ERR_INPUT,
                       "%s: not a llama2.c checkpoint: header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                       "n_kv_heads %d, vocab_size %d, seq_len %d) has a value out of range",
                       path, v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
    if (h->dim % h->heads || h->heads % h->kv_heads || (h->dim / h->heads) % 2)
        return sd_fail(SD_ERR_INPUT,
                       "%s: header: n_heads %d must divide dim %d into even head sizes, and n_kv_heads %d must divide n_heads",
                       path, h->heads, h->dim, h->kv_heads);
    return SD_OK;
}

static l2c_layout layout_of(const l2c_header *h) {
    int64_t d = h->dim, L = h->layers, hd = h->hidden, kv = (int64_t)h->dim / h->heads * h->kv_heads;
    int64_t hs = h->dim / h->heads;
    l2c_layout o = {0};
    o.emb = 0;
    o.rms_att = o.emb + h->vocab * d;
    o.wq = o.rms_att + L * d;
    o.wk = o.wq + L * d * d;
    o.wv = o.wk + L * kv * d;
    o.wo = o.wv + L * kv * d;
    o.rms_ffn = o.wo + L * d * d;
    o.w1 = o.rms_ffn + L * d;
    o.w2 = o.w1 + L * hd * d;
    o.w3 = o.w2 + L * d * hd;
    o.rms_final = o.w3 + L * hd * d;
    /* freq_cis_real and freq_cis_imag: seq_len * head_size / 2 floats each, unused. */
    o.wcls = o.rms_final + d + (int64_t)h->seq_len * hs;
    o.total = o.wcls + (h->shared ? 0 : h->vocab * d);
    return o;
}

static void fill_config(const l2c_header *h, sd_model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->arch = SD_ARCH_LLAMA;
    snprintf(cfg->model_type, sizeof cfg->model_type, "llama");
    cfg->vocab_size = h->vocab;
    cfg->hidden_size = h->dim;
    cfg->num_layers = h->layers;
    cfg->num_heads = h->heads;
    cfg->num_kv_heads = h->kv_heads;
    cfg->head_dim = h->dim / h->heads;
    cfg->intermediate_size = h->hidden;
    cfg->max_position_embeddings = h->seq_len;
    cfg->norm_eps = 1e-5f;
    snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "silu");
    cfg->tie_word_embeddings = h->shared;
    cfg->bos_token_id = 1;
    cfg->eos_token_id = 2;
    cfg->rope.head_dim = cfg->head_dim;
    cfg->rope.rotary_dim = cfg->head_dim;
    cfg->rope.theta = 10000.0;
    cfg->rope.interleaved = 0; /* q/k rows are permuted below */
}

/* Copies a [rows, cols] matrix (2-D) or a vector (cols == 0) out of the file. */
static int add_copy(sd_weights *w, const char *name, const float *src, int64_t rows, int64_t cols) {
    sd_tensor t;
    int64_t shape[2] = {rows, cols};
    SD_TRY(sd_tensor_alloc(&t, SD_F32, cols ? 2 : 1, shape));
    memcpy(t.data, src, sd_nbytes(&t));
    return sd_weights_add(w, name, t);
}

/* HF convert_llama_weights_to_hf permute: within each head, rows (2i, 2i+1) of llama2.c's
 * interleaved rotary pairs become rows i and i + head_size/2 of HF's half-split layout:
 * w.view(n_heads, hs/2, 2, cols).transpose(1, 2).reshape(rows, cols). */
static int add_permuted(sd_weights *w, const char *name, const float *src, int n_heads, int64_t rows, int64_t cols) {
    sd_tensor t;
    int64_t shape[2] = {rows, cols};
    SD_TRY(sd_tensor_alloc(&t, SD_F32, 2, shape));
    float *dst = t.data;
    int64_t hs = rows / n_heads, half = hs / 2;
    for (int h = 0; h < n_heads; h++)
        for (int64_t i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(dst + (h * hs + j * half + i) * cols, src + (h * hs + 2 * i + j) * cols,
                       (size_t)cols * sizeof(float));
    return sd_weights_add(w, name, t);
}

static int add_layer(sd_weights *w, const l2c_header *h, const l2c_layout *o, const float *f, int l) {
    int64_t d = h->dim, hd = h->hidden, kv = (int64_t)h->dim / h->heads * h->kv_heads;
    char name[128];
#define LNAME(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
    SD_TRY(add_copy(w, LNAME("input_layernorm.weight"), f + o->rms_att + l * d, d, 0));
    SD_TRY(add_permuted(w, LNAME("self_attn.q_proj.weight"), f + o->wq + l * d * d, h->heads, d, d));
    SD_TRY(add_permuted(w, LNAME("self_attn.k_proj.weight"), f + o->wk + l * kv * d, h->kv_heads, kv, d));
    SD_TRY(add_copy(w, LNAME("self_attn.v_proj.weight"), f + o->wv + l * kv * d, kv, d));
    SD_TRY(add_copy(w, LNAME("self_attn.o_proj.weight"), f + o->wo + l * d * d, d, d));
    SD_TRY(add_copy(w, LNAME("post_attention_layernorm.weight"), f + o->rms_ffn + l * d, d, 0));
    SD_TRY(add_copy(w, LNAME("mlp.gate_proj.weight"), f + o->w1 + l * hd * d, hd, d));
    SD_TRY(add_copy(w, LNAME("mlp.down_proj.weight"), f + o->w2 + l * d * hd, d, hd));
    SD_TRY(add_copy(w, LNAME("mlp.up_proj.weight"), f + o->w3 + l * hd * d, hd, d));
#undef LNAME
    return SD_OK;
}

static int load_weights(const l2c_header *h, const l2c_layout *o, const float *f, sd_weights *w) {
    SD_TRY(add_copy(w, "model.embed_tokens.weight", f + o->emb, h->vocab, h->dim));
    for (int l = 0; l < h->layers; l++) SD_TRY(add_layer(w, h, o, f, l));
    SD_TRY(add_copy(w, "model.norm.weight", f + o->rms_final, h->dim, 0));
    if (!h->shared) SD_TRY(add_copy(w, "lm_head.weight", f + o->wcls, h->vocab, h->dim));
    return SD_OK;
}

int sd_llama2c_load(const char *path, sd_model_config *cfg, sd_weights *w) {
    sd_mmap m;
    SD_TRY(sd_mmap_open(path, &m));
    l2c_header h = {0};
    int rc = read_header(path, &m, &h);
    l2c_layout o = {0};
    if (rc == SD_OK) {
        o = layout_of(&h);
        uint64_t want = 28 + (uint64_t)o.total * 4;
        if (m.len != want)
            rc = sd_fail(SD_ERR_INPUT,
                         "%s: file is %zu bytes but its llama2.c header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                         "n_kv_heads %d, vocab_size %d, seq_len %d) implies %llu bytes",
                         path, m.len, h.dim, h.hidden, h.layers, h.heads, h.kv_heads, h.shared ? h.vocab : -h.vocab,
                         h.seq_len, (unsigned long long)want);
    }
    if (rc == SD_OK) {
        /* The floats start at byte 28, 4-byte aligned within a page-aligned map. */
        const float *f = (const float *)(const void *)(m.data + 28);
        fill_config(&h, cfg);
        rc = load_weights(&h, &o, f, w);
        if (rc != SD_OK) sd_weights_free(w);
    }
    sd_mmap_close(&m);
    return rc;
}
