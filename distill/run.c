/* A distillation run: set-up, the step loop, metrics, checkpoints and resume (distill/run.h). */
#include "distill/run.h"
#include "common/error.h"
#include "common/fileio.h"
#include "convert/checkpoint.h"
#include "distill/sample_corpus.h"
#include "distill/device_weights.h"
#include "distill/dist.h"
#include "distill/transfer.h"
#include "kernels/cuda/cuda_ctx.h"
#include "kernels/tensor_ops.h"
#include "eval/eval.h"
#include "eval/report.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t g_stop_signal;

static void on_signal(int sig) {
    (void)sig;
    g_stop_signal = 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* mkdir -p: the run directory and any missing parents. */
static int make_dir(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return sd_fail(SD_ERR_SYS, "%s: cannot create the run directory (%s)", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) == 0 || (errno == EEXIST && sd_is_dir(buf))) return SD_OK;
    return sd_fail(SD_ERR_SYS, "%s: cannot create the run directory (%s)", path, strerror(errno));
}

/* DIR/NAME into buf. */
static const char *in_dir(char *buf, size_t n, const char *dir, const char *name) {
    snprintf(buf, n, "%s/%s", dir, name);
    return buf;
}

/* ---------------------------------------------------------------- student and data */

static int student_spec(const sd_recipe_student *rs, sd_student_spec *spec) {
    memset(spec, 0, sizeof *spec);
    spec->mixer = rs->mixer == SD_RECIPE_MIXER_DISCRETE ? SD_MIXER_DISCRETE : SD_MIXER_STANDARD;
    spec->init = rs->init == SD_RECIPE_INIT_ATTENTION ? SD_INIT_ATTENTION : SD_INIT_MOHAWK;
    spec->num_heads = rs->num_heads;
    spec->head_dim = rs->head_dim;
    spec->expand = rs->expand;
    spec->state_size = rs->state_size;
    spec->n_groups = rs->n_groups;
    spec->conv_kernel = rs->conv_kernel;
    spec->chunk_size = rs->chunk_size;
    for (int i = 0; i < rs->n_attn_layers; i++)
        if (rs->attn_layers[i] >= 0 && rs->attn_layers[i] < SD_MAX_LAYERS) spec->attn_layer[rs->attn_layers[i]] = 1;
    return SD_OK;
}

/* Rank 0 writes the run directory (recipe, metrics, checkpoints, eval, report); the other
 * ranks of a data-parallel run only train (distill/dist.h). */
static int is_main(const sd_run *run) { return run->dist.rank == 0; }

/* The set AdamW updates: the student's own weights on the CPU, the F32 masters on a GPU. */
static sd_weights *master_set(sd_run *run) { return run->ctx.backend == SD_DEV_CPU ? &run->s.w : &run->master; }

/* On a GPU: F32 masters of the host student's weights, and the student rewired over the
 * compute set (BF16 matrices, views of the masters for the rest; distill/device_weights.h). */
static int student_to_ctx(sd_run *run) {
    if (run->ctx.backend == SD_DEV_CPU) return SD_OK;
    sd_weights compute;
    SD_TRY(sd_weights_mixed(&run->ctx, &run->s.w, &run->master, &compute));
    sd_model_config cfg = run->s.cfg;
    char *src = sd_strdup(run->s.src ? run->s.src : "student", "model path");
    if (!src) {
        sd_weights_free(&compute);
        return SD_ERR_SYS;
    }
    sd_student_free(&run->s);
    int rc = sd_student_init(&run->s, &cfg, &compute, src);
    sd_weights_free(&compute);
    free(src);
    return rc;
}

/* The parameters as host F32 tensors for a checkpoint: the student's own set on the CPU, a
 * downloaded copy (in *tmp) on a GPU. */
static int host_params(sd_run *run, sd_weights *tmp, const sd_weights **out) {
    sd_weights_init(tmp);
    if (run->ctx.backend == SD_DEV_CPU) {
        *out = &run->s.w;
        return SD_OK;
    }
    SD_TRY(sd_weights_to_host(&run->ctx, &run->master, tmp));
    *out = tmp;
    return SD_OK;
}

/* ---------------------------------------------------------------- layers split over the ranks */

/* 1 when the stage in progress splits its layers over the ranks ("parallel": "layers"). */
static int split_layers(const sd_run *run) {
    return run->dist.active && run->stage_i < run->r.n_stages &&
           run->r.stages[run->stage_i].parallel == SD_PARALLEL_LAYERS;
}

static int owner_of(const sd_run *run, int l) { return l % run->dist.world; }

int sd_run_owns_layer(const sd_run *run, int l) { return !split_layers(run) || owner_of(run, l) == run->dist.rank; }

/* Every rank takes the layers the others trained (each trained tensor broadcast by its owner)
 * and recasts its compute copies: before an eval, a checkpoint and the next stage. */
static int sync_layers(sd_run *run) {
    if (!split_layers(run) || !run->opt_ready) return SD_OK; /* no stage under way: nothing moved */
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    for (int i = 0; i < run->master.n; i++) {
        const char *name = run->master.items[i].name;
        if (sd_recipe_trainable(st, name))
            SD_TRY(sd_dist_broadcast(&run->dist, &run->ctx, &run->master.items[i].t, owner_of(run, sd_student_param_layer(name))));
    }
    return sd_weights_refresh(&run->ctx, &run->s.w, &run->master);
}

