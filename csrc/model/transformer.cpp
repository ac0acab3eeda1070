#include "model/transformer.h"

#include <algorithm>

#include "common/error.h"

namespace mn {

namespace {

// A view of `rows` rows of `width` starting at row `row` (device memory is linear on every backend).
Buffer rows_of(const Buffer& b, int64_t row, int64_t rows, int64_t width) {
    Buffer v = b;
    v.data = static_cast<char*>(b.data) + row * width * int64_t(dtype_size(b.dtype));
    v.n = rows * width;
    return v;
}

// LM-head rows computed per backend call when every position's logits are
// wanted: bounds the logits buffer to a few rows of the (large) vocabulary.
constexpr int kLogitsRows = 8;

}  // namespace

Transformer::Transformer(ModelConfig config, ModelWeights weights, std::unique_ptr<Backend> backend,
                         const TransformerOptions& options)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(std::move(backend)), options_(options) {
    if (options_.n_ctx < 1) throw InvalidArgument("n_ctx must be >= 1, got " + std::to_string(options_.n_ctx));
    if (options_.max_batch < 1) throw InvalidArgument("max_batch must be >= 1");
    Backend& be = *backend_;
    be.upload(weights_.token_embd);
    be.upload(weights_.output_norm);
    if (weights_.tied_output) weights_.output = weights_.token_embd;
    else be.upload(weights_.output);
    for (LayerWeights& l : weights_.layers) {
        for (WeightTensor* w : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down})
            be.upload(*w);
        if (l.has_qkv_bias)
            for (WeightTensor* w : {&l.bq, &l.bk, &l.bv}) be.upload(*w);
    }

    const int64_t B = options_.max_batch, d = config_.d_model;
    const int64_t q_dim = int64_t(config_.n_heads) * config_.head_dim;
    const int64_t kv_dim = int64_t(config_.n_kv_heads) * config_.head_dim;
    x_ = be.alloc(B * d, DType::F32);
    h_ = be.alloc(B * std::max(d, q_dim), DType::F32);
    q_ = be.alloc(B * q_dim, DType::F32);
    k_ = be.alloc(B * kv_dim, DType::F32);
    v_ = be.alloc(B * kv_dim, DType::F32);
    att_ = be.alloc(B * q_dim, DType::F32);
    gate_ = be.alloc(B * config_.d_ff, DType::F32);
    up_ = be.alloc(B * config_.d_ff, DType::F32);
    logits_rows_ = kLogitsRows;
    logits_ = be.alloc(int64_t(logits_rows_) * weights_.output.ne1, DType::F32);
    kv_.resize(config_.n_layers);
    for (KVLayer& layer : kv_) {
        layer.k = be.alloc(int64_t(options_.n_ctx) * kv_dim, options_.kv_type);
        layer.v = be.alloc(int64_t(options_.n_ctx) * kv_dim, options_.kv_type);
    }
}

Transformer::~Transformer() {
    Backend& be = *backend_;
    for (Buffer* b : {&x_, &h_, &q_, &k_, &v_, &att_, &gate_, &up_, &logits_}) be.release(*b);
    for (KVLayer& layer : kv_) {
        be.release(layer.k);
        be.release(layer.v);
    }
}

void Transformer::check_append(int64_t n) const {
    if (n_past_ + n > options_.n_ctx)
        throw InvalidArgument("context overflow: " + std::to_string(n_past_) + " cached + " + std::to_string(n) +
                              " new tokens exceed n_ctx " + std::to_string(options_.n_ctx));
}

void Transformer::eval(const int32_t* tokens, int n, float* logits, bool all_logits, HiddenCapture* capture) {
    if (n < 1) throw InvalidArgument("eval needs at least one token");
    check_append(n);
    last_top1_ = -1;
    if (capture) capture->states.assign(config_.n_layers + 1, {});
    const int64_t vocab = weights_.output.ne1;
    for (int done = 0; done < n;) {
        const int rows = std::min(options_.max_batch, n - done);
        const bool last_chunk = done + rows == n;
        float* out = nullptr;
        if (all_logits) out = logits + int64_t(done) * vocab;
        else if (last_chunk) out = logits;
        forward_chunk(tokens + done, rows, out, all_logits, capture);
        done += rows;
    }
}

