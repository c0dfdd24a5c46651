/* The standard Mamba-2 student on the real HF tiny-mamba2 checkpoint: decoding token by token
 * with the recurrent state gives the chunked forward's logits; missing tensors are refused. */
#include "common/error.h"
#include "convert/model_io.h"
#include "distill/student.h"
#include "test_util.h"

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
    CHECK_OK(sd_student_state_init(&st, &s->cfg, 1));
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

int main(void) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    sd_student s;
    CHECK_OK(load(&s));
    if (s.layers) test_step_equals_forward(&ctx, &s);
    sd_student_free(&s);
    test_missing_tensor();
    return test_summary("test_student");
}
