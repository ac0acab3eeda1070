// Row-wise and elementwise kernels: embedding gather, rms_norm, SwiGLU, add,
// RoPE, and the top-k selection that keeps most of the logits on the device.
#include <algorithm>
#include <cmath>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace mn::cuda {

namespace {

template <TensorType T>
__global__ void embed_kernel(const uint8_t* table, size_t row_bytes, int K, const int32_t* ids, float* out,
                             const int* pos_src, int* pos_dst) {
    const int r = blockIdx.x;
    if (pos_src && r == 0 && threadIdx.x == 0) *pos_dst = *pos_src;
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
    const int* pos_src;
    int* pos_dst;
    cudaStream_t s;
    template <TensorType T>
    void operator()() const {
        embed_kernel<T><<<rows, 128, 0, s>>>(t.data, t.row_bytes, t.K, ids, out, pos_src, pos_dst);
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
        inv = inv_rms(t, width, eps);
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

struct TopkArgs {
    const float* x;
    int64_t n;
    int k, slice;
    float* cand_v;  // [blocks][k] each slice's best, then their row indices
    int* cand_i;
    float* block_max;  // [blocks] each slice's max and sum of exp(x - max) (log-sum-exp only)
    float* block_sum;
    int* counter;  // blocks done (zero between launches)
    int32_t* ids;  // [k] results
    float* vals;
    float* lse;  // null: not wanted
    // Optional: the next one-row decode step's input, {top-1 id, *pos + 1}, for a step run ahead.
    int* next;
    const int* pos;
};
__device__ __forceinline__ bool better(const Cand& a, const Cand& b) {
    return a.v > b.v || (a.v == b.v && a.i < b.i);
}

// Selects the k best of vals[0..len) (indices idx[] or the position when idx is null),
// destroying vals. Thread 0 writes them in descending order. L2: vals and idx are global memory
// that other blocks of this launch wrote, read through L2 (__ldcg; this thread's own overwrites
// of vals are then seen in program order).
template <bool L2>
__device__ void select_k(float* vals, const int* idx, int len, int k, float* out_v, int* out_i) {
    __shared__ Cand wbest[kTopkThreads / 32];
    __shared__ Cand pick;
    auto val = [&](int j) { return L2 ? __ldcg(vals + j) : vals[j]; };
    auto id = [&](int j) { return idx ? (L2 ? __ldcg(idx + j) : idx[j]) : j; };
    auto local_best = [&]() {
        Cand b{-INFINITY, INT_MAX};
        for (int j = threadIdx.x; j < len; j += kTopkThreads) {
            const Cand c{val(j), id(j)};
            if (c.v == c.v && better(c, b)) b = c;  // NaN never wins
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
        // Only the thread that held the winner rescans its elements, and not after the last round
        // (for top-1, two more round trips to L2 on the step's tail in the combining block).
        if (round + 1 < k && mine.i == pick.i && mine.v == pick.v && pick.i != INT_MAX) {
            for (int j = threadIdx.x; j < len; j += kTopkThreads)
                if (id(j) == pick.i) vals[j] = -INFINITY;
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

// One launch: each block takes a slice of the row (its max, its sum of exp(x - max) when the
// log-sum-exp is wanted, its k best as candidates), then counts itself done; the last block
// combines the slices and writes the results (to pinned host memory, so no copy follows). As a
// programmatic dependent launch it is resident while the LM head finishes. Two launches, the
// second ordinary, and a copy cost ~10 us of a 0.5B decode step's tail (H100).
__global__ void __launch_bounds__(kTopkThreads) topk_kernel(TopkArgs a) {
    extern __shared__ float sv[];
    __shared__ bool s_last;
    pdl_wait();
    const int64_t start = int64_t(blockIdx.x) * a.slice;
    const int64_t left = a.n - start;
    const int len = left <= 0 ? 0 : (left < a.slice ? int(left) : a.slice);
    float m = -INFINITY;
    for (int j = threadIdx.x; j < len; j += kTopkThreads) {
        sv[j] = a.x[start + j];
        m = fmaxf(m, sv[j]);
    }
    if (a.lse) {
        // The slice's max and sum(exp(x - max)), combined over the slices by the last block.
        m = block_reduce<true>(m);
        float s = 0.0f;
        if (m != -INFINITY)
            for (int j = threadIdx.x; j < len; j += kTopkThreads) s += expf(sv[j] - m);
        s = block_reduce<false>(s);
        if (threadIdx.x == 0) {
            a.block_max[blockIdx.x] = m;
            a.block_sum[blockIdx.x] = s;
        }
    }
    __syncthreads();
    __shared__ float ov[64];
    __shared__ int oi[64];
    select_k<false>(sv, nullptr, len, a.k, ov, oi);
    if (threadIdx.x < a.k) {
        a.cand_v[blockIdx.x * a.k + threadIdx.x] = ov[threadIdx.x];
        a.cand_i[blockIdx.x * a.k + threadIdx.x] = oi[threadIdx.x] == INT_MAX ? INT_MAX : int(start) + oi[threadIdx.x];
    }
    // Publish the candidates, then count them; the block that counts last sees every slice's.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(a.counter, 1) == int(gridDim.x) - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    if (a.lse) {
        const float bm = threadIdx.x < gridDim.x ? __ldcg(a.block_max + threadIdx.x) : -INFINITY;
        const float mx = block_reduce<true>(bm);
        const float s = block_reduce<false>(threadIdx.x < gridDim.x && bm != -INFINITY
                                                ? __ldcg(a.block_sum + threadIdx.x) * expf(bm - mx) : 0.0f);
        if (threadIdx.x == 0) *a.lse = mx + logf(s);
    }
    select_k<true>(a.cand_v, a.cand_i, int(gridDim.x) * a.k, a.k, ov, oi);
    if (threadIdx.x < a.k) {
        a.ids[threadIdx.x] = oi[threadIdx.x];
        a.vals[threadIdx.x] = ov[threadIdx.x];
    }
    if (threadIdx.x == 0) {
        *a.counter = 0;  // ready for the next launch
        if (a.next) {
            a.next[0] = oi[0];
            a.next[1] = *a.pos + 1;
        }
    }
}

}  // namespace

void launch_embed(const QMatrix& table, const int32_t* ids, int rows, float* out, const int* pos_src, int* pos_dst,
                  cudaStream_t stream) {
    if (!dispatch_type(table.type, EmbedLaunch{table, ids, rows, out, pos_src, pos_dst, stream}))
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
    return 16 + 2 * size_t(kTopkBlocks) * sizeof(float) + size_t(kTopkBlocks) * k * (sizeof(float) + sizeof(int));
}

void launch_topk(const float* x, int64_t n, int k, void* scratch, int32_t* ids_out, float* vals_out, float* lse_out,
                 int* next, const int* pos, bool pdl, cudaStream_t stream) {
    if (k < 1 || k > 64) throw InvalidArgument("top_k must be in [1, 64], got " + std::to_string(k));
    TopkArgs a;
    a.x = x;
    a.n = n;
    a.k = k;
    a.slice = int((n + kTopkBlocks - 1) / kTopkBlocks);
    const size_t smem = sizeof(float) * size_t(a.slice);
    if (smem > 48 * 1024) throw Error("cuda top-k: vocabulary too large (" + std::to_string(n) + ")");
    // The counter first: at the same place whatever k is, so a buffer grown for a larger k
    // keeps the zero the last block left.
    a.counter = static_cast<int*>(scratch);
    a.block_max = reinterpret_cast<float*>(static_cast<char*>(scratch) + 16);
    a.block_sum = a.block_max + kTopkBlocks;
    a.cand_v = a.block_sum + kTopkBlocks;
    a.cand_i = reinterpret_cast<int*>(a.cand_v + kTopkBlocks * k);
    a.ids = ids_out;
    a.vals = vals_out;
    a.lse = lse_out;
    a.next = next;
    a.pos = pos;
    launch_kernel(pdl, topk_kernel, dim3(kTopkBlocks), dim3(kTopkThreads), smem, stream, a);
    MN_CUDA_CHECK_LAUNCH("topk_kernel");
}

}  // namespace mn::cuda
