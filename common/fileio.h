/* Files: whole-file reads, read-only memory maps, and writes that never leave a half file
 * under the real name (write NAME.tmp, flush, fsync, rename). */
#ifndef SD_FILEIO_H
#define SD_FILEIO_H

#include <stddef.h>
#include <stdio.h>

/* Reads the whole file; *data is NUL-terminated (not counted in *len). Caller frees. */
int sd_read_file(const char *path, char **data, size_t *len);

typedef struct {
    const unsigned char *data;
    size_t len;
} sd_mmap;

int sd_mmap_open(const char *path, sd_mmap *m);
void sd_mmap_close(sd_mmap *m);

/* Atomic write: sd_atomic_open gives a FILE* on PATH.tmp; sd_atomic_commit checks every
 * write, fsyncs and renames to PATH; sd_atomic_abort removes PATH.tmp. */
typedef struct {
    FILE *f;
    char *path;
    char *tmp;
} sd_atomic_file;

int sd_atomic_open(sd_atomic_file *af, const char *path);
int sd_atomic_write(sd_atomic_file *af, const void *buf, size_t n);
int sd_atomic_commit(sd_atomic_file *af);
void sd_atomic_abort(sd_atomic_file *af);

/* Temporary name used for PATH ("PATH.tmp"); caller frees. NULL (error set) on OOM. */
char *sd_tmp_name(const char *path);
/* fsync + rename of an already closed temporary file onto its final name. */
int sd_commit_rename(const char *tmp, const char *path);

int sd_is_dir(const char *path);
int sd_file_exists(const char *path);
/* dir + "/" + name; caller frees. */
char *sd_path_join(const char *dir, const char *name);

#endif
