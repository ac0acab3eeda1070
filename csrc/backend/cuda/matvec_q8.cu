// Single-row decode matvecs as integer dot products.
//
// Decode reads every weight once; the float path (matvec.cu) spends ~15
// instructions per weight unpacking blocks into floats, which leaves DRAM
// mostly idle. Here the input row is quantized to 8-bit blocks of 32 values
// with a float scale d and the block's sum d * sum(q); the weights are then
// read in their GGUF blocks and multiplied 4 bytes at a time with __dp4a, the
// block scales applied once per 32 (16 for Q6_K) products. The block sum
// takes care of the formats' offsets and mins (Q4_0's -8, Q4_K's -dmin * m).
//
// Where the input is quantized: every block of the matvec quantizes the float
// row itself (with the fused rms_norm) into its shared memory before its dot
// products. A decode step of a small model is a chain of ~5-10 us kernels
// whose cost is latency, not bytes: a separate quantize launch per product
// (49-85 per token) cost more than every block re-reading a row of a few KB
// from L2. Rows wider than kQ8FusedMaxK (a 7B model's down projection) are
// quantized once by launch_quantize_q8 instead, and each block copies the
// 8-bit row into shared memory (4x fewer bytes than the floats).
//
// Work split: a warp (or 2-4 warps for long rows) computes two outputs, its
// lanes walking the row in units of one weight block (32 elements) or, for the
// K-quants, two 32-element sub-blocks that share bytes. Both rows' loads of a
// unit are issued before either is used; the input unit is loaded once for both.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/matvec_q8.cuh"

