/* safetensors: write/read round trip in F32/BF16/F16/I32, header padding, a sharded index made
 * by our writer, conversions, the real bf16 model, and corrupt headers refused by name. */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/safetensors.h"
#include "test_util.h"

#include <unistd.h>

static char g_dir[] = "/tmp/test_safetensors_XXXXXX";

static char *tmp_path(const char *name) { return sd_path_join(g_dir, name); }

/* A set with one tensor of each dtype, deterministic contents. */
static void make_set(sd_weights *w, uint64_t *seed) {
    sd_weights_init(w);
    sd_tensor t;
    int64_t s2[2] = {3, 5}, s3[3] = {2, 3, 4}, s1[1] = {7};
    CHECK_OK(sd_tensor_alloc(&t, SD_F32, 2, s2));
    test_fill(t.data, 15, seed, -2, 2);
    CHECK_OK(sd_weights_add(w, "a.weight", t));
    CHECK_OK(sd_tensor_alloc(&t, SD_BF16, 3, s3));
    for (int i = 0; i < 24; i++) ((uint16_t *)t.data)[i] = sd_f32_to_bf16(test_uniform(seed, -1, 1));
    CHECK_OK(sd_weights_add(w, "b.weight", t));
    CHECK_OK(sd_tensor_alloc(&t, SD_F16, 1, s1));
    for (int i = 0; i < 7; i++) ((uint16_t *)t.data)[i] = sd_f32_to_f16(test_uniform(seed, -3, 3));
    CHECK_OK(sd_weights_add(w, "c.bias", t));
    CHECK_OK(sd_tensor_alloc(&t, SD_I32, 1, s1));
    for (int i = 0; i < 7; i++) ((int32_t *)t.data)[i] = i * 1000 - 3;
    CHECK_OK(sd_weights_add(w, "ids", t));
}

static void test_round_trip(void) {
    uint64_t seed = 1;
    sd_weights w;
    make_set(&w, &seed);
    char *path = tmp_path("rt.safetensors");
    CHECK_OK(sd_st_write(path, &w, "{\"format\":\"pt\",\"who\":\"test\"}"));
    sd_safetensors st;
    CHECK_OK(sd_st_open(path, &st));
    CHECK(st.n == 4, "n = %d", st.n);
    CHECK(st.metadata_json && strstr(st.metadata_json, "\"who\":\"test\""), "metadata %s", st.metadata_json);
    uint64_t hlen = 0;
    memcpy(&hlen, st.map.data, 8);
    CHECK(hlen % 8 == 0, "header length %llu not 8-aligned", (unsigned long long)hlen);
    for (int i = 0; i < w.n; i++) {
        const sd_st_entry *e = sd_st_find(&st, w.items[i].name);
        CHECK(e != NULL, "missing %s", w.items[i].name);
        if (!e) continue;
        sd_tensor t;
        CHECK_OK(sd_st_read(&st, e, &t));
        CHECK(t.dtype == w.items[i].t.dtype && sd_same_shape(&t, &w.items[i].t), "%s dtype/shape", e->name);
        CHECK(memcmp(t.data, w.items[i].t.data, sd_nbytes(&t)) == 0, "%s bytes differ", e->name);
        sd_tensor_free(&t);
    }
    /* Conversions: BF16 and F16 to F32 match the element conversions; I32 is refused. */
    sd_tensor f;
    CHECK_OK(sd_st_read_f32(&st, "b.weight", &f));
    const uint16_t *bsrc = w.items[1].t.data;
    int same = 1;
    for (int i = 0; i < 24; i++) same &= ((float *)f.data)[i] == sd_bf16_to_f32(bsrc[i]);
    CHECK(same && f.dtype == SD_F32, "bf16 -> f32");
    sd_tensor_free(&f);
    CHECK_OK(sd_st_read_f32(&st, "c.bias", &f));
    const uint16_t *hsrc = w.items[2].t.data;
    same = 1;
    for (int i = 0; i < 7; i++) same &= ((float *)f.data)[i] == sd_f16_to_f32(hsrc[i]);
    CHECK(same, "f16 -> f32");
    sd_tensor_free(&f);
    int rc = sd_st_read_f32(&st, "ids", &f);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "'ids'") && strstr(sd_errmsg(), "I32"), "%s", sd_errmsg());
    rc = sd_st_read_f32(&st, "nope", &f);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "'nope'"), "%s", sd_errmsg());
    sd_st_close(&st);

    /* load_all refuses the I32 tensor in a model file, naming it. */
    sd_weights all;
    sd_weights_init(&all);
    rc = sd_st_load_all(path, &all);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "'ids'") && strstr(sd_errmsg(), path), "%s", sd_errmsg());
    char *tmp = sd_tmp_name(path);
    CHECK(!sd_file_exists(tmp), "%s left behind", tmp);
    free(tmp);
    sd_weights_free(&all);
    sd_weights_free(&w);
    remove(path);
    free(path);
}

