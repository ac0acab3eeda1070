// Prefill matrix products through cuBLAS on dequantized weights.
//
// For many activation rows the product is compute-bound, and cuBLAS's fp16
// tensor-core GEMMs run several times faster than gemm.cu's WMMA kernel. The
// weight is dequantized to fp16 into a scratch buffer, a slice of its rows at
// a time (at most CublasGemm::slice_bytes_, so that a huge matrix such as a
// vocabulary-sized output head never needs a huge buffer); the activation rows
// are converted to fp16 once per launch with a per-row power-of-two scale (as
// gemm.cu does, so fp16 cannot overflow); cublasGemmEx multiplies with fp32
// accumulation straight into the fp32 output; one epilogue kernel divides the
// row scale back out and adds the bias and the residual (and, for gate and up,
// computes the SwiGLU).
//
// The scratch is transient working memory for one product at a time: it is
// overwritten by the next slice and never holds a copy of the model.
//
// cuBLAS is not linked: the build machine need not have it. It is loaded at
// run time with dlopen (libcublas.so.<CUDA major>), and the few C entry points
// used are declared here with their enum arguments as plain ints (values of
// cublas_api.h). When it cannot be loaded the backend keeps gemm.cu's kernel.
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace mn::cuda {

namespace {

// cublas_api.h / library_types.h values (checked against the CUDA 13.0 headers).
constexpr int kCublasStatusSuccess = 0;  // CUBLAS_STATUS_SUCCESS
constexpr int kCublasOpN = 0;            // CUBLAS_OP_N
constexpr int kCublasOpT = 1;            // CUBLAS_OP_T
constexpr int kCudaR32F = 0;             // CUDA_R_32F
constexpr int kCudaR16F = 2;             // CUDA_R_16F
constexpr int kCublasCompute32F = 68;    // CUBLAS_COMPUTE_32F
constexpr int kCublasGemmDefault = -1;   // CUBLAS_GEMM_DEFAULT

constexpr int kKAlign = 8;  // fp16 rows padded to 16 bytes: cuBLAS's fast paths want aligned leading dimensions

int padded_k(int K) { return (K + kKAlign - 1) / kKAlign * kKAlign; }

// One thread per 8 elements of a weight row (load8, the decode kernels' unit):
// consecutive threads read consecutive pieces of the blocks and store
// consecutive 16-byte pieces of fp16, so both sides are coalesced (a thread per
// 32-element chunk, storing 64 bytes apart, took 13.6 ms of kernel time in a
// 7B pp512 on an H100; this one 5.7 ms).
// Rows are kp halves apart, zeros in [K, kp).
template <TensorType T>
__global__ void dequant_f16_kernel(const uint8_t* __restrict__ w, size_t row_bytes, int n_rows, int K, int kp,
                                   __half* __restrict__ out) {
    const int pieces = kp / 8;
    const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (i >= int64_t(n_rows) * pieces) return;
    const int r = int(i / pieces), p = int(i % pieces);
    float v[8];
    // Block formats have K a multiple of their block (so kp == K); the float formats read 0 past K.
    load8<T>(w + size_t(r) * row_bytes, 8 * p, K, v);
    __half2 h[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) h[t] = __floats2half2_rn(v[2 * t], v[2 * t + 1]);
    reinterpret_cast<uint4*>(out)[i] = *reinterpret_cast<const uint4*>(h);  // row r, piece p: kp / 8 pieces a row
}

struct DequantLaunch {
    const QMatrix& w;
    int row0, n_rows, kp;
    __half* out;
    cudaStream_t s;
    template <TensorType T>
    void operator()() const {
        const int64_t n = int64_t(n_rows) * (kp / 8);
        const int threads = 256;
        dequant_f16_kernel<T><<<unsigned((n + threads - 1) / threads), threads, 0, s>>>(
            w.data + size_t(row0) * w.row_bytes, w.row_bytes, n_rows, w.K, kp, out);
    }
};

// One block per activation row: the power of two that brings the row's largest
// magnitude to about 2^10 (common.cuh: fp16_row_scale), then the scaled row as
// fp16, kp halves apart with zeros in [K, kp). The second read of the row hits cache.
__global__ void to_f16_kernel(const float* __restrict__ x, int K, int kp, __half* __restrict__ out,
                              float* __restrict__ scale) {
    const int r = blockIdx.x;
    const float* row = x + size_t(r) * K;
    const float s = fp16_row_scale(row, K);
    if (threadIdx.x == 0) scale[r] = s;
    __half* o = out + size_t(r) * kp;
    if ((K & 3) == 0) {
        const float4* src = reinterpret_cast<const float4*>(row);
        for (int i = threadIdx.x; i < K / 4; i += blockDim.x) {
            const float4 t = src[i];
            __half2 h[2] = {__floats2half2_rn(t.x * s, t.y * s), __floats2half2_rn(t.z * s, t.w * s)};
            reinterpret_cast<uint2*>(o)[i] = *reinterpret_cast<const uint2*>(h);
        }
        for (int i = K + threadIdx.x; i < kp; i += blockDim.x) o[i] = __float2half(0.0f);
    } else {
        for (int i = threadIdx.x; i < kp; i += blockDim.x) o[i] = __float2half(i < K ? row[i] * s : 0.0f);
    }
}

// out[m][n] = acc[m][n] / scale[m] + bias[n] in place (acc is what cuBLAS wrote to out);
// residual[m][n] += out[m][n] when set.
__global__ void epilogue_kernel(float* out, int rows, int N, const float* __restrict__ scale, const float* __restrict__ bias,
                                float* residual) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float b = bias ? bias[n] : 0.0f;
    for (int m = blockIdx.y; m < rows; m += gridDim.y) {
        const size_t i = size_t(m) * N + n;
        const float v = out[i] * (1.0f / scale[m]) + b;  // scale: a power of two, so exact
        out[i] = v;
        if (residual) residual[i] += v;
    }
}

// Gate and up (same height N) finished together: both outputs as epilogue_kernel
// writes them (the gate's only where it is not the SwiGLU's own buffer), and
// swiglu = silu(gate) * up. Every element is read before it is written, so the
// SwiGLU output may be the gate's or the up's buffer.
__global__ void epilogue_swiglu_kernel(float* gate, float* up, int rows, int N, const float* __restrict__ scale,
                                       const float* __restrict__ gate_bias, const float* __restrict__ up_bias,
                                       float* swiglu) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float gb = gate_bias ? gate_bias[n] : 0.0f, ub = up_bias ? up_bias[n] : 0.0f;
    for (int m = blockIdx.y; m < rows; m += gridDim.y) {
        const size_t i = size_t(m) * N + n;
        const float inv = 1.0f / scale[m];  // a power of two: exact
        const float g = gate[i] * inv + gb;
        const float u = up[i] * inv + ub;
        if (gate != swiglu) gate[i] = g;
        if (up != swiglu) up[i] = u;
        swiglu[i] = g / (1.0f + expf(-g)) * u;
    }
}

}  // namespace

