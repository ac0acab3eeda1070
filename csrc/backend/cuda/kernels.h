// Host-side launchers of the CUDA backend's kernels (one .cu file per concern).
// Every launcher enqueues on `stream` and checks the launch; none synchronizes.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "quant/formats.h"

namespace mn::cuda {

// Decode timeline records (diagnostic builds; common.cuh says how they are taken).
struct TraceRec {
    unsigned long long t[6];  // 0: point not reached
    unsigned int tag;         // a pointer that tells the launches apart (weights, cache), / 256
    unsigned short block;
    unsigned char kind;       // 1 staged matvec, 2 row-pair matvec, 3 decode attention
    unsigned char pad;
    unsigned int pad2, pad3;
};
struct TraceSink {
    TraceRec* buf = nullptr;  // device; null: not tracing
    unsigned int* n = nullptr;
    unsigned int cap = 0;
};

// A weight matrix on the device in its GGUF format: N rows of K elements.
struct QMatrix {
    const uint8_t* data = nullptr;
    TensorType type = TensorType::F32;
    int K = 0, N = 0;
    size_t row_bytes = 0;
};

// ---- matvec.cu: few activation rows (decode). ----
// One product out = W x (+ bias) of a fused matvec launch. When `residual` is
// set the result is also added into it (the residual stream), fusing add().
struct MatvecJob {
    QMatrix w;
    const float* bias = nullptr;
    float* out = nullptr;
    float* residual = nullptr;
};

constexpr int kMaxMatvecJobs = 3;
constexpr int kMaxMatvecRows = 8;

// The input every job of one launch shares: x [rows][K]. With norm_weight set
// the input is rms_norm(x) * norm_weight (computed in the kernel; block 0 also
// writes it to norm_out when that is set). With swiglu_out set, jobs 0 and 1
// are gate and up of the same height and the kernel also writes
// swiglu_out = silu(gate) * up.
struct MatvecInput {
    const float* x = nullptr;
    int rows = 1;
    int K = 0;
    const float* norm_weight = nullptr;
    float eps = 0.0f;
    float* norm_out = nullptr;
    float* swiglu_out = nullptr;
};

void launch_matvec(const MatvecJob* jobs, int n_jobs, const MatvecInput& in, cudaStream_t stream);

// ---- matvec_q8.cu: one activation row (decode) as integer dot products. ----
// An input row quantized to blocks of 32: qs [K] int8 (16-byte aligned), ds [K / 32] = (d, d * sum q).
struct Q8Input {
    int8_t* qs = nullptr;
    float2* ds = nullptr;
};
// Types the integer path covers (the 32-element formats, Q4_K, Q5_K, Q6_K); the rest use launch_matvec.
bool matvec_q8_supported(TensorType t);
// The widest input the integer matvec takes (its quantized row lives in shared memory), and the
// widest that each of its blocks quantizes itself from the float row.
constexpr int kQ8MaxK = 32768;
constexpr int kQ8FusedMaxK = 8192;
// Where a launch's input comes from: the float row x (16-byte aligned; rms_norm(x) * norm_weight
// when norm_weight is set, which block 0 then also writes to norm_out when that is set), quantized
// inside the matvec (K <= kQ8FusedMaxK); or, with x null, `pre`, written by launch_quantize_q8.
struct Q8Source {
    const float* x = nullptr;
    const float* norm_weight = nullptr;
    float eps = 0.0f;
    float* norm_out = nullptr;
    Q8Input pre;
};
// q8 = quantize(x), or of rms_norm(x) * norm_weight when norm_weight is set (then also written
// to norm_out when that is set). K: a multiple of 32.
// pdl: launched as a programmatic dependent launch (common.cuh), here and below.
void launch_quantize_q8(const float* x, int K, const float* norm_weight, float eps, float* norm_out, Q8Input q8,
                        bool pdl, cudaStream_t stream);
// out = W q8(src) (+ bias) (residual += out) for every job (width K, types matvec_q8_supported); with
// swiglu_out set, jobs 0 and 1 are gate and up of one height and type, and swiglu_out = silu(gate) * up.
// staged_sms > 0 (the SM count): products whose input is quantized in the kernel, of at most
// 6.5 MiB, whose weights fit the staged kernel's shared memory at 1-4 blocks per SM take it
// (matvec_q8_staged), with staged_lanes > 0 (2-32, a power of two) lanes per row group where a
// warp covers a row (0: chosen by the plan); the others, and all with staged_sms = 0, the kernel
// below, where warps_per_row 1, 2 or 4 warps share a row pair (5 or 10: a block of that many on
// one pair, for products without SwiGLU whose input was quantized apart; 0 picks by K and type)
// and max_blocks > 0 caps the grid (blocks then take several row groups each).
void launch_matvec_q8(const MatvecJob* jobs, int n_jobs, int K, const Q8Source& src, float* swiglu_out,
                      int warps_per_row, int max_blocks, int staged_sms, int staged_lanes, bool pdl,
                      cudaStream_t stream, const TraceSink* trace = nullptr);
// Sets the staged kernels' function attributes (their L1 / shared-memory split); once per backend.
void prepare_matvec_q8();
// Whether launch_matvec_q8 would take these jobs (in-kernel input) to the staged kernel.
bool matvec_q8_staged(const MatvecJob* jobs, int n_jobs, int K, bool swiglu, int staged_sms);
// The weight bytes of these jobs in all (the size bounds of the staged kernel, the in-kernel
// input and the decode-step kernel are on it).
size_t matvec_weight_bytes(const MatvecJob* jobs, int n_jobs);

// ---- gemm.cu: many activation rows (prefill) on tensor cores. ----
// out[r] = W x[r] (+ bias) (residual[r] += out[r] when set); x is [rows][K] fp32.
// row_scale ([rows], from launch_row_scale on the same x) keeps the fp16 operands in range.
void launch_row_scale(const float* x, int rows, int K, float* row_scale, cudaStream_t stream);
void launch_gemm(const QMatrix& w, const float* x, int rows, float* out, const float* bias, float* residual,
                 const float* row_scale, cudaStream_t stream);

// ---- gemm_cublas.cu: many activation rows through cuBLAS (loaded at run time) on fp16
// weights dequantized a slice at a time into scratch this object owns (transient working
// memory for one product, never a copy of the model). launch_gemm stays the fallback. ----
class CublasGemm {
public:
    CublasGemm();  // reads METALLIC_CUDA_CUBLAS (0: off, 1: required) and the tuning knobs; loads nothing
    ~CublasGemm();  // the owner synchronizes its stream first
    CublasGemm(const CublasGemm&) = delete;
    CublasGemm& operator=(const CublasGemm&) = delete;

