/* safetensors reader and writer. The reader trusts nothing in the file: every header field is
 * checked against the mapped size before any tensor byte is touched. */
#include "convert/safetensors.h"
#include "common/error.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *g_supported = "F32, BF16, F16, I32, I64, U16, U32";

static uint64_t read_u64_le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* A JSON number that is a non-negative integer exactly representable in a double. */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int parse_dtype(const char *path, const char *name, const cJSON *j, sd_dtype *dt) {
    if (!cJSON_IsString(j))
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': field 'dtype' missing or not a string", path, name);
    for (int i = 0; i < SD_DTYPE_COUNT; i++)
        if (strcmp(j->valuestring, sd_dtype_name((sd_dtype)i)) == 0) {
            *dt = (sd_dtype)i;
            return SD_OK;
        }
    return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': field 'dtype': unsupported dtype '%s' (supported: %s)", path,
                   name, j->valuestring, g_supported);
}

static int parse_shape(const char *path, const char *name, const cJSON *j, sd_st_entry *e, uint64_t *numel) {
    if (!cJSON_IsArray(j))
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': field 'shape' missing or not an array", path, name);
    int n = cJSON_GetArraySize(j);
    if (n > SD_MAX_DIMS)
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': field 'shape' has %d dims (at most %d supported)", path, name,
                       n, SD_MAX_DIMS);
    *numel = 1;
    e->ndim = n;
    for (int i = 0; i < n; i++) {
        uint64_t d;
        if (!json_uint(cJSON_GetArrayItem(j, i), &d) || d > ((uint64_t)1 << 40))
            return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': field 'shape': dim %d is not a non-negative integer",
                           path, name, i);
        e->shape[i] = (int64_t)d;
        if (d && *numel > UINT64_MAX / d)
            return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': field 'shape' overflows", path, name);
        *numel *= d;
    }
    if (n == 0) { /* a scalar: keep it as one element of rank 1 (sd_tensor has ndim >= 1) */
        e->ndim = 1;
        e->shape[0] = 1;
    }
    return SD_OK;
}

/* One header entry: dtype, shape and a byte range inside the data section of data_len bytes. */
static int parse_entry(const char *path, const cJSON *j, size_t data_start, uint64_t data_len, sd_st_entry *e) {
    const char *name = j->string;
    if (!cJSON_IsObject(j)) return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': header entry is not an object", path, name);
    uint64_t numel = 0, begin = 0, end = 0;
    SD_TRY(parse_dtype(path, name, cJSON_GetObjectItemCaseSensitive(j, "dtype"), &e->dtype));
    SD_TRY(parse_shape(path, name, cJSON_GetObjectItemCaseSensitive(j, "shape"), e, &numel));
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(cJSON_GetArrayItem(off, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(off, 1), &end))
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': field 'data_offsets' must be [begin, end] of integers", path,
                       name);
    if (begin > end)
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': data_offsets [%llu, %llu]: begin after end", path, name,
                       (unsigned long long)begin, (unsigned long long)end);
    if (end > data_len)
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': data_offsets [%llu, %llu] past the end of the data section (%llu bytes)",
                       path, name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_len);
    uint64_t want = numel * sd_dtype_size(e->dtype);
    if (numel && want / numel != sd_dtype_size(e->dtype))
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': shape too large", path, name);
    if (want != end - begin)
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': shape and dtype %s need %llu bytes but data_offsets [%llu, %llu] hold %llu",
                       path, name, sd_dtype_name(e->dtype), (unsigned long long)want, (unsigned long long)begin,
                       (unsigned long long)end, (unsigned long long)(end - begin));
    e->offset = data_start + (size_t)begin;
    e->nbytes = (size_t)want;
    e->name = sd_strdup(name, "tensor name");
    return e->name ? SD_OK : SD_ERR_SYS;
}

