// Shared by the CUDA backend's .cu files: error checking that turns every CUDA
// failure into an mn::Error, and the GGUF block layouts as the device reads them.
//
// Weights stay in their GGUF block formats on the device. Every kernel that
// consumes a weight reads it through load_chunk32<T>(): the 32 consecutive
// elements [32c, 32c + 32) of one row, dequantized to float. A chunk is one
// block for the 32-element formats and one eighth of a 256-element super-block
// for the K-quants, so every kernel walks rows in the same 32-element steps.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

#include "common/error.h"
#include "backend/cuda/kernels.h"
#include "quant/formats.h"

namespace mn::cuda {

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------
[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
    std::string msg = std::string("CUDA error in ") + call + " (" + file + ":" + std::to_string(line) +
                      "): " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
    if (err == cudaErrorMemoryAllocation) msg += " (out of device memory)";
    throw Error(msg);
}

#define MN_CUDA_CHECK(call)                                                            \
    do {                                                                               \
        cudaError_t mn_err_ = (call);                                                  \
        if (mn_err_ != cudaSuccess) ::mn::cuda::throw_cuda(mn_err_, #call, __FILE__, __LINE__); \
    } while (0)

// After a kernel launch: launch-configuration errors show up here, execution
// errors at the next synchronizing call.
#define MN_CUDA_CHECK_LAUNCH(name)                                                     \
    do {                                                                               \
        cudaError_t mn_err_ = cudaGetLastError();                                      \
        if (mn_err_ != cudaSuccess) ::mn::cuda::throw_cuda(mn_err_, name, __FILE__, __LINE__); \
    } while (0)

// ---------------------------------------------------------------------------
// Programmatic dependent launch (sm_90): a kernel launched with launch_kernel(pdl = true) may
// start while the kernel before it in the stream still runs. Such a kernel must call
// pdl_wait() before it reads or writes anything another kernel touches (after it, every
// earlier kernel has finished and its writes are visible), and every kernel launched so must
// call it on every path, which keeps the ordering transitive. pdl_launch_dependents() lets the
// next such kernel launch early. Both are no-ops before sm_90 and for ordinary launches.
// ---------------------------------------------------------------------------
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
// ---------------------------------------------------------------------------
// Decode timeline (diagnostic builds only: cmake -DMETALLIC_CUDA_TRACE=ON defines MN_CUDA_TRACE).
// Thread 0 of each block of the decode kernels notes the global timer (ns, common to all SMs)
// at fixed points: 0 entry, 1 after pdl_wait, 2 and 3 kernel-specific (staged matvec: input
// quantized, weights in shared memory; attention: q/k/v loaded, keys walked), 4 (and 5) done.
// The stamps stay in registers and go out as one record per block at its end (one atomic,
// after the work), so the timeline is not stretched by its own bookkeeping.
// bench/cuda_decode_trace.py reads the records. In other builds the macros are empty.
// ---------------------------------------------------------------------------
#ifdef MN_CUDA_TRACE
struct TraceStamps {
    unsigned long long t[6] = {0, 0, 0, 0, 0, 0};
};
__device__ __forceinline__ unsigned long long trace_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ void trace_flush(const TraceSink& s, int kind, const void* tag, const TraceStamps& ts) {
    if (threadIdx.x != 0 || !s.buf) return;
    const unsigned int i = atomicAdd(s.n, 1u);
    if (i >= s.cap) return;
    TraceRec r;
    for (int k = 0; k < 6; ++k) r.t[k] = ts.t[k];
    r.tag = unsigned(reinterpret_cast<uintptr_t>(tag) >> 8);  // allocations are 256-byte aligned
    r.block = (unsigned short)(blockIdx.x + blockIdx.y * gridDim.x);
    r.kind = (unsigned char)kind;
    r.pad = 0;
    r.pad2 = r.pad3 = 0;
    s.buf[i] = r;
}
#define MN_TRACE_BEGIN ::mn::cuda::TraceStamps mn_ts; mn_ts.t[0] = ::mn::cuda::trace_now()
#define MN_TRACE(ev) (mn_ts.t[ev] = ::mn::cuda::trace_now())
#define MN_TRACE_END(sink, kind, tag, ev) \
    (mn_ts.t[ev] = ::mn::cuda::trace_now(), ::mn::cuda::trace_flush(sink, kind, tag, mn_ts))
#else
#define MN_TRACE_BEGIN ((void)0)
#define MN_TRACE(ev) ((void)0)
#define MN_TRACE_END(sink, kind, tag, ev) ((void)0)
#endif

// 1 / rms of K values from their sum of squares ss (summed in double: the order of the sum
// then hardly shows) and eps. Every GPU rms_norm computes it here, so that the fused and unfused
// paths agree bit for bit. After the sum, float: a float divide and the hardware reciprocal square
// root (<= 2 ulp) instead of a double divide, square root and divide, which sat on the chain of
// every normalizing matvec block after its wait (a few hundred cycles).
__device__ __forceinline__ float inv_rms(double ss, int K, float eps) {
    return rsqrtf(float(ss) / float(K) + eps);
}

// Asks L2 for the 128-byte line holding p (no register is written: nothing waits for it).
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// ---- cp.async (sm_80+): global -> shared copies that need no register ------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; with live false the 16 bytes are zero-filled and
// nothing is read (the prefill attention's keys past a block's last one may hold stale or
// never-written cache bits, possibly NaN patterns, which must not reach P V even with
// probability 0).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool live) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(live ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// ---- mbarriers and bulk copies (sm_90; no-ops before). Used by the one-shot stage below and by
// decode_step.cu's ring of shared-memory slots, whose `full` barriers count a slot's bytes in
// (one arrival with the byte count, then the copies' completions) and `empty` barriers the
// consumers' arrivals out. A phase of parity p is waited for with mbar_wait(b, p); a fresh
// barrier's phase "before the first" (parity 1) counts as complete, so a producer's first pass
// over the ring waits for nothing.
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
#else
    (void)bar, (void)count;
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const uint32_t b = smem_u32(bar);
    uint32_t done = 0;
    while (!done)
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(b), "r"(parity)
            : "memory");
#else
    (void)bar, (void)parity;
#endif
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
#else
    (void)bar;
#endif
}
// The producer's arrival on a slot's `full` barrier, announcing the bytes its copies will bring.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
#else
    (void)bar, (void)bytes;
