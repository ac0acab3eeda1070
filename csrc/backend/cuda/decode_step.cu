// A run of a decode step's phases (integer matvecs and the fused attention) in one persistent
// launch: one block per SM, all resident at once, a grid barrier between phases.
//
// Why. A small model's decode step is a chain of ~5 kernels per layer whose cost is latency:
// each kernel's blocks become resident only as the previous kernel's leave, so the weights a
// block needs are fetched from DRAM after the wait instead of before it (session 5-6 traces:
// the 0.5B's gate/up blocks start as o's leave). Here every block stays resident through the
// whole run and, while it computes phase i and waits at the barrier, copies its share of phase
// i + 1's weights into shared memory (cp.async, double-buffered): after each barrier, what is
// left is the input row from L2, the dot products from shared memory and the stores. Products
// whose share does not fit a stage buffer read their rows from global memory as the row-pair
// kernel does.
//
// The phases are the device code of matvec_q8.cuh and attention_decode.cuh, so the results are
// those of the ordinary kernels, except the attention's value sums (more slices per block) and
// the rms sum of squares (another grouping), which differ in rounding only.
//
// Status: correct (tests/backend/test_cuda_conformance.py, variants step*) but slower than the
// chain of ordinary kernels on the H100, so off by default (METALLIC_CUDA_STEP=1 turns it on).
// Traced per phase (0.5B geometry): input quantized 0.9-1.6 us, staging wait 0-0.9, the first
// pass of row groups 2-3 us and each later one ~1 us, a grid barrier 1.5-1.9 us; Nsight Compute
// puts 22% of its warps' stall cycles on instruction fetch ("no instruction"; 0.5 MB of code).
// bench/RESULTS.md (CUDA speed, session 8) has the figures and what to try next. A second,
// warp-specialized form of the kernel (decode_stream_kernel below) streams the weights through a
// ring instead; also slower, also opt-in.
//
// Memory ordering: activations written by one phase are read by later phases of the same launch
// on other SMs, so they are read through L2 (__ldcg / plain loads after the barrier's acquire),
// never through the read-only cache (quantize_row_to_shared<..., COHERENT = true>).
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cuda/attention_decode.cuh"
#include "backend/cuda/decode_step.h"
#include "backend/cuda/matvec_q8.cuh"

namespace mn::cuda {

namespace {

constexpr int kStepThreads = 512;
constexpr int kStepWarps = kStepThreads / 32;
// Shared memory past the two stage buffers: the quantized input row (K + K / 32 * 8 bytes) or the
// attention item's floats.
constexpr int kWorkBytes = 48 << 10;

// FNV-1a over n bytes: the key under which a run's phase table is found again.
uint64_t fnv1a(const void* data, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(data);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

enum PhaseKind : int { kMatvec = 0, kAttention = 1 };

struct alignas(16) StepPhase {
    int kind;
    int swiglu;   // matvec: jobs 0 and 1 are gate and up
    int staged;   // matvec: every block's rows fit a stage buffer
    int f16;      // attention: the cache type
    int dpl;      // attention: dimensions per lane (with_dpl)
    int chunk;    // matvec, streamed kernel: row groups per ring slot
    q8::Q8Params mv;
    attn::DecodeArgs at;
};

// All blocks arrive, then leave together. counter counts arrivals over the launch; barrier b
// (from 1) is passed when it reaches b * gridDim.x. The release (fence + atomic) publishes the
// block's writes; the acquire load makes the other blocks' writes visible to this one.
// BAR, THREADS: the block barrier (block_bar's; the streamed kernel's consumers only).
template <int BAR = 0, int THREADS = kStepThreads>
__device__ __forceinline__ void grid_barrier(unsigned int* counter, unsigned int target) {
    block_bar<BAR, THREADS>();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1u);
        unsigned int seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        } while (seen < target);
        __threadfence();
    }
    block_bar<BAR, THREADS>();
}

// Descriptor i of the run (if any) into shared memory, 16 bytes per thread: `threads` threads,
// this one number t among them (the block's first kStepThreads, or the streamed kernel's
// producer warp).
__device__ __forceinline__ void load_desc(const StepPhase* __restrict__ prog, int i, int n, StepPhase* dst,
                                          int t = threadIdx.x, int threads = kStepThreads) {
    if (i >= n) return;
    constexpr int kWords = int(sizeof(StepPhase) / 16);
    const int4* src = reinterpret_cast<const int4*>(prog + i);
    for (int w = t; w < kWords; w += threads) reinterpret_cast<int4*>(dst)[w] = __ldg(src + w);
}

