/* Recipe JSON: parsing with JSON-path messages, defaults, path resolution, and the recipe as
 * run.  The parser walks the document once, object by object: first the keys (an unknown
 * one is an error with the nearest known key as a suggestion), then each field. */
#include "distill/recipe.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/error.h"
#include "common/fileio.h"

#define PATH_BUF 256

/* ---- names ------------------------------------------------------------------------------- */

static const char *const k_mixers[] = {"discrete", "standard", NULL};
static const char *const k_inits[] = {"mohawk", "attention", "random", NULL};
static const char *const k_devices[] = {"cpu", "cuda", NULL};
static const char *const k_targets[] = {"attn_out", "block_out", NULL};
static const char *const k_parallel[] = {"data", "layers", NULL};
static const char *const k_decay_shapes[] = {"linear", "1-sqrt", "cosine"};

const char *sd_recipe_mixer_name(sd_recipe_mixer m) { return k_mixers[m == SD_RECIPE_MIXER_STANDARD]; }
const char *sd_recipe_init_name(sd_recipe_init i) { return k_inits[i]; }
const char *sd_recipe_device_name(sd_recipe_device d) { return k_devices[d == SD_DEVICE_CUDA]; }
const char *sd_recipe_target_name(sd_recipe_target t) { return k_targets[t == SD_TARGET_BLOCK_OUT]; }
const char *sd_recipe_parallel_name(sd_recipe_parallel p) { return k_parallel[p == SD_PARALLEL_LAYERS]; }

/* ---- small utilities ------------------------------------------------------------------- */

int sd_levenshtein(const char *a, const char *b) {
    size_t n = strlen(b);
    if (n > 63) n = 63; /* keys are short; a bounded row keeps this allocation-free */
    int row[64];
    for (size_t j = 0; j <= n; j++) row[j] = (int)j;
    for (size_t i = 1; a[i - 1]; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= n; j++) {
            int up = row[j];
            int sub = diag + (a[i - 1] != b[j - 1]);
            int best = up + 1 < row[j - 1] + 1 ? up + 1 : row[j - 1] + 1;
            row[j] = sub < best ? sub : best;
            diag = up;
        }
    }
    return row[n];
}

int sd_glob_match(const char *pattern, const char *name) {
    /* Greedy with one backtrack point: the last '*' seen absorbs one more character each
     * time the rest fails, which is enough since '*' matches anything. */
    const char *star = NULL, *resume = NULL;
    while (*name) {
        if (*pattern == '*') {
            star = pattern++;
            resume = name;
        } else if (*pattern == '?' || *pattern == *name) {
            pattern++;
            name++;
        } else if (star) {
            pattern = star + 1;
            name = ++resume;
        } else {
            return 0;
        }
    }
    while (*pattern == '*') pattern++;
    return *pattern == 0;
}

int sd_recipe_trainable(const sd_recipe_stage *st, const char *param_name) {
    for (int i = 0; i < st->n_trainable; i++)
        if (sd_glob_match(st->trainable[i], param_name)) return 1;
    return 0;
}

/* ---- parse context and messages ----------------------------------------------------------- */

typedef struct {
    const char *file; /* for messages */
    char *dir;        /* absolute folder of the recipe: anchors relative paths */
} pctx;

static int fail_at(const pctx *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_at(const pctx *c, const char *path, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sd_fail(SD_ERR_INPUT, "%s: %s: %s", c->file, path, msg);
}

/* "parent.key", or "key" at the top level. */
static void child(char *buf, const char *parent, const char *key) {
    int n = parent[0] ? snprintf(buf, PATH_BUF, "%s.%s", parent, key) : snprintf(buf, PATH_BUF, "%s", key);
    if (n >= PATH_BUF) memcpy(buf + PATH_BUF - 4, "...", 4); /* a path this deep is still readable */
}

static const char *json_type_name(const cJSON *v) {
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

/* The known key nearest to an unknown one, if near enough to be a likely typo. */
static const char *suggest(const char *key, const char *const *known) {
    const char *best = NULL;
    int best_d = INT_MAX;
    for (int i = 0; known[i]; i++) {
        int d = sd_levenshtein(key, known[i]);
        if (d < best_d) best_d = d, best = known[i];
    }
    int limit = (int)strlen(key) / 3 > 2 ? (int)strlen(key) / 3 : 2;
    return best_d <= limit ? best : NULL;
}

/* Every member of obj is one of known; a typo is an error, never a silent default. */
static int check_keys(const pctx *c, const cJSON *obj, const char *path, const char *const *known) {
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        int found = 0;
        for (int i = 0; known[i] && !found; i++) found = strcmp(it->string, known[i]) == 0;
        if (found) continue;
        char p[PATH_BUF];
        child(p, path, it->string);
        const char *s = suggest(it->string, known);
        if (s) return fail_at(c, p, "unknown key (did you mean '%s'?)", s);
        char list[512] = "";
        for (int i = 0; known[i]; i++) {
            size_t k = strlen(list);
            snprintf(list + k, sizeof list - k, "%s'%s'", i ? ", " : "", known[i]);
        }
        return fail_at(c, p, "unknown key (expected one of %s)", list);
    }
    return SD_OK;
}

/* ---- typed fields ------------------------------------------------------------------------ */

/* The member, NULL when absent; a missing required member is an error. */
static int member(const pctx *c, const cJSON *obj, const char *path, const char *key, int required,
                  const cJSON **out) {
    *out = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!*out && required) {
        char p[PATH_BUF];
        child(p, path, key);
        return fail_at(c, p, "missing (required)");
    }
    return SD_OK;
}