#endif
}
// One bulk copy (16-byte aligned addresses, a multiple of 16 bytes) counted on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
            smem_u32(dst)),
        "l"(src), "r"(bytes), "r"(smem_u32(bar))
        : "memory");
#else
    (void)dst, (void)src, (void)bytes, (void)bar;
#endif
}

// ---- bulk copies global -> shared (sm_90: the TMA unit, one instruction for a whole range,
// counted on an mbarrier, so the block's own loads do not queue behind thousands of 16-byte
// copies; before sm_90: cp.async by every thread) -----------------------------------------------
// A block's one-shot stage: bulk_stage_begin, bulk_stage_copy for each range (16-byte aligned, a
// multiple of 16 bytes), bulk_stage_commit, all by every thread (thread 0 does the work); then,
// after at least one __syncthreads() (which publishes the barrier's initialisation),
// bulk_stage_wait by every thread.
__device__ __forceinline__ void bulk_stage_begin(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        mbar_init(bar, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
#else
    (void)bar;
#endif
}
__device__ __forceinline__ void bulk_stage_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        // The barrier's phase cannot complete before bulk_stage_commit's arrival, so each
        // copy's byte count may be announced just before it.
        asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                     : "memory");
        bulk_copy(dst, src, bytes, bar);
    }
#else
    (void)bar;
    const uint32_t d = smem_u32(dst);
    for (uint32_t c = 16 * threadIdx.x; c < bytes; c += 16 * blockDim.x)
        cp_async16(d + c, static_cast<const uint8_t*>(src) + c, true);