// Starts the copy of this block's share of a matvec phase's weights into `stage` (staged
// phases), or asks L2 for the first lines of its rows (the others). One commit group either way.
__device__ __forceinline__ void prefetch_phase(const StepPhase& ph, uint8_t* stage) {
    if (ph.kind == kMatvec) {
        const q8::Q8Params& p = ph.mv;
        const int g_begin = blockIdx.x * p.groups_per_block;
        const int g_end = min(g_begin + p.groups_per_block, p.n_groups);
        if (g_begin < g_end) {
            const uint8_t* src[kMaxMatvecJobs];
            int off[kMaxMatvecJobs];
            if (ph.staged) {
                if (ph.swiglu) q8::stage_rows<true, kStepThreads>(p, g_begin, g_end, stage, src, off, true);
                else q8::stage_rows<false, kStepThreads>(p, g_begin, g_end, stage, src, off, true);
            } else {
                // Rows from global memory: ask L2 for the first 32 KB of each job's rows.
                for (int j = 0; j < p.n_jobs; ++j) {
                    int n_lo = 0, n_hi = 0;
                    if (ph.swiglu) q8::job_rows<true>(p, j, g_begin, g_end, n_lo, n_hi);
                    else q8::job_rows<false>(p, j, g_begin, g_end, n_lo, n_hi);
                    const QMatrix& m = p.jobs[j].w;
                    const size_t bytes = min(size_t(n_hi - n_lo) * m.row_bytes, size_t(32) << 10);
                    const uint8_t* b = m.data + size_t(n_lo) * m.row_bytes;
                    for (size_t c = 128 * threadIdx.x; c < bytes; c += 128 * kStepThreads) prefetch_l2(b + c);
                }
            }
        }
    }
    cp_async_commit();
}

// Every weight type through one instantiation (group_pass's switch per row group): the types
// compiled apart (FIXED, as the ordinary kernels are) measured the same on the H100.
template <bool SWIGLU>
__device__ __forceinline__ void matvec_phase(const StepPhase& ph, uint8_t* stage, const int8_t* q, const float2* d,
                                             float (*red)[2], unsigned long long* first_pass_done) {
    const q8::Q8Params& p = ph.mv;
    const int g_begin = blockIdx.x * p.groups_per_block;
    const int g_end = min(g_begin + p.groups_per_block, p.n_groups);
    const uint8_t* src[kMaxMatvecJobs];
    int off[kMaxMatvecJobs];
    if (ph.staged) q8::stage_rows<SWIGLU, kStepThreads>(p, g_begin, g_end, stage, src, off, false);
    const int gib = int(threadIdx.x >> 5) / p.wpg, per_pass = kStepWarps / p.wpg;
    for (int g0 = g_begin; g0 < g_end; g0 += per_pass) {
        int j = 0, n0 = 0;
        const uint8_t* r0 = nullptr;
        const uint8_t* r1 = nullptr;
        const bool live = g0 + gib < g_end && q8::group_rows<SWIGLU>(p, g0 + gib, j, n0, r0, r1);
        if (ph.staged) {
            if (live) {
                const int j1 = SWIGLU ? 1 : j;  // SwiGLU: r1 is the up row
                r0 = stage + off[j] + (r0 - src[j]);
                r1 = stage + off[j1] + (r1 - src[j1]);
            }
            q8::group_pass<SWIGLU, TensorType::F32, false, true>(p, live, j, n0, r0, r1, q, d, red);
        } else {
            q8::group_pass<SWIGLU, TensorType::F32, false, false>(p, live, j, n0, r0, r1, q, d, red);
        }
#ifdef MN_CUDA_TRACE
        if (g0 == g_begin) *first_pass_done = trace_now();
#endif
    }
}

template <typename T>
__device__ __forceinline__ void attention_phase(const StepPhase& ph, float* work) {
    const attn::DecodeArgs& a = ph.at;
    const int items = a.n_splits * a.n_heads;
    for (int it = blockIdx.x; it < items; it += gridDim.x) {
        const int s = it % a.n_splits, h = it / a.n_splits;
        switch (ph.dpl) {
            case 1: attn::attn_decode_item<T, 1, kStepThreads, false>(a, s, h, work); break;
            case 2: attn::attn_decode_item<T, 2, kStepThreads, false>(a, s, h, work); break;
            case 4: attn::attn_decode_item<T, 4, kStepThreads, false>(a, s, h, work); break;
            default: attn::attn_decode_item<T, 8, kStepThreads, false>(a, s, h, work); break;
        }
        __syncthreads();  // the next item rewrites the shared memory
    }
}

