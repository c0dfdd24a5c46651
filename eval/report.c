/* The HTML run report: metrics.jsonl, eval.json and recipe.json into one self-contained page
 * of inline SVG.  Rendering goes into a growable buffer that remembers its first allocation
 * failure, so the many small appends need no check each; the buffer is checked once before
 * it is written. */
#include "eval/report.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/error.h"
#include "common/fileio.h"

#define N_STAGES 3

/* ---- output buffer ---------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
    int failed;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* A string literal, its length counted by the compiler. */
#define sb_lit(b, s) sb_put((b), (s), sizeof(s) - 1)

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        sb_put(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_put(b, big, (size_t)n);
    free(big);
}

/* Text from the run's files goes through here: names and paths may hold '<' or '&'. */
static void sb_esc(sbuf *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': sb_lit(b, "&lt;"); break;
        case '>': sb_lit(b, "&gt;"); break;
        case '&': sb_lit(b, "&amp;"); break;
        case '"': sb_lit(b, "&quot;"); break;
        default: sb_put(b, s, 1);
        }
    }
}

/* ---- metrics.jsonl ------------------------------------------------------------------------ */

typedef struct {
    double *x, *y;
    size_t n, cap;
} series;

typedef struct {
    series loss;            /* x: step, y: loss */
    double last_step, last_tokens, last_lr, last_grad, last_tps;
    double first_loss, min_loss;
    double *layers;         /* the last layer_losses logged */
    int n_layers;
} stage_log;

typedef struct {
    const char *file;
    stage_log st[N_STAGES + 1]; /* indexed by stage number */
    cJSON *evals;               /* [{"stage", "step", "eval"}] in file order */
} metrics;

static int series_add(series *s, double x, double y) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        double *nx = sd_realloc(s->x, cap * sizeof *nx, "loss series");
        if (!nx) return SD_ERR_SYS;
        s->x = nx;
        double *ny = sd_realloc(s->y, cap * sizeof *ny, "loss series");
        if (!ny) return SD_ERR_SYS;
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x;
    s->y[s->n++] = y;
    return SD_OK;
}

static void metrics_free(metrics *m) {
    for (int s = 0; s <= N_STAGES; s++) {
        free(m->st[s].loss.x);
        free(m->st[s].loss.y);
        free(m->st[s].layers);
    }
    cJSON_Delete(m->evals);
}

/* A number field of a metrics line; absent leaves *out alone unless required. */
static int line_num(const metrics *m, int line, const cJSON *o, const char *key, int required, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v && !required) return SD_OK;
    if (!v) return sd_fail(SD_ERR_INPUT, "%s:%d: field '%s': missing", m->file, line, key);
    if (!cJSON_IsNumber(v)) return sd_fail(SD_ERR_INPUT, "%s:%d: field '%s': expected a number", m->file, line, key);
    *out = v->valuedouble;
    return SD_OK;
}

static int line_layers(metrics *m, int line, const cJSON *o, stage_log *st) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "layer_losses"), *it;
    if (!arr) return SD_OK;
    if (!cJSON_IsArray(arr))
        return sd_fail(SD_ERR_INPUT, "%s:%d: field 'layer_losses': expected an array of numbers", m->file, line);
    int n = cJSON_GetArraySize(arr), i = 0;
    double *v = sd_calloc((size_t)n, sizeof *v, "layer losses");
    if (!v) return SD_ERR_SYS;
    cJSON_ArrayForEach(it, arr) {
        if (!cJSON_IsNumber(it)) {
            free(v);
            return sd_fail(SD_ERR_INPUT, "%s:%d: field 'layer_losses[%d]': expected a number", m->file, line, i);
        }
        v[i++] = it->valuedouble;
    }
    free(st->layers); /* only the last logged set is charted */
    st->layers = v;
    st->n_layers = n;
    return SD_OK;
}

