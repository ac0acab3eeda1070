// Row-wise and elementwise kernels: embedding gather, rms_norm, SwiGLU, add,
// RoPE, and the top-k selection that keeps most of the logits on the device.
#include <algorithm>
#include <cmath>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace mn::cuda {

namespace {

template <TensorType T>
__global__ void embed_kernel(const uint8_t* table, size_t row_bytes, int K, const int32_t* ids, float* out) {
    const int r = blockIdx.x;
    const uint8_t* row = table + size_t(ids[r]) * row_bytes;
    const int n_chunks = (K + 31) / 32;
    for (int c = threadIdx.x; c < n_chunks; c += blockDim.x) {
        float v[32];
        load_chunk32<T>(row, c, K, v);
        float* o = out + size_t(r) * K + 32 * c;
        for (int i = 0; i < 32 && 32 * c + i < K; ++i) o[i] = v[i];
    }
}

struct EmbedLaunch {
    const QMatrix& t;
    const int32_t* ids;
    int rows;
    float* out;
    cudaStream_t s;
    template <TensorType T>
    void operator()() const {
        embed_kernel<T><<<rows, 128, 0, s>>>(t.data, t.row_bytes, t.K, ids, out);
    }
};

__global__ void rms_norm_kernel(const float* x, const float* w, float eps, int width, float* out) {
    const int r = blockIdx.x;
    const float* xr = x + size_t(r) * width;
    double ss = 0.0;
    for (int i = threadIdx.x; i < width; i += blockDim.x) ss += double(xr[i]) * xr[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    __shared__ double part[32];
    __shared__ float inv;
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int i = 0; i < int(blockDim.x + 31) / 32; ++i) t += part[i];
        inv = float(1.0 / sqrt(t / width + double(eps)));
    }
    __syncthreads();
    float* o = out + size_t(r) * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) o[i] = xr[i] * inv * w[i];
}

__global__ void swiglu_kernel(const float* g, const float* u, int64_t n, float* out) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        x[i] += y[i];
}

template <typename T>
__device__ __forceinline__ T to_cache(float v);
template <> __device__ __forceinline__ float to_cache<float>(float v) { return v; }
template <> __device__ __forceinline__ __half to_cache<__half>(float v) { return __float2half_rn(v); }

// RoPE on q and k in place; with a cache (kc != nullptr) also stores the rotated
// k and the v rows at their positions, which the attention needs next anyway.
template <typename T>
__global__ void rope_kernel(float* q, float* k, const float* __restrict__ v, T* kc, T* vc, int n_ctx, const int* pos0,
                            int n_heads, int n_kv_heads, int hd, const float* __restrict__ inv_freq, bool neox) {
    // grid (pair blocks, rows): one thread per rotated pair, so a decode row's ~1-2K pairs
    // spread over several SMs instead of looping in one block.
    const int r = blockIdx.y;
    const int half = hd / 2;
    const int pos_i = *pos0 + r;
    const float pos = float(pos_i);
    const int total = (n_heads + n_kv_heads) * half;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const int head = t / half, i = t % half;
        // Angles in fp32 from frequencies the host computed as the CPU backend does.
        const float angle = pos * inv_freq[i];
        float sn, cs;
        sincosf(angle, &sn, &cs);
        const bool is_k = head >= n_heads;
        const int kh = head - n_heads;
        float* h = !is_k ? q + (size_t(r) * n_heads + head) * hd : k + (size_t(r) * n_kv_heads + kh) * hd;
        int a, c;
        rope_dims(i, half, neox, a, c);
        float y0 = h[a], y1 = h[c];
        rope_rotate(y0, y1, cs, sn);
        h[a] = y0;
        h[c] = y1;
        if (kc && is_k) {
            const size_t base = (size_t(kh) * n_ctx + pos_i) * hd;
            kc[base + a] = to_cache<T>(y0);
            kc[base + c] = to_cache<T>(y1);
            const float* vr = v + (size_t(r) * n_kv_heads + kh) * hd;
            vc[base + a] = to_cache<T>(vr[a]);
            vc[base + c] = to_cache<T>(vr[c]);
        }
    }
}

int grid_for(int64_t n, int threads) { return int(std::min<int64_t>((n + threads - 1) / threads, 4096)); }

// ---- top-k: k rounds of a block-wide argmax over per-thread running maxima. ----
constexpr int kRopeThreads = 128;
constexpr int kTopkThreads = 256;
constexpr int kTopkBlocks = 128;
static_assert(kTopkBlocks <= kTopkThreads, "stage 2 combines one slice per thread");

