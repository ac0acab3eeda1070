// Device code of the fused decode attention (attention.cu says how it works), shared by its
// kernel there and by the persistent decode-step kernel (decode_step.cu), which runs the same
// work items with more threads per block.
#pragma once

#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace mn::cuda::attn {

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

template <int THREADS>
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
    for (int w = 1; w < THREADS / 32; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
    return r;
}

// A block's scores sc[0, len) turned into softmax numerators e^(sc - max) in place. Each thread
// passes the largest score it wrote (-inf if none); returns the block's max and the numerators'
// sum. The first reduction's barriers publish sc[] before it is read, the second's publish the
// numerators.
template <int THREADS>
__device__ __forceinline__ float2 block_softmax_numerators(float* sc, int len, float local_max, float* red) {
    const float mx = block_reduce<THREADS>(local_max, red, true);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += THREADS) {
        const float p = expf(sc[j] - mx);
        sc[j] = p;
        sum += p;
    }
    return make_float2(mx, block_reduce<THREADS>(sum, red, false));
}

// out[d] = sum_c e^(m_c - M) acc_c[d] / sum_c e^(m_c - M) l_c over the `live` chunk records of
// one (row, head) at part ([live][hd + 2]: acc, then max m_c and sum l_c). Called by every thread
// of a block of at least 32 threads (live <= 32). The records are read through L2 (__ldcg): other
// SMs wrote them. The chunks' maxima and sums are loaded once, in parallel, and their weights
// e^(m_c - M) computed once, not per output dimension.
__device__ __forceinline__ void combine_chunks(const float* part, int live, int hd, float* __restrict__ out) {
    __shared__ float sw[32], sl[32];
    __shared__ float s_den;
    if (threadIdx.x < live) {
        sw[threadIdx.x] = __ldcg(part + threadIdx.x * (hd + 2) + hd);
        sl[threadIdx.x] = __ldcg(part + threadIdx.x * (hd + 2) + hd + 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        float M = -INFINITY;
        for (int c = 0; c < live; ++c) M = fmaxf(M, sw[c]);
        const float w = threadIdx.x < live ? expf(sw[threadIdx.x] - M) : 0.0f;
        float den = threadIdx.x < live ? w * sl[threadIdx.x] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) den += __shfl_xor_sync(0xffffffffu, den, o);
        __syncwarp();
        if (threadIdx.x < live) sw[threadIdx.x] = w;
        if (threadIdx.x == 0) s_den = den;
    }
    __syncthreads();
    const float den = s_den;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f;
#pragma unroll 8
        for (int c = 0; c < live; ++c) num += sw[c] * __ldcg(part + c * (hd + 2) + d);
        out[d] = num / den;
    }
}

// q . k for one cached key row of the decode kernel: the row's bytes are loaded 16 at a time,
// up to 256 bytes before any is used (the row is one L2 round trip, not hd of them); q, scaled,
// is in shared memory (every thread reads the same word: a broadcast).
template <typename T, int DPL>
__device__ __forceinline__ float key_dot(const T* __restrict__ kr, const float* sq, int hd) {
    constexpr int kVec = 16 / int(sizeof(T));            // elements per 16-byte load
    constexpr int kBatch = 256 / 16;                     // loads in flight per thread
    constexpr int kVecs = (32 * DPL + kVec - 1) / kVec;  // loads that cover hd <= 32 DPL
    float s = 0.0f;  // hd is a multiple of 32 (attention_decode_fused): rows are 16-byte aligned
    const uint4* p = reinterpret_cast<const uint4*>(kr);
#pragma unroll
    for (int b0 = 0; b0 < kVecs; b0 += kBatch) {
        uint4 w[kBatch];
#pragma unroll
        for (int c = 0; c < kBatch; ++c)
            if (b0 + c < kVecs && (b0 + c) * kVec < hd) w[c] = p[b0 + c];
#pragma unroll
        for (int c = 0; c < kBatch; ++c) {
            if (b0 + c >= kVecs || (b0 + c) * kVec >= hd) continue;
            const int d0 = (b0 + c) * kVec;
            const uint32_t u[4] = {w[c].x, w[c].y, w[c].z, w[c].w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                if constexpr (std::is_same_v<T, __half>) {
                    s += sq[d0 + 2 * e] * __half2float(__ushort_as_half((unsigned short)(u[e] & 0xFFFFu))) +
                         sq[d0 + 2 * e + 1] * __half2float(__ushort_as_half((unsigned short)(u[e] >> 16)));
                } else {
                    s += sq[d0 + e] * __uint_as_float(u[e]);
                }
            }
        }
    }
    return s;
}

