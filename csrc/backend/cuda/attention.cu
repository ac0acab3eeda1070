// Attention over the KV cache with fp32 scores and softmax.
//
// The keys of each query row are split into chunks (flash-decoding): one block
// scores one chunk for one head, keeps the chunk's max, sum and unnormalized
// output, and the chunks are combined. Decode then spreads one row's work over
// many SMs, and the grid depends only on n_ctx, so the launch can be recorded
// in a CUDA graph and replayed while the position (read from device memory)
// moves on. A decode row (attn_decode_kernel) does it all in one launch: RoPE,
// the KV store, the chunks and, in the last block of each head, the combine.
// Few-row batches use the split kernels and a combine launch; prefill uses
// tile kernels (attention_prefill.cu on tensor cores, attn_tile_kernel here).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/attention_decode.cuh"

namespace mn::cuda {

using namespace attn;

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

// grid (n_splits, n_heads, rows). Partial record per (row, head, split): [hd] acc, max, sum.
// Warps take keys in turn and their lanes split the head's dimensions, so each key row is
// one coalesced read and a warp has several keys' loads in flight; the warps' partial
// outputs meet in shared memory. (Decode spends ~2 us here instead of ~10-18 us with a
// thread per key, whose serial 256-byte row reads left the SMs waiting.)
constexpr int kMaxWarpHd = 256;
constexpr int kAttnWarps = kThreads / 32;
constexpr int kKeysPerTrip = 8;  // a trip of the 4 warps covers a 32-key chunk

// DPL: dimensions per lane, ceil(hd / 32) rounded up to 1, 2, 4 or 8 (a compile-time bound:
// Nsight showed the kernel issue-bound on predicated-off lanes' work with a fixed 8).
template <typename T, int DPL>
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
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    extern __shared__ float smem[];
    float* sq = smem;              // [hd], scaled by 1/sqrt(hd)
    float* sc = sq + hd;           // [chunk]
    float* sacc = sc + chunk;      // [kAttnWarps][hd]
    __shared__ float red[kThreads / 32];

    const float scale = 1.0f / sqrtf(float(hd));
    const float* qr = q + (size_t(r) * n_heads + h) * hd;
    for (int i = threadIdx.x; i < hd; i += kThreads) sq[i] = qr[i] * scale;
    __syncthreads();
    float qv[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) qv[i] = lane + 32 * i < hd ? sq[lane + 32 * i] : 0.0f;

    const T* kbase = kc + (size_t(kvh) * n_ctx + start) * hd;
    const T* vbase = vc + (size_t(kvh) * n_ctx + start) * hd;
    float mx = -INFINITY;
    for (int j0 = warp * kKeysPerTrip; j0 < len; j0 += kAttnWarps * kKeysPerTrip) {
        float dot[kKeysPerTrip];
#pragma unroll
        for (int u = 0; u < kKeysPerTrip; ++u) {
            dot[u] = 0.0f;
            if (j0 + u < len) {
                const T* kr = kbase + size_t(j0 + u) * hd;
#pragma unroll
                for (int i = 0; i < DPL; ++i)
                    if (lane + 32 * i < hd) dot[u] += qv[i] * to_f<T>(kr[lane + 32 * i]);
            }
        }
#pragma unroll
        for (int u = 0; u < kKeysPerTrip; ++u) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) dot[u] += __shfl_xor_sync(0xffffffffu, dot[u], o);
            if (j0 + u < len) {
                mx = fmaxf(mx, dot[u]);
                if (lane == 0) sc[j0 + u] = dot[u];
            }
        }
    }
    const float2 ms = block_softmax_numerators<kThreads>(sc, len, mx, red);
    mx = ms.x;
    const float sum = ms.y;

    float acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] = 0.0f;
#pragma unroll 8
    for (int j = warp; j < len; j += kAttnWarps) {
        const float p = sc[j];
        const T* vr = vbase + size_t(j) * hd;
#pragma unroll
        for (int i = 0; i < DPL; ++i)
            if (lane + 32 * i < hd) acc[i] += p * to_f<T>(vr[lane + 32 * i]);
    }