struct Cand {
    float v;
    int i;
};
__device__ __forceinline__ bool better(const Cand& a, const Cand& b) {
    return a.v > b.v || (a.v == b.v && a.i < b.i);
}

// Selects the k best of vals[0..len) (indices idx[] or the position when idx is null),
// destroying vals (shared memory). Thread 0 writes them in descending order.
__device__ void select_k(float* vals, const int* idx, int len, int k, float* out_v, int* out_i) {
    __shared__ Cand wbest[kTopkThreads / 32];
    __shared__ Cand pick;
    auto local_best = [&]() {
        Cand b{-INFINITY, INT_MAX};
        for (int j = threadIdx.x; j < len; j += kTopkThreads) {
            const Cand c{vals[j], idx ? idx[j] : j};
            if (vals[j] == vals[j] && better(c, b)) b = c;  // NaN never wins
        }
        return b;
    };
    Cand mine = local_best();
    for (int round = 0; round < k; ++round) {
        Cand b = mine;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            Cand t{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.i, o)};
            if (better(t, b)) b = t;
        }
        if ((threadIdx.x & 31) == 0) wbest[threadIdx.x >> 5] = b;
        __syncthreads();
        if (threadIdx.x == 0) {
            Cand best = wbest[0];
            for (int w = 1; w < kTopkThreads / 32; ++w)
                if (better(wbest[w], best)) best = wbest[w];
            pick = best;
            out_v[round] = best.v;
            out_i[round] = best.i;
        }
        __syncthreads();
        // Only the thread that held the winner rescans its elements.
        if (mine.i == pick.i && mine.v == pick.v && pick.i != INT_MAX) {
            for (int j = threadIdx.x; j < len; j += kTopkThreads)
                if ((idx ? idx[j] : j) == pick.i) vals[j] = -INFINITY;
            mine = local_best();
        }
        __syncthreads();
    }
}

// Block-wide reduction of one float per thread (op: max or sum); every thread gets the result.
template <bool Max>
__device__ float block_reduce(float v) {
    __shared__ float part[kTopkThreads / 32];
    for (int o = 16; o > 0; o /= 2) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = Max ? fmaxf(v, u) : v + u;
    }
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    v = part[0];
    for (int w = 1; w < kTopkThreads / 32; ++w) v = Max ? fmaxf(v, part[w]) : v + part[w];
    __syncthreads();  // part is reused by the next call
    return v;
}

__global__ void topk_stage1(const float* x, int64_t n, int k, int slice, float* cand_v, int* cand_i,
                            float* block_max, float* block_sum) {
    extern __shared__ float sv[];
    const int64_t start = int64_t(blockIdx.x) * slice;
    const int64_t left = n - start;
    const int len = left <= 0 ? 0 : (left < slice ? int(left) : slice);
    float m = -INFINITY;
    for (int j = threadIdx.x; j < len; j += kTopkThreads) {
        sv[j] = x[start + j];
        m = fmaxf(m, sv[j]);
    }
    // The slice's max and sum(exp(x - max)), combined over the slices in stage 2.
    m = block_reduce<true>(m);
    float s = 0.0f;
    if (m != -INFINITY)
        for (int j = threadIdx.x; j < len; j += kTopkThreads) s += expf(sv[j] - m);
    s = block_reduce<false>(s);
    if (threadIdx.x == 0) {
        block_max[blockIdx.x] = m;
        block_sum[blockIdx.x] = s;
    }
    __syncthreads();
    __shared__ float ov[64];
    __shared__ int oi[64];
    select_k(sv, nullptr, len, k, ov, oi);
    if (threadIdx.x < k) {
        cand_v[blockIdx.x * k + threadIdx.x] = ov[threadIdx.x];
        cand_i[blockIdx.x * k + threadIdx.x] = oi[threadIdx.x] == INT_MAX ? INT_MAX : int(start) + oi[threadIdx.x];
    }
}

__global__ void topk_stage2(float* cand_v, const int* cand_i, int n_cand, int k, int32_t* ids, float* vals,
                            const float* block_max, const float* block_sum, float* lse) {
    // log(sum exp) over all slices first (select_k below overwrites cand_v, not these).
    const float bm = threadIdx.x < kTopkBlocks ? block_max[threadIdx.x] : -INFINITY;
    const float m = block_reduce<true>(bm);
    const float s = block_reduce<false>(threadIdx.x < kTopkBlocks && bm != -INFINITY
                                            ? block_sum[threadIdx.x] * expf(bm - m) : 0.0f);
    if (threadIdx.x == 0) *lse = m + logf(s);
    __shared__ float ov[64];
    __shared__ int oi[64];
    select_k(cand_v, cand_i, n_cand, k, ov, oi);
    if (threadIdx.x < k) {
        ids[threadIdx.x] = oi[threadIdx.x];
        vals[threadIdx.x] = ov[threadIdx.x];
    }
}

}  // namespace