// The cuBLAS entry points, as cublas_api.h declares them (handles as void*, enums as int).
struct CublasGemm::Api {
    using Create = int (*)(void** handle);
    using Destroy = int (*)(void* handle);
    using SetStream = int (*)(void* handle, cudaStream_t stream);
    using GemmEx = int (*)(void* handle, int transa, int transb, int m, int n, int k, const void* alpha,
                           const void* A, int Atype, int lda, const void* B, int Btype, int ldb, const void* beta,
                           void* C, int Ctype, int ldc, int compute_type, int algo);
    Create create = nullptr;
    Destroy destroy = nullptr;
    SetStream set_stream = nullptr;
    GemmEx gemm_ex = nullptr;
};

CublasGemm::CublasGemm() {
    // METALLIC_CUDA_CUBLAS: 0 keeps gemm.cu's kernel (comparisons, tests); 1 requires cuBLAS (an
    // error when it cannot be loaded); unset: cuBLAS when it can be loaded.
    if (const char* e = std::getenv("METALLIC_CUDA_CUBLAS")) {
        const std::string v(e);
        if (v == "0") mode_ = Off;
        else if (v == "1") mode_ = Required;
    }
    // Tuning and test knobs: the fewest rows that take this path, and the slice of weight rows
    // dequantized at a time (in MiB of fp16, or a fixed number of rows, which the tests set
    // small so that every slice boundary is exercised).
    if (const char* e = std::getenv("METALLIC_CUDA_CUBLAS_MIN_ROWS")) min_rows_ = std::max(1, std::atoi(e));
    if (const char* e = std::getenv("METALLIC_CUDA_CUBLAS_SLICE_MIB"))
        slice_bytes_ = size_t(std::max(1, std::atoi(e))) << 20;
    if (const char* e = std::getenv("METALLIC_CUDA_CUBLAS_SLICE_ROWS")) slice_rows_ = std::max(1, std::atoi(e));
    // METALLIC_CUDA_CUBLAS_OVERLAP=0: dequantize on the product's own stream (for comparisons).
    if (const char* e = std::getenv("METALLIC_CUDA_CUBLAS_OVERLAP")) overlap_ = std::string(e) != "0";
}

