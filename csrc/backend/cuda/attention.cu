// Attention over the KV cache with fp32 scores and softmax.
//
// The keys of each query row are split into chunks (flash-decoding): one block
// scores one chunk for one head, keeps the chunk's max, sum and unnormalized
// output, and a second kernel combines the chunks. Decode then spreads one
// row's work over many SMs, and the grid depends only on n_ctx, so the launch
// can be recorded in a CUDA graph and replayed while the position (read from
// device memory) moves on.
#include <algorithm>
#include <cmath>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace mn::cuda {

namespace {

constexpr int kThreads = 128;

struct SplitPlan {
    int n_splits;  // chunks per query row (upper bound over rows)
    int chunk;     // keys per chunk
};

SplitPlan plan_for(int n_ctx) {
    // At most 32 chunks per row: longer contexts get longer chunks, so the
    // partials stay small; chunks are a multiple of 32 keys.
    int n_splits = std::min((n_ctx + kAttnSplit - 1) / kAttnSplit, 32);
    int chunk = (n_ctx + n_splits - 1) / n_splits;
    chunk = (chunk + 31) / 32 * 32;
    return {n_splits, chunk};
}

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__global__ void store_kv_kernel(const float* __restrict__ k, const float* __restrict__ v, T* kc, T* vc, int n_ctx,
                                const int* pos0, int n_kv_heads, int hd) {
    const int r = blockIdx.x;
    const int width = n_kv_heads * hd;
    const int pos = *pos0 + r;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        const int h = i / hd, d = i % hd;
        const size_t dst = (size_t(h) * n_ctx + pos) * hd + d;
        kc[dst] = from_f<T>(k[size_t(r) * width + i]);
        vc[dst] = from_f<T>(v[size_t(r) * width + i]);
    }
}

__device__ __forceinline__ float block_reduce(float v, float* red, bool is_max) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float t = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, t) : v + t;
    }
    __syncthreads();  // red may still be read from the previous reduction
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < kThreads / 32; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
    return r;
}

// grid (n_splits, n_heads, rows). Partial record per (row, head, split): [hd] acc, max, sum.
template <typename T>
__global__ void __launch_bounds__(kThreads) attn_split_kernel(const float* __restrict__ q, const T* __restrict__ kc,
                                                              const T* __restrict__ vc, int n_ctx, const int* pos0,
                                                              int n_heads, int n_kv_heads, int hd, int chunk,
                                                              int n_splits, float* __restrict__ part) {
    const int s = blockIdx.x, h = blockIdx.y, r = blockIdx.z;
    const int n_keys = *pos0 + r + 1;
    const int start = s * chunk;
    if (start >= n_keys) return;  // the combine kernel counts only live chunks
    const int len = min(chunk, n_keys - start);
    const int kvh = h / (n_heads / n_kv_heads);
    extern __shared__ float smem[];
    float* sq = smem;              // [hd]
    float* sc = sq + hd;           // [chunk]
    float* sacc = sc + chunk;      // [kThreads] partial outputs
    __shared__ float red[kThreads / 32];

    const float* qr = q + (size_t(r) * n_heads + h) * hd;
    for (int i = threadIdx.x; i < hd; i += kThreads) sq[i] = qr[i];
    __syncthreads();

    const float scale = 1.0f / sqrtf(float(hd));
    const T* kbase = kc + (size_t(kvh) * n_ctx + start) * hd;
    const T* vbase = vc + (size_t(kvh) * n_ctx + start) * hd;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < len; j += kThreads) {
        const T* kr = kbase + size_t(j) * hd;
        float dot = 0.0f;
        if (sizeof(T) == 2 && (hd & 7) == 0) {
            // 8 halves per 16-byte load: rows of the cache are hd * 2 bytes, a multiple of 16.
            const uint4* k4 = reinterpret_cast<const uint4*>(kr);
            for (int d8 = 0; d8 < hd / 8; ++d8) {
                const uint4 u = k4[d8];
                const __half2* h2 = reinterpret_cast<const __half2*>(&u);
#pragma unroll
                for (int t = 0; t < 4; ++t) {
                    const float2 f = __half22float2(h2[t]);
                    dot += sq[8 * d8 + 2 * t] * f.x + sq[8 * d8 + 2 * t + 1] * f.y;
                }
            }
        } else {
            for (int d = 0; d < hd; ++d) dot += sq[d] * to_f<T>(kr[d]);
        }
        const float sv = dot * scale;
        sc[j] = sv;
        mx = fmaxf(mx, sv);
    }
    mx = block_reduce(mx, red, true);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += kThreads) {
        const float p = expf(sc[j] - mx);
        sc[j] = p;
        sum += p;
    }
    sum = block_reduce(sum, red, false);  // its barriers also publish sc[]

    // Output: G groups of threads split the keys, each thread one dimension.
    const int G = hd >= kThreads ? 1 : kThreads / hd;
    float* rec = part + ((size_t(r) * n_heads + h) * n_splits + s) * (hd + 2);
    for (int idx = threadIdx.x; idx < G * hd; idx += kThreads) {
        const int d = idx % hd, g = idx / hd;
        float acc = 0.0f;
        for (int j = g; j < len; j += G) acc += sc[j] * to_f<T>(vbase[size_t(j) * hd + d]);
        if (G == 1) rec[d] = acc;
        else sacc[idx] = acc;
    }
    if (G > 1) {
        __syncthreads();
        for (int d = threadIdx.x; d < hd; d += kThreads) {
            float acc = 0.0f;
            for (int g = 0; g < G; ++g) acc += sacc[g * hd + d];
            rec[d] = acc;
        }
    }
    if (threadIdx.x == 0) {
        rec[hd] = mx;
        rec[hd + 1] = sum;
    }
}

