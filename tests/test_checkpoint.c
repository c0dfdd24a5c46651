/* HDF5 checkpoint: bit-exact write/read round trip (config and every dtype), a real model
 * through convert's path, and files that are not ours refused naming the file. */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/checkpoint.h"
#include "convert/hf_config.h"
#include "convert/model_io.h"
#include "test_util.h"

#include <hdf5.h>
#include <unistd.h>

static char g_dir[] = "/tmp/test_checkpoint_XXXXXX";

static void check_same(const sd_weights *a, const sd_weights *b, const char *what) {
    CHECK(a->n == b->n, "%s: %d vs %d tensors", what, a->n, b->n);
    for (int i = 0; i < a->n && i < b->n; i++) {
        const sd_tensor *x = &a->items[i].t, *y = &b->items[i].t;
        CHECK(strcmp(a->items[i].name, b->items[i].name) == 0, "%s: order %s vs %s", what, a->items[i].name,
              b->items[i].name);
        CHECK(x->dtype == y->dtype && sd_same_shape(x, y) && memcmp(x->data, y->data, sd_nbytes(x)) == 0,
              "%s: tensor %s differs", what, a->items[i].name);
    }
}

static void test_round_trip(void) {
    char path[1024], cfgpath[1024];
    snprintf(path, sizeof path, "%s/rt.h5", g_dir);
    test_path(cfgpath, sizeof cfgpath, "hf/tiny-qwen2/config.json");
    sd_model_config cfg, back;
    CHECK_OK(sd_hf_config_load(cfgpath, &cfg));
    sd_weights w, r;
    sd_weights_init(&w);
    sd_weights_init(&r);
    uint64_t seed = 3;
    sd_tensor t;
    int64_t s2[2] = {4, 6}, s4[4] = {2, 1, 3, 2}, s1[1] = {5};
    CHECK_OK(sd_tensor_alloc(&t, SD_F32, 2, s2));
    test_fill(t.data, 24, &seed, -1, 1);
    ((float *)t.data)[3] = -0.0f; /* bit-exactness includes signed zero */
    CHECK_OK(sd_weights_add(&w, "model.layers.0.self_attn.q_proj.weight", t));
    CHECK_OK(sd_tensor_alloc(&t, SD_F32, 4, s4));
    test_fill(t.data, 12, &seed, -1e30f, 1e30f);
    CHECK_OK(sd_weights_add(&w, "a.four.dims", t));
    CHECK_OK(sd_tensor_alloc(&t, SD_I32, 1, s1));
    for (int i = 0; i < 5; i++) ((int32_t *)t.data)[i] = -7 + 100000 * i;
    CHECK_OK(sd_weights_add(&w, "ids", t));
    CHECK_OK(sd_tensor_alloc(&t, SD_BF16, 1, s1));
    for (int i = 0; i < 5; i++) ((uint16_t *)t.data)[i] = sd_f32_to_bf16(0.25f * (float)i - 0.3f);
    CHECK_OK(sd_weights_add(&w, "half.bf16", t));
    CHECK_OK(sd_tensor_alloc(&t, SD_I64, 1, s1));
    for (int i = 0; i < 5; i++) ((int64_t *)t.data)[i] = (int64_t)1 << (40 + i);
    CHECK_OK(sd_weights_add(&w, "big", t));

    CHECK_OK(sd_checkpoint_write(path, &cfg, &w));
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!sd_file_exists(tmp) && sd_is_hdf5(path), "renamed into place");
    CHECK_OK(sd_checkpoint_read(path, &back, &r));
    CHECK(memcmp(&cfg, &back, sizeof cfg) == 0, "config round trip");
    check_same(&w, &r, "round trip");
    sd_weights_free(&r);
    /* sd_load_model sees the HDF5 signature and converts BF16 to F32. */
    CHECK_OK(sd_load_model(path, &back, &r));
    sd_tensor *h = sd_weights_find(&r, "half.bf16");
    CHECK(h && h->dtype == SD_F32 && ((float *)h->data)[4] == sd_bf16_to_f32(((uint16_t *)w.items[3].t.data)[4]),
          "load_model bf16 -> f32");
    sd_weights_free(&r);

    /* A training checkpoint: the moments (here the same tensors), /state and /recipe. */
    sd_train_state ts = {&w, &w, "{\"stage\": 2, \"step\": 17}", "{\"name\": \"x\"}"};
    sd_train_state_in in;
    CHECK_OK(sd_checkpoint_write_train(path, &cfg, &w, &ts));
    CHECK_OK(sd_checkpoint_read_train(path, &back, &r, &in));
    check_same(&w, &in.m, "optim/m");
    check_same(&w, &in.v, "optim/v");
    CHECK(in.state_json && strcmp(in.state_json, ts.state_json) == 0, "state json '%s'", in.state_json);
    CHECK(in.recipe_json && strcmp(in.recipe_json, ts.recipe_json) == 0, "recipe json");
    sd_train_state_in_free(&in);
    sd_weights_free(&r);
    /* a model-only checkpoint reads with empty training state */
    CHECK_OK(sd_checkpoint_write(path, &cfg, &w));
    CHECK_OK(sd_checkpoint_read_train(path, &back, &r, &in));
    CHECK(in.m.n == 0 && !in.state_json && !in.recipe_json, "no training state");
    sd_train_state_in_free(&in);
    sd_weights_free(&r);
    sd_weights_free(&w);
    remove(path);
}