/* One trained tensor's moment from its owner into rank 0's host set. */
static int split_moment(sd_run *run, const char *name, const sd_tensor *like, const sd_weights *mine,
                        sd_weights *host) {
    sd_tensor t, h = {0};
    SD_TRY(sd_tensor_new(&run->ctx, &t, SD_F32, like->ndim, like->shape));
    const sd_tensor *src = sd_weights_find(mine, name);
    int rc = src ? sd_copy(&run->ctx, &t, src) : SD_OK;
    if (rc == SD_OK) rc = sd_dist_broadcast(&run->dist, &run->ctx, &t, owner_of(run, sd_student_param_layer(name)));
    if (rc == SD_OK && is_main(run)) {
        rc = sd_tensor_alloc(&h, SD_F32, like->ndim, like->shape);
        if (rc == SD_OK) rc = sd_tensor_into_host(&run->ctx, &h, &t);
        if (rc == SD_OK) rc = sd_weights_add(host, name, h);
        else sd_tensor_free(&h);
    }
    sd_tensor_free(&t);
    return rc;
}

/* The AdamW moments of every trained tensor, whole, on rank 0 (a collective). */
static int split_moments(sd_run *run, sd_weights *hm, sd_weights *hv) {
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    for (int i = 0; i < run->master.n; i++) {
        const char *name = run->master.items[i].name;
        if (!sd_recipe_trainable(st, name)) continue;
        SD_TRY(split_moment(run, name, &run->master.items[i].t, &run->opt.m, hm));
        SD_TRY(split_moment(run, name, &run->master.items[i].t, &run->opt.v, hv));
    }
    return SD_OK;
}

/* Clip by the norm over every rank's layers, then AdamW on this rank's. */
static int split_step(sd_run *run, float lr, float clip, double *gnorm) {
    double total;
    const char *bad;
    SD_TRY(sd_optimizer_grad_sum_squares(&run->opt, &run->ctx, &run->params, &run->grads, &total, &bad));
    SD_TRY(sd_dist_sum_host_f64(&run->dist, &run->ctx, &total, 1)); /* in double, as one process sums it */
    if (!isfinite(total))
        return sd_fail(SD_ERR_CHECK, "AdamW: gradient of '%s' has NaN or Inf values; no parameter was updated",
                       bad ? bad : "a layer another rank trains");
    *gnorm = sqrt(total);
    return sd_optimizer_apply(&run->opt, &run->ctx, &run->params, &run->grads, lr, sd_clip_coef(*gnorm, clip));
}

static int fresh_student(sd_run *run) {
    const sd_model_config *tc = &run->t.cfg;
    SD_TRY(sd_recipe_fill_student(&run->r, tc->hidden_size, tc->num_heads, tc->num_layers));
    sd_student_spec spec;
    sd_model_config c;
    char where[512];
    snprintf(where, sizeof where, "%s: student", run->r.file);
    SD_TRY(student_spec(&run->r.student, &spec));
    SD_TRY(sd_student_config_for(tc, &spec, where, &c));
    if (run->r.student.init == SD_RECIPE_INIT_RANDOM) return sd_student_init_random(&run->s, &c, (uint64_t)run->r.seed);
    return sd_student_from_teacher(&run->t, &c, spec.init, (uint64_t)run->r.seed, &run->s);
}

/* The sampled corpus, drawn once: a later run (or a resume) reads the shard already there. */
static int ensure_sample(sd_run *run) {
    const sd_recipe_sample *sp = &run->r.sample;
    if (!sp->present || sd_file_exists(sp->out)) return SD_OK;
    sd_sample_options o = {.tokens = sp->tokens, .seq_len = sp->seq_len, .temperature = (float)sp->temperature,
                           .top_p = (float)sp->top_p, .seed = (uint64_t)sp->seed, .batch = 0};
    sd_sample_stats stats;
    fprintf(stderr, "sampling %lld tokens from the teacher into %s\n", (long long)sp->tokens, sp->out);
    sd_ctx cpu; /* sampling decodes with a KV cache: on the CPU, before the teacher moves to a GPU */
    sd_ctx_init_cpu(&cpu, run->r.threads);
    SD_TRY(sd_sample_corpus_to_shard(&cpu, &run->t, &o, sp->out, &stats));
    fprintf(stderr, "sampled %lld tokens (%lld documents) in %.1f s\n", (long long)stats.tokens,
            (long long)stats.documents, stats.seconds);
    return SD_OK;
}