static int line_eval(metrics *m, int line, const cJSON *o, int stage, double step) {
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "eval");
    if (!cJSON_IsObject(ev))
        return sd_fail(SD_ERR_INPUT, "%s:%d: field 'eval': expected an object of metrics", m->file, line);
    cJSON *row = cJSON_CreateObject(), *copy = cJSON_Duplicate(ev, 1);
    int ok = row && copy && cJSON_AddNumberToObject(row, "stage", stage) && cJSON_AddNumberToObject(row, "step", step);
    if (ok) ok = cJSON_AddItemToObject(row, "eval", copy);
    if (!ok) cJSON_Delete(copy);
    if (ok) ok = cJSON_AddItemToArray(m->evals, row);
    if (!ok) {
        cJSON_Delete(row);
        return sd_fail(SD_ERR_SYS, "out of memory reading %s", m->file);
    }
    return SD_OK;
}

static int line_step(metrics *m, int line, const cJSON *o, int stage, double step) {
    stage_log *st = &m->st[stage];
    double loss = 0;
    SD_TRY(line_num(m, line, o, "loss", 1, &loss));
    SD_TRY(line_num(m, line, o, "tokens", 0, &st->last_tokens));
    SD_TRY(line_num(m, line, o, "lr", 0, &st->last_lr));
    SD_TRY(line_num(m, line, o, "grad_norm", 0, &st->last_grad));
    SD_TRY(line_num(m, line, o, "tokens_per_s", 0, &st->last_tps));
    SD_TRY(line_layers(m, line, o, st));
    if (st->loss.n == 0) st->first_loss = st->min_loss = loss;
    if (loss < st->min_loss) st->min_loss = loss;
    st->last_step = step;
    return series_add(&st->loss, step, loss);
}

static int parse_line(metrics *m, int line, const char *text, size_t len) {
    cJSON *o = cJSON_ParseWithLength(text, len);
    if (!o) return sd_fail(SD_ERR_INPUT, "%s:%d: not valid JSON", m->file, line);
    int rc = SD_OK;
    double stage = 0, step = 0;
    const cJSON *event = cJSON_GetObjectItemCaseSensitive(o, "event");
    if (!cJSON_IsObject(o)) rc = sd_fail(SD_ERR_INPUT, "%s:%d: expected a JSON object", m->file, line);
    if (rc == SD_OK) rc = line_num(m, line, o, "stage", 1, &stage);
    if (rc == SD_OK && !(stage == 1 || stage == 2 || stage == 3))
        rc = sd_fail(SD_ERR_INPUT, "%s:%d: field 'stage': expected 1, 2 or 3, got %g", m->file, line, stage);
    if (rc == SD_OK) rc = line_num(m, line, o, "step", 1, &step);
    if (rc == SD_OK && event && !cJSON_IsString(event))
        rc = sd_fail(SD_ERR_INPUT, "%s:%d: field 'event': expected a string", m->file, line);
    if (rc == SD_OK && !event) rc = line_step(m, line, o, (int)stage, step);
    else if (rc == SD_OK && strcmp(event->valuestring, "eval") == 0) rc = line_eval(m, line, o, (int)stage, step);
    /* other events (checkpoints, stage boundaries) carry nothing the report draws */
    cJSON_Delete(o);
    return rc;
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

static int read_metrics(metrics *m, const char *path) {
    char *text;
    size_t len;
    memset(m, 0, sizeof *m);
    m->file = path;
    if (!sd_file_exists(path)) return sd_fail(SD_ERR_INPUT, "%s: no metrics file in the run directory", path);
    if (!(m->evals = cJSON_CreateArray())) return sd_fail(SD_ERR_SYS, "out of memory reading %s", path);
    SD_TRY(sd_read_file(path, &text, &len));
    int rc = SD_OK, line = 0, records = 0;
    for (size_t at = 0; at < len && rc == SD_OK;) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t n = nl ? (size_t)(nl - (text + at)) : len - at;
        line++;
        if (!is_blank(text + at, n)) {
            rc = parse_line(m, line, text + at, n);
            records++;
        }
        at += n + 1;
    }
    free(text);
    if (rc == SD_OK && records == 0) rc = sd_fail(SD_ERR_INPUT, "%s: empty: no metrics logged", path);
    return rc;
}