/* A whole number in [lo, hi] (JSON numbers are doubles: 100 and 1e2 both count). */
static int int_value(const pctx *c, const cJSON *v, const char *p, int64_t lo, int64_t hi, int64_t *out) {
    if (!cJSON_IsNumber(v)) return fail_at(c, p, "expected an integer, got %s", json_type_name(v));
    double x = v->valuedouble;
    if (x != floor(x) || !isfinite(x)) return fail_at(c, p, "expected an integer, got %g", x);
    if (x < (double)lo || x > (double)hi)
        return fail_at(c, p, "out of range: %g (expected %lld..%lld)", x, (long long)lo, (long long)hi);
    *out = (int64_t)x;
    return SD_OK;
}

static int get_i64(const pctx *c, const cJSON *obj, const char *path, const char *key, int required,
                   int64_t lo, int64_t hi, int64_t *out) {
    const cJSON *v;
    char p[PATH_BUF];
    SD_TRY(member(c, obj, path, key, required, &v));
    if (!v) return SD_OK;
    child(p, path, key);
    return int_value(c, v, p, lo, hi, out);
}

static int get_int(const pctx *c, const cJSON *obj, const char *path, const char *key, int required,
                   int lo, int hi, int *out) {
    int64_t x = *out;
    SD_TRY(get_i64(c, obj, path, key, required, lo, hi, &x));
    *out = (int)x;
    return SD_OK;
}