static int load_train_data(sd_run *run) {
    for (int i = 0; i < run->r.n_train; i++) {
        int32_t *tok;
        int64_t n;
        SD_TRY(sd_eval_load_data(run->r.train[i], run->r.tokenizer, run->r.teacher, &run->t.cfg, 0, &tok, &n));
        int32_t *all = sd_realloc(run->data, (size_t)(run->n_data + n) * sizeof *all, "training tokens");
        if (!all) {
            free(tok);
            return SD_ERR_SYS;
        }
        memcpy(all + run->n_data, tok, (size_t)n * sizeof *tok);
        free(tok);
        run->data = all;
        run->n_data += n;
    }
    if (run->n_data < 2) return sd_fail(SD_ERR_INPUT, "%s: data.train holds no tokens", run->r.file);
    if (!run->r.eval_data) return SD_OK;
    int64_t max = run->r.has_eval ? run->r.eval_tokens : 0;
    return sd_eval_load_data(run->r.eval_data, run->r.tokenizer, run->r.teacher, &run->t.cfg, max, &run->eval_data,
                             &run->n_eval);
}

/* ---------------------------------------------------------------- checkpoints */

/* The run's position as JSON: where the next step starts. */
static char *state_json(const sd_run *run) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "stage_index", run->stage_i);
    cJSON_AddNumberToObject(o, "stage", run->stage_i < run->r.n_stages ? run->r.stages[run->stage_i].stage : 0);
    cJSON_AddNumberToObject(o, "step", (double)run->step);
    cJSON_AddNumberToObject(o, "cursor", (double)run->cursor);
    double opt_step = run->opt_ready ? (double)run->opt.step : run->zero_ready ? (double)run->zero.step : 0;
    cJSON_AddNumberToObject(o, "optimizer_step", opt_step);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* The optimizer's moments as host tensors (downloaded into m, v on a GPU; with ZeRO-1, the
 * gathered zm, zv). */
static int host_moments(sd_run *run, sd_weights *m, sd_weights *v, const sd_weights **om, const sd_weights **ov,
                        const sd_weights *zm, const sd_weights *zv) {
    sd_weights_init(m);
    sd_weights_init(v);
    *om = *ov = NULL;
    if (zm) { /* gathered from the ranks */
        *om = zm;
        *ov = zv;
        return SD_OK;
    }
    if (!run->opt_ready) return SD_OK;
    if (run->ctx.backend == SD_DEV_CPU) {
        *om = &run->opt.m;
        *ov = &run->opt.v;
        return SD_OK;
    }
    SD_TRY(sd_weights_to_host(&run->ctx, &run->opt.m, m));
    SD_TRY(sd_weights_to_host(&run->ctx, &run->opt.v, v));
    *om = m;
    *ov = v;
    return SD_OK;
}

static int write_checkpoint_body(sd_run *run, const char *name, const char *st, const char *recipe,
                                 const sd_weights *zm, const sd_weights *zv) {
    char path[4096], latest[4096];
    sd_weights pt, mt, vt;
    sd_weights_init(&pt);
    sd_weights_init(&mt);
    sd_weights_init(&vt);
    const sd_weights *params = NULL, *m = NULL, *v = NULL;
    int rc = host_params(run, &pt, &params);
    if (rc == SD_OK) rc = host_moments(run, &mt, &vt, &m, &v, zm, zv);
    sd_train_state ts = {m, v, st, recipe};
    if (rc == SD_OK) rc = sd_checkpoint_write_train(in_dir(path, sizeof path, run->dir, name), &run->s.cfg, params, &ts);
    /* latest.h5 is a copy under its own temporary name: never a half file */
    if (rc == SD_OK && strcmp(name, "ckpt/latest.h5") != 0)
        rc = sd_checkpoint_write_train(in_dir(latest, sizeof latest, run->dir, "ckpt/latest.h5"), &run->s.cfg, params,
                                       &ts);
    sd_weights_free(&pt);
    sd_weights_free(&mt);
    sd_weights_free(&vt);
    return rc;
}

static int write_checkpoint_main(sd_run *run, const char *name, const sd_weights *zm, const sd_weights *zv) {
    char *st = state_json(run), *recipe = NULL;
    if (!st) return sd_fail(SD_ERR_SYS, "out of memory writing the run state");
    int rc = sd_recipe_to_json(&run->r, &recipe);
    if (rc == SD_OK) rc = write_checkpoint_body(run, name, st, recipe, zm, zv);
    free(st);
    free(recipe);
    return rc;
}

/* Every rank holds the same parameters; rank 0 writes them.  ZeRO-1's moments are sharded,
 * and split layers live on their owners: every rank takes part in gathering them whole (a
 * checkpoint resumes on any number of GPUs). */
static int write_checkpoint(sd_run *run, const char *name) {
    sd_weights zm, zv;
    sd_weights_init(&zm);
    sd_weights_init(&zv);
    int gathered = run->zero_ready || (split_layers(run) && run->opt_ready);
    int rc = sync_layers(run);
    if (rc == SD_OK && run->zero_ready)
        rc = sd_dist_zero_moments(&run->dist, &run->ctx, &run->zero, &run->params, &zm, &zv);
    else if (rc == SD_OK && gathered)
        rc = split_moments(run, &zm, &zv);
    if (rc == SD_OK && is_main(run))
        rc = write_checkpoint_main(run, name, gathered ? &zm : NULL, gathered ? &zv : NULL);
    sd_weights_free(&zm);
    sd_weights_free(&zv);
    return rc;
}

static int get_num(const cJSON *o, const char *key, const char *path, double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(j)) return sd_fail(SD_ERR_INPUT, "%s: /state: field '%s' missing or not a number", path, key);
    *out = j->valuedouble;
    return SD_OK;
}

