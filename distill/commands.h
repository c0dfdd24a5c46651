/* The `ssdistill` subcommands. Each takes argv after the subcommand name (argv[0] is the
 * subcommand) and returns a status (common/error.h); main() prints sd_errmsg() and maps
 * the status to the exit code. */
#ifndef SD_COMMANDS_H
#define SD_COMMANDS_H

#include "kernels/context.h"

int cmd_convert(int argc, char **argv);   /* distill/cmd_convert.c */
int cmd_inspect(int argc, char **argv);   /* distill/cmd_convert.c */
int cmd_encode(int argc, char **argv);    /* distill/cmd_tokenize.c */
int cmd_tokenize(int argc, char **argv);  /* distill/cmd_tokenize.c */
int cmd_check_ref(int argc, char **argv); /* distill/cmd_check_ref.c */
int cmd_generate(int argc, char **argv);  /* distill/cmd_generate.c */
int cmd_distill(int argc, char **argv);   /* distill/cmd_distill.c */
int cmd_report(int argc, char **argv);    /* distill/cmd_report.c */
int cmd_eval(int argc, char **argv);      /* distill/cmd_eval.c */
int cmd_sample(int argc, char **argv);    /* distill/cmd_sample.c */
int cmd_export(int argc, char **argv);    /* distill/cmd_export.c */

/* Small argument helpers shared by the commands (distill/args.c). */
/* Value of "--name VALUE" or NULL; sets *bad when the flag is last with no value. */
const char *sd_arg_value(int argc, char **argv, const char *name);
int sd_arg_flag(int argc, char **argv, const char *name);
/* Parses a number flag; SD_ERR_INPUT naming the flag when it is not a number. */
int sd_arg_int(int argc, char **argv, const char *name, long def, long *out);
int sd_arg_double(int argc, char **argv, const char *name, double def, double *out);
/* Every argument that starts with "--" must be one of the NULL-terminated known names
 * (flags with values listed in with_value). SD_ERR_INPUT names an unknown one. */
int sd_args_check(int argc, char **argv, const char *const *with_value, const char *const *flags);
/* The i-th argument that is neither a flag nor a flag's value (0-based), or NULL. */
const char *sd_arg_positional(int argc, char **argv, const char *const *with_value, int i);
/* A context for "--device" (NULL or "cpu": the CPU with nthreads, 0 = all cores; "cuda": the
 * first GPU).  SD_ERR_INPUT naming the flag for anything else or a build without CUDA.
 * Release a CUDA context with sd_ctx_free_cuda (kernels/cuda/cuda_ctx.h). */
int sd_args_ctx(const char *device, int nthreads, sd_ctx *ctx);

#endif
