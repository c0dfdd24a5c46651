/* llama2.c loader: every tensor of stories260K.bin, converted, equals the tensor that
 * transformers wrote for the same weights (hf/stories260K). Equal q/k proves the rotary
 * permutation. Also: a truncated file is refused naming the sizes. */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/llama2c.h"
#include "convert/safetensors.h"
#include "test_util.h"

#include <unistd.h>

static double max_abs_diff(const sd_tensor *a, const sd_tensor *b) {
    double m = 0;
    const float *x = a->data, *y = b->data;
    for (int64_t i = 0; i < sd_numel(a); i++) {
        double d = fabs((double)x[i] - y[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static void test_matches_hf(void) {
    char bin[1024], hf[1024];
    test_path(bin, sizeof bin, "llama2c-stories260K/stories260K.bin");
    test_path(hf, sizeof hf, "hf/stories260K/model.safetensors");
    sd_model_config cfg;
    sd_weights a, b;
    sd_weights_init(&a);
    sd_weights_init(&b);
    CHECK_OK(sd_llama2c_load(bin, &cfg, &a));
    CHECK_OK(sd_st_load_all(hf, &b));
    CHECK(cfg.hidden_size == 64 && cfg.num_layers == 5 && cfg.num_heads == 8 && cfg.num_kv_heads == 4,
          "dims %d %d %d %d", cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads);
    CHECK(cfg.intermediate_size == 172 && cfg.vocab_size == 512 && cfg.tie_word_embeddings == 1, "mlp/vocab/tie");
    CHECK(cfg.head_dim == 8 && cfg.rope.rotary_dim == 8 && cfg.rope.interleaved == 0 && cfg.rope.theta == 10000.0,
          "rope");
    CHECK(cfg.norm_eps == 1e-5f && cfg.bos_token_id == 1 && cfg.eos_token_id == 2, "eps/bos/eos");
    CHECK(a.n == b.n, "llama2.c gives %d tensors, HF %d", a.n, b.n);
    for (int i = 0; i < b.n; i++) {
        const char *name = b.items[i].name;
        sd_tensor *t = sd_weights_find(&a, name);
        CHECK(t != NULL, "missing %s", name);
        if (!t) continue;
        CHECK(sd_same_shape(t, &b.items[i].t), "shape of %s", name);
        if (!sd_same_shape(t, &b.items[i].t)) continue;
        double d = max_abs_diff(t, &b.items[i].t);
        CHECK(d <= 1e-7, "%s: max abs diff %g", name, d);
    }
    sd_weights_free(&a);
    sd_weights_free(&b);
}

/* A copy of the file cut short by 4 bytes, and one with a bad header. */
static void test_bad_files(void) {
    char bin[1024], dir[] = "/tmp/test_llama2c_XXXXXX";
    test_path(bin, sizeof bin, "llama2c-stories260K/stories260K.bin");
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char *data;
    size_t len;
    CHECK_OK(sd_read_file(bin, &data, &len));
    if (!data) return;
    char *cut = sd_path_join(dir, "cut.bin"), *bad = sd_path_join(dir, "bad.bin"), *tiny = sd_path_join(dir, "tiny.bin");
    FILE *f = fopen(cut, "wb");
    fwrite(data, 1, len - 4, f);
    fclose(f);
    int32_t *hdr = (int32_t *)(void *)data;
    hdr[3] = 7; /* n_heads 7 does not divide dim 64 */
    f = fopen(bad, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
    f = fopen(tiny, "wb");
    fwrite(data, 1, 10, f);
    fclose(f);

    sd_model_config cfg;
    sd_weights w;
    sd_weights_init(&w);
    int rc = sd_llama2c_load(cut, &cfg, &w);
    char want[64];
    snprintf(want, sizeof want, "%zu bytes", len);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), cut) && strstr(sd_errmsg(), want), "truncated: %d %s", rc, sd_errmsg());
    CHECK(w.n == 0, "no tensors left after a failure");
    rc = sd_llama2c_load(bad, &cfg, &w);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), bad) && strstr(sd_errmsg(), "n_heads"), "bad header: %d %s", rc, sd_errmsg());
    hdr[0] = 0x616b3432; /* a version-1 export */
    hdr[1] = 1;
    f = fopen(bad, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
    rc = sd_llama2c_load(bad, &cfg, &w);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), bad) && strstr(sd_errmsg(), "version 1"), "v1: %d %s", rc, sd_errmsg());
    rc = sd_llama2c_load(tiny, &cfg, &w);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), tiny), "tiny: %d %s", rc, sd_errmsg());
    remove(cut);
    remove(bad);
    remove(tiny);
    rmdir(dir);
    free(cut);
    free(bad);
    free(tiny);
    free(data);
}

int main(void) {
    test_matches_hf();
    test_bad_files();
    return test_summary("test_llama2c");
}