static int parse_state(sd_run *run, const char *json, const char *path) {
    cJSON *o = cJSON_Parse(json);
    if (!o) return sd_fail(SD_ERR_INPUT, "%s: /state is not valid JSON", path);
    double si = 0, step = 0, cursor = 0;
    int rc = get_num(o, "stage_index", path, &si);
    if (rc == SD_OK) rc = get_num(o, "step", path, &step);
    if (rc == SD_OK) rc = get_num(o, "cursor", path, &cursor);
    cJSON_Delete(o);
    SD_TRY(rc);
    if (si < 0 || si > run->r.n_stages || step < 0 || cursor < 0)
        return sd_fail(SD_ERR_INPUT, "%s: /state: stage index %g, step %g, cursor %g do not fit the recipe %s", path, si,
                       step, cursor, run->r.file);
    run->stage_i = (int)si;
    run->step = (int64_t)step;
    run->cursor = (int64_t)cursor;
    return SD_OK;
}

static int resume_student(sd_run *run) {
    char path[4096];
    in_dir(path, sizeof path, run->dir, "ckpt/latest.h5");
    if (!sd_file_exists(path)) return sd_fail(SD_ERR_INPUT, "%s: nothing to resume (no checkpoint)", path);
    sd_model_config c;
    sd_weights w;
    SD_TRY(sd_checkpoint_read_train(path, &c, &w, &run->resume));
    int rc = run->resume.state_json ? parse_state(run, run->resume.state_json, path)
                                    : sd_fail(SD_ERR_INPUT, "%s: not a training checkpoint (no /state)", path);
    if (rc == SD_OK) rc = sd_recipe_fill_student(&run->r, run->t.cfg.hidden_size, run->t.cfg.num_heads, run->t.cfg.num_layers);
    if (rc == SD_OK) rc = sd_student_init(&run->s, &c, &w, path);
    sd_weights_free(&w);
    return rc;
}

/* metrics.jsonl up to the checkpoint: lines past it (logged after the checkpoint by a run
 * that then died) would otherwise appear twice. */
static int trim_metrics(sd_run *run, const char *path) {
    char *text;
    size_t len;
    if (!sd_file_exists(path)) return SD_OK;
    SD_TRY(sd_read_file(path, &text, &len));
    sd_atomic_file af;
    int rc = sd_atomic_open(&af, path);
    for (char *line = text, *next; rc == SD_OK && line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        cJSON *o = cJSON_Parse(line);
        const cJSON *si = cJSON_GetObjectItemCaseSensitive(o, "stage_index");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "step");
        int keep = cJSON_IsNumber(si) && cJSON_IsNumber(st) &&
                   (si->valueint < run->stage_i || (si->valueint == run->stage_i && st->valuedouble <= run->step));
        cJSON_Delete(o);
        if (keep) {
            rc = sd_atomic_write(&af, line, strlen(line));
            if (rc == SD_OK) rc = sd_atomic_write(&af, "\n", 1);
        }
    }
    free(text);
    if (rc == SD_OK) return sd_atomic_commit(&af);
    sd_atomic_abort(&af);
    return rc;
}

/* ---------------------------------------------------------------- open and close */

static int write_recipe(const sd_run *run) {
    char path[4096], *json;
    SD_TRY(sd_recipe_to_json(&run->r, &json));
    sd_atomic_file af;
    int rc = sd_atomic_open(&af, in_dir(path, sizeof path, run->dir, "recipe.json"));
    if (rc == SD_OK) rc = sd_atomic_write(&af, json, strlen(json));
    if (rc == SD_OK) rc = sd_atomic_commit(&af);
    else sd_atomic_abort(&af);
    free(json);
    return rc;
}

/* The recipe's device: CPU threads, or the first GPU (the run then keeps everything there). */
static int init_ctx(sd_run *run) {
    sd_ctx_init_cpu(&run->ctx, run->r.threads);
    SD_TRY(sd_dist_from_env(&run->dist));
    if (sd_dist_wanted(&run->dist) && run->r.device != SD_DEVICE_CUDA)
        return sd_fail(SD_ERR_INPUT, "%s: %d ranks (WORLD_SIZE): data parallelism needs \"device\": \"cuda\" (or "
                       "--device cuda), one GPU per rank", run->r.file, run->dist.world);
    if (run->r.device == SD_DEVICE_CPU) return SD_OK;
#ifdef SD_HAVE_CUDA
    SD_TRY(sd_ctx_init_cuda(&run->ctx, run->dist.local_rank)); /* LOCAL_RANK picks the GPU */
    if (!sd_dist_wanted(&run->dist)) return SD_OK;
    char def[4096];
    const char *id = getenv("SSDISTILL_NCCL_ID"); /* else RUN_DIR/nccl.id: ranks share the run directory */
    const char *path = id && *id ? id : in_dir(def, sizeof def, run->dir, "nccl.id");
    for (int i = 0; i < run->r.n_stages; i++)
        if (run->r.stages[i].parallel == SD_PARALLEL_DATA && run->r.stages[i].batch % run->dist.world != 0)
            return sd_fail(SD_ERR_INPUT, "%s: stage %d: field 'batch': %d sequences do not split over %d ranks",
                           run->r.file, run->r.stages[i].stage, run->r.stages[i].batch, run->dist.world);
    return sd_dist_init(&run->dist, &run->ctx, path);
#else
    return sd_fail(SD_ERR_INPUT, "%s: field 'device': \"cuda\", but this build has no CUDA backend (rebuild with "
                   "nvcc installed, or use \"cpu\")", run->r.file);
#endif
}

