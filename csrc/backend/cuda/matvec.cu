// Quantized matrix-vector products for decode (1..8 activation rows).
//
// Decode is bound by reading the weights once, so one warp computes one
// output element: its lanes walk the row in 32-element chunks (one block, or
// an eighth of a K-quant super-block), dequantize in registers and multiply
// with the fp32 activations, which every warp of the launch shares through L1.
// One launch can hold up to three products with the same input (q, k, v or
// gate, up) and can fuse the rms_norm that produces the input, the bias, the
// residual add that consumes the output and the SwiGLU of gate and up: the
// decode step then needs few launches.
#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace mn::cuda {

namespace {

constexpr int kWarps = 4;

constexpr int kRowsPerWarp = 4;  // decode: weight rows per block, sharing each input load

struct MatvecParams {
    MatvecJob jobs[kMaxMatvecJobs];
    int job_end[kMaxMatvecJobs];  // exclusive prefix sums of the jobs' heights
    int group_end[kMaxMatvecJobs];  // the same in groups of kRowsPerWarp rows (one-row kernel)
    int n_jobs;
    MatvecInput in;
};

// Eight weights (already scaled by the norm weight) against elements [e, e+8)
// of every input row. With ss set, also accumulates the squares of the input
// (the fused rms_norm needs them once per input element).
template <int R>
__device__ __forceinline__ void fma8(const float w[8], const float* __restrict__ x, int rows, int K, int e, bool vec,
                                     float acc[R], float* ss) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r >= rows) break;
        const float* xr = x + size_t(r) * K + e;
        float t[8];
        if (vec) {
            const float4 a = __ldg(reinterpret_cast<const float4*>(xr));
            const float4 b = __ldg(reinterpret_cast<const float4*>(xr) + 1);
            t[0] = a.x; t[1] = a.y; t[2] = a.z; t[3] = a.w; t[4] = b.x; t[5] = b.y; t[6] = b.z; t[7] = b.w;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) t[i] = e + i < K ? xr[i] : 0.0f;
        }
        float sacc = 0.0f, q = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            sacc += w[i] * t[i];
            q += t[i] * t[i];
        }
        acc[r] += sacc;
        if (ss) ss[r] += q;
    }
}

__device__ __forceinline__ void scale_by_norm(float w[8], const float* __restrict__ nw, int K, int e, bool vec) {
    if (vec) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(nw + e));
        const float4 b = __ldg(reinterpret_cast<const float4*>(nw + e) + 1);
        w[0] *= a.x; w[1] *= a.y; w[2] *= a.z; w[3] *= a.w; w[4] *= b.x; w[5] *= b.y; w[6] *= b.z; w[7] *= b.w;
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) w[i] *= (e + i < K) ? nw[e + i] : 0.0f;
    }
}

// A warp's dot products of weight row(s) with the input rows. Lane l takes the
// 8 elements at 8l of every 256: the warp's loads of weights and inputs are
// contiguous. Each loop trip issues two pieces' loads before using either:
// pieces e and e + 256 of row A, or (with row B, the up row beside the gate
// row) piece e of both rows. ss (optional) collects the squares of the input.
template <int R, TensorType T>
__device__ __forceinline__ void row_dot(const uint8_t* rowA, const uint8_t* rowB, int K, const float* __restrict__ x,
                                        int rows, const float* __restrict__ nw, float accA[R], float accB[R],
                                        float* ss) {
    const int lane = threadIdx.x & 31;
    const bool vec = (K & 7) == 0;
    const int step = rowB ? 256 : 512;
    for (int e = 8 * lane; e < K; e += step) {
        float w0[8], w1[8];
        const int e1 = rowB ? e : e + 256;
        const bool has1 = e1 < K;
        load8<T>(rowA, e, K, w0);
        if (has1) load8<T>(rowB ? rowB : rowA, e1, K, w1);
        if (nw) scale_by_norm(w0, nw, K, e, vec);
        fma8<R>(w0, x, rows, K, e, vec, accA, ss);
        if (has1) {
            if (nw) scale_by_norm(w1, nw, K, e1, vec);
            fma8<R>(w1, x, rows, K, e1, vec, rowB ? accB : accA, rowB ? nullptr : ss);
        }
    }
}

