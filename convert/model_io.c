/* sd_load_model: picks the loader from what PATH is (folder, HDF5 signature, suffix). */
#include "convert/model_io.h"
#include "common/error.h"
#include "common/fileio.h"
#include "convert/checkpoint.h"
#include "convert/hf_config.h"
#include "convert/import_formats.h"
#include "convert/llama2c.h"
#include "convert/safetensors.h"

#include <stdlib.h>
#include <string.h>

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* config.json: an HF config, or one that convert/export.c wrote in the Llamba or mamba_ssm
 * layout (convert/import_formats.h); *kind says which. */
static int load_dir_config(const char *path, sd_model_config *cfg, sd_import_kind *kind) {
    char *text;
    size_t len;
    SD_TRY(sd_read_file(path, &text, &len));
    *kind = sd_import_detect(text);
    int rc = *kind == SD_IMPORT_NONE ? sd_hf_config_parse(text, path, cfg) : sd_import_config(*kind, text, path, cfg);
    free(text);
    return rc;
}

static int load_hf_dir(const char *dir, sd_model_config *cfg, sd_weights *w) {
    char *config = sd_path_join(dir, "config.json");
    char *index = sd_path_join(dir, "model.safetensors.index.json");
    char *single = sd_path_join(dir, "model.safetensors");
    sd_import_kind kind = SD_IMPORT_NONE;
    int rc = SD_OK;
    if (!config || !index || !single) rc = SD_ERR_SYS;
    else if (!sd_file_exists(config)) rc = sd_fail(SD_ERR_INPUT, "%s: missing config.json (expected an HF model folder)", dir);
    else rc = load_dir_config(config, cfg, &kind);
    if (rc == SD_OK) {
        if (sd_file_exists(index)) rc = sd_st_load_all(index, w);
        else if (sd_file_exists(single)) rc = sd_st_load_all(single, w);
        else rc = sd_fail(SD_ERR_INPUT, "%s: missing model.safetensors (and no model.safetensors.index.json)", dir);
    }
    if (rc == SD_OK && kind != SD_IMPORT_NONE) rc = sd_import_weights(kind, cfg, w, sd_file_exists(index) ? index : single);
    free(config);
    free(index);
    free(single);
    return rc;
}

/* Checkpoints may keep BF16/F16 tensors; models read F32. Integer tensors stay as stored. */
static int floats_to_f32(sd_weights *w) {
    for (int i = 0; i < w->n; i++) {
        sd_tensor *t = &w->items[i].t;
        if (t->dtype != SD_BF16 && t->dtype != SD_F16) continue;
        sd_tensor f;
        SD_TRY(sd_tensor_to_f32(&f, t));
        sd_tensor_free(t);
        *t = f;
    }
    return SD_OK;
}

char *sd_model_tensor_source(const char *path) {
    if (!sd_is_dir(path)) return sd_strdup(path, "model path");
    char *index = sd_path_join(path, "model.safetensors.index.json");
    if (!index || sd_file_exists(index)) return index;
    free(index);
    return sd_path_join(path, "model.safetensors");
}

int sd_load_model(const char *path, sd_model_config *cfg, sd_weights *w) {
    sd_weights_init(w);
    memset(cfg, 0, sizeof *cfg);
    int rc;
    if (sd_is_dir(path)) {
        rc = load_hf_dir(path, cfg, w);
    } else if (!sd_file_exists(path)) {
        rc = sd_fail(SD_ERR_INPUT, "%s: no such file or folder", path);
    } else if (sd_is_hdf5(path)) {
        rc = sd_checkpoint_read(path, cfg, w);
        if (rc == SD_OK) rc = floats_to_f32(w);
    } else if (ends_with(path, ".safetensors")) {
        rc = sd_fail(SD_ERR_INPUT, "%s: a bare safetensors file has no config; pass its directory", path);
    } else if (ends_with(path, ".h5") || ends_with(path, ".hdf5")) {
        rc = sd_fail(SD_ERR_INPUT, "%s: not an HDF5 file (no HDF5 signature)", path);
    } else {
        rc = sd_llama2c_load(path, cfg, w);
    }
    if (rc != SD_OK) sd_weights_free(w);
    return rc;
}
