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

struct MatvecParams {
    MatvecJob jobs[kMaxMatvecJobs];
    int job_end[kMaxMatvecJobs];  // exclusive prefix sums of the jobs' heights
    int n_jobs;
    MatvecInput in;
};

// acc[r] += sum over this lane's chunks of w * (nw) * x[r].
template <int R, TensorType T>
__device__ __forceinline__ void row_dot(const uint8_t* row, int K, const float* __restrict__ x, int rows,
                                        const float* __restrict__ nw, float acc[R]) {
    const int lane = threadIdx.x & 31;
    const int n_chunks = (K + 31) >> 5;
    const bool vec = (K & 31) == 0;
    for (int c = lane; c < n_chunks; c += 32) {
        float w[32];
        load_chunk32<T>(row, c, K, w);
        const int k0 = 32 * c;
        if (nw) {
            if (vec) {
                const float4* n4 = reinterpret_cast<const float4*>(nw + k0);
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const float4 t = __ldg(n4 + i);
                    w[4 * i] *= t.x; w[4 * i + 1] *= t.y; w[4 * i + 2] *= t.z; w[4 * i + 3] *= t.w;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 32; ++i) w[i] *= (k0 + i < K) ? nw[k0 + i] : 0.0f;
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r >= rows) break;
            const float* xr = x + size_t(r) * K + k0;
            float s = 0.0f;
            if (vec) {
                const float4* x4 = reinterpret_cast<const float4*>(xr);
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const float4 t = __ldg(x4 + i);
                    s += w[4 * i] * t.x + w[4 * i + 1] * t.y + w[4 * i + 2] * t.z + w[4 * i + 3] * t.w;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 32; ++i) s += (k0 + i < K) ? w[i] * xr[i] : 0.0f;
            }
            acc[r] += s;
        }
    }
}

template <int R>
__device__ __forceinline__ void row_dot_any(const QMatrix& m, int n, const float* x, int rows, const float* nw,
                                            float acc[R]) {
    const uint8_t* row = m.data + size_t(n) * m.row_bytes;
    switch (m.type) {
        case TensorType::F32: row_dot<R, TensorType::F32>(row, m.K, x, rows, nw, acc); break;
        case TensorType::F16: row_dot<R, TensorType::F16>(row, m.K, x, rows, nw, acc); break;
        case TensorType::BF16: row_dot<R, TensorType::BF16>(row, m.K, x, rows, nw, acc); break;
        case TensorType::Q4_0: row_dot<R, TensorType::Q4_0>(row, m.K, x, rows, nw, acc); break;
        case TensorType::Q4_1: row_dot<R, TensorType::Q4_1>(row, m.K, x, rows, nw, acc); break;
        case TensorType::Q5_0: row_dot<R, TensorType::Q5_0>(row, m.K, x, rows, nw, acc); break;
        case TensorType::Q5_1: row_dot<R, TensorType::Q5_1>(row, m.K, x, rows, nw, acc); break;
        case TensorType::Q8_0: row_dot<R, TensorType::Q8_0>(row, m.K, x, rows, nw, acc); break;
        case TensorType::Q4_K: row_dot<R, TensorType::Q4_K>(row, m.K, x, rows, nw, acc); break;
        case TensorType::Q5_K: row_dot<R, TensorType::Q5_K>(row, m.K, x, rows, nw, acc); break;
        case TensorType::Q6_K: row_dot<R, TensorType::Q6_K>(row, m.K, x, rows, nw, acc); break;
        default: break;  // rejected at upload
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <int R, bool NORM, bool SWIGLU>
__global__ void __launch_bounds__(kWarps * 32) matvec_kernel(const MatvecParams p) {
    const MatvecInput& in = p.in;
    const int rows = in.rows, K = in.K;
    __shared__ float s_inv[R];
    if constexpr (NORM) {
        // Every block computes the rms of the (few, short) input rows itself:
        // cheaper than a separate launch and a round trip through memory.
        __shared__ double s_part[kWarps];
        for (int r = 0; r < rows; ++r) {
            const float* xr = in.x + size_t(r) * K;
            double ss = 0.0;
            for (int i = threadIdx.x; i < K; i += blockDim.x) ss += double(xr[i]) * xr[i];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
            if ((threadIdx.x & 31) == 0) s_part[threadIdx.x >> 5] = ss;
            __syncthreads();
            if (threadIdx.x == 0) {
                double t = 0.0;
                for (int w = 0; w < kWarps; ++w) t += s_part[w];
                s_inv[r] = float(1.0 / sqrt(t / K + double(in.eps)));
            }
            __syncthreads();
        }
        if (blockIdx.x == 0 && in.norm_out) {
            for (int r = 0; r < rows; ++r)
                for (int i = threadIdx.x; i < K; i += blockDim.x)
                    in.norm_out[size_t(r) * K + i] = in.x[size_t(r) * K + i] * s_inv[r] * in.norm_weight[i];
        }
    }
    const int warp = blockIdx.x * kWarps + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    const float* nw = NORM ? in.norm_weight : nullptr;

    if constexpr (SWIGLU) {
        const MatvecJob& g = p.jobs[0];
        const MatvecJob& u = p.jobs[1];
        if (warp >= g.w.N) return;
        float ag[R], au[R];
#pragma unroll
        for (int r = 0; r < R; ++r) ag[r] = au[r] = 0.0f;
        row_dot_any<R>(g.w, warp, in.x, rows, nw, ag);
        row_dot_any<R>(u.w, warp, in.x, rows, nw, au);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r >= rows) break;
            float gv = warp_sum(ag[r]), uv = warp_sum(au[r]);
            if (lane == 0) {
                if constexpr (NORM) { gv *= s_inv[r]; uv *= s_inv[r]; }
                if (g.bias) gv += g.bias[warp];
                if (u.bias) uv += u.bias[warp];
                const size_t o = size_t(r) * g.w.N + warp;
                if (g.out != in.swiglu_out) g.out[o] = gv;
                u.out[o] = uv;
                in.swiglu_out[o] = gv / (1.0f + expf(-gv)) * uv;
            }
        }
    } else {
        int j = 0;
        while (j < p.n_jobs && warp >= p.job_end[j]) ++j;
        if (j >= p.n_jobs) return;
        const MatvecJob& job = p.jobs[j];
        const int n = warp - (j ? p.job_end[j - 1] : 0);
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] = 0.0f;
        row_dot_any<R>(job.w, n, in.x, rows, nw, acc);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r >= rows) break;
            float v = warp_sum(acc[r]);
            if (lane == 0) {
                if constexpr (NORM) v *= s_inv[r];
                if (job.bias) v += job.bias[n];
                const size_t o = size_t(r) * job.w.N + n;
                job.out[o] = v;
                if (job.residual) job.residual[o] += v;
            }
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
    const bool norm = in.norm_weight != nullptr;
    const bool swiglu = in.swiglu_out != nullptr;
    if (swiglu && (!norm || n_jobs != 2 || jobs[0].w.N != jobs[1].w.N))
        throw Error("cuda matvec: fused SwiGLU needs the norm and two products of one height");
    const int n_warps = swiglu ? jobs[0].w.N : total;
    if (in.rows == 1) launch_rows<1>(p, norm, swiglu, n_warps, stream);
    else launch_rows<kMaxMatvecRows>(p, norm, swiglu, n_warps, stream);
    MN_CUDA_CHECK_LAUNCH("matvec_kernel");
}

}  // namespace mn::cuda
