// The CPU backend: the reference every other backend is tested against, and a
// fast path in its own right. Weights are used in place in the file mapping;
// matrix products run on the quantized blocks (quant/dot.h) with activations
// quantized to the weight type's partner format.
#pragma once

#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/thread_pool.h"
#include "common/cpu_features.h"

namespace mn {

class CpuBackend final : public Backend {
public:
    // How activations enter the integer dot products (see BackendOptions::activations).
    enum class ActivationMode { OneLevel, TwoLevel, Auto };

    CpuBackend(int n_threads, Isa isa, ActivationMode activations);
    ~CpuBackend() override;

    std::string name() const override { return "cpu"; }
    int n_threads() const { return pool_.size(); }
    Isa isa() const { return isa_; }

    Buffer alloc(int64_t n, DType dtype) override;
    void release(Buffer& buffer) override;
    void upload(WeightTensor& weight) override { weight.device = weight.host; }
    void read(const Buffer& src, int64_t offset, int64_t n, float* dst) override;
    void synchronize() override {}

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
    void top_k(const Buffer& src, int64_t offset, int64_t n, int k, int32_t* ids, float* vals,
               float* log_sum_exp) override;

private:
    // Prefill on AVX-512 VNNI: weight bands unpacked to panels (quant/panel_gemm.h).
    void matmul_panel(const WeightTensor& w, const Buffer& x, int rows, int levels, Buffer& out,
                      const WeightTensor* bias);
    // Fallback for weight types without an integer dot kernel.
    void matmul_dequantized(const WeightTensor& w, const Buffer& x, int rows, Buffer& out, const WeightTensor* bias);
    // Per-thread scratch that grows on demand (never shared between threads).
    float* thread_scratch(int thread, size_t n_floats);
    uint8_t* activation_scratch(size_t bytes);

    ThreadPool pool_;
    Isa isa_;
    ActivationMode activations_;
    std::vector<std::vector<float>> scratch_;
    std::vector<uint8_t> quantized_activations_;
};

}  // namespace mn
