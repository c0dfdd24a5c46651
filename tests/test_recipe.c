/* Recipes: a recipe with every key survives to_json and parse unchanged; defaults are filled;
 * every kind of mistake is SD_ERR_INPUT with a message naming the file and the JSON path;
 * the glob matcher; the student defaults that need the teacher; and the shipped recipes
 * (the .json files in recipes/, found next to this file) parse. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fileio.h"
#include "distill/recipe.h"
#include "tests/test_util.h"

static char g_tmp[256];

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* base with the n-th (0-based) occurrence of from replaced by to; caller frees. */
static char *with(const char *base, const char *from, int n, const char *to) {
    const char *at = strstr(base, from);
    while (at && n-- > 0) at = strstr(at + 1, from);
    if (!at) {
        fprintf(stderr, "test bug: '%s' not in the base recipe\n", from);
        abort();
    }
    size_t pre = (size_t)(at - base), fl = strlen(from), tl = strlen(to), rest = strlen(at + fl);
    char *s = malloc(pre + tl + rest + 1);
    if (!s) abort();
    memcpy(s, base, pre);
    memcpy(s + pre, to, tl);
    memcpy(s + pre + tl, at + fl, rest + 1);
    return s;
}

/* ---- a recipe with every key ------------------------------------------------------------- */

static const char *k_full =
    "{\n"
    "  \"name\": \"full\",\n"
    "  \"teacher\": \"models/../teacher\",\n"
    "  \"tokenizer\": \"${SSDISTILL_DATA}/tokenizers/tok512/tokenizer.json\",\n"
    "  \"data\": {\"train\": [\"shards/a.bin\", \"/abs/b.txt\"], \"eval\": \"./val.txt\",\n"
    "           \"sample\": {\"tokens\": 5000, \"seq_len\": 64, \"temperature\": 0.8, \"top_p\": 0.9,\n"
    "                      \"seed\": 7, \"out\": \"sampled.bin\"}},\n"
    "  \"student\": {\"mixer\": \"standard\", \"num_heads\": 4, \"head_dim\": 32, \"state_size\": 16,\n"
    "              \"n_groups\": 2, \"conv_kernel\": 3, \"chunk_size\": 32, \"expand\": 2,\n"
    "              \"init\": \"attention\", \"attn_layers\": [3, 1]},\n"
    "  \"seed\": 42, \"device\": \"cuda\", \"threads\": 2,\n"
    "  \"eval\": {\"tokens\": 4096, \"seq_len\": 128, \"batch\": 4},\n"
    "  \"stages\": [\n"
    "    {\"stage\": 1, \"tokens\": 10000, \"batch\": 2, \"seq_len\": 64,\n"
    "     \"schedule\": {\"type\": \"constant\", \"lr\": 0.001, \"warmup_steps\": 5},\n"
    "     \"weight_decay\": 0.0, \"betas\": [0.8, 0.99], \"clip\": 0.5, \"trainable\": [\"*.mixer.in_proj.*\"],\n"
    "     \"log_every\": 2, \"eval_every\": 20, \"checkpoint_every\": 50},\n"
    "    {\"stage\": 2, \"tokens\": 20000, \"batch\": 4, \"seq_len\": 64, \"target\": \"block_out\", \"parallel\": \"layers\",\n"
    "     \"schedule\": {\"type\": \"cosine\", \"lr\": 0.002, \"min_lr\": 0.0001, \"warmup_steps\": 10}},\n"
    "    {\"stage\": 3, \"tokens\": 100000, \"batch\": 8, \"seq_len\": 128, \"temperature\": 2.0, \"ce_weight\": 0.25,\n"
    "     \"schedule\": {\"type\": \"wsd\", \"lr\": 0.0005, \"min_lr\": 0.00001, \"decay_fraction\": 0.3,\n"
    "                  \"decay_shape\": \"1-sqrt\", \"total_steps\": 90}}\n"
    "  ]\n"
    "}\n";

