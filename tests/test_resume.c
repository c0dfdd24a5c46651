/* distill's resume (DESIGN.md section 6): a run stopped after N steps and resumed gives the
 * metrics and the parameters of the uninterrupted run bit for bit (the same thread count),
 * across a stage boundary and inside a stage (AdamW moments restored).  Runs all three
 * stages on the real stories260K teacher with a tiny budget. */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/checkpoint.h"
#include "distill/run.h"
#include "test_util.h"

#include <unistd.h>

static char g_dir[512];

/* A recipe of 3 + 3 + 4 steps on a corpus sampled from the teacher. */
static void write_recipe(const char *path) {
    char teacher[1024], text[1024];
    test_path(teacher, sizeof teacher, "hf/stories260K");
    test_path(text, sizeof text, "text/tinystories_val_dev.txt");
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f,
            "{\"name\": \"resume-test\", \"teacher\": \"%s\","
            " \"data\": {\"sample\": {\"tokens\": 6000, \"seq_len\": 64, \"seed\": 3, \"out\": \"%s/sampled.bin\"},"
            "          \"eval\": \"%s\"},"
            " \"student\": {\"mixer\": \"discrete\", \"state_size\": 8, \"chunk_size\": 16},"
            " \"seed\": 5, \"threads\": 2, \"eval\": {\"tokens\": 512, \"seq_len\": 64, \"batch\": 2},"
            " \"stages\": ["
            "  {\"stage\": 1, \"tokens\": 192, \"batch\": 2, \"seq_len\": 32, \"log_every\": 1,"
            "   \"schedule\": {\"type\": \"constant\", \"lr\": 1e-3}},"
            "  {\"stage\": 2, \"tokens\": 192, \"batch\": 2, \"seq_len\": 32, \"log_every\": 1, \"checkpoint_every\": 2,"
            "   \"schedule\": {\"type\": \"wsd\", \"lr\": 1e-3, \"warmup_steps\": 1}},"
            "  {\"stage\": 3, \"tokens\": 256, \"batch\": 2, \"seq_len\": 32, \"log_every\": 1, \"eval_every\": 2,"
            "   \"schedule\": {\"type\": \"cosine\", \"lr\": 1e-3, \"warmup_steps\": 1}, \"ce_weight\": 0.2}]}\n",
            teacher, g_dir, text);
    fclose(f);
}

/* Runs the recipe into dir, stopping after each count in stops (0-terminated) and resuming. */
static int run_with_stops(const char *recipe, const char *dir, const long *stops) {
    int resume = 0;
    for (;; stops++) {
        sd_run run;
        SD_TRY(sd_run_open(&run, recipe, dir, resume));
        run.quiet = 1;
        run.stop_after = *stops;
        int stopped = 0, rc = sd_run_all(&run, &stopped);
        sd_run_close(&run);
        SD_TRY(rc);
        if (!stopped) return SD_OK;
        resume = 1;
    }
}

/* metrics.jsonl without the wall-clock field tokens_per_s. */
static char *metrics_without_speed(const char *dir) {
    char path[1024], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (sd_read_file(path, &text, &len) != SD_OK) return NULL;
    for (char *p = strstr(text, ",\"tokens_per_s\":"); p; p = strstr(p, ",\"tokens_per_s\":")) {
        char *end = p + 1;
        while (*end && *end != ',' && *end != '}') end++;
        memmove(p, end, strlen(end) + 1);
    }
    return text;
}

static void compare_runs(const char *a, const char *b, const char *what) {
    char *ma = metrics_without_speed(a), *mb = metrics_without_speed(b);
    CHECK(ma && mb && strcmp(ma, mb) == 0, "%s: metrics differ:\n--- uninterrupted\n%s--- resumed\n%s", what,
          ma ? ma : "(none)", mb ? mb : "(none)");
    free(ma);
    free(mb);
    char pa[1024], pb[1024];
    snprintf(pa, sizeof pa, "%s/student.h5", a);
    snprintf(pb, sizeof pb, "%s/student.h5", b);
    sd_model_config ca, cb;
    sd_weights wa, wb;
    CHECK_OK(sd_checkpoint_read(pa, &ca, &wa));
    CHECK_OK(sd_checkpoint_read(pb, &cb, &wb));
    int same = wa.n == wb.n && wa.n > 0;
    for (int i = 0; same && i < wa.n; i++)
        same = strcmp(wa.items[i].name, wb.items[i].name) == 0 &&
               memcmp(wa.items[i].t.data, wb.items[i].t.data, sd_nbytes(&wa.items[i].t)) == 0;
    CHECK(same, "%s: the students differ", what);
    printf("%s: metrics and %d parameter tensors bit-identical\n", what, wa.n);
    sd_weights_free(&wa);
    sd_weights_free(&wb);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ssdistill_resume_%d", (int)getpid());
    char recipe[600], full[600], stopped[600], cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", g_dir, g_dir);
    if (system(cmd) != 0) return 1;
    snprintf(recipe, sizeof recipe, "%s/recipe.json", g_dir);
    snprintf(full, sizeof full, "%s/full", g_dir);
    snprintf(stopped, sizeof stopped, "%s/stopped", g_dir);
    write_recipe(recipe);
    const long none[] = {0};
    CHECK_OK(run_with_stops(recipe, full, none));
    /* 2 steps (inside stage 1), then 2 (to stage 2 step 1: moments in flight), then 4
     * (stage 3 step 1), then the rest */
    const long stops[] = {2, 2, 4, 0};
    CHECK_OK(run_with_stops(recipe, stopped, stops));
    compare_runs(full, stopped, "stopped 3 times and resumed");
    char report[700];
    snprintf(report, sizeof report, "%s/report.html", stopped);
    CHECK(sd_file_exists(report), "report.html written");
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (g_test_fail == 0 && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return test_summary("test_resume");
}
