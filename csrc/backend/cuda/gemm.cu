// Prefill matrix products on tensor cores: out[r] = W x[r] for many rows.
//
// The weight stays quantized in memory; each K-step of a block dequantizes
// its weight tile straight into shared memory as fp16 (no fp16 copy of the
// model, no scratch round trip), converts the activation tile to fp16, and
// multiplies with WMMA 16x16x16 fragments accumulating in fp32.
#include <mma.h>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace mn::cuda {

namespace {

using namespace nvcuda;

constexpr int BM = 64;    // activation rows per block
constexpr int BN = 128;   // weight rows (outputs) per block
constexpr int BK = 64;    // K per step: two 32-element chunks
constexpr int PAD = 8;    // halves of padding per shared row (bank conflicts)
constexpr int LDS = BK + PAD;
constexpr int kThreads = 256;  // 8 warps as 2 (M) x 4 (N), 32x32 outputs each
constexpr int CLD = 32 + 4;    // epilogue tile stride (floats)

struct Tiles {
    __half a[BM][LDS];
    __half b[BN][LDS];
};
union Smem {
    Tiles t;
    float c[kThreads / 32][32][CLD];
};

// Per activation row, the fp16 scale (common.cuh's fp16_row_scale).
__global__ void row_scale_kernel(const float* __restrict__ x, int K, float* __restrict__ scale) {
    const float s = fp16_row_scale(x + size_t(blockIdx.x) * K, K);
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
}

template <TensorType T>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const uint8_t* __restrict__ w, size_t row_bytes, int N, int K,
                                                        const float* __restrict__ x, int M, float* __restrict__ out,
                                                        const float* __restrict__ bias, float* residual,
                                                        const float* __restrict__ row_scale) {
    __shared__ __align__(128) Smem sm;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp >> 2, wn = warp & 3;  // warp tile origin: (32 wm, 32 wn)

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    const int n_chunks = (K + 31) / 32;
    const bool kvec = (K & 31) == 0;
    // Weight tile: thread t dequantizes chunk (t & 1) of weight row t >> 1.
    const int bn = tid >> 1, bc = tid & 1;
    // Activation tile: thread t converts 16 values of row t >> 2 at column 16 (t & 3).
    const int am = tid >> 2, ac = (tid & 3) * 16;

    for (int k0 = 0; k0 < K; k0 += BK) {
        {
            const int c = k0 / 32 + bc;
            float v[32];
            if (n0 + bn < N && c < n_chunks) load_chunk32<T>(w + size_t(n0 + bn) * row_bytes, c, K, v);
            else {
#pragma unroll
                for (int i = 0; i < 32; ++i) v[i] = 0.0f;
            }
            __half2* dst = reinterpret_cast<__half2*>(&sm.t.b[bn][bc * 32]);
#pragma unroll
            for (int i = 0; i < 16; ++i) dst[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
        }
        {
            const int m = m0 + am, kk = k0 + ac;
            const float rs = m < M ? row_scale[m] : 0.0f;
            float v[16];
            if (m < M && kvec && kk + 16 <= K) {
                const float4* src = reinterpret_cast<const float4*>(x + size_t(m) * K + kk);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float4 t = __ldg(src + i);
                    v[4 * i] = t.x; v[4 * i + 1] = t.y; v[4 * i + 2] = t.z; v[4 * i + 3] = t.w;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 16; ++i) v[i] = (m < M && kk + i < K) ? x[size_t(m) * K + kk + i] : 0.0f;
            }
            __half2* dst = reinterpret_cast<__half2*>(&sm.t.a[am][ac]);
#pragma unroll
            for (int i = 0; i < 8; ++i) dst[i] = __floats2half2_rn(v[2 * i] * rs, v[2 * i + 1] * rs);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &sm.t.a[32 * wm + 16 * i][kk], LDS);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &sm.t.b[32 * wn + 16 * j][kk], LDS);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }

    // Epilogue through shared memory: bounds, bias and the fused residual add.
    float(*c)[CLD] = sm.c[warp];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(&c[16 * i][16 * j], acc[i][j], CLD, wmma::mem_row_major);
    __syncwarp();
    const int n = n0 + 32 * wn + lane;
    if (n < N) {
        const float b = bias ? bias[n] : 0.0f;
        for (int i = 0; i < 32; ++i) {
            const int m = m0 + 32 * wm + i;
            if (m >= M) break;
            const float v = c[i][lane] / row_scale[m] + b;
            out[size_t(m) * N + n] = v;
            if (residual) residual[size_t(m) * N + n] += v;
        }
    }
}

struct GemmLaunch {
    const QMatrix& w;
    const float* x;
    int rows;
    float* out;
    const float* bias;
    float* residual;
    const float* row_scale;
    cudaStream_t s;
    template <TensorType T>
    void operator()() const {
        const dim3 grid((w.N + BN - 1) / BN, (rows + BM - 1) / BM);
        gemm_kernel<T><<<grid, kThreads, 0, s>>>(w.data, w.row_bytes, w.N, w.K, x, rows, out, bias, residual,
                                                 row_scale);
    }
};

}  // namespace

void launch_row_scale(const float* x, int rows, int K, float* row_scale, cudaStream_t stream) {
    row_scale_kernel<<<rows, 256, 0, stream>>>(x, K, row_scale);
    MN_CUDA_CHECK_LAUNCH("row_scale_kernel");
}

void launch_gemm(const QMatrix& w, const float* x, int rows, float* out, const float* bias, float* residual,
                 const float* row_scale, cudaStream_t stream) {
    if (!dispatch_type(w.type, GemmLaunch{w, x, rows, out, bias, residual, row_scale, stream}))
        throw Error("cuda gemm: unsupported weight type");
    MN_CUDA_CHECK_LAUNCH("gemm_kernel");
}

}  // namespace mn::cuda