/* A real model: HF dir -> checkpoint -> read back equals the direct load. */
static void test_real_model(void) {
    char dir[1024], path[1024];
    test_path(dir, sizeof dir, "hf/stories260K");
    snprintf(path, sizeof path, "%s/stories.h5", g_dir);
    sd_model_config cfg, back;
    sd_weights w, r;
    CHECK_OK(sd_load_model(dir, &cfg, &w));
    CHECK_OK(sd_checkpoint_write(path, &cfg, &w));
    CHECK_OK(sd_load_model(path, &back, &r));
    CHECK(memcmp(&cfg, &back, sizeof cfg) == 0, "stories config");
    check_same(&w, &r, "stories260K");
    sd_weights_free(&w);
    sd_weights_free(&r);
    remove(path);
}

static void expect_refused(const char *path, const char *frag) {
    sd_model_config cfg;
    sd_weights w;
    sd_weights_init(&w);
    int rc = sd_checkpoint_read(path, &cfg, &w);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), path) && strstr(sd_errmsg(), frag), "rc %d '%s' (want '%s')", rc,
          sd_errmsg(), frag);
    CHECK(w.n == 0, "no tensors after a failure");
}

static void test_not_ours(void) {
    char text[1024], foreign[1024], badver[1024], nocfg[1024];
    snprintf(text, sizeof text, "%s/text.h5", g_dir);
    snprintf(foreign, sizeof foreign, "%s/foreign.h5", g_dir);
    snprintf(badver, sizeof badver, "%s/badver.h5", g_dir);
    snprintf(nocfg, sizeof nocfg, "%s/nocfg.h5", g_dir);
    FILE *f = fopen(text, "w");
    fputs("this is not HDF5 at all\n", f);
    fclose(f);
    expect_refused(text, "not an HDF5 file");

    /* An HDF5 file with a dataset but without our attribute. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fcreate(foreign, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[1] = {3};
    float x[3] = {1, 2, 3};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t ds = H5Dcreate2(file, "data", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(ds >= 0 && H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0, "make foreign file");
    H5Dclose(ds);
    H5Sclose(space);
    H5Fclose(file);
    expect_refused(foreign, "not an ssdistill checkpoint");

    /* Our attribute with a future version; and version 1 without /config. */
    for (int k = 0; k < 2; k++) {
        const char *p = k ? nocfg : badver;
        int version = k ? 1 : 99;
        file = H5Fcreate(p, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        space = H5Screate(H5S_SCALAR);
        hid_t attr = H5Acreate2(file, "ssdistill_format", H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT);
        CHECK(attr >= 0 && H5Awrite(attr, H5T_NATIVE_INT, &version) >= 0, "make attribute");
        H5Aclose(attr);
        H5Sclose(space);
        H5Fclose(file);
    }
    expect_refused(badver, "ssdistill_format 99");
    expect_refused(nocfg, "/config");

    /* A truncated checkpoint: keep the signature, cut the rest. */
    char cut[1024], src[1024];
    snprintf(cut, sizeof cut, "%s/cut.h5", g_dir);
    snprintf(src, sizeof src, "%s/src.h5", g_dir);
    sd_model_config cfg;
    char cfgpath[1024];
    test_path(cfgpath, sizeof cfgpath, "hf/tiny-llama-gqa/config.json");
    CHECK_OK(sd_hf_config_load(cfgpath, &cfg));
    sd_weights w;
    sd_weights_init(&w);
    sd_tensor t;
    CHECK_OK(sd_tensor_f32(&t, 2, 64, 64, 0, 0));
    CHECK_OK(sd_weights_add(&w, "x", t));
    CHECK_OK(sd_checkpoint_write(src, &cfg, &w));
    sd_weights_free(&w);
    char *data;
    size_t len;
    CHECK_OK(sd_read_file(src, &data, &len));
    f = fopen(cut, "wb");
    fwrite(data, 1, len / 3, f);
    fclose(f);
    free(data);
    sd_weights_init(&w);
    int rc = sd_checkpoint_read(cut, &cfg, &w);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), cut), "truncated: %d %s", rc, sd_errmsg());
    sd_weights_free(&w);

    remove(text);
    remove(foreign);
    remove(badver);
    remove(nocfg);
    remove(cut);
    remove(src);
}

int main(void) {
    CHECK(mkdtemp(g_dir) != NULL, "mkdtemp");
    test_round_trip();
    test_real_model();
    test_not_ours();
    rmdir(g_dir);
    return test_summary("test_checkpoint");
}