/* A finite number in the interval: lo_open / hi_open exclude the bound. */
static int num_value(const pctx *c, const cJSON *v, const char *p, double lo, int lo_open, double hi,
                     int hi_open, double *out) {
    if (!cJSON_IsNumber(v)) return fail_at(c, p, "expected a number, got %s", json_type_name(v));
    double x = v->valuedouble;
    int ok = isfinite(x) && (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
    if (!ok)
        return fail_at(c, p, "out of range: %g (expected %s%g, %g%s)", x, lo_open ? "(" : "[", lo, hi,
                       hi_open ? ")" : "]");
    *out = x;
    return SD_OK;
}

static int get_num(const pctx *c, const cJSON *obj, const char *path, const char *key, double lo,
                   int lo_open, double hi, int hi_open, double *out) {
    const cJSON *v;
    char p[PATH_BUF];
    SD_TRY(member(c, obj, path, key, 0, &v));
    if (!v) return SD_OK;
    child(p, path, key);
    return num_value(c, v, p, lo, lo_open, hi, hi_open, out);
}

/* A non-empty string (borrowed from the document). */
static int get_str(const pctx *c, const cJSON *obj, const char *path, const char *key, int required,
                   const char **out) {
    const cJSON *v;
    char p[PATH_BUF];
    SD_TRY(member(c, obj, path, key, required, &v));
    if (!v) return SD_OK;
    child(p, path, key);
    if (!cJSON_IsString(v)) return fail_at(c, p, "expected a string, got %s", json_type_name(v));
    if (!v->valuestring[0]) return fail_at(c, p, "expected a non-empty string");
    *out = v->valuestring;
    return SD_OK;
}

/* One of the NULL-terminated names; *out is its index. */
static int get_enum(const pctx *c, const cJSON *obj, const char *path, const char *key, int required,
                    const char *const *names, int *out) {
    const char *s = NULL;
    SD_TRY(get_str(c, obj, path, key, required, &s));
    if (!s) return SD_OK;
    for (int i = 0; names[i]; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return SD_OK;
        }
    char p[PATH_BUF], list[256] = "";
    child(p, path, key);
    for (int i = 0; names[i]; i++) {
        size_t k = strlen(list);
        snprintf(list + k, sizeof list - k, "%s\"%s\"", i ? " or " : "", names[i]);
    }
    return fail_at(c, p, "expected %s, got \"%s\"", list, s);
}

static int get_object(const pctx *c, const cJSON *obj, const char *path, const char *key, int required,
                      const cJSON **out) {
    SD_TRY(member(c, obj, path, key, required, out));
    if (*out && !cJSON_IsObject(*out)) {
        char p[PATH_BUF];
        child(p, path, key);
        return fail_at(c, p, "expected an object, got %s", json_type_name(*out));
    }
    return SD_OK;
}

static int get_array(const pctx *c, const cJSON *obj, const char *path, const char *key, int required,
                     const cJSON **out) {
    SD_TRY(member(c, obj, path, key, required, out));
    if (*out && !cJSON_IsArray(*out)) {
        char p[PATH_BUF];
        child(p, path, key);
        return fail_at(c, p, "expected an array, got %s", json_type_name(*out));
    }
    return SD_OK;
}

/* ---- paths --------------------------------------------------------------------------------- */

/* Lexical clean-up of an absolute path: drops "." and empty components, resolves "..".
 * Lexical is enough here: the paths are for reading and for recipe.json, and files such as
 * a sample's output may not exist yet, so realpath() cannot be used. */
static void normalise(char *p) {
    char *out = p, *in = p;
    while (*in) {
        while (*in == '/') in++;
        char *end = strchr(in, '/');
        size_t n = end ? (size_t)(end - in) : strlen(in);
        if (n == 0) break;
        if (n == 1 && in[0] == '.') {
            /* skip */
        } else if (n == 2 && in[0] == '.' && in[1] == '.') {
            while (out > p && *--out != '/') {}
        } else {
            *out++ = '/';
            memmove(out, in, n);
            out += n;
        }
        in += n;
    }
    if (out == p) *out++ = '/';
    *out = 0;
}

static char *absolute(const char *base, const char *rel) {
    char *j = rel[0] == '/' ? sd_strdup(rel, "path") : sd_path_join(base, rel);
    if (j) normalise(j);
    return j;
}

static char *cwd_dup(void) {
    char buf[4096];
    if (!getcwd(buf, sizeof buf)) {
        sd_fail(SD_ERR_SYS, "cannot read the current directory");
        return NULL;
    }
    return sd_strdup(buf, "current directory");
}

/* "${SSDISTILL_DATA}/x" -> $SSDISTILL_DATA/x (default ../shared/data, from the current
 * directory, where the tests and the README run); other relative paths from the recipe's
 * folder, so that a recipe and its data can move together. */
static int resolve(const pctx *c, const char *p, const char *s, char **out) {
    static const char var[] = "${SSDISTILL_DATA}";
    *out = NULL;
    if (strncmp(s, var, sizeof var - 1) == 0) {
        const char *env = getenv("SSDISTILL_DATA");
        const char *base = env && *env ? env : "../shared/data";
        const char *rest = s + sizeof var - 1;
        if (*rest && *rest != '/') return fail_at(c, p, "expected '/' after ${SSDISTILL_DATA} in \"%s\"", s);
        char *cwd = cwd_dup();
        if (!cwd) return SD_ERR_SYS;
        char *b = absolute(cwd, base);
        free(cwd);
        if (!b) return SD_ERR_SYS;
        *out = *rest ? absolute(b, rest + 1) : b;
        if (*rest) free(b);
        return *out ? SD_OK : SD_ERR_SYS;
    }
    if (strstr(s, "${")) return fail_at(c, p, "only ${SSDISTILL_DATA} at the start is expanded, got \"%s\"", s);
    *out = absolute(c->dir, s);
    return *out ? SD_OK : SD_ERR_SYS;
}

static int get_path(const pctx *c, const cJSON *obj, const char *path, const char *key, int required,
                    char **out) {
    const char *s = NULL;
    char p[PATH_BUF];
    SD_TRY(get_str(c, obj, path, key, required, &s));
    if (!s) return SD_OK;
    child(p, path, key);
    return resolve(c, p, s, out);
}

/* ---- sections -------------------------------------------------------------------------------- */

static int parse_sample(const pctx *c, const cJSON *o, sd_recipe_sample *s) {
    static const char *const keys[] = {"tokens", "seq_len", "temperature", "top_p", "seed", "out", NULL};
    const char *path = "data.sample";
    SD_TRY(check_keys(c, o, path, keys));
    *s = (sd_recipe_sample){.present = 1, .temperature = 1.0, .top_p = 1.0, .seed = 1};
    SD_TRY(get_i64(c, o, path, "tokens", 1, 1, INT64_C(1) << 50, &s->tokens));
    SD_TRY(get_int(c, o, path, "seq_len", 1, 1, 1 << 20, &s->seq_len));
    SD_TRY(get_num(c, o, path, "temperature", 0.0, 1, 100.0, 0, &s->temperature));
    SD_TRY(get_num(c, o, path, "top_p", 0.0, 1, 1.0, 0, &s->top_p));
    SD_TRY(get_i64(c, o, path, "seed", 0, 0, INT64_C(1) << 53, &s->seed));
    return get_path(c, o, path, "out", 1, &s->out);
}

static int parse_train(const pctx *c, const cJSON *arr, sd_recipe *r) {
    int n = cJSON_GetArraySize(arr);
    if (n < 1) return fail_at(c, "data.train", "expected at least one path");
    r->train = sd_calloc((size_t)n, sizeof *r->train, "recipe train paths");
    if (!r->train) return SD_ERR_SYS;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        char p[PATH_BUF];
        snprintf(p, sizeof p, "data.train[%d]", r->n_train);
        if (!cJSON_IsString(it) || !it->valuestring[0])
            return fail_at(c, p, "expected a non-empty string, got %s", json_type_name(it));
        SD_TRY(resolve(c, p, it->valuestring, &r->train[r->n_train]));
        r->n_train++;
    }
    return SD_OK;
}

static int parse_data(const pctx *c, const cJSON *o, sd_recipe *r) {
    static const char *const keys[] = {"train", "eval", "sample", NULL};
    const cJSON *train, *sample;
    SD_TRY(check_keys(c, o, "data", keys));
    SD_TRY(get_object(c, o, "data", "sample", 0, &sample));
    if (sample) SD_TRY(parse_sample(c, sample, &r->sample));
    SD_TRY(get_array(c, o, "data", "train", !sample, &train));
    if (train) SD_TRY(parse_train(c, train, r));
    SD_TRY(get_path(c, o, "data", "eval", 0, &r->eval_data));
    if (!train) { /* the sampled corpus is the training data */
        r->train = sd_calloc(1, sizeof *r->train, "recipe train paths");
        if (!r->train || !(r->train[0] = sd_strdup(r->sample.out, "train path"))) return SD_ERR_SYS;
        r->n_train = 1;
    }
    return SD_OK;
}

