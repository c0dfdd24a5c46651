#include "distill/sampler.h"
#include "common/error.h"
#include "kernels/context.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int sd_sampler_init(sd_sampler *s, int vocab, int greedy, float temperature, float top_p, uint64_t seed) {
    memset(s, 0, sizeof *s);
    if (!greedy && !(temperature > 0))
        return sd_fail(SD_ERR_INPUT, "--temperature: must be > 0 (use --greedy for argmax), got %g", temperature);
    if (!greedy && !(top_p > 0 && top_p <= 1))
        return sd_fail(SD_ERR_INPUT, "--top-p: must be in (0, 1], got %g", top_p);
    s->greedy = greedy;
    s->temperature = temperature;
    s->top_p = top_p;
    s->vocab = vocab;
    sd_rng_seed(&s->rng, seed);
    s->probs = sd_malloc((size_t)vocab * sizeof(float), "sampler");
    s->order = sd_malloc((size_t)vocab * sizeof(int), "sampler");
    if (!s->probs || !s->order) {
        sd_sampler_free(s);
        return SD_ERR_SYS;
    }
    return SD_OK;
}

void sd_sampler_free(sd_sampler *s) {
    free(s->probs);
    free(s->order);
    s->probs = NULL;
    s->order = NULL;
}

int sd_argmax(const float *logits, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

static const float *g_sort_probs; /* qsort has no context argument in C11 */

static int by_prob_desc(const void *a, const void *b) {
    float pa = g_sort_probs[*(const int *)a], pb = g_sort_probs[*(const int *)b];
    if (pa != pb) return pa > pb ? -1 : 1;
    return *(const int *)a - *(const int *)b; /* stable order: same seed, same text */
}

int sd_sample(sd_sampler *s, const float *logits) {
    if (s->greedy) return sd_argmax(logits, s->vocab);
    int n = s->vocab;
    float mx = logits[sd_argmax(logits, n)];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        s->probs[i] = expf((logits[i] - mx) / s->temperature);
        sum += s->probs[i];
        s->order[i] = i;
    }
    for (int i = 0; i < n; i++) s->probs[i] = (float)(s->probs[i] / sum);
    /* Nucleus: the most probable tokens until their mass reaches top_p, renormalised. */
    g_sort_probs = s->probs;
    qsort(s->order, (size_t)n, sizeof(int), by_prob_desc);
    int keep = 0;
    double mass = 0;
    while (keep < n && (keep == 0 || mass < s->top_p)) mass += s->probs[s->order[keep++]];
    double r = sd_rng_uniform(&s->rng) * mass, acc = 0;
    for (int i = 0; i < keep; i++) {
        acc += s->probs[s->order[i]];
        if (r < acc) return s->order[i];
    }
    return s->order[keep - 1];
}
