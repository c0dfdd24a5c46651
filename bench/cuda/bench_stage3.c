/* Stage-3 step throughput at model scale on the GPU (issue 5's table): a Llama-3.2-1B-shaped
 * teacher (d 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, vocab 128256, tied; random
 * weights) and a Llamba-1B-shaped student (the teacher's blocks with the discrete mixer, 32
 * heads of 64, N 64, B/C per head; MOHAWK init from that teacher), batch 8 x 2048, AdamW.
 * One step = teacher forward (logits) + student forward/backward of (1 - w) T^2 KL + w CE +
 * clip + AdamW + the BF16 refresh of the student's matrices: what `distill` runs per stage-3
 * step.  Prints one JSON line: ms/step, tokens/s, peak device memory, and model FLOP/s
 * (2 N_teacher + 6 N_student per token, the accounting).  A benchmark, never a test.
 *
 *   bench_stage3 [--batch 8] [--seq 2048] [--steps 5] [--layers 16] */
#include "common/error.h"
#include "distill/device_weights.h"
#include "distill/dist.h"
#include "distill/optimizer.h"
#include "distill/stages.h"
#include "distill/student_train.h"
#include "distill/teacher.h"
#include "distill/transfer.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_ctx.h"
#include "kernels/tensor_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static sd_model_config llama_1b(int layers) {
    sd_model_config c;
    memset(&c, 0, sizeof c);
    c.arch = SD_ARCH_LLAMA;
    snprintf(c.model_type, sizeof c.model_type, "llama");
    snprintf(c.hidden_act, sizeof c.hidden_act, "silu");
    c.vocab_size = 128256;
    c.hidden_size = 2048;
    c.num_layers = layers;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 64;
    c.intermediate_size = 8192;
    c.max_position_embeddings = 131072;
    c.norm_eps = 1e-5f;
    c.tie_word_embeddings = 1;
    c.bos_token_id = c.eos_token_id = -1;
    c.rope = (sd_rope_config){.head_dim = 64, .rotary_dim = 64, .theta = 500000.0};
    return c;
}

/* Uniform values of standard deviation sd (norm weights: 1 +- 0.1), filled in parallel from
 * a per-chunk seed: fast enough for a billion parameters, the same on every run. */
static void fill(float *p, int64_t n, float sd, float center, uint64_t seed) {
    const int64_t chunk = 1 << 20;
    #pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        uint64_t st;
        sd_rng_seed(&st, seed * 1000003u + (uint64_t)(c0 / chunk));
        int64_t end = c0 + chunk < n ? c0 + chunk : n;
        for (int64_t i = c0; i < end; i++) p[i] = center + sd * 1.7320508f * (2.0f * sd_rng_uniform(&st) - 1.0f);
    }
}

static int add(sd_weights *w, const char *name, int64_t d0, int64_t d1, float sd, float center, uint64_t seed) {
    sd_tensor t;
    SD_TRY(sd_tensor_f32(&t, d1 ? 2 : 1, d0, d1, 0, 0));
    fill(t.data, sd_numel(&t), sd, center, seed);
    return sd_weights_add(w, name, t);
}

static int random_teacher(const sd_model_config *c, sd_teacher *t) {
    sd_weights w;
    sd_weights_init(&w);
    int64_t d = c->hidden_size, q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim,
            I = c->intermediate_size;
    float sd_d = 1.0f / sqrtf((float)d), sd_i = 1.0f / sqrtf((float)I);
    uint64_t seed = 1;
    int rc = add(&w, "model.embed_tokens.weight", c->vocab_size, d, 1.0f, 0, seed++);
    if (rc == SD_OK) rc = add(&w, "model.norm.weight", d, 0, 0.06f, 1.0f, seed++);
    for (int l = 0; rc == SD_OK && l < c->num_layers; l++) {
        char n[160];
#define ADD(suffix, d0, d1, sd, center)                                                  \
        if (rc == SD_OK) {                                                               \
            snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix);                      \
            rc = add(&w, n, d0, d1, sd, center, seed++);                                 \
        }
        ADD("input_layernorm.weight", d, 0, 0.06f, 1.0f);
        ADD("post_attention_layernorm.weight", d, 0, 0.06f, 1.0f);
        ADD("self_attn.q_proj.weight", q, d, sd_d, 0);
        ADD("self_attn.k_proj.weight", kv, d, sd_d, 0);
        ADD("self_attn.v_proj.weight", kv, d, sd_d, 0);
        ADD("self_attn.o_proj.weight", d, q, sd_d, 0);
        ADD("mlp.gate_proj.weight", I, d, sd_d, 0);
        ADD("mlp.up_proj.weight", I, d, sd_d, 0);
        ADD("mlp.down_proj.weight", d, I, sd_i, 0);
#undef ADD
    }
    if (rc == SD_OK) rc = sd_teacher_init(t, c, &w, "random teacher");
    sd_weights_free(&w);
    return rc;
}