template <int R>
__device__ __forceinline__ void row_dot_any(const QMatrix& m, int n, const uint8_t* rowB, int K, const float* x,
                                            int rows, const float* nw, float accA[R], float accB[R], float* ss) {
    const uint8_t* row = m.data + size_t(n) * m.row_bytes;
#define MN_CASE(T) \
    case T: row_dot<R, T>(row, rowB, K, x, rows, nw, accA, accB, ss); break;
    switch (m.type) {
        MN_CASE(TensorType::F32)
        MN_CASE(TensorType::F16)
        MN_CASE(TensorType::BF16)
        MN_CASE(TensorType::Q4_0)
        MN_CASE(TensorType::Q4_1)
        MN_CASE(TensorType::Q5_0)
        MN_CASE(TensorType::Q5_1)
        MN_CASE(TensorType::Q8_0)
        MN_CASE(TensorType::Q2_K)
        MN_CASE(TensorType::Q3_K)
        MN_CASE(TensorType::Q4_K)
        MN_CASE(TensorType::Q5_K)
        MN_CASE(TensorType::Q6_K)
        default: break;  // rejected at upload
    }
#undef MN_CASE
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One warp per output element (per pair of gate/up elements with SWIGLU).
// With NORM the warp also sums the squares of the input rows it reads anyway
// (its lanes cover every chunk once), so the norm costs no extra pass.
template <int R, bool NORM, bool SWIGLU>
__global__ void __launch_bounds__(kWarps * 32) matvec_kernel(const MatvecParams p) {
    const MatvecInput& in = p.in;
    const int rows = in.rows, K = in.K;
    const int warp = blockIdx.x * kWarps + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    const float* nw = NORM ? in.norm_weight : nullptr;

    int j = 0, n = warp;
    if (!SWIGLU) {
        while (j < p.n_jobs && warp >= p.job_end[j]) ++j;
        if (j < p.n_jobs) n = warp - (j ? p.job_end[j - 1] : 0);
    }
    const bool live = SWIGLU ? warp < p.jobs[0].w.N : j < p.n_jobs;
    // Warp 0 of block 0 writes the normalized input when asked, so it runs even without a row.
    const bool writes_norm = NORM && in.norm_out && blockIdx.x == 0 && threadIdx.x < 32;
    if (!live && !writes_norm) return;

    float accA[R], accB[R], ss[R];
#pragma unroll
    for (int r = 0; r < R; ++r) accA[r] = accB[r] = ss[r] = 0.0f;
    if (live) {
        if (SWIGLU) {
            const QMatrix& g = p.jobs[0].w;
            const QMatrix& u = p.jobs[1].w;
            if (g.type == u.type) {
                row_dot_any<R>(g, n, u.data + size_t(n) * u.row_bytes, K, in.x, rows, nw, accA, accB,
                               NORM ? ss : nullptr);
            } else {
                row_dot_any<R>(g, n, nullptr, K, in.x, rows, nw, accA, accB, NORM ? ss : nullptr);
                row_dot_any<R>(u, n, nullptr, K, in.x, rows, nw, accB, accA, nullptr);
            }
        } else {
            row_dot_any<R>(p.jobs[j].w, n, nullptr, K, in.x, rows, nw, accA, accB, NORM ? ss : nullptr);
        }
    } else if (NORM) {
        // Only the squares are needed: walk the input.
        for (int i = lane; i < K; i += 32)
            for (int r = 0; r < rows && r < R; ++r) {
                const float t = in.x[size_t(r) * K + i];
                ss[r] += t * t;
            }
    }
    float inv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        inv[r] = 1.0f;
        if (NORM && r < rows) inv[r] = inv_rms(warp_sum(ss[r]), K, in.eps);
    }
    if (writes_norm) {
        for (int r = 0; r < rows && r < R; ++r)
            for (int i = lane; i < K; i += 32)
                in.norm_out[size_t(r) * K + i] = in.x[size_t(r) * K + i] * inv[r] * in.norm_weight[i];
    }
    if (!live) return;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r >= rows) break;
        const float a = warp_sum(accA[r]) * inv[r];
        if constexpr (SWIGLU) {
            const float b = warp_sum(accB[r]) * inv[r];
            if (lane == 0) {
                const MatvecJob& g = p.jobs[0];
                const MatvecJob& u = p.jobs[1];
                const float gv = a + (g.bias ? g.bias[n] : 0.0f);
                const float uv = b + (u.bias ? u.bias[n] : 0.0f);
                const size_t o = size_t(r) * g.w.N + n;
                if (g.out != in.swiglu_out) g.out[o] = gv;
                u.out[o] = uv;
                in.swiglu_out[o] = gv / (1.0f + expf(-gv)) * uv;
            }
        } else if (lane == 0) {
            const MatvecJob& job = p.jobs[j];
            const float v = a + (job.bias ? job.bias[n] : 0.0f);
            const size_t o = size_t(r) * job.w.N + n;
            job.out[o] = v;
            if (job.residual) job.residual[o] += v;
        }
    }
}