    // Whether a product of this many rows goes through cuBLAS; the first call that needs it loads
    // the library and creates the handle on `stream` (an mn::Error when that fails and
    // METALLIC_CUDA_CUBLAS=1). Not during a CUDA graph capture: the first use allocates.
    bool wants(int rows, cudaStream_t stream);
    // What launch_gemm does for every job (width K; out_j, bias_j, residual_j as there), and with
    // swiglu_out set (jobs 0 and 1: gate and up of one height, no residual) also
    // swiglu_out = silu(gate) * up. x is [rows][K] fp32.
    void run(const MatvecJob* jobs, int n_jobs, const float* x, int rows, int K, float* swiglu_out,
             cudaStream_t stream);

private:
    struct Api;
    bool load(cudaStream_t stream);

    enum Mode { Auto, Off, Required } mode_ = Auto;
    // Measured on an H100 (synthetic Qwen2.5 0.5B / 7B geometries, prefill wall time): cuBLAS on
    // dequantized weights beats the WMMA kernel at every row count tried past the matvec's 8
    // (7B: 9 rows 14.2 vs 39.1 ms, 512 rows 28.6 vs 89.5 ms; 0.5B: 3.6 vs 9.5, 5.6 vs 13.4 ms);
    // slices of 160 MiB (whole 7B FFN matrices) ran 7B pp512 in 28.6 ms, 64 MiB ones in 31.1 ms.
    // Two such buffers with overlap_ (7B: 28.6 vs 29.4 ms without; 0.5B: 5.6 vs 6.0 ms at 512
    // rows, but 3.6 vs 3.1 ms at 9 rows).
    int min_rows_ = kMaxMatvecRows + 1;
    size_t slice_bytes_ = size_t(160) << 20;
    int slice_rows_ = 0;  // fixed rows per slice when > 0 (tests)
    bool tried_ = false;
    void* lib_ = nullptr;
    void* handle_ = nullptr;
    cudaStream_t stream_ = nullptr;  // the stream the handle is bound to
    std::unique_ptr<Api> api_;
    bool overlap_ = true;  // dequantize on side_ while the previous slice's GEMM runs
    __half* w16_[2] = {nullptr, nullptr};  // slices of dequantized weight rows (two: overlap_)
    size_t w16_capacity_[2] = {0, 0};
    __half* x16_ = nullptr;  // the scaled fp16 activations
    size_t x16_capacity_ = 0;
    float* scale_ = nullptr;  // per-row scales of x16_
    size_t scale_capacity_ = 0;
    cudaStream_t side_ = nullptr;
    cudaEvent_t start_ = nullptr, ready_[2] = {nullptr, nullptr}, free_[2] = {nullptr, nullptr};
};

// ---- elementwise.cu ----
// ids may be pinned host memory. With pos_src, the first thread also copies *pos_src to *pos_dst
// (a decode step's position, so that its graph starts with one kernel instead of two copies).
void launch_embed(const QMatrix& table, const int32_t* ids, int rows, float* out, const int* pos_src, int* pos_dst,
                  cudaStream_t stream);
void launch_rms_norm(const float* x, const float* w, float eps, int rows, int width, float* out, cudaStream_t stream);
void launch_swiglu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream);
void launch_add(float* x, const float* y, int64_t n, cudaStream_t stream);
// Rotates q and k in place for positions *pos0 .. *pos0 + rows - 1 (pos0 read on the device);
// inv_freq[i] = base^(-2i / head_dim) for i < head_dim / 2, on the device.
void launch_rope(float* q, float* k, int rows, const int* pos0, int n_heads, int n_kv_heads, int head_dim,
                 const float* inv_freq, bool neox, cudaStream_t stream);
