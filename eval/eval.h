/* Evaluation of a language model on a token stream (DESIGN.md sections 5 and 7, `eval`):
 * perplexity, and against a teacher the per-token KL(teacher || model), the top-1 agreement
 * and the teacher's own perplexity.
 *
 * The stream is cut into non-overlapping windows of seq_len tokens (the last one may be
 * shorter; one of a single token predicts nothing and is dropped); inside a window every
 * position but the last predicts the next token, so a window of T tokens counts T - 1.
 * Windows run `batch` at a time.  Sums are kept in double in a fixed order, so a result does
 * not depend on the thread count beyond the ops' own rounding. */
#ifndef SD_EVAL_H
#define SD_EVAL_H

#include <stdint.h>

#include "distill/student.h"
#include "distill/teacher.h"

/* A teacher or a student, loaded any way sd_load_model supports. */
typedef struct {
    sd_model_config cfg;
    int is_student;
    sd_teacher teacher;
    sd_student student;
    char *path;
} sd_lm;

int sd_lm_load(sd_lm *m, const char *path);
void sd_lm_free(sd_lm *m);
/* ids [B, T] I32 -> logits [B, T, V] (allocated by the caller). */
/* Moves the model's weights to ctx's backend (nothing on a CPU context). */
int sd_lm_to_ctx(sd_ctx *ctx, sd_lm *m);
int sd_lm_forward(sd_ctx *ctx, const sd_lm *m, const sd_tensor *ids, sd_tensor *logits);

typedef struct {
    int seq_len;        /* window length, >= 2 */
    int batch;          /* windows per forward, >= 1 */
    int64_t max_tokens; /* use at most this many tokens of the stream; <= 0: all */
} sd_eval_options;

typedef struct {
    int64_t tokens;     /* predicted positions counted */
    int64_t windows;
    double loss, ppl;   /* mean next-token cross-entropy (nats) and exp of it */
    int has_teacher;
    double teacher_loss, teacher_ppl;
    double kl;          /* mean KL(p_teacher || p_model), natural log, temperature 1 */
    double top1;        /* fraction of positions where the argmaxes agree */
} sd_eval_result;

/* Evaluates model (and teacher, when not NULL: same vocabulary required) on tokens[0..n). */
int sd_eval_tokens(sd_ctx *ctx, const sd_lm *model, const sd_lm *teacher, const int32_t *tokens, int64_t n,
                   const sd_eval_options *opt, sd_eval_result *res);

/* The token stream of DATA for a model with config cfg:
 *  - a token shard (convert/shard.h, recognised by its magic) is read as it is;
 *  - anything else is UTF-8 text: documents are separated by blank lines, each is trimmed,
 *    encoded with the tokenizer and preceded by BOS when there is one (the config's
 *    bos_token_id, else the tokenizer's); no EOS is appended.  This is how llama2.c made the
 *    stories260K training data (encode(story.strip(), bos=True, eos=False)), so the teacher
 *    sees text as it was trained.
 * tokenizer: a tokenizer.json, or NULL for the one beside the model (model_path's folder, or
 * the folder holding model_path).  Every id must be below cfg->vocab_size.
 * max_tokens > 0 stops reading text once that many tokens are there.  *tokens: malloc'ed. */
int sd_eval_load_data(const char *data, const char *tokenizer, const char *model_path, const sd_model_config *cfg,
                      int64_t max_tokens, int32_t **tokens, int64_t *n);

/* The result as one JSON object {"model", "data", "tokens", "ppl", "teacher_ppl", "kl", "top1"}
 * (the teacher's fields null without a teacher); caller frees. */
char *sd_eval_result_json(const sd_eval_result *r, const char *model, const char *data);

#endif