static void check_full_fields(const sd_recipe *r) {
    char want[1024];
    CHECK(strcmp(r->name, "full") == 0, "name %s", r->name);
    snprintf(want, sizeof want, "%s/teacher", g_tmp);
    CHECK(strcmp(r->teacher, want) == 0, "teacher %s, want %s", r->teacher, want);
    CHECK(strstr(r->tokenizer, "/tokenizers/tok512/tokenizer.json") && r->tokenizer[0] == '/' &&
              !strstr(r->tokenizer, "${"), "tokenizer %s", r->tokenizer);
    CHECK(r->n_train == 2, "n_train %d", r->n_train);
    snprintf(want, sizeof want, "%s/shards/a.bin", g_tmp);
    CHECK(r->n_train == 2 && strcmp(r->train[0], want) == 0 && strcmp(r->train[1], "/abs/b.txt") == 0,
          "train %s", r->n_train ? r->train[0] : "-");
    snprintf(want, sizeof want, "%s/val.txt", g_tmp);
    CHECK(r->eval_data && strcmp(r->eval_data, want) == 0, "eval %s", r->eval_data);
    CHECK(r->sample.present && r->sample.tokens == 5000 && r->sample.seq_len == 64 &&
              r->sample.temperature == 0.8 && r->sample.top_p == 0.9 && r->sample.seed == 7, "sample");
    const sd_recipe_student *s = &r->student;
    CHECK(s->mixer == SD_RECIPE_MIXER_STANDARD && s->num_heads == 4 && s->head_dim == 32 && s->state_size == 16 &&
              s->n_groups == 2 && s->conv_kernel == 3 && s->chunk_size == 32 && s->expand == 2 &&
              s->init == SD_RECIPE_INIT_ATTENTION, "student");
    CHECK(s->n_attn_layers == 2 && s->attn_layers[0] == 1 && s->attn_layers[1] == 3, "attn_layers sorted");
    CHECK(r->seed == 42 && r->device == SD_DEVICE_CUDA && r->threads == 2, "seed/device/threads");
    CHECK(r->has_eval && r->eval_tokens == 4096 && r->eval_seq_len == 128 && r->eval_batch == 4, "eval");
    CHECK(r->n_stages == 3, "n_stages %d", r->n_stages);
    const sd_recipe_stage *a = &r->stages[0], *b = &r->stages[1], *c = &r->stages[2];
    CHECK(a->steps == 79 && a->schedule.total_steps == 79, "stage 1 steps %lld", (long long)a->steps);
    CHECK(a->weight_decay == 0.0 && a->beta1 == 0.8 && a->beta2 == 0.99 && a->clip == 0.5 &&
              a->log_every == 2 && a->eval_every == 20 && a->checkpoint_every == 50, "stage 1 optimizer");
    CHECK(a->n_trainable == 1 && strcmp(a->trainable[0], "*.mixer.in_proj.*") == 0, "stage 1 trainable");
    CHECK(b->target == SD_TARGET_BLOCK_OUT && b->schedule.type == SD_SCHED_COSINE && b->steps == 79,
          "stage 2");
    CHECK(a->parallel == SD_PARALLEL_DATA && b->parallel == SD_PARALLEL_LAYERS && c->parallel == SD_PARALLEL_DATA,
          "parallel: default data, stage 2 layers");
    CHECK(c->temperature == 2.0 && c->ce_weight == 0.25 && c->schedule.total_steps == 90 &&
              c->schedule.decay_shape == SD_DECAY_1_SQRT && c->steps == 98, "stage 3");
}

