/* safetensors: 8-byte little-endian header length, JSON header {name: {dtype, shape,
 * data_offsets: [begin, end]}, "__metadata__": {...}}, then the raw little-endian data.
 * Files are memory-mapped; every offset, shape and dtype is checked against the file size. */
#ifndef SD_SAFETENSORS_H
#define SD_SAFETENSORS_H

#include "common/fileio.h"
#include "convert/weights.h"

typedef struct {
    char *name;
    sd_dtype dtype;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    size_t offset; /* from the start of the file */
    size_t nbytes;
} sd_st_entry;

typedef struct {
    char *path;
    sd_mmap map;
    int n;
    sd_st_entry *entries;
    char *metadata_json; /* the "__metadata__" object as JSON text, or NULL */
} sd_safetensors;

/* Opens and validates: header length within the file, JSON well-formed, every dtype known,
 * every shape consistent with its byte range, every range inside the data section.
 * Errors are SD_ERR_INPUT and name the path (and tensor and field). */
int sd_st_open(const char *path, sd_safetensors *st);
void sd_st_close(sd_safetensors *st);
const sd_st_entry *sd_st_find(const sd_safetensors *st, const char *name);
/* A copy of the tensor in its stored dtype (e.g. I32 input_ids). */
int sd_st_read(const sd_safetensors *st, const sd_st_entry *e, sd_tensor *out);
/* A copy converted to F32 (from F32, BF16 or F16); SD_ERR_INPUT for other dtypes. */
int sd_st_read_f32(const sd_safetensors *st, const char *name, sd_tensor *out);

/* Loads every tensor of PATH into w as F32: PATH is a .safetensors file, a
 * model.safetensors.index.json (sharded: each shard relative to the index's folder), or a
 * directory holding one of the two. */
int sd_st_load_all(const char *path, sd_weights *w);

/* Writes w (tensors in their own dtypes) atomically (PATH.tmp then rename). metadata_json is
 * a JSON object of string values or NULL. */
int sd_st_write(const char *path, const sd_weights *w, const char *metadata_json);

#endif
