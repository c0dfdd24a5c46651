/* HF config.json parser: every config in the data folder, the variants the data does not
 * show (llama3 rope_scaling, top-level rope_theta, Mistral sliding window, bad fields), and
 * the to_json -> parse round trip. */
#include "common/error.h"
#include "convert/hf_config.h"
#include "test_util.h"

static const char *g_models[] = {"stories260K", "tiny-llama-gqa", "tiny-llama-bf16", "tiny-qwen2",
                                 "tiny-phi",    "tiny-gpt2",      "tiny-mamba2"};

static int load(const char *model, sd_model_config *cfg) {
    char path[1024], rel[256];
    snprintf(rel, sizeof rel, "hf/%s/config.json", model);
    test_path(path, sizeof path, rel);
    return sd_hf_config_load(path, cfg);
}

static void check_round_trip(const sd_model_config *cfg, const char *what) {
    char *json = NULL;
    sd_model_config back;
    CHECK_OK(sd_hf_config_to_json(cfg, &json));
    if (!json) return;
    CHECK_OK(sd_hf_config_parse(json, "round trip", &back));
    CHECK(memcmp(cfg, &back, sizeof back) == 0, "%s: round trip differs:\n%s", what, json);
    free(json);
}

static void test_data_configs(void) {
    sd_model_config c;
    CHECK_OK(load("stories260K", &c));
    CHECK(c.arch == SD_ARCH_LLAMA && c.hidden_size == 64 && c.num_layers == 5 && c.num_heads == 8 &&
              c.num_kv_heads == 4 && c.head_dim == 8 && c.intermediate_size == 172 && c.vocab_size == 512,
          "stories260K dims");
    CHECK(c.tie_word_embeddings == 1 && c.norm_eps == 1e-5f && c.rope.theta == 1e4 && c.rope.rotary_dim == 8 &&
              c.rope.interleaved == 0 && c.rope.scaling == SD_ROPE_SCALING_NONE,
          "stories260K tie/eps/rope");
    CHECK(c.bos_token_id == 1 && c.eos_token_id == 2 && c.max_position_embeddings == 512 && !c.attention_bias &&
              !c.o_proj_bias && !c.mlp_bias && strcmp(c.hidden_act, "silu") == 0,
          "stories260K ids/bias");

    CHECK_OK(load("tiny-llama-gqa", &c));
    CHECK(c.num_heads == 4 && c.num_kv_heads == 2 && c.head_dim == 16 && !c.tie_word_embeddings && c.norm_eps == 1e-6f,
          "gqa");
    CHECK_OK(load("tiny-llama-bf16", &c));
    CHECK(c.num_heads == 4 && c.num_kv_heads == 4 && c.intermediate_size == 176 && c.vocab_size == 320, "bf16");

    CHECK_OK(load("tiny-qwen2", &c));
    CHECK(c.arch == SD_ARCH_QWEN2 && c.rope.theta == 1e6 && c.attention_bias == 1 && c.o_proj_bias == 0 &&
              c.tie_word_embeddings == 1 && c.bos_token_id == -1 && c.eos_token_id == -1 && c.num_kv_heads == 2,
          "qwen2");

    CHECK_OK(load("tiny-phi", &c));
    CHECK(c.arch == SD_ARCH_PHI && c.head_dim == 16 && c.rope.rotary_dim == 8 && c.norm_eps == 1e-5f &&
              strcmp(c.hidden_act, "gelu_new") == 0 && c.attention_bias && c.o_proj_bias && c.mlp_bias,
          "phi");

    CHECK_OK(load("tiny-gpt2", &c));
    CHECK(c.arch == SD_ARCH_GPT2 && c.hidden_size == 64 && c.num_heads == 4 && c.num_layers == 2 &&
              c.max_position_embeddings == 256 && c.intermediate_size == 256 && c.norm_eps == 1e-5f &&
              c.tie_word_embeddings && c.vocab_size == 320 && c.eos_token_id == 50256,
          "gpt2");

    CHECK_OK(load("tiny-mamba2", &c));
    CHECK(c.arch == SD_ARCH_MAMBA2 && c.hidden_size == 64 && c.num_layers == 2 && c.vocab_size == 320 &&
              c.norm_eps == 1e-5f && c.num_heads == 8 && c.head_dim == 16 && !c.tie_word_embeddings,
          "mamba2");
    const sd_ssm_config *m = &c.ssm;
    CHECK(m->mixer == SD_MIXER_STANDARD && m->num_heads == 8 && m->head_dim == 16 && m->state_size == 16 &&
              m->n_groups == 1 && m->conv_kernel == 4 && m->chunk_size == 16 && m->use_conv_bias && !m->use_bias &&
              m->time_step_min == 0.0 && isinf(m->time_step_max) && m->time_step_max > 0,
          "mamba2 mixer: N %d G %d conv %d chunk %d limit [%g, %g]", m->state_size, m->n_groups, m->conv_kernel,
          m->chunk_size, m->time_step_min, m->time_step_max);

    for (size_t i = 0; i < sizeof g_models / sizeof g_models[0]; i++) {
        CHECK_OK(load(g_models[i], &c));
        check_round_trip(&c, g_models[i]);
    }
}

