/* Export and import: random students exported in every format that can hold them and read
 * back with sd_load_model give bit-identical logits (same fp32 weights, same code); the
 * formats that cannot hold a model refuse it, naming the one that can; `generate` and `eval`
 * run on an exported folder (through the binary, SSDISTILL_BIN). */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/export.h"
#include "convert/model_io.h"
#include "distill/student_train.h"
#include "test_util.h"

#include <unistd.h>

/* A random student of our layout: d 32, 3 layers, chunk 16; hybrid: attention (GQA 4/2,
 * q/k/v biases, partial rotary) in layer 1. */
static sd_model_config student_config(sd_mixer_type mixer, int hybrid, int vocab) {
    sd_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SD_ARCH_STUDENT;
    snprintf(c.model_type, sizeof c.model_type, "ssdistill_student");
    snprintf(c.hidden_act, sizeof c.hidden_act, "silu");
    c.vocab_size = vocab;
    c.hidden_size = 32;
    c.num_layers = 3;
    c.intermediate_size = 48;
    c.norm_eps = 1e-5f;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 8;
    c.max_position_embeddings = 512;
    c.rope = (sd_rope_config){.head_dim = 8, .rotary_dim = 4, .theta = 10000.0};
    c.attention_bias = 1;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.ssm = (sd_ssm_config){.mixer = mixer, .num_heads = 4, .head_dim = 8, .state_size = 8, .n_groups = 2,
                            .conv_kernel = 4, .use_conv_bias = 1, .chunk_size = 16,
                            .time_step_min = 0.0, .time_step_max = INFINITY};
    c.attn_layer[1] = (unsigned char)hybrid;
    return c;
}

/* HF Mamba-2 (standard mixer, no MLPs): d 32, 2 layers, 4 heads of 16 (expand 2). */
static sd_model_config mamba2_config(void) {
    sd_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SD_ARCH_MAMBA2;
    snprintf(c.model_type, sizeof c.model_type, "mamba2");
    snprintf(c.hidden_act, sizeof c.hidden_act, "silu");
    c.vocab_size = 50;
    c.hidden_size = 32;
    c.num_layers = 2;
    c.num_heads = c.num_kv_heads = 4;
    c.head_dim = 16;
    c.intermediate_size = 64;
    c.norm_eps = 1e-5f;
    c.bos_token_id = c.eos_token_id = -1;
    c.ssm = (sd_ssm_config){.mixer = SD_MIXER_STANDARD, .num_heads = 4, .head_dim = 16, .state_size = 8, .n_groups = 2,
                            .conv_kernel = 4, .use_conv_bias = 1, .chunk_size = 16,
                            .time_step_min = 0.0, .time_step_max = INFINITY};
    return c;
}

static void tmp_dir(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "/tmp/ssdistill_test_export_%d_%s", (int)getpid(), tag);
}

static void remove_dir(const char *dir) {
    static const char *files[] = {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                                  "special_tokens_map.json"};
    for (int i = 0; i < 5; i++) {
        char *p = sd_path_join(dir, files[i]);
        if (p) remove(p);
        free(p);
    }
    rmdir(dir);
}

static void logits_of(sd_ctx *ctx, const sd_student *s, sd_tensor *out) {
    enum { T = 24 };
    int32_t seq[T];
    for (int i = 0; i < T; i++) seq[i] = (i * 13 + 5) % s->cfg.vocab_size;
    int64_t shape[2] = {1, T};
    sd_tensor ids = sd_tensor_view(SD_I32, seq, 2, shape);
    CHECK_OK(sd_tensor_f32(out, 3, 1, T, s->cfg.vocab_size, 0));
    test_poison(out->data, (size_t)sd_numel(out));
    CHECK_OK(sd_student_forward(ctx, s, &ids, out, NULL, NULL));
}

/* Exports s in format f, loads the folder back, compares the logits bit for bit. */
static void round_trip(sd_ctx *ctx, const sd_student *s, sd_export_format f, const char *label) {
    char dir[256];
    tmp_dir(dir, sizeof dir, sd_export_format_name(f));
    CHECK_OK(sd_export(&s->cfg, &s->w, f, "random student", dir, NULL));
    sd_model_config cfg;
    sd_weights w;
    sd_student back;
    memset(&back, 0, sizeof back);
    CHECK_OK(sd_load_model(dir, &cfg, &w));
    CHECK(sd_is_student(&cfg), "%s: not read back as a student", label);
    if (sd_is_student(&cfg)) CHECK_OK(sd_student_init(&back, &cfg, &w, dir));
    sd_weights_free(&w);
    sd_tensor a, b;
    logits_of(ctx, s, &a);
    if (back.layers) logits_of(ctx, &back, &b);
    int same = back.layers && memcmp(a.data, b.data, sd_nbytes(&a)) == 0;
    CHECK(same, "%s as %s: logits differ after export and load", label, sd_export_format_name(f));
    if (same) printf("%s as %s: logits bit-identical after export and load\n", label, sd_export_format_name(f));
    sd_tensor_free(&a);
    if (back.layers) sd_tensor_free(&b);
    sd_student_free(&back);
    remove_dir(dir);
}

