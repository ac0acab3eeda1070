// The interface every compute backend (CPU, CUDA, Metal) implements.
//
// The transformer (model/transformer.cpp) is written once against this
// interface: it allocates activation buffers on the backend, hands it the
// weights once, and then issues ops. Ops are asynchronous with respect to the
// host until synchronize() or read(); a backend may record them (CUDA graphs,
// one Metal command buffer) and replay them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "quant/formats.h"

namespace mn {

enum class DType : uint8_t { F32, F16 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }

// Device memory owned by a backend. For the CPU backend `data` is host memory.
struct Buffer {
    void* data = nullptr;
    int64_t n = 0;  // elements
    DType dtype = DType::F32;
    float* f32() const { return static_cast<float*>(data); }
};

// A weight as it is stored in the GGUF file: ne0 = input features (contiguous),
// ne1 = rows (output features). `host` points into the file mapping; `device`
// is the backend's copy (the CPU backend uses the mapping itself).
struct WeightTensor {
    std::string name;
    TensorType type = TensorType::F32;
    int64_t ne0 = 0, ne1 = 1;
    size_t row_bytes = 0;
    const void* host = nullptr;
    const void* device = nullptr;
};

// How RoPE pairs the dimensions of a head: NeoX style rotates (x[i], x[i+d/2])
// (qwen2 as converted to GGUF); Normal rotates adjacent pairs (x[2i], x[2i+1])
// (llama, whose Q/K the converter permuted).
enum class RopeStyle : uint8_t { Normal, NeoX };

// Geometry of one layer's attention, shared by the rope/attention ops.
struct AttentionShape {
    int n_heads = 0, n_kv_heads = 0, head_dim = 0;
};

// Per-layer key/value storage: [n_kv_heads][n_ctx][head_dim] so the keys of
// one head are contiguous for the score loop.
struct KVLayer {
    Buffer k, v;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual std::string name() const = 0;

    // ---- memory ----
    virtual Buffer alloc(int64_t n, DType dtype) = 0;
    virtual void release(Buffer& buffer) = 0;
    // Makes a weight usable by this backend's ops (CPU: keeps the mapped pointer).
    virtual void upload(WeightTensor& weight) = 0;
    // Copies n floats starting at element `offset` of src to host memory; waits for pending ops.
    virtual void read(const Buffer& src, int64_t offset, int64_t n, float* dst) = 0;
    virtual void synchronize() = 0;

    // ---- ops. Activations are row-major float32 [rows][width]. ----
    // out[i] = dequantized row ids[i] of table (ids are host memory, checked by the caller).
    virtual void embed(const WeightTensor& table, const int32_t* ids, int rows, Buffer& out) = 0;
    // out = x / rms(x) * weight, per row; out may alias x.
    virtual void rms_norm(const Buffer& x, const WeightTensor& weight, float eps, int rows, int width, Buffer& out) = 0;
    // out[r] = W x[r] (+ bias): x is [rows][w.ne0], out is [rows][w.ne1].
    virtual void matmul(const WeightTensor& w, const Buffer& x, int rows, Buffer& out, const WeightTensor* bias) = 0;
    // Rotates q ([rows][n_heads*head_dim]) and k ([rows][n_kv_heads*head_dim]) for positions pos0..pos0+rows-1.
    virtual void rope(Buffer& q, Buffer& k, int rows, int pos0, const AttentionShape& shape, float base, RopeStyle style) = 0;
    // Writes k and v rows into the cache at positions pos0.., then attends q over positions [0, pos0 + r]
    // for each row r (causal), with fp32 scores and softmax. out is [rows][n_heads*head_dim].
    virtual void attention(const Buffer& q, const Buffer& k, const Buffer& v, KVLayer& cache, int n_ctx, int rows,
                           int pos0, const AttentionShape& shape, Buffer& out) = 0;
    // out = silu(gate) * up, elementwise over n.
    virtual void swiglu(const Buffer& gate, const Buffer& up, int64_t n, Buffer& out) = 0;
    // x += y, elementwise over n.
    virtual void add(Buffer& x, const Buffer& y, int64_t n) = 0;
    // Copies `rows` rows of `width` floats from src (starting at row src_row) to dst.
    virtual void copy_rows(const Buffer& src, int src_row, int rows, int width, Buffer& dst) = 0;

    // ---- optional hooks ----
    // The transformer brackets each forward pass of `rows` tokens at positions pos0.. with these.
    // `replayable`: the pass issues the same ops on the same buffers as every other replayable pass
    // with the same `rows` (it reads nothing back before its output), so a backend may record it once
    // and replay it (CUDA graphs). An exception may leave a step open: begin_step must cope.
    virtual void begin_step(int rows, int pos0, bool replayable) {}
    virtual void end_step() {}
    // The k largest of the n floats at element `offset` of `src`, in descending order (ties: lower
    // index first), as indices into that row and values, and, if log_sum_exp is not null,
    // log(sum(exp(row))) (for log-probabilities without the whole row). Default: read the row and
    // select on the host.
    virtual void top_k(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
                       float* log_sum_exp);

    // ---- optional: greedy decoding run ahead ----
    // A caller decoding greedily feeds each one-row step the previous step's top-1 token. Between
    // two such steps the device would wait for the host's round trip; a backend that can may
    // instead start the next step at once. top_k_run_ahead is top_k at the end of a replayable
    // one-row step at position pos0 whose top-1 token the caller will most likely feed to the
    // next step: the backend may also launch that step (position pos0 + 1, the token taken on the
    // device, then the same top-k) before returning this one's result. The next step's
    // take_ahead collects it: if a step was run ahead for exactly (token, pos0, k, whether the
    // log-sum-exp is wanted), it writes that step's results, first running the step after it
    // ahead in turn when `further`, and returns true; otherwise the step run ahead is forgotten
    // (its writes - a cache row at pos0 and scratch - are rewritten before anything reads them)
    // and it returns false. Defaults: top_k, and nothing ever runs ahead.
    virtual void top_k_run_ahead(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
                                 float* log_sum_exp) {
        top_k(src, offset, n, k, ids, vals, log_sum_exp);
    }
    virtual bool take_ahead(int32_t token, int pos0, int k, int32_t* ids, float* vals, float* log_sum_exp,
                            bool further) {
        return false;
    }
    // Event counts since the backend was made, by name (what a backend does in its own way, such
    // as graph replays, for tests and diagnostics). Default: none.
    virtual std::vector<std::pair<std::string, int64_t>> counters() const { return {}; }
};

struct BackendOptions {
    int n_threads = 0;       // CPU: 0 = physical cores
    std::string isa = "auto";  // CPU kernel family
    // CPU: how activations enter the integer dot products. "q8" (default): one
    // 8-bit quantization (fastest; ~1e-3 relative error per product, as llama.cpp).
    // "q8x2": the 8-bit residual is quantized too (two dots per weight decode;
    // results within ~1e-5 of float). "auto": q8x2 for decode steps and small
    // batches, q8 for large prefill chunks.
    std::string activations = "q8";
};

// Whether make_backend(name) can succeed here: built in and, for GPUs, a device visible.
bool backend_available(const std::string& name);

// "cpu", "cuda", "metal" or "auto". Throws InvalidArgument for unknown or unavailable backends.
std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options);

}  // namespace mn