#pragma unroll
    for (int i = 0; i < DPL; ++i)
        if (lane + 32 * i < hd) sacc[warp * hd + lane + 32 * i] = acc[i];
    __syncthreads();
    float* rec = part + ((size_t(r) * n_heads + h) * n_splits + s) * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += kThreads) {
        float t = 0.0f;
#pragma unroll
        for (int w = 0; w < kAttnWarps; ++w) t += sacc[w * hd + d];
        rec[d] = t;
    }
    if (threadIdx.x == 0) {
        rec[hd] = mx;
        rec[hd + 1] = sum;
    }
}

// Heads wider than kMaxWarpHd: a thread per key (scores) and per dimension (output).
template <typename T>
__global__ void __launch_bounds__(kThreads) attn_split_wide_kernel(const float* __restrict__ q, const T* __restrict__ kc,
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
    const float2 ms = block_softmax_numerators<kThreads>(sc, len, mx, red);
    mx = ms.x;
    const float sum = ms.y;

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

// grid (n_heads, rows): the chunks of attn_split_kernel / attn_split_wide_kernel combined.
__global__ void attn_combine_kernel(const float* __restrict__ part, const int* pos0, int n_heads, int hd, int chunk,
                                    int n_splits, float* __restrict__ out) {
    const int h = blockIdx.x, r = blockIdx.y;
    const int n_keys = *pos0 + r + 1;
    const int live = (n_keys + chunk - 1) / chunk;
    const size_t row_head = size_t(r) * n_heads + h;
    combine_chunks(part + row_head * n_splits * (hd + 2), live, hd, out + row_head * hd);
}

// Decode in one launch: grid (n_splits, n_heads), one block per (chunk of keys, query head)
// (attention_decode.cuh).
template <typename T, int DPL, bool STAGE>
__global__ void __launch_bounds__(kThreads) attn_decode_kernel(const DecodeArgs a) {
    pdl_launch_dependents();
    extern __shared__ __align__(16) float smem[];
    const int n_keys = *a.pos0 + 1;  // written before the step's first kernel: readable before the wait
    if (STAGE && n_keys <= a.single && n_keys <= a.stage_keys)
        attn_decode_item<T, DPL, kThreads, true, STAGE, true>(a, blockIdx.x, blockIdx.y, smem);
    else attn_decode_item<T, DPL, kThreads, true, STAGE>(a, blockIdx.x, blockIdx.y, smem);
}

// Prefill: a block takes 16 query rows of one head and walks the keys in
// tiles of 64 that all its rows share (loaded once into shared memory, fp16),
// with an online softmax in fp32. Thread t owns row t / 8; its 8 threads split
// each tile's keys (scores) and the head's dimensions (output).
constexpr int kTileQ = 16, kTileK = 64, kMaxTileHd = 128;

__global__ void __launch_bounds__(kThreads) attn_tile_kernel(const float* __restrict__ q, const __half* __restrict__ kc,
                                                             const __half* __restrict__ vc, int n_ctx, const int* pos0p,
                                                             int rows, int n_heads, int n_kv_heads, int hd,
                                                             float* __restrict__ out) {
    __shared__ float sq[kTileQ][kMaxTileHd + 4];  // padded: the 4 rows of a warp hit distinct banks
    __shared__ __half2 sk[kTileK][kMaxTileHd / 2 + 1];  // +1 word: keys of one thread group hit distinct banks
    __shared__ __half2 sv[kTileK][kMaxTileHd / 2];
    __shared__ float sp[kTileQ][kTileK + 1];
    const int h = blockIdx.y, r0 = blockIdx.x * kTileQ;
    const int kvh = h / (n_heads / n_kv_heads);
    const int pos0 = *pos0p;
    const int t = threadIdx.x, row = t >> 3, sub = t & 7;
    const int hd2 = hd / 2;
    const float scale = 1.0f / sqrtf(float(hd));
    const bool row_live = r0 + row < rows;
    const int qpos = pos0 + r0 + row;

    for (int i = t; i < kTileQ * hd; i += kThreads) {
        const int rr = i / hd, d = i % hd;
        sq[rr][d] = r0 + rr < rows ? q[(size_t(r0 + rr) * n_heads + h) * hd + d] : 0.0f;
    }
    const int last_row = min(rows, r0 + kTileQ) - 1;
    const int n_keys = pos0 + last_row + 1;
    float m = -INFINITY, l = 0.0f;
    float o[kMaxTileHd / 8];
#pragma unroll
    for (int i = 0; i < kMaxTileHd / 8; ++i) o[i] = 0.0f;
    const __half* kbase = kc + size_t(kvh) * n_ctx * hd;
    const __half* vbase = vc + size_t(kvh) * n_ctx * hd;

    for (int k0 = 0; k0 < n_keys; k0 += kTileK) {
        const int nk = min(kTileK, n_keys - k0);
        __syncthreads();  // previous tile fully used
        const uint4* ksrc = reinterpret_cast<const uint4*>(kbase + size_t(k0) * hd);
        const uint4* vsrc = reinterpret_cast<const uint4*>(vbase + size_t(k0) * hd);
        const int per_key = hd / 8;  // uint4 per key
        for (int i = t; i < nk * per_key; i += kThreads) {
            const int j = i / per_key, c = i % per_key;
            const uint4 ku = ksrc[i], vu = vsrc[i];
            const __half2* k2 = reinterpret_cast<const __half2*>(&ku);
            const __half2* v2 = reinterpret_cast<const __half2*>(&vu);
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                sk[j][4 * c + w] = k2[w];
                sv[j][4 * c + w] = v2[w];
            }
        }
        __syncthreads();
        // Scores of this thread's 8 keys j = sub + 8i.
        float sc[kTileK / 8];
        float tile_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < kTileK / 8; ++i) {
            const int j = sub + 8 * i;
            float dot = 0.0f;
            if (j < nk) {
                const float2* q2 = reinterpret_cast<const float2*>(sq[row]);
                for (int d2 = 0; d2 < hd2; ++d2) {
                    const float2 kf = __half22float2(sk[j][d2]);
                    const float2 qf = q2[d2];
                    dot += qf.x * kf.x + qf.y * kf.y;
                }
            }
            const bool ok = row_live && j < nk && k0 + j <= qpos;
            sc[i] = ok ? dot * scale : -INFINITY;
            tile_max = fmaxf(tile_max, sc[i]);
        }
#pragma unroll
        for (int off = 1; off < 8; off <<= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
        const float m_new = fmaxf(m, tile_max);
        // A row with no live key yet keeps m = -inf; guard the exponent then.
        const float corr = m_new == -INFINITY ? 1.0f : expf(m - m_new);
        float psum = 0.0f;
#pragma unroll
        for (int i = 0; i < kTileK / 8; ++i) {
            const float p = sc[i] == -INFINITY ? 0.0f : expf(sc[i] - m_new);
            sp[row][sub + 8 * i] = p;
            psum += p;
        }
#pragma unroll
        for (int off = 1; off < 8; off <<= 1) psum += __shfl_xor_sync(0xffffffffu, psum, off);
        l = l * corr + psum;
        m = m_new;
        __syncwarp();  // sp of this row is written by the same warp's 8 threads
        // Output dims d = 2 (sub + 8i) and +1 for this thread.
#pragma unroll
        for (int i = 0; i < kMaxTileHd / 16; ++i) {
            const int d2 = sub + 8 * i;
            if (d2 < hd2) {
                float ax = o[2 * i] * corr, ay = o[2 * i + 1] * corr;
                for (int j = 0; j < nk; ++j) {
                    const float p = sp[row][j];
                    const float2 vf = __half22float2(sv[j][d2]);
                    ax += p * vf.x;
                    ay += p * vf.y;
                }
                o[2 * i] = ax;
                o[2 * i + 1] = ay;
            }
        }
    }
    if (!row_live) return;
    float* orow = out + (size_t(r0 + row) * n_heads + h) * hd;
#pragma unroll
    for (int i = 0; i < kMaxTileHd / 16; ++i) {
        const int d2 = sub + 8 * i;
        if (d2 < hd2) {
            orow[2 * d2] = o[2 * i] / l;
            orow[2 * d2 + 1] = o[2 * i + 1] / l;
        }
    }
}

