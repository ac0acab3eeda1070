// The persistent decode-step kernel's host side (decode_step.cu says what it does and why).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/cuda/kernels.h"

namespace mn::cuda {

// Collects a run of decode phases (one-row integer matvecs whose input is quantized in the
// kernel, and the fused decode attention) and launches them as one kernel. The caller adds
// phases in stream order and launches before it enqueues anything else.
class DecodeStep {
public:
    // max_phase_bytes: matvecs with more weight bytes than this are not taken (they keep the
    // ordinary kernels, whose many small blocks stream large matrices faster).
    // stream: the warp-specialized kernel (a producer warp streams every phase's weights through
    // a ring of shared-memory slots; matvecs only, sm_90), with `blocks` blocks (0: one per SM),
    // ring slots of `slot_bytes` (0: the most that fit) and `wpg` warps per row group (1, 2, 4, 8
    // or 16; others: 1); the last three for tests.
    DecodeStep(int device, size_t max_phase_bytes, bool stream = false, int blocks = 0, int slot_bytes = 0,
               int wpg = 1);
    ~DecodeStep();
    DecodeStep(const DecodeStep&) = delete;
    DecodeStep& operator=(const DecodeStep&) = delete;

    // Whether the device can run the kernel at all (enough shared memory, one block per SM).
    bool usable() const { return sms_ > 0; }
    // Whether these phases can join a run.
    bool takes_matvec(const MatvecJob* jobs, int n_jobs, int K, const Q8Source& src) const;
    bool takes_attention(const AttentionArgs& a) const;
    // Appends a phase (arguments as launch_matvec_q8's and launch_attention's; taken first).
    void add_matvec(const MatvecJob* jobs, int n_jobs, int K, const Q8Source& src, float* swiglu_out);
    void add_attention(const AttentionArgs& a);
    bool empty() const { return records_.empty(); }

    // The phases added since the last launch, as they were added.
    struct Record {
        int kind = 0;
        MatvecJob jobs[kMaxMatvecJobs];
        int n_jobs = 0, K = 0;
        Q8Source src;
        float* swiglu_out = nullptr;
        AttentionArgs attention;
    };
    const std::vector<Record>& records() const { return records_; }
    void clear() { records_.clear(); }

    // Enqueues the run on `stream` and clears it (trace: per-phase records in diagnostic builds). Its phase table lives in device memory, one
    // per distinct run, uploaded the first time (may_upload: not while a graph is recorded). A
    // run first seen when may_upload is false is not launched: false, and the records stay for
    // the caller to launch with the ordinary kernels.
    bool launch(cudaStream_t stream, bool may_upload, bool pdl, const TraceSink* trace = nullptr);

private:
    struct Program;
    // Distinct runs kept (a step with attention apart has two per layer).
    static constexpr size_t kMaxPrograms = 1024;
    int sms_ = 0;  // blocks of a launch (0: unusable)
    bool stream_ = false;
    int stream_wpg_ = 1;  // the streamed kernel's warps per row group
    int stage_bytes_ = 0;  // the stage buffers' bytes, or (stream_) a ring slot's
    size_t smem_bytes_ = 0;
    size_t max_phase_bytes_ = 0;
    unsigned int* sync_ = nullptr;  // barrier arrivals, blocks done (zero between launches)
    std::vector<Record> records_;
    std::vector<Program> programs_;
};

}  // namespace mn::cuda