#endif
}
__device__ __forceinline__ void bulk_stage_commit(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) mbar_arrive(bar);
#else
    (void)bar;
#endif
}
__device__ __forceinline__ void bulk_stage_wait(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    mbar_wait(bar, 0);
#else
    (void)bar;
    cp_async_wait_all();
    __syncthreads();
#endif
}

// A block barrier: __syncthreads() (BAR 0), or named barrier BAR over the block's first THREADS
// threads (a warp-specialized block whose other warps never join).
template <int BAR, int THREADS>
__device__ __forceinline__ void block_bar() {
    if constexpr (BAR == 0) __syncthreads();
    else asm volatile("bar.sync %0, %1;\n" ::"n"(BAR), "n"(THREADS) : "memory");
}

template <typename... Params, typename... Args>
void launch_kernel(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    MN_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// Host helper shared by the backend and the decode-step kernel's host side.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Per activation row, the power of two that brings its largest magnitude to about 2^10: fp16
// then neither overflows (activations of real models reach the thousands, and random test
// models far more) nor loses small values, and the scale comes back out exactly after the
// product. Called by every thread of a block that owns the row; returns the scale to all.
__device__ __forceinline__ float fp16_row_scale(const float* row, int K) {
    float m = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) m = fmaxf(m, fabsf(row[i]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    __shared__ float part[32];
    __shared__ float s_scale;
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < int(blockDim.x / 32); ++w) m = fmaxf(m, part[w]);
        m = fmaxf(m, part[0]);
        int e = 0;
        if (m > 0.0f && isfinite(m)) frexpf(m, &e);  // m = f * 2^e, f in [0.5, 1)
        s_scale = ldexpf(1.0f, 10 - e);
    }
    __syncthreads();
    return s_scale;
}

// RoPE of one pair of a head's dimensions: pair i (of hd / 2) rotates dimensions (ia, ic), i and
// i + hd / 2 in NeoX style, 2i and 2i + 1 otherwise; the angle pos * freq[i] comes in as its
// cosine and sine. Shared by the RoPE kernel and the fused decode attention so both rotate alike.
__device__ __forceinline__ void rope_dims(int i, int half, bool neox, int& ia, int& ic) {
    ia = neox ? i : 2 * i;
    ic = neox ? i + half : 2 * i + 1;
}
__device__ __forceinline__ void rope_rotate(float& x0, float& x1, float cs, float sn) {
    const float y0 = x0 * cs - x1 * sn, y1 = x0 * sn + x1 * cs;
    x0 = y0;
    x1 = y1;
}

// ---------------------------------------------------------------------------
// Block layouts (the GGUF file format). Only 2-byte alignment is guaranteed
// for the 32-element formats (their block sizes are 18, 22, 34 bytes), so
// their fields are read 16 bits at a time.
// ---------------------------------------------------------------------------
__device__ __forceinline__ float f16_at(const uint8_t* p) {
    return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}