void launch_embed(const QMatrix& table, const int32_t* ids, int rows, float* out, cudaStream_t stream) {
    if (!dispatch_type(table.type, EmbedLaunch{table, ids, rows, out, stream}))
        throw Error("cuda embed: unsupported table type");
    MN_CUDA_CHECK_LAUNCH("embed_kernel");
}

void launch_rms_norm(const float* x, const float* w, float eps, int rows, int width, float* out, cudaStream_t stream) {
    rms_norm_kernel<<<rows, 256, 0, stream>>>(x, w, eps, width, out);
    MN_CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

void launch_swiglu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream) {
    swiglu_kernel<<<grid_for(n, 256), 256, 0, stream>>>(gate, up, n, out);
    MN_CUDA_CHECK_LAUNCH("swiglu_kernel");
}

void launch_add(float* x, const float* y, int64_t n, cudaStream_t stream) {
    add_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, y, n);
    MN_CUDA_CHECK_LAUNCH("add_kernel");
}

void launch_rope(float* q, float* k, int rows, const int* pos0, int n_heads, int n_kv_heads, int head_dim,
                 const float* inv_freq, bool neox, cudaStream_t stream) {
    const dim3 grid((unsigned((n_heads + n_kv_heads) * (head_dim / 2)) + kRopeThreads - 1) / kRopeThreads, rows);
    rope_kernel<float><<<grid, kRopeThreads, 0, stream>>>(q, k, nullptr, nullptr, nullptr, 0, pos0, n_heads, n_kv_heads,
                                                 head_dim, inv_freq, neox);
    MN_CUDA_CHECK_LAUNCH("rope_kernel");
}

void launch_rope_store(float* q, float* k, const float* v, void* k_cache, void* v_cache, bool f16_cache, int n_ctx,
                       int rows, const int* pos0, int n_heads, int n_kv_heads, int head_dim, const float* inv_freq,
                       bool neox, cudaStream_t stream) {
    const dim3 grid((unsigned((n_heads + n_kv_heads) * (head_dim / 2)) + kRopeThreads - 1) / kRopeThreads, rows);
    if (f16_cache)
        rope_kernel<__half><<<grid, kRopeThreads, 0, stream>>>(q, k, v, static_cast<__half*>(k_cache),
                                                      static_cast<__half*>(v_cache), n_ctx, pos0, n_heads,
                                                      n_kv_heads, head_dim, inv_freq, neox);
    else
        rope_kernel<float><<<grid, kRopeThreads, 0, stream>>>(q, k, v, static_cast<float*>(k_cache),
                                                     static_cast<float*>(v_cache), n_ctx, pos0, n_heads, n_kv_heads,
                                                     head_dim, inv_freq, neox);
    MN_CUDA_CHECK_LAUNCH("rope_kernel");
}

size_t topk_scratch_bytes(int64_t n, int k) {
    return size_t(kTopkBlocks) * k * (sizeof(float) + sizeof(int)) + 2 * size_t(kTopkBlocks) * sizeof(float);
}

void launch_topk(const float* x, int64_t n, int k, void* scratch, int32_t* ids_out, float* vals_out, float* lse_out,
                 cudaStream_t stream) {
    if (k < 1 || k > 64) throw InvalidArgument("top_k must be in [1, 64], got " + std::to_string(k));
    const int slice = int((n + kTopkBlocks - 1) / kTopkBlocks);
    const size_t smem = sizeof(float) * size_t(slice);
    if (smem > 48 * 1024) throw Error("cuda top-k: vocabulary too large (" + std::to_string(n) + ")");
    float* cand_v = static_cast<float*>(scratch);
    int* cand_i = reinterpret_cast<int*>(cand_v + kTopkBlocks * k);
    float* block_max = reinterpret_cast<float*>(cand_i + kTopkBlocks * k);
    float* block_sum = block_max + kTopkBlocks;
    topk_stage1<<<kTopkBlocks, kTopkThreads, smem, stream>>>(x, n, k, slice, cand_v, cand_i, block_max, block_sum);
    MN_CUDA_CHECK_LAUNCH("topk_stage1");
    topk_stage2<<<1, kTopkThreads, 0, stream>>>(cand_v, cand_i, kTopkBlocks * k, k, ids_out, vals_out, block_max,
                                                block_sum, lse_out);
    MN_CUDA_CHECK_LAUNCH("topk_stage2");
}

}  // namespace mn::cuda
