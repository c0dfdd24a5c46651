#define _POSIX_C_SOURCE 200809L
#include "common/fileio.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int sd_read_file(const char *path, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return sd_fail(SD_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return sd_fail(SD_ERR_INPUT, "%s: cannot seek: %s", path, strerror(errno));
    }
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return sd_fail(SD_ERR_INPUT, "%s: cannot determine size", path);
    }
    char *buf = sd_malloc((size_t)n + 1, path);
    if (!buf) {
        fclose(f);
        return SD_ERR_SYS;
    }
    size_t got = fread(buf, 1, (size_t)n, f);
    int err = ferror(f);
    fclose(f);
    if (got != (size_t)n || err) {
        free(buf);
        return sd_fail(SD_ERR_INPUT, "%s: read %zu of %ld bytes", path, got, n);
    }
    buf[n] = 0;
    *data = buf;
    *len = (size_t)n;
    return SD_OK;
}

int sd_mmap_open(const char *path, sd_mmap *m) {
    m->data = NULL;
    m->len = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return sd_fail(SD_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return sd_fail(SD_ERR_INPUT, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return sd_fail(SD_ERR_INPUT, "%s: not a regular file", path);
    }
    if (st.st_size == 0) { /* mmap of length 0 fails; an empty map is valid */
        close(fd);
        return SD_OK;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return sd_fail(SD_ERR_SYS, "%s: mmap failed: %s", path, strerror(errno));
    m->data = p;
    m->len = (size_t)st.st_size;
    return SD_OK;
}

void sd_mmap_close(sd_mmap *m) {
    if (m->data) munmap((void *)m->data, m->len);
    m->data = NULL;
    m->len = 0;
}

char *sd_tmp_name(const char *path) {
    size_t n = strlen(path);
    char *tmp = sd_malloc(n + 5, "temporary file name");
    if (tmp) {
        memcpy(tmp, path, n);
        memcpy(tmp + n, ".tmp", 5);
    }
    return tmp;
}

int sd_commit_rename(const char *tmp, const char *path) {
    int fd = open(tmp, O_RDONLY);
    if (fd < 0) return sd_fail(SD_ERR_SYS, "%s: cannot reopen for fsync: %s", tmp, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0) return sd_fail(SD_ERR_SYS, "%s: fsync failed: %s", tmp, strerror(e));
    if (rename(tmp, path) != 0)
        return sd_fail(SD_ERR_SYS, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    return SD_OK;
}

int sd_atomic_open(sd_atomic_file *af, const char *path) {
    af->f = NULL;
    af->path = sd_strdup(path, "output path");
    af->tmp = sd_tmp_name(path);
    if (!af->path || !af->tmp) {
        free(af->path);
        free(af->tmp);
        return SD_ERR_SYS;
    }
    af->f = fopen(af->tmp, "wb");
    if (!af->f) {
        int rc = sd_fail(SD_ERR_SYS, "%s: cannot create: %s", af->tmp, strerror(errno));
        free(af->path);
        free(af->tmp);
        af->path = af->tmp = NULL;
        return rc;
    }
    return SD_OK;
}

int sd_atomic_write(sd_atomic_file *af, const void *buf, size_t n) {
    if (n && fwrite(buf, 1, n, af->f) != n)
        return sd_fail(SD_ERR_SYS, "%s: write failed: %s", af->tmp, strerror(errno));
    return SD_OK;
}

int sd_atomic_commit(sd_atomic_file *af) {
    int rc = SD_OK;
    if (fflush(af->f) != 0 || ferror(af->f))
        rc = sd_fail(SD_ERR_SYS, "%s: write failed: %s", af->tmp, strerror(errno));
    if (fclose(af->f) != 0 && rc == SD_OK)
        rc = sd_fail(SD_ERR_SYS, "%s: close failed: %s", af->tmp, strerror(errno));
    af->f = NULL;
    if (rc == SD_OK) rc = sd_commit_rename(af->tmp, af->path);
    if (rc != SD_OK) remove(af->tmp);
    free(af->path);
    free(af->tmp);
    af->path = af->tmp = NULL;
    return rc;
}

void sd_atomic_abort(sd_atomic_file *af) {
    if (af->f) fclose(af->f);
    if (af->tmp) remove(af->tmp);
    free(af->path);
    free(af->tmp);
    af->f = NULL;
    af->path = af->tmp = NULL;
}

int sd_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int sd_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

char *sd_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = sd_malloc(a + b + 2, "path");
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}