static int cmp_int(const void *a, const void *b) { return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b); }

static int parse_attn_layers(const pctx *c, const cJSON *arr, sd_recipe_student *s) {
    int n = cJSON_GetArraySize(arr);
    s->attn_layers = sd_calloc((size_t)n, sizeof *s->attn_layers, "attn_layers");
    if (!s->attn_layers) return SD_ERR_SYS;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        char p[PATH_BUF];
        int64_t v = 0;
        snprintf(p, sizeof p, "student.attn_layers[%d]", s->n_attn_layers);
        SD_TRY(int_value(c, it, p, 0, 1 << 20, &v));
        for (int i = 0; i < s->n_attn_layers; i++)
            if (s->attn_layers[i] == v) return fail_at(c, p, "layer %lld is listed twice", (long long)v);
        s->attn_layers[s->n_attn_layers++] = (int)v;
    }
    qsort(s->attn_layers, (size_t)s->n_attn_layers, sizeof *s->attn_layers, cmp_int);
    return SD_OK;
}

static int parse_student(const pctx *c, const cJSON *o, sd_recipe_student *s) {
    static const char *const keys[] = {"mixer", "num_heads", "head_dim", "state_size", "n_groups",
                                       "conv_kernel", "chunk_size", "expand", "init", "attn_layers", NULL};
    const char *path = "student";
    int mixer = 0, init = 0;
    const cJSON *attn;
    SD_TRY(check_keys(c, o, path, keys));
    *s = (sd_recipe_student){.state_size = 64, .conv_kernel = 4, .chunk_size = 64, .expand = 1};
    SD_TRY(get_enum(c, o, path, "mixer", 1, k_mixers, &mixer));
    SD_TRY(get_enum(c, o, path, "init", 0, k_inits, &init));
    s->mixer = (sd_recipe_mixer)mixer;
    s->init = (sd_recipe_init)init;
    SD_TRY(get_int(c, o, path, "num_heads", 0, 1, 1 << 16, &s->num_heads));
    SD_TRY(get_int(c, o, path, "head_dim", 0, 1, 1 << 16, &s->head_dim));
    SD_TRY(get_int(c, o, path, "state_size", 0, 1, 1 << 16, &s->state_size));
    SD_TRY(get_int(c, o, path, "n_groups", 0, 1, 1 << 16, &s->n_groups));
    SD_TRY(get_int(c, o, path, "conv_kernel", 0, 2, 4, &s->conv_kernel));
    SD_TRY(get_int(c, o, path, "chunk_size", 0, 1, 1 << 16, &s->chunk_size));
    SD_TRY(get_int(c, o, path, "expand", 0, 1, 64, &s->expand));
    if (s->num_heads && s->n_groups && s->num_heads % s->n_groups)
        return fail_at(c, "student.n_groups", "%d does not divide num_heads %d", s->n_groups, s->num_heads);
    SD_TRY(get_array(c, o, path, "attn_layers", 0, &attn));
    return attn ? parse_attn_layers(c, attn, s) : SD_OK;
}

static int parse_eval(const pctx *c, const cJSON *o, sd_recipe *r) {
    static const char *const keys[] = {"tokens", "seq_len", "batch", NULL};
    SD_TRY(check_keys(c, o, "eval", keys));
    if (!r->eval_data) return fail_at(c, "eval", "needs data.eval, the text or shard to evaluate on");
    r->has_eval = 1;
    SD_TRY(get_i64(c, o, "eval", "tokens", 1, 1, INT64_C(1) << 50, &r->eval_tokens));
    SD_TRY(get_int(c, o, "eval", "seq_len", 1, 1, 1 << 20, &r->eval_seq_len));
    return get_int(c, o, "eval", "batch", 1, 1, 1 << 20, &r->eval_batch);
}

/* ---- stages ---------------------------------------------------------------------------- */

static const char *const k_schedule_keys[] = {"type", "lr", "warmup_steps", "total_steps", "min_lr",
                                              "decay_fraction", "decay_shape", NULL};

static int parse_schedule(const pctx *c, const cJSON *o, const char *path, int64_t steps, sd_schedule *s) {
    char where[PATH_BUF + 512];
    /* sd_schedule_parse refuses unknown fields too; checking here first adds the suggestion. */
    SD_TRY(check_keys(c, o, path, k_schedule_keys));
    snprintf(where, sizeof where, "%s: %s", c->file, path);
    return sd_schedule_parse(o, where, steps, s);
}