// sync[0]: barrier arrivals, sync[1]: blocks done; both zero between launches (the last block
// out resets them: by then every block has passed every barrier).
// ATTN: the run has attention phases (compiled apart: the attention code's registers would
// otherwise spill in the matvec phases too).
template <bool ATTN>
__global__ void __launch_bounds__(kStepThreads, 1)
    decode_step_kernel(const StepPhase* __restrict__ prog, int n, unsigned int* sync, int stage_bytes,
                       TraceSink trace) {
    extern __shared__ int4 step_smem[];
    uint8_t* base = reinterpret_cast<uint8_t*>(step_smem);
    uint8_t* stages[2] = {base, base + stage_bytes};
    uint8_t* work = base + 2 * size_t(stage_bytes);
    __shared__ float red[kStepWarps][2];
    // Phase descriptors in shared memory (slots i % 3: the current one, the next, whose weights
    // are prefetched during the current one, and the one after, loaded before the barrier):
    // read from global memory, each field access of a pass would be an L2 round trip.
    __shared__ StepPhase desc[3];
    load_desc(prog, 0, n, &desc[0]);
    load_desc(prog, 1, n, &desc[1]);
    __syncthreads();
    prefetch_phase(desc[0], stages[0]);  // weights are constant: before the wait
    pdl_wait();
    for (int i = 0; i < n; ++i) {
        // Diagnostic builds: one record per block and phase (kind 4 + the phase kind, tag = i):
        // start, input quantized, weights staged, work done, barrier passed.
        MN_TRACE_BEGIN;
        const StepPhase& ph = desc[i % 3];
        if (ph.kind == kMatvec) {
            int8_t* q = reinterpret_cast<int8_t*>(work);
            float2* d = reinterpret_cast<float2*>(q + ph.mv.K);
            // The input first: the next phase's weight copies would queue ahead of its loads
            // (traced on the H100, 0.5B geometry: 2.7-3.8 us to quantize it with the copies
            // issued first, 1.0-1.6 us after).
            q8::quantize_row_to_shared<kStepThreads, true>(ph.mv.src, ph.mv.K, q, d);
            MN_TRACE(1);
            if (i + 1 < n) prefetch_phase(desc[(i + 1) % 3], stages[(i + 1) & 1]);
            else cp_async_commit();  // an empty group keeps the count: phase i's is the second newest
            cp_async_wait<1>();
            __syncthreads();
            MN_TRACE(2);
            unsigned long long* first_pass_done = nullptr;
#ifdef MN_CUDA_TRACE
            first_pass_done = &mn_ts.t[5];
#endif
            if (ph.swiglu) matvec_phase<true>(ph, stages[i & 1], q, d, red, first_pass_done);
            else matvec_phase<false>(ph, stages[i & 1], q, d, red, first_pass_done);
        } else {
            if (i + 1 < n) prefetch_phase(desc[(i + 1) % 3], stages[(i + 1) & 1]);
            else cp_async_commit();
            if constexpr (ATTN) {  // (kernels without ATTN get no attention phases)
                if (ph.f16) attention_phase<__half>(ph, reinterpret_cast<float*>(work));
                else attention_phase<float>(ph, reinterpret_cast<float*>(work));
            }
        }
        MN_TRACE(3);
        load_desc(prog, i + 2, n, &desc[(i + 2) % 3]);  // made visible by the barrier's __syncthreads
        if (i + 1 < n) grid_barrier(sync, unsigned(i + 1) * gridDim.x);
        MN_TRACE_END(trace, 4 + ph.kind, reinterpret_cast<const void*>(uintptr_t(i) << 8), 4);
    }
    cp_async_wait<0>();
    __syncthreads();
    if (threadIdx.x == 0 && atomicAdd(sync + 1, 1u) == gridDim.x - 1) {
        sync[0] = 0;
        sync[1] = 0;
        __threadfence();
    }
}

