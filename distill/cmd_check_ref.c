/* ssdistill check-ref --model M REF.safetensors [--tol X] [--device cpu|cuda]
 * Runs M on the reference's input_ids and prints, per tensor, the relative error
 * ||out - ref|| / ||ref|| (Frobenius, in float64) against what Hugging Face transformers
 * computed: logits, hidden_states.N (N = 0 embeddings, N = i + 1 after layer i, the last
 * after the final norm) and attentions.N.  Exit 1 when any error is above the tolerance.
 * On cuda the model runs in BF16 (DESIGN.md section 3): the default tolerance is then 5e-2,
 * and attentions.N are skipped (the flash kernel never forms the probabilities). */
#include "common/error.h"
#include "convert/safetensors.h"
#include "distill/commands.h"
#include "convert/model_io.h"
#include "distill/student.h"
#include "distill/teacher.h"
#include "kernels/cuda/cuda_ctx.h"
#include "kernels/tensor_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double rel_err(const sd_tensor *out, const sd_tensor *ref) {
    const float *a = out->data, *b = ref->data;
    double num = 0, den = 0;
    for (int64_t i = 0; i < sd_numel(ref); i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The model output that corresponds to reference tensor NAME, or NULL if there is none.
 * transformers' hidden_states: Transformers list the embeddings, then each layer's output
 * (the last after the final norm); Mamba2Model lists no embeddings: entry n < L is block n's
 * output, entry L the last block's output after the final norm. */
static const sd_tensor *output_for(const char *name, const sd_teacher_trace *tr, const sd_tensor *logits, int L,
                                   int hf_lists_embeddings) {
    if (strcmp(name, "logits") == 0) return logits;
    char *end;
    if (strncmp(name, "hidden_states.", 14) == 0) {
        long n = strtol(name + 14, &end, 10);
        if (*end || n < 0 || n > L) return NULL;
        return n == L ? &tr->final_hidden : &tr->hidden[hf_lists_embeddings ? n : n + 1];
    }
    if (strncmp(name, "attentions.", 11) == 0) {
        long n = strtol(name + 11, &end, 10);
        if (*end || n < 0 || n >= L || !tr->probs) return NULL;
        return &tr->probs[n];
    }
    return NULL;
}

/* Compares every reference tensor but input_ids; returns the number above tol in *bad. */
/* err = rel_err of out (on ctx's backend) against the host reference r. */
static int rel_err_on(sd_ctx *ctx, const sd_tensor *out, const sd_tensor *r, double *err) {
    if (out->device == SD_DEV_CPU) {
        *err = rel_err(out, r);
        return SD_OK;
    }
    sd_tensor h;
    SD_TRY(sd_tensor_alloc(&h, SD_F32, out->ndim, out->shape));
    int rc = sd_tensor_into_host(ctx, &h, out);
    if (rc == SD_OK) *err = rel_err(&h, r);
    sd_tensor_free(&h);
    return rc;
}

static int compare_all(sd_ctx *ctx, const sd_safetensors *ref, const sd_teacher_trace *tr, const sd_tensor *logits,
                       int L, int hf_lists_embeddings, double tol, int *bad, int *checked) {
    *bad = *checked = 0;
    printf("%-20s %-18s %12s\n", "tensor", "shape", "rel_error");
    for (int i = 0; i < ref->n; i++) {
        const sd_st_entry *e = &ref->entries[i];
        if (strcmp(e->name, "input_ids") == 0) continue;
        const sd_tensor *out = output_for(e->name, tr, logits, L, hf_lists_embeddings);
        if (!out && ctx->backend != SD_DEV_CPU && strncmp(e->name, "attentions.", 11) == 0) {
            printf("%-20s %-18s %12s skipped on cuda\n", e->name, "", "");
            continue;
        }
        if (!out) return sd_fail(SD_ERR_INPUT, "%s: tensor '%s' has no counterpart in a %d-layer model", ref->path,
                                 e->name, L);
        sd_tensor r;
        SD_TRY(sd_st_read_f32(ref, e->name, &r));
        char shape[96], want[96];
        if (!sd_same_shape(out, &r)) {
            int rc = sd_fail(SD_ERR_INPUT, "%s: tensor '%s': reference shape %s, model output %s", ref->path, e->name,
                             sd_shape_str(&r, shape, sizeof shape), sd_shape_str(out, want, sizeof want));
            sd_tensor_free(&r);
            return rc;
        }
        double err = 0;
        int erc = rel_err_on(ctx, out, &r, &err);
        if (erc != SD_OK) {
            sd_tensor_free(&r);
            return erc;
        }
        int ok = err <= tol; /* NaN fails */
        printf("%-20s %-18s %12.3e %s\n", e->name, sd_shape_str(&r, shape, sizeof shape), err, ok ? "ok" : "FAIL");
        sd_tensor_free(&r);
        *bad += !ok;
        (*checked)++;
    }
    return SD_OK;
}

/* The model's outputs for ids: logits and a trace with hidden states (and, for a
 * Transformer, attention probabilities). */
typedef struct {
    sd_model_config cfg;
    sd_tensor logits;
    sd_teacher_trace tr;
    sd_tensor *student_hidden; /* a student's L + 1 hidden states (as the teacher's trace) */
} model_outputs;

static void outputs_free(model_outputs *o) {
    sd_tensor_free(&o->logits);
    if (o->student_hidden) {
        for (int l = 0; l <= o->cfg.num_layers; l++) sd_tensor_free(&o->student_hidden[l]);
        free(o->student_hidden);
        o->tr.hidden = NULL;
    }
    sd_teacher_trace_free(&o->tr);
}

static int run_student(sd_ctx *ctx, sd_weights *w, const char *src, const sd_tensor *ids, model_outputs *o) {
    sd_student st;
    SD_TRY(sd_student_init(&st, &o->cfg, w, src));
    int L = o->cfg.num_layers, rc = SD_OK;
    o->student_hidden = sd_calloc((size_t)L + 1, sizeof(sd_tensor), "hidden states");
    if (!o->student_hidden) rc = SD_ERR_SYS;
    for (int l = 0; rc == SD_OK && l <= L; l++)
        rc = sd_tensor_act(ctx, &o->student_hidden[l], 3, ids->shape[0], ids->shape[1], o->cfg.hidden_size, 0);
    if (rc == SD_OK) rc = sd_tensor_act(ctx, &o->tr.final_hidden, 3, ids->shape[0], ids->shape[1], o->cfg.hidden_size, 0);
    if (rc == SD_OK) rc = sd_student_to_ctx(ctx, &st);
    if (rc == SD_OK) rc = sd_student_forward(ctx, &st, ids, &o->logits, o->student_hidden, &o->tr.final_hidden);
    if (rc == SD_OK) {
        o->tr.num_layers = L;
        o->tr.hidden = o->student_hidden;
    }
    sd_student_free(&st);
    return rc;
}

static int run_model(sd_ctx *ctx, const char *path, const sd_tensor *ids, model_outputs *o) {
    sd_weights w;
    char *src = sd_model_tensor_source(path);
    if (!src) return SD_ERR_SYS;
    int rc = sd_load_model(path, &o->cfg, &w);
    if (rc == SD_OK) rc = sd_tensor_new_f32(ctx, &o->logits, 3, ids->shape[0], ids->shape[1], o->cfg.vocab_size, 0);
    if (rc == SD_OK && sd_is_student(&o->cfg)) {
        rc = run_student(ctx, &w, src, ids, o);
    } else if (rc == SD_OK) {
        sd_teacher t;
        o->tr.want_hidden = 1;
        o->tr.want_probs = ctx->backend == SD_DEV_CPU;
        rc = sd_teacher_init(&t, &o->cfg, &w, src);
        if (rc == SD_OK) rc = sd_teacher_to_ctx(ctx, &t);
        if (rc == SD_OK) rc = sd_teacher_forward(ctx, &t, ids, NULL, &o->logits, &o->tr);
        sd_teacher_free(&t);
    }
    sd_weights_free(&w);
    free(src);
    return rc;
}

static int read_ids(const sd_safetensors *ref, sd_tensor *ids) {
    const sd_st_entry *e = sd_st_find(ref, "input_ids");
    if (!e) return sd_fail(SD_ERR_INPUT, "%s: missing tensor 'input_ids'", ref->path);
    SD_TRY(sd_st_read(ref, e, ids));
    if (ids->dtype != SD_I32 || ids->ndim != 2) {
        int rc = sd_fail(SD_ERR_INPUT, "%s: tensor 'input_ids': expected I32 [batch, T], got %s with %d dims",
                         ref->path, sd_dtype_name(ids->dtype), ids->ndim);
        sd_tensor_free(ids);
        return rc;
    }
    return SD_OK;
}

static int run_check(sd_ctx *ctx, const char *model_path, const char *ref_path, double tol) {
    sd_safetensors ref;
    SD_TRY(sd_st_open(ref_path, &ref));
    sd_tensor ids = {0};
    model_outputs o;
    memset(&o, 0, sizeof o);
    int rc = read_ids(&ref, &ids);
    if (rc == SD_OK) rc = run_model(ctx, model_path, &ids, &o);
    int bad = 0, checked = 0;
    if (rc == SD_OK) rc = compare_all(ctx, &ref, &o.tr, &o.logits, o.cfg.num_layers, o.cfg.arch != SD_ARCH_MAMBA2, tol, &bad, &checked);
    if (rc == SD_OK) {
        printf("%d tensors checked, %d above tolerance %.1e\n", checked, bad, tol);
        if (bad) rc = sd_fail(SD_ERR_CHECK, "%d of %d tensors differ from %s by more than %.1e", bad, checked,
                              ref_path, tol);
        else if (checked == 0) rc = sd_fail(SD_ERR_INPUT, "%s: no reference tensors to check", ref_path);
    }
    outputs_free(&o);
    sd_tensor_free(&ids);
    sd_st_close(&ref);
    return rc;
}

int cmd_check_ref(int argc, char **argv) {
    static const char *const with_value[] = {"--model", "--tol", "--device", NULL};
    SD_TRY(sd_args_check(argc, argv, with_value, NULL));
    const char *model = sd_arg_value(argc, argv, "--model");
    const char *ref = sd_arg_positional(argc, argv, with_value, 0);
    const char *device = sd_arg_value(argc, argv, "--device");
    if (!model || !ref || sd_arg_positional(argc, argv, with_value, 1))
        return sd_fail(SD_ERR_INPUT, "usage: ssdistill check-ref --model M REF.safetensors [--tol 1e-4] [--device cpu|cuda]");
    sd_ctx ctx;
    SD_TRY(sd_args_ctx(device, 0, &ctx));
    double tol;
    int rc = sd_arg_double(argc, argv, "--tol", ctx.backend == SD_DEV_CPU ? 1e-4 : 5e-2, &tol);
    if (rc == SD_OK) rc = run_check(&ctx, model, ref, tol);
#ifdef SD_HAVE_CUDA
    sd_ctx_free_cuda(&ctx);
#endif
    return rc;
}