void Transformer::eval_top_k(const int32_t* tokens, int n, int k, int32_t* ids, float* vals, float* log_sum_exp) {
    if (n < 1) throw InvalidArgument("eval needs at least one token");
    const int64_t vocab = weights_.output.ne1;
    if (k < 1 || k > vocab)
        throw InvalidArgument("top_k must be in [1, " + std::to_string(vocab) + "], got " + std::to_string(k));
    check_append(n);
    // Greedy decoding: this one-row step's token is the last step's top-1, and the next position
    // fits the cache, so the next step can start before the host has this one's result.
    const bool greedy = n == 1 && k == 1 && tokens[0] == last_top1_ && n_past_ + 2 <= options_.n_ctx;
    last_top1_ = -1;
    if (n == 1 && backend_->take_ahead(tokens[0], n_past_, k, ids, vals, log_sum_exp, greedy)) {
        n_past_ += 1;
        last_top1_ = ids[0];
        return;
    }
    const TopK request{k, ids, vals, log_sum_exp, greedy};
    for (int done = 0; done < n;) {
        const int rows = std::min(options_.max_batch, n - done);
        const bool last_chunk = done + rows == n;
        forward_chunk(tokens + done, rows, nullptr, false, nullptr, last_chunk ? &request : nullptr);
        done += rows;
    }
    last_top1_ = ids[0];
}

void Transformer::capture_rows(HiddenCapture* capture, int index, int rows) {
    if (!capture) return;
    auto& dst = capture->states[index];
    const size_t old = dst.size();
    dst.resize(old + size_t(rows) * config_.d_model);
    backend_->read(x_, 0, int64_t(rows) * config_.d_model, dst.data() + old);
}

void Transformer::forward_chunk(const int32_t* tokens, int rows, float* logits, bool all_logits,
                                HiddenCapture* capture, const TopK* top_k) {
    Backend& be = *backend_;
    const ModelConfig& c = config_;
    const AttentionShape shape = c.attention_shape();
    const int d = c.d_model;
    const int pos0 = n_past_;
    // A pass that produces output and reads nothing back before it is the same op sequence every time.
    be.begin_step(rows, pos0, capture == nullptr && (logits != nullptr || top_k != nullptr));

    be.embed(weights_.token_embd, tokens, rows, x_);
    capture_rows(capture, 0, rows);
    for (int li = 0; li < c.n_layers; ++li) {
        const LayerWeights& l = weights_.layers[li];
        // Attention block: x += Wo * attention(rope(Wq h), rope(Wk h), Wv h), h = norm(x).
        be.rms_norm(x_, l.attn_norm, c.rms_eps, rows, d, h_);
        be.matmul(l.wq, h_, rows, q_, l.has_qkv_bias ? &l.bq : nullptr);
        be.matmul(l.wk, h_, rows, k_, l.has_qkv_bias ? &l.bk : nullptr);
        be.matmul(l.wv, h_, rows, v_, l.has_qkv_bias ? &l.bv : nullptr);
        be.rope(q_, k_, rows, pos0, shape, c.rope_base, c.rope_style);
        be.attention(q_, k_, v_, kv_[li], options_.n_ctx, rows, pos0, shape, att_);
        be.matmul(l.wo, att_, rows, h_, nullptr);
        be.add(x_, h_, int64_t(rows) * d);
        // Feed-forward block: x += W_down (silu(W_gate h) * W_up h), h = norm(x).
        be.rms_norm(x_, l.ffn_norm, c.rms_eps, rows, d, h_);
        be.matmul(l.w_gate, h_, rows, gate_, nullptr);
        be.matmul(l.w_up, h_, rows, up_, nullptr);
        be.swiglu(gate_, up_, int64_t(rows) * c.d_ff, gate_);
        be.matmul(l.w_down, gate_, rows, h_, nullptr);
        be.add(x_, h_, int64_t(rows) * d);
        capture_rows(capture, li + 1, rows);
    }
    if (!logits && !top_k) {
        be.end_step();
        n_past_ += rows;
        return;
    }

    // LM head on the last row only, unless every position's logits are wanted.
    const int64_t vocab = weights_.output.ne1;
    if (top_k) {
        Buffer in = rows_of(x_, rows - 1, 1, d);
        Buffer normed = rows_of(h_, 0, 1, d);
        be.rms_norm(in, weights_.output_norm, c.rms_eps, 1, d, normed);
        be.matmul(weights_.output, normed, 1, logits_, nullptr);
        if (top_k->run_ahead)
            be.top_k_run_ahead(logits_, 0, vocab, top_k->k, top_k->ids, top_k->vals, top_k->log_sum_exp);
        else
            be.top_k(logits_, 0, vocab, top_k->k, top_k->ids, top_k->vals, top_k->log_sum_exp);
        be.end_step();
        n_past_ += rows;
        return;
    }
    const int first = all_logits ? 0 : rows - 1;
    for (int r = first; r < rows; r += logits_rows_) {
        const int n = std::min(logits_rows_, rows - r);
        Buffer in = rows_of(x_, r, n, d);
        Buffer normed = rows_of(h_, 0, n, d);
        be.rms_norm(in, weights_.output_norm, c.rms_eps, n, d, normed);
        be.matmul(weights_.output, normed, n, logits_, nullptr);
        be.read(logits_, 0, int64_t(n) * vocab, logits + int64_t(r - first) * vocab);
    }
    be.end_step();
    n_past_ += rows;
}

}  // namespace mn
