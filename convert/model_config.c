#include "convert/model_config.h"

const char *sd_arch_name(sd_arch a) {
    switch (a) {
    case SD_ARCH_LLAMA: return "llama";
    case SD_ARCH_MISTRAL: return "mistral";
    case SD_ARCH_QWEN2: return "qwen2";
    case SD_ARCH_PHI: return "phi";
    case SD_ARCH_GPT2: return "gpt2";
    case SD_ARCH_MAMBA2: return "mamba2";
    case SD_ARCH_STUDENT: return "ssdistill_student";
    }
    return "?";
}