static void refused(const sd_model_config *cfg, sd_export_format f, const char *want, const char *label) {
    int rc = sd_export_check(cfg, f, "random student");
    CHECK(rc == SD_ERR_INPUT && strstr(sd_errmsg(), want), "%s as %s: rc %d, '%s' (wanted '%s')", label,
          sd_export_format_name(f), rc, sd_errmsg(), want);
}

static void test_kind(sd_ctx *ctx, sd_model_config cfg, const char *label, const int fits[3], const char *home) {
    sd_student s;
    CHECK_OK(sd_student_init_random(&s, &cfg, 7));
    for (int f = 0; f < 3 && s.layers; f++) {
        if (fits[f]) round_trip(ctx, &s, (sd_export_format)f, label);
        else refused(&cfg, (sd_export_format)f, home, label);
    }
    sd_student_free(&s);
}

/* Features mamba_ssm's MHA cannot express are refused. */
static void test_refusals(void) {
    sd_model_config c = student_config(SD_MIXER_STANDARD, 1, 50);
    c.rope.scaling = SD_ROPE_SCALING_LLAMA3;
    refused(&c, SD_EXPORT_MAMBA_SSM, "llama3 rope scaling", "hybrid with llama3 rope");
    c = student_config(SD_MIXER_STANDARD, 0, 50);
    c.norm_eps = 1e-6f;
    refused(&c, SD_EXPORT_MAMBA_SSM, "norm epsilon", "student with eps 1e-6");
    c = student_config(SD_MIXER_DISCRETE, 1, 50);
    refused(&c, SD_EXPORT_LLAMBA, "no attention layers", "discrete hybrid");
    sd_export_format f;
    CHECK(sd_export_format_parse("onnx", &f) == SD_ERR_INPUT, "format onnx accepted");
}

/* The binary on an exported folder: generate runs (exit 0) and eval reads the copied
 * tokenizer.json beside the model. */
static void test_commands(sd_ctx *ctx) {
    const char *bin = getenv("SSDISTILL_BIN");
    if (!bin || !*bin) {
        printf("SSDISTILL_BIN not set: command checks skipped\n");
        return;
    }
    char dir[256], teacher[1024], tok[1024], text[1024], cmd[4096];
    tmp_dir(dir, sizeof dir, "cli");
    test_path(teacher, sizeof teacher, "hf/stories260K");
    test_path(tok, sizeof tok, "tokenizers/tok512/tokenizer.json");
    test_path(text, sizeof text, "text/tinystories_val_dev.txt");
    sd_model_config cfg = student_config(SD_MIXER_DISCRETE, 0, 512);
    sd_student s;
    CHECK_OK(sd_student_init_random(&s, &cfg, 11));
    if (s.layers) CHECK_OK(sd_export(&s.cfg, &s.w, SD_EXPORT_LLAMBA, "random student", dir, teacher));
    sd_student_free(&s);
    snprintf(cmd, sizeof cmd, "'%s' generate --model '%s' --tokenizer '%s' --tokens 20 --seed 3 >/dev/null 2>&1", bin, dir, tok);
    CHECK(system(cmd) == 0, "generate on an exported llamba folder failed: %s", cmd);
    snprintf(cmd, sizeof cmd, "'%s' eval --model '%s' --data '%s' --tokens 2048 --seq-len 128 >/dev/null 2>&1", bin, dir, text);
    CHECK(system(cmd) == 0, "eval on an exported llamba folder failed: %s", cmd);
    printf("generate and eval ran on an exported llamba folder\n");
    remove_dir(dir);
    (void)ctx;
}

int main(void) {
    sd_ctx ctx;
    sd_ctx_init_cpu(&ctx, 0);
    /* fits: llamba, mamba_ssm, hf-mamba2 */
    static const int discrete[3] = {1, 0, 0}, hybrid[3] = {0, 1, 0}, standard[3] = {0, 1, 0}, mamba2[3] = {0, 1, 1};
    test_kind(&ctx, student_config(SD_MIXER_DISCRETE, 0, 50), "discrete + MLP", discrete, "format that can: llamba");
    test_kind(&ctx, student_config(SD_MIXER_STANDARD, 1, 50), "standard + MLP hybrid", hybrid, "format that can: mamba_ssm");
    test_kind(&ctx, student_config(SD_MIXER_STANDARD, 0, 50), "standard + MLP", standard, "format that can: mamba_ssm");
    test_kind(&ctx, mamba2_config(), "HF Mamba-2", mamba2, "format that can: hf-mamba2 or mamba_ssm");
    /* attn_cfg's other spellings: no q/k/v bias but an out_proj bias, interleaved rotary, base 5e5 */
    sd_model_config c = student_config(SD_MIXER_STANDARD, 1, 50);
    c.attention_bias = 0;
    c.o_proj_bias = 1;
    c.rope.interleaved = 1;
    c.rope.theta = 500000.0;
    test_kind(&ctx, c, "hybrid, out_proj bias, interleaved rotary", hybrid, "format that can: mamba_ssm");
    test_refusals();
    test_commands(&ctx);
    return test_summary("test_export");
}
