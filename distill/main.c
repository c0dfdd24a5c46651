/* ssdistill: distil a pretrained Transformer into a Mamba-2 student. DESIGN.md section 7. */
#include "common/error.h"
#include "distill/commands.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} command;

static const command g_commands[] = {
    {"convert", cmd_convert, "convert --from PATH --out teacher.h5   HF dir or llama2.c .bin to a checkpoint"},
    {"inspect", cmd_inspect, "inspect FILE                           config and tensor table of a checkpoint or safetensors file"},
    {"check-ref", cmd_check_ref, "check-ref --model M REF.safetensors    relative error against Hugging Face reference outputs"},
    {"encode", cmd_encode, "encode --tokenizer T                   JSON string per line on stdin -> JSON id array per line"},
    {"tokenize", cmd_tokenize, "tokenize --tokenizer T --in F --out S  text or jsonl to a token shard"},
    {"distill", cmd_distill, "distill RECIPE [--out DIR] [--resume] [--stop-after N]  runs the stages; writes the run directory"},
    {"report", cmd_report, "report RUN_DIR [--out FILE]            the run's metrics, evaluations and recipe as one HTML page"},
    {"generate", cmd_generate, "generate --model M --tokenizer T [--prompt TEXT] [--greedy | --temperature X --top-p P] [--tokens N]"},
    {"sample", cmd_sample, "sample --teacher T --out S --tokens N [--seq-len L] [--temperature X] [--top-p P] [--seed S]  a corpus sampled from the teacher"},
    {"eval", cmd_eval, "eval --model M [--teacher T] --data D [--tokenizer J] [--seq-len L] [--tokens N] [--batch B] [--out F]  ppl, KL, top-1 as JSON"},
    {"export", cmd_export, "export --model M --format llamba|mamba_ssm|hf-mamba2 --out DIR [--tokenizer-from DIR]  a student for other libraries"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: ssdistill COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++) fprintf(f, "  %s\n", g_commands[i].help);
    fprintf(f, "\nbenchmarks are separate programs in build/bench/ (see bench/)\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++) {
        if (strcmp(argv[1], g_commands[i].name) != 0) continue;
        int rc = g_commands[i].run(argc - 1, argv + 1);
        if (rc != SD_OK) fprintf(stderr, "ssdistill %s: %s\n", argv[1], sd_errmsg());
        return sd_exit_code(rc);
    }
    fprintf(stderr, "ssdistill: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
