// The CUDA backend: device memory, weight upload, one stream, op fusion and
// the CUDA graph that replays a decode step.
//
// Fusion. Ops arrive one at a time from the transformer. rms_norm and matmul
// are held back ("pending") so that what follows can join them: the matmuls
// that share one input (q, k, v; gate, up) become one launch, the norm that
// produced that input is computed inside it, a following add() of a matmul's
// output into the residual stream is done by the matmul, and a SwiGLU of
// gate and up is done by the launch that computes them; in a decode step,
// RoPE is done by the attention kernel, and the one-row integer matvecs
// quantize their input themselves (matvec_q8.cu). Every other op, and every
// read, first launches what is pending, in order, so the results are those of
// the ops one by one. Decode kernels run as programmatic dependent launches on
// sm_90 (common.cuh), so each one's launch overlaps the tail of the one before.
//
// Graphs. A step the transformer marks replayable (a decode step: one row, no
// reads before its output) is run eagerly the first time, recorded the second
// time, and replayed afterwards. Its input, the token id and the position, is
// two device words (d_next_) that one copy before the graph fills, so the
// graph stays valid as the position moves; the recording starts at the step's
// embed, after that copy. The recording ends at the step's first read (or
// top_k), which runs after the graph launch. A replay is launched at the embed
// and each op's arguments are then checked against the recording, so a
// transformer that issued a different sequence gets an error instead of wrong
// results.
//
// Run ahead (greedy decoding, Backend::top_k_run_ahead). The top-k kernel can
// also write {top-1 id, position + 1} to d_next_, so the recorded graph,
// launched again at once, decodes the next step before the host has seen this
// one's result; its top-k goes to the other half of the pinned result buffer.
// The device then runs step after step while the host returns results and
// takes the next call, instead of idling for that round trip (~50 us a token
// on the H100 with a 0.5B model).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/common.cuh"
#include "backend/cuda/decode_step.h"
#include "backend/cuda/kernels.h"

namespace mn {

namespace {

using cuda::QMatrix;

QMatrix qmatrix(const WeightTensor& w) {
    QMatrix m;
    m.data = static_cast<const uint8_t*>(w.device);
    m.type = w.type;
    m.K = int(w.ne0);
    m.N = int(w.ne1);
    m.row_bytes = w.row_bytes;
    return m;
}

std::string mib(size_t bytes) { return std::to_string((bytes + (1 << 19)) >> 20) + " MiB"; }

// An op's kind and arguments, word by word, as a replayed step compares them with the recording.
// The words themselves, not a hash of them: a decode step checks ~400 of these on the host
// while the device waits for its graph, and hashing them bytewise cost ~20 us a token.
struct Sig {
    static constexpr int kWords = 6;
    uint64_t w[kWords] = {};
    int n = 0;
    Sig& add(uint64_t v) {
        if (n == kWords) throw Error("cuda backend: an op signature has more than 6 words");
        w[n++] = v;
        return *this;
    }
    Sig& add(const void* p) { return add(uint64_t(reinterpret_cast<uintptr_t>(p))); }
    bool operator==(const Sig& o) const { return n == o.n && std::memcmp(w, o.w, sizeof w) == 0; }
};

// Top-k results staged for the host: 64 ids, 64 values, the log-sum-exp (in each of two halves).
constexpr int kTopkResultWords = 129;

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(const BackendOptions& options);
    ~CudaBackend() override;

    std::string name() const override { return "cuda"; }

    Buffer alloc(int64_t n, DType dtype) override;
    void release(Buffer& buffer) override;
    void upload(WeightTensor& weight) override;
    void read(const Buffer& src, int64_t offset, int64_t n, float* dst) override;
    void synchronize() override;

    void embed(const WeightTensor& table, const int32_t* ids, int rows, Buffer& out) override;
    void rms_norm(const Buffer& x, const WeightTensor& weight, float eps, int rows, int width, Buffer& out) override;
    void matmul(const WeightTensor& w, const Buffer& x, int rows, Buffer& out, const WeightTensor* bias) override;
    void rope(Buffer& q, Buffer& k, int rows, int pos0, const AttentionShape& shape, float base,
              RopeStyle style) override;
    void attention(const Buffer& q, const Buffer& k, const Buffer& v, KVLayer& cache, int n_ctx, int rows, int pos0,
                   const AttentionShape& shape, Buffer& out) override;
    void swiglu(const Buffer& gate, const Buffer& up, int64_t n, Buffer& out) override;
    void add(Buffer& x, const Buffer& y, int64_t n) override;
    void copy_rows(const Buffer& src, int src_row, int rows, int width, Buffer& dst) override;

    void begin_step(int rows, int pos0, bool replayable) override;
    void end_step() override;
    void top_k(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
               float* log_sum_exp) override;
    void top_k_run_ahead(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
                         float* log_sum_exp) override;
    bool take_ahead(int32_t token, int pos0, int k, int32_t* ids, float* vals, float* log_sum_exp,
                    bool further) override;
    std::vector<std::pair<std::string, int64_t>> counters() const override {
        return {{"graph_replays", graph_replays_}, {"steps_run_ahead", steps_run_ahead_},
                {"steps_taken_ahead", steps_taken_ahead_}};
    }

private:
    enum class Mode { Eager, Capture, Replay };

    // Returns true when the op must not run (it is part of a graph being replayed).
    bool record(Sig sig);
    void flush();
    void launch_pending_norm();
    void set_pos(int pos0);
    void wait_host_staging();
    void ensure_ids(int rows);
    void ensure_scratch(size_t floats);
    void ensure_row_scale(int rows);
    // Grows a lazily sized device buffer of `capacity` elements to `count` (true when it did).
    // Never while a step is recorded or replayed: the recorded kernels hold the old address.
    template <typename T, typename C>
    bool grow(T*& p, C& capacity, C count, const char* what);
    // Sized for width K; q8_in_ then points into it (the input of the integer matvec's separate quantize).
    void ensure_q8(int K);
    void ensure_attn_counters(int n_heads);
    const float* rope_table(float base, int head_dim);
    // Ends a recording or replays the graph: the work of the step so far is then enqueued.
    void finish_graph_part();
    void abort_capture();
    void drop_graph();
    void* device_alloc(size_t bytes, const std::string& what);

    int device_ = 0;
    cudaStream_t stream_ = nullptr;
    bool graphs_enabled_ = true;

    std::vector<void*> weights_;  // freed with the backend (close())
    std::unordered_set<void*> buffers_;  // live alloc()s: freed with the backend if the owner could not
    size_t weight_bytes_ = 0;

