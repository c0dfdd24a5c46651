/* Next-token choice from a row of logits: greedy, or temperature + nucleus (top-p). */
#ifndef SD_SAMPLER_H
#define SD_SAMPLER_H

#include <stdint.h>

typedef struct {
    int greedy;
    float temperature; /* > 0 */
    float top_p;       /* (0, 1]: keep the smallest set of tokens whose probability reaches top_p */
    uint64_t rng;      /* sd_rng state */
    /* scratch, sized to the vocabulary by sd_sampler_init */
    float *probs;
    int *order;
    int vocab;
} sd_sampler;

int sd_sampler_init(sd_sampler *s, int vocab, int greedy, float temperature, float top_p, uint64_t seed);
void sd_sampler_free(sd_sampler *s);
/* The highest logit (first one on ties), as torch.argmax. */
int sd_argmax(const float *logits, int n);
int sd_sample(sd_sampler *s, const float *logits);

#endif