template <typename T>
using SplitKernel = void (*)(const float*, const T*, const T*, int, const int*, int, int, int, int, int, float*);

template <typename T>
SplitKernel<T> split_kernel_for(int hd) {
    return with_dpl(hd, [](auto dpl) -> SplitKernel<T> { return attn_split_kernel<T, decltype(dpl)::value>; });
}

template <typename T>
using DecodeKernel = void (*)(const DecodeArgs);

template <typename T>
DecodeKernel<T> decode_kernel_for(int hd, bool stage) {
    return with_dpl(hd, [stage](auto dpl) -> DecodeKernel<T> {
        constexpr int D = decltype(dpl)::value;
        return stage ? attn_decode_kernel<T, D, true> : attn_decode_kernel<T, D, false>;
    });
}

}  // namespace

namespace attn {

DecodeArgs make_decode_args(const AttentionArgs& a, int threads) {
    // The split kernels' plan (the scratch holds its partials); each step picks its chunk
    // length in the kernel (DecodeArgs::single).
    const SplitPlan plan = plan_for(a.n_ctx);
    if (!attention_decode_fused(a.rows, a.head_dim, a.thread_per_key))
        throw Error("cuda attention: not a decode row the fused kernel takes");
    if (a.kv_stored || !a.counters) throw Error("cuda attention: the fused decode kernel stores k and v itself");
    if (reinterpret_cast<uintptr_t>(a.v) % 8 != 0)  // its threads load the new value in pairs (float2)
        throw Error("cuda attention: the fused decode kernel needs v 8-byte aligned");
    const int single = std::max(32, a.decode_chunk / 32 * 32);
    const int keys_cap = std::max(std::min(single, a.n_ctx), plan.chunk);
    if (sizeof(float) * size_t(decode_smem_floats(threads, a.head_dim, keys_cap)) > 48 * 1024)
        throw Error("cuda attention: n_ctx " + std::to_string(a.n_ctx) + " needs more shared memory than supported");
    DecodeArgs d{a.q, a.k, a.v, a.k_cache, a.v_cache, a.n_ctx, a.pos0, a.n_heads, a.n_kv_heads, a.head_dim,
                 single, plan.n_splits, keys_cap, a.rope_freq, a.rope_neox, a.scratch, a.counters, a.out, 0};
    if (a.stage_kv) {
        // As many keys as fit kAttnStageSmem beside the floats (a multiple of 16, at most
        // kAttnStageKeys); fewer than 16: not worth a copy.
        const int elem = a.f16_cache ? 2 : 4;
        const size_t used = decode_smem_bytes(threads, a.head_dim, keys_cap, 0, elem) + 16;
        const size_t per_key = 2 * size_t(a.head_dim) * elem;
        const int fit = used < kAttnStageSmem ? int((kAttnStageSmem - used) / per_key) : 0;
        const int keys = std::min({kAttnStageKeys, fit, keys_cap}) / 16 * 16;
        d.stage_keys = keys >= 16 ? keys : 0;
    }
    return d;
}

}  // namespace attn