    // Pinned host staging. An eager step's embed kernel reads the token ids in place (mapped
    // into the device's address space: no copy) and set_pos copies the position to d_pos_. A
    // recorded step's input is d_next_ = {token, position}, copied from h_next_ before the graph
    // (or written by the top-k kernel of the step before, run ahead); its embed copies the
    // position to d_pos_.
    int* h_pos_ = nullptr;
    int* d_pos_ = nullptr;
    int32_t* h_ids_ = nullptr;
    const int32_t* h_ids_dev_ = nullptr;
    int ids_capacity_ = 0;
    int* h_next_ = nullptr;
    int* d_next_ = nullptr;
    int step_pos_ = 0;  // the position of the step begun last
    // Top-k results, written there by the kernel (pinned host memory mapped into the device's
    // address space: no copy to wait for), two halves of kTopkResultWords: 64 ids, 64 floats,
    // then the row's log-sum-exp. A step's top-k uses half 0; steps run ahead alternate, so the
    // host reads one half while the next step's top-k writes the other.
    int32_t* h_topk_ = nullptr;
    int32_t* h_topk_dev_ = nullptr;  // h_topk_ as the device addresses it
    cudaEvent_t topk_done_[2] = {nullptr, nullptr};  // per half: its last top-k has written it
    // The step run ahead, if one is in flight (its top-1 id known once the step before it was read).
    struct Ahead {
        bool active = false;
        int32_t token = -1;  // its input: the previous step's top-1
        int pos = 0;
        int k = 0;
        bool lse = false;
        int half = 0;
        const float* x = nullptr;  // the logits row its top-k reads
        int64_t n = 0;
    } ahead_;
    bool run_ahead_ = true;  // METALLIC_CUDA_RUN_AHEAD=0: never
    int64_t graph_replays_ = 0, steps_run_ahead_ = 0, steps_taken_ahead_ = 0;  // counters()
    // top_k / top_k_run_ahead; launch_ahead launches the recorded graph and its top-k for the step
    // at `pos`, whose input the last top-k wrote to d_next_.
    void select_top_k(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
                      float* log_sum_exp, bool run_ahead);
    void launch_topk_half(const float* x, int64_t n, int k, bool lse, int half, bool next);
    void read_topk_half(int half, int k, int32_t* ids, float* vals, float* log_sum_exp) const;
    void launch_ahead(const float* x, int64_t n, int k, bool lse, int half, int pos);
    void* d_topk_scratch_ = nullptr;
    size_t topk_scratch_bytes_ = 0;
    bool staging_in_use_ = false;  // copies from the pinned staging may still be pending
    int device_pos_ = -1;          // the position d_pos_ holds (or will hold) in stream order

    float* scratch_ = nullptr;  // attention partials
    size_t scratch_floats_ = 0;
    float* row_scale_ = nullptr;  // per-row fp16 scales of a prefill matmul's input
    int row_scale_rows_ = 0;
    // Prefill matmuls of many rows through cuBLAS on dequantized weights (gemm_cublas.cu); its
    // scratch is released before the stream (destructor).
    std::unique_ptr<cuda::CublasGemm> cublas_ = std::make_unique<cuda::CublasGemm>();
    struct RopeTable {
        float base;
        int head_dim;
        float* freq;
    };
    std::vector<RopeTable> rope_tables_;  // RoPE frequencies per (base, head_dim), computed once

    // Pending fusion state.
    struct PendingNorm {
        bool active = false;
        const float* x = nullptr;
        const float* w = nullptr;
        float eps = 0;
        int rows = 0, width = 0;
        float* out = nullptr;
    } norm_;
    struct PendingRope {
        bool active = false;
        float* q = nullptr;
        float* k = nullptr;
        int rows = 0;
        AttentionShape shape;
        const float* freq = nullptr;
        bool neox = false;
    } rope_;
    struct PendingMatmul {
        int n = 0;
        cuda::MatvecJob jobs[cuda::kMaxMatvecJobs];
        const float* x = nullptr;
        int rows = 0, K = 0;
        float* swiglu_out = nullptr;
    } mm_;
    // One-row matmuls of the integer-dot types (the pending norm fused into them). False (nothing
    // launched) when a job's type or the width does not allow it.
    bool flush_q8(const PendingMatmul& mm, bool fuse_norm);
    // A one-row integer matvec with the ordinary kernels: the input quantized in the kernel where
    // that pays, else by a quantize launch first.
    void launch_q8(const cuda::MatvecJob* jobs, int n_jobs, int K, cuda::Q8Source src, float* swiglu_out);
    // The stream, for anything enqueued outside the decode-step run: the run collected so far is
    // launched first, so the stream keeps the order of the ops.
    cudaStream_t enq();
    void launch_step();

    bool q8_enabled_ = true;
    bool attn_thread_per_key_ = false;  // METALLIC_CUDA_ATTN_THREAD_PER_KEY=1: the older split kernel
    int attn_decode_chunk_ = cuda::kAttnDecodeChunk;  // METALLIC_CUDA_ATTN_DECODE_CHUNK: one-chunk limit (keys)
    bool attn_stage_kv_ = true;  // METALLIC_CUDA_ATTN_STAGE=0: the decode attention reads the cache through L2
    int attn_prefill_tc_ = 1;  // METALLIC_CUDA_ATTN_PREFILL: tensor-core prefill attention variant (0: off)
    int q8_warps_ = 0;  // warps per row pair of the integer matvec (0: chosen by width)
    // Optional grid cap of the integer matvec (blocks then walk several row groups, and fewer
    // blocks quantize the input). Off: with the large products quantized apart, no cap measured
    // faster on the H100 (tg128 0.5B geometry 1182 vs 1146 tok/s, 7B 396 vs 377 with 8 per SM).
    int q8_max_blocks_ = 0;
    bool q8_prequantize_ = false;  // METALLIC_CUDA_Q8_PREQUANTIZE=1: every width takes the separate quantize
    // The staged integer matvec (weights into shared memory before the PDL wait) for products
    // that fit it: the SM count, or METALLIC_CUDA_Q8_STAGED=N to plan for N SMs (0: off). Off
    // when one of the switches above fixes the other kernel's shape.
    int q8_staged_sms_ = 0;
    bool q8_staged_only_ = false;  // METALLIC_CUDA_Q8_STAGED_ONLY=1 (tests): an error where it is not taken
    // METALLIC_CUDA_Q8_LANES=2|4|8|16|32 fixes the staged matvec's lanes per row group where a warp
    // covers a row (tests: 32 sums as the other kernels do); anything else: chosen per product.
    int q8_staged_lanes_ = 0;
    // Decode timeline records (MN_CUDA_TRACE builds only; written at destruction to the file
    // METALLIC_CUDA_TRACE_FILE names; bench/cuda_decode_trace.py reads them).
    cuda::TraceSink trace_;
    // Programmatic dependent launches (sm_90+) for the decode kernels that support them
    // (common.cuh); METALLIC_CUDA_PDL=0 turns them off.
    bool pdl_ = false;
    // The input of products that quantize it in a separate launch, sized for the widest seen.
    cuda::Q8Input q8_in_;
    uint8_t* q8_buf_ = nullptr;
    size_t q8_bytes_ = 0;
    int* attn_counters_ = nullptr;  // per query head, for the fused decode attention (zero between launches)
    int attn_counters_n_ = 0;

    // The persistent decode-step kernel (decode_step.cu), which runs a decode step's integer
    // matvecs and attention in one launch with grid barriers between them; null when off (the
    // default). METALLIC_CUDA_STEP=1 turns it on (an error where it cannot run, or where a
    // recorded step would fall back to the ordinary kernels); METALLIC_CUDA_STEP_MAX_MB bounds
    // the products it takes; METALLIC_CUDA_STEP_ATTN=0 keeps attention apart;
    // METALLIC_CUDA_STEP_STREAM=1 picks the warp-specialized kernel (matvecs only: attention
    // apart), METALLIC_CUDA_STEP_BLOCKS, METALLIC_CUDA_STEP_SLOT_BYTES and METALLIC_CUDA_STEP_WPG
    // its grid, ring slots and warps per row group (tests).
    std::unique_ptr<cuda::DecodeStep> step_;
    bool step_attention_ = true;
    // METALLIC_CUDA_STEP=1 without METALLIC_CUDA_STEP_MAX_MB (tests): a decode matvec or attention
    // the kernel does not take is an error, so that a test of the kernel cannot pass without it.
    bool step_required_ = false;
    bool step_takes_all_ = false;