/* ---- axes and charts --------------------------------------------------------------------- */

#define CW 640.0 /* chart width and height, and the plot area's margins */
#define CH 300.0
#define ML 70.0
#define MR 20.0
#define MT 30.0
#define MB 46.0
#define MAX_TICKS 16

typedef struct {
    double lo, hi;
    int log;
} axis;

/* 1, 2 or 5 times a power of ten, near range / target. */
static double nice_step(double range, int target) {
    double raw = range / target, p = pow(10.0, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1.0 : f < 3.0 ? 2.0 : f < 7.0 ? 5.0 : 10.0) * p;
}

static axis linear_axis(double lo, double hi) {
    if (!(hi > lo)) { /* one value: give it some room */
        double pad = fabs(lo) > 0 ? fabs(lo) * 0.1 : 1.0;
        lo -= pad, hi += pad;
    }
    double step = nice_step(hi - lo, 5);
    return (axis){floor(lo / step) * step, ceil(hi / step) * step, 0};
}

/* Log scale when every value is positive and they span more than two decades. */
static axis value_axis(const double *y, size_t n, int allow_log) {
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(y[i])) continue;
        if (y[i] < lo) lo = y[i];
        if (y[i] > hi) hi = y[i];
    }
    if (lo > hi) lo = 0, hi = 1;
    if (allow_log && lo > 0 && hi / lo > 100.0)
        return (axis){pow(10.0, floor(log10(lo))), pow(10.0, ceil(log10(hi))), 1};
    return linear_axis(lo, hi);
}

static int axis_ticks(const axis *a, double *t) {
    int n = 0;
    if (a->log) {
        int d0 = (int)lround(log10(a->lo)), d1 = (int)lround(log10(a->hi));
        int stride = (d1 - d0) / (MAX_TICKS / 2) + 1;
        for (int d = d0; d <= d1 && n < MAX_TICKS; d += stride) t[n++] = pow(10.0, d);
        return n;
    }
    double step = nice_step(a->hi - a->lo, 5);
    for (int i = 0; n < MAX_TICKS; i++) {
        double v = a->lo + i * step;
        if (v > a->hi + step * 1e-6) break;
        t[n++] = fabs(v) < step * 1e-9 ? 0.0 : v; /* no "-0" or "1e-17" labels */
    }
    return n;
}

/* Value to pixel: p0 at a->lo, p1 at a->hi. */
static double axis_map(const axis *a, double v, double p0, double p1) {
    double f = a->log ? (log10(v) - log10(a->lo)) / (log10(a->hi) - log10(a->lo)) : (v - a->lo) / (a->hi - a->lo);
    return p0 + f * (p1 - p0);
}

static void chart_open(sbuf *b, const char *title) {
    sb_printf(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" viewBox=\"0 0 %g %g\" "
                 "role=\"img\">\n<title>", CW, CH, CW, CH);
    sb_esc(b, title);
    sb_printf(b, "</title>\n<rect x=\"0\" y=\"0\" width=\"%g\" height=\"%g\" fill=\"#fff\"/>\n", CW, CH);
    sb_printf(b, "<text x=\"%g\" y=\"18\" font-size=\"14\" font-weight=\"bold\">", ML);
    sb_esc(b, title);
    sb_lit(b, "</text>\n");
}