// ---- one input row (decode) ---------------------------------------------------------------
// A warp computes kRowsPerWarp outputs at once: each 8-element piece of the
// input (and of the norm weight) is loaded once for all of them, and their
// weight loads are all in flight together.
template <TensorType T>
__device__ __forceinline__ void rows_dot(const uint8_t* const rowp[kRowsPerWarp], int K, const float* __restrict__ x,
                                         const float* __restrict__ nw, float acc[kRowsPerWarp], float& ss) {
    const int lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
    const bool vec = (K & 7) == 0;
    // The block's warps split K: warp wi takes every kWarps-th 256-element stretch.
    for (int e = 8 * lane + 256 * wi; e < K; e += 256 * kWarps) {
        float xs[8];
        if (vec) {
            const float4 a = __ldg(reinterpret_cast<const float4*>(x + e));
            const float4 b = __ldg(reinterpret_cast<const float4*>(x + e) + 1);
            xs[0] = a.x; xs[1] = a.y; xs[2] = a.z; xs[3] = a.w; xs[4] = b.x; xs[5] = b.y; xs[6] = b.z; xs[7] = b.w;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) xs[i] = e + i < K ? x[e + i] : 0.0f;
        }
        if (nw) {
#pragma unroll
            for (int i = 0; i < 8; ++i) ss += xs[i] * xs[i];
            float n8[8];
            if (vec) {
                const float4 a = __ldg(reinterpret_cast<const float4*>(nw + e));
                const float4 b = __ldg(reinterpret_cast<const float4*>(nw + e) + 1);
                n8[0] = a.x; n8[1] = a.y; n8[2] = a.z; n8[3] = a.w; n8[4] = b.x; n8[5] = b.y; n8[6] = b.z; n8[7] = b.w;
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) n8[i] = e + i < K ? nw[e + i] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) xs[i] *= n8[i];
        }
        // Weights four rows at a time: their loads in flight together, registers bounded.
#pragma unroll
        for (int r0 = 0; r0 < kRowsPerWarp; r0 += 4) {
            float w[4][8];
#pragma unroll
            for (int r = 0; r < 4; ++r)
                if (rowp[r0 + r]) load8<T>(rowp[r0 + r], e, K, w[r]);
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                if (!rowp[r0 + r]) continue;
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; ++i) s += w[r][i] * xs[i];
                acc[r0 + r] += s;
            }
        }
    }
}

__device__ __forceinline__ void rows_dot_any(TensorType type, const uint8_t* const rowp[kRowsPerWarp], int K,
                                             const float* x, const float* nw, float acc[kRowsPerWarp], float& ss) {
#define MN_CASE(T) \
    case T: rows_dot<T>(rowp, K, x, nw, acc, ss); break;
    switch (type) {
        MN_CASE(TensorType::F32)
        MN_CASE(TensorType::F16)
        MN_CASE(TensorType::BF16)
        MN_CASE(TensorType::Q4_0)
        MN_CASE(TensorType::Q4_1)
        MN_CASE(TensorType::Q5_0)
        MN_CASE(TensorType::Q5_1)
        MN_CASE(TensorType::Q8_0)
        MN_CASE(TensorType::Q2_K)
        MN_CASE(TensorType::Q3_K)
        MN_CASE(TensorType::Q4_K)
        MN_CASE(TensorType::Q5_K)
        MN_CASE(TensorType::Q6_K)
        default: break;  // rejected at upload
    }
#undef MN_CASE
}