static int open_body(sd_run *run, const char *recipe_path, const char *dir, int resume, const char *device) {
    char path[4096];
    SD_TRY(sd_recipe_load(recipe_path, &run->r));
    if (device && strcmp(device, "cpu") == 0) run->r.device = SD_DEVICE_CPU;
    else if (device && strcmp(device, "cuda") == 0) run->r.device = SD_DEVICE_CUDA;
    else if (device) return sd_fail(SD_ERR_INPUT, "--device: '%s' is not a device (cpu or cuda)", device);
    run->dir = sd_strdup(dir, "run directory");
    if (!run->dir) return SD_ERR_SYS;
    SD_TRY(make_dir(dir));
    SD_TRY(make_dir(in_dir(path, sizeof path, dir, "ckpt")));
    SD_TRY(init_ctx(run));
    if (!sd_file_exists(run->r.teacher))
        return sd_fail(SD_ERR_INPUT, "%s: field 'teacher': %s does not exist.  The shipped recipes read the teacher "
                       "from ${SSDISTILL_DATA} (default ../shared/data, i.e. hf/stories260K there): set SSDISTILL_DATA "
                       "to the data folder, or point 'teacher' at any Hugging Face Llama/Qwen2 directory (config.json, "
                       "model.safetensors, tokenizer.json) or llama2.c .bin file", run->r.file, run->r.teacher);
    SD_TRY(sd_teacher_load(&run->t, run->r.teacher));
    if (is_main(run)) SD_TRY(ensure_sample(run));
    float barrier = 0; /* the other ranks wait here while rank 0 samples */
    SD_TRY(sd_dist_mean_host(&run->dist, &run->ctx, &barrier, 1));
    SD_TRY(load_train_data(run));
    SD_TRY(resume ? resume_student(run) : fresh_student(run));
    SD_TRY(sd_teacher_to_ctx(&run->ctx, &run->t)); /* after sampling and the transfer, which read it on the host */
    SD_TRY(student_to_ctx(run));
    SD_TRY(sd_student_grads_init(&run->s, &run->g));
    if (!is_main(run)) return SD_OK;
    SD_TRY(write_recipe(run));
    in_dir(path, sizeof path, dir, "metrics.jsonl");
    if (resume) SD_TRY(trim_metrics(run, path));
    run->metrics = fopen(path, resume ? "a" : "w");
    if (!run->metrics) return sd_fail(SD_ERR_SYS, "%s: cannot open for writing (%s)", path, strerror(errno));
    return SD_OK;
}

int sd_run_open(sd_run *run, const char *recipe_path, const char *dir, int resume) {
    return sd_run_open_on(run, recipe_path, dir, resume, NULL);
}

int sd_run_open_on(sd_run *run, const char *recipe_path, const char *dir, int resume, const char *device) {
    memset(run, 0, sizeof *run);
    sd_weights_init(&run->params);
    sd_weights_init(&run->grads);
    sd_weights_init(&run->resume.m);
    sd_weights_init(&run->resume.v);
    sd_weights_init(&run->master);
    run->quiet = !isatty(2);
    int rc = open_body(run, recipe_path, dir, resume, device);
    if (rc != SD_OK) sd_run_close(run);
    return rc;
}

static void stage_end(sd_run *run) {
    if (run->opt_ready) sd_optimizer_free(&run->opt);
    run->opt_ready = 0;
    if (run->zero_ready) { /* the gradient set's views die with the flat buffer: the next stage makes both */
        sd_student_free(&run->g);
        sd_zero_free(&run->zero);
    }
    run->zero_ready = 0;
    sd_weights_free(&run->params);
    sd_weights_free(&run->grads);
}

void sd_run_close(sd_run *run) {
    stage_end(run);
    sd_train_state_in_free(&run->resume);
    if (run->metrics) fclose(run->metrics);
    sd_student_free(&run->g);
    sd_student_free(&run->s);
    sd_weights_free(&run->master);
    sd_teacher_free(&run->t);
    sd_dist_free(&run->dist);
#ifdef SD_HAVE_CUDA
    sd_ctx_free_cuda(&run->ctx); /* after every device tensor; nothing on a CPU context */
#endif
    free(run->data);
    free(run->eval_data);
    free(run->dir);
    sd_recipe_free(&run->r);
    memset(run, 0, sizeof *run);
}

/* ---------------------------------------------------------------- a stage */

/* Data parallel: ZeRO-1 over the stage's parameters (distill/dist.h); the gradient set is made
 * again over its flat buffer. */