size_t attention_scratch_floats(int rows, int n_heads, int head_dim, int n_ctx) {
    return size_t(rows) * n_heads * plan_for(n_ctx).n_splits * (head_dim + 2);
}

void launch_attention(const AttentionArgs& a, cudaStream_t stream) {
    const int hd = a.head_dim;
    if (attention_decode_fused(a.rows, hd, a.thread_per_key)) {
        DecodeArgs d = make_decode_args(a, kThreads);
#ifdef MN_CUDA_TRACE
        if (a.trace) d.trace = *a.trace;
#endif
        const size_t smem = decode_smem_bytes(kThreads, hd, d.keys_cap, d.stage_keys, a.f16_cache ? 2 : 4);
        const dim3 grid(d.n_splits, a.n_heads);
        const bool stage = d.stage_keys > 0;
        if (a.f16_cache)
            launch_kernel(a.pdl, decode_kernel_for<__half>(hd, stage), grid, dim3(kThreads), smem, stream, d);
        else launch_kernel(a.pdl, decode_kernel_for<float>(hd, stage), grid, dim3(kThreads), smem, stream, d);
        MN_CUDA_CHECK_LAUNCH("attn_decode_kernel");
        return;
    }
    const SplitPlan plan = plan_for(a.n_ctx);
    const int store_threads = std::min(1024, std::max(32, a.n_kv_heads * hd));
    const bool warp_split = hd <= kMaxWarpHd && !a.thread_per_key;
    const size_t smem = sizeof(float) * (size_t(hd) + plan.chunk + (warp_split ? size_t(kAttnWarps) * hd : kThreads));
    if (smem > 48 * 1024)
        throw Error("cuda attention: n_ctx " + std::to_string(a.n_ctx) + " needs more shared memory than supported");
    const dim3 grid(plan.n_splits, a.n_heads, a.rows);
    const bool tiled = a.f16_cache && a.rows > 4 && hd <= kMaxTileHd && hd % 8 == 0;
    if (tiled) {
        if (!a.kv_stored) {
            store_kv_kernel<__half><<<a.rows, store_threads, 0, stream>>>(
                a.k, a.v, static_cast<__half*>(a.k_cache), static_cast<__half*>(a.v_cache), a.n_ctx, a.pos0,
                a.n_kv_heads, hd);
            MN_CUDA_CHECK_LAUNCH("store_kv_kernel");
        }
        if (attention_prefill_covers(a)) {
            launch_attention_prefill(a, stream);
            return;
        }
        attn_tile_kernel<<<dim3((a.rows + kTileQ - 1) / kTileQ, a.n_heads), kThreads, 0, stream>>>(
            a.q, static_cast<const __half*>(a.k_cache), static_cast<const __half*>(a.v_cache), a.n_ctx, a.pos0,
            a.rows, a.n_heads, a.n_kv_heads, hd, a.out);
        MN_CUDA_CHECK_LAUNCH("attn_tile_kernel");
        return;
    }
    if (a.f16_cache) {
        if (!a.kv_stored) {
            store_kv_kernel<__half><<<a.rows, store_threads, 0, stream>>>(
                a.k, a.v, static_cast<__half*>(a.k_cache), static_cast<__half*>(a.v_cache), a.n_ctx, a.pos0,
                a.n_kv_heads, hd);
            MN_CUDA_CHECK_LAUNCH("store_kv_kernel");
        }
        (warp_split ? split_kernel_for<__half>(hd) : attn_split_wide_kernel<__half>)<<<grid, kThreads, smem, stream>>>(
            a.q, static_cast<const __half*>(a.k_cache), static_cast<const __half*>(a.v_cache), a.n_ctx, a.pos0,
            a.n_heads, a.n_kv_heads, hd, plan.chunk, plan.n_splits, a.scratch);
    } else {
        if (!a.kv_stored) {
            store_kv_kernel<float><<<a.rows, store_threads, 0, stream>>>(
                a.k, a.v, static_cast<float*>(a.k_cache), static_cast<float*>(a.v_cache), a.n_ctx, a.pos0,
                a.n_kv_heads, hd);
            MN_CUDA_CHECK_LAUNCH("store_kv_kernel");
        }
        (warp_split ? split_kernel_for<float>(hd) : attn_split_wide_kernel<float>)<<<grid, kThreads, smem, stream>>>(
            a.q, static_cast<const float*>(a.k_cache), static_cast<const float*>(a.v_cache), a.n_ctx, a.pos0,
            a.n_heads, a.n_kv_heads, hd, plan.chunk, plan.n_splits, a.scratch);
    }
    MN_CUDA_CHECK_LAUNCH("attn_split_kernel");
    attn_combine_kernel<<<dim3(a.n_heads, a.rows), std::min(256, ((hd + 31) / 32) * 32), 0, stream>>>(
        a.scratch, a.pos0, a.n_heads, hd, plan.chunk, plan.n_splits, a.out);
    MN_CUDA_CHECK_LAUNCH("attn_combine_kernel");
}

}  // namespace mn::cuda