// A block computes kRowsPerWarp outputs; its warps split K and their sums
// meet in shared memory. SWIGLU: rows n, n+1 of gate and of up (one type).
template <bool NORM, bool SWIGLU>
__global__ void __launch_bounds__(kWarps * 32, 6) matvec1_kernel(const MatvecParams p) {
    const MatvecInput& in = p.in;
    const int K = in.K;
    const int group = blockIdx.x;
    const int lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
    constexpr int H = kRowsPerWarp / 2;  // SWIGLU: rows per matrix

    int j = 0, n0 = 0;
    bool live;
    if (SWIGLU) {
        n0 = group * H;
        live = n0 < p.jobs[0].w.N;
    } else {
        while (j < p.n_jobs && group >= p.group_end[j]) ++j;
        live = j < p.n_jobs;
        if (live) n0 = (group - (j ? p.group_end[j - 1] : 0)) * kRowsPerWarp;
    }
    if (!live) return;  // block-uniform

    const uint8_t* rowp[kRowsPerWarp];
    TensorType type;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) rowp[r] = nullptr;
    if (SWIGLU) {
        const QMatrix& g = p.jobs[0].w;
        const QMatrix& u = p.jobs[1].w;
        type = g.type;
#pragma unroll
        for (int r = 0; r < H; ++r)
            if (n0 + r < g.N) {
                rowp[r] = g.data + size_t(n0 + r) * g.row_bytes;
                rowp[H + r] = u.data + size_t(n0 + r) * u.row_bytes;
            }
    } else {
        const QMatrix& m = p.jobs[j].w;
        type = m.type;
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r)
            if (n0 + r < m.N) rowp[r] = m.data + size_t(n0 + r) * m.row_bytes;
    }
    float acc[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) acc[r] = 0.0f;
    float ss = 0.0f;
    rows_dot_any(type, rowp, K, in.x, NORM ? in.norm_weight : nullptr, acc, ss);

    __shared__ float red[kWarps][kRowsPerWarp + 1];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) acc[r] = warp_sum(acc[r]);
    if (NORM) ss = warp_sum(ss);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) red[wi][r] = acc[r];
        red[wi][kRowsPerWarp] = ss;
    }
    __syncthreads();
    float inv = 1.0f;
    if (NORM) {
        float t = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) t += red[w][kRowsPerWarp];
        inv = inv_rms(t, K, in.eps);
        if (group == 0 && in.norm_out)
            for (int i = threadIdx.x; i < K; i += blockDim.x) in.norm_out[i] = in.x[i] * inv * in.norm_weight[i];
    }
    if (threadIdx.x != 0) return;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        float t = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) t += red[w][r];
        acc[r] = t * inv;
    }
    if (SWIGLU) {
        const MatvecJob& g = p.jobs[0];
        const MatvecJob& u = p.jobs[1];
#pragma unroll
        for (int r = 0; r < H; ++r) {
            const int n = n0 + r;
            if (n >= g.w.N) break;
            const float gv = acc[r] + (g.bias ? g.bias[n] : 0.0f);
            const float uv = acc[H + r] + (u.bias ? u.bias[n] : 0.0f);
            if (g.out != in.swiglu_out) g.out[n] = gv;
            u.out[n] = uv;
            in.swiglu_out[n] = gv / (1.0f + expf(-gv)) * uv;
        }
    } else {
        const MatvecJob& job = p.jobs[j];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
            const int n = n0 + r;
            if (n >= job.w.N) break;
            const float v = acc[r] + (job.bias ? job.bias[n] : 0.0f);
            job.out[n] = v;
            if (job.residual) job.residual[n] += v;
        }
    }
}

template <int R>
void launch_rows(const MatvecParams& p, bool norm, bool swiglu, int n_warps, cudaStream_t stream) {
    const int blocks = (n_warps + kWarps - 1) / kWarps;
    // SwiGLU is only fused together with the norm (the decode step's feed-forward block).
    if (norm && swiglu) matvec_kernel<R, true, true><<<blocks, kWarps * 32, 0, stream>>>(p);
    else if (norm) matvec_kernel<R, true, false><<<blocks, kWarps * 32, 0, stream>>>(p);
    else matvec_kernel<R, false, false><<<blocks, kWarps * 32, 0, stream>>>(p);
}

}  // namespace

void launch_matvec(const MatvecJob* jobs, int n_jobs, const MatvecInput& in, cudaStream_t stream) {
    if (n_jobs < 1 || n_jobs > kMaxMatvecJobs || in.rows < 1 || in.rows > kMaxMatvecRows)
        throw Error("cuda matvec: bad launch (" + std::to_string(n_jobs) + " jobs, " + std::to_string(in.rows) +
                    " rows)");
    MatvecParams p{};
    int total = 0;
    for (int j = 0; j < n_jobs; ++j) {
        p.jobs[j] = jobs[j];
        total += jobs[j].w.N;
        p.job_end[j] = total;
    }
    p.n_jobs = n_jobs;
    p.in = in;
    int groups = 0;
    for (int j = 0; j < n_jobs; ++j) {
        groups += (jobs[j].w.N + kRowsPerWarp - 1) / kRowsPerWarp;
        p.group_end[j] = groups;
    }
    const bool norm = in.norm_weight != nullptr;
    const bool swiglu = in.swiglu_out != nullptr;
    if (swiglu && (!norm || n_jobs != 2 || jobs[0].w.N != jobs[1].w.N))
        throw Error("cuda matvec: fused SwiGLU needs the norm and two products of one height");
    const int n_warps = swiglu ? jobs[0].w.N : total;
    if (in.rows == 1) {
        const int blocks = swiglu ? (jobs[0].w.N + kRowsPerWarp / 2 - 1) / (kRowsPerWarp / 2) : groups;
        if (swiglu && jobs[0].w.type == jobs[1].w.type)
            matvec1_kernel<true, true><<<blocks, kWarps * 32, 0, stream>>>(p);
        else if (swiglu)
            launch_rows<1>(p, norm, swiglu, n_warps, stream);  // gate and up of different types
        else if (norm)
            matvec1_kernel<true, false><<<blocks, kWarps * 32, 0, stream>>>(p);
        else
            matvec1_kernel<false, false><<<blocks, kWarps * 32, 0, stream>>>(p);
    } else {
        launch_rows<kMaxMatvecRows>(p, norm, swiglu, n_warps, stream);
    }
    MN_CUDA_CHECK_LAUNCH("matvec_kernel");
}

}  // namespace mn::cuda