// ---- The streamed kernel (METALLIC_CUDA_STEP_STREAM=1; sm_90) ---------------------------------
// The same phases (matvecs only), but the block is warp-specialized: one producer warp copies
// the block's share of every phase's weight rows, phase after phase, into a ring of
// shared-memory slots by TMA bulk copies and never waits on the activations (weights are
// constant: it starts before the kernel's PDL wait and runs ahead through the grid barriers,
// as far as the ring reaches); the kStepWarps consumer warps quantize each phase's input,
// multiply the slots' row groups as they arrive and meet at the grid barriers. Why: with a
// launch (or a barrier) per product, DRAM idles at every boundary (bench/RESULTS.md, sessions
// 14-16); bench/micro/stream_phases.cu measured this structure at 2,200-2,600 GB/s for a 7B
// step's bytes against the engine's ~1,900.
//
// Status: correct (the decode-variants test: stream, stream2, stream4) and slower, so opt-in.
// H100, tg128 top_k=1 (METALLIC_CUDA_STEP=2 METALLIC_CUDA_STEP_STREAM=1
// METALLIC_CUDA_STEP_MAX_MB=100: the layers' products in one launch per layer, attention and
// the output head apart): 7B geometry 293 tok/s against 436 for the kernel chain, 0.5B 1,178
// against 1,858. The consumers are the bound, not DRAM: the real Q4_K/Q6_K dot products from
// shared memory, with the input's quantization and the per-group work, take ~57 M warp
// instructions a 7B layer (Nsight Compute) at ~1.7 issued a cycle per SM, so a layer's 149 MB
// take ~120-140 us against ~50 at the copy bandwidth; the 17 warps cap registers at 96 a
// thread, so more warps cannot come (bench/RESULTS.md, CUDA speed, session 17).
constexpr int kStreamThreads = kStepThreads + 32;  // the producer is the last warp
constexpr int kStreamBar = 1;                      // the consumers' named barrier
constexpr int kStreamSlots = 6;
// The quantized input row: K int8 and K / 32 float2, up to K = 19,660 (a 7B's 18,944-wide down
// projection).
constexpr int kStreamWorkBytes = 24 << 10;

// This block's row groups of a phase: an even split (blocks differ by at most one group).
__device__ __forceinline__ void block_groups(int n_groups, int& g_begin, int& g_end) {
    g_begin = int(int64_t(n_groups) * blockIdx.x / gridDim.x);
    g_end = int(int64_t(n_groups) * (blockIdx.x + 1) / gridDim.x);
}

// The consumers' part of a slot: teams of p.wpg warps, a row group each; group c0 + k goes to
// the team (c0 - g_begin + k) modulo the teams, so that consecutive groups go to consecutive
// teams across slots. Every warp makes the same number of group_pass calls (their block
// barriers, when wpg > 1). The slot holds the groups' rows as stage_rows lays them out.
template <bool SWIGLU>
__device__ __forceinline__ void stream_groups(const q8::Q8Params& p, int g_begin, int c0, int c1, const uint8_t* slot,
                                              const int8_t* q, const float2* d, float (*red)[2]) {
    const uint8_t* src[kMaxMatvecJobs];
    int off[kMaxMatvecJobs];
    q8::stage_rows<SWIGLU, 32>(p, c0, c1, nullptr, src, off, false);
    const int teams = kStepWarps / p.wpg, team = int(threadIdx.x >> 5) / p.wpg;
    const int first = ((team - (c0 - g_begin)) % teams + teams) % teams;
    const int passes = (c1 - c0 + teams - 1) / teams;
    for (int it = 0; it < passes; ++it) {
        const int g = c0 + first + it * teams;
        int j = 0, n0 = 0;
        const uint8_t* r0 = nullptr;
        const uint8_t* r1 = nullptr;
        const bool live = g < c1 && q8::group_rows<SWIGLU>(p, g, j, n0, r0, r1);
        const TensorType t = live ? p.jobs[j].w.type : TensorType::Q4_K;
        if (live) {
            const int j1 = SWIGLU ? 1 : j;  // SwiGLU: r1 is the up row
            r0 = slot + off[j] + (r0 - src[j]);
            r1 = slot + off[j1] + (r1 - src[j1]);
        }
        // Only the types takes_matvec admits: each is a copy of the dot product code.
        if (t == TensorType::Q4_K)
            q8::group_pass<SWIGLU, TensorType::Q4_K, false, true, kStreamBar, kStepThreads>(p, live, j, n0, r0, r1, q,
                                                                                           d, red);
        else if (t == TensorType::Q6_K)
            q8::group_pass<SWIGLU, TensorType::Q6_K, false, true, kStreamBar, kStepThreads>(p, live, j, n0, r0, r1, q,
                                                                                           d, red);
        else if (t == TensorType::Q5_0)
            q8::group_pass<SWIGLU, TensorType::Q5_0, false, true, kStreamBar, kStepThreads>(p, live, j, n0, r0, r1, q,
                                                                                           d, red);
        else
            q8::group_pass<SWIGLU, TensorType::Q8_0, false, true, kStreamBar, kStepThreads>(p, live, j, n0, r0, r1, q,
                                                                                           d, red);
    }
}