CublasGemm::~CublasGemm() {
    // Best effort: the destructor must not throw. The owner has synchronized its stream.
    if (handle_ && api_ && api_->destroy) api_->destroy(handle_);
    api_.reset();
    if (lib_) dlclose(lib_);
    for (void* p : {static_cast<void*>(w16_[0]), static_cast<void*>(w16_[1]), static_cast<void*>(x16_),
                    static_cast<void*>(scale_)})
        if (p) cudaFree(p);
    for (cudaEvent_t e : {start_, ready_[0], ready_[1], free_[0], free_[1]})
        if (e) cudaEventDestroy(e);
    if (side_) cudaStreamDestroy(side_);
}

bool CublasGemm::load(cudaStream_t stream) {
    if (mode_ == Off) return false;
    if (tried_) return handle_ != nullptr;
    tried_ = true;
    std::string why;
    // An explicit path first, then the library search path (which also finds a copy already
    // loaded into the process, e.g. by PyTorch), then the toolkit's usual places.
    const std::string so = "libcublas.so." + std::to_string(CUDART_VERSION / 1000);
    std::vector<std::string> candidates;
    if (const char* e = std::getenv("METALLIC_CUDA_CUBLAS_LIBRARY")) candidates.push_back(e);
    candidates.push_back(so);
    candidates.push_back("libcublas.so");
    for (const char* var : {"CUDA_HOME", "CUDA_PATH"})
        if (const char* e = std::getenv(var)) candidates.push_back(std::string(e) + "/lib64/" + so);
    candidates.push_back("/usr/local/cuda/lib64/" + so);
    for (const std::string& name : candidates) {
        lib_ = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (lib_) break;
        const char* err = dlerror();
        why += "\n  " + (err ? std::string(err) : name + ": not found");
    }
    if (lib_) {
        api_ = std::make_unique<Api>();
        api_->create = reinterpret_cast<Api::Create>(dlsym(lib_, "cublasCreate_v2"));
        api_->destroy = reinterpret_cast<Api::Destroy>(dlsym(lib_, "cublasDestroy_v2"));
        api_->set_stream = reinterpret_cast<Api::SetStream>(dlsym(lib_, "cublasSetStream_v2"));
        api_->gemm_ex = reinterpret_cast<Api::GemmEx>(dlsym(lib_, "cublasGemmEx"));
        if (!api_->create || !api_->destroy || !api_->set_stream || !api_->gemm_ex) {
            why += "\n  the library lacks cublasCreate_v2, cublasDestroy_v2, cublasSetStream_v2 or cublasGemmEx";
        } else {
            void* h = nullptr;
            const int st = api_->create(&h);
            if (st != kCublasStatusSuccess || !h) {
                why += "\n  cublasCreate_v2 failed with status " + std::to_string(st);
            } else if (const int st2 = api_->set_stream(h, stream); st2 != kCublasStatusSuccess) {
                api_->destroy(h);
                why += "\n  cublasSetStream_v2 failed with status " + std::to_string(st2);
            } else {
                handle_ = h;
                stream_ = stream;
            }
        }
        if (!handle_) {
            api_.reset();
            dlclose(lib_);
            lib_ = nullptr;
        }
    }
    if (!handle_ && mode_ == Required)
        throw Error("cuda backend: METALLIC_CUDA_CUBLAS=1 but cuBLAS could not be used:" + why);
    return handle_ != nullptr;
}