/* Two shards and an index, each written by sd_st_write, load into the same set as one file. */
static void test_sharded(void) {
    uint64_t seed = 2;
    sd_weights w, s1, s2, one, sharded;
    make_set(&w, &seed);
    sd_weights_init(&s1);
    sd_weights_init(&s2);
    /* Float tensors only (a model file); a, b to shard 1, c to shard 2. */
    for (int i = 0; i < 3; i++) {
        sd_tensor t;
        CHECK_OK(sd_tensor_alloc(&t, w.items[i].t.dtype, w.items[i].t.ndim, w.items[i].t.shape));
        memcpy(t.data, w.items[i].t.data, sd_nbytes(&t));
        CHECK_OK(sd_weights_add(i < 2 ? &s1 : &s2, w.items[i].name, t));
    }
    char *p1 = tmp_path("model-00001-of-00002.safetensors"), *p2 = tmp_path("model-00002-of-00002.safetensors");
    char *idx = tmp_path("model.safetensors.index.json"), *single = tmp_path("single.safetensors");
    CHECK_OK(sd_st_write(p1, &s1, NULL));
    CHECK_OK(sd_st_write(p2, &s2, NULL));
    FILE *f = fopen(idx, "w");
    fprintf(f, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\","
               " \"c.bias\": \"model-00002-of-00002.safetensors\", \"b.weight\": \"model-00001-of-00002.safetensors\"}}");
    fclose(f);
    w.n = 3; /* drop the I32 tensor for the single-file twin (freed below by restoring n) */
    CHECK_OK(sd_st_write(single, &w, NULL));
    w.n = 4;
    sd_weights_init(&one);
    sd_weights_init(&sharded);
    CHECK_OK(sd_st_load_all(single, &one));
    CHECK_OK(sd_st_load_all(g_dir, &sharded)); /* the folder: finds the index */
    CHECK(one.n == 3 && sharded.n == 3, "counts %d %d", one.n, sharded.n);
    for (int i = 0; i < one.n; i++) {
        sd_tensor *t = sd_weights_find(&sharded, one.items[i].name);
        CHECK(t && t->dtype == SD_F32 && sd_same_shape(t, &one.items[i].t) &&
                  memcmp(t->data, one.items[i].t.data, sd_nbytes(t)) == 0,
              "sharded %s differs", one.items[i].name);
    }
    sd_weights_free(&sharded);
    /* An index naming a tensor its shard lacks is refused naming both. */
    f = fopen(idx, "w");
    fprintf(f, "{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\","
               " \"zz\": \"model-00002-of-00002.safetensors\"}}");
    fclose(f);
    sd_weights_init(&sharded);
    int rc = sd_st_load_all(idx, &sharded);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), "'zz'") && strstr(sd_errmsg(), "index.json"), "%s", sd_errmsg());
    sd_weights_free(&sharded);
    remove(p1);
    remove(p2);
    remove(idx);
    remove(single);
    free(p1);
    free(p2);
    free(idx);
    free(single);
    sd_weights_free(&one);
    sd_weights_free(&s1);
    sd_weights_free(&s2);
    sd_weights_free(&w);
}