/* The y axis with grid lines and labels; the x axis line. */
static void chart_y_axis(sbuf *b, const axis *y, const char *label) {
    double t[MAX_TICKS];
    int n = axis_ticks(y, t);
    for (int i = 0; i < n; i++) {
        double py = axis_map(y, t[i], CH - MB, MT);
        sb_printf(b, "<line class=\"grid\" x1=\"%g\" y1=\"%.2f\" x2=\"%g\" y2=\"%.2f\"/>\n", ML, py, CW - MR, py);
        sb_printf(b, "<text x=\"%g\" y=\"%.2f\" font-size=\"11\" text-anchor=\"end\">%g</text>\n", ML - 6, py + 4, t[i]);
    }
    sb_printf(b, "<line class=\"axis\" x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\"/>\n", ML, MT, ML, CH - MB);
    sb_printf(b, "<line class=\"axis\" x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\"/>\n", ML, CH - MB, CW - MR, CH - MB);
    sb_printf(b, "<text x=\"14\" y=\"%g\" font-size=\"12\" transform=\"rotate(-90 14 %g)\" text-anchor=\"middle\">",
              (MT + CH - MB) / 2, (MT + CH - MB) / 2);
    sb_esc(b, label);
    sb_lit(b, "</text>\n");
}

static void chart_x_label(sbuf *b, const char *label) {
    sb_printf(b, "<text x=\"%g\" y=\"%g\" font-size=\"12\" text-anchor=\"middle\">", (ML + CW - MR) / 2, CH - 8);
    sb_esc(b, label);
    sb_lit(b, "</text>\n");
}

static void line_chart(sbuf *b, const char *title, const series *s) {
    axis y = value_axis(s->y, s->n, 1);
    double x0 = s->x[0], x1 = s->x[0]; /* steps repeat after a resume: take the extremes */
    for (size_t i = 1; i < s->n; i++) x0 = fmin(x0, s->x[i]), x1 = fmax(x1, s->x[i]);
    axis x = linear_axis(x0, x1);
    double t[MAX_TICKS];
    chart_open(b, title);
    chart_y_axis(b, &y, y.log ? "loss (log scale)" : "loss");
    int n = axis_ticks(&x, t);
    for (int i = 0; i < n; i++) {
        double px = axis_map(&x, t[i], ML, CW - MR);
        sb_printf(b, "<line class=\"axis\" x1=\"%.2f\" y1=\"%g\" x2=\"%.2f\" y2=\"%g\"/>\n", px, CH - MB, px, CH - MB + 4);
        sb_printf(b, "<text x=\"%.2f\" y=\"%g\" font-size=\"11\" text-anchor=\"middle\">%g</text>\n", px, CH - MB + 16, t[i]);
    }
    chart_x_label(b, "step");
    sb_lit(b, "<polyline class=\"loss\" points=\"");
    double lx = 0, ly = 0;
    int drawn = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (!isfinite(s->y[i]) || (y.log && s->y[i] <= 0)) continue; /* a gap, not a crash */
        lx = axis_map(&x, s->x[i], ML, CW - MR);
        ly = axis_map(&y, s->y[i], CH - MB, MT);
        sb_printf(b, "%s%.2f,%.2f", drawn++ ? " " : "", lx, ly);
    }
    sb_lit(b, "\"/>\n");
    if (drawn) sb_printf(b, "<circle class=\"last\" cx=\"%.2f\" cy=\"%.2f\" r=\"3\"/>\n", lx, ly);
    sb_lit(b, "</svg>\n");
}

static void bar_chart(sbuf *b, const char *title, const double *v, int n) {
    double lo = 0, hi = 0; /* bars start at zero */
    for (int i = 0; i < n; i++) {
        if (isfinite(v[i]) && v[i] > hi) hi = v[i];
        if (isfinite(v[i]) && v[i] < lo) lo = v[i];
    }
    axis y = linear_axis(lo, hi);
    chart_open(b, title);
    chart_y_axis(b, &y, "loss");
    double slot = (CW - MR - ML) / n, zero = axis_map(&y, 0.0, CH - MB, MT);
    for (int i = 0; i < n; i++) {
        double cx = ML + slot * (i + 0.5), w = slot * 0.6;
        if (isfinite(v[i])) {
            double py = axis_map(&y, v[i], CH - MB, MT);
            sb_printf(b, "<rect class=\"bar\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\"/>\n", cx - w / 2,
                      fmin(py, zero), w, fabs(zero - py));
            if (slot >= 36) /* value labels overlap on deep models: the axis still reads */
                sb_printf(b, "<text x=\"%.2f\" y=\"%.2f\" font-size=\"10\" text-anchor=\"middle\">%.4g</text>\n", cx,
                          fmin(py, zero) - 3, v[i]);
        }
        if (slot >= 14 || i % 5 == 0) /* every fifth layer number when they would collide */
            sb_printf(b, "<text x=\"%.2f\" y=\"%g\" font-size=\"11\" text-anchor=\"middle\">%d</text>\n", cx, CH - MB + 16, i);
    }
    chart_x_label(b, "layer");
    sb_lit(b, "</svg>\n");
}