static void test_round_trip(void) {
    char path[512], path2[512];
    snprintf(path, sizeof path, "%s/full.json", g_tmp);
    snprintf(path2, sizeof path2, "%s/asrun.json", g_tmp);
    CHECK(write_text(path, k_full) == 0, "cannot write %s", path);
    sd_recipe r, r2;
    CHECK_OK(sd_recipe_load(path, &r));
    if (!r.name) return;
    check_full_fields(&r);
    char *j1 = NULL, *j2 = NULL;
    CHECK_OK(sd_recipe_to_json(&r, &j1));
    CHECK(j1 && write_text(path2, j1) == 0, "cannot write %s", path2);
    CHECK_OK(sd_recipe_load(path2, &r2));
    if (r2.name) {
        check_full_fields(&r2);
        CHECK_OK(sd_recipe_to_json(&r2, &j2));
        CHECK(j1 && j2 && strcmp(j1, j2) == 0, "to_json not stable:\n%s\n---\n%s", j1, j2);
    }
    /* The recipe as run holds no variables and only absolute paths. */
    CHECK(j1 && !strstr(j1, "${") && strstr(j1, "\"decay_shape\":\t\"1-sqrt\""), "as run:\n%s", j1);
    free(j1);
    free(j2);
    sd_recipe_free(&r);
    sd_recipe_free(&r2);
}

/* ---- defaults --------------------------------------------------------------------------- */

static const char *k_base =
    "{\"name\": \"t\", \"teacher\": \"/models/teacher.bin\", \"data\": {\"train\": [\"a.bin\"]},\n"
    " \"student\": {\"mixer\": \"discrete\"},\n"
    " \"stages\": [\n"
    "  {\"stage\": 1, \"tokens\": 1000, \"batch\": 2, \"seq_len\": 10, \"schedule\": {\"type\": \"constant\", \"lr\": 0.001}},\n"
    "  {\"stage\": 2, \"tokens\": 1000, \"batch\": 2, \"seq_len\": 10, \"schedule\": {\"type\": \"constant\", \"lr\": 0.002}},\n"
    "  {\"stage\": 3, \"tokens\": 1001, \"batch\": 2, \"seq_len\": 10, \"schedule\": {\"type\": \"cosine\", \"lr\": 0.003}}]}\n";

static void test_defaults(void) {
    sd_recipe r;
    CHECK_OK(sd_recipe_parse(k_base, "recipe.json", &r));
    if (!r.name) return;
    CHECK(strcmp(r.tokenizer, "/models/tokenizer.json") == 0, "default tokenizer %s", r.tokenizer);
    const sd_recipe_student *s = &r.student;
    CHECK(s->state_size == 64 && s->conv_kernel == 4 && s->chunk_size == 64 && s->expand == 1 &&
              s->init == SD_RECIPE_INIT_MOHAWK && s->n_attn_layers == 0, "student defaults");
    CHECK(s->num_heads == 0 && s->head_dim == 0 && s->n_groups == 0, "teacher-dependent left unfilled");
    CHECK(r.seed == 0 && r.device == SD_DEVICE_CPU && r.threads == 0 && !r.has_eval && !r.sample.present &&
              !r.eval_data, "top-level defaults");
    for (int i = 0; i < r.n_stages; i++) {
        const sd_recipe_stage *st = &r.stages[i];
        CHECK(st->weight_decay == 0.1 && st->beta1 == 0.9 && st->beta2 == 0.95 && st->clip == 1.0 &&
                  st->log_every == 10 && st->eval_every == 0 && st->checkpoint_every == 0, "stage %d", i);
        CHECK(st->target == SD_TARGET_ATTN_OUT && st->temperature == 1.0 && st->ce_weight == 0.0, "stage %d", i);
        const char *want = st->stage == 3 ? "*" : "*.mixer.*";
        CHECK(st->n_trainable == 1 && strcmp(st->trainable[0], want) == 0, "stage %d trainable", i);
    }
    /* ceil(1001 / 20) = 51 steps, the schedule's default total. */
    CHECK(r.stages[0].steps == 50 && r.stages[2].steps == 51 && r.stages[2].schedule.total_steps == 51,
          "steps %lld %lld", (long long)r.stages[0].steps, (long long)r.stages[2].steps);

    /* Teacher shape: stories260K has d_model 64, 8 heads, 5 layers. */
    CHECK_OK(sd_recipe_fill_student(&r, 64, 8, 5));
    CHECK(s->num_heads == 8 && s->head_dim == 8 && s->n_groups == 8, "filled %d %d %d", s->num_heads,
          s->head_dim, s->n_groups);
    char *j = NULL;
    CHECK_OK(sd_recipe_to_json(&r, &j));
    CHECK(j && strstr(j, "\"num_heads\":\t8") && strstr(j, "\"n_groups\":\t8"), "filled fields in JSON:\n%s", j);
    free(j);
    sd_recipe_free(&r);

    /* Sample only: the sampled shard is the training data; standard mixers share one group. */
    char *t = with(k_base, "\"train\": [\"a.bin\"]", 0, "\"sample\": {\"tokens\": 100, \"seq_len\": 8, \"out\": \"s.bin\"}");
    char *u = with(t, "\"discrete\"", 0, "\"standard\"");
    CHECK_OK(sd_recipe_parse(u, "/r/recipe.json", &r));
    if (r.name) {
        CHECK(r.n_train == 1 && strcmp(r.train[0], "/r/s.bin") == 0 && strcmp(r.sample.out, "/r/s.bin") == 0,
              "train from sample %s", r.n_train ? r.train[0] : "-");
        CHECK(r.sample.temperature == 1.0 && r.sample.top_p == 1.0 && r.sample.seed == 1, "sample defaults");
        CHECK_OK(sd_recipe_fill_student(&r, 64, 8, 5));
        CHECK(r.student.n_groups == 1, "standard n_groups %d", r.student.n_groups);
    }
    sd_recipe_free(&r);
    free(t);
    free(u);
}

