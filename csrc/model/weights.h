// The weights of a decoder-only transformer, as views into the GGUF mapping.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace mn {

struct TensorInfo;

struct LayerWeights {
    WeightTensor attn_norm, wq, wk, wv, wo;
    WeightTensor bq, bk, bv;  // present when has_qkv_bias
    bool has_qkv_bias = false;
    WeightTensor ffn_norm, w_gate, w_up, w_down;
};

struct ModelWeights {
    WeightTensor token_embd, output_norm, output;  // output == token_embd when tied
    bool tied_output = false;
    std::vector<LayerWeights> layers;
};

// What the loader needs of a (possibly split) GGUF file: a tensor's info and
// a pointer to its bytes, or {nullptr, nullptr} when absent.
struct TensorLookup {
    const TensorInfo* info = nullptr;
    const void* data = nullptr;
};
using FindTensor = std::function<TensorLookup(const std::string& name)>;

// Binds every tensor the architecture needs, checking presence, shape and type.
// Errors name the tensor and the shape expected.
ModelWeights load_weights(const ModelConfig& config, const FindTensor& find, const std::string& path);

}  // namespace mn
