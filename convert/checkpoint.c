/* Our HDF5 checkpoint. HDF5's own error printing is switched off; every call is checked and
 * failures become one message naming the file and the object. Uses only API calls that exist
 * unchanged in HDF5 1.10 to 1.14. */
#include "convert/checkpoint.h"
#include "common/error.h"
#include "common/fileio.h"
#include "convert/hf_config.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SD_FORMAT_ATTR "ssdistill_format"
#define SD_FORMAT_VERSION 1

static void quiet_hdf5(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

int sd_is_hdf5(const char *path) {
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    unsigned char buf[8];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(buf, 1, 8, f);
    fclose(f);
    return n == 8 && memcmp(buf, sig, 8) == 0;
}

/* File datatype for a dtype. BF16 and F16 have no portable HDF5 type: stored as U16 with a
 * "dtype" attribute naming the real one. */
static hid_t file_type(sd_dtype dt) {
    switch (dt) {
    case SD_F32: return H5T_IEEE_F32LE;
    case SD_I32: return H5T_STD_I32LE;
    case SD_I64: return H5T_STD_I64LE;
    case SD_U32: return H5T_STD_U32LE;
    default: return H5T_STD_U16LE; /* U16, BF16, F16 */
    }
}

static hid_t mem_type(sd_dtype dt) {
    switch (dt) {
    case SD_F32: return H5T_NATIVE_FLOAT;
    case SD_I32: return H5T_NATIVE_INT32;
    case SD_I64: return H5T_NATIVE_INT64;
    case SD_U32: return H5T_NATIVE_UINT32;
    default: return H5T_NATIVE_UINT16;
    }
}

/* A fixed-length string attribute on obj. */
static int write_str_attr(hid_t obj, const char *name, const char *value) {
    hid_t type = H5Tcopy(H5T_C_S1);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = -1;
    herr_t st = -1;
    if (type >= 0 && space >= 0 && H5Tset_size(type, strlen(value) + 1) >= 0 && H5Tset_strpad(type, H5T_STR_NULLTERM) >= 0) {
        attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        if (attr >= 0) st = H5Awrite(attr, type, value);
    }
    int ok = st >= 0;
    if (attr >= 0 && H5Aclose(attr) < 0) ok = 0;
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return ok ? 0 : -1;
}

static int write_int_attr(hid_t obj, const char *name, int value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space >= 0 ? H5Acreate2(obj, name, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
    int ok = attr >= 0 && H5Awrite(attr, H5T_NATIVE_INT, &value) >= 0;
    if (attr >= 0 && H5Aclose(attr) < 0) ok = 0;
    if (space >= 0) H5Sclose(space);
    return ok ? 0 : -1;
}

static int write_dataset(hid_t group, const char *tmp, const sd_named_tensor *nt) {
    const sd_tensor *t = &nt->t;
    if (t->device != SD_DEV_CPU || (unsigned)t->dtype >= SD_DTYPE_COUNT || t->ndim < 1 || t->ndim > SD_MAX_DIMS ||
        strchr(nt->name, '/') || !nt->name[0])
        return sd_fail(SD_ERR_INTERNAL, "%s: tensor '%s': not a CPU tensor with a valid name, dtype and rank", tmp, nt->name);
    hsize_t dims[SD_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) dims[i] = (hsize_t)t->shape[i];
    hid_t space = H5Screate_simple(t->ndim, dims, NULL);
    hid_t ds = space >= 0 ? H5Dcreate2(group, nt->name, file_type(t->dtype), space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
    int ok = ds >= 0 && (sd_numel(t) == 0 || H5Dwrite(ds, mem_type(t->dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data) >= 0);
    if (ok && (t->dtype == SD_BF16 || t->dtype == SD_F16)) ok = write_str_attr(ds, "dtype", sd_dtype_name(t->dtype)) == 0;
    if (ds >= 0 && H5Dclose(ds) < 0) ok = 0;
    if (space >= 0) H5Sclose(space);
    return ok ? SD_OK : sd_fail(SD_ERR_SYS, "%s: cannot write dataset /params/%s (disk full?)", tmp, nt->name);
}

/* A group of tensors (/params, /optim/m, /optim/v) keeps link creation order so a checkpoint
 * reads back in the order it was written. */
static int write_group(hid_t file, const char *tmp, const char *group, const sd_weights *w) {
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl < 0 || H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED) < 0) {
        if (gcpl >= 0) H5Pclose(gcpl);
        return sd_fail(SD_ERR_SYS, "%s: cannot set up group /%s", tmp, group);
    }
    hid_t g = H5Gcreate2(file, group, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    if (g < 0) return sd_fail(SD_ERR_SYS, "%s: cannot create group /%s", tmp, group);
    int rc = SD_OK;
    for (int i = 0; i < w->n && rc == SD_OK; i++) rc = write_dataset(g, tmp, &w->items[i]);
    if (H5Gclose(g) < 0 && rc == SD_OK) rc = sd_fail(SD_ERR_SYS, "%s: cannot close group /%s", tmp, group);
    return rc;
}

static int write_params(hid_t file, const char *tmp, const sd_weights *w) { return write_group(file, tmp, "params", w); }

/* A group holding one string attribute "json" (/config, /state, /recipe). */
static int write_json_group(hid_t file, const char *tmp, const char *group, const char *json) {
    hid_t g = H5Gcreate2(file, group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int ok = g >= 0 && write_str_attr(g, "json", json) == 0;
    if (g >= 0 && H5Gclose(g) < 0) ok = 0;
    return ok ? SD_OK : sd_fail(SD_ERR_SYS, "%s: cannot write /%s", tmp, group);
}

static int write_contents(hid_t file, const char *tmp, const sd_model_config *cfg, const sd_weights *w) {
    if (write_int_attr(file, SD_FORMAT_ATTR, SD_FORMAT_VERSION) < 0)
        return sd_fail(SD_ERR_SYS, "%s: cannot write attribute %s", tmp, SD_FORMAT_ATTR);
    char *json;
    SD_TRY(sd_hf_config_to_json(cfg, &json));
    int rc = write_json_group(file, tmp, "config", json);
    free(json);
    return rc == SD_OK ? write_params(file, tmp, w) : rc;
}

static int write_train(hid_t file, const char *tmp, const sd_train_state *ts) {
    if (ts->m || ts->v) {
        hid_t g = H5Gcreate2(file, "optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0 || H5Gclose(g) < 0) return sd_fail(SD_ERR_SYS, "%s: cannot create group /optim", tmp);
    }
    if (ts->m) SD_TRY(write_group(file, tmp, "optim/m", ts->m));
    if (ts->v) SD_TRY(write_group(file, tmp, "optim/v", ts->v));
    if (ts->state_json) SD_TRY(write_json_group(file, tmp, "state", ts->state_json));
    if (ts->recipe_json) SD_TRY(write_json_group(file, tmp, "recipe", ts->recipe_json));
    return SD_OK;
}

int sd_checkpoint_write(const char *path, const sd_model_config *cfg, const sd_weights *w) {
    return sd_checkpoint_write_train(path, cfg, w, NULL);
}

int sd_checkpoint_write_train(const char *path, const sd_model_config *cfg, const sd_weights *w,
                              const sd_train_state *ts) {
    quiet_hdf5();
    char *tmp = sd_tmp_name(path);
    if (!tmp) return SD_ERR_SYS;
    int rc;
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) {
        rc = sd_fail(SD_ERR_SYS, "%s: cannot create HDF5 file", tmp);
    } else {
        rc = write_contents(file, tmp, cfg, w);
        if (rc == SD_OK && ts) rc = write_train(file, tmp, ts);
        if (H5Fclose(file) < 0 && rc == SD_OK) rc = sd_fail(SD_ERR_SYS, "%s: cannot close HDF5 file (disk full?)", tmp);
        if (rc == SD_OK) rc = sd_commit_rename(tmp, path);
    }
    if (rc != SD_OK) remove(tmp);
    free(tmp);
    return rc;
}

/* ---- reader ---------------------------------------------------------------------------- */

/* Reads a string attribute (fixed or variable length); caller frees *out. */
static int read_str_attr(hid_t obj, const char *name, char **out) {
    *out = NULL;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0) return -1;
    hid_t type = H5Aget_type(attr);
    int ok = 0;
    if (type >= 0 && H5Tget_class(type) == H5T_STRING) {
        if (H5Tis_variable_str(type) > 0) {
            hid_t mt = H5Tcopy(H5T_C_S1);
            char *s = NULL;
            if (mt >= 0 && H5Tset_size(mt, H5T_VARIABLE) >= 0 && H5Aread(attr, mt, &s) >= 0 && s) {
                *out = strdup(s);
                H5free_memory(s);
                ok = *out != NULL;
            }
            if (mt >= 0) H5Tclose(mt);
        } else {
            size_t n = H5Tget_size(type);
            char *s = n ? calloc(n + 1, 1) : NULL;
            if (s && H5Aread(attr, type, s) >= 0) {
                *out = s;
                ok = 1;
            } else {
                free(s);
            }
        }
    }
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    return ok ? 0 : -1;
}

static int check_format(hid_t file, const char *path) {
    if (H5Aexists(file, SD_FORMAT_ATTR) <= 0)
        return sd_fail(SD_ERR_INPUT, "%s: not an ssdistill checkpoint (no '%s' attribute on the root group)", path,
                       SD_FORMAT_ATTR);
    int version = 0;
    hid_t attr = H5Aopen(file, SD_FORMAT_ATTR, H5P_DEFAULT);
    hid_t space = attr >= 0 ? H5Aget_space(attr) : -1;
    int ok = space >= 0 && H5Sget_simple_extent_npoints(space) == 1 && H5Aread(attr, H5T_NATIVE_INT, &version) >= 0;
    if (space >= 0) H5Sclose(space);
    if (attr >= 0) H5Aclose(attr);
    if (!ok) return sd_fail(SD_ERR_INPUT, "%s: attribute '%s' is not an integer", path, SD_FORMAT_ATTR);
    if (version != SD_FORMAT_VERSION)
        return sd_fail(SD_ERR_INPUT, "%s: ssdistill_format %d is not supported (expected %d)", path, version,
                       SD_FORMAT_VERSION);
    return SD_OK;
}

static int read_config(hid_t file, const char *path, sd_model_config *cfg) {
    hid_t g = H5Lexists(file, "config", H5P_DEFAULT) > 0 ? H5Gopen2(file, "config", H5P_DEFAULT) : -1;
    char *json = NULL;
    int ok = g >= 0 && read_str_attr(g, "json", &json) == 0;
    if (g >= 0) H5Gclose(g);
    if (!ok) return sd_fail(SD_ERR_INPUT, "%s: missing or unreadable string attribute /config json", path);
    char src[1024];
    snprintf(src, sizeof src, "%s: /config", path);
    int rc = sd_hf_config_parse(json, src, cfg);
    free(json);
    return rc;
}

/* The stored dtype: the "dtype" attribute when present (BF16/F16), else the HDF5 type. */
static int dataset_dtype(hid_t ds, const char *path, const char *name, sd_dtype *dt) {
    if (H5Aexists(ds, "dtype") > 0) {
        char *s = NULL;
        int ok = read_str_attr(ds, "dtype", &s) == 0 && sd_dtype_from_name(s, dt) == SD_OK;
        free(s);
        return ok ? SD_OK : sd_fail(SD_ERR_INPUT, "%s: dataset /params/%s: bad 'dtype' attribute", path, name);
    }
    hid_t type = H5Dget_type(ds);
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    size_t size = type >= 0 ? H5Tget_size(type) : 0;
    H5T_sign_t sign = type >= 0 ? H5Tget_sign(type) : H5T_SGN_ERROR;
    if (type >= 0) H5Tclose(type);
    if (cls == H5T_FLOAT && size == 4) *dt = SD_F32;
    else if (cls == H5T_INTEGER && size == 4) *dt = sign == H5T_SGN_NONE ? SD_U32 : SD_I32;
    else if (cls == H5T_INTEGER && size == 8 && sign != H5T_SGN_NONE) *dt = SD_I64;
    else if (cls == H5T_INTEGER && size == 2 && sign == H5T_SGN_NONE) *dt = SD_U16;
    else return sd_fail(SD_ERR_INPUT, "%s: dataset /params/%s: unsupported datatype (class %d, %zu bytes)", path, name, (int)cls, size);
    return SD_OK;
}

static int read_dataset(hid_t g, const char *path, const char *name, sd_weights *w) {
    hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
    if (ds < 0) return sd_fail(SD_ERR_INPUT, "%s: cannot open dataset /params/%s", path, name);
    sd_dtype dt = SD_F32;
    int rc = dataset_dtype(ds, path, name, &dt);
    hid_t space = rc == SD_OK ? H5Dget_space(ds) : -1;
    int ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    hsize_t dims[SD_MAX_DIMS] = {1};
    if (rc == SD_OK && (ndim < 0 || ndim > SD_MAX_DIMS))
        rc = sd_fail(SD_ERR_INPUT, "%s: dataset /params/%s: rank %d not supported (1 to %d)", path, name, ndim, SD_MAX_DIMS);
    if (rc == SD_OK && ndim > 0 && H5Sget_simple_extent_dims(space, dims, NULL) < 0)
        rc = sd_fail(SD_ERR_INPUT, "%s: dataset /params/%s: cannot read its shape", path, name);
    sd_tensor t;
    memset(&t, 0, sizeof t);
    if (rc == SD_OK) {
        int64_t shape[SD_MAX_DIMS];
        for (int i = 0; i < SD_MAX_DIMS; i++) shape[i] = (int64_t)dims[i];
        rc = sd_tensor_alloc(&t, dt, ndim ? ndim : 1, shape); /* a scalar becomes [1] */
    }
    if (rc == SD_OK && sd_numel(&t) && H5Dread(ds, mem_type(dt), H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data) < 0)
        rc = sd_fail(SD_ERR_INPUT, "%s: cannot read dataset /params/%s", path, name);
    if (space >= 0) H5Sclose(space);
    H5Dclose(ds);
    if (rc == SD_OK) return sd_weights_add(w, name, t);
    sd_tensor_free(&t);
    return rc;
}

static int read_group(hid_t file, const char *path, const char *group, sd_weights *w) {
    if (H5Lexists(file, group, H5P_DEFAULT) <= 0) return sd_fail(SD_ERR_INPUT, "%s: missing group /%s", path, group);
    hid_t g = H5Gopen2(file, group, H5P_DEFAULT);
    H5G_info_t info;
    if (g < 0 || H5Gget_info(g, &info) < 0) {
        if (g >= 0) H5Gclose(g);
        return sd_fail(SD_ERR_INPUT, "%s: cannot open group /%s", path, group);
    }
    /* Creation order when the file tracked it (ours do), else name order. */
    hid_t gcpl = H5Gget_create_plist(g);
    unsigned flags = 0;
    if (gcpl >= 0) {
        H5Pget_link_creation_order(gcpl, &flags);
        H5Pclose(gcpl);
    }
    H5_index_t idx = (flags & H5P_CRT_ORDER_INDEXED) ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME;
    int rc = SD_OK;
    for (hsize_t i = 0; i < info.nlinks && rc == SD_OK; i++) {
        char name[512];
        ssize_t n = H5Lget_name_by_idx(g, ".", idx, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT);
        if (n < 0 || (size_t)n >= sizeof name)
            rc = sd_fail(SD_ERR_INPUT, "%s: /%s: link %llu has no readable name", path, group, (unsigned long long)i);
        else rc = read_dataset(g, path, name, w);
    }
    H5Gclose(g);
    return rc;
}

static int read_params(hid_t file, const char *path, sd_weights *w) { return read_group(file, path, "params", w); }

/* The "json" attribute of an optional group (NULL when the group is absent). */
static int read_json_group(hid_t file, const char *path, const char *group, char **out) {
    *out = NULL;
    if (H5Lexists(file, group, H5P_DEFAULT) <= 0) return SD_OK;
    hid_t g = H5Gopen2(file, group, H5P_DEFAULT);
    if (g < 0) return sd_fail(SD_ERR_INPUT, "%s: cannot open group /%s", path, group);
    int bad = read_str_attr(g, "json", out) != 0;
    H5Gclose(g);
    return bad ? sd_fail(SD_ERR_INPUT, "%s: /%s: missing or unreadable string attribute 'json'", path, group) : SD_OK;
}

static int read_train(hid_t file, const char *path, sd_train_state_in *ts) {
    if (H5Lexists(file, "optim", H5P_DEFAULT) > 0) {
        SD_TRY(read_group(file, path, "optim/m", &ts->m));
        SD_TRY(read_group(file, path, "optim/v", &ts->v));
    }
    SD_TRY(read_json_group(file, path, "state", &ts->state_json));
    return read_json_group(file, path, "recipe", &ts->recipe_json);
}

void sd_train_state_in_free(sd_train_state_in *ts) {
    sd_weights_free(&ts->m);
    sd_weights_free(&ts->v);
    free(ts->state_json);
    free(ts->recipe_json);
    ts->state_json = ts->recipe_json = NULL;
}

int sd_checkpoint_read_train(const char *path, sd_model_config *cfg, sd_weights *w, sd_train_state_in *ts) {
    quiet_hdf5();
    sd_weights_init(w);
    if (ts) {
        memset(ts, 0, sizeof *ts);
        sd_weights_init(&ts->m);
        sd_weights_init(&ts->v);
    }
    if (!sd_file_exists(path)) return sd_fail(SD_ERR_INPUT, "%s: no such file", path);
    if (!sd_is_hdf5(path)) return sd_fail(SD_ERR_INPUT, "%s: not an HDF5 file (no HDF5 signature)", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) return sd_fail(SD_ERR_INPUT, "%s: cannot open as HDF5 (damaged or truncated?)", path);
    int rc = check_format(file, path);
    if (rc == SD_OK) rc = read_config(file, path, cfg);
    if (rc == SD_OK) rc = read_params(file, path, w);
    if (rc == SD_OK && ts) rc = read_train(file, path, ts);
    H5Fclose(file);
    if (rc != SD_OK) {
        sd_weights_free(w);
        if (ts) sd_train_state_in_free(ts);
    }
    return rc;
}

int sd_checkpoint_read(const char *path, sd_model_config *cfg, sd_weights *w) {
    return sd_checkpoint_read_train(path, cfg, w, NULL);
}
