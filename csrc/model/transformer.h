// The one description of a decoder-only transformer (Qwen2, Llama) that every
// backend executes. It owns the activation buffers and the KV cache on the
// backend and issues the backend's ops in order.
#pragma once

#include <memory>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/weights.h"

namespace mn {

struct TransformerOptions {
    int n_ctx = 0;              // KV cache length in tokens
    DType kv_type = DType::F16;
    int max_batch = 256;        // prompt tokens per prefill chunk
};

// Per-layer hidden states captured during eval() for comparison with a reference:
// states[0] is the embedding output, states[i] the residual stream after layer i
// (before the final norm), each [n_tokens][d_model].
struct HiddenCapture {
    std::vector<std::vector<float>> states;
};

class Transformer {
public:
    Transformer(ModelConfig config, ModelWeights weights, std::unique_ptr<Backend> backend,
                const TransformerOptions& options);
    ~Transformer();
    Transformer(const Transformer&) = delete;
    Transformer& operator=(const Transformer&) = delete;

    // Appends `n` tokens after the n_past() cached ones. Writes the logits of
    // the last token to `logits` ([vocab]), or of every token ([n][vocab]) when
    // all_logits. Token ids and the context length are validated by the caller.
    void eval(const int32_t* tokens, int n, float* logits, bool all_logits, HiddenCapture* capture);

    // Throws InvalidArgument if n more tokens would overflow the KV cache (the
    // check eval and eval_top_k make first; 64-bit so callers can ask before narrowing n).
    void check_append(int64_t n) const;
    // Like eval() for the last token's logits, but returns only the k largest (descending, ties by
    // lower id) as ids and values: a GPU backend selects them on the device, so only 2k numbers
    // cross to the host per token.
    // log_sum_exp (nullable): log(sum(exp(logits))) of the same row, so callers get
    // log-probabilities of the returned tokens without the vocabulary-sized row.
    // Greedy decoding (k = 1, each call's token the previous call's top-1) lets the backend run
    // the next step ahead (Backend::top_k_run_ahead): same results, less waiting on the host.
    void eval_top_k(const int32_t* tokens, int n, int k, int32_t* ids, float* vals, float* log_sum_exp = nullptr);

    int n_past() const { return n_past_; }
    int n_ctx() const { return options_.n_ctx; }
    void reset() {
        n_past_ = 0;
        last_top1_ = -1;
    }
    // Forgets cached positions from n on (n <= n_past()).
    void truncate(int n) {
        n_past_ = n;
        last_top1_ = -1;
    }

    const ModelConfig& config() const { return config_; }
    Backend& backend() { return *backend_; }

private:
    struct TopK {
        int k;
        int32_t* ids;
        float* vals;
        float* log_sum_exp;  // nullable
        bool run_ahead;  // the caller decodes greedily: Backend::top_k_run_ahead
    };
    void forward_chunk(const int32_t* tokens, int rows, float* logits, bool all_logits, HiddenCapture* capture,
                       const TopK* top_k = nullptr);
    void capture_rows(HiddenCapture* capture, int index, int rows);

    ModelConfig config_;
    ModelWeights weights_;
    std::unique_ptr<Backend> backend_;
    TransformerOptions options_;
    int n_past_ = 0;
    int last_top1_ = -1;  // the top-1 token of the last eval_top_k (-1: none, or the cache changed since)
    int logits_rows_ = 0;  // rows the logits buffer holds

    std::vector<KVLayer> kv_;
    Buffer x_, h_, q_, k_, v_, att_, gate_, up_, logits_;
};

}  // namespace mn