/* ---- tables ----------------------------------------------------------------------------- */

typedef struct {
    char *row, *col, *text;
} cell;

typedef struct {
    cell *c;
    size_t n, cap;
    int failed;
} table;

static void table_add(table *t, const char *row, const char *col, const char *text) {
    if (t->failed) return;
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 32;
        cell *q = realloc(t->c, cap * sizeof *q);
        if (!q) {
            t->failed = 1;
            return;
        }
        t->c = q;
        t->cap = cap;
    }
    cell *c = &t->c[t->n];
    c->row = strdup(row);
    c->col = strdup(col);
    c->text = strdup(text);
    t->n++;
    if (!c->row || !c->col || !c->text) t->failed = 1;
}

static void table_free(table *t) {
    for (size_t i = 0; i < t->n; i++) {
        free(t->c[i].row);
        free(t->c[i].col);
        free(t->c[i].text);
    }
    free(t->c);
    memset(t, 0, sizeof *t);
}

/* Index of the first cell with the same row (or column) as cell i: its identity. */
static size_t first_row(const table *t, size_t i) {
    size_t k = 0;
    while (strcmp(t->c[k].row, t->c[i].row) != 0) k++;
    return k;
}
static size_t first_col(const table *t, size_t i) {
    size_t k = 0;
    while (strcmp(t->c[k].col, t->c[i].col) != 0) k++;
    return k;
}

/* Rows and columns in the order they first appear; an empty row label shows as "-". */
static void table_render(sbuf *b, const table *t, const char *corner) {
    sb_lit(b, "<table>\n<tr><th>");
    sb_esc(b, corner);
    sb_lit(b, "</th>");
    for (size_t j = 0; j < t->n; j++) {
        if (first_col(t, j) != j) continue;
        sb_lit(b, "<th>");
        sb_esc(b, t->c[j].col);
        sb_lit(b, "</th>");
    }
    sb_lit(b, "</tr>\n");
    for (size_t i = 0; i < t->n; i++) {
        if (first_row(t, i) != i) continue;
        sb_lit(b, "<tr><th>");
        sb_esc(b, t->c[i].row[0] ? t->c[i].row : "-");
        sb_lit(b, "</th>");
        for (size_t j = 0; j < t->n; j++) {
            if (first_col(t, j) != j) continue;
            const char *text = "";
            for (size_t k = 0; k < t->n; k++)
                if (first_row(t, k) == i && first_col(t, k) == j) text = t->c[k].text;
            sb_lit(b, "<td>");
            sb_esc(b, text);
            sb_lit(b, "</td>");
        }
        sb_lit(b, "</tr>\n");
    }
    sb_lit(b, "</table>\n");
}

/* ---- JSON leaves ---------------------------------------------------------------------------- */

static int scalar(const cJSON *v) { return !cJSON_IsArray(v) && !cJSON_IsObject(v); }

static int scalar_array(const cJSON *v) {
    const cJSON *it;
    if (!cJSON_IsArray(v)) return 0;
    cJSON_ArrayForEach(it, v) if (!scalar(it)) return 0;
    return 1;
}