static void test_variants(void) {
    sd_model_config c;
    const char *llama3 =
        "{\"model_type\": \"llama\", \"vocab_size\": 128256, \"hidden_size\": 2048, \"num_hidden_layers\": 16,"
        " \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"intermediate_size\": 8192,"
        " \"rope_theta\": 500000.0, \"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": true,"
        " \"eos_token_id\": [128001, 128008, 128009], \"bos_token_id\": 128000,"
        " \"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
        " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}}";
    CHECK_OK(sd_hf_config_parse(llama3, "llama3.json", &c));
    CHECK(c.rope.theta == 500000.0 && c.rope.scaling == SD_ROPE_SCALING_LLAMA3 && c.rope.factor == 32.0 &&
              c.rope.low_freq_factor == 1.0 && c.rope.high_freq_factor == 4.0 &&
              c.rope.original_max_position_embeddings == 8192,
          "llama3 rope_scaling");
    CHECK(c.head_dim == 64 && c.num_kv_heads == 8 && c.eos_token_id == 128001 && c.bos_token_id == 128000, "llama3 dims");
    check_round_trip(&c, "llama3");

    const char *old = "{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
                      " \"num_attention_heads\": 2, \"intermediate_size\": 32, \"rope_theta\": 1234.5,"
                      " \"attention_bias\": true, \"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8,"
                      " \"low_freq_factor\": 1, \"high_freq_factor\": 4, \"original_max_position_embeddings\": 64}}";
    CHECK_OK(sd_hf_config_parse(old, "old.json", &c));
    CHECK(c.rope.theta == 1234.5 && c.num_kv_heads == 2 && c.head_dim == 8 && c.attention_bias && c.o_proj_bias &&
              c.rope.scaling == SD_ROPE_SCALING_LLAMA3 && c.eos_token_id == -1,
          "top-level rope_theta, defaults, attention_bias");
    check_round_trip(&c, "old llama");

    const char *mistral = "{\"model_type\": \"mistral\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
                          " \"num_attention_heads\": 2, \"intermediate_size\": 32, \"sliding_window\": null}";
    CHECK_OK(sd_hf_config_parse(mistral, "mistral.json", &c));
    check_round_trip(&c, "mistral");

    /* Real Qwen2 files set a window but switch it off. */
    const char *qwen = "{\"model_type\": \"qwen2\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
                       " \"num_attention_heads\": 2, \"intermediate_size\": 32, \"sliding_window\": 32768,"
                       " \"use_sliding_window\": false, \"rope_theta\": 1000000.0, \"eos_token_id\": null}";
    CHECK_OK(sd_hf_config_parse(qwen, "qwen.json", &c));
    CHECK(c.arch == SD_ARCH_QWEN2 && c.attention_bias && !c.o_proj_bias && c.rope.theta == 1e6, "qwen2 window off");
    check_round_trip(&c, "qwen2");
    /* model_type absent: architectures[0] decides. */
    const char *noty = "{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 32, \"hidden_size\": 16,"
                       " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"intermediate_size\": 32}";
    CHECK_OK(sd_hf_config_parse(noty, "noty.json", &c));
    CHECK(c.arch == SD_ARCH_MISTRAL && strcmp(c.model_type, "mistral") == 0, "architectures fallback");

    /* Our student: a Qwen2-like teacher's fields (q/k/v biases, no o_proj bias), a discrete
     * mixer in groups, attention kept in layers 0 and 2. */
    const char *student =
        "{\"model_type\": \"ssdistill_student\", \"vocab_size\": 32, \"hidden_size\": 16,"
        " \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
        " \"intermediate_size\": 40, \"attention_bias\": true, \"o_proj_bias\": false, \"rope_theta\": 1e6,"
        " \"ssm_cfg\": {\"mixer\": \"discrete\", \"num_heads\": 4, \"head_dim\": 4, \"state_size\": 8,"
        " \"n_groups\": 2, \"chunk_size\": 16}, \"attn_layer_idx\": [2, 0]}";
    CHECK_OK(sd_hf_config_parse(student, "student.json", &c));
    CHECK(c.arch == SD_ARCH_STUDENT && c.ssm.mixer == SD_MIXER_DISCRETE && c.ssm.num_heads == 4 &&
              c.ssm.head_dim == 4 && c.ssm.state_size == 8 && c.ssm.n_groups == 2 && c.ssm.chunk_size == 16 &&
              c.ssm.conv_kernel == 4 && c.ssm.use_conv_bias && c.attention_bias && !c.o_proj_bias &&
              c.attn_layer[0] && !c.attn_layer[1] && c.attn_layer[2] && c.intermediate_size == 40,
          "student config fields");
    check_round_trip(&c, "student");
}