    // Graph state.
    Mode mode_ = Mode::Eager;
    int replayable_steps_ = 0;  // replayable steps seen since the graph was dropped
    bool step_open_ = false;
    bool graph_done_this_step_ = false;
    bool ops_after_graph_ = false;
    cudaGraphExec_t graph_exec_ = nullptr;
    std::vector<Sig> sigs_;
    size_t replay_index_ = 0;
    // A recording begins at the step's embed, after the copy of its input (which must not be
    // part of the graph: a step run ahead gets its input from the device).
    bool capture_pending_ = false;
    // A replayed graph is launched at the step's embed (its first op), as soon as its input is
    // staged, so the device runs it while the host checks the rest of the step's ops.
    void launch_graph();
};

CudaBackend::CudaBackend(const BackendOptions& options) {
    MN_CUDA_CHECK(cudaGetDevice(&device_));
    MN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (const char* g = std::getenv("METALLIC_CUDA_GRAPHS")) graphs_enabled_ = std::string(g) != "0";
    // Switches for comparisons and tests: METALLIC_CUDA_Q8=0 keeps decode on the float matvec;
    // METALLIC_CUDA_Q8_WARPS=1|2|4 fixes the warps per row pair of the integer matvec (5|10 too for
    // products without SwiGLU whose input is quantized apart: wider blocks, one pair each),
    // METALLIC_CUDA_Q8_MAX_BLOCKS its grid cap (0: none), METALLIC_CUDA_Q8_PREQUANTIZE=1 quantizes
    // its input in a separate launch at every width; METALLIC_CUDA_ATTN_THREAD_PER_KEY=1 runs decode
    // attention as RoPE + store, the thread-per-key split kernel and a combine launch.
    if (const char* q = std::getenv("METALLIC_CUDA_Q8")) q8_enabled_ = std::string(q) != "0";
    if (const char* q = std::getenv("METALLIC_CUDA_Q8_WARPS")) q8_warps_ = std::atoi(q);
    if (const char* q = std::getenv("METALLIC_CUDA_ATTN_THREAD_PER_KEY")) attn_thread_per_key_ = std::string(q) == "1";
    // METALLIC_CUDA_ATTN_PREFILL=0: the fp32 prefill tile kernel instead of tensor cores (A/B tests).
    if (const char* q = std::getenv("METALLIC_CUDA_ATTN_PREFILL")) attn_prefill_tc_ = std::atoi(q);
    if (const char* q = std::getenv("METALLIC_CUDA_ATTN_DECODE_CHUNK")) attn_decode_chunk_ = std::atoi(q);
    if (const char* q = std::getenv("METALLIC_CUDA_ATTN_STAGE")) attn_stage_kv_ = std::string(q) != "0";
    int cc_major = 0;
    MN_CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, device_));
    pdl_ = cc_major >= 9;
    if (const char* q = std::getenv("METALLIC_CUDA_PDL")) pdl_ = pdl_ && std::string(q) != "0";
    if (const char* q = std::getenv("METALLIC_CUDA_Q8_MAX_BLOCKS")) q8_max_blocks_ = std::atoi(q);
    if (const char* q = std::getenv("METALLIC_CUDA_Q8_PREQUANTIZE")) q8_prequantize_ = std::string(q) == "1";
    MN_CUDA_CHECK(cudaDeviceGetAttribute(&q8_staged_sms_, cudaDevAttrMultiProcessorCount, device_));
    if (const char* q = std::getenv("METALLIC_CUDA_Q8_STAGED")) q8_staged_sms_ = std::max(0, std::atoi(q));
    if (q8_warps_ > 0 || q8_max_blocks_ > 0 || q8_prequantize_) q8_staged_sms_ = 0;
    if (const char* q = std::getenv("METALLIC_CUDA_Q8_STAGED_ONLY")) q8_staged_only_ = std::string(q) == "1";
    if (const char* q = std::getenv("METALLIC_CUDA_Q8_LANES")) {
        const int l = std::atoi(q);
        q8_staged_lanes_ = l >= 2 && l <= 32 && (l & (l - 1)) == 0 ? l : 0;
    }
    cuda::prepare_matvec_q8();
    // Off unless asked for: on the H100 it decodes slower than the kernel chain (bench/RESULTS.md,
    // CUDA speed, session 8).
    bool step = false;
    if (const char* q = std::getenv("METALLIC_CUDA_STEP")) {
        step = std::string(q) != "0";
        step_required_ = std::string(q) == "1";
    }
    if (const char* q = std::getenv("METALLIC_CUDA_STEP_ATTN")) step_attention_ = std::string(q) != "0";
    size_t step_max_bytes = ~size_t(0);
    if (const char* q = std::getenv("METALLIC_CUDA_STEP_MAX_MB")) step_max_bytes = size_t(std::atof(q) * (1 << 20));
    step_takes_all_ = step_required_ && step_max_bytes == ~size_t(0);
    bool stream = false;
    int stream_blocks = 0, stream_slot = 0, stream_wpg = 1;
    if (const char* q = std::getenv("METALLIC_CUDA_STEP_STREAM")) stream = std::string(q) == "1";
    if (const char* q = std::getenv("METALLIC_CUDA_STEP_BLOCKS")) stream_blocks = std::max(0, std::atoi(q));
    if (const char* q = std::getenv("METALLIC_CUDA_STEP_SLOT_BYTES")) stream_slot = std::max(0, std::atoi(q));
    if (const char* q = std::getenv("METALLIC_CUDA_STEP_WPG")) stream_wpg = std::atoi(q);
    if (stream) step_attention_ = false;
    if (step && q8_enabled_ && !q8_prequantize_ && q8_warps_ == 0 && q8_max_blocks_ == 0) {
        step_ = std::make_unique<cuda::DecodeStep>(device_, step_max_bytes, stream, stream_blocks, stream_slot,
                                                   stream_wpg);
        if (!step_->usable()) {
            step_.reset();
            // METALLIC_CUDA_STEP=1 asks for it (tests): say so rather than run without it.
            if (step_required_)
                throw Error("cuda backend: METALLIC_CUDA_STEP=1, but this device cannot run the decode-step kernel");
        }
    }
    if (const char* q = std::getenv("METALLIC_CUDA_RUN_AHEAD")) run_ahead_ = std::string(q) != "0";
    MN_CUDA_CHECK(cudaMallocHost(&h_pos_, sizeof(int)));
    MN_CUDA_CHECK(cudaMallocHost(&h_next_, 2 * sizeof(int)));
    MN_CUDA_CHECK(cudaHostAlloc(&h_topk_, 2 * kTopkResultWords * sizeof(int32_t), cudaHostAllocMapped));
    MN_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&h_topk_dev_), h_topk_, 0));
    for (cudaEvent_t& e : topk_done_) MN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    d_pos_ = static_cast<int*>(device_alloc(sizeof(int), "the position"));
    d_next_ = static_cast<int*>(device_alloc(2 * sizeof(int), "the next step's input"));
    ensure_ids(256);
#ifdef MN_CUDA_TRACE
    trace_.cap = 1u << 22;  // 256 MiB of records: a few hundred decode steps of a 0.5B model
    trace_.buf = static_cast<cuda::TraceRec*>(device_alloc(sizeof(cuda::TraceRec) * trace_.cap, "trace records"));
    trace_.n = static_cast<unsigned int*>(device_alloc(sizeof(unsigned int), "trace counter"));
    MN_CUDA_CHECK(cudaMemset(trace_.n, 0, sizeof(unsigned int)));