static int cmp_offset(const void *a, const void *b) {
    const sd_st_entry *x = *(const sd_st_entry *const *)a, *y = *(const sd_st_entry *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Two tensors sharing bytes would mean a corrupt header; safetensors forbids it. */
static int check_overlap(sd_safetensors *st) {
    if (st->n < 2) return SD_OK;
    const sd_st_entry **by = sd_malloc((size_t)st->n * sizeof *by, "offset table");
    if (!by) return SD_ERR_SYS;
    for (int i = 0; i < st->n; i++) by[i] = &st->entries[i];
    qsort(by, (size_t)st->n, sizeof *by, cmp_offset);
    int rc = SD_OK;
    for (int i = 1; i < st->n && rc == SD_OK; i++)
        if (by[i]->offset < by[i - 1]->offset + by[i - 1]->nbytes)
            rc = sd_fail(SD_ERR_INPUT, "%s: tensor '%s': data overlaps tensor '%s'", st->path, by[i]->name,
                         by[i - 1]->name);
    free(by);
    return rc;
}

static int parse_header(sd_safetensors *st) {
    const unsigned char *p = st->map.data;
    size_t len = st->map.len;
    if (len < 8)
        return sd_fail(SD_ERR_INPUT, "%s: file is %zu bytes, too short for the 8-byte header length", st->path, len);
    uint64_t hlen = read_u64_le(p);
    if (hlen > len - 8)
        return sd_fail(SD_ERR_INPUT, "%s: header length %llu past the end of the file (%zu bytes)", st->path,
                       (unsigned long long)hlen, len);
    cJSON *root = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
    if (!root) return sd_fail(SD_ERR_INPUT, "%s: header is not valid JSON", st->path);
    int rc = SD_OK;
    if (!cJSON_IsObject(root)) rc = sd_fail(SD_ERR_INPUT, "%s: header is not a JSON object", st->path);
    int count = rc == SD_OK ? cJSON_GetArraySize(root) : 0;
    if (rc == SD_OK && !(st->entries = sd_calloc((size_t)count, sizeof *st->entries, "safetensors entries")))
        rc = SD_ERR_SYS;
    size_t data_start = 8 + (size_t)hlen;
    for (const cJSON *j = root->child; j && rc == SD_OK; j = j->next) {
        if (strcmp(j->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(j)) {
                rc = sd_fail(SD_ERR_INPUT, "%s: field '__metadata__' is not an object", st->path);
            } else if (!st->metadata_json && !(st->metadata_json = cJSON_PrintUnformatted(j))) {
                rc = sd_fail(SD_ERR_SYS, "%s: out of memory printing metadata", st->path);
            }
            continue;
        }
        rc = parse_entry(st->path, j, data_start, len - data_start, &st->entries[st->n]);
        if (rc == SD_OK) st->n++;
    }
    cJSON_Delete(root);
    return rc == SD_OK ? check_overlap(st) : rc;
}

int sd_st_open(const char *path, sd_safetensors *st) {
    memset(st, 0, sizeof *st);
    st->path = sd_strdup(path, "path");
    if (!st->path) return SD_ERR_SYS;
    int rc = sd_mmap_open(path, &st->map);
    if (rc == SD_OK) rc = parse_header(st);
    if (rc != SD_OK) sd_st_close(st);
    return rc;
}

void sd_st_close(sd_safetensors *st) {
    for (int i = 0; i < st->n; i++) free(st->entries[i].name);
    free(st->entries);
    /* cJSON allocates with malloc by default, so free() matches cJSON_free. */
    free(st->metadata_json);
    sd_mmap_close(&st->map);
    free(st->path);
    memset(st, 0, sizeof *st);
}

const sd_st_entry *sd_st_find(const sd_safetensors *st, const char *name) {
    for (int i = 0; i < st->n; i++)
        if (strcmp(st->entries[i].name, name) == 0) return &st->entries[i];
    return NULL;
}

int sd_st_read(const sd_safetensors *st, const sd_st_entry *e, sd_tensor *out) {
    SD_TRY(sd_tensor_alloc(out, e->dtype, e->ndim, e->shape));
    if (e->nbytes) memcpy(out->data, st->map.data + e->offset, e->nbytes);
    return SD_OK;
}

/* Converts entry e to a fresh F32 tensor; other dtypes are refused naming the tensor. */
static int entry_to_f32(const sd_safetensors *st, const sd_st_entry *e, sd_tensor *out) {
    if (e->dtype != SD_F32 && e->dtype != SD_BF16 && e->dtype != SD_F16)
        return sd_fail(SD_ERR_INPUT, "%s: tensor '%s': dtype %s cannot be read as F32 (expected F32, BF16 or F16)",
                       st->path, e->name, sd_dtype_name(e->dtype));
    sd_tensor view = sd_tensor_view(e->dtype, (void *)(st->map.data + e->offset), e->ndim, e->shape);
    return sd_tensor_to_f32(out, &view);
}

int sd_st_read_f32(const sd_safetensors *st, const char *name, sd_tensor *out) {
    const sd_st_entry *e = sd_st_find(st, name);
    if (!e) return sd_fail(SD_ERR_INPUT, "%s: missing tensor '%s'", st->path, name);
    return entry_to_f32(st, e, out);
}

/* Adds every tensor of one file to w as F32. */
static int load_file(const char *path, sd_weights *w) {
    sd_safetensors st;
    SD_TRY(sd_st_open(path, &st));
    int rc = SD_OK;
    for (int i = 0; i < st.n && rc == SD_OK; i++) {
        sd_tensor t;
        rc = entry_to_f32(&st, &st.entries[i], &t);
        if (rc == SD_OK) rc = sd_weights_add(w, st.entries[i].name, t);
        if (rc == SD_ERR_INPUT && !strstr(sd_errmsg(), path)) sd_error_prefix(rc, "%s", path);
    }
    sd_st_close(&st);
    return rc;
}

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* The folder part of path ("." when none); caller frees. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return sd_strdup(".", "folder name");
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *d = sd_malloc(n + 1, "folder name");
    if (d) {
        memcpy(d, path, n);
        d[n] = 0;
    }
    return d;
}

/* Loads each shard named in weight_map once, then checks every listed tensor arrived. */
static int load_shards(const char *index_path, const cJSON *map, sd_weights *w) {
    char *dir = dir_of(index_path);
    if (!dir) return SD_ERR_SYS;
    int rc = SD_OK;
    for (const cJSON *j = map->child; j && rc == SD_OK; j = j->next) {
        if (!cJSON_IsString(j)) {
            rc = sd_fail(SD_ERR_INPUT, "%s: field 'weight_map': entry '%s' is not a file name", index_path, j->string);
            break;
        }
        int seen = 0; /* shard already loaded by an earlier entry? */
        for (const cJSON *k = map->child; k != j; k = k->next)
            if (strcmp(k->valuestring, j->valuestring) == 0) seen = 1;
        if (seen) continue;
        if (strchr(j->valuestring, '/')) {
            rc = sd_fail(SD_ERR_INPUT, "%s: tensor '%s': shard '%s' must be a file name in the index's folder",
                         index_path, j->string, j->valuestring);
            break;
        }
        char *shard = sd_path_join(dir, j->valuestring);
        rc = shard ? load_file(shard, w) : SD_ERR_SYS;
        free(shard);
    }
    for (const cJSON *j = map->child; j && rc == SD_OK; j = j->next)
        if (!sd_weights_find(w, j->string))
            rc = sd_fail(SD_ERR_INPUT, "%s: tensor '%s' is listed in weight_map but missing from shard '%s'",
                         index_path, j->string, j->valuestring);
    free(dir);
    return rc;
}

static int load_index(const char *path, sd_weights *w) {
    char *text;
    size_t len;
    SD_TRY(sd_read_file(path, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return sd_fail(SD_ERR_INPUT, "%s: not valid JSON", path);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    int rc = cJSON_IsObject(map) ? load_shards(path, map, w)
                                 : sd_fail(SD_ERR_INPUT, "%s: field 'weight_map' missing or not an object", path);
    cJSON_Delete(root);
    return rc;
}

int sd_st_load_all(const char *path, sd_weights *w) {
    if (sd_is_dir(path)) {
        char *index = sd_path_join(path, "model.safetensors.index.json");
        char *single = sd_path_join(path, "model.safetensors");
        int rc;
        if (!index || !single) rc = SD_ERR_SYS;
        else if (sd_file_exists(index)) rc = load_index(index, w);
        else if (sd_file_exists(single)) rc = load_file(single, w);
        else rc = sd_fail(SD_ERR_INPUT, "%s: no model.safetensors or model.safetensors.index.json", path);
        free(index);
        free(single);
        return rc;
    }
    if (has_suffix(path, ".json")) return load_index(path, w);
    return load_file(path, w);
}

/* ---- writer ---------------------------------------------------------------------------- */

static int add_entry(cJSON *root, const sd_named_tensor *nt, uint64_t begin) {
    cJSON *e = cJSON_AddObjectToObject(root, nt->name);
    cJSON *shape = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
    cJSON *off = e ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
    if (!e || !shape || !off || !cJSON_AddStringToObject(e, "dtype", sd_dtype_name(nt->t.dtype)))
        return sd_fail(SD_ERR_SYS, "out of memory building a safetensors header");
    for (int d = 0; d < nt->t.ndim; d++)
        if (!cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)nt->t.shape[d])))
            return sd_fail(SD_ERR_SYS, "out of memory building a safetensors header");
    if (!cJSON_AddItemToArray(off, cJSON_CreateNumber((double)begin)) ||
        !cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(begin + sd_nbytes(&nt->t)))))
        return sd_fail(SD_ERR_SYS, "out of memory building a safetensors header");
    return SD_OK;
}