static int stage_begin_zero(sd_run *run, const sd_adamw_config *ac) {
    SD_TRY(sd_dist_zero_begin(&run->dist, &run->ctx, &run->zero, &run->s, &run->g, &run->params, ac));
    run->zero_ready = 1;
    run->zero.step = run->step;
    if (run->step == 0 || run->resume.m.n == 0) return SD_OK;
    char src[4096];
    return sd_zero_moments_from_host(&run->zero, &run->ctx, &run->params, &run->resume.m, &run->resume.v,
                                     in_dir(src, sizeof src, run->dir, "ckpt/latest.h5"));
}

/* Views of the parameters the stage trains (its trainable patterns) and of their gradients;
 * AdamW over them, its moments restored when resuming inside this stage. */
static int stage_begin(sd_run *run) {
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    const sd_weights *master = master_set(run);
    int trained = 0;
    for (int i = 0; i < master->n; i++) {
        const char *name = master->items[i].name;
        if (!sd_recipe_trainable(st, name)) continue;
        trained++;
        if (split_layers(run) && sd_student_param_layer(name) < 0)
            return sd_fail(SD_ERR_INPUT, "%s: stage %d: field 'parallel': \"layers\" splits per-layer parameters, "
                           "and '%s' belongs to no layer (train it with \"data\")", run->r.file, st->stage, name);
        if (!sd_run_owns_layer(run, sd_student_param_layer(name))) continue; /* another rank trains it */
        sd_tensor p = master->items[i].t;
        p.owns = 0;
        SD_TRY(sd_weights_add(&run->params, name, p));
        if (run->dist.active && !split_layers(run)) continue; /* ZeRO-1 makes the gradients (sd_dist_zero_begin) */
        sd_tensor *gt = sd_weights_find(&run->g.w, name), gv;
        if (!gt) return sd_fail(SD_ERR_INTERNAL, "no gradient for %s", name);
        gv = *gt;
        gv.owns = 0;
        SD_TRY(sd_weights_add(&run->grads, name, gv));
    }
    if (trained == 0)
        return sd_fail(SD_ERR_INPUT, "%s: stage %d: no parameter matches the trainable patterns", run->r.file, st->stage);
    sd_adamw_config ac = {(float)st->beta1, (float)st->beta2, 1e-8f, (float)st->weight_decay};
    if (run->dist.active && !split_layers(run)) return stage_begin_zero(run, &ac);
    SD_TRY(sd_optimizer_init(&run->opt, &run->params, &ac));
    run->opt_ready = 1;
    if (run->step == 0 || run->resume.m.n == 0) return SD_OK;
    for (int i = 0; i < run->opt.m.n; i++) {
        const char *name = run->opt.m.items[i].name;
        sd_tensor *m = sd_weights_find(&run->resume.m, name), *v = sd_weights_find(&run->resume.v, name);
        sd_tensor *dm = &run->opt.m.items[i].t, *dv = &run->opt.v.items[i].t;
        if (!m || !v || !sd_same_shape(m, dm) || !sd_same_shape(v, dv) || m->dtype != SD_F32 || v->dtype != SD_F32)
            return sd_fail(SD_ERR_INPUT, "%s/ckpt/latest.h5: /optim: moments of '%s' missing or of the wrong shape",
                           run->dir, name);
        SD_TRY(sd_copy_from_host(&run->ctx, dm, m));
        SD_TRY(sd_copy_from_host(&run->ctx, dv, v));
    }
    run->opt.step = run->step;
    return SD_OK;
}

/* The batch of this step: B windows of T tokens from the cursor, wrapping at the end.  With
 * several ranks, count is one rank's share: rank r takes the r-th slice of the global batch
 * and every rank advances the cursor past all of it, so that the global batches (and a
 * checkpoint's cursor) do not depend on the number of ranks. */
static void next_batch(sd_run *run, int32_t *ids, int64_t count) {
    int sliced = run->dist.active && !split_layers(run); /* split layers: every rank the whole batch */
    int64_t world = sliced ? run->dist.world : 1, off = sliced ? run->dist.rank * count : 0;
    for (int64_t i = 0; i < count; i++) ids[i] = run->data[(run->cursor + off + i) % run->n_data];
    run->cursor = (run->cursor + count * world) % run->n_data;
}

static void log_step(sd_run *run, float loss, double lr, double gnorm, double tps, const float *layer_losses) {
    if (!run->metrics) return; /* not rank 0 */
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    fprintf(run->metrics, "{\"stage\":%d,\"stage_index\":%d,\"step\":%" PRId64 ",\"tokens\":%" PRId64
            ",\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,\"tokens_per_s\":%.1f",
            st->stage, run->stage_i, run->step, run->step * (int64_t)st->batch * st->seq_len, loss, lr, gnorm, tps);
    if (st->stage != 3) {
        fputs(",\"layer_losses\":[", run->metrics);
        for (int l = 0; l < run->s.cfg.num_layers; l++) fprintf(run->metrics, "%s%.9g", l ? "," : "", layer_losses[l]);
        fputc(']', run->metrics);
    }
    fputs("}\n", run->metrics);
    fflush(run->metrics);
}