__global__ void __launch_bounds__(kStreamThreads, 1)
    decode_stream_kernel(const StepPhase* __restrict__ prog, int n, unsigned int* sync, int slot_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ int4 step_smem[];
    uint8_t* ring = reinterpret_cast<uint8_t*>(step_smem);
    int8_t* q = reinterpret_cast<int8_t*>(ring + size_t(kStreamSlots) * slot_bytes);
    __shared__ uint64_t full[kStreamSlots], empty[kStreamSlots];
    __shared__ StepPhase desc[3];  // the consumers' (as decode_step_kernel's)
    __shared__ StepPhase pdesc;    // the producer's current phase
    __shared__ float red[kStepWarps][2];
    const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStreamSlots; ++s) {
            mbar_init(full + s, 1);
            mbar_init(empty + s, kStepWarps);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();  // the only barrier of the whole block
    if (warp == kStepWarps) {
        // The producer: chunk k of the run goes to slot k % kStreamSlots once the consumers have
        // released that slot's previous chunk.
        uint32_t k = 0;
        for (int i = 0; i < n; ++i) {
            load_desc(prog, i, n, &pdesc, lane, 32);
            __syncwarp();
            if (pdesc.kind == kMatvec && lane == 0) {
                const q8::Q8Params& p = pdesc.mv;
                int g_begin, g_end;
                block_groups(p.n_groups, g_begin, g_end);
                for (int c0 = g_begin; c0 < g_end; c0 += pdesc.chunk, ++k) {
                    const int c1 = min(c0 + pdesc.chunk, g_end);
                    const int s = int(k % kStreamSlots);
                    if (k >= uint32_t(kStreamSlots)) mbar_wait(empty + s, (k / kStreamSlots - 1) & 1);
                    uint8_t* slot = ring + size_t(s) * slot_bytes;
                    const uint8_t* from[kMaxMatvecJobs];
                    int off[kMaxMatvecJobs], bytes[kMaxMatvecJobs];
                    if (pdesc.swiglu) q8::stage_rows<true, 32>(p, c0, c1, slot, from, off, false, bytes);
                    else q8::stage_rows<false, 32>(p, c0, c1, slot, from, off, false, bytes);
                    mbar_arrive_expect_tx(full + s, uint32_t(bytes[0] + bytes[1] + bytes[2]));
                    for (int j = 0; j < kMaxMatvecJobs; ++j)
                        if (bytes[j] > 0) bulk_copy(slot + off[j], from[j], uint32_t(bytes[j]), full + s);
                }
            }
            __syncwarp();  // pdesc is rewritten next
        }
        return;
    }
    load_desc(prog, 0, n, &desc[0]);
    load_desc(prog, 1, n, &desc[1]);
    block_bar<kStreamBar, kStepThreads>();
    pdl_wait();
    uint32_t k = 0;
    for (int i = 0; i < n; ++i) {
        const StepPhase& ph = desc[i % 3];
        const q8::Q8Params& p = ph.mv;
        float2* d = reinterpret_cast<float2*>(q + p.K);
        q8::quantize_row_to_shared<kStepThreads, true, q8::kNormAtRuntime, kStreamBar>(p.src, p.K, q, d);
        block_bar<kStreamBar, kStepThreads>();
        int g_begin, g_end;
        block_groups(p.n_groups, g_begin, g_end);
        for (int c0 = g_begin; c0 < g_end; c0 += ph.chunk, ++k) {
            const int c1 = min(c0 + ph.chunk, g_end);
            const int s = int(k % kStreamSlots);
            mbar_wait(full + s, (k / kStreamSlots) & 1);
            const uint8_t* slot = ring + size_t(s) * slot_bytes;
            if (ph.swiglu) stream_groups<true>(p, g_begin, c0, c1, slot, q, d, red);
            else stream_groups<false>(p, g_begin, c0, c1, slot, q, d, red);
            __syncwarp();
            if (lane == 0) mbar_arrive(empty + s);
        }
        load_desc(prog, i + 2, n, &desc[(i + 2) % 3]);  // made visible by the barrier
        if (i + 1 < n) grid_barrier<kStreamBar, kStepThreads>(sync, unsigned(i + 1) * gridDim.x);
    }
    block_bar<kStreamBar, kStepThreads>();
    if (threadIdx.x == 0 && atomicAdd(sync + 1, 1u) == gridDim.x - 1) {
        sync[0] = 0;
        sync[1] = 0;
        __threadfence();
    }
#else
    (void)prog, (void)n, (void)sync, (void)slot_bytes;
#endif
}

