/* ssdistill export --model M --format llamba|mamba_ssm|hf-mamba2 --out DIR
 *                  [--tokenizer-from TEACHER_DIR]
 * A student as safetensors + config.json in another library's layout, with the teacher's
 * tokenizer files (convert/export.h).  Without --tokenizer-from, the files beside the model
 * (when it is a folder) are copied. */
#include "common/error.h"
#include "common/fileio.h"
#include "convert/export.h"
#include "convert/model_io.h"
#include "distill/commands.h"

#include <stdio.h>
#include <stdlib.h>

int cmd_export(int argc, char **argv) {
    static const char *const with_value[] = {"--model", "--format", "--out", "--tokenizer-from", NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, NULL));
    const char *model = sd_arg_value(argc, argv, "--model"), *format = sd_arg_value(argc, argv, "--format");
    const char *out = sd_arg_value(argc, argv, "--out"), *tok = sd_arg_value(argc, argv, "--tokenizer-from");
    if (!model || !format || !out || sd_arg_positional(argc, argv, with_value, 0))
        return sd_fail(SD_ERR_INPUT, "usage: ssdistill export --model M --format llamba|mamba_ssm|hf-mamba2 --out DIR "
                                     "[--tokenizer-from TEACHER_DIR]");
    sd_export_format f;
    SD_TRY(sd_export_format_parse(format, &f));
    if (!tok && sd_is_dir(model)) tok = model;
    sd_model_config cfg;
    sd_weights w;
    char *src = sd_model_tensor_source(model);
    if (!src) return SD_ERR_SYS;
    int rc = sd_load_model(model, &cfg, &w);
    if (rc == SD_OK) {
        rc = sd_export(&cfg, &w, f, src, out, tok);
        sd_weights_free(&w);
    }
    if (rc == SD_OK)
        fprintf(stderr, "export: %s written in the %s layout%s\n", out, sd_export_format_name(f),
                tok ? "" : " (no tokenizer files: pass --tokenizer-from TEACHER_DIR)");
    free(src);
    return rc;
}