/* ---- errors -------------------------------------------------------------------------------- */

/* Replaces an occurrence of from in k_base and expects SD_ERR_INPUT with msg in the message
 * (and the file name in front). */
static void expect_error(const char *from, int n, const char *to, const char *msg) {
    char *text = with(k_base, from, n, to);
    sd_recipe r;
    sd_error_clear();
    int rc = sd_recipe_parse(text, "recipe.json", &r);
    const char *m = sd_errmsg();
    CHECK(rc == SD_ERR_INPUT, "'%s' -> '%s': rc %d, want SD_ERR_INPUT", from, to, rc);
    CHECK(strncmp(m, "recipe.json: ", 13) == 0 && strstr(m, msg), "'%s' -> '%s':\n  got:  %s\n  want: %s", from,
          to, m, msg);
    CHECK(r.name == NULL && r.n_stages == 0, "a failed parse leaves nothing to free");
    free(text);
}

static void test_errors(void) {
    /* Unknown keys, with and without a near key. */
    expect_error("\"schedule\"", 1, "\"shedule\"", "stages[1].shedule: unknown key (did you mean 'schedule'?)");
    expect_error("\"mixer\": \"discrete\"", 0, "\"mixer\": \"discrete\", \"stat_size\": 16",
                 "student.stat_size: unknown key (did you mean 'state_size'?)");
    expect_error("\"name\": \"t\"", 0, "\"name\": \"t\", \"qqqqqq\": 1", "qqqqqq: unknown key (expected one of 'name'");
    expect_error("\"lr\": 0.003", 0, "\"lrr\": 0.003", "stages[2].schedule.lrr: unknown key (did you mean 'lr'?)");
    expect_error("\"train\"", 0, "\"trian\"", "data.trian: unknown key (did you mean 'train'?)");
    /* Wrong types. */
    expect_error("\"batch\": 2", 0, "\"batch\": \"2\"", "stages[0].batch: expected an integer, got a string");
    expect_error("\"teacher\": \"/models/teacher.bin\"", 0, "\"teacher\": 5", "teacher: expected a string, got a number");
    expect_error("\"tokens\": 1000", 0, "\"tokens\": 10.5", "stages[0].tokens: expected an integer, got 10.5");
    expect_error("\"student\": {\"mixer\": \"discrete\"}", 0, "\"student\": 3", "student: expected an object, got a number");
    expect_error("\"seq_len\": 10", 2, "\"seq_len\": 10, \"betas\": 0.9", "stages[2].betas: expected an array");
    expect_error("\"mixer\": \"discrete\"", 0, "\"mixer\": \"discreet\"",
                 "student.mixer: expected \"discrete\" or \"standard\", got \"discreet\"");
    expect_error("\"name\": \"t\"", 0, "\"name\": \"t\", \"device\": \"tpu\"", "device: expected \"cpu\" or \"cuda\"");
    /* Out of range. */
    expect_error("\"mixer\": \"discrete\"", 0, "\"mixer\": \"discrete\", \"conv_kernel\": 5",
                 "student.conv_kernel: out of range: 5 (expected 2..4)");
    expect_error("\"tokens\": 1000", 0, "\"tokens\": 0", "stages[0].tokens: out of range: 0");
    expect_error("\"seq_len\": 10", 2, "\"seq_len\": 10, \"ce_weight\": 1.5", "stages[2].ce_weight: out of range: 1.5");
    expect_error("\"seq_len\": 10", 0, "\"seq_len\": 10, \"betas\": [0.9, 1.0]", "stages[0].betas[1]: out of range");
    expect_error("\"seq_len\": 10", 0, "\"seq_len\": 10, \"betas\": [0.9]", "stages[0].betas: expected 2 numbers");
    expect_error("\"mixer\": \"discrete\"", 0, "\"mixer\": \"discrete\", \"attn_layers\": [-1]",
                 "student.attn_layers[0]: out of range: -1");
    expect_error("\"mixer\": \"discrete\"", 0, "\"mixer\": \"discrete\", \"attn_layers\": [2, 0, 2]",
                 "student.attn_layers[2]: layer 2 is listed twice");
    expect_error("\"mixer\": \"discrete\"", 0, "\"mixer\": \"discrete\", \"num_heads\": 6, \"n_groups\": 4",
                 "student.n_groups: 4 does not divide num_heads 6");
    expect_error("\"lr\": 0.003", 0, "\"lr\": -1", "stages[2].schedule: field 'lr'");
    /* Stage order and count. */
    expect_error("\"stage\": 2", 0, "\"stage\": 1", "stages[1].stage: stage 1 after stage 1");
    expect_error("\"stage\": 3", 0, "\"stage\": 2", "stages[2].stage: stage 2 after stage 2");
    expect_error("\"stage\": 3", 0, "\"stage\": 4", "stages[2].stage: out of range: 4 (expected 1..3)");
    expect_error("\"stages\": [", 0, "\"stages\": [{\"stage\": 1}, ", "stages: expected 1 to 3 stages, got 4");
    /* A key of another stage. */
    expect_error("\"seq_len\": 10", 2, "\"seq_len\": 10, \"target\": \"attn_out\"",
                 "stages[2].target: applies to stage 2 only, not stage 3");
    expect_error("\"seq_len\": 10", 0, "\"seq_len\": 10, \"temperature\": 2",
                 "stages[0].temperature: applies to stage 3 only, not stage 1");
    expect_error("\"seq_len\": 10", 1, "\"seq_len\": 10, \"ce_weight\": 0.5", "stages[1].ce_weight: applies to stage 3 only");
    expect_error("\"seq_len\": 10", 2, "\"seq_len\": 10, \"parallel\": \"layers\"",
                 "stages[2].parallel: \"layers\" splits the independent layer losses of stages 1 and 2");
    expect_error("\"seq_len\": 10", 0, "\"seq_len\": 10, \"parallel\": \"pipeline\"", "stages[0].parallel:");
    /* Bad JSON: cJSON stops at the '}' after the trailing comma on line 2. */
    expect_error("\"mixer\": \"discrete\"}", 0, "\"mixer\": \"discrete\",}", "not valid JSON (line 2, column");
    /* Missing required keys. */
    expect_error("\"teacher\": \"/models/teacher.bin\", ", 0, "", "teacher: missing (required)");
    expect_error("\"train\": [\"a.bin\"]", 0, "", "data.train: missing (required)");
    expect_error("\"mixer\": \"discrete\"", 0, "", "student.mixer: missing (required)");
    expect_error(", \"schedule\": {\"type\": \"constant\", \"lr\": 0.002}", 0, "", "stages[1].schedule: missing (required)");
    expect_error("\"lr\": 0.001", 0, "\"warmup_steps\": 1", "stages[0].schedule: field 'lr': missing");
    expect_error("\"train\": [\"a.bin\"]", 0, "\"train\": [\"a.bin\"], \"sample\": {\"tokens\": 10, \"out\": \"x\"}",
                 "data.sample.seq_len: missing (required)");
    /* Relations between sections and paths. */
    expect_error("\"seq_len\": 10", 0, "\"seq_len\": 10, \"eval_every\": 5", "stages[0].eval_every: needs data.eval");
    expect_error("\"name\": \"t\"", 0, "\"name\": \"t\", \"eval\": {\"tokens\": 1, \"seq_len\": 1, \"batch\": 1}",
                 "eval: needs data.eval");
    expect_error("\"/models/teacher.bin\"", 0, "\"${HOME}/t.bin\"", "teacher: only ${SSDISTILL_DATA} at the start");
    expect_error("\"train\": [\"a.bin\"]", 0, "\"train\": [\"a.bin\", 3]", "data.train[1]: expected a non-empty string");
}