#endif
}

CudaBackend::~CudaBackend() {
    // Best effort: destructors must not throw, and the device may be in an error state.
    if (stream_) {
        cudaStreamCaptureStatus st;
        if (cudaStreamIsCapturing(stream_, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
            cudaGraph_t g = nullptr;
            cudaStreamEndCapture(stream_, &g);
            if (g) cudaGraphDestroy(g);
        }
        cudaStreamSynchronize(stream_);
    }
#ifdef MN_CUDA_TRACE
    if (trace_.buf) {
        unsigned int n = 0;
        cudaMemcpy(&n, trace_.n, sizeof n, cudaMemcpyDeviceToHost);
        std::vector<cuda::TraceRec> recs(std::min(n, trace_.cap));
        cudaMemcpy(recs.data(), trace_.buf, recs.size() * sizeof(cuda::TraceRec), cudaMemcpyDeviceToHost);
        if (const char* f = std::getenv("METALLIC_CUDA_TRACE_FILE"))
            if (FILE* fp = std::fopen(f, "wb")) {
                std::fwrite(recs.data(), sizeof(cuda::TraceRec), recs.size(), fp);
                std::fclose(fp);
            }
        cudaFree(trace_.buf);
        cudaFree(trace_.n);
    }
#endif
    if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
    step_.reset();
    cublas_.reset();  // its handle is bound to stream_
    for (void* p : weights_) cudaFree(p);
    for (void* p : buffers_) cudaFree(p);  // left over when a constructor threw half-way
    for (RopeTable& t : rope_tables_) cudaFree(t.freq);
    for (cudaEvent_t e : topk_done_)
        if (e) cudaEventDestroy(e);
    for (void* p : {static_cast<void*>(d_pos_), static_cast<void*>(d_next_), d_topk_scratch_,
                    static_cast<void*>(scratch_), static_cast<void*>(row_scale_), static_cast<void*>(q8_buf_),
                    static_cast<void*>(attn_counters_)})
        if (p) cudaFree(p);
    if (h_pos_) cudaFreeHost(h_pos_);
    if (h_next_) cudaFreeHost(h_next_);
    if (h_ids_) cudaFreeHost(h_ids_);
    if (h_topk_) cudaFreeHost(h_topk_);
    if (stream_) cudaStreamDestroy(stream_);
}

void* CudaBackend::device_alloc(size_t bytes, const std::string& what) {
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 256));
    if (err != cudaSuccess) {
        cudaGetLastError();  // clear the sticky-free allocation error
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        throw Error("cuda backend: out of device memory allocating " + mib(bytes) + " for " + what + " (" +
                    mib(free_b) + " free of " + mib(total_b) + ", weights hold " + mib(weight_bytes_) + "): " +
                    cudaGetErrorString(err));
    }
    return p;
}

Buffer CudaBackend::alloc(int64_t n, DType dtype) {
    if (mode_ != Mode::Eager) throw Error("cuda backend: alloc during a recorded step");
    Buffer b;
    b.n = n;
    b.dtype = dtype;
    const size_t bytes = size_t(n) * dtype_size(dtype);
    b.data = device_alloc(bytes, "a " + std::to_string(n) + "-element buffer");
    // Zeroed like the CPU backend's buffers (the KV cache beyond n_past is never read, but be exact).
    const cudaError_t err = cudaMemset(b.data, 0, std::max<size_t>(bytes, 1));
    if (err != cudaSuccess) {
        cudaFree(b.data);
        cuda::throw_cuda(err, "cudaMemset", __FILE__, __LINE__);
    }
    buffers_.insert(b.data);
    return b;
}

void CudaBackend::release(Buffer& b) {
    // Called from destructors: never throws.
    if (b.data) {
        try {
            if (mode_ == Mode::Eager) {
                flush();
                enq();
            }
        } catch (const std::exception&) {
            // The device is in an error state; the memory is freed regardless.
        }
        norm_.active = false;
        rope_.active = false;
        mm_.n = 0;
        if (step_) step_->clear();
        cudaStreamSynchronize(stream_);
        buffers_.erase(b.data);
        cudaFree(b.data);
        cudaGetLastError();
    }
    b = Buffer{};
}

void CudaBackend::upload(WeightTensor& w) {
    const TypeTraits* tt = type_traits(w.type);
    if (!cuda::type_supported(w.type))
        throw Error("cuda backend: tensor '" + w.name + "' has type " + (tt ? tt->name : "unknown") +
                    ", which the CUDA kernels do not support (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, "
                    "Q3_K, Q4_K, Q5_K, Q6_K)");
    if (w.ne0 > INT32_MAX || w.ne1 > INT32_MAX) throw Error("cuda backend: tensor '" + w.name + "' is too large");
    const size_t bytes = w.row_bytes * size_t(w.ne1);
    // 16 spare bytes: the integer matvec reads 2-byte aligned blocks as aligned words, up to 2 bytes
    // past a block's end.
    void* p = device_alloc(bytes + 16, "tensor '" + w.name + "'");
    weights_.push_back(p);
    weight_bytes_ += bytes;
    MN_CUDA_CHECK(cudaMemcpy(p, w.host, bytes, cudaMemcpyHostToDevice));
    w.device = p;
}

void CudaBackend::ensure_ids(int rows) {
    if (rows <= ids_capacity_) return;
    wait_host_staging();
    if (h_ids_) cudaFreeHost(h_ids_);
    h_ids_ = nullptr;
    h_ids_dev_ = nullptr;
    ids_capacity_ = 0;
    MN_CUDA_CHECK(cudaHostAlloc(&h_ids_, sizeof(int32_t) * rows, cudaHostAllocMapped));
    MN_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(const_cast<int32_t**>(&h_ids_dev_)), h_ids_, 0));
    ids_capacity_ = rows;
}

template <typename T, typename C>
bool CudaBackend::grow(T*& p, C& capacity, C count, const char* what) {
    if (count <= capacity) return false;
    if (mode_ != Mode::Eager) throw Error(std::string("cuda backend: ") + what + " must grow during a recorded step");
    // Phases collected for the decode-step kernel may point at the old buffer.
    MN_CUDA_CHECK(cudaStreamSynchronize(enq()));
    if (p) cudaFree(p);
    p = nullptr;  // holds nothing if the allocation below throws
    capacity = 0;
    p = static_cast<T*>(device_alloc(sizeof(T) * size_t(count), what));
    capacity = count;
    return true;
}

void CudaBackend::ensure_scratch(size_t floats) { grow(scratch_, scratch_floats_, floats, "attention scratch"); }

void CudaBackend::ensure_row_scale(int rows) { grow(row_scale_, row_scale_rows_, rows, "row scales"); }

void CudaBackend::ensure_q8(int K) {
    // One allocation: the K codes, then the K / 32 scale pairs (8-byte aligned: K is a multiple of 32).
    grow(q8_buf_, q8_bytes_, size_t(K) + size_t(K / 32) * sizeof(float2), "the quantized input");
    q8_in_.qs = reinterpret_cast<int8_t*>(q8_buf_);
    q8_in_.ds = reinterpret_cast<float2*>(q8_buf_ + K);
}

void CudaBackend::ensure_attn_counters(int n_heads) {
    if (grow(attn_counters_, attn_counters_n_, n_heads, "attention counters"))
        MN_CUDA_CHECK(cudaMemset(attn_counters_, 0, sizeof(int) * n_heads));
}