/* Steps left in the run from here, weighted by tokens, for the ETA. */
static double tokens_left(const sd_run *run) {
    double left = 0;
    for (int i = run->stage_i; i < run->r.n_stages; i++) {
        const sd_recipe_stage *st = &run->r.stages[i];
        int64_t steps = st->steps - (i == run->stage_i ? run->step : 0);
        left += (double)steps * st->batch * st->seq_len;
    }
    return left;
}

static void progress(const sd_run *run, float loss, double tps) {
    if (run->quiet || !is_main(run)) return;
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    double eta = tps > 0 ? tokens_left(run) / tps : 0;
    fprintf(stderr, "\rstage %d  step %" PRId64 "/%" PRId64 "  loss %.4f  %.0f tok/s  ETA %dm%02ds   ", st->stage,
            run->step, st->steps, loss, tps, (int)(eta / 60), (int)fmod(eta, 60));
}

/* The student as an sd_lm for eval (shares the run's student: never freed through it). */
static sd_lm as_lm(const sd_student *s, const char *path) {
    sd_lm m;
    memset(&m, 0, sizeof m);
    m.cfg = s->cfg;
    m.is_student = 1;
    m.student = *s;
    m.path = (char *)path;
    return m;
}

static int evaluate(sd_run *run, sd_eval_result *res) {
    sd_lm sm = as_lm(&run->s, run->dir), tm;
    memset(&tm, 0, sizeof tm);
    tm.cfg = run->t.cfg;
    tm.teacher = run->t;
    tm.path = run->r.teacher;
    sd_eval_options o = {run->r.has_eval ? run->r.eval_seq_len : 256, run->r.has_eval ? run->r.eval_batch : 8,
                         run->r.has_eval ? run->r.eval_tokens : 0};
    return sd_eval_tokens(&run->ctx, &sm, &tm, run->eval_data, run->n_eval, &o, res);
}

static int log_eval(sd_run *run) {
    SD_TRY(sync_layers(run)); /* every rank: rank 0 needs the layers the others trained */
    if (!is_main(run)) return SD_OK;
    sd_eval_result res;
    SD_TRY(evaluate(run, &res));
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    fprintf(run->metrics, "{\"event\":\"eval\",\"stage\":%d,\"stage_index\":%d,\"step\":%" PRId64 ",\"eval\":{\"ppl\":%.9g,"
            "\"teacher_ppl\":%.9g,\"kl\":%.9g,\"top1\":%.9g,\"tokens\":%" PRId64 "}}\n", st->stage, run->stage_i,
            run->step, res.ppl, res.teacher_ppl, res.kl, res.top1, res.tokens);
    fflush(run->metrics);
    return SD_OK;
}

/* One optimizer step: batch, loss and gradients, clip + AdamW at the schedule's rate. */
static int one_step(sd_run *run, sd_tensor *ids, float *layer_losses, double *t_last) {
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    float loss;
    double gnorm = 0, lr = sd_schedule_lr(&st->schedule, run->step);
    next_batch(run, ids->data, sd_numel(ids));
    SD_TRY(sd_run_stage_loss(run, ids, &loss, layer_losses));
    if (run->zero_ready) { /* the mean over the ranks' slices: the global batch's gradient and loss */
        /* the step first: it waits for the gradients' reductions still on NCCL's stream, and the
         * communicator runs one collective at a time, in the same order on every rank */
        SD_TRY(sd_dist_zero_step(&run->dist, &run->ctx, &run->zero, &run->params, (float)lr, (float)st->clip, &gnorm));
        SD_TRY(sd_dist_mean_host(&run->dist, &run->ctx, &loss, 1));
        SD_TRY(sd_dist_mean_host(&run->dist, &run->ctx, layer_losses, run->s.cfg.num_layers));
    } else if (split_layers(run)) { /* each rank its layers: their losses add up */
        SD_TRY(sd_dist_sum_host(&run->dist, &run->ctx, &loss, 1));
        SD_TRY(sd_dist_sum_host(&run->dist, &run->ctx, layer_losses, run->s.cfg.num_layers));
        SD_TRY(split_step(run, (float)lr, (float)st->clip, &gnorm));
    } else {
        SD_TRY(sd_optimizer_step(&run->opt, &run->ctx, &run->params, &run->grads, (float)lr, (float)st->clip, &gnorm));
    }
    if (run->dist.active) SD_TRY(sd_run_check_loss(run, loss)); /* the reduced loss: every rank alike */
    if (run->ctx.backend != SD_DEV_CPU) SD_TRY(sd_weights_refresh(&run->ctx, &run->s.w, &run->master));
    run->step++;
    run->steps_here++;
    double t = now(), tps = (double)st->batch * st->seq_len / (t - *t_last); /* the global batch */
    *t_last = t;
    if (run->step % st->log_every == 0 || run->step == st->steps) log_step(run, loss, lr, gnorm, tps, layer_losses);
    progress(run, loss, tps);
    if (st->eval_every > 0 && run->eval_data && run->step % st->eval_every == 0) SD_TRY(log_eval(run));
    if (st->checkpoint_every > 0 && run->step % st->checkpoint_every == 0 && run->step < st->steps)
        SD_TRY(write_checkpoint(run, "ckpt/latest.h5"));
    return SD_OK;
}

