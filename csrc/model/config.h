// A model's architecture and dimensions, read from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace mn {

class GGUFFile;

enum class Arch { Qwen2, Llama };

struct ModelConfig {
    std::string arch_name;     // as in general.architecture
    Arch arch = Arch::Llama;
    int n_layers = 0;
    int d_model = 0;
    int n_heads = 0;
    int n_kv_heads = 0;
    int head_dim = 0;
    int d_ff = 0;
    int vocab_size = 0;
    int n_ctx_train = 0;
    float rms_eps = 1e-5f;
    float rope_base = 10000.0f;
    RopeStyle rope_style = RopeStyle::Normal;

    AttentionShape attention_shape() const { return {n_heads, n_kv_heads, head_dim}; }

    // Reads `<arch>.*` keys; throws GGUFError naming the key for missing or
    // out-of-range values and InvalidArgument-style errors for unsupported architectures.
    static ModelConfig from_gguf(const GGUFFile& file);
};

// The architectures this engine can run (for error messages and the Python API).
const std::vector<std::string>& supported_architectures();

}  // namespace mn
