/* Learning-rate schedules and their JSON form. */
#include "distill/schedule.h"

#include <math.h>
#include <string.h>

#include "common/error.h"

static const double k_pi = 3.14159265358979323846;

const char *sd_sched_type_name(sd_sched_type t) {
    switch (t) {
    case SD_SCHED_CONSTANT: return "constant";
    case SD_SCHED_COSINE: return "cosine";
    case SD_SCHED_WSD: return "wsd";
    }
    return "?";
}

/* ---- values ------------------------------------------------------------------------------- */

static int64_t wsd_decay_steps(const sd_schedule *s) {
    return (int64_t)llround(s->decay_fraction * (double)s->total_steps);
}

/* From 1 at p = 0 to 0 at p = 1. */
static double decay_factor(sd_decay_shape shape, double p) {
    switch (shape) {
    case SD_DECAY_1_SQRT: return 1.0 - sqrt(p);
    case SD_DECAY_COSINE: return 0.5 * (1.0 + cos(k_pi * p));
    case SD_DECAY_LINEAR: break;
    }
    return 1.0 - p;
}

static double clamp01(double p) { return p < 0.0 ? 0.0 : p > 1.0 ? 1.0 : p; }

double sd_schedule_lr(const sd_schedule *s, int64_t step) {
    if (step < 0) step = 0;
    if (step < s->warmup_steps) return s->lr * (double)step / (double)s->warmup_steps;
    switch (s->type) {
    case SD_SCHED_CONSTANT: return s->lr;
    case SD_SCHED_COSINE: {
        int64_t span = s->total_steps - s->warmup_steps;
        double p = span > 0 ? clamp01((double)(step - s->warmup_steps) / (double)span) : 1.0;
        return s->min_lr + (s->lr - s->min_lr) * decay_factor(SD_DECAY_COSINE, p);
    }
    case SD_SCHED_WSD: {
        int64_t d = wsd_decay_steps(s), start = s->total_steps - d;
        if (step < start) return s->lr;
        double p = d > 0 ? clamp01((double)(step - start) / (double)d) : 1.0;
        return s->min_lr + (s->lr - s->min_lr) * decay_factor(s->decay_shape, p);
    }
    }
    return s->lr;
}

/* ---- JSON --------------------------------------------------------------------------------- */

/* Which types a field applies to: bit (1 << type). */
#define ALL_TYPES ((1u << SD_SCHED_CONSTANT) | (1u << SD_SCHED_COSINE) | (1u << SD_SCHED_WSD))
#define DECAYING ((1u << SD_SCHED_COSINE) | (1u << SD_SCHED_WSD))

static const struct {
    const char *name;
    unsigned types;
} k_fields[] = {
    {"type", ALL_TYPES},           {"lr", ALL_TYPES},
    {"warmup_steps", ALL_TYPES},   {"total_steps", ALL_TYPES},
    {"min_lr", DECAYING},          {"decay_fraction", 1u << SD_SCHED_WSD},
    {"decay_shape", 1u << SD_SCHED_WSD},
};

/* Every member of obj is a known field that the type uses: a typo is refused rather than
 * silently training with the default. */
static int check_members(const cJSON *obj, const char *where, sd_sched_type type) {
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        size_t k = 0, nk = sizeof k_fields / sizeof *k_fields;
        while (k < nk && strcmp(k_fields[k].name, it->string) != 0) k++;
        if (k == nk)
            return sd_fail(SD_ERR_INPUT, "%s: field '%s': unknown schedule field", where,
                           it->string);
        if (!(k_fields[k].types & (1u << type)))
            return sd_fail(SD_ERR_INPUT, "%s: field '%s': does not apply to type \"%s\"", where,
                           it->string, sd_sched_type_name(type));
    }
    return SD_OK;
}

static int parse_type(const cJSON *obj, const char *where, sd_sched_type *type) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, "type");
    if (!f) return sd_fail(SD_ERR_INPUT, "%s: field 'type': missing", where);
    const char *v = cJSON_GetStringValue(f);
    if (v && strcmp(v, "constant") == 0) *type = SD_SCHED_CONSTANT;
    else if (v && strcmp(v, "cosine") == 0) *type = SD_SCHED_COSINE;
    else if (v && strcmp(v, "wsd") == 0) *type = SD_SCHED_WSD;
    else
        return sd_fail(SD_ERR_INPUT, "%s: field 'type': expected \"constant\", \"cosine\" or "
                       "\"wsd\", got %s%s%s", where, v ? "\"" : "", v ? v : "a non-string",
                       v ? "\"" : "");
    return SD_OK;
}

/* A number field in [lo, hi] (lo_open: lo excluded); absent leaves *out as it is unless
 * required. */