static void test_real_bf16(void) {
    char path[1024];
    test_path(path, sizeof path, "hf/tiny-llama-bf16/model.safetensors");
    sd_safetensors st;
    CHECK_OK(sd_st_open(path, &st));
    const sd_st_entry *e = sd_st_find(&st, "model.embed_tokens.weight");
    CHECK(e && e->dtype == SD_BF16 && e->ndim == 2 && e->shape[0] == 320 && e->shape[1] == 64, "embed entry");
    sd_tensor raw, f;
    if (e) {
        CHECK_OK(sd_st_read(&st, e, &raw));
        CHECK_OK(sd_st_read_f32(&st, e->name, &f));
        int same = 1;
        for (int64_t i = 0; i < sd_numel(&raw); i++) same &= ((float *)f.data)[i] == sd_bf16_to_f32(((uint16_t *)raw.data)[i]);
        CHECK(same, "real bf16 conversion");
        sd_tensor_free(&raw);
        sd_tensor_free(&f);
    }
    sd_st_close(&st);
    sd_weights w;
    sd_weights_init(&w);
    CHECK_OK(sd_st_load_all(path, &w));
    CHECK(w.n == 21, "tiny-llama-bf16 has %d tensors", w.n);
    sd_weights_free(&w);
}

/* Writes 8-byte length + header + data bytes. */
static char *write_raw(const char *name, uint64_t hlen, const char *header, size_t data_len) {
    char *path = tmp_path(name);
    FILE *f = fopen(path, "wb");
    fwrite(&hlen, 8, 1, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data_len; i++) fputc(0, f);
    fclose(f);
    return path;
}

static void expect_bad(const char *name, uint64_t hlen, const char *header, size_t data_len, const char *frag) {
    char *path = write_raw(name, hlen ? hlen : strlen(header), header, data_len);
    sd_safetensors st;
    int rc = sd_st_open(path, &st);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), path) && strstr(sd_errmsg(), frag), "%s: rc %d '%s' (want '%s')",
          name, rc, sd_errmsg(), frag);
    remove(path);
    free(path);
}

static void test_bad_headers(void) {
    char *shortp = tmp_path("short.st");
    FILE *f = fopen(shortp, "wb");
    fputs("abc", f);
    fclose(f);
    sd_safetensors st;
    int rc = sd_st_open(shortp, &st);
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), shortp) && strstr(sd_errmsg(), "too short"), "%s", sd_errmsg());
    remove(shortp);
    free(shortp);
    expect_bad("empty.st", 0, "", 0, "not valid JSON");
    expect_bad("hlen.st", 1000, "{}", 0, "header length 1000 past the end");
    expect_bad("json.st", 0, "{\"x\": ", 0, "not valid JSON");
    expect_bad("f64.st", 0, "{\"x\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 16]}}", 16,
               "tensor 'x': field 'dtype': unsupported dtype 'F64'");
    expect_bad("weird.st", 0, "{\"x\": {\"dtype\": \"Q4\", \"shape\": [2], \"data_offsets\": [0, 2]}}", 2,
               "unsupported dtype 'Q4'");
    expect_bad("past.st", 0, "{\"x\": {\"dtype\": \"F32\", \"shape\": [100], \"data_offsets\": [0, 400]}}", 360,
               "tensor 'x': data_offsets [0, 400] past the end of the data section (360 bytes)");
    expect_bad("size.st", 0, "{\"x\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 8,
               "tensor 'x': shape and dtype F32 need 12 bytes");
    expect_bad("shape.st", 0, "{\"x\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4,
               "field 'shape'");
    expect_bad("offs.st", 0, "{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4]}}", 8,
               "field 'data_offsets'");
    expect_bad("overlap.st", 0,
               "{\"x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
               " \"y\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
               12, "overlaps");
    expect_bad("nodtype.st", 0, "{\"x\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "field 'dtype'");
}

int main(void) {
    CHECK(mkdtemp(g_dir) != NULL, "mkdtemp");
    test_round_trip();
    test_sharded();
    test_real_bf16();
    test_bad_headers();
    rmdir(g_dir);
    return test_summary("test_safetensors");
}