namespace {
// Products larger than this quantize their input in a separate launch: their many blocks each
// re-reading and quantizing the row cost more than the launch (H100, 7B geometry: the 76 MB
// gate/up product took 42.7 us instead of 28.7 us with ~1000 blocks quantizing a 3584-wide row,
// and tg128 ran at 383 tok/s with every product quantized apart vs 367 with the 7.2 MB ones in
// the kernel; the 0.5B's products, 1-6 MB, gained from it: 1152 vs 1125 tok/s).
constexpr size_t kQ8InKernelMaxWeightBytes = size_t(13) << 19;  // 6.5 MiB
}  // namespace

bool CudaBackend::flush_q8(const PendingMatmul& mm, bool fuse_norm) {
    if (!q8_enabled_ || mm.rows != 1 || mm.K % 32 != 0 || mm.K > cuda::kQ8MaxK) return false;
    for (int j = 0; j < mm.n; ++j)
        if (!cuda::matvec_q8_supported(mm.jobs[j].w.type)) return false;
    const bool fuse_swiglu = mm.swiglu_out && mm.jobs[0].w.type == mm.jobs[1].w.type;
    cuda::Q8Source src;
    if (fuse_norm) {
        norm_.active = false;
        src.x = norm_.x;
        src.norm_weight = norm_.w;
        src.eps = norm_.eps;
        src.norm_out = norm_.out;
    } else {
        launch_pending_norm();
        src.x = mm.x;
    }
    float* swiglu_out = fuse_swiglu ? mm.swiglu_out : nullptr;
    const bool to_step = step_ && step_->takes_matvec(mm.jobs, mm.n, mm.K, src);
    if (step_ && !to_step && step_takes_all_)
        throw Error("cuda backend: METALLIC_CUDA_STEP=1, but the decode-step kernel does not take a " +
                    std::to_string(mm.K) + "-wide matvec");
    if (to_step) {
        // Sized now for the ordinary kernels' quantize launch, which a recorded step falls back
        // to if its run was never uploaded (launch_step); no buffer may grow while recording.
        if (mode_ == Mode::Eager) ensure_q8(mm.K);
        step_->add_matvec(mm.jobs, mm.n, mm.K, src, swiglu_out);
    } else {
        launch_q8(mm.jobs, mm.n, mm.K, src, swiglu_out);
    }
    if (mm.swiglu_out && !fuse_swiglu)
        cuda::launch_swiglu(mm.jobs[0].out, mm.jobs[1].out, mm.jobs[0].w.N, mm.swiglu_out, enq());
    return true;
}

void CudaBackend::launch_q8(const cuda::MatvecJob* jobs, int n_jobs, int K, cuda::Q8Source src, float* swiglu_out) {
    const size_t weight_bytes = cuda::matvec_weight_bytes(jobs, n_jobs);
    const bool in_kernel = !q8_prequantize_ && K <= cuda::kQ8FusedMaxK && weight_bytes <= kQ8InKernelMaxWeightBytes &&
                           cuda::aligned16(src.x) && cuda::aligned16(src.norm_weight) &&
                           cuda::aligned16(src.norm_out);
    if (q8_staged_only_ && !(in_kernel && cuda::matvec_q8_staged(jobs, n_jobs, K, swiglu_out, q8_staged_sms_)))
        throw Error("cuda backend: METALLIC_CUDA_Q8_STAGED_ONLY=1, but a " + std::to_string(K) + "-wide product of " +
                    std::to_string(weight_bytes) + " bytes cannot take the staged matvec");
    if (!in_kernel) {
        ensure_q8(K);
        cuda::launch_quantize_q8(src.x, K, src.norm_weight, src.eps, src.norm_out, q8_in_, pdl_, enq());
        src = cuda::Q8Source{};
        src.pre = q8_in_;
    }
    cuda::launch_matvec_q8(jobs, n_jobs, K, src, swiglu_out, q8_warps_, q8_max_blocks_, q8_staged_sms_,
                           q8_staged_lanes_, pdl_, enq(), &trace_);
}

cudaStream_t CudaBackend::enq() {
    if (step_ && !step_->empty()) launch_step();
    return stream_;
}

void CudaBackend::launch_step() {
    // A run first seen while a graph is recorded cannot upload its phase table (the recording
    // would fail): its phases then go to the ordinary kernels. Decode records only after an
    // eager step of the same shape, which uploaded it.
    if (step_->launch(stream_, mode_ == Mode::Eager, pdl_, &trace_)) return;
    if (step_required_)
        throw Error("cuda backend: METALLIC_CUDA_STEP=1, but a recorded decode step met a run of phases that no eager "
                    "step had uploaded");
    const std::vector<cuda::DecodeStep::Record> records = step_->records();
    step_->clear();
    for (const cuda::DecodeStep::Record& r : records) {
        if (r.kind == 0) launch_q8(r.jobs, r.n_jobs, r.K, r.src, r.swiglu_out);
        else cuda::launch_attention(r.attention, stream_);
    }
}