static void test_fill_errors(void) {
    sd_recipe r;
    char *t = with(k_base, "\"discrete\"", 0, "\"discrete\", \"attn_layers\": [4], \"init\": \"attention\", \"state_size\": 8");
    CHECK_OK(sd_recipe_parse(t, "recipe.json", &r));
    if (r.name) {
        CHECK(sd_recipe_fill_student(&r, 64, 8, 4) == SD_ERR_INPUT && strstr(sd_errmsg(), "recipe.json: student.attn_layers: layer 4"),
              "%s", sd_errmsg());
        CHECK_OK(sd_recipe_fill_student(&r, 64, 8, 5));
    }
    sd_recipe_free(&r);
    free(t);
    t = with(k_base, "\"discrete\"", 0, "\"discrete\", \"init\": \"attention\"");
    CHECK_OK(sd_recipe_parse(t, "recipe.json", &r));
    if (r.name)
        CHECK(sd_recipe_fill_student(&r, 64, 8, 5) == SD_ERR_INPUT && strstr(sd_errmsg(), "student.state_size"),
              "%s", sd_errmsg());
    sd_recipe_free(&r);
    free(t);
    t = with(k_base, "\"discrete\"", 0, "\"discrete\", \"num_heads\": 6");
    CHECK_OK(sd_recipe_parse(t, "recipe.json", &r));
    if (r.name)
        CHECK(sd_recipe_fill_student(&r, 64, 8, 5) == SD_ERR_INPUT && strstr(sd_errmsg(), "student.num_heads: 6 does not divide"),
              "%s", sd_errmsg());
    sd_recipe_free(&r);
    free(t);
}