/* A leaf as text: whole numbers in full (token budgets read better as 19596000 than as
 * 1.9596e+07), others to 6 digits, strings as they are, arrays of scalars as JSON. */
static void leaf_text(const cJSON *v, char *buf, size_t n) {
    if (cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 1e15)
        snprintf(buf, n, "%.0f", v->valuedouble);
    else if (cJSON_IsNumber(v)) snprintf(buf, n, "%.6g", v->valuedouble);
    else if (cJSON_IsString(v)) snprintf(buf, n, "%s", v->valuestring);
    else if (cJSON_IsBool(v)) snprintf(buf, n, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v)) snprintf(buf, n, "null");
    else {
        char *s = cJSON_PrintUnformatted(v);
        snprintf(buf, n, "%s", s ? s : "?");
        cJSON_free(s);
    }
}

typedef void (*leaf_fn)(void *ctx, const char *path, const cJSON *leaf);

/* Calls fn for every scalar (or array of scalars) under node, with its dotted path. */
static void walk(const cJSON *node, const char *path, leaf_fn fn, void *ctx) {
    if (scalar(node) || scalar_array(node)) {
        fn(ctx, path, node);
        return;
    }
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, node) {
        char p[512];
        if (cJSON_IsArray(node)) snprintf(p, sizeof p, "%s[%d]", path, i++);
        else if (path[0]) snprintf(p, sizeof p, "%.250s.%.250s", path, it->string);
        else snprintf(p, sizeof p, "%.250s", it->string);
        walk(it, p, fn, ctx);
    }
}

/* eval.json: numeric leaves, row = the path to the parent ("student"), column = the name. */
static void eval_leaf(void *ctx, const char *path, const cJSON *leaf) {
    if (!cJSON_IsNumber(leaf)) return;
    char row[512], text[64];
    snprintf(row, sizeof row, "%s", path);
    char *dot = strrchr(row, '.');
    const char *col = dot ? dot + 1 : row;
    if (dot) *dot = 0;
    leaf_text(leaf, text, sizeof text);
    table_add(ctx, dot ? row : "", col, text);
}

typedef struct {
    table *t;
    const char *row;
} row_ctx;

/* One row of leaves (an eval event, a stage of the recipe): column = the full path. */
static void row_leaf(void *ctx, const char *path, const cJSON *leaf) {
    row_ctx *r = ctx;
    char text[1024];
    leaf_text(leaf, text, sizeof text);
    table_add(r->t, r->row, path, text);
}

/* A column of leaves (a stage of the recipe): row = the full path, so that three stages
 * with a dozen keys each stay three columns wide. */
static void col_leaf(void *ctx, const char *path, const cJSON *leaf) {
    row_ctx *r = ctx;
    char text[1024];
    leaf_text(leaf, text, sizeof text);
    table_add(r->t, path, r->row, text);
}

/* The recipe outside its stages: one row per leaf. */
static void kv_leaf(void *ctx, const char *path, const cJSON *leaf) {
    char text[1024];
    leaf_text(leaf, text, sizeof text);
    table_add(ctx, path, "value", text);
}

/* ---- sections ----------------------------------------------------------------------------- */

static const char k_style[] =
    "body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}"
    "h1{font-size:22px}h2{font-size:18px;margin-top:28px}"
    "table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;"
    "font-size:13px;text-align:left}td{font-family:monospace}"
    "svg{display:block;margin:8px 0;border:1px solid #eee}"
    ".grid{stroke:#e4e4e4;stroke-width:1}.axis{stroke:#444;stroke-width:1}"
    ".loss{fill:none;stroke:#1f6fb4;stroke-width:1.5}.last{fill:#1f6fb4}.bar{fill:#e08a2c}"
    "svg text{fill:#222}";