// Field-by-field copies into zeroed memory: a phase table is found again by its bytes, so its
// padding must be zero (aggregate initialization and struct copies leave padding undefined).
void put(QMatrix& d, const QMatrix& s) {
    d.data = s.data;
    d.type = s.type;
    d.K = s.K;
    d.N = s.N;
    d.row_bytes = s.row_bytes;
}
void put(MatvecJob& d, const MatvecJob& s) {
    put(d.w, s.w);
    d.bias = s.bias;
    d.out = s.out;
    d.residual = s.residual;
}
void put(Q8Source& d, const Q8Source& s) {
    d.x = s.x;
    d.norm_weight = s.norm_weight;
    d.eps = s.eps;
    d.norm_out = s.norm_out;
    d.pre.qs = s.pre.qs;
    d.pre.ds = s.pre.ds;
}
void put(q8::Q8Params& d, const q8::Q8Params& s) {
    for (int j = 0; j < kMaxMatvecJobs; ++j) {
        put(d.jobs[j], s.jobs[j]);
        d.group_end[j] = s.group_end[j];
    }
    d.n_jobs = s.n_jobs;
    d.n_groups = s.n_groups;
    d.K = s.K;
    d.wpg = s.wpg;
    d.lpg = s.lpg;
    d.groups_per_block = s.groups_per_block;
    d.stage_bytes = s.stage_bytes;
    put(d.src, s.src);
    d.swiglu_out = s.swiglu_out;  // trace (diagnostic builds): left zero, not traced
}
void put(attn::DecodeArgs& d, const attn::DecodeArgs& s) {
    d.q = s.q;
    d.k = s.k;
    d.v = s.v;
    d.kc = s.kc;
    d.vc = s.vc;
    d.n_ctx = s.n_ctx;
    d.pos0 = s.pos0;
    d.n_heads = s.n_heads;
    d.n_kv_heads = s.n_kv_heads;
    d.hd = s.hd;
    d.single = s.single;
    d.n_splits = s.n_splits;
    d.keys_cap = s.keys_cap;
    d.freq = s.freq;
    d.neox = s.neox;
    d.part = s.part;
    d.counters = s.counters;
    d.out = s.out;  // trace: left zero
}

}  // namespace

struct DecodeStep::Program {
    uint64_t hash = 0;
    std::vector<uint8_t> bytes;
    StepPhase* device = nullptr;
};