/* A signal or stop_after ends the run at a step boundary; with several ranks the decision is
 * taken together (a signal may reach one rank a step before another: the checkpoint's
 * gathering needs every rank at the same step). */
static int should_stop(sd_run *run, int *stop) {
    float f = g_stop_signal || (run->stop_after > 0 && run->steps_here >= run->stop_after);
    SD_TRY(sd_dist_sum_host(&run->dist, &run->ctx, &f, 1));
    *stop = f > 0;
    return SD_OK;
}

/* The rest of the current stage; *stopped when interrupted (after a checkpoint). */
static int run_stage(sd_run *run, int *stopped) {
    const sd_recipe_stage *st = &run->r.stages[run->stage_i];
    int ranks = run->dist.active && !split_layers(run) ? run->dist.world : 1;
    int64_t shape[2] = {st->batch / ranks, st->seq_len}; /* this rank's share */
    sd_tensor ids;
    float *layer_losses = sd_calloc((size_t)run->s.cfg.num_layers, sizeof(float), "layer losses");
    if (!layer_losses) return SD_ERR_SYS;
    int rc = sd_tensor_alloc(&ids, SD_I32, 2, shape);
    if (rc == SD_OK) rc = stage_begin(run);
    if (is_main(run))
        fprintf(stderr, "stage %d: steps %" PRId64 " to %" PRId64 " of batch %d x %d, %d parameter tensors trained\n",
                st->stage, run->step + 1, st->steps, st->batch, st->seq_len, run->params.n);
    double t_last = now();
    while (rc == SD_OK && run->step < st->steps) {
        int stop;
        rc = should_stop(run, &stop);
        if (rc == SD_OK && stop) {
            *stopped = 1;
            break;
        }
        if (rc != SD_OK) break;
        rc = one_step(run, &ids, layer_losses, &t_last);
    }
    if (!run->quiet) fputc('\n', stderr);
    sd_tensor_free(&ids);
    free(layer_losses);
    return rc;
}

/* The teacher's tokenizer.json beside student.h5, so that eval and generate find it there. */
static int copy_tokenizer(const sd_run *run) {
    char path[4096], *text;
    size_t len;
    if (!run->r.tokenizer || !sd_file_exists(run->r.tokenizer)) return SD_OK;
    SD_TRY(sd_read_file(run->r.tokenizer, &text, &len));
    sd_atomic_file af;
    int rc = sd_atomic_open(&af, in_dir(path, sizeof path, run->dir, "tokenizer.json"));
    if (rc == SD_OK) rc = sd_atomic_write(&af, text, len);
    if (rc == SD_OK) rc = sd_atomic_commit(&af);
    else sd_atomic_abort(&af);
    free(text);
    return rc;
}

static int finish(sd_run *run) {
    if (!is_main(run)) return SD_OK;
    char path[4096];
    sd_weights pt;
    const sd_weights *params;
    SD_TRY(host_params(run, &pt, &params));
    int wrc = sd_checkpoint_write(in_dir(path, sizeof path, run->dir, "student.h5"), &run->s.cfg, params);
    sd_weights_free(&pt);
    SD_TRY(wrc);
    SD_TRY(copy_tokenizer(run));
    if (run->eval_data) {
        sd_eval_result res;
        SD_TRY(evaluate(run, &res));
        char *json = sd_eval_result_json(&res, path, run->r.eval_data);
        if (!json) return sd_fail(SD_ERR_SYS, "out of memory writing eval.json");
        sd_atomic_file af;
        int rc = sd_atomic_open(&af, in_dir(path, sizeof path, run->dir, "eval.json"));
        if (rc == SD_OK) rc = sd_atomic_write(&af, json, strlen(json));
        if (rc == SD_OK) rc = sd_atomic_commit(&af);
        else sd_atomic_abort(&af);
        fprintf(stderr, "eval: %s\n", json);
        free(json);
        SD_TRY(rc);
    }
    return sd_report_write(run->dir, NULL);
}

int sd_run_all(sd_run *run, int *stopped) {
    *stopped = 0;
    void (*old_int)(int) = signal(SIGINT, on_signal), (*old_term)(int) = signal(SIGTERM, on_signal);
    int rc = SD_OK;
    while (rc == SD_OK && run->stage_i < run->r.n_stages) {
        rc = run_stage(run, stopped);
        if (rc == SD_OK && !*stopped) rc = sync_layers(run); /* the next stage starts from every layer */
        if (rc != SD_OK) break;
        if (*stopped) {
            rc = write_checkpoint(run, "ckpt/latest.h5");
            fprintf(stderr, "stopped at stage %d step %" PRId64 "; checkpoint %s/ckpt/latest.h5 (resume with --resume)\n",
                    run->r.stages[run->stage_i].stage, run->step, run->dir);
            break;
        }
        char name[64];
        snprintf(name, sizeof name, "ckpt/stage%d.h5", run->r.stages[run->stage_i].stage);
        stage_end(run);
        run->stage_i++;
        run->step = 0;
        rc = write_checkpoint(run, name);
    }
    if (rc == SD_OK && !*stopped) rc = finish(run);
    signal(SIGINT, old_int);
    signal(SIGTERM, old_term);
    return rc;
}