// q . k for a key row in shared memory (a thread per key), its 16-byte pieces taken from piece
// `rot` on (mod the row's pieces): threads of a quarter warp that started at the same piece
// would hit the same banks (rows of 128 bytes: 8-way). A loop with two sums, not unrolled like
// key_dot: the kernel's instructions come from L2 at every launch, so its code is kept short.
template <typename T>
__device__ __forceinline__ float key_dot_compact(const T* kr, const float* sq, int hd, int rot) {
    constexpr int kVec = 16 / int(sizeof(T));
    const int nv = hd / kVec;
    const uint4* p = reinterpret_cast<const uint4*>(kr);
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll 2
    for (int c = 0; c < nv; ++c) {
        int i = c + rot;
        if (i >= nv) i -= nv;
        const uint4 w = p[i];
        const float4* q = reinterpret_cast<const float4*>(sq + i * kVec);
        if constexpr (std::is_same_v<T, __half>) {
            const float4 qa = q[0], qb = q[1];
            const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&w.x));
            const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&w.y));
            const float2 e = __half22float2(*reinterpret_cast<const __half2*>(&w.z));
            const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w.w));
            s0 += qa.x * a.x + qa.y * a.y + qa.z * b.x + qa.w * b.y;
            s1 += qb.x * e.x + qb.y * e.y + qb.z * f.x + qb.w * f.y;
        } else {
            const float4 qa = q[0];
            s0 += qa.x * __uint_as_float(w.x) + qa.y * __uint_as_float(w.y);
            s1 += qa.z * __uint_as_float(w.z) + qa.w * __uint_as_float(w.w);
        }
    }
    return s0 + s1;
}

__device__ __forceinline__ float smem_dot(const float* a, const float* b, int n) {
    float s = 0.0f;
    for (int d = 0; d < n; ++d) s += a[d] * b[d];
    return s;
}

// Two adjacent cache values (an even index: 4- or 8-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ float2 load_pair(const T* p);
template <> __device__ __forceinline__ float2 load_pair<float>(const float* p) {
    return *reinterpret_cast<const float2*>(p);
}
template <> __device__ __forceinline__ float2 load_pair<__half>(const __half* p) {
    return __half22float2(*reinterpret_cast<const __half2*>(p));
}

// Decode in one launch: grid (n_splits, n_heads), one block per (chunk of keys, query head).
// Each block rotates its query head (RoPE, as rope_kernel computes it) and, if its chunk holds
// the new position, the new key; one block per KV head stores the new key and value in the
// cache, and the other blocks of that KV head take them from shared memory (the store may not
// have landed), rounded to the cache type exactly as the stored copy is. Scores, softmax and the
// weighted values of the chunk follow attn_split_kernel. A one-chunk head writes its output
// directly; otherwise the chunks' partials meet in `part` and the last block of the head to
// finish (a counter per head) combines them, so no second launch is needed. Before this kernel,
// a decode layer's attention was three launches (rope + store, split, combine) of 2-10 us each.
struct DecodeArgs {
    const float* q;
    const float* k;
    const float* v;
    void* kc;
    void* vc;
    int n_ctx;
    const int* pos0;
    int n_heads, n_kv_heads, hd;
    int single;    // up to this many keys, one chunk (one block) per head: no combine
    int n_splits;  // grid width: longer contexts take up to this many chunks of >= kAttnSplit keys
    int keys_cap;  // the most keys a chunk can have (shared memory for the scores)
    const float* freq;  // null: q and k are already rotated
    bool neox;
    float* part;
    int* counters;
    float* out;
    // Keys (and values) of a chunk copied into shared memory before the wait (the STAGE kernels):
    // the first stage_keys cached ones; 0 = none.
    int stage_keys;
#ifdef MN_CUDA_TRACE
    TraceSink trace;
#endif
};