DecodeStep::DecodeStep(int device, size_t max_phase_bytes, bool stream, int blocks, int slot_bytes, int wpg)
    : stream_(stream), max_phase_bytes_(max_phase_bytes) {
    MN_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device));
    int optin = 0;
    MN_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (stream) {
        int major = 0;
        MN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
        cudaFuncAttributes fa{};
        MN_CUDA_CHECK(cudaFuncGetAttributes(&fa, decode_stream_kernel));
        // The ring: what the opt-in leaves beside the static arrays and the input row, in slots
        // of a multiple of 16 bytes.
        const int dyn = optin - int(fa.sharedSizeBytes) - 1024 - kStreamWorkBytes;
        stage_bytes_ = (dyn / kStreamSlots) & ~15;
        if (slot_bytes > 0) stage_bytes_ = std::min(stage_bytes_, (slot_bytes + 15) & ~15);
        if (major < 9 || stage_bytes_ < (1 << 10)) {
            sms_ = 0;
            return;
        }
        smem_bytes_ = size_t(kStreamSlots) * stage_bytes_ + kStreamWorkBytes;
        MN_CUDA_CHECK(cudaFuncSetAttribute(decode_stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           int(smem_bytes_)));
        int k = 0;
        MN_CUDA_CHECK(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&k, decode_stream_kernel, kStreamThreads, smem_bytes_));
        if (k < 1) {
            sms_ = 0;
            return;
        }
        if (blocks > 0) sms_ = std::min(sms_, blocks);
        if (wpg >= 1 && wpg <= kStepWarps && (wpg & (wpg - 1)) == 0) stream_wpg_ = wpg;
        MN_CUDA_CHECK(cudaMalloc(&sync_, 2 * sizeof(unsigned int)));
        MN_CUDA_CHECK(cudaMemset(sync_, 0, 2 * sizeof(unsigned int)));
        return;
    }
    cudaFuncAttributes fa{}, fb{};
    MN_CUDA_CHECK(cudaFuncGetAttributes(&fa, decode_step_kernel<true>));
    MN_CUDA_CHECK(cudaFuncGetAttributes(&fb, decode_step_kernel<false>));
    // Dynamic shared memory: what the opt-in leaves beside the kernel's static arrays, less a
    // margin, as two stage buffers and the work area.
    const int dyn = optin - int(std::max(fa.sharedSizeBytes, fb.sharedSizeBytes)) - 1024;
    stage_bytes_ = ((dyn - kWorkBytes) / 2) & ~15;
    if (stage_bytes_ < (16 << 10)) {
        sms_ = 0;  // too little shared memory: never used
        return;
    }
    smem_bytes_ = 2 * size_t(stage_bytes_) + kWorkBytes;
    int per_sm = 1;
    for (auto kernel : {decode_step_kernel<true>, decode_step_kernel<false>}) {
        MN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes_)));
        int k = 0;
        MN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&k, kernel, kStepThreads, smem_bytes_));
        per_sm = std::min(per_sm, k);
    }
    if (per_sm < 1) {
        sms_ = 0;
        return;
    }
    sync_ = nullptr;
    MN_CUDA_CHECK(cudaMalloc(&sync_, 2 * sizeof(unsigned int)));
    MN_CUDA_CHECK(cudaMemset(sync_, 0, 2 * sizeof(unsigned int)));
}

DecodeStep::~DecodeStep() {
    for (Program& p : programs_)
        if (p.device) cudaFree(p.device);
    if (sync_) cudaFree(sync_);
}

bool DecodeStep::takes_matvec(const MatvecJob* jobs, int n_jobs, int K, const Q8Source& src) const {
    if (sms_ <= 0 || !src.x || K % 32 != 0 || K > kQ8MaxK) return false;
    // The quantized input row in the work area.
    const size_t work = stream_ ? kStreamWorkBytes : kWorkBytes;
    if (size_t(K) + size_t(K / 32) * sizeof(float2) > work) return false;
    if (!aligned16(src.x) || !aligned16(src.norm_weight) || !aligned16(src.norm_out)) return false;
    for (int j = 0; j < n_jobs; ++j) {
        const TensorType t = jobs[j].w.type;
        // The streamed kernel: only the types stream_groups compiles.
        const bool type_ok = stream_ ? t == TensorType::Q4_K || t == TensorType::Q6_K || t == TensorType::Q5_0 ||
                                           t == TensorType::Q8_0
                                     : matvec_q8_supported(t);
        if (!type_ok || jobs[j].w.K != K) return false;
    }
    // The streamed kernel: a row group in a ring slot (a SwiGLU group, a row of gate and one of
    // up, is no larger than the two rows counted here).
    if (stream_ && q8::staged_bytes(q8::group_shape(jobs, n_jobs, false), 1, n_jobs) > size_t(stage_bytes_))
        return false;
    return matvec_weight_bytes(jobs, n_jobs) <= max_phase_bytes_;
}

bool DecodeStep::takes_attention(const AttentionArgs& a) const {
    if (sms_ <= 0 || stream_ || !a.counters || a.kv_stored ||
        !attention_decode_fused(a.rows, a.head_dim, a.thread_per_key))
        return false;
    try {
        const attn::DecodeArgs d = attn::make_decode_args(a, kStepThreads);
        return sizeof(float) * size_t(attn::decode_smem_floats(kStepThreads, a.head_dim, d.keys_cap)) <=
               size_t(kWorkBytes);
    } catch (const Error&) {
        return false;
    }
}

void DecodeStep::add_matvec(const MatvecJob* jobs, int n_jobs, int K, const Q8Source& src, float* swiglu_out) {
    Record r;
    r.kind = kMatvec;
    for (int j = 0; j < n_jobs; ++j) r.jobs[j] = jobs[j];
    r.n_jobs = n_jobs;
    r.K = K;
    r.src = src;
    r.swiglu_out = swiglu_out;
    records_.push_back(r);
}

void DecodeStep::add_attention(const AttentionArgs& a) {
    Record r;
    r.kind = kAttention;
    r.attention = a;
    records_.push_back(r);
}