namespace mn::cuda {

using namespace q8;

namespace {

constexpr int kQuantThreads = 256;
constexpr int kQ8Warps = 4;  // warps per block of the matvec

__device__ __forceinline__ float warp_max_f(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// x (optionally rms-normalized and scaled by nw) -> int8 blocks of 32 with (d, d * sum q).
// Every load a thread makes is issued before any is used: its value, its norm weight (constant:
// before the wait) and, for the sum of squares, its slice of the row as up to kQuantVecs float4s
// per round trip (VEC: x is 16-byte aligned; else one float at a time). The loop this replaces
// waited on its loads a few at a time and then loaded the value after the block's reduction:
// several round trips to L2 on the chain of every product that quantizes apart (the 7B's, four
// a layer).
constexpr int kQuantVecs = 8;  // rows up to 4 * kQuantThreads * kQuantVecs = 8192 wide: one round trip
template <bool VEC>
__global__ void __launch_bounds__(kQuantThreads) quantize_q8_kernel(const float* __restrict__ x, int K,
                                                                    const float* __restrict__ nw, float eps,
                                                                    float* __restrict__ norm_out,
                                                                    int8_t* __restrict__ qs, float2* __restrict__ ds) {
    pdl_launch_dependents();
    const int lane = threadIdx.x & 31;
    const int i = blockIdx.x * kQuantThreads + threadIdx.x;
    const bool mine = i < K;  // K is a multiple of 32: whole warps
    const float w = nw && mine ? __ldg(nw + i) : 1.0f;
    pdl_wait();  // launched as a programmatic dependent: x comes from the kernel before
    float v = mine ? x[i] : 0.0f;
    float inv = 1.0f;
    if (nw) {
        // Every block sums the squares of the whole row (a few KB from L2) instead of a second launch.
        double ss = 0.0;
        if constexpr (VEC) {
            for (int base = 0; base < K; base += 4 * kQuantThreads * kQuantVecs) {
                float4 c[kQuantVecs];
#pragma unroll
                for (int u = 0; u < kQuantVecs; ++u) {
                    const int k = base + 4 * (int(threadIdx.x) + u * kQuantThreads);
                    if (k < K) c[u] = *reinterpret_cast<const float4*>(x + k);
                }
#pragma unroll
                for (int u = 0; u < kQuantVecs; ++u)
                    if (base + 4 * (int(threadIdx.x) + u * kQuantThreads) < K)
                        ss += sum_sq(c[u]);
            }
        } else {
            for (int k = threadIdx.x; k < K; k += kQuantThreads) ss += double(x[k]) * x[k];
        }
        inv = block_inv_rms<kQuantThreads>(ss, K, eps);
    }
    if (!mine) return;  // whole warps leave
    if (nw) {
        v = v * inv * w;
        if (norm_out) norm_out[i] = v;
    }
    const float amax = warp_max_f(fabsf(v));
    const float d = amax / 127.0f;
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const int q = __float2int_rn(v * id);
    const int s = __reduce_add_sync(0xffffffffu, q);
    qs[i] = int8_t(q);
    if (lane == 0) ds[i >> 5] = make_float2(d, d * float(s));
}

// FIXED: the one weight type of every job, compiled alone (fewer registers: more warps
// resident); TensorType::F32 means "any": a switch over the jobs' types (q, k, v of two types).
// PRE: the input was quantized by launch_quantize_q8 (else each block quantizes it itself).
// The grid may be smaller than the row groups (it is capped so that the per-block input
// quantization is not repeated thousands of times): blocks then walk the groups in strides.
//
// Programmatic dependent launch (Hopper): the launch may begin while the previous kernel is
// still running. Before griddepcontrol.wait a block touches nothing that kernel writes: it
// lets the next kernel launch, and asks L2 for the first bytes of its own weight rows (the
// weights are constant), so a chain of small matvecs overlaps its launches and first DRAM trips.
template <bool SWIGLU, TensorType FIXED, bool PRE, int WARPS = kQ8Warps>
__global__ void __launch_bounds__(WARPS * 32) matvec_q8_kernel(const Q8Params p) {
    const int wi = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wpg = p.wpg;
    const int gib = wi / wpg, sub = wi - gib * wpg;
    const int per_block = WARPS / wpg;
    MN_TRACE_BEGIN;
    pdl_launch_dependents();
    {
        // The first group's two rows: 128-byte lines lane, lane + 32 of each (up to 8 KB).
        int j, n0;
        const uint8_t *r0, *r1;
        if (sub == 0 && group_rows<SWIGLU>(p, blockIdx.x * per_block + gib, j, n0, r0, r1)) {
            const int row_bytes = int(p.jobs[j].w.row_bytes);
            for (int off = 128 * lane; off < row_bytes && off < 8192; off += 128 * 32) {
                prefetch_l2(r0 + off);
                prefetch_l2(r1 + off);
            }
        }
    }
    pdl_wait();
    MN_TRACE(1);
    extern __shared__ int4 q8_smem[];
    const int8_t* sq;
    const float2* sd;
    if constexpr (PRE) {
        sq = p.src.pre.qs;
        sd = p.src.pre.ds;
    } else {
        int8_t* q = reinterpret_cast<int8_t*>(q8_smem);
        float2* d = reinterpret_cast<float2*>(q + p.K);
        quantize_row_to_shared<WARPS * 32>(p.src, p.K, q, d);
        __syncthreads();
        sq = q;
        sd = d;
    }
    __shared__ float red[WARPS][2];
    for (int g0 = blockIdx.x; g0 * per_block < p.n_groups; g0 += gridDim.x) {
        int j = 0, n0 = 0;
        const uint8_t* r0 = nullptr;
        const uint8_t* r1 = nullptr;
        const bool live = group_rows<SWIGLU>(p, g0 * per_block + gib, j, n0, r0, r1);
        group_pass<SWIGLU, FIXED, PRE, false>(p, live, j, n0, r0, r1, sq, sd, red);
    }
    MN_TRACE_END(p.trace, 2, p.jobs[0].w.data, 4);
}

// ---- staged: the block's weights copied to shared memory before the wait ----------------------
//
// A decode step of a small model is a chain of matvecs of 0.5-6 MB each whose time is latency:
// each kernel waited for its predecessor, then fetched its weights from DRAM, then reduced. The
// weights are constant, so they need not wait: here a block takes a contiguous run of row
// groups (about one share per SM), and before griddepcontrol.wait copies all of its weight
// bytes into shared memory with cp.async. With programmatic dependent launch the kernel is
// resident while its predecessor runs (its blocks are few and fit beside it), so when the wait
// returns the weights are already on chip and what is left is the input row (from L2), the dot
// products and the sums. Taken when a block's share fits kStagedMaxSmem at 1-4 blocks per SM
// and the product is at most kStagedMaxWeightBytes.
constexpr int kStagedWarps = 8;
constexpr int kStagedThreads = kStagedWarps * 32;
// Under the 48 KB of dynamic shared memory that needs no opt-in, and small enough that two
// kernels' blocks share an SM (one waiting, one computing).
constexpr size_t kStagedMaxSmem = size_t(46) << 10;
// Products up to this size only (the 0.5B's, all of them; a 7B's k and v). Measured on the H100
// (tg128 top_k=1, same machine): 0.5B geometry 1,291-1,317 tok/s staged vs 1,205 without; 7B
// geometry 409 with the bound vs 368 with its 7.2 MB q and o staged too (256 blocks of 33 KB
// sitting beside the large products' thousands of blocks slowed those).
constexpr size_t kStagedMaxWeightBytes = size_t(13) << 19;  // 6.5 MiB

// NORM: the input row's case (RowNorm, matvec_q8.cuh), one instantiation each.
template <bool SWIGLU, TensorType FIXED, RowNorm NORM>
__global__ void __launch_bounds__(kStagedThreads) matvec_q8_staged_kernel(const Q8Params p) {
    MN_TRACE_BEGIN;
    pdl_launch_dependents();
    extern __shared__ int4 q8_smem[];
    uint8_t* stage = reinterpret_cast<uint8_t*>(q8_smem);
    const int g_begin = blockIdx.x * p.groups_per_block;
    const int g_end = min(g_begin + p.groups_per_block, p.n_groups);
    const uint8_t* src[kMaxMatvecJobs];
    int off[kMaxMatvecJobs];
    stage_rows<SWIGLU, kStagedThreads>(p, g_begin, g_end, stage, src, off, true);
    cp_async_commit();
    NormAhead na;
    if constexpr (NORM != kNormNone) load_norm_ahead(p.src, p.K, na);
    pdl_wait();
    MN_TRACE(1);
    int8_t* q = reinterpret_cast<int8_t*>(stage + p.stage_bytes);
    float2* d = reinterpret_cast<float2*>(q + p.K);
    quantize_row_to_shared<kStagedThreads, false, NORM>(p.src, p.K, q, d, &na);
    MN_TRACE(2);
    cp_async_wait_all();
    __syncthreads();
    MN_TRACE(3);
    __shared__ float red[kStagedWarps][2];
    // This lane's group in a pass (lanes of one group: a warp or more, or p.lpg of a warp).
    const int gpw = 32 / p.lpg;
    const int gib = int(threadIdx.x >> 5) / p.wpg * gpw + int(threadIdx.x & 31) / p.lpg;
    const int per_pass = kStagedWarps / p.wpg * gpw;
    for (int g0 = g_begin; g0 < g_end; g0 += per_pass) {
        int j = 0, n0 = 0;
        const uint8_t* r0 = nullptr;
        const uint8_t* r1 = nullptr;
        const bool live = g0 + gib < g_end && group_rows<SWIGLU>(p, g0 + gib, j, n0, r0, r1);
        if (live) {
            const int j1 = SWIGLU ? 1 : j;  // SwiGLU: r1 is the up row
            r0 = stage + off[j] + (r0 - src[j]);
            r1 = stage + off[j1] + (r1 - src[j1]);
        }
        group_pass<SWIGLU, FIXED, false, true>(p, live, j, n0, r0, r1, q, d, red);
    }
    MN_TRACE_END(p.trace, 1, p.jobs[0].w.data, 4);
}

}  // namespace

bool matvec_q8_supported(TensorType t) {
    switch (t) {
        case TensorType::Q4_0:
        case TensorType::Q4_1:
        case TensorType::Q5_0:
        case TensorType::Q5_1:
        case TensorType::Q8_0:
        case TensorType::Q4_K:
        case TensorType::Q5_K:
        case TensorType::Q6_K:
            return true;
        default:
            return false;
    }
}

void launch_quantize_q8(const float* x, int K, const float* norm_weight, float eps, float* norm_out, Q8Input q8,
                        bool pdl, cudaStream_t stream) {
    if (K < 32 || K % 32 != 0) throw Error("cuda quantize_q8: K must be a positive multiple of 32, got " + std::to_string(K));
    launch_kernel(pdl, aligned16(x) ? quantize_q8_kernel<true> : quantize_q8_kernel<false>,
                  dim3((K + kQuantThreads - 1) / kQuantThreads), dim3(kQuantThreads), 0, stream, x, K, norm_weight, eps,
                  norm_out, q8.qs, q8.ds);
    MN_CUDA_CHECK_LAUNCH("quantize_q8_kernel");
}

namespace {

// Calls f(tag) with tag::value the kernels' FIXED type for a product whose jobs all have type t
// (TensorType::F32, the per-job switch, where they differ: `mixed`).
template <typename F>
void with_fixed_type(TensorType t, bool mixed, F&& f) {
    switch (mixed ? TensorType::F32 : t) {
        case TensorType::Q4_0: f(std::integral_constant<TensorType, TensorType::Q4_0>{}); break;
        case TensorType::Q4_1: f(std::integral_constant<TensorType, TensorType::Q4_1>{}); break;
        case TensorType::Q5_0: f(std::integral_constant<TensorType, TensorType::Q5_0>{}); break;
        case TensorType::Q5_1: f(std::integral_constant<TensorType, TensorType::Q5_1>{}); break;
        case TensorType::Q8_0: f(std::integral_constant<TensorType, TensorType::Q8_0>{}); break;
        case TensorType::Q4_K: f(std::integral_constant<TensorType, TensorType::Q4_K>{}); break;
        case TensorType::Q5_K: f(std::integral_constant<TensorType, TensorType::Q5_K>{}); break;
        case TensorType::Q6_K: f(std::integral_constant<TensorType, TensorType::Q6_K>{}); break;
        default: f(std::integral_constant<TensorType, TensorType::F32>{}); break;
    }
}

using StagedKernel = void (*)(const Q8Params);

template <bool SWIGLU, TensorType T>
StagedKernel staged_for_norm(RowNorm norm) {
    switch (norm) {
        case kNormNone: return matvec_q8_staged_kernel<SWIGLU, T, kNormNone>;
        case kNormOnePass: return matvec_q8_staged_kernel<SWIGLU, T, kNormOnePass>;
        default: return matvec_q8_staged_kernel<SWIGLU, T, kNormPasses>;
    }
}

// The staged kernel for a product: SwiGLU or not, its jobs' one type t (or, `mixed`, several:
// the per-job switch) and the case of its input row.
StagedKernel staged_kernel(bool swiglu, TensorType t, bool mixed, RowNorm norm) {
    StagedKernel k = nullptr;
    with_fixed_type(t, mixed, [&](auto tag) {
        constexpr TensorType T = decltype(tag)::value;
        k = swiglu ? staged_for_norm<true, T>(norm) : staged_for_norm<false, T>(norm);
    });
    return k;
}

bool mixed_types(const MatvecJob* jobs, int n_jobs) {
    for (int j = 1; j < n_jobs; ++j)
        if (jobs[j].w.type != jobs[0].w.type) return true;
    return false;
}

// Warps per row group (and per block) for rows that would take 4 warps, quantized apart: as many
// as make every lane's units one or two memory round trips (a lane walks its units one at a time,
// and with 4 warps a 7B down-projection row of 296 units took 3, the last for 40 lanes of 128).
// H100, bench/micro/matvec_q8_bandwidth.cu, 7B down projection (K 18944): Q4_K 18.1 us with 4
// warps, 16.7 with 10 (one unit a lane: 96% of a plain read); Q6_K 24.8 with 4, 24.0 with 5 (two
// units a lane; 10 warps, 27.7 us, leave 2 blocks an SM at its 80 registers).
int wide_row_warps(TensorType t, int K) {
    const int units = K / unit_elems(t);
    if (t == TensorType::Q4_K && units <= 10 * 32) return 10;
    if (t == TensorType::Q6_K && units <= 5 * 32 * 2) return 5;
    return 4;
}

struct StagedPlan {
    int blocks = 0;  // 0: the staged kernel does not take this product
    int groups_per_block = 0;
    int stage_bytes = 0;
    int wpg = 1;
    int lpg = 32;
    size_t smem = 0;
};

// The staged kernel's grid on `sms` SMs: the fewest blocks (1 to 4 per SM) whose share of the
// weights and the quantized input fit kStagedMaxSmem. lanes > 0: the lanes per group where a warp
// covers a row (else lanes_per_group's choice).
StagedPlan staged_plan(const MatvecJob* jobs, int n_jobs, int K, bool swiglu, int sms, int lanes) {
    StagedPlan plan;
    if (sms <= 0 || n_jobs < 1 || n_jobs > kMaxMatvecJobs) return plan;
    const GroupShape shape = group_shape(jobs, n_jobs, swiglu);
    const int groups = shape.groups;
    if (groups < 1 || shape.weight_bytes > kStagedMaxWeightBytes) return plan;
    const size_t in_bytes = size_t(K) + size_t(K / 32) * sizeof(float2);
    for (int per_sm = 1; per_sm <= 4; ++per_sm) {
        const int gpb = (groups + sms * per_sm - 1) / (sms * per_sm);
        const size_t stage = staged_bytes(shape, gpb, n_jobs);
        if (stage + in_bytes > kStagedMaxSmem) continue;
        plan.groups_per_block = gpb;
        plan.blocks = (groups + gpb - 1) / gpb;
        plan.stage_bytes = int(stage);
        plan.smem = stage + in_bytes;
        plan.wpg = warps_per_group(K / shape.unit_elems, gpb, kStagedWarps);
        if (plan.wpg == 1) plan.lpg = lanes > 0 ? lanes : lanes_per_group(K / shape.unit_elems, gpb, kStagedWarps);
        return plan;
    }
    return plan;
}

}  // namespace

void prepare_matvec_q8() {
    // The staged kernels ask for the largest L1 (the smallest shared-memory carveout that still
    // holds their blocks). Measured on the H100 (0.5B geometry, tg128 top_k=1): 1,317 tok/s
    // against 1,029 with the driver's default carveout and 1,014 with the largest shared
    // carveout for every decode kernel, while each kernel alone ran as fast in all three: with
    // the default, the dependent launches' overlap was lost.
    const TensorType types[] = {TensorType::Q4_0, TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1, TensorType::Q8_0,
                                TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K, TensorType::F32};
    const int carveout = int(cudaSharedmemCarveoutMaxL1);
    for (TensorType t : types)
        for (RowNorm n : {kNormNone, kNormOnePass, kNormPasses})
            for (bool swiglu : {false, true})
                MN_CUDA_CHECK(cudaFuncSetAttribute(staged_kernel(swiglu, t, false, n),
                                                   cudaFuncAttributePreferredSharedMemoryCarveout, carveout));
}

size_t matvec_weight_bytes(const MatvecJob* jobs, int n_jobs) {
    size_t bytes = 0;
    for (int j = 0; j < n_jobs; ++j) bytes += jobs[j].w.row_bytes * size_t(jobs[j].w.N);
    return bytes;
}

bool matvec_q8_staged(const MatvecJob* jobs, int n_jobs, int K, bool swiglu, int sms) {
    return staged_plan(jobs, n_jobs, K, swiglu, sms, 0).blocks > 0;
}

namespace q8 {

Q8Params make_params(const MatvecJob* jobs, int n_jobs, int K, const Q8Source& src, float* swiglu_out) {
    if (n_jobs < 1 || n_jobs > kMaxMatvecJobs) throw Error("cuda matvec_q8: bad job count " + std::to_string(n_jobs));
    if (K < 32 || K % 32 != 0 || K > kQ8MaxK)
        throw Error("cuda matvec_q8: K must be a multiple of 32 up to " + std::to_string(kQ8MaxK) + ", got " +
                    std::to_string(K));
    Q8Params p{};
    int groups = 0;
    for (int j = 0; j < n_jobs; ++j) {
        if (!matvec_q8_supported(jobs[j].w.type) || jobs[j].w.K != K)
            throw Error("cuda matvec_q8: job " + std::to_string(j) + " has an unsupported type or width");
        p.jobs[j] = jobs[j];
        groups += swiglu_out ? (j == 0 ? jobs[j].w.N : 0) : (jobs[j].w.N + 1) / 2;
        p.group_end[j] = groups;
    }
    if (swiglu_out && (n_jobs != 2 || jobs[0].w.N != jobs[1].w.N || jobs[0].w.type != jobs[1].w.type))
        throw Error("cuda matvec_q8: fused SwiGLU needs two products of one height and type");
    p.n_jobs = n_jobs;
    p.n_groups = groups;
    p.lpg = 32;
    p.K = K;
    p.src = src;
    p.swiglu_out = swiglu_out;
    return p;
}

GroupShape group_shape(const MatvecJob* jobs, int n_jobs, bool swiglu) {
    GroupShape s;
    for (int j = 0; j < n_jobs; ++j) {
        s.groups += swiglu ? (j == 0 ? jobs[j].w.N : 0) : (jobs[j].w.N + 1) / 2;
        s.group_bytes = swiglu ? jobs[0].w.row_bytes + jobs[n_jobs - 1].w.row_bytes
                               : std::max(s.group_bytes, 2 * jobs[j].w.row_bytes);
        s.unit_elems = std::min(s.unit_elems, unit_elems(jobs[j].w.type));
    }
    s.weight_bytes = matvec_weight_bytes(jobs, n_jobs);
    return s;
}

size_t staged_bytes(const GroupShape& shape, int groups_per_block, int n_jobs) {
    return (size_t(groups_per_block) * shape.group_bytes + 48 * size_t(n_jobs) + 15) & ~size_t(15);
}

int lanes_per_group(int units, int groups_per_block, int warps) {
    // A relative cost of a block's dot phase: its passes over the groups, each the lanes' units
    // (both rows) in turn, the reduction's levels and a fixed part (finding the group's rows, the
    // shuffles' latency, the store), which dominates when a lane has one unit. Measured on the
    // H100 (0.5B geometry, tg128 top_k=1, one lease; its gate/up blocks hold 37 groups of 28
    // units): 4 lanes per group (the model's choice) 1,654 tok/s, 8: 1,555, 16: 1,573, a warp:
    // 1,509, whose dot phase took 4.5 us, five passes of one unit per lane.
    int best = 32;
    long best_cost = 0;
    for (int l = 32, levels = 5; l >= 2; l >>= 1, --levels) {  // levels: log2(l) shuffle steps
        const long passes = (groups_per_block + warps * (32 / l) - 1) / (warps * (32 / l));
        const long cost = passes * (long((units + l - 1) / l) * 100 + levels * 8 + 300);
        if (l == 32 || cost < best_cost) best = l, best_cost = cost;
    }
    return best;
}

int warps_per_group(int units, int groups_per_block, int warps) {
    const int need = (units + 31) / 32;
    int wpg = 1;
    while (wpg < need && wpg * 2 * std::min(groups_per_block, warps) <= warps) wpg *= 2;
    return wpg;
}

}  // namespace q8

void launch_matvec_q8(const MatvecJob* jobs, int n_jobs, int K, const Q8Source& src, float* swiglu_out,
                      int warps_per_row, int max_blocks, int staged_sms, int staged_lanes, bool pdl,
                      cudaStream_t stream, const TraceSink* trace) {
    if (src.x ? K > kQ8FusedMaxK : !src.pre.qs) throw Error("cuda matvec_q8: no usable input");
    Q8Params p = make_params(jobs, n_jobs, K, src, swiglu_out);
    const int groups = p.n_groups;
#ifdef MN_CUDA_TRACE
    if (trace) p.trace = *trace;
#else
    (void)trace;
#endif
    if (src.x) {
        const StagedPlan plan = staged_plan(jobs, n_jobs, K, swiglu_out != nullptr, staged_sms, staged_lanes);
        if (plan.blocks > 0) {
            p.wpg = plan.wpg;
            p.lpg = plan.lpg;
            p.groups_per_block = plan.groups_per_block;
            p.stage_bytes = plan.stage_bytes;
            const RowNorm norm = row_norm_kind<kStagedThreads>(src.norm_weight != nullptr, K);
            launch_kernel(pdl, staged_kernel(swiglu_out != nullptr, jobs[0].w.type, mixed_types(jobs, n_jobs), norm),
                          dim3(plan.blocks), dim3(kStagedThreads), plan.smem, stream, p);
            MN_CUDA_CHECK_LAUNCH("matvec_q8_staged_kernel");
            return;
        }
    }
    const bool pre = !src.x;
    const bool mixed = mixed_types(jobs, n_jobs);
    // Blocks wider than kQ8Warps (one row group each, instantiated for 5 and 10 warps) only for
    // products without SwiGLU whose input was quantized apart.
    const bool wide_ok = pre && !swiglu_out;
    int wpg = warps_per_row;
    if (wpg <= 0) {
        // Long rows get several warps, so that enough loads are in flight on few rows.
        const int blocks32 = K / 32;
        wpg = blocks32 >= 512 ? 4 : blocks32 >= 256 ? 2 : 1;
        if (wpg == 4 && wide_ok && !mixed) wpg = wide_row_warps(jobs[0].w.type, K);
    }
    if (wpg != 1 && wpg != 2 && wpg != 4 && !(wide_ok && (wpg == 5 || wpg == 10))) wpg = 1;
    p.wpg = wpg;
    const int warps = wpg > kQ8Warps ? wpg : kQ8Warps;
    const int per_block = warps / wpg;
    int blocks = (groups + per_block - 1) / per_block;
    if (max_blocks > 0) blocks = std::min(blocks, max_blocks);
    const size_t smem = pre ? 0 : size_t(K) + size_t(K / 32) * sizeof(float2);
    with_fixed_type(jobs[0].w.type, mixed, [&](auto tag) {
        constexpr TensorType T = decltype(tag)::value;
        auto kernel = swiglu_out ? (pre ? matvec_q8_kernel<true, T, true> : matvec_q8_kernel<true, T, false>)
                                 : (pre ? matvec_q8_kernel<false, T, true> : matvec_q8_kernel<false, T, false>);
        if (warps == 5) kernel = matvec_q8_kernel<false, T, true, 5>;
        if (warps == 10) kernel = matvec_q8_kernel<false, T, true, 10>;
        launch_kernel(pdl, kernel, dim3(blocks), dim3(warps * 32), smem, stream, p);
    });
    MN_CUDA_CHECK_LAUNCH("matvec_q8_kernel");
}

}  // namespace mn::cuda