static void section_stages(sbuf *b, const metrics *m) {
    static const char *const names[] = {"", "stage 1: matrix orientation", "stage 2: hidden-state alignment",
                                        "stage 3: knowledge distillation"};
    table t = {0};
    char row[32], text[64];
    sb_lit(b, "<h2>Training loss</h2>\n");
    for (int s = 1; s <= N_STAGES; s++) {
        const stage_log *st = &m->st[s];
        if (st->loss.n == 0) continue;
        line_chart(b, names[s], &st->loss);
        snprintf(row, sizeof row, "stage %d", s);
        snprintf(text, sizeof text, "%zu", st->loss.n);
        table_add(&t, row, "logged steps", text);
        snprintf(text, sizeof text, "%.0f", st->last_step);
        table_add(&t, row, "last step", text);
        snprintf(text, sizeof text, "%.0f", st->last_tokens);
        table_add(&t, row, "tokens", text);
        snprintf(text, sizeof text, "%.6g", st->first_loss);
        table_add(&t, row, "first loss", text);
        snprintf(text, sizeof text, "%.6g", st->loss.y[st->loss.n - 1]);
        table_add(&t, row, "last loss", text);
        snprintf(text, sizeof text, "%.6g", st->min_loss);
        table_add(&t, row, "min loss", text);
        snprintf(text, sizeof text, "%.4g", st->last_lr);
        table_add(&t, row, "last lr", text);
        snprintf(text, sizeof text, "%.4g", st->last_grad);
        table_add(&t, row, "last grad norm", text);
        snprintf(text, sizeof text, "%.0f", st->last_tps);
        table_add(&t, row, "tokens/s", text);
    }
    if (t.n) table_render(b, &t, "stage");
    if (t.failed) b->failed = 1;
    table_free(&t);
}

static void section_layers(sbuf *b, const metrics *m) {
    int any = m->st[1].n_layers > 0 || m->st[2].n_layers > 0;
    if (!any) return;
    sb_lit(b, "<h2>Per-layer loss (last logged step)</h2>\n");
    for (int s = 1; s <= 2; s++) {
        if (m->st[s].n_layers == 0) continue;
        char title[96];
        snprintf(title, sizeof title, "stage %d per-layer loss at step %.0f", s, m->st[s].last_step);
        bar_chart(b, title, m->st[s].layers, m->st[s].n_layers);
    }
}

static void section_evals(sbuf *b, const metrics *m, const cJSON *eval_json) {
    if (cJSON_GetArraySize(m->evals) > 0) {
        table t = {0};
        const cJSON *ev;
        sb_lit(b, "<h2>Evaluations during training</h2>\n");
        cJSON_ArrayForEach(ev, m->evals) {
            char row[64];
            snprintf(row, sizeof row, "stage %d, step %.0f",
                     cJSON_GetObjectItemCaseSensitive(ev, "stage")->valueint,
                     cJSON_GetObjectItemCaseSensitive(ev, "step")->valuedouble);
            row_ctx rc = {&t, row};
            walk(cJSON_GetObjectItemCaseSensitive(ev, "eval"), "", row_leaf, &rc);
        }
        if (t.n) table_render(b, &t, "when");
        if (t.failed) b->failed = 1;
        table_free(&t);
    }
    if (!eval_json) return;
    table t = {0};
    sb_lit(b, "<h2>Evaluation (eval.json)</h2>\n");
    walk(eval_json, "", eval_leaf, &t);
    if (t.n) table_render(b, &t, "model");
    else sb_lit(b, "<p>No numeric fields.</p>\n");
    if (t.failed) b->failed = 1;
    table_free(&t);
}

static void section_recipe(sbuf *b, const cJSON *recipe) {
    if (!recipe) return;
    table kv = {0}, st = {0};
    const cJSON *it;
    sb_lit(b, "<h2>Recipe</h2>\n");
    cJSON_ArrayForEach(it, recipe) {
        if (it->string && strcmp(it->string, "stages") == 0 && cJSON_IsArray(it)) continue;
        walk(it, it->string ? it->string : "", kv_leaf, &kv);
    }
    if (kv.n) table_render(b, &kv, "key");
    const cJSON *stages = cJSON_GetObjectItemCaseSensitive(recipe, "stages");
    if (!cJSON_IsArray(stages)) stages = NULL;
    int i = 0;
    cJSON_ArrayForEach(it, stages) {
        char row[32];
        snprintf(row, sizeof row, "stages[%d]", i++);
        row_ctx rc = {&st, row};
        walk(it, "", col_leaf, &rc);
    }
    if (st.n) table_render(b, &st, "key");
    if (kv.failed || st.failed) b->failed = 1;
    table_free(&kv);
    table_free(&st);
}