static int parse_betas(const pctx *c, const cJSON *o, const char *path, sd_recipe_stage *st) {
    const cJSON *arr;
    char p[PATH_BUF];
    SD_TRY(get_array(c, o, path, "betas", 0, &arr));
    if (!arr) return SD_OK;
    child(p, path, "betas");
    if (cJSON_GetArraySize(arr) != 2) return fail_at(c, p, "expected 2 numbers, got %d values", cJSON_GetArraySize(arr));
    char q[PATH_BUF + 8];
    snprintf(q, sizeof q, "%s[0]", p);
    SD_TRY(num_value(c, cJSON_GetArrayItem(arr, 0), q, 0.0, 0, 1.0, 1, &st->beta1));
    snprintf(q, sizeof q, "%s[1]", p);
    return num_value(c, cJSON_GetArrayItem(arr, 1), q, 0.0, 0, 1.0, 1, &st->beta2);
}

static int set_trainable(sd_recipe_stage *st, const char *pattern) {
    st->trainable = sd_calloc(1, sizeof *st->trainable, "trainable patterns");
    if (!st->trainable || !(st->trainable[0] = sd_strdup(pattern, "trainable pattern"))) return SD_ERR_SYS;
    st->n_trainable = 1;
    return SD_OK;
}

static int parse_trainable(const pctx *c, const cJSON *o, const char *path, sd_recipe_stage *st) {
    const cJSON *arr, *it;
    SD_TRY(get_array(c, o, path, "trainable", 0, &arr));
    if (!arr) return set_trainable(st, st->stage == 3 ? "*" : "*.mixer.*");
    char p[PATH_BUF];
    child(p, path, "trainable");
    int n = cJSON_GetArraySize(arr);
    if (n < 1) return fail_at(c, p, "expected at least one pattern");
    st->trainable = sd_calloc((size_t)n, sizeof *st->trainable, "trainable patterns");
    if (!st->trainable) return SD_ERR_SYS;
    cJSON_ArrayForEach(it, arr) {
        if (!cJSON_IsString(it) || !it->valuestring[0]) {
            char q[PATH_BUF + 16];
            snprintf(q, sizeof q, "%s[%d]", p, st->n_trainable);
            return fail_at(c, q, "expected a non-empty string, got %s", json_type_name(it));
        }
        if (!(st->trainable[st->n_trainable] = sd_strdup(it->valuestring, "trainable pattern"))) return SD_ERR_SYS;
        st->n_trainable++;
    }
    return SD_OK;
}

/* Keys that only one stage reads are refused in the others, where they would do nothing. */
static int check_stage_only(const pctx *c, const cJSON *o, const char *path, int stage) {
    static const struct { const char *key; int stage; } only[] = {
        {"target", 2}, {"temperature", 3}, {"ce_weight", 3}};
    for (size_t i = 0; i < sizeof only / sizeof *only; i++) {
        if (stage == only[i].stage || !cJSON_GetObjectItemCaseSensitive(o, only[i].key)) continue;
        char p[PATH_BUF];
        child(p, path, only[i].key);
        return fail_at(c, p, "applies to stage %d only, not stage %d", only[i].stage, stage);
    }
    return SD_OK;
}

static int parse_stage(const pctx *c, const cJSON *o, const char *path, sd_recipe_stage *st) {
    static const char *const keys[] = {"stage", "tokens", "batch", "seq_len", "schedule", "weight_decay",
                                       "betas", "clip", "trainable", "log_every", "eval_every",
                                       "checkpoint_every", "target", "temperature", "ce_weight", "parallel", NULL};
    const cJSON *sched;
    int target = 0, parallel = 0;
    if (!cJSON_IsObject(o)) return fail_at(c, path, "expected an object, got %s", json_type_name(o));
    SD_TRY(check_keys(c, o, path, keys));
    *st = (sd_recipe_stage){.weight_decay = 0.1, .beta1 = 0.9, .beta2 = 0.95, .clip = 1.0,
                            .log_every = 10, .temperature = 1.0};
    SD_TRY(get_int(c, o, path, "stage", 1, 1, 3, &st->stage));
    SD_TRY(check_stage_only(c, o, path, st->stage));
    SD_TRY(get_i64(c, o, path, "tokens", 1, 1, INT64_C(1) << 50, &st->tokens));
    SD_TRY(get_int(c, o, path, "batch", 1, 1, 1 << 20, &st->batch));
    SD_TRY(get_int(c, o, path, "seq_len", 1, 1, 1 << 20, &st->seq_len));
    int64_t per_step = (int64_t)st->batch * st->seq_len;
    st->steps = (st->tokens + per_step - 1) / per_step;
    SD_TRY(get_object(c, o, path, "schedule", 1, &sched));
    char p[PATH_BUF];
    child(p, path, "schedule");
    SD_TRY(parse_schedule(c, sched, p, st->steps, &st->schedule));
    SD_TRY(get_num(c, o, path, "weight_decay", 0.0, 0, 10.0, 0, &st->weight_decay));
    SD_TRY(parse_betas(c, o, path, st));
    SD_TRY(get_num(c, o, path, "clip", 0.0, 0, 1e9, 0, &st->clip));
    SD_TRY(parse_trainable(c, o, path, st));
    SD_TRY(get_i64(c, o, path, "log_every", 0, 1, INT64_C(1) << 50, &st->log_every));
    SD_TRY(get_i64(c, o, path, "eval_every", 0, 0, INT64_C(1) << 50, &st->eval_every));
    SD_TRY(get_i64(c, o, path, "checkpoint_every", 0, 0, INT64_C(1) << 50, &st->checkpoint_every));
    SD_TRY(get_enum(c, o, path, "target", 0, k_targets, &target));
    st->target = (sd_recipe_target)target;
    SD_TRY(get_enum(c, o, path, "parallel", 0, k_parallel, &parallel));
    st->parallel = (sd_recipe_parallel)parallel;
    if (st->parallel == SD_PARALLEL_LAYERS && st->stage == 3) {
        child(p, path, "parallel");
        return fail_at(c, p, "\"layers\" splits the independent layer losses of stages 1 and 2; stage 3 trains "
                       "the layers together (use \"data\")");
    }
    SD_TRY(get_num(c, o, path, "temperature", 0.0, 1, 100.0, 0, &st->temperature));
    return get_num(c, o, path, "ce_weight", 0.0, 0, 1.0, 0, &st->ce_weight);
}