// launch_rope, and also stores the rotated k and the v rows into the KV cache
// ([n_kv_heads][n_ctx][head_dim]) at their positions.
void launch_rope_store(float* q, float* k, const float* v, void* k_cache, void* v_cache, bool f16_cache, int n_ctx,
                       int rows, const int* pos0, int n_heads, int n_kv_heads, int head_dim, const float* inv_freq,
                       bool neox, cudaStream_t stream);

// ---- attention.cu ----
// Keys per split block: a query row's keys are split into chunks of this many (longer
// chunks only where 32 chunks would not cover n_ctx). Short chunks keep a decode step's
// chain of dependent loads per block short; blocks past the position exit at once.
constexpr int kAttnSplit = 32;
// The fused decode kernel scores up to this many keys per head in one block (a thread per key:
// up to 128 keys cost about what 32 do), so that short contexts need no combine of partials (a
// fence, a counter and a second read of the partials: ~3 us of a 0.5B layer at 2-4 chunks of
// 32); longer contexts spread over the split plan's blocks in chunks of >= kAttnSplit keys.
constexpr int kAttnDecodeChunk = 256;
// The fused decode attention's staged keys (AttentionArgs::stage_kv): at most this many keys of
// a chunk, within this much dynamic shared memory per block (under the 48 KB that needs no opt-in).
constexpr int kAttnStageKeys = 128;
constexpr size_t kAttnStageSmem = size_t(40) << 10;
struct AttentionArgs {
    const float* q = nullptr;   // [rows][n_heads * head_dim]
    const float* k = nullptr;   // [rows][n_kv_heads * head_dim], stored into the cache first
    const float* v = nullptr;
    void* k_cache = nullptr;    // [n_kv_heads][n_ctx][head_dim], f16 or f32
    void* v_cache = nullptr;
    bool f16_cache = true;
    int n_ctx = 0, rows = 0;
    const int* pos0 = nullptr;  // device
    int n_heads = 0, n_kv_heads = 0, head_dim = 0;
    float* out = nullptr;       // [rows][n_heads * head_dim]
    // Scratch for split partials: floats needed by attention_scratch_floats().
    float* scratch = nullptr;
    bool kv_stored = false;  // k and v are already in the cache (launch_rope_store)
    bool thread_per_key = false;  // the older split kernel (a thread per key), for comparisons
    // Decode (see attention_decode_fused): RoPE of q and of the new key inside the attention
    // kernel (rope_freq null: q and k arrive rotated), and one counter per head (n_heads ints,
    // zero, left zero) for the block that combines the chunks. q and k are not written back.
    const float* rope_freq = nullptr;
    bool rope_neox = false;
    int* counters = nullptr;
    bool pdl = false;  // the fused decode kernel as a programmatic dependent launch (common.cuh)
    int decode_chunk = kAttnDecodeChunk;  // the fused decode kernel's one-chunk limit (kAttnDecodeChunk)
    // The fused decode kernel copies a chunk's first keys and values on chip before its wait
    // (attention_decode.cuh, STAGE); false for comparisons.
    bool stage_kv = true;
    const TraceSink* trace = nullptr;  // decode timeline (MN_CUDA_TRACE builds; common.cuh)
    // Prefill on tensor cores (attention_prefill.cu) where it covers the shape: 0 = never (the fp32
    // tile kernel, for comparisons); 2 or 4 = that many warps per block; 22, 24 = 2 or 4 groups of
    // 16 slots with each tile's keys split over two warps; 42 = 2 groups, keys split over four;
    // anything else = 22 (the fastest measured on both Qwen2.5 geometries).
    int prefill_tc = 1;
};
// Whether launch_attention runs these arguments as one fused decode kernel (one row: RoPE,
// the KV store, the chunked attention and their combine), which needs AttentionArgs.counters.
inline bool attention_decode_fused(int rows, int head_dim, bool thread_per_key) {
    return rows == 1 && head_dim % 32 == 0 && head_dim <= 256 && !thread_per_key;
}
size_t attention_scratch_floats(int rows, int n_heads, int head_dim, int n_ctx);
void launch_attention(const AttentionArgs& a, cudaStream_t stream);
// ---- attention_prefill.cu: many query rows over an f16 cache (head_dim 64 or 128), on tensor
// cores; causal, GQA. Called by launch_attention once k and v are in the cache. ----
bool attention_prefill_covers(const AttentionArgs& a);
void launch_attention_prefill(const AttentionArgs& a, cudaStream_t stream);

// ---- top-k (elementwise.cu): the k largest of x[0..n) with their indices, descending, and,
// unless lse_out is null, log(sum(exp(x))) of the whole row into *lse_out. The outputs may be
// pinned host memory. scratch (topk_scratch_bytes) must be zeroed before its first use. With
// `next`, also writes {the top-1 id, *pos + 1} there: the input of the next one-row decode step,
// launched before the host has seen this one's result (greedy run-ahead, cuda_backend.cu). ----
size_t topk_scratch_bytes(int64_t n, int k);
void launch_topk(const float* x, int64_t n, int k, void* scratch, int32_t* ids_out, float* vals_out, float* lse_out,
                 int* next, const int* pos, bool pdl, cudaStream_t stream);

}  // namespace mn::cuda
