/* Decoding token by token with the recurrent state (conv and SSM states; a hybrid's KV cache)
 * gives the chunked forward's logits: the standard Mamba-2 student on the real HF tiny-mamba2
 * checkpoint, and random students of our layout (discrete mixer with MLPs, a hybrid).
 * Missing tensors are refused. */
#include "common/error.h"
#include "convert/checkpoint.h"
#include "convert/model_io.h"
#include "distill/student_train.h"
#include "test_util.h"

#include <unistd.h>

static int load(sd_student *s) {
    char path[1024];
    test_path(path, sizeof path, "hf/tiny-mamba2");
    sd_model_config cfg;
    sd_weights w;
    SD_TRY(sd_load_model(path, &cfg, &w));
    int rc = sd_student_init(s, &cfg, &w, path);
    sd_weights_free(&w);
    return rc;
}

static void test_step_equals_forward(sd_ctx *ctx, const sd_student *s) {
    enum { T = 40 }; /* not a multiple of the chunk (16) */
    int V = s->cfg.vocab_size;
    int32_t seq[T];
    for (int i = 0; i < T; i++) seq[i] = (i * 37 + 11) % V;
    int64_t shape[2] = {1, T}, one[2] = {1, 1};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape), full, step;
    CHECK_OK(sd_tensor_f32(&full, 3, 1, T, V, 0));
    CHECK_OK(sd_tensor_f32(&step, 3, 1, 1, V, 0));
    test_poison(full.data, (size_t)T * V);
    CHECK_OK(sd_student_forward(ctx, s, &ids, &full, NULL, NULL));
    sd_student_state st;
    CHECK_OK(sd_student_state_init(&st, &s->cfg, 1, T));
    double worst = 0, scale = 0;
    for (int t = 0; t < T; t++) {
        sd_tensor id = sd_tensor_view(SD_I32, seq + t, 2, one);
        test_poison(step.data, (size_t)V);
        CHECK_OK(sd_student_step(ctx, s, &id, &st, &step));
        const float *a = step.data, *b = (const float *)full.data + (size_t)t * V;
        for (int v = 0; v < V; v++) {
            double d = fabs((double)a[v] - b[v]);
            if (!(d <= worst)) worst = d;
            if (fabs(b[v]) > scale) scale = fabs(b[v]);
        }
    }
    double rel = worst / (scale + 1e-30);
    printf("student step vs chunked forward: max rel error %.3e over %d tokens\n", rel, T);
    CHECK(rel < 1e-5, "step logits differ from the chunked forward by %.3e", rel);
    CHECK(st.len == T, "state length %lld", (long long)st.len);
    sd_student_state_free(&st);
    sd_tensor_free(&full);
    sd_tensor_free(&step);
}

static void test_missing_tensor(void) {
    char path[1024];
    test_path(path, sizeof path, "hf/tiny-mamba2");
    sd_model_config cfg;
    sd_weights w;
    CHECK_OK(sd_load_model(path, &cfg, &w));
    CHECK(sd_weights_find(&w, "backbone.layers.1.mixer.A_log") != NULL, "A_log present");
    /* rename A_log so the student misses it */
    for (int i = 0; i < w.n; i++)
        if (strcmp(w.items[i].name, "backbone.layers.1.mixer.A_log") == 0) w.items[i].name[0] = 'X';
    sd_student s;
    int rc = sd_student_init(&s, &cfg, &w, "tiny-mamba2/model.safetensors");
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "backbone.layers.1.mixer.A_log"), "missing A_log: rc %d '%s'", rc,
          sd_errmsg());
    sd_weights_free(&w);
}

/* A random student of our layout: d 32, 3 layers, vocab 50, chunk 16; hybrid: attention
 * (GQA 4/2, q/k/v biases, partial rotary) in layer 1. */
static sd_model_config random_config(sd_mixer_type mixer, int hybrid) {
    sd_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SD_ARCH_STUDENT;
    snprintf(c.model_type, sizeof c.model_type, "ssdistill_student");
    snprintf(c.hidden_act, sizeof c.hidden_act, "silu");
    c.vocab_size = 50;
    c.hidden_size = 32;
    c.num_layers = 3;
    c.intermediate_size = 48;
    c.norm_eps = 1e-5f;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 8;
    c.rope = (sd_rope_config){.head_dim = 8, .rotary_dim = 4, .theta = 10000.0};
    c.attention_bias = 1;
    c.bos_token_id = c.eos_token_id = -1;
    c.ssm = (sd_ssm_config){.mixer = mixer, .num_heads = 4, .head_dim = 8, .state_size = 8, .n_groups = 2,
                            .conv_kernel = 4, .use_conv_bias = 1, .chunk_size = 16,
                            .time_step_min = 0.0, .time_step_max = INFINITY};
    c.attn_layer[1] = (unsigned char)hybrid;
    return c;
}

/* A student of our layout through an HDF5 checkpoint: the config (mixer, hybrid layers) and
 * every tensor come back, and the reloaded student's logits are bit-identical. */
static void test_checkpoint_round_trip(sd_ctx *ctx, const sd_student *s) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/ssdistill_test_student_%d.h5", (int)getpid());
    CHECK_OK(sd_checkpoint_write(path, &s->cfg, &s->w));
    sd_model_config cfg;
    sd_weights w;
    sd_student back;
    CHECK_OK(sd_load_model(path, &cfg, &w));
    CHECK(memcmp(&cfg, &s->cfg, sizeof cfg) == 0, "config changed through the checkpoint");
    CHECK_OK(sd_student_init(&back, &cfg, &w, path));
    sd_weights_free(&w);
    enum { T = 20 };
    int32_t seq[T];
    for (int i = 0; i < T; i++) seq[i] = (i * 13 + 5) % cfg.vocab_size;
    int64_t shape[2] = {1, T};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape), a, b;
    CHECK_OK(sd_tensor_f32(&a, 3, 1, T, cfg.vocab_size, 0));
    CHECK_OK(sd_tensor_f32(&b, 3, 1, T, cfg.vocab_size, 0));
    CHECK_OK(sd_student_forward(ctx, s, &ids, &a, NULL, NULL));
    if (back.layers) CHECK_OK(sd_student_forward(ctx, &back, &ids, &b, NULL, NULL));
    CHECK(memcmp(a.data, b.data, sd_nbytes(&a)) == 0, "logits differ after the checkpoint round trip");
    printf("checkpoint round trip: config and logits identical\n");
    sd_tensor_free(&a);
    sd_tensor_free(&b);
    sd_student_free(&back);
    remove(path);
}

int main(void) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    sd_student s;
    CHECK_OK(load(&s));
    if (s.layers) test_step_equals_forward(&ctx, &s);
    sd_student_free(&s);
    const struct {
        sd_mixer_type mixer;
        int hybrid;
    } kinds[] = {{SD_MIXER_DISCRETE, 0}, {SD_MIXER_DISCRETE, 1}, {SD_MIXER_STANDARD, 1}};
    for (int i = 0; i < 3; i++) {
        sd_model_config cfg = random_config(kinds[i].mixer, kinds[i].hybrid);
        printf("%s mixer%s: ", kinds[i].mixer == SD_MIXER_DISCRETE ? "discrete" : "standard",
               kinds[i].hybrid ? ", hybrid" : "");
        CHECK_OK(sd_student_init_random(&s, &cfg, 100 + (uint64_t)i));
        if (s.layers) test_step_equals_forward(&ctx, &s);
        if (s.layers && i == 1) test_checkpoint_round_trip(&ctx, &s);
        sd_student_free(&s);
    }
    test_missing_tensor();
    return test_summary("test_student");
}