static int parse_stages(const pctx *c, const cJSON *arr, sd_recipe *r) {
    int n = cJSON_GetArraySize(arr);
    if (n < 1 || n > SD_RECIPE_MAX_STAGES)
        return fail_at(c, "stages", "expected 1 to %d stages, got %d", SD_RECIPE_MAX_STAGES, n);
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        char p[PATH_BUF];
        snprintf(p, sizeof p, "stages[%d]", r->n_stages);
        sd_recipe_stage *st = &r->stages[r->n_stages];
        int rc = parse_stage(c, it, p, st);
        r->n_stages++; /* counted even on failure, so that sd_recipe_free frees its patterns */
        if (rc != SD_OK) return rc;
        if (r->n_stages > 1 && st->stage <= st[-1].stage) {
            char q[PATH_BUF + 8];
            snprintf(q, sizeof q, "%s.stage", p);
            return fail_at(c, q, "stage %d after stage %d: stages must be in increasing order", st->stage, st[-1].stage);
        }
        if (st->eval_every > 0 && !r->has_eval) {
            char q[PATH_BUF + 16];
            snprintf(q, sizeof q, "%s.eval_every", p);
            return fail_at(c, q, "needs data.eval and the top-level eval object");
        }
    }
    return SD_OK;
}

/* ---- the document ------------------------------------------------------------------------ */

static int default_tokenizer(sd_recipe *r) {
    char *dir;
    if (sd_is_dir(r->teacher)) {
        dir = sd_strdup(r->teacher, "teacher dir");
    } else {
        dir = sd_strdup(r->teacher, "teacher dir");
        if (dir) *strrchr(dir, '/') = 0; /* absolute, so there is a '/' */
        if (dir && !dir[0]) strcpy(dir, "/");
    }
    if (!dir) return SD_ERR_SYS;
    r->tokenizer = sd_path_join(dir, "tokenizer.json");
    free(dir);
    return r->tokenizer ? SD_OK : SD_ERR_SYS;
}

static int parse_top(const pctx *c, const cJSON *root, sd_recipe *r) {
    static const char *const keys[] = {"name", "teacher", "tokenizer", "data", "student", "seed",
                                       "device", "threads", "eval", "stages", NULL};
    const char *name = NULL;
    const cJSON *data, *student, *eval, *stages;
    int device = 0;
    if (!cJSON_IsObject(root)) return sd_fail(SD_ERR_INPUT, "%s: expected a JSON object at the top", c->file);
    SD_TRY(check_keys(c, root, "", keys));
    SD_TRY(get_str(c, root, "", "name", 1, &name));
    if (!(r->name = sd_strdup(name, "recipe name"))) return SD_ERR_SYS;
    SD_TRY(get_path(c, root, "", "teacher", 1, &r->teacher));
    SD_TRY(get_path(c, root, "", "tokenizer", 0, &r->tokenizer));
    if (!r->tokenizer) SD_TRY(default_tokenizer(r));
    SD_TRY(get_object(c, root, "", "data", 1, &data));
    SD_TRY(parse_data(c, data, r));
    SD_TRY(get_object(c, root, "", "student", 1, &student));
    SD_TRY(parse_student(c, student, &r->student));
    SD_TRY(get_i64(c, root, "", "seed", 0, 0, INT64_C(1) << 53, &r->seed));
    SD_TRY(get_enum(c, root, "", "device", 0, k_devices, &device));
    r->device = (sd_recipe_device)device;
    SD_TRY(get_int(c, root, "", "threads", 0, 0, 4096, &r->threads));
    SD_TRY(get_object(c, root, "", "eval", 0, &eval));
    if (eval) SD_TRY(parse_eval(c, eval, r));
    SD_TRY(get_array(c, root, "", "stages", 1, &stages));
    return parse_stages(c, stages, r);
}

/* cJSON reports where parsing stopped; turn it into a line and column. */
static int bad_json(const char *file, const char *text, const char *end) {
    if (!end || end < text) return sd_fail(SD_ERR_INPUT, "%s: not valid JSON", file);
    int line = 1, col = 1;
    for (const char *p = text; p < end && *p; p++) {
        if (*p == '\n') line++, col = 1;
        else col++;
    }
    return sd_fail(SD_ERR_INPUT, "%s: not valid JSON (line %d, column %d)", file, line, col);
}