bool DecodeStep::launch(cudaStream_t stream, bool may_upload, bool pdl, const TraceSink* trace) {
    if (records_.empty()) return true;
    std::vector<StepPhase> phases(records_.size());
    std::memset(phases.data(), 0, phases.size() * sizeof(StepPhase));  // padding too: the bytes are hashed
    for (size_t i = 0; i < records_.size(); ++i) {
        const Record& r = records_[i];
        StepPhase& ph = phases[i];
        ph.kind = r.kind;
        if (r.kind == kMatvec) {
            put(ph.mv, q8::make_params(r.jobs, r.n_jobs, r.K, r.src, r.swiglu_out));
            ph.swiglu = r.swiglu_out != nullptr;
            q8::Q8Params& p = ph.mv;
            p.groups_per_block = (p.n_groups + sms_ - 1) / sms_;
            const q8::GroupShape shape = q8::group_shape(r.jobs, r.n_jobs, ph.swiglu);
            if (stream_) {
                // A warp per row group: on the H100 the 7B geometry decoded at 293 tok/s so,
                // 250 with a lane per unit of the row (2 warps for 3584-wide rows, 16 for
                // 18944-wide ones: the block barriers of the reduction). As many groups per slot
                // as fit (takes_matvec checked that one does).
                p.wpg = stream_wpg_;
                p.lpg = 32;
                int chunk = 1;
                while (chunk < p.n_groups && q8::staged_bytes(shape, chunk + 1, r.n_jobs) <= size_t(stage_bytes_))
                    ++chunk;
                ph.chunk = chunk;
                continue;
            }
            ph.staged = q8::staged_bytes(shape, p.groups_per_block, r.n_jobs) <= size_t(stage_bytes_);
            p.wpg = q8::warps_per_group(r.K / shape.unit_elems, p.groups_per_block, kStepWarps);
        } else {
            put(ph.at, attn::make_decode_args(r.attention, kStepThreads));
            ph.f16 = r.attention.f16_cache;
            ph.dpl = attn::with_dpl(r.attention.head_dim, [](auto dpl) { return decltype(dpl)::value; });
        }
    }
    const size_t nbytes = phases.size() * sizeof(StepPhase);
    const uint64_t h = fnv1a(phases.data(), nbytes);
    Program* prog = nullptr;
    for (Program& p : programs_)
        if (p.hash == h && p.bytes.size() == nbytes && std::memcmp(p.bytes.data(), phases.data(), nbytes) == 0) prog = &p;
    if (!prog) {
        if (!may_upload) return false;
        if (programs_.size() >= kMaxPrograms) {
            // The oldest may still be read by a launch in flight.
            MN_CUDA_CHECK(cudaStreamSynchronize(stream));
            cudaFree(programs_.front().device);
            programs_.erase(programs_.begin());
        }
        Program p;
        p.hash = h;
        p.bytes.assign(reinterpret_cast<const uint8_t*>(phases.data()),
                       reinterpret_cast<const uint8_t*>(phases.data()) + nbytes);
        MN_CUDA_CHECK(cudaMalloc(&p.device, nbytes));
        programs_.push_back(std::move(p));
        prog = &programs_.back();
        MN_CUDA_CHECK(cudaMemcpy(prog->device, phases.data(), nbytes, cudaMemcpyHostToDevice));
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(sms_);
    cfg.blockDim = dim3(stream_ ? kStreamThreads : kStepThreads);
    cfg.dynamicSmemBytes = smem_bytes_;
    cfg.stream = stream;
    // Cooperative: the launch fails rather than hangs if the grid cannot be resident at once.
    cudaLaunchAttribute attr[2];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 2 : 1;
    const StepPhase* dprog = prog->device;
    const int n = int(phases.size());
    bool attention = false;
    for (const Record& r : records_) attention |= r.kind == kAttention;
    TraceSink sink;
#ifdef MN_CUDA_TRACE
    if (trace) sink = *trace;
#else
    (void)trace;
#endif
    if (stream_)
        MN_CUDA_CHECK(cudaLaunchKernelEx(&cfg, decode_stream_kernel, dprog, n, sync_, stage_bytes_));
    else
        MN_CUDA_CHECK(cudaLaunchKernelEx(&cfg, attention ? decode_step_kernel<true> : decode_step_kernel<false>, dprog,
                                         n, sync_, stage_bytes_, sink));
    records_.clear();
    return true;
}

}  // namespace mn::cuda