static int get_number(const cJSON *obj, const char *where, const char *name, int required,
                      double lo, int lo_open, double hi, double *out) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!f) {
        if (required) return sd_fail(SD_ERR_INPUT, "%s: field '%s': missing", where, name);
        return SD_OK;
    }
    if (!cJSON_IsNumber(f))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected a number", where, name);
    double v = f->valuedouble;
    if (!isfinite(v) || (lo_open ? !(v > lo) : !(v >= lo)) || !(v <= hi))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected a number %s %g and <= %g, got %g",
                       where, name, lo_open ? ">" : ">=", lo, hi, v);
    *out = v;
    return SD_OK;
}

/* A whole-number field >= lo (JSON has only doubles: 100 and 1e2 are fine, 2.5 is not). */
static int get_count(const cJSON *obj, const char *where, const char *name, int required,
                     int64_t lo, int64_t *out) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!f) {
        if (required) return sd_fail(SD_ERR_INPUT, "%s: field '%s': missing", where, name);
        return SD_OK;
    }
    if (!cJSON_IsNumber(f))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected a whole number", where, name);
    double v = f->valuedouble;
    if (!(v >= (double)lo && v <= 9007199254740992.0 && v == floor(v)))
        return sd_fail(SD_ERR_INPUT, "%s: field '%s': expected a whole number >= %lld, got %g",
                       where, name, (long long)lo, v);
    *out = (int64_t)v;
    return SD_OK;
}

static int parse_shape(const cJSON *obj, const char *where, sd_decay_shape *shape) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, "decay_shape");
    if (!f) return SD_OK;
    const char *v = cJSON_GetStringValue(f);
    if (v && strcmp(v, "linear") == 0) *shape = SD_DECAY_LINEAR;
    else if (v && strcmp(v, "1-sqrt") == 0) *shape = SD_DECAY_1_SQRT;
    else if (v && strcmp(v, "cosine") == 0) *shape = SD_DECAY_COSINE;
    else
        return sd_fail(SD_ERR_INPUT, "%s: field 'decay_shape': expected \"linear\", \"1-sqrt\" "
                       "or \"cosine\"", where);
    return SD_OK;
}

/* Relations between fields, once each is valid on its own. */
static int check_consistent(const sd_schedule *s, const char *where) {
    if (s->type == SD_SCHED_CONSTANT) return SD_OK;
    if (s->min_lr > s->lr)
        return sd_fail(SD_ERR_INPUT, "%s: field 'min_lr': %g is above lr %g", where, s->min_lr,
                       s->lr);
    if (s->type == SD_SCHED_COSINE && s->warmup_steps >= s->total_steps)
        return sd_fail(SD_ERR_INPUT, "%s: field 'warmup_steps': %lld leaves no step to decay in "
                       "total_steps %lld", where, (long long)s->warmup_steps,
                       (long long)s->total_steps);
    if (s->type == SD_SCHED_WSD) {
        int64_t d = wsd_decay_steps(s);
        if (d < 1)
            return sd_fail(SD_ERR_INPUT, "%s: field 'decay_fraction': %g of total_steps %lld is "
                           "no step", where, s->decay_fraction, (long long)s->total_steps);
        if (s->warmup_steps > s->total_steps - d)
            return sd_fail(SD_ERR_INPUT, "%s: field 'warmup_steps': %lld overlaps the %lld decay "
                           "steps of total_steps %lld", where, (long long)s->warmup_steps,
                           (long long)d, (long long)s->total_steps);
    }
    return SD_OK;
}

int sd_schedule_parse(const cJSON *obj, const char *where, int64_t default_total_steps,
                      sd_schedule *out) {
    sd_schedule s = {.type = SD_SCHED_CONSTANT, .decay_fraction = 0.2,
                     .decay_shape = SD_DECAY_LINEAR};
    if (!where) where = "schedule";
    if (!cJSON_IsObject(obj)) return sd_fail(SD_ERR_INPUT, "%s: expected a JSON object", where);
    SD_TRY(parse_type(obj, where, &s.type));
    SD_TRY(check_members(obj, where, s.type));
    SD_TRY(get_number(obj, where, "lr", 1, 0.0, 1, INFINITY, &s.lr));
    SD_TRY(get_count(obj, where, "warmup_steps", 0, 0, &s.warmup_steps));
    s.total_steps = default_total_steps > 0 ? default_total_steps : 0;
    int need_total = s.type != SD_SCHED_CONSTANT && default_total_steps <= 0;
    SD_TRY(get_count(obj, where, "total_steps", need_total, 1, &s.total_steps));
    SD_TRY(get_number(obj, where, "min_lr", 0, 0.0, 0, INFINITY, &s.min_lr));
    SD_TRY(get_number(obj, where, "decay_fraction", 0, 0.0, 1, 1.0, &s.decay_fraction));
    SD_TRY(parse_shape(obj, where, &s.decay_shape));
    SD_TRY(check_consistent(&s, where));
    *out = s;
    return SD_OK;
}