static void render(sbuf *b, const char *run_dir, const metrics *m, const cJSON *eval_json, const cJSON *recipe) {
    const cJSON *name = recipe ? cJSON_GetObjectItemCaseSensitive(recipe, "name") : NULL;
    const char *title = cJSON_IsString(name) ? name->valuestring : run_dir;
    sb_lit(b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>ssdistill: ");
    sb_esc(b, title);
    sb_printf(b, "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>ssdistill run: ", k_style);
    sb_esc(b, title);
    sb_lit(b, "</h1>\n<p>Run directory: <code>");
    sb_esc(b, run_dir);
    sb_lit(b, "</code></p>\n");
    section_stages(b, m);
    section_layers(b, m);
    section_evals(b, m, eval_json);
    section_recipe(b, recipe);
    sb_lit(b, "</body>\n</html>\n");
}

/* ---- files ------------------------------------------------------------------------------------ */

/* An optional JSON file of the run directory: absent is fine (*out NULL), broken is not. */
static int read_optional_json(const char *dir, const char *name, cJSON **out) {
    *out = NULL;
    char *path = sd_path_join(dir, name), *text = NULL;
    size_t len;
    if (!path) return SD_ERR_SYS;
    int rc = SD_OK;
    if (sd_file_exists(path)) {
        rc = sd_read_file(path, &text, &len);
        if (rc == SD_OK && !(*out = cJSON_ParseWithLength(text, len)))
            rc = sd_fail(SD_ERR_INPUT, "%s: not valid JSON", path);
        if (rc == SD_OK && !cJSON_IsObject(*out)) {
            rc = sd_fail(SD_ERR_INPUT, "%s: expected a JSON object", path);
            cJSON_Delete(*out);
            *out = NULL;
        }
    }
    free(text);
    free(path);
    return rc;
}

static int write_file(const char *path, const sbuf *b) {
    sd_atomic_file af;
    SD_TRY(sd_atomic_open(&af, path));
    int rc = sd_atomic_write(&af, b->p, b->n);
    if (rc != SD_OK) {
        sd_atomic_abort(&af);
        return rc;
    }
    return sd_atomic_commit(&af);
}

int sd_report_write(const char *run_dir, const char *out_path) {
    if (!sd_is_dir(run_dir)) return sd_fail(SD_ERR_INPUT, "%s: not a run directory", run_dir);
    metrics m;
    cJSON *eval_json = NULL, *recipe = NULL;
    sbuf b = {0};
    char *mpath = sd_path_join(run_dir, "metrics.jsonl");
    char *opath = out_path ? sd_strdup(out_path, "report path") : sd_path_join(run_dir, "report.html");
    if (!mpath || !opath) {
        free(mpath);
        free(opath);
        return SD_ERR_SYS;
    }
    int rc = read_metrics(&m, mpath);
    if (rc == SD_OK) rc = read_optional_json(run_dir, "eval.json", &eval_json);
    if (rc == SD_OK) rc = read_optional_json(run_dir, "recipe.json", &recipe);
    if (rc == SD_OK) {
        render(&b, run_dir, &m, eval_json, recipe);
        rc = b.failed ? sd_fail(SD_ERR_SYS, "out of memory rendering %s", opath) : write_file(opath, &b);
    }
    free(b.p);
    metrics_free(&m);
    cJSON_Delete(eval_json);
    cJSON_Delete(recipe);
    free(mpath);
    free(opath);
    return rc;
}