__device__ __forceinline__ uint32_t u32_at_a2(const uint8_t* p) {  // 2-byte aligned 32-bit read
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    return uint32_t(h[0]) | (uint32_t(h[1]) << 16);
}

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
__device__ __forceinline__ void k_scale_min(const uint8_t* s, int j, int& sc, int& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

template <TensorType T>
struct Fmt;

template <> struct Fmt<TensorType::F32> { static constexpr int block = 1, bytes = 4; };
template <> struct Fmt<TensorType::F16> { static constexpr int block = 1, bytes = 2; };
template <> struct Fmt<TensorType::BF16> { static constexpr int block = 1, bytes = 2; };
template <> struct Fmt<TensorType::Q4_0> { static constexpr int block = 32, bytes = 18; };
template <> struct Fmt<TensorType::Q4_1> { static constexpr int block = 32, bytes = 20; };
template <> struct Fmt<TensorType::Q5_0> { static constexpr int block = 32, bytes = 22; };
template <> struct Fmt<TensorType::Q5_1> { static constexpr int block = 32, bytes = 24; };
template <> struct Fmt<TensorType::Q8_0> { static constexpr int block = 32, bytes = 34; };
template <> struct Fmt<TensorType::Q2_K> { static constexpr int block = 256, bytes = 84; };
template <> struct Fmt<TensorType::Q3_K> { static constexpr int block = 256, bytes = 110; };
template <> struct Fmt<TensorType::Q4_K> { static constexpr int block = 256, bytes = 144; };
template <> struct Fmt<TensorType::Q5_K> { static constexpr int block = 256, bytes = 176; };
template <> struct Fmt<TensorType::Q6_K> { static constexpr int block = 256, bytes = 210; };

// Elements [32c, 32c+32) of a row into v. For the float formats elements at
// or past K read as 0 (their rows need not be a multiple of 32 long); the
// block formats have K a multiple of their block by construction.
template <TensorType T>
__device__ __forceinline__ void load_chunk32(const uint8_t* row, int c, int K, float v[32]) {
    if constexpr (T == TensorType::F32) {
        const float* p = reinterpret_cast<const float*>(row) + 32 * c;
        if (32 * c + 32 <= K) {
            // Rows of an F32 weight are 4-byte aligned only; read scalars.
#pragma unroll
            for (int i = 0; i < 32; ++i) v[i] = p[i];
        } else {
#pragma unroll
            for (int i = 0; i < 32; ++i) v[i] = 32 * c + i < K ? p[i] : 0.0f;
        }
    } else if constexpr (T == TensorType::F16 || T == TensorType::BF16) {
        const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + 32 * c;
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            uint16_t b = (32 * c + i < K) ? p[i] : uint16_t(0);
            if constexpr (T == TensorType::F16) v[i] = __half2float(__ushort_as_half(b));
            else v[i] = __uint_as_float(uint32_t(b) << 16);
        }
    } else if constexpr (T == TensorType::Q4_0) {
        const uint8_t* b = row + size_t(c) * 18;
        const float d = f16_at(b);
#pragma unroll
        for (int i = 0; i < 16; i += 2) {
            const uint16_t q = *reinterpret_cast<const uint16_t*>(b + 2 + i);
            v[i] = (int(q & 0xF) - 8) * d;
            v[i + 16] = (int((q >> 4) & 0xF) - 8) * d;
            v[i + 1] = (int((q >> 8) & 0xF) - 8) * d;
            v[i + 17] = (int(q >> 12) - 8) * d;
        }
    } else if constexpr (T == TensorType::Q4_1) {
        const uint8_t* b = row + size_t(c) * 20;
        const float d = f16_at(b), m = f16_at(b + 2);
#pragma unroll
        for (int i = 0; i < 16; i += 4) {
            const uint32_t q = *reinterpret_cast<const uint32_t*>(b + 4 + i);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                v[i + j] = float((q >> (8 * j)) & 0xF) * d + m;
                v[i + j + 16] = float((q >> (8 * j + 4)) & 0xF) * d + m;
            }
        }
    } else if constexpr (T == TensorType::Q5_0 || T == TensorType::Q5_1) {
        constexpr bool has_min = T == TensorType::Q5_1;
        const uint8_t* b = row + size_t(c) * (has_min ? 24 : 22);
        const float d = f16_at(b);
        const float m = has_min ? f16_at(b + 2) : -16.0f * d;
        const uint8_t* hp = b + (has_min ? 4 : 2);
        const uint32_t qh = u32_at_a2(hp);
        const uint8_t* qs = hp + 4;
#pragma unroll
        for (int i = 0; i < 16; i += 2) {
            const uint16_t q = *reinterpret_cast<const uint16_t*>(qs + i);
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int lo = ((q >> (8 * j)) & 0xF) | (((qh >> (i + j)) & 1) << 4);
                const int hi = ((q >> (8 * j + 4)) & 0xF) | (((qh >> (i + j + 16)) & 1) << 4);
                v[i + j] = float(lo) * d + m;
                v[i + j + 16] = float(hi) * d + m;
            }
        }
    } else if constexpr (T == TensorType::Q8_0) {
        const uint8_t* b = row + size_t(c) * 34;
        const float d = f16_at(b);
#pragma unroll
        for (int i = 0; i < 32; i += 2) {
            const uint16_t q = *reinterpret_cast<const uint16_t*>(b + 2 + i);
            v[i] = float(int8_t(q & 0xFF)) * d;
            v[i + 1] = float(int8_t(q >> 8)) * d;
        }
    } else if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K) {
        // Super-block: d, dmin (f16), 12 bytes of 6-bit scales/mins, [Q5_K: 32 bytes of high bits],
        // 128 bytes of nibbles. Sub-blocks 2i and 2i+1 share qs[32i..32i+32): low, then high nibbles.
        constexpr bool q5 = T == TensorType::Q5_K;
        const uint8_t* b = row + size_t(c >> 3) * (q5 ? 176 : 144);
        const int j = c & 7, pair = j >> 1, hi = j & 1;
        const float d = f16_at(b), dmin = f16_at(b + 2);
        int sc, mn;
        k_scale_min(b + 4, j, sc, mn);
        const float dl = d * float(sc), ml = dmin * float(mn);
        const uint8_t* qs = b + (q5 ? 48 : 16) + 32 * pair;
        const uint4* q4 = reinterpret_cast<const uint4*>(qs);  // 16-byte aligned: 144/176-byte blocks, offsets 16/48
        uint32_t words[8];
        const uint4 a = q4[0], bb = q4[1];
        words[0] = a.x; words[1] = a.y; words[2] = a.z; words[3] = a.w;
        words[4] = bb.x; words[5] = bb.y; words[6] = bb.z; words[7] = bb.w;
        uint32_t hwords[8];
        if constexpr (q5) {
            const uint4* h4 = reinterpret_cast<const uint4*>(b + 16);
            const uint4 ha = h4[0], hb = h4[1];
            hwords[0] = ha.x; hwords[1] = ha.y; hwords[2] = ha.z; hwords[3] = ha.w;
            hwords[4] = hb.x; hwords[5] = hb.y; hwords[6] = hb.z; hwords[7] = hb.w;
        }
#pragma unroll
        for (int w = 0; w < 8; ++w) {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                int q = (words[w] >> (8 * k + 4 * hi)) & 0xF;
                if constexpr (q5) q |= ((hwords[w] >> (8 * k + j)) & 1) << 4;
                v[4 * w + k] = dl * float(q) - ml;
            }
        }
    } else if constexpr (T == TensorType::Q2_K || T == TensorType::Q3_K) {
        // Both hold 2-bit values in qs: chunk c is half h = c / 4, shift 2 (c % 4), over the 32 bytes
        // qs[32h..]; its two 16-element halves have scales 8h + 2(c % 4) and the one after.
        // Q2_K: scales[16] (4-bit scale | 4-bit min << 4), qs[64], f16 d, f16 dmin.
        // Q3_K: hmask[32] (bit 4h + c % 4 of byte l set: no -4), qs[64], 12 bytes of 6-bit scales, f16 d.
        constexpr bool q3 = T == TensorType::Q3_K;
        const uint8_t* b = row + size_t(c >> 3) * (q3 ? 110 : 84);
        const int h = (c >> 2) & 1, j = c & 3;
        const uint8_t* qs = b + (q3 ? 32 : 16) + 32 * h;
        float dl[2], ml[2];
        if constexpr (q3) {
            const float d = f16_at(b + 108);
            const uint8_t* s = b + 96;
#pragma unroll
            for (int t = 0; t < 2; ++t) {
                const int i = 8 * h + 2 * j + t;
                const int lo = i < 8 ? (s[i] & 0xF) : (s[i - 8] >> 4);
                const int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
                dl[t] = d * float((lo | (hi << 4)) - 32);
                ml[t] = 0.0f;
            }
        } else {
            const float d = f16_at(b + 80), dmin = f16_at(b + 82);
#pragma unroll
            for (int t = 0; t < 2; ++t) {
                const int sc = b[8 * h + 2 * j + t];
                dl[t] = d * float(sc & 0xF);
                ml[t] = dmin * float(sc >> 4);
            }
        }
#pragma unroll
        for (int l = 0; l < 32; l += 2) {
            const uint16_t q2 = *reinterpret_cast<const uint16_t*>(qs + l);
            uint16_t hm2 = 0;
            if constexpr (q3) hm2 = *reinterpret_cast<const uint16_t*>(b + l);
#pragma unroll
            for (int k = 0; k < 2; ++k) {
                int q = (q2 >> (8 * k + 2 * j)) & 3;
                if constexpr (q3) q -= ((hm2 >> (8 * k + 4 * h + j)) & 1) ? 0 : 4;
                const int t = (l + k) >> 4;
                v[l + k] = dl[t] * float(q) - ml[t];
            }
        }
    } else if constexpr (T == TensorType::Q6_K) {
        // Super-block: ql[128], qh[64], int8 scales[16], f16 d. Half h (128 elements) uses
        // ql[64h..], qh[32h..], scales[8h..]; its quarter q holds elements 32q + l, l < 32.
        const uint8_t* b = row + size_t(c >> 3) * 210;
        const int h = (c >> 2) & 1, q = c & 3;
        const float d = f16_at(b + 208);
        const uint8_t* ql = b + 64 * h + (q & 1) * 32;
        const uint8_t* qh = b + 128 + 32 * h;
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192 + 8 * h);
        const float d0 = d * float(sc[2 * q]), d1 = d * float(sc[2 * q + 1]);
        const int lshift = (q >> 1) * 4, hshift = 2 * q;
        // ql/qh offsets are multiples of 32 in a 210-byte block: only 2-byte aligned.