static int make_dir(const char *file, char **dir) {
    char *cwd = cwd_dup();
    if (!cwd) return SD_ERR_SYS;
    char *abs = absolute(cwd, file);
    free(cwd);
    if (!abs) return SD_ERR_SYS;
    char *slash = strrchr(abs, '/');
    slash[slash == abs] = 0; /* keep "/" for a file at the root */
    *dir = abs;
    return SD_OK;
}

int sd_recipe_parse(const char *text, const char *file, sd_recipe *out) {
    memset(out, 0, sizeof *out);
    if (!file) file = "recipe.json";
    pctx c = {file, NULL};
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) return bad_json(file, text, end);
    int rc = make_dir(file, &c.dir);
    if (rc == SD_OK && !(out->file = sd_strdup(file, "recipe file name"))) rc = SD_ERR_SYS;
    if (rc == SD_OK) rc = parse_top(&c, root, out);
    cJSON_Delete(root);
    free(c.dir);
    if (rc != SD_OK) sd_recipe_free(out);
    return rc;
}

int sd_recipe_load(const char *path, sd_recipe *out) {
    char *text;
    size_t len;
    memset(out, 0, sizeof *out);
    SD_TRY(sd_read_file(path, &text, &len));
    if (strlen(text) != len) {
        free(text);
        return sd_fail(SD_ERR_INPUT, "%s: not valid JSON (a NUL byte in the text)", path);
    }
    int rc = sd_recipe_parse(text, path, out);
    free(text);
    return rc;
}

/* ---- teacher-dependent defaults ------------------------------------------------------------ */

int sd_recipe_fill_student(sd_recipe *r, int d_model, int n_heads, int n_layers) {
    sd_recipe_student *s = &r->student;
    pctx c = {r->file ? r->file : "recipe.json", NULL};
    int d_inner = d_model * s->expand;
    if (!s->num_heads) s->num_heads = n_heads;
    if (!s->head_dim) {
        if (d_inner % s->num_heads)
            return fail_at(&c, "student.num_heads", "%d does not divide d_model * expand = %d", s->num_heads, d_inner);
        s->head_dim = d_inner / s->num_heads;
    }
    if (s->num_heads * s->head_dim != d_inner)
        return fail_at(&c, "student.head_dim", "num_heads %d x head_dim %d is not d_model * expand = %d",
                       s->num_heads, s->head_dim, d_inner);
    if (!s->n_groups) s->n_groups = s->mixer == SD_RECIPE_MIXER_DISCRETE ? s->num_heads : 1;
    if (s->num_heads % s->n_groups)
        return fail_at(&c, "student.n_groups", "%d does not divide num_heads %d", s->n_groups, s->num_heads);
    if (s->init == SD_RECIPE_INIT_ATTENTION && n_heads > 0 && s->state_size != d_model / n_heads)
        return fail_at(&c, "student.state_size", "init \"attention\" needs state_size = the teacher's head "
                       "dim %d, got %d", d_model / n_heads, s->state_size);
    for (int i = 0; i < s->n_attn_layers; i++)
        if (s->attn_layers[i] >= n_layers)
            return fail_at(&c, "student.attn_layers", "layer %d, but the teacher has %d layers", s->attn_layers[i], n_layers);
    if (s->n_attn_layers >= n_layers)
        return fail_at(&c, "student.attn_layers", "keeps all %d layers as attention: nothing to distil", n_layers);
    return SD_OK;
}

/* ---- the recipe as run ------------------------------------------------------------------- */

/* cJSON builders that remember the first failure instead of checking every call. */
typedef struct { int ok; } jb;

static void jadd(jb *b, cJSON *obj, const char *key, cJSON *v) {
    if (!v) b->ok = 0;
    else if (!cJSON_AddItemToObject(obj, key, v)) b->ok = 0, cJSON_Delete(v);
}
static void jnum(jb *b, cJSON *o, const char *k, double v) { jadd(b, o, k, cJSON_CreateNumber(v)); }
static void jstr(jb *b, cJSON *o, const char *k, const char *v) { jadd(b, o, k, cJSON_CreateString(v)); }
static cJSON *jobj(jb *b, cJSON *o, const char *k) {
    cJSON *v = cJSON_CreateObject();
    jadd(b, o, k, v);
    return b->ok ? v : NULL;
}
static void jstrs(jb *b, cJSON *o, const char *k, char *const *v, int n) {
    jadd(b, o, k, cJSON_CreateStringArray((const char *const *)v, n));
}

static void schedule_json(jb *b, cJSON *st, const sd_schedule *s) {
    cJSON *o = jobj(b, st, "schedule");
    if (!o) return;
    jstr(b, o, "type", sd_sched_type_name(s->type));
    jnum(b, o, "lr", s->lr);
    jnum(b, o, "warmup_steps", (double)s->warmup_steps);
    jnum(b, o, "total_steps", (double)s->total_steps);
    if (s->type == SD_SCHED_CONSTANT) return;
    jnum(b, o, "min_lr", s->min_lr); /* the fields sd_schedule_parse accepts for the type */
    if (s->type != SD_SCHED_WSD) return;
    jnum(b, o, "decay_fraction", s->decay_fraction);
    jstr(b, o, "decay_shape", k_decay_shapes[s->decay_shape]);
}