/* Each bad config: SD_ERR_INPUT and a message holding every listed fragment. */
static void expect_bad(const char *json, const char *frag1, const char *frag2) {
    sd_model_config c;
    int rc = sd_hf_config_parse(json, "bad/config.json", &c);
    const char *m = sd_errmsg();
    CHECK(rc == SD_ERR_INPUT && strstr(m, "bad/config.json") && strstr(m, frag1) && (!frag2 || strstr(m, frag2)),
          "rc %d, message '%s' (expected '%s')", rc, m, frag1);
}

static void test_bad(void) {
    expect_bad("{not json", "not valid JSON", NULL);
    expect_bad("[1, 2]", "not a JSON object", NULL);
    expect_bad("{\"model_type\": \"bert\", \"hidden_size\": 8}", "field 'model_type': unknown architecture 'bert'",
               "supported: llama, mistral, qwen2; recognised: phi, gpt2, mamba2, ssdistill_student");
    expect_bad("{\"hidden_size\": 8}", "'model_type'", NULL);
    expect_bad("{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": \"big\", \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"intermediate_size\": 32}", "field 'hidden_size'", "integer");
    expect_bad("{\"model_type\": \"llama\", \"vocab_size\": 32, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"intermediate_size\": 32}", "field 'hidden_size'", "missing");
    expect_bad("{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"num_key_value_heads\": 3, \"intermediate_size\": 32}",
               "num_key_value_heads", NULL);
    expect_bad("{\"model_type\": \"mistral\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"intermediate_size\": 32, \"sliding_window\": 4096}",
               "field 'sliding_window'", NULL);
    expect_bad("{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"intermediate_size\": 32, \"rope_scaling\": {\"type\": \"yarn\"}}",
               "field 'rope_scaling'", "yarn");
    expect_bad("{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"intermediate_size\": 32, \"rope_scaling\": {\"rope_type\": \"llama3\"}}",
               "factor", NULL);
    expect_bad("{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"intermediate_size\": 32, \"tie_word_embeddings\": 1}",
               "field 'tie_word_embeddings'", NULL);
    expect_bad("{\"model_type\": \"qwen2\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"intermediate_size\": 32, \"sliding_window\": 64,"
               " \"use_sliding_window\": true}", "field 'sliding_window'", NULL);
    expect_bad("{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"intermediate_size\": 32, \"eos_token_id\": \"</s>\"}",
               "field 'eos_token_id'", NULL);
    expect_bad("{\"model_type\": \"gpt2\", \"vocab_size\": 32, \"n_embd\": 16, \"n_layer\": 1, \"n_positions\": 8}",
               "field 'n_head'", NULL);
#define STUDENT_HEAD "{\"model_type\": \"ssdistill_student\", \"vocab_size\": 32, \"hidden_size\": 16, " \
                     "\"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"intermediate_size\": 32, "
    expect_bad(STUDENT_HEAD "\"attn_layer_idx\": []}", "field 'ssm_cfg'", NULL);
    expect_bad(STUDENT_HEAD "\"ssm_cfg\": {\"mixer\": \"s6\", \"num_heads\": 2, \"head_dim\": 8}}", "ssm_cfg.mixer", "s6");
    expect_bad(STUDENT_HEAD "\"ssm_cfg\": {\"mixer\": \"discrete\", \"head_dim\": 8}}", "field 'num_heads'", NULL);
    expect_bad(STUDENT_HEAD "\"ssm_cfg\": {\"mixer\": \"discrete\", \"num_heads\": 2, \"head_dim\": 8},"
               " \"attn_layer_idx\": [2]}", "field 'attn_layer_idx'", "0..1");
    expect_bad(STUDENT_HEAD "\"ssm_cfg\": {\"mixer\": \"discrete\", \"num_heads\": 2, \"head_dim\": 8},"
               " \"attn_layer_idx\": [1, 1]}", "field 'attn_layer_idx'", "twice");
#undef STUDENT_HEAD
}

int main(void) {
    test_data_configs();
    test_variants();
    test_bad();
    return test_summary("test_hf_config");
}