typedef struct {
    sd_ctx ctx;
    sd_teacher t;
    sd_student s, g;
    sd_weights master, params, grads;
    sd_optimizer opt;
    sd_dist dist;     /* several GPUs (WORLD_SIZE, RANK, LOCAL_RANK; or SSDISTILL_DIST=1): ZeRO-1 */
    sd_zero_opt zero;
    sd_student_acts a;
    sd_tensor tl;
    int64_t n_teacher, n_student;
} bench;

/* Parameters of a set (a tied head is one tensor, counted once). */
static int64_t count_params(const sd_weights *w) {
    int64_t n = 0;
    for (int i = 0; i < w->n; i++) n += sd_numel(&w->items[i].t);
    return n;
}

/* Teacher and student on the GPU: student masters F32, compute set BF16 (distill/run.c's
 * layout), its gradients and AdamW moments F32. */
static int setup(bench *b, int layers, int64_t B, int64_t T) {
    sd_model_config tc = llama_1b(layers), sc;
    SD_TRY(sd_dist_from_env(&b->dist));
    SD_TRY(sd_ctx_init_cuda(&b->ctx, b->dist.local_rank));
    if (sd_dist_wanted(&b->dist)) {
        const char *id = getenv("SSDISTILL_NCCL_ID");
        SD_TRY(sd_dist_init(&b->dist, &b->ctx, id && *id ? id : "bench_stage3.nccl.id"));
    }
    double t0 = now();
    SD_TRY(random_teacher(&tc, &b->t));
    sd_student_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.mixer = SD_MIXER_DISCRETE;
    spec.num_heads = 32;
    spec.head_dim = 64;
    spec.state_size = 64;
    spec.n_groups = 32;
    spec.conv_kernel = 4;
    spec.chunk_size = 128;
    spec.init = SD_INIT_MOHAWK;
    SD_TRY(sd_student_config_for(&tc, &spec, "bench student", &sc));
    sd_student host;
    SD_TRY(sd_student_from_teacher(&b->t, &sc, SD_INIT_MOHAWK, 7, &host));
    b->n_teacher = count_params(&b->t.w);
    b->n_student = count_params(&host.w);
    fprintf(stderr, "bench_stage3: random models in %.1f s (teacher %.3f B, student %.3f B parameters)\n", now() - t0,
            b->n_teacher / 1e9, b->n_student / 1e9);
    SD_TRY(sd_teacher_to_ctx(&b->ctx, &b->t));
    sd_weights compute;
    SD_TRY(sd_weights_mixed(&b->ctx, &host.w, &b->master, &compute));
    sd_student_free(&host);
    SD_TRY(sd_student_init(&b->s, &sc, &compute, "bench student"));
    sd_weights_free(&compute);
    SD_TRY(sd_student_grads_init(&b->s, &b->g));
    sd_weights_init(&b->params);
    sd_weights_init(&b->grads);
    for (int i = 0; i < b->master.n; i++) {
        sd_tensor p = b->master.items[i].t, gv = b->g.w.items[i].t;
        p.owns = gv.owns = 0;
        SD_TRY(sd_weights_add(&b->params, b->master.items[i].name, p));
        SD_TRY(sd_weights_add(&b->grads, b->g.w.items[i].name, gv));
    }
    sd_adamw_config ac = sd_adamw_config_default();
    if (b->dist.active) SD_TRY(sd_dist_zero_begin(&b->dist, &b->ctx, &b->zero, &b->s, &b->g, &b->params, &ac));
    else SD_TRY(sd_optimizer_init(&b->opt, &b->params, &ac));
    SD_TRY(sd_student_acts_init(&b->ctx, &b->a, &sc, B, T));
    return sd_tensor_act(&b->ctx, &b->tl, 3, B, T, tc.vocab_size, 0);
}

/* One step; phase[0..2] += seconds of the teacher forward, the student's forward and
 * backward (stage 3; with several ranks the gradient buckets' reduce-scatter overlaps it),
 * and clip + AdamW + refresh (+ the all-gather), each phase synchronised at its end. */
static int step(bench *b, const sd_tensor *ids, float *loss, double *phase) {
    double t0 = now();
    SD_TRY(sd_student_grads_zero(&b->ctx, &b->g));
    SD_TRY(sd_teacher_forward(&b->ctx, &b->t, ids, NULL, &b->tl, NULL));
    SD_TRY(sd_cuda_sync(&b->ctx));
    double t1 = now();
    SD_TRY(sd_stage3(&b->ctx, &b->s, ids, &b->a, &b->tl, 2.0f, 0.1f, loss, &b->g));
    SD_TRY(sd_cuda_sync(&b->ctx));
    double t2 = now(), gn;
    if (b->dist.active) SD_TRY(sd_dist_zero_step(&b->dist, &b->ctx, &b->zero, &b->params, 1e-4f, 1.0f, &gn));
    else SD_TRY(sd_optimizer_step(&b->opt, &b->ctx, &b->params, &b->grads, 1e-4f, 1.0f, &gn));
    SD_TRY(sd_weights_refresh(&b->ctx, &b->s.w, &b->master));
    SD_TRY(sd_cuda_sync(&b->ctx));
    phase[0] += t1 - t0;
    phase[1] += t2 - t1;
    phase[2] += now() - t2;
    return SD_OK;
}