// Calls f(tag) with tag::value the dimensions per lane (DPL) that the split and decode kernels
// are compiled for, the fewest that cover a head of hd dimensions (hd <= 256).
template <typename F>
auto with_dpl(int hd, F&& f) {
    if (hd <= 32) return f(std::integral_constant<int, 1>{});
    if (hd <= 64) return f(std::integral_constant<int, 2>{});
    if (hd <= 128) return f(std::integral_constant<int, 4>{});
    return f(std::integral_constant<int, 8>{});
}

// Shared-memory floats attn_decode_item needs: q, the new key and value, the chunk's scores
// and the value slices' sums (at most THREADS / 16 slices).
__host__ __device__ constexpr int decode_smem_floats(int threads, int hd, int keys_cap) {
    return (3 + threads / 16) * hd + keys_cap;
}
// Where the staged keys and values begin, in floats from the start (a 16-byte boundary after them).
__host__ __device__ constexpr int decode_stage_offset(int threads, int hd, int keys_cap) {
    return (decode_smem_floats(threads, hd, keys_cap) + 3) / 4 * 4;
}
// All of a block's dynamic shared memory: those floats, then (stage_keys > 0) the staged keys and
// values (elem bytes each) from decode_stage_offset, then the copies' barrier.
constexpr size_t decode_smem_bytes(int threads, int hd, int keys_cap, int stage_keys, int elem) {
    return size_t(decode_stage_offset(threads, hd, keys_cap)) * 4 +
           (stage_keys > 0 ? 2 * size_t(stage_keys) * hd * elem + 16 : 0);
}