bool CublasGemm::wants(int rows, cudaStream_t stream) {
    return rows >= min_rows_ && load(stream);
}

namespace {

template <typename P>
void grow(P*& p, size_t& capacity, size_t elems, const char* what) {
    if (elems <= capacity) return;
    if (p) cudaFree(p);  // synchronizes: the previous product that used it has finished
    p = nullptr;
    capacity = 0;
    const cudaError_t err = cudaMalloc(&p, elems * sizeof(P));
    if (err != cudaSuccess) {
        cudaGetLastError();
        throw Error(std::string("cuda backend: out of device memory allocating ") +
                    std::to_string((elems * sizeof(P) + (1 << 19)) >> 20) + " MiB for " + what + ": " +
                    cudaGetErrorString(err));
    }
    capacity = elems;
}

}  // namespace

void CublasGemm::run(const MatvecJob* jobs, int n_jobs, const float* x, int rows, int K, float* swiglu_out,
                     cudaStream_t stream) {
    if (!handle_) throw Error("cuda backend: cuBLAS product launched without cuBLAS");
    if (stream != stream_) {
        if (const int st = api_->set_stream(handle_, stream); st != kCublasStatusSuccess)
            throw Error("cuda backend: cublasSetStream_v2 failed with status " + std::to_string(st));
        stream_ = stream;
    }
    if (swiglu_out && (n_jobs != 2 || jobs[0].w.N != jobs[1].w.N || jobs[0].residual || jobs[1].residual))
        throw Error("cuda backend: a fused SwiGLU needs gate and up of one height and no residual");
    const int kp = padded_k(K);
    // Each weight in equal slices of rows (multiples of 128, cuBLAS's tile height) of at most
    // slice_bytes_ of fp16: equal, so that no slice is a sliver that leaves the GPU idle.
    auto slice_rows = [&](int N) {
        if (slice_rows_ > 0) return std::min(slice_rows_, N);
        const int cap = int(std::max<size_t>(128, slice_bytes_ / (sizeof(__half) * size_t(kp)) / 128 * 128));
        const int n_slices = (N + cap - 1) / cap;
        return std::min(N, ((N + n_slices - 1) / n_slices + 127) / 128 * 128);
    };
    size_t slice_elems = 0;
    for (int j = 0; j < n_jobs; ++j) slice_elems = std::max(slice_elems, size_t(slice_rows(jobs[j].w.N)) * kp);
    for (int b = 0; b < (overlap_ ? 2 : 1); ++b) grow(w16_[b], w16_capacity_[b], slice_elems, "dequantized weight slices");
    grow(x16_, x16_capacity_, size_t(rows) * kp, "fp16 activations");
    grow(scale_, scale_capacity_, size_t(rows), "row scales");
    if (overlap_ && !side_) {
        MN_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
        for (cudaEvent_t* e : {&start_, &ready_[0], &ready_[1], &free_[0], &free_[1]})
            MN_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    }
    // With overlap_, slices are dequantized on side_ into two buffers in turn while the GEMM of
    // the previous slice runs on `stream` (dequantizing is memory-bound, the GEMM compute-bound).
    // side_ first waits for everything before this product on `stream` (earlier users of the
    // buffers, the weights' upload); then ready_[b] orders a slice's GEMM after its dequantization
    // and free_[b] the next dequantization into buffer b after that GEMM. Every piece of side_'s
    // work is waited for by `stream`, so synchronizing `stream` covers side_ too.
    if (overlap_) {
        MN_CUDA_CHECK(cudaEventRecord(start_, stream));
        MN_CUDA_CHECK(cudaStreamWaitEvent(side_, start_, 0));
    }

    to_f16_kernel<<<rows, 256, 0, stream>>>(x, K, kp, x16_, scale_);
    MN_CUDA_CHECK_LAUNCH("to_f16_kernel");
    const float one = 1.0f, zero = 0.0f;
    int b = 0;
    for (int j = 0; j < n_jobs; ++j) {
        const QMatrix& w = jobs[j].w;
        if (w.K != K) throw Error("cuda backend: fused matrix products of different widths");
        const int slice = slice_rows(w.N);
        for (int n0 = 0; n0 < w.N; n0 += slice) {
            const int ns = std::min(slice, w.N - n0);
            __half* w16 = w16_[b];
            const cudaStream_t dq = overlap_ ? side_ : stream;
            if (overlap_) MN_CUDA_CHECK(cudaStreamWaitEvent(side_, free_[b], 0));  // the GEMM two slices back
            if (!dispatch_type(w.type, DequantLaunch{w, n0, ns, kp, w16, dq}))
                throw Error("cuda gemm: unsupported weight type");
            MN_CUDA_CHECK_LAUNCH("dequant_f16_kernel");
            if (overlap_) {
                MN_CUDA_CHECK(cudaEventRecord(ready_[b], side_));
                MN_CUDA_CHECK(cudaStreamWaitEvent(stream, ready_[b], 0));
            }
            // Column-major view: C (ns x rows, ld N) = W_slice^T (ns x kp) * X (kp x rows),
            // i.e. out[m][n0 + i] = sum_k W[n0 + i][k] x16[m][k].
            const int st = api_->gemm_ex(handle_, kCublasOpT, kCublasOpN, ns, rows, kp, &one, w16, kCudaR16F, kp,
                                         x16_, kCudaR16F, kp, &zero, jobs[j].out + n0, kCudaR32F, w.N,
                                         kCublasCompute32F, kCublasGemmDefault);
            if (st != kCublasStatusSuccess)
                throw Error("cuda backend: cublasGemmEx failed with status " + std::to_string(st) + " (" +
                            std::to_string(ns) + " x " + std::to_string(rows) + " x " + std::to_string(kp) + ")");
            if (overlap_) {
                MN_CUDA_CHECK(cudaEventRecord(free_[b], stream));
                b ^= 1;
            }
        }
        if (swiglu_out) continue;
        const dim3 grid((w.N + 255) / 256, std::min(rows, 65535));
        epilogue_kernel<<<grid, 256, 0, stream>>>(jobs[j].out, rows, w.N, scale_, jobs[j].bias, jobs[j].residual);
        MN_CUDA_CHECK_LAUNCH("epilogue_kernel");
    }
    if (swiglu_out) {
        const int N = jobs[0].w.N;
        const dim3 grid((N + 255) / 256, std::min(rows, 65535));
        epilogue_swiglu_kernel<<<grid, 256, 0, stream>>>(jobs[0].out, jobs[1].out, rows, N, scale_, jobs[0].bias,
                                                         jobs[1].bias, swiglu_out);
        MN_CUDA_CHECK_LAUNCH("epilogue_swiglu_kernel");
    }
}

}  // namespace mn::cuda