static long arg(int argc, char **argv, const char *name, long def) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return strtol(argv[i + 1], NULL, 10);
    return def;
}

int main(int argc, char **argv) {
    int64_t B = arg(argc, argv, "--batch", 8), T = arg(argc, argv, "--seq", 2048);
    int steps = (int)arg(argc, argv, "--steps", 5), layers = (int)arg(argc, argv, "--layers", 16);
    if (sd_cuda_device_count() == 0) {
        fprintf(stderr, "bench_stage3: no CUDA device\n");
        return 0;
    }
    bench b;
    memset(&b, 0, sizeof b);
    int rc = setup(&b, layers, B, T);
    sd_tensor ids = {0};
    if (rc == SD_OK) {
        int64_t shape[2] = {B, T};
        rc = sd_tensor_alloc(&ids, SD_I32, 2, shape);
        uint64_t st;
        sd_rng_seed(&st, 3 + (uint64_t)b.dist.rank); /* each rank its own batch */
        for (int64_t i = 0; rc == SD_OK && i < B * T; i++) ((int32_t *)ids.data)[i] = (int32_t)(sd_rng_u64(&st) % 128256);
    }
    float loss = 0;
    double t_first = 0, t_sum = 0, phase[3] = {0, 0, 0}, warm[3] = {0, 0, 0};
    for (int i = 0; rc == SD_OK && i <= steps; i++) {
        double t0 = now();
        rc = step(&b, &ids, &loss, i == 0 ? warm : phase);
        double dt = now() - t0;
        if (i == 0) t_first = dt; /* warm-up: first allocations, cuBLASLt heuristics */
        else t_sum += dt;
        if (rc == SD_OK) fprintf(stderr, "step %d: %.1f ms, loss %.4f\n", i, dt * 1e3, loss);
    }
    int world = b.dist.active ? b.dist.world : 1;
    if (rc == SD_OK && b.dist.rank == 0) {
        /* weak scaling: every rank B sequences, the global batch world * B */
        double ms = t_sum / steps * 1e3, tps = (double)(B * T) * world / (t_sum / steps);
        double flop = (2.0 * b.n_teacher + 6.0 * b.n_student) * (double)(B * T) / (t_sum / steps); /* per GPU */
        printf("{\"bench\":\"stage3_step\",\"teacher\":\"llama-3.2-1b shape\",\"student\":\"llamba-1b shape\","
               "\"world\":%d,\"dist\":%d,\"batch_per_gpu\":%lld,\"seq\":%lld,\"layers\":%d,\"steps\":%d,\"ms_per_step\":%.1f,\"first_step_ms\":%.1f,"
               "\"tokens_per_s\":%.0f,\"peak_gib\":%.2f,\"model_tflops\":%.1f,\"mfu_989\":%.3f,\"loss\":%.4f,"
               "\"ms_teacher_fwd\":%.1f,\"ms_student_fwd_bwd\":%.1f,\"ms_optimizer\":%.1f,"
               "\"anchor\":{\"ms_per_step\":637,\"tokens_per_s\":25700,\"peak_gib\":110},"
               "\"goal\":{\"tokens_per_s\":55000,\"peak_gib\":70}}\n",
               world, b.dist.active, (long long)B, (long long)T, layers, steps, ms, t_first * 1e3, tps, sd_cuda_peak_used() / 1073741824.0,
               flop / 1e12, flop / 989e12, loss, phase[0] / steps * 1e3, phase[1] / steps * 1e3,
               phase[2] / steps * 1e3);
    } else if (rc != SD_OK) {
        fprintf(stderr, "bench_stage3 (rank %d): %s\n", b.dist.rank, sd_errmsg());
    }
    sd_tensor_free(&ids);
    sd_tensor_free(&b.tl);
    sd_student_acts_free(&b.a);
    if (b.dist.active) sd_zero_free(&b.zero);
    else sd_optimizer_free(&b.opt);
    sd_weights_free(&b.params);
    sd_weights_free(&b.grads);
    sd_student_free(&b.g);
    sd_student_free(&b.s);
    sd_weights_free(&b.master);
    sd_teacher_free(&b.t);
    sd_dist_free(&b.dist);
    sd_ctx_free_cuda(&b.ctx);
    return rc == SD_OK ? 0 : 1;
}