const float* CudaBackend::rope_table(float base, int head_dim) {
    for (const RopeTable& t : rope_tables_)
        if (t.base == base && t.head_dim == head_dim) return t.freq;
    if (mode_ != Mode::Eager) throw Error("cuda backend: RoPE table must be made during a recorded step");
    const int half = head_dim / 2;
    std::vector<float> f(static_cast<size_t>(std::max(half, 1)));
    // As the CPU backend computes them: in double, rounded to float.
    for (int i = 0; i < half; ++i) f[i] = float(1.0 / std::pow(double(base), double(2 * i) / head_dim));
    float* d = static_cast<float*>(device_alloc(f.size() * sizeof(float), "RoPE frequencies"));
    rope_tables_.push_back({base, head_dim, d});
    MN_CUDA_CHECK(cudaMemcpy(d, f.data(), f.size() * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

void CudaBackend::wait_host_staging() {
    if (!staging_in_use_) return;
    MN_CUDA_CHECK(cudaStreamSynchronize(stream_));
    staging_in_use_ = false;
}

void CudaBackend::set_pos(int pos0) {
    if (pos0 == device_pos_) return;
    if (mode_ != Mode::Eager) throw Error("cuda backend: position changed inside a recorded step");
    wait_host_staging();
    *h_pos_ = pos0;
    MN_CUDA_CHECK(cudaMemcpyAsync(d_pos_, h_pos_, sizeof(int), cudaMemcpyHostToDevice, enq()));
    staging_in_use_ = true;
    device_pos_ = pos0;
}

// ---- graph bookkeeping ----------------------------------------------------------------------

bool CudaBackend::record(Sig sig) {
    if (capture_pending_) {
        abort_capture();
        throw Error("cuda backend: a recorded decode step must begin with its embed");
    }
    if (mode_ == Mode::Capture) {
        if (!graph_done_this_step_) sigs_.push_back(sig);
        else ops_after_graph_ = true;
        return false;
    }
    if (mode_ == Mode::Replay) {
        if (graph_done_this_step_) {
            // An op after the output: the recorded graph no longer describes the step.
            drop_graph();
            throw Error("cuda backend: an op followed the output of a replayed decode step");
        }
        if (replay_index_ >= sigs_.size() || !(sigs_[replay_index_] == sig)) {
            // If the graph was launched already (launch_graph), its work is thrown away with the
            // step: nothing reads this step's output, and the next step rewrites its cache row.
            const size_t at = replay_index_;
            drop_graph();
            throw Error("cuda backend: op " + std::to_string(at) +
                        " of a decode step differs from the recorded CUDA graph");
        }
        ++replay_index_;
        return true;
    }
    return false;
}

void CudaBackend::drop_graph() {
    abort_capture();
    ahead_.active = false;
    if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
    graph_exec_ = nullptr;
    sigs_.clear();
    replayable_steps_ = 0;
    mode_ = Mode::Eager;
}

void CudaBackend::abort_capture() {
    cudaStreamCaptureStatus st;
    if (cudaStreamIsCapturing(stream_, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
        cudaGraph_t g = nullptr;
        cudaStreamEndCapture(stream_, &g);
        if (g) cudaGraphDestroy(g);
        cudaGetLastError();
    }
    if (mode_ == Mode::Capture) {
        sigs_.clear();
        mode_ = Mode::Eager;
        device_pos_ = -1;  // the recorded embed never ran
    }
    capture_pending_ = false;
}

void CudaBackend::begin_step(int rows, int pos0, bool replayable) {
    // A step run ahead and not taken is forgotten: this step comes after it in stream order and
    // rewrites what it wrote.
    ahead_.active = false;
    if (step_open_) {
        // The previous step ended in an exception: forget a half-made recording.
        abort_capture();
        mode_ = Mode::Eager;
    }
    flush();
    step_open_ = true;
    graph_done_this_step_ = false;
    ops_after_graph_ = false;
    step_pos_ = pos0;
    const bool graphable = graphs_enabled_ && replayable && rows == 1;
    if (!graphable) {
        mode_ = Mode::Eager;
        set_pos(pos0);
        return;
    }
    ++replayable_steps_;
    if (graph_exec_) {
        mode_ = Mode::Replay;  // launched by the embed, once the step's input is staged
        replay_index_ = 0;
        return;
    }
    if (replayable_steps_ < (step_ ? 3 : 2)) {
        // The first decode step runs eagerly: it grows every lazily sized buffer, which a
        // recording must not do (and which splits its decode-step runs where a buffer grows).
        // The second, with every buffer sized, uploads the decode-step kernel's phase tables
        // as the recorded steps will issue them (a recording cannot upload).
        mode_ = Mode::Eager;
        set_pos(pos0);
        return;
    }
    sigs_.clear();
    mode_ = Mode::Capture;
    capture_pending_ = true;  // the embed stages the input, then begins the recording
}

void CudaBackend::finish_graph_part() {
    if (graph_done_this_step_) return;
    if (mode_ == Mode::Capture) {
        flush();
        enq();
        cudaGraph_t graph = nullptr;
        MN_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
        const cudaError_t err = cudaGraphInstantiate(&graph_exec_, graph, 0);
        cudaGraphDestroy(graph);
        if (err != cudaSuccess) {
            graph_exec_ = nullptr;
            sigs_.clear();
            mode_ = Mode::Eager;
            cuda::throw_cuda(err, "cudaGraphInstantiate", __FILE__, __LINE__);
        }
        MN_CUDA_CHECK(cudaGraphLaunch(graph_exec_, stream_));
        staging_in_use_ = true;
        graph_done_this_step_ = true;
    } else if (mode_ == Mode::Replay) {
        if (replay_index_ != sigs_.size()) {
            drop_graph();
            throw Error("cuda backend: a decode step ended before the recorded CUDA graph did");
        }
        graph_done_this_step_ = true;  // launched by its embed
    }
}

void CudaBackend::launch_graph() {
    MN_CUDA_CHECK(cudaGraphLaunch(graph_exec_, stream_));
    ++graph_replays_;
    staging_in_use_ = true;
}

void CudaBackend::end_step() {
    if (mode_ != Mode::Eager) finish_graph_part();
    flush();
    enq();
    if (mode_ == Mode::Capture && ops_after_graph_) drop_graph();  // the graph covers only part of the step
    mode_ = Mode::Eager;
    step_open_ = false;
}

// ---- pending ops ----------------------------------------------------------------------------

void CudaBackend::launch_pending_norm() {
    if (!norm_.active) return;
    norm_.active = false;
    cuda::launch_rms_norm(norm_.x, norm_.w, norm_.eps, norm_.rows, norm_.width, norm_.out, enq());
}

void CudaBackend::flush() {
    if (rope_.active) {
        rope_.active = false;
        cuda::launch_rope(rope_.q, rope_.k, rope_.rows, d_pos_, rope_.shape.n_heads, rope_.shape.n_kv_heads,
                          rope_.shape.head_dim, rope_.freq, rope_.neox, enq());
    }
    if (mm_.n == 0) {
        launch_pending_norm();
        return;
    }
    PendingMatmul mm = mm_;
    mm_.n = 0;
    mm_.swiglu_out = nullptr;
    bool fuse_norm = norm_.active && norm_.out == mm.x && norm_.rows == mm.rows && norm_.width == mm.K &&
                     norm_.out != norm_.x && mm.rows <= cuda::kMaxMatvecRows;
    // The fused launch reads norm_.x in every block: nothing in it may write there.
    for (int j = 0; fuse_norm && j < mm.n; ++j)
        if (mm.jobs[j].out == norm_.x || mm.jobs[j].residual == norm_.x) fuse_norm = false;
    if (flush_q8(mm, fuse_norm)) return;
    if (mm.rows <= cuda::kMaxMatvecRows) {
        cuda::MatvecInput in;
        in.rows = mm.rows;
        in.K = mm.K;
        if (fuse_norm) {
            norm_.active = false;
            in.x = norm_.x;
            in.norm_weight = norm_.w;
            in.eps = norm_.eps;
            in.norm_out = norm_.out;
        } else {
            launch_pending_norm();
            in.x = mm.x;
        }
        if (mm.swiglu_out && fuse_norm) {
            in.swiglu_out = mm.swiglu_out;
            cuda::launch_matvec(mm.jobs, mm.n, in, enq());
        } else {
            cuda::launch_matvec(mm.jobs, mm.n, in, enq());
            if (mm.swiglu_out)
                cuda::launch_swiglu(mm.jobs[0].out, mm.jobs[1].out, int64_t(mm.rows) * mm.jobs[0].w.N, mm.swiglu_out,
                                    enq());
        }
        return;
    }
    launch_pending_norm();
    // Many rows: cuBLAS on dequantized weights where it can be loaded (never while a graph is
    // recorded: its first use allocates), else the WMMA kernel.
    if (mode_ == Mode::Eager && cublas_->wants(mm.rows, enq())) {
        cublas_->run(mm.jobs, mm.n, mm.x, mm.rows, mm.K, mm.swiglu_out, enq());
        return;
    }
    ensure_row_scale(mm.rows);
    cuda::launch_row_scale(mm.x, mm.rows, mm.K, row_scale_, enq());
    for (int j = 0; j < mm.n; ++j)
        cuda::launch_gemm(mm.jobs[j].w, mm.x, mm.rows, mm.jobs[j].out, mm.jobs[j].bias, mm.jobs[j].residual,
                          row_scale_, enq());
    if (mm.swiglu_out)
        cuda::launch_swiglu(mm.jobs[0].out, mm.jobs[1].out, int64_t(mm.rows) * mm.jobs[0].w.N, mm.swiglu_out,
                            enq());
}

// ---- ops ------------------------------------------------------------------------------------

void CudaBackend::read(const Buffer& src, int64_t offset, int64_t n, float* dst) {
    if (mode_ == Mode::Capture || mode_ == Mode::Replay) {
        if (!graph_done_this_step_) {
            if (mode_ == Mode::Replay && replay_index_ != sigs_.size()) {
                drop_graph();
                throw Error("cuda backend: a decode step read its output before the recorded CUDA graph ended");
            }
            finish_graph_part();
        } else {
            ops_after_graph_ = true;
        }
    }
    flush();
    MN_CUDA_CHECK(cudaMemcpyAsync(dst, src.f32() + offset, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost, enq()));
    MN_CUDA_CHECK(cudaStreamSynchronize(stream_));
    staging_in_use_ = false;
}

void CudaBackend::top_k(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
                        float* log_sum_exp) {
    select_top_k(src, offset, n, k, ids, vals, log_sum_exp, false);
}

void CudaBackend::top_k_run_ahead(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
                                  float* log_sum_exp) {
    select_top_k(src, offset, n, k, ids, vals, log_sum_exp, true);
}

void CudaBackend::launch_topk_half(const float* x, int64_t n, int k, bool lse, int half, bool next) {
    int32_t* d_ids = h_topk_dev_ + half * kTopkResultWords;
    float* d_vals = reinterpret_cast<float*>(d_ids + 64);
    cuda::launch_topk(x, n, k, d_topk_scratch_, d_ids, d_vals, lse ? d_vals + 64 : nullptr, next ? d_next_ : nullptr,
                      d_pos_, pdl_, enq());
    MN_CUDA_CHECK(cudaEventRecord(topk_done_[half], stream_));
}

void CudaBackend::read_topk_half(int half, int k, int32_t* ids, float* vals, float* log_sum_exp) const {
    const int32_t* h = h_topk_ + half * kTopkResultWords;
    std::memcpy(ids, h, sizeof(int32_t) * k);
    std::memcpy(vals, h + 64, sizeof(float) * k);
    if (log_sum_exp) std::memcpy(log_sum_exp, h + 128, sizeof(float));
}

void CudaBackend::launch_ahead(const float* x, int64_t n, int k, bool lse, int half, int pos) {
    MN_CUDA_CHECK(cudaGraphLaunch(graph_exec_, stream_));
    ++steps_run_ahead_;
    launch_topk_half(x, n, k, lse, half, true);
    device_pos_ = pos;  // the graph's embed copied it to d_pos_
    ahead_ = Ahead{true, -1, pos, k, lse, half, x, n};
}

void CudaBackend::select_top_k(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
                               float* log_sum_exp, bool run_ahead) {
    if (k < 1 || k > n) throw InvalidArgument("top_k must be in [1, " + std::to_string(n) + "], got " + std::to_string(k));
    if (k > 64) {
        Backend::top_k(src, offset, n, k, ids, vals, log_sum_exp);  // through read(): the host selects
        return;
    }
    if (mode_ == Mode::Capture || mode_ == Mode::Replay) {
        if (!graph_done_this_step_) finish_graph_part();
        else ops_after_graph_ = true;
    }
    flush();
    const size_t need = cuda::topk_scratch_bytes(n, k);
    if (need > topk_scratch_bytes_) {
        MN_CUDA_CHECK(cudaStreamSynchronize(stream_));
        if (d_topk_scratch_) cudaFree(d_topk_scratch_);
        d_topk_scratch_ = nullptr;
        topk_scratch_bytes_ = 0;
        d_topk_scratch_ = device_alloc(need, "top-k scratch");
        MN_CUDA_CHECK(cudaMemsetAsync(d_topk_scratch_, 0, need, enq()));  // the kernel's block counter
        topk_scratch_bytes_ = need;
    }
    const float* x = src.f32() + offset;
    const bool lse = log_sum_exp != nullptr;
    // Run the next step ahead only where the recorded graph is this whole step (its output is
    // this top-k's input) and the next step may grow nothing.
    const bool ahead = run_ahead && run_ahead_ && graph_exec_ && graph_done_this_step_ && !ops_after_graph_;
    launch_topk_half(x, n, k, lse, 0, ahead);
    if (ahead) {
        launch_ahead(x, n, k, lse, 1, step_pos_ + 1);
        MN_CUDA_CHECK(cudaEventSynchronize(topk_done_[0]));
    } else {
        MN_CUDA_CHECK(cudaStreamSynchronize(stream_));
        staging_in_use_ = false;
    }
    read_topk_half(0, k, ids, vals, log_sum_exp);
    if (ahead) ahead_.token = ids[0];
}

bool CudaBackend::take_ahead(int32_t token, int pos0, int k, int32_t* ids, float* vals, float* log_sum_exp,
                             bool further) {
    if (!ahead_.active) return false;
    const Ahead a = ahead_;
    ahead_.active = false;
    if (a.token != token || a.pos != pos0 || a.k != k || a.lse != (log_sum_exp != nullptr) || mode_ != Mode::Eager ||
        !graph_exec_)
        return false;
    // Hit: the step the caller asks for is in flight. The one after it goes first, into the
    // other half of the results, then this one's results are read.
    if (further && run_ahead_) launch_ahead(a.x, a.n, a.k, a.lse, 1 - a.half, pos0 + 1);
    MN_CUDA_CHECK(cudaEventSynchronize(topk_done_[a.half]));
    ++steps_taken_ahead_;
    read_topk_half(a.half, k, ids, vals, log_sum_exp);
    if (ahead_.active) ahead_.token = ids[0];
    return true;
}

void CudaBackend::synchronize() {
    if (mode_ != Mode::Eager) finish_graph_part();
    flush();
    enq();
    MN_CUDA_CHECK(cudaStreamSynchronize(stream_));
    staging_in_use_ = false;
}

void CudaBackend::embed(const WeightTensor& table, const int32_t* ids, int rows, Buffer& out) {
    const Sig sig = Sig().add(1).add(table.device).add(uint64_t(rows)).add(out.data);
    if (capture_pending_ || (mode_ == Mode::Replay && replay_index_ == 0)) {
        // A recorded step's input: one copy outside the graph (a step run ahead gets it from
        // the top-k kernel instead), then the graph, or the recording, from this embed on.
        wait_host_staging();  // the copy before may still read h_next_
        h_next_[0] = ids[0];
        h_next_[1] = step_pos_;
        MN_CUDA_CHECK(cudaMemcpyAsync(d_next_, h_next_, 2 * sizeof(int), cudaMemcpyHostToDevice, enq()));
        staging_in_use_ = true;
        device_pos_ = step_pos_;
        if (mode_ == Mode::Replay) {
            record(sig);
            launch_graph();
            return;
        }
        capture_pending_ = false;
        MN_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
        record(sig);
        cuda::launch_embed(qmatrix(table), d_next_, 1, out.f32(), d_next_ + 1, d_pos_, enq());
        return;
    }
    // The staging above is a recorded step's only input: an embed later in such a step would be
    // replayed reading ids from the host that no replay writes.
    if (mode_ != Mode::Eager) throw Error("cuda backend: a recorded decode step has one embed, its first op");
    record(sig);
    ensure_ids(rows);
    wait_host_staging();
    std::memcpy(h_ids_, ids, sizeof(int32_t) * rows);
    flush();
    staging_in_use_ = true;
    cuda::launch_embed(qmatrix(table), h_ids_dev_, rows, out.f32(), nullptr, nullptr, enq());
}

void CudaBackend::rms_norm(const Buffer& x, const WeightTensor& weight, float eps, int rows, int width, Buffer& out) {
    if (record(Sig().add(2).add(x.data).add(weight.device).add(uint64_t(rows)).add(uint64_t(width)).add(out.data)))
        return;
    flush();
    norm_.active = true;
    norm_.x = x.f32();
    norm_.w = static_cast<const float*>(weight.device);
    norm_.eps = eps;
    norm_.rows = rows;
    norm_.width = width;
    norm_.out = out.f32();
    if (norm_.out == norm_.x) launch_pending_norm();  // in place: nothing can fuse with it
}

void CudaBackend::matmul(const WeightTensor& w, const Buffer& x, int rows, Buffer& out, const WeightTensor* bias) {
    if (record(Sig().add(3).add(w.device).add(x.data).add(uint64_t(rows)).add(out.data).add(bias ? bias->device : nullptr)))
        return;
    cuda::MatvecJob job;
    job.w = qmatrix(w);
    job.bias = bias ? static_cast<const float*>(bias->device) : nullptr;
    job.out = out.f32();
    bool joins = mm_.n > 0 && mm_.n < cuda::kMaxMatvecJobs && mm_.x == x.f32() && mm_.rows == rows &&
                 mm_.K == job.w.K && job.out != mm_.x && !mm_.swiglu_out;
    for (int j = 0; joins && j < mm_.n; ++j)
        if (mm_.jobs[j].out == job.out || mm_.jobs[j].residual) joins = false;
    if (!joins) {
        if (mm_.n > 0 || (norm_.active && norm_.out != x.f32())) flush();
        mm_.n = 0;
        mm_.x = x.f32();
        mm_.rows = rows;
        mm_.K = job.w.K;
        mm_.swiglu_out = nullptr;
    }
    mm_.jobs[mm_.n++] = job;
}

void CudaBackend::rope(Buffer& q, Buffer& k, int rows, int pos0, const AttentionShape& s, float base,
                       RopeStyle style) {
    if (record(Sig().add(4).add(q.data).add(k.data).add(uint64_t(rows))))
        return;
    flush();
    set_pos(pos0);
    // Held back: the attention that follows stores k and v in the same launch.
    rope_.active = true;
    rope_.q = q.f32();
    rope_.k = k.f32();
    rope_.rows = rows;
    rope_.shape = s;
    rope_.freq = rope_table(base, s.head_dim);
    rope_.neox = style == RopeStyle::NeoX;
}

void CudaBackend::attention(const Buffer& q, const Buffer& k, const Buffer& v, KVLayer& cache, int n_ctx, int rows,
                            int pos0, const AttentionShape& s, Buffer& out) {
    if (record(Sig().add(5).add(q.data).add(cache.k.data).add(uint64_t(rows)).add(out.data)))
        return;
    const bool fuse_rope = rope_.active && rope_.q == q.f32() && rope_.k == k.f32() && rope_.rows == rows &&
                           rope_.shape.n_heads == s.n_heads && rope_.shape.n_kv_heads == s.n_kv_heads &&
                           rope_.shape.head_dim == s.head_dim && mm_.n == 0 && !norm_.active && pos0 == device_pos_;
    // Decode: RoPE, the KV store, attention and the combine of its chunks in one kernel.
    const bool decode = cuda::attention_decode_fused(rows, s.head_dim, attn_thread_per_key_);
    cuda::AttentionArgs a;
    if (decode && fuse_rope) {
        rope_.active = false;
        a.rope_freq = rope_.freq;
        a.rope_neox = rope_.neox;
    } else if (fuse_rope) {
        rope_.active = false;
        cuda::launch_rope_store(rope_.q, rope_.k, v.f32(), cache.k.data, cache.v.data, cache.k.dtype == DType::F16,
                                n_ctx, rows, d_pos_, s.n_heads, s.n_kv_heads, s.head_dim, rope_.freq, rope_.neox,
                                enq());
        a.kv_stored = true;
    } else {
        flush();
    }
    set_pos(pos0);
    ensure_scratch(cuda::attention_scratch_floats(rows, s.n_heads, s.head_dim, n_ctx));
    if (decode) {
        ensure_attn_counters(s.n_heads);
        a.counters = attn_counters_;
        a.pdl = pdl_;
        a.decode_chunk = attn_decode_chunk_;
        a.stage_kv = attn_stage_kv_;
    }
    a.q = q.f32();
    a.k = k.f32();
    a.v = v.f32();
    a.k_cache = cache.k.data;
    a.v_cache = cache.v.data;
    a.f16_cache = cache.k.dtype == DType::F16;
    a.n_ctx = n_ctx;
    a.rows = rows;
    a.pos0 = d_pos_;
    a.n_heads = s.n_heads;
    a.n_kv_heads = s.n_kv_heads;
    a.head_dim = s.head_dim;
    a.out = out.f32();
    a.scratch = scratch_;
    a.thread_per_key = attn_thread_per_key_;
    a.prefill_tc = attn_prefill_tc_;
    a.trace = &trace_;
    const bool to_step = decode && step_ && step_attention_ && step_->takes_attention(a);
    if (decode && step_ && step_attention_ && !to_step && step_takes_all_)
        throw Error("cuda backend: METALLIC_CUDA_STEP=1, but the decode-step kernel does not take this attention");
    if (to_step) step_->add_attention(a);
    else cuda::launch_attention(a, enq());
}

void CudaBackend::swiglu(const Buffer& gate, const Buffer& up, int64_t n, Buffer& out) {
    if (record(Sig().add(6).add(gate.data).add(up.data).add(uint64_t(n)).add(out.data)))
        return;
    if (mm_.n == 2 && !mm_.swiglu_out && mm_.jobs[0].out == gate.f32() && mm_.jobs[1].out == up.f32() &&
        mm_.jobs[0].w.N == mm_.jobs[1].w.N && n == int64_t(mm_.rows) * mm_.jobs[0].w.N &&
        !mm_.jobs[0].residual && !mm_.jobs[1].residual && out.f32() != mm_.x && out.f32() != up.f32()) {
        mm_.swiglu_out = out.f32();
        flush();
        return;
    }
    flush();
    cuda::launch_swiglu(gate.f32(), up.f32(), n, out.f32(), enq());
}

void CudaBackend::add(Buffer& x, const Buffer& y, int64_t n) {
    if (record(Sig().add(7).add(x.data).add(y.data).add(uint64_t(n))))
        return;
    if (mm_.n > 0 && !mm_.swiglu_out) {
        for (int j = 0; j < mm_.n; ++j) {
            cuda::MatvecJob& job = mm_.jobs[j];
            if (job.out == y.f32() && !job.residual && n == int64_t(mm_.rows) * job.w.N && x.f32() != mm_.x &&
                x.f32() != job.out) {
                bool clash = false;  // x must not be another pending product's output
                for (int i = 0; i < mm_.n; ++i) clash |= mm_.jobs[i].out == x.f32();
                if (!clash) {
                    job.residual = x.f32();
                    flush();
                    return;
                }
            }
        }
    }
    flush();
    cuda::launch_add(x.f32(), y.f32(), n, enq());
}

void CudaBackend::copy_rows(const Buffer& src, int src_row, int rows, int width, Buffer& dst) {
    if (record(Sig().add(8).add(src.data).add(uint64_t(src_row)).add(uint64_t(rows)).add(dst.data)))
        return;
    flush();
    MN_CUDA_CHECK(cudaMemcpyAsync(dst.f32(), src.f32() + int64_t(src_row) * width, size_t(rows) * width * sizeof(float),
                                  cudaMemcpyDeviceToDevice, enq()));
}

}  // namespace

bool cuda_device_available() {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return n > 0;
}

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
    return std::make_unique<CudaBackend>(options);
}

}  // namespace mn