#pragma unroll
        for (int l = 0; l < 32; l += 2) {
            const uint16_t lo2 = *reinterpret_cast<const uint16_t*>(ql + l);
            const uint16_t hi2 = *reinterpret_cast<const uint16_t*>(qh + l);
#pragma unroll
            for (int k = 0; k < 2; ++k) {
                const int lo = (lo2 >> (8 * k + lshift)) & 0xF;
                const int hb = (hi2 >> (8 * k + hshift)) & 3;
                v[l + k] = (l + k < 16 ? d0 : d1) * float((lo | (hb << 4)) - 32);
            }
        }
    }
}

// Elements [e, e + 8) of a row (e a multiple of 8) into v: the unit of the
// decode kernels, whose consecutive lanes take consecutive pieces so that a
// warp's reads of weights and activations are contiguous. For the float
// formats elements at or past K read as 0.
template <TensorType T>
__device__ __forceinline__ void load8(const uint8_t* row, int e, int K, float v[8]) {
    if constexpr (T == TensorType::F32) {
        const float* p = reinterpret_cast<const float*>(row) + e;
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = e + i < K ? p[i] : 0.0f;
    } else if constexpr (T == TensorType::F16 || T == TensorType::BF16) {
        const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + e;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint16_t b = e + i < K ? p[i] : uint16_t(0);
            if constexpr (T == TensorType::F16) v[i] = __half2float(__ushort_as_half(b));
            else v[i] = __uint_as_float(uint32_t(b) << 16);
        }
    } else if constexpr (T == TensorType::Q4_0 || T == TensorType::Q4_1 || T == TensorType::Q5_0 ||
                         T == TensorType::Q5_1) {
        constexpr bool has_min = T == TensorType::Q4_1 || T == TensorType::Q5_1;
        constexpr bool five = T == TensorType::Q5_0 || T == TensorType::Q5_1;
        constexpr int bytes = Fmt<T>::bytes;
        const uint8_t* b = row + size_t(e >> 5) * bytes;
        const int o = e & 31, lo = o & 15, shift = o >= 16 ? 4 : 0;
        const float d = f16_at(b);
        const uint8_t* qs = b + (has_min ? 4 : 2) + (five ? 4 : 0);
        uint32_t qh = 0;
        if constexpr (five) qh = u32_at_a2(b + (has_min ? 4 : 2));
        // 8 bytes of nibbles at qs + lo (2-byte aligned at least)
        uint32_t w0, w1;
        if constexpr (has_min) {  // 20/24-byte blocks: 4-byte aligned
            w0 = *reinterpret_cast<const uint32_t*>(qs + lo);
            w1 = *reinterpret_cast<const uint32_t*>(qs + lo + 4);
        } else {
            w0 = u32_at_a2(qs + lo);
            w1 = u32_at_a2(qs + lo + 4);
        }
        float m;
        if constexpr (has_min) m = f16_at(b + 2);
        else m = (five ? -16.0f : -8.0f) * d;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint32_t w = i < 4 ? w0 : w1;
            int q = (w >> (8 * (i & 3) + shift)) & 0xF;
            if constexpr (five) q |= ((qh >> (o + i)) & 1) << 4;
            v[i] = float(q) * d + m;
        }
    } else if constexpr (T == TensorType::Q8_0) {
        const uint8_t* b = row + size_t(e >> 5) * 34;
        const float d = f16_at(b);
        const uint16_t* q = reinterpret_cast<const uint16_t*>(b + 2 + (e & 31));
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint16_t t = q[i];
            v[2 * i] = float(int8_t(t & 0xFF)) * d;
            v[2 * i + 1] = float(int8_t(t >> 8)) * d;
        }
    } else if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K) {
        constexpr bool q5 = T == TensorType::Q5_K;
        const uint8_t* b = row + size_t(e >> 8) * (q5 ? 176 : 144);
        const int j = (e >> 5) & 7, l0 = e & 31;
        const float d = f16_at(b), dmin = f16_at(b + 2);
        int sc, mn;
        k_scale_min(b + 4, j, sc, mn);
        const float dl = d * float(sc), ml = dmin * float(mn);
        const uint2 q = *reinterpret_cast<const uint2*>(b + (q5 ? 48 : 16) + 32 * (j >> 1) + l0);  // 8-byte aligned
        uint2 h = make_uint2(0, 0);
        if constexpr (q5) h = *reinterpret_cast<const uint2*>(b + 16 + l0);
        const int shift = (j & 1) * 4;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint32_t w = i < 4 ? q.x : q.y;
            int qv = (w >> (8 * (i & 3) + shift)) & 0xF;
            if constexpr (q5) qv |= (((i < 4 ? h.x : h.y) >> (8 * (i & 3) + j)) & 1) << 4;
            v[i] = dl * float(qv) - ml;
        }
    } else if constexpr (T == TensorType::Q6_K) {
        const uint8_t* b = row + size_t(e >> 8) * 210;
        const int c = (e >> 5) & 7, h = c >> 2, qq = c & 3, l0 = e & 31;
        const float d = f16_at(b + 208);
        const uint8_t* ql = b + 64 * h + (qq & 1) * 32 + l0;
        const uint8_t* qh = b + 128 + 32 * h + l0;
        const float ds = d * float(reinterpret_cast<const int8_t*>(b + 192 + 8 * h)[2 * qq + (l0 >> 4)]);
        const uint32_t lw0 = u32_at_a2(ql), lw1 = u32_at_a2(ql + 4);
        const uint32_t hw0 = u32_at_a2(qh), hw1 = u32_at_a2(qh + 4);
        const int lshift = (qq >> 1) * 4, hshift = 2 * qq;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int lo = ((i < 4 ? lw0 : lw1) >> (8 * (i & 3) + lshift)) & 0xF;
            const int hb = ((i < 4 ? hw0 : hw1) >> (8 * (i & 3) + hshift)) & 3;
            v[i] = ds * float((lo | (hb << 4)) - 32);
        }
    } else if constexpr (T == TensorType::Q2_K || T == TensorType::Q3_K) {
        constexpr bool q3 = T == TensorType::Q3_K;
        const uint8_t* b = row + size_t(e >> 8) * (q3 ? 110 : 84);
        const int c = (e >> 5) & 7, h = c >> 2, j = c & 3, l0 = e & 31;
        const int si = 8 * h + 2 * j + (l0 >> 4);
        float dl, ml = 0.0f;
        if constexpr (q3) {
            const uint8_t* s = b + 96;
            const int lo = si < 8 ? (s[si] & 0xF) : (s[si - 8] >> 4);
            const int hi = (s[8 + (si & 3)] >> (2 * (si >> 2))) & 3;
            dl = f16_at(b + 108) * float((lo | (hi << 4)) - 32);
        } else {
            const int sc = b[si];
            dl = f16_at(b + 80) * float(sc & 0xF);
            ml = f16_at(b + 82) * float(sc >> 4);
        }
        const uint8_t* qs = b + (q3 ? 32 : 16) + 32 * h + l0;
        const uint32_t q0 = u32_at_a2(qs), q1 = u32_at_a2(qs + 4);
        uint32_t m0 = 0, m1 = 0;
        if constexpr (q3) { m0 = u32_at_a2(b + l0); m1 = u32_at_a2(b + l0 + 4); }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            int q = ((i < 4 ? q0 : q1) >> (8 * (i & 3) + 2 * j)) & 3;
            if constexpr (q3) q -= (((i < 4 ? m0 : m1) >> (8 * (i & 3) + 4 * h + j)) & 1) ? 0 : 4;
            v[i] = dl * float(q) - ml;
        }
    }
}