static void stage_json(jb *b, cJSON *arr, const sd_recipe_stage *s) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddItemToArray(arr, o)) {
        cJSON_Delete(o);
        b->ok = 0;
        return;
    }
    jnum(b, o, "stage", s->stage);
    jnum(b, o, "tokens", (double)s->tokens);
    jnum(b, o, "batch", s->batch);
    jnum(b, o, "seq_len", s->seq_len);
    schedule_json(b, o, &s->schedule);
    jnum(b, o, "weight_decay", s->weight_decay);
    double betas[2] = {s->beta1, s->beta2};
    jadd(b, o, "betas", cJSON_CreateDoubleArray(betas, 2));
    jnum(b, o, "clip", s->clip);
    jstrs(b, o, "trainable", s->trainable, s->n_trainable);
    jnum(b, o, "log_every", (double)s->log_every);
    jnum(b, o, "eval_every", (double)s->eval_every);
    jnum(b, o, "checkpoint_every", (double)s->checkpoint_every);
    if (s->stage == 2) jstr(b, o, "target", sd_recipe_target_name(s->target));
    jstr(b, o, "parallel", sd_recipe_parallel_name(s->parallel));
    if (s->stage == 3) {
        jnum(b, o, "temperature", s->temperature);
        jnum(b, o, "ce_weight", s->ce_weight);
    }
}

static void data_json(jb *b, cJSON *root, const sd_recipe *r) {
    cJSON *d = jobj(b, root, "data");
    if (!d) return;
    jstrs(b, d, "train", r->train, r->n_train);
    if (r->eval_data) jstr(b, d, "eval", r->eval_data);
    if (!r->sample.present) return;
    cJSON *s = jobj(b, d, "sample");
    if (!s) return;
    jnum(b, s, "tokens", (double)r->sample.tokens);
    jnum(b, s, "seq_len", r->sample.seq_len);
    jnum(b, s, "temperature", r->sample.temperature);
    jnum(b, s, "top_p", r->sample.top_p);
    jnum(b, s, "seed", (double)r->sample.seed);
    jstr(b, s, "out", r->sample.out);
}

static void student_json(jb *b, cJSON *root, const sd_recipe_student *s) {
    cJSON *o = jobj(b, root, "student");
    if (!o) return;
    jstr(b, o, "mixer", sd_recipe_mixer_name(s->mixer));
    if (s->num_heads) jnum(b, o, "num_heads", s->num_heads); /* 0: not filled from the teacher yet */
    if (s->head_dim) jnum(b, o, "head_dim", s->head_dim);
    jnum(b, o, "state_size", s->state_size);
    if (s->n_groups) jnum(b, o, "n_groups", s->n_groups);
    jnum(b, o, "conv_kernel", s->conv_kernel);
    jnum(b, o, "chunk_size", s->chunk_size);
    jnum(b, o, "expand", s->expand);
    jstr(b, o, "init", sd_recipe_init_name(s->init));
    /* cJSON_CreateIntArray refuses a NULL array, which is what no attn_layers is */
    jadd(b, o, "attn_layers", s->n_attn_layers ? cJSON_CreateIntArray(s->attn_layers, s->n_attn_layers)
                                               : cJSON_CreateArray());
}

static cJSON *recipe_tree(const sd_recipe *r, jb *b) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return b->ok = 0, NULL;
    jstr(b, root, "name", r->name);
    jstr(b, root, "teacher", r->teacher);
    jstr(b, root, "tokenizer", r->tokenizer);
    data_json(b, root, r);
    student_json(b, root, &r->student);
    jnum(b, root, "seed", (double)r->seed);
    jstr(b, root, "device", sd_recipe_device_name(r->device));
    jnum(b, root, "threads", r->threads);
    if (r->has_eval) {
        cJSON *e = jobj(b, root, "eval");
        if (e) {
            jnum(b, e, "tokens", (double)r->eval_tokens);
            jnum(b, e, "seq_len", r->eval_seq_len);
            jnum(b, e, "batch", r->eval_batch);
        }
    }
    cJSON *stages = cJSON_CreateArray();
    jadd(b, root, "stages", stages);
    for (int i = 0; b->ok && i < r->n_stages; i++) stage_json(b, stages, &r->stages[i]);
    return root;
}

int sd_recipe_to_json(const sd_recipe *r, char **json) {
    jb b = {1};
    *json = NULL;
    cJSON *root = recipe_tree(r, &b);
    char *text = b.ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return sd_fail(SD_ERR_SYS, "out of memory writing the recipe as JSON");
    size_t n = strlen(text);
    char *out = sd_malloc(n + 2, "recipe JSON");
    if (out) {
        memcpy(out, text, n);
        out[n] = '\n';
        out[n + 1] = 0;
    }
    cJSON_free(text);
    if (!out) return SD_ERR_SYS;
    *json = out;
    return SD_OK;
}

static void free_strs(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

void sd_recipe_free(sd_recipe *r) {
    free(r->file);
    free(r->name);
    free(r->teacher);
    free(r->tokenizer);
    free_strs(r->train, r->n_train);
    free(r->eval_data);
    free(r->sample.out);
    free(r->student.attn_layers);
    for (int i = 0; i < r->n_stages; i++) free_strs(r->stages[i].trainable, r->stages[i].n_trainable);
    memset(r, 0, sizeof *r);
}
