/* The student made from a teacher (DESIGN.md section 4, weight transfer): the teacher's
 * embeddings, head, norms and MLPs copied; a fresh mixer in every layer but the hybrid's
 * attention layers, which keep the teacher's attention. */
#ifndef SD_TRANSFER_H
#define SD_TRANSFER_H

#include "distill/student.h"
#include "distill/teacher.h"

typedef enum {
    SD_INIT_MOHAWK = 0, /* a fresh mixer as MOHAWK: identity conv, gate near 1, D = 1 */
    SD_INIT_ATTENTION   /* C <- q_proj, B <- k_proj, x <- v_proj (over KV groups), out_proj <- o_proj */
} sd_mixer_init;

/* The student's shape; 0 in a size means "the default" noted beside it. */
typedef struct {
    sd_mixer_type mixer;
    int num_heads;   /* 0: the teacher's query heads */
    int head_dim;    /* 0: expand * hidden_size / num_heads */
    int expand;      /* 0: 1 (d_inner = expand * hidden_size when head_dim is 0) */
    int state_size;  /* 0: 64 */
    int n_groups;    /* 0: num_heads for the discrete mixer (B/C per head), 1 for the standard */
    int conv_kernel; /* 0: 4 */
    int chunk_size;  /* 0: 64 */
    sd_mixer_init init;
    unsigned char attn_layer[SD_MAX_LAYERS]; /* 1: keep the teacher's attention in that layer */
} sd_student_spec;

/* The student's config: the teacher's Llama-family fields, arch SD_ARCH_STUDENT, the mixer of
 * spec.  SD_ERR_INPUT (naming `where` and the field) for a shape that cannot work, e.g. the
 * attention init without state_size = head_dim = the teacher's head dim. */
int sd_student_config_for(const sd_model_config *teacher, const sd_student_spec *spec, const char *where,
                          sd_model_config *out);

/* A student for teacher t with config scfg (from sd_student_config_for): copied tensors and
 * mixers initialised by init, random parts from seed (deterministic). */
int sd_student_from_teacher(const sd_teacher *t, const sd_model_config *scfg, sd_mixer_init init, uint64_t seed,
                            sd_student *out);

/* The value of z_bias that opens the discrete mixer's gate: silu(z_bias) = 1. */
#define SD_Z_BIAS_OPEN 1.2785f

#endif