// grid (n_heads, rows): out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
__global__ void attn_combine_kernel(const float* __restrict__ part, const int* pos0, int n_heads, int hd, int chunk,
                                    int n_splits, float* __restrict__ out) {
    const int h = blockIdx.x, r = blockIdx.y;
    const int n_keys = *pos0 + r + 1;
    const int live = (n_keys + chunk - 1) / chunk;
    const float* base = part + (size_t(r) * n_heads + h) * n_splits * (hd + 2);
    float M = -INFINITY;
    for (int s = 0; s < live; ++s) M = fmaxf(M, base[s * (hd + 2) + hd]);
    float den = 0.0f;
    for (int s = 0; s < live; ++s) den += expf(base[s * (hd + 2) + hd] - M) * base[s * (hd + 2) + hd + 1];
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f;
        for (int s = 0; s < live; ++s) num += expf(base[s * (hd + 2) + hd] - M) * base[s * (hd + 2) + d];
        out[(size_t(r) * n_heads + h) * hd + d] = num / den;
    }
}

}  // namespace

size_t attention_scratch_floats(int rows, int n_heads, int head_dim, int n_ctx) {
    return size_t(rows) * n_heads * plan_for(n_ctx).n_splits * (head_dim + 2);
}

void launch_attention(const AttentionArgs& a, cudaStream_t stream) {
    const SplitPlan plan = plan_for(a.n_ctx);
    const int hd = a.head_dim;
    const int store_threads = std::min(1024, std::max(32, a.n_kv_heads * hd));
    const size_t smem = sizeof(float) * (size_t(hd) + plan.chunk + kThreads);
    if (smem > 48 * 1024)
        throw Error("cuda attention: n_ctx " + std::to_string(a.n_ctx) + " needs more shared memory than supported");
    const dim3 grid(plan.n_splits, a.n_heads, a.rows);
    if (a.f16_cache) {
        store_kv_kernel<__half><<<a.rows, store_threads, 0, stream>>>(
            a.k, a.v, static_cast<__half*>(a.k_cache), static_cast<__half*>(a.v_cache), a.n_ctx, a.pos0,
            a.n_kv_heads, hd);
        MN_CUDA_CHECK_LAUNCH("store_kv_kernel");
        attn_split_kernel<__half><<<grid, kThreads, smem, stream>>>(
            a.q, static_cast<const __half*>(a.k_cache), static_cast<const __half*>(a.v_cache), a.n_ctx, a.pos0,
            a.n_heads, a.n_kv_heads, hd, plan.chunk, plan.n_splits, a.scratch);
    } else {
        store_kv_kernel<float><<<a.rows, store_threads, 0, stream>>>(
            a.k, a.v, static_cast<float*>(a.k_cache), static_cast<float*>(a.v_cache), a.n_ctx, a.pos0,
            a.n_kv_heads, hd);
        MN_CUDA_CHECK_LAUNCH("store_kv_kernel");
        attn_split_kernel<float><<<grid, kThreads, smem, stream>>>(
            a.q, static_cast<const float*>(a.k_cache), static_cast<const float*>(a.v_cache), a.n_ctx, a.pos0,
            a.n_heads, a.n_kv_heads, hd, plan.chunk, plan.n_splits, a.scratch);
    }
    MN_CUDA_CHECK_LAUNCH("attn_split_kernel");
    attn_combine_kernel<<<dim3(a.n_heads, a.rows), std::min(256, ((hd + 31) / 32) * 32), 0, stream>>>(
        a.scratch, a.pos0, a.n_heads, hd, plan.chunk, plan.n_splits, a.out);
    MN_CUDA_CHECK_LAUNCH("attn_combine_kernel");
}

}  // namespace mn::cuda
