/* `ssdistill convert` and `ssdistill inspect` (DESIGN.md section 7). */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/checkpoint.h"
#include "convert/hf_config.h"
#include "convert/model_io.h"
#include "convert/safetensors.h"
#include "distill/commands.h"
#include "distill/student.h"
#include "distill/teacher.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const g_convert_usage = "usage: ssdistill convert --from PATH --out FILE.h5";
static const char *const g_inspect_usage = "usage: ssdistill inspect FILE";

static int64_t total_params(const sd_weights *w) {
    int64_t n = 0;
    for (int i = 0; i < w->n; i++) n += sd_numel(&w->items[i].t);
    return n;
}

int cmd_convert(int argc, char **argv) {
    static const char *const with_value[] = {"--from", "--out", NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, NULL));
    const char *from = sd_arg_value(argc, argv, "--from");
    const char *out = sd_arg_value(argc, argv, "--out");
    if (!from || !out) return sd_fail(SD_ERR_INPUT, "missing --from or --out; %s", g_convert_usage);
    if (sd_arg_positional(argc, argv, with_value, 0))
        return sd_fail(SD_ERR_INPUT, "unexpected argument '%s'; %s", sd_arg_positional(argc, argv, with_value, 0),
                       g_convert_usage);
    sd_model_config cfg;
    sd_weights w;
    char *src = sd_model_tensor_source(from);
    if (!src) return SD_ERR_SYS;
    int rc = sd_load_model(from, &cfg, &w);
    /* A checkpoint must hold what its model needs: check before writing. */
    if (rc == SD_OK)
        rc = sd_is_student(&cfg) ? sd_student_validate(&cfg, &w, src) : sd_teacher_validate(&cfg, &w, src);
    free(src);
    if (rc == SD_OK) rc = sd_checkpoint_write(out, &cfg, &w);
    if (rc == SD_OK)
        printf("wrote %s: %s, %d tensors, %lld parameters\n", out, sd_arch_name(cfg.arch), w.n,
               (long long)total_params(&w));
    sd_weights_free(&w);
    return rc;
}

static void print_row(const char *name, sd_dtype dt, int ndim, const int64_t *shape) {
    sd_tensor view = sd_tensor_view(dt, NULL, ndim, shape);
    char buf[96];
    printf("%-56s %-5s %-20s %12lld\n", name, sd_dtype_name(dt), sd_shape_str(&view, buf, sizeof buf),
           (long long)sd_numel(&view));
}

static void print_header(void) { printf("%-56s %-5s %-20s %12s\n", "name", "dtype", "shape", "parameters"); }

/* A bare .safetensors file: its metadata and stored dtypes, no config. */
static int inspect_safetensors(const char *path) {
    sd_safetensors st;
    SD_TRY(sd_st_open(path, &st));
    printf("file: %s (safetensors)\nmetadata: %s\n\n", path, st.metadata_json ? st.metadata_json : "none");
    print_header();
    int64_t total = 0;
    for (int i = 0; i < st.n; i++) {
        const sd_st_entry *e = &st.entries[i];
        print_row(e->name, e->dtype, e->ndim, e->shape);
        sd_tensor view = sd_tensor_view(e->dtype, NULL, e->ndim, e->shape);
        total += sd_numel(&view);
    }
    printf("\ntotal: %d tensors, %lld parameters\n", st.n, (long long)total);
    sd_st_close(&st);
    return SD_OK;
}

static int print_model(const char *path, const sd_model_config *cfg, const sd_weights *w) {
    char *json;
    SD_TRY(sd_hf_config_to_json(cfg, &json));
    printf("file: %s\nconfig: %s\n\n", path, json);
    free(json);
    print_header();
    for (int i = 0; i < w->n; i++) print_row(w->items[i].name, w->items[i].t.dtype, w->items[i].t.ndim, w->items[i].t.shape);
    printf("\ntotal: %d tensors, %lld parameters%s\n", w->n, (long long)total_params(w),
           cfg->tie_word_embeddings ? " (LM head tied to the embedding)" : "");
    return SD_OK;
}

int cmd_inspect(int argc, char **argv) {
    SD_TRY(sd_args_check(argc, argv, NULL, NULL));
    const char *path = sd_arg_positional(argc, argv, NULL, 0);
    if (!path) return sd_fail(SD_ERR_INPUT, "missing FILE; %s", g_inspect_usage);
    if (sd_arg_positional(argc, argv, NULL, 1))
        return sd_fail(SD_ERR_INPUT, "unexpected argument '%s'; %s", sd_arg_positional(argc, argv, NULL, 1), g_inspect_usage);
    size_t n = strlen(path);
    if (n >= 12 && strcmp(path + n - 12, ".safetensors") == 0 && !sd_is_dir(path)) return inspect_safetensors(path);
    sd_model_config cfg;
    sd_weights w;
    sd_weights_init(&w);
    /* A checkpoint is read directly so its table shows the stored dtypes. */
    int rc = sd_is_hdf5(path) ? sd_checkpoint_read(path, &cfg, &w) : sd_load_model(path, &cfg, &w);
    if (rc == SD_OK) rc = print_model(path, &cfg, &w);
    sd_weights_free(&w);
    return rc;
}