//
// One work item (chunk s of query head h) of the decode attention, run by every thread of a
// block of THREADS threads with `smem` of decode_smem_floats(THREADS, hd, keys_cap) floats.
// PDL (the attention kernel, launched as a programmatic dependent, common.cuh): before
// pdl_wait() a block reads only the position (copied before the step's first kernel) and asks L2
// for its chunk's cached keys and values (written by earlier steps), so those DRAM trips overlap
// the q/k/v matvec's tail. Without it (the decode-step kernel), the caller orders the reads.
// STAGE: the chunk's first a.stage_keys cached keys and values are copied into shared memory
// before the wait (one bulk copy each, which the q, k, v loads after the wait do not queue
// behind), and the new key and value are put after them when there is room, so that the scores
// and the values read them all on chip. Measured on the H100 (0.5B geometry, tg128 top_k=1, one
// lease): 1,594-1,595 tok/s against 1,525-1,535 reading the cache through L2 (1,583 with the
// new key apart and key_dot's unrolled code); the scores and softmax still take ~2 us after
// the copies have landed.
// ONCHIP (with STAGE; the caller checks it): the step's keys fit one chunk and all of them,
// the new one included, fit the staged keys (n_keys <= single and <= stage_keys): every key and
// value is read on chip, one key per thread, and no partials are combined. Compiled apart so that
// a block runs only that path's code (a kernel of the one path: 17.5 KB of sm_90 code, against
// 41 KB for the general staged path, at head_dim 64 with an fp16 cache): these kernels wait on
// instruction fetch after their wait. With the value's load beside q's and k's (one round trip,
// not two), H100, 0.5B geometry, tg128 top_k=1, same lease, alternating: 1,811-1,821 tok/s
// against 1,708-1,717.
template <typename T, int DPL, int THREADS, bool PDL, bool STAGE = false, bool ONCHIP = false>
__device__ __forceinline__ void attn_decode_item(const DecodeArgs& a, int s, int h, float* smem) {
    MN_TRACE_BEGIN;
    const int pos = *a.pos0;
    const int n_keys = pos + 1;
    // The step's chunk length from its position: one chunk while the keys fit `single` (a
    // thread per key scores up to 128 keys in about the time of 32, and a combine costs a fence,
    // a counter and a second read of the partials, ~3 us of a 0.5B layer); beyond it, the keys
    // spread over all n_splits blocks of the head (a long context's walk is then short per
    // block: at 1,000-4,000 keys, 256-key chunks decoded 10-15% slower than 32-128-key ones).
    const int chunk = n_keys <= a.single
                          ? a.single
                          : max(kAttnSplit, (((n_keys + a.n_splits - 1) / a.n_splits) + 31) / 32 * 32);
    const int start = s * chunk;
    if (start >= n_keys) {  // not counted: the combine counts live chunks only
        if constexpr (PDL) pdl_wait();
        return;
    }
    const int len = min(chunk, n_keys - start);
    const int hd = a.hd, half = hd / 2;
    const int group = a.n_heads / a.n_kv_heads;
    const int kvh = h / group;
    const bool has_new = start + len == n_keys;  // this chunk ends at the new position
    T* stk = nullptr;  // STAGE: [stage_keys][hd] keys, then as many values, then the barrier
    uint64_t* stbar = nullptr;
    int n_st = 0;
    bool ins = false;  // STAGE: the new key and value go on chip after the staged ones
    {
        const int cached_keys = has_new ? len - 1 : len;
        const size_t row0 = (size_t(kvh) * a.n_ctx + start) * hd * sizeof(T);
        const int bytes = cached_keys * hd * int(sizeof(T));
        int first = 0;
        if constexpr (STAGE) {
            n_st = min(cached_keys, a.stage_keys);
            ins = has_new && n_st == cached_keys && n_st < a.stage_keys;
            stk = reinterpret_cast<T*>(smem + decode_stage_offset(THREADS, hd, a.keys_cap));
            stbar = reinterpret_cast<uint64_t*>(stk + 2 * size_t(a.stage_keys) * hd);
            first = n_st * hd * int(sizeof(T));
            if (n_st > 0) {
                bulk_stage_begin(stbar);
                bulk_stage_copy(stk, static_cast<const uint8_t*>(a.kc) + row0, uint32_t(first), stbar);
                bulk_stage_copy(stk + size_t(a.stage_keys) * hd, static_cast<const uint8_t*>(a.vc) + row0,
                                uint32_t(first), stbar);
                bulk_stage_commit(stbar);
            }
        }
        if constexpr (!ONCHIP) {
            for (int off = first + 128 * threadIdx.x; off < bytes; off += 128 * THREADS) {
                prefetch_l2(static_cast<const uint8_t*>(a.kc) + row0 + off);
                prefetch_l2(static_cast<const uint8_t*>(a.vc) + row0 + off);
            }
        }
    }
    // The rotation of this thread's dimension pair (the position is known before the wait and
    // the frequencies are constant): no table load and no sincosf after the wait.
    float rope_cs = 1.0f, rope_sn = 0.0f;
    if (a.freq && int(threadIdx.x) < half) sincosf(float(pos) * __ldg(a.freq + threadIdx.x), &rope_sn, &rope_cs);
    if constexpr (PDL) pdl_wait();
    MN_TRACE(1);
    float* sq = smem;               // [hd] rotated q, scaled by 1/sqrt(hd)
    float* skn = sq + hd;           // [hd] the new key as the cache holds it
    float* svn = skn + hd;          // [hd] the new value as the cache holds it
    float* sp = svn + hd;           // [keys_cap] scores, then probabilities; then [kSlices][hd]
    __shared__ int s_last;

    T* kc = static_cast<T*>(a.kc);
    T* vc = static_cast<T*>(a.vc);
    const float scale = 1.0f / sqrtf(float(hd));
    const float* qr = a.q + size_t(h) * hd;
    const float* kr = a.k + size_t(kvh) * hd;
    const float* vr = a.v + size_t(kvh) * hd;
    const bool store = has_new && h % group == 0;
    const size_t new_at = (size_t(kvh) * a.n_ctx + pos) * hd;
    if (int(threadIdx.x) < half) {  // hd <= 256 (attention_decode_fused): a pair per thread
        const int i = threadIdx.x;
        int ia, ic;
        rope_dims(i, half, a.neox, ia, ic);
        // q, k and v all loaded before anything is stored: a store to the cache could alias a
        // later load as far as the compiler knows, and the value's load then waited behind it (a
        // second round trip to L2 on every block's chain).
        float q0 = qr[ia], q1 = qr[ic];
        float k0 = 0.0f, k1 = 0.0f;
        float2 vv = make_float2(0.0f, 0.0f);
        if (has_new) {
            k0 = kr[ia];
            k1 = kr[ic];
            vv = *reinterpret_cast<const float2*>(vr + 2 * i);  // the value's pair 2i, 2i + 1 (no rotation)
        }
        if (a.freq) {
            rope_rotate(q0, q1, rope_cs, rope_sn);
            rope_rotate(k0, k1, rope_cs, rope_sn);
        }
        sq[ia] = q0 * scale;
        sq[ic] = q1 * scale;
        if (has_new) {
            const T c0 = from_f<T>(k0), c1 = from_f<T>(k1);
            skn[ia] = to_f<T>(c0);
            skn[ic] = to_f<T>(c1);
            if (STAGE && ins) {
                stk[size_t(n_st) * hd + ia] = c0;
                stk[size_t(n_st) * hd + ic] = c1;
            }
            if (store) {
                kc[new_at + ia] = c0;
                kc[new_at + ic] = c1;
            }
            const T v0 = from_f<T>(vv.x), v1 = from_f<T>(vv.y);
            svn[2 * i] = to_f<T>(v0);
            svn[2 * i + 1] = to_f<T>(v1);
            if (STAGE && ins) {
                stk[(size_t(a.stage_keys) + n_st) * hd + 2 * i] = v0;
                stk[(size_t(a.stage_keys) + n_st) * hd + 2 * i + 1] = v1;
            }
            if (store) {
                vc[new_at + 2 * i] = v0;
                vc[new_at + 2 * i + 1] = v1;
            }
        }
    }
    __syncthreads();
    MN_TRACE(2);
    // Keys [start, start + len): from the cache, except the new one (from shared memory).
    // Three phases, each a few dependent steps: a thread per key for the scores (its whole key
    // row loaded at once), one block max, then the weighted values with a thread per pair of
    // dimensions and slice of the keys. (The walk this replaces had a warp take 8 keys at a
    // time with a shuffle reduction per key and an online softmax: one warp per scheduler on a
    // chain of ~400 dependent instructions per 8 keys, ~3.5 us for 30-60 keys on the H100.)
    const int cached = has_new ? len - 1 : len;
    const T* kbase = kc + (size_t(kvh) * a.n_ctx + start) * hd;
    const T* vbase = vc + (size_t(kvh) * a.n_ctx + start) * hd;
    __shared__ float red[THREADS / 32];
    float mx = -INFINITY;
    if constexpr (STAGE) {
        if (n_st > 0) bulk_stage_wait(stbar);  // n_st is the block's: every thread or none
    }
    auto score = [&](int j) {
        float dot;
        if constexpr (STAGE) {
            dot = ONCHIP || j < n_st + int(ins) ? key_dot_compact<T>(stk + size_t(j) * hd, sq, hd, j % (hd * int(sizeof(T)) / 16))
                  : j < cached                  ? key_dot<T, DPL>(kbase + size_t(j) * hd, sq, hd)
                                                : smem_dot(skn, sq, hd);
        } else {
            dot = j < cached ? key_dot<T, DPL>(kbase + size_t(j) * hd, sq, hd) : smem_dot(skn, sq, hd);
        }
        sp[j] = dot;
        mx = fmaxf(mx, dot);
    };
    if constexpr (ONCHIP) {  // len <= stage_keys <= kAttnStageKeys <= THREADS: a key per thread at most
        static_assert(kAttnStageKeys <= THREADS, "the on-chip case scores a key per thread");
        if (int(threadIdx.x) < len) score(threadIdx.x);
    } else {
        for (int j = threadIdx.x; j < len; j += THREADS) score(j);
    }
    float sum;
    if constexpr (ONCHIP) {  // as block_softmax_numerators, from the thread's one score in mx
        const float m = block_reduce<THREADS>(mx, red, true);
        float p = 0.0f;
        if (int(threadIdx.x) < len) {
            p = expf(mx - m);
            sp[threadIdx.x] = p;
        }
        mx = m;
        sum = block_reduce<THREADS>(p, red, false);
    } else {
        const float2 ms = block_softmax_numerators<THREADS>(sp, len, mx, red);  // max finite: the chunk has a key
        mx = ms.x;
        sum = ms.y;
    }
    MN_TRACE(3);

    // Values: thread t takes the dimension pair t % kPairs over the keys t / kPairs + kSlices i.
    constexpr int kPairs = 16 * DPL;  // >= hd / 2
    static_assert(kPairs <= THREADS, "a thread per dimension pair");
    constexpr int kSlices = THREADS / kPairs;
    float* sred = sp + a.keys_cap;  // [kSlices][hd] the slices' sums
    {
        const int pair = threadIdx.x % kPairs, slice = threadIdx.x / kPairs;
        float ax = 0.0f, ay = 0.0f;
        if (2 * pair < hd) {
            int j0 = slice;
            if constexpr (STAGE) {
                const T* vst = stk + size_t(a.stage_keys) * hd;
#pragma unroll 4
                for (; j0 < n_st + int(ins); j0 += kSlices) {
                    const float p = sp[j0];
                    const float2 v2 = load_pair<T>(vst + size_t(j0) * hd + 2 * pair);
                    ax += p * v2.x;
                    ay += p * v2.y;
                }
            }
            if constexpr (!ONCHIP) {  // the keys past the staged ones, from the cache
#pragma unroll 8
                for (int j = j0; j < cached; j += kSlices) {
                    const float p = sp[j];
                    const float2 v2 = load_pair<T>(vbase + size_t(j) * hd + 2 * pair);
                    ax += p * v2.x;
                    ay += p * v2.y;
                }
            }
            if (!ONCHIP && !ins && cached < len && (len - 1) % kSlices == slice) {  // the new key
                const float p = sp[len - 1];
                ax += p * svn[2 * pair];
                ay += p * svn[2 * pair + 1];
            }
            sred[slice * hd + 2 * pair] = ax;
            sred[slice * hd + 2 * pair + 1] = ay;
        }
    }
    __syncthreads();

    const int live = (n_keys + chunk - 1) / chunk;
    float* orow = a.out + size_t(h) * hd;
    if (ONCHIP || live == 1) {
#pragma unroll 1  // hd <= 2 THREADS: one or two trips, not worth the unrolled code
        for (int d = threadIdx.x; d < hd; d += THREADS) {
            float t = 0.0f;
#pragma unroll
            for (int sl = 0; sl < kSlices; ++sl) t += sred[sl * hd + d];
            orow[d] = t / sum;
        }
        MN_TRACE_END(a.trace, 3, a.kc, 4);
        return;
    }
    float* head_part = a.part + size_t(h) * a.n_splits * (hd + 2);
    float* rec = head_part + size_t(s) * (hd + 2);
#pragma unroll 1  // as above
    for (int d = threadIdx.x; d < hd; d += THREADS) {
        float t = 0.0f;
#pragma unroll
        for (int sl = 0; sl < kSlices; ++sl) t += sred[sl * hd + d];
        rec[d] = t;
    }
    if (threadIdx.x == 0) {
        rec[hd] = mx;
        rec[hd + 1] = sum;
    }
    // Publish the partial, then count it; the block that counts last sees every partial.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(a.counters + h, 1) == live - 1;
    __syncthreads();
    if (!s_last) {
        MN_TRACE_END(a.trace, 3, a.kc, 4);
        return;
    }
    MN_TRACE(4);
    __threadfence();
    combine_chunks(head_part, live, hd, orow);
    if (threadIdx.x == 0) a.counters[h] = 0;  // ready for the next step (graph replays reuse it)
    MN_TRACE_END(a.trace, 3, a.kc, 5);
}


// Host side (attention.cu): the decode kernel's arguments for `a` (a decode row with counters),
// for blocks of `threads` threads; an mn::Error when the shape needs more than 48 KB of shared memory.
DecodeArgs make_decode_args(const AttentionArgs& a, int threads);

}  // namespace mn::cuda::attn