// Calls f.template operator()<T>() for a runtime type; false if the type has no kernels.
template <typename F>
inline bool dispatch_type(TensorType t, F&& f) {
    switch (t) {
        case TensorType::F32: f.template operator()<TensorType::F32>(); return true;
        case TensorType::F16: f.template operator()<TensorType::F16>(); return true;
        case TensorType::BF16: f.template operator()<TensorType::BF16>(); return true;
        case TensorType::Q4_0: f.template operator()<TensorType::Q4_0>(); return true;
        case TensorType::Q4_1: f.template operator()<TensorType::Q4_1>(); return true;
        case TensorType::Q5_0: f.template operator()<TensorType::Q5_0>(); return true;
        case TensorType::Q5_1: f.template operator()<TensorType::Q5_1>(); return true;
        case TensorType::Q8_0: f.template operator()<TensorType::Q8_0>(); return true;
        case TensorType::Q2_K: f.template operator()<TensorType::Q2_K>(); return true;
        case TensorType::Q3_K: f.template operator()<TensorType::Q3_K>(); return true;
        case TensorType::Q4_K: f.template operator()<TensorType::Q4_K>(); return true;
        case TensorType::Q5_K: f.template operator()<TensorType::Q5_K>(); return true;
        case TensorType::Q6_K: f.template operator()<TensorType::Q6_K>(); return true;
        default: return false;
    }
}

struct TypeProbe {
    template <TensorType T>
    void operator()() const {}
};
inline bool type_supported(TensorType t) { return dispatch_type(t, TypeProbe{}); }

}  // namespace mn::cuda