/* The header JSON text, padded with spaces to a multiple of 8 bytes as the reference writer
 * does (so the data section starts aligned). */
static int build_header(const char *path, const sd_weights *w, const char *metadata_json, char **out, size_t *len) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return sd_fail(SD_ERR_SYS, "out of memory building a safetensors header");
    int rc = SD_OK;
    if (metadata_json) {
        cJSON *meta = cJSON_Parse(metadata_json);
        if (!cJSON_IsObject(meta)) {
            cJSON_Delete(meta);
            rc = sd_fail(SD_ERR_INTERNAL, "%s: metadata is not a JSON object", path);
        } else {
            cJSON_AddItemToObject(root, "__metadata__", meta);
        }
    }
    uint64_t pos = 0;
    for (int i = 0; i < w->n && rc == SD_OK; i++) {
        if (w->items[i].t.device != SD_DEV_CPU || (unsigned)w->items[i].t.dtype >= SD_DTYPE_COUNT)
            rc = sd_fail(SD_ERR_INTERNAL, "%s: tensor '%s' is not a CPU tensor of a known dtype", path, w->items[i].name);
        else rc = add_entry(root, &w->items[i], pos);
        pos += sd_nbytes(&w->items[i].t);
    }
    char *text = rc == SD_OK ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (rc != SD_OK) return rc;
    if (!text) return sd_fail(SD_ERR_SYS, "out of memory printing a safetensors header");
    size_t n = strlen(text), padded = (n + 7) / 8 * 8;
    char *buf = sd_malloc(padded, "safetensors header");
    if (buf) {
        memcpy(buf, text, n);
        memset(buf + n, ' ', padded - n);
    }
    free(text);
    if (!buf) return SD_ERR_SYS;
    *out = buf;
    *len = padded;
    return SD_OK;
}

int sd_st_write(const char *path, const sd_weights *w, const char *metadata_json) {
    char *header = NULL;
    size_t hlen = 0;
    SD_TRY(build_header(path, w, metadata_json, &header, &hlen));
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    sd_atomic_file af;
    int rc = sd_atomic_open(&af, path);
    if (rc != SD_OK) {
        free(header);
        return rc;
    }
    rc = sd_atomic_write(&af, lenbuf, 8);
    if (rc == SD_OK) rc = sd_atomic_write(&af, header, hlen);
    for (int i = 0; i < w->n && rc == SD_OK; i++) rc = sd_atomic_write(&af, w->items[i].t.data, sd_nbytes(&w->items[i].t));
    free(header);
    if (rc != SD_OK) {
        sd_atomic_abort(&af);
        return rc;
    }
    return sd_atomic_commit(&af);
}