/* ---- glob and edit distance ------------------------------------------------------------------ */

static void test_glob(void) {
    static const struct { const char *pat, *name; int want; } cases[] = {
        {"*", "", 1},
        {"*", "backbone.layers.0.mixer.D", 1},
        {"*.mixer.*", "backbone.layers.0.mixer.in_proj.weight", 1},
        {"*.mixer.*", "backbone.layers.0.mlp.up_proj.weight", 0},
        {"*.mixer.*", "mixer.D", 0},
        {"backbone.layers.?.mixer.*", "backbone.layers.3.mixer.D", 1},
        {"backbone.layers.?.mixer.*", "backbone.layers.12.mixer.D", 0},
        {"*weight", "a.weight", 1},
        {"*weight", "a.weights", 0},
        {"a*b*c", "axxbyyc", 1},
        {"a*b*c", "axxbyy", 0},
        {"a*b*c", "abcbc", 1},
        {"**", "x", 1},
        {"?", "", 0},
        {"", "", 1},
        {"", "a", 0},
        {"lm_head.weight", "lm_head.weight", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        CHECK(sd_glob_match(cases[i].pat, cases[i].name) == cases[i].want, "glob '%s' on '%s'", cases[i].pat,
              cases[i].name);
    sd_recipe_stage st = {.trainable = (char *[]){"*.mixer.*", "lm_head.*"}, .n_trainable = 2};
    CHECK(sd_recipe_trainable(&st, "lm_head.weight") && sd_recipe_trainable(&st, "x.mixer.D") &&
              !sd_recipe_trainable(&st, "x.mlp.w"), "trainable");
    CHECK(sd_levenshtein("shedule", "schedule") == 1 && sd_levenshtein("", "abc") == 3 &&
              sd_levenshtein("kitten", "sitting") == 3 && sd_levenshtein("same", "same") == 0, "levenshtein");
}

/* ---- the shipped recipes ----------------------------------------------------------------- */

static void test_shipped(const char *file, int64_t want_tokens) {
    char path[1024];
    /* __FILE__ is tests/test_recipe.c as CMake passed it (absolute); the recipes are beside. */
    snprintf(path, sizeof path, "%s", __FILE__);
    char *slash = strrchr(path, '/');
    if (!slash) {
        CHECK(0, "cannot locate the source folder from %s", __FILE__);
        return;
    }
    snprintf(slash, sizeof path - (size_t)(slash - path), "/../recipes/%s", file);
    sd_recipe r;
    CHECK_OK(sd_recipe_load(path, &r));
    if (!r.name) return;
    int64_t total = 0;
    for (int i = 0; i < r.n_stages; i++) total += r.stages[i].tokens;
    CHECK(r.n_stages == 3 && (want_tokens == 0 || total == want_tokens), "%s: %d stages, %lld tokens", file,
          r.n_stages, (long long)total);
    /* a discrete student that fits the teacher (d 64, 8 heads, 5 layers) */
    CHECK(r.student.mixer == SD_RECIPE_MIXER_DISCRETE, "%s: student mixer", file);
    CHECK_OK(sd_recipe_fill_student(&r, 64, 8, 5));
    size_t n = strlen(r.teacher);
    CHECK(n > 15 && strcmp(r.teacher + n - 15, "/hf/stories260K") == 0 && sd_is_dir(r.teacher),
          "%s: teacher %s", file, r.teacher);
    CHECK(sd_file_exists(r.tokenizer), "%s: tokenizer %s", file, r.tokenizer);
    CHECK(r.eval_data && sd_file_exists(r.eval_data) && strstr(r.eval_data, "tinystories_val_dev.txt"),
          "%s: eval %s", file, r.eval_data);
    /* The eval text is for evaluation only, never training. */
    CHECK(r.sample.present && r.n_train == 1 && strcmp(r.train[0], r.sample.out) == 0, "%s: trains on the sample", file);
    CHECK_OK(sd_recipe_fill_student(&r, 64, 8, 5));
    sd_recipe_free(&r);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/test_recipe_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_defaults();
    test_errors();
    test_fill_errors();
    test_glob();
    test_shipped("stories260k.json", 21300000);
    test_shipped("stories260k-quick.json", 0);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_tmp);
    return test_summary("test_recipe");
}
