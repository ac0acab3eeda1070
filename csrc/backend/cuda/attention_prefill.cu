// Prefill attention (many query rows, f16 KV cache) on tensor cores.
//
// A block takes one KV head and a run of "slots": slot s of that head is query
// row s / G and query head kvh * G + s % G, with G = n_heads / n_kv_heads. The
// G heads that share a KV head thus sit side by side in one block and every K/V
// tile read from the cache serves all of them (for Qwen2.5, G = 7: seven times
// fewer cache reads than a block per query head). Each warp owns 16 slots (the
// M of mma.m16n8k16) and walks the keys in tiles of 64, double-buffered in
// shared memory with cp.async so the next tile's load overlaps this tile's math.
// A warp's walk over the keys is a chain of dependent steps, and a 512-row
// prefill has only a few warps per SM, so with SPLIT = 2 (4) two (four) warps
// share each 16 slots, each taking its 32 (16) keys of every tile; their partial
// (max, sum, output) meet in shared memory at the end.
//
// Numerics: Q is scaled in fp32 by log2(e) / sqrt(head_dim) and rounded once to
// fp16 (the cache already holds K and V as fp16); Q K^T accumulates in fp32, the
// scores, running max, exponentials (base 2, hence the log2(e)) and row sums
// stay fp32. Only the probabilities are rounded to fp16 for the P V product,
// which accumulates in fp32; the output is divided by the fp32 sum at the end.
#include <algorithm>
#include <cmath>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace mn::cuda {

namespace {

constexpr int kKeyTile = 64;  // keys per shared-memory tile

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// c += a b for a 16x16 fp16 A (row-major fragment), a 16x8 fp16 B (column fragment), fp32 c.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as one fp16 pair; the lower column goes in the low half, as the fragments expect.
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
}

// grid (ceil(rows * G / (16 * WARPS)), n_kv_heads), WARPS * SPLIT * 32 threads: warp w takes
// slot group w % WARPS and key part w / WARPS. Fragment ownership (mma.m16n8k16): lane = 4 g + t holds slots g and g + 8 of its warp's 16
// ("A" and "B" below) and, of each 8-wide column tile, columns 2t and 2t + 1.
template <int HD, int WARPS, int SPLIT>
__global__ void __launch_bounds__(WARPS * SPLIT * 32)
    attn_prefill_tc_kernel(const float* __restrict__ q, const __half* __restrict__ kc, const __half* __restrict__ vc,
                           int n_ctx, const int* __restrict__ pos0p, int rows, int n_heads, int n_kv_heads,
                           float* __restrict__ out) {
    constexpr int kStride = HD + 8;  // halves per smem row: 16 bytes of pad put ldmatrix's 8 rows on distinct banks
    constexpr int kSlots = 16 * WARPS;
    constexpr int kThreadsTc = 32 * WARPS * SPLIT;
    constexpr int KS = HD / 16;  // k-steps of Q K^T
    constexpr int DT = HD / 8;   // 8-wide column tiles of the output
    constexpr int kWarpKeys = kKeyTile / SPLIT;  // keys of each tile that one warp scores
    constexpr int NT = kWarpKeys / 8;
    constexpr int kTileHalves = kKeyTile * kStride;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __half* sk = reinterpret_cast<__half*>(smem_raw);  // [2][kKeyTile][kStride]
    __half* sv = sk + 2 * kTileHalves;                 // [2][kKeyTile][kStride]

    const int group = n_heads / n_kv_heads;
    const int kvh = blockIdx.y;
    const int n_slots = rows * group;
    // Blocks of later rows see more keys; issuing them first keeps the tail of the grid short.
    const int slot0 = (gridDim.x - 1 - blockIdx.x) * kSlots;
    const int pos0 = *pos0p;
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) % WARPS, part = (threadIdx.x >> 5) / WARPS;
    const int koff = part * kWarpKeys;  // this warp's keys in each tile
    const int g8 = lane >> 2, t4 = lane & 3;

    const int n_keys = pos0 + min(n_slots - 1, slot0 + kSlots - 1) / group + 1;  // keys any slot of the block sees
    const int n_tiles = (n_keys + kKeyTile - 1) / kKeyTile;

    const __half* kbase = kc + size_t(kvh) * n_ctx * HD;
    const __half* vbase = vc + size_t(kvh) * n_ctx * HD;
    const uint32_t sk0 = smem_u32(sk), sv0 = smem_u32(sv);
    auto load_tile = [&](int tile) {
        const int k0 = tile * kKeyTile;
        const uint32_t buf = uint32_t(tile & 1) * kTileHalves * 2;
        constexpr int kPieces = kKeyTile * HD / 8;  // 16-byte pieces per matrix
#pragma unroll
        for (int i = threadIdx.x; i < kPieces; i += kThreadsTc) {
            const int j = i / (HD / 8), c = i % (HD / 8);
            const bool live = k0 + j < n_keys;
            const size_t src = live ? size_t(k0 + j) * HD + c * 8 : 0;
            const uint32_t dst = buf + uint32_t(j * kStride + c * 8) * 2;
            cp_async16(sk0 + dst, kbase + src, live);
            cp_async16(sv0 + dst, vbase + src, live);
        }
        cp_async_commit();
    };
    load_tile(0);

    // This thread's two slots; padding slots past the end repeat the last real one (their
    // results are never stored), so every slot has a real row and at least key 0 unmasked.
    const int wslot = slot0 + warp * 16;
    const int sa = min(wslot + g8, n_slots - 1), sb = min(wslot + g8 + 8, n_slots - 1);
    const int ra = sa / group, rb = sb / group;
    const int qpos_a = pos0 + ra, qpos_b = pos0 + rb;
    const int w_keys = pos0 + min(wslot + 15, n_slots - 1) / group + 1;  // keys any slot of the warp sees
    const int w_unmasked = pos0 + min(wslot, n_slots - 1) / group + 1;  // keys all slots of the warp see

    const int ha = kvh * group + sa % group, hb = kvh * group + sb % group;
    uint32_t qf[KS][4];
    {
        const float qscale = 1.4426950408889634f / sqrtf(float(HD));
        const float* qa = q + (size_t(ra) * n_heads + ha) * HD;
        const float* qb = q + (size_t(rb) * n_heads + hb) * HD;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            const int d = 16 * ks + 2 * t4;
            const float2 x0 = *reinterpret_cast<const float2*>(qa + d);
            const float2 x1 = *reinterpret_cast<const float2*>(qb + d);
            const float2 x2 = *reinterpret_cast<const float2*>(qa + d + 8);
            const float2 x3 = *reinterpret_cast<const float2*>(qb + d + 8);
            qf[ks][0] = pack_half2(x0.x * qscale, x0.y * qscale);
            qf[ks][1] = pack_half2(x1.x * qscale, x1.y * qscale);
            qf[ks][2] = pack_half2(x2.x * qscale, x2.y * qscale);
            qf[ks][3] = pack_half2(x3.x * qscale, x3.y * qscale);
        }
    }

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    // Running max (log2 units) and this thread's share of the row sums; the shares of a quad
    // are added once at the end. The max stays -inf while all of a row's keys so far were
    // masked (only possible for key part 1, whose first keys are 32..63); exponents are then
    // taken against 0 instead, so no -inf - -inf appears and the row keeps l = 0, o = 0.
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

    for (int tile = 0; tile < n_tiles; ++tile) {
        if (tile + 1 < n_tiles) {
            load_tile(tile + 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int k0 = tile * kKeyTile;
        if (k0 + koff < w_keys) {  // warp-uniform: tiles wholly past this warp's rows are skipped
            const uint32_t kt = sk0 + uint32_t(tile & 1) * kTileHalves * 2;
            const uint32_t vt = sv0 + uint32_t(tile & 1) * kTileHalves * 2;
            float s[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
                // One ldmatrix.x4 gives the B fragments of two k-steps: matrices at dims +0, +8, +16, +24.
#pragma unroll
                for (int k2 = 0; k2 < KS / 2; ++k2) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4(kt + uint32_t((koff + 8 * nt + (lane & 7)) * kStride + 32 * k2 + (lane >> 3) * 8) * 2, b0, b1,
                            b2, b3);
                    mma16816(s[nt], qf[2 * k2], b0, b1);
                    mma16816(s[nt], qf[2 * k2 + 1], b2, b3);
                }
            }
            if (k0 + koff + kWarpKeys > w_unmasked) {  // causal mask, only on tiles that reach a diagonal
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int key = k0 + koff + 8 * nt + 2 * t4;
                    if (key > qpos_a) s[nt][0] = -INFINITY;
                    if (key + 1 > qpos_a) s[nt][1] = -INFINITY;
                    if (key > qpos_b) s[nt][2] = -INFINITY;
                    if (key + 1 > qpos_b) s[nt][3] = -INFINITY;
                }
            }
            float mx_a = m_a, mx_b = m_b;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                mx_a = fmaxf(mx_a, fmaxf(s[nt][0], s[nt][1]));
                mx_b = fmaxf(mx_b, fmaxf(s[nt][2], s[nt][3]));
            }
#pragma unroll
            for (int off = 1; off < 4; off <<= 1) {  // the quad holds the row's other columns
                mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, off));
                mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, off));
            }
            const float ref_a = mx_a == -INFINITY ? 0.0f : mx_a, ref_b = mx_b == -INFINITY ? 0.0f : mx_b;
            const float corr_a = exp2f(m_a - ref_a), corr_b = exp2f(m_b - ref_b);
            m_a = mx_a;
            m_b = mx_b;
            l_a *= corr_a;
            l_b *= corr_b;
#pragma unroll
            for (int i = 0; i < DT; ++i) {
                o[i][0] *= corr_a;
                o[i][1] *= corr_a;
                o[i][2] *= corr_b;
                o[i][3] *= corr_b;
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                s[nt][0] = exp2f(s[nt][0] - ref_a);
                s[nt][1] = exp2f(s[nt][1] - ref_a);
                s[nt][2] = exp2f(s[nt][2] - ref_b);
                s[nt][3] = exp2f(s[nt][3] - ref_b);
                l_a += s[nt][0] + s[nt][1];
                l_b += s[nt][2] + s[nt][3];
            }
            // P V: the score accumulators of key tiles 2c and 2c + 1 are exactly the A fragment
            // of keys 16c .. 16c + 15, so P never leaves registers.
#pragma unroll
            for (int c = 0; c < kWarpKeys / 16; ++c) {
                const uint32_t pa[4] = {pack_half2(s[2 * c][0], s[2 * c][1]), pack_half2(s[2 * c][2], s[2 * c][3]),
                                        pack_half2(s[2 * c + 1][0], s[2 * c + 1][1]),
                                        pack_half2(s[2 * c + 1][2], s[2 * c + 1][3])};
                // Transposed ldmatrix: matrices (keys +0, dims +0), (+8, +0), (+0, +8), (+8, +8).
#pragma unroll
                for (int d2 = 0; d2 < DT / 2; ++d2) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(vt + uint32_t((koff + 16 * c + (lane & 7) + ((lane >> 3) & 1) * 8) * kStride + 16 * d2 +
                                            (lane >> 4) * 8) *
                                       2,
                              b0, b1, b2, b3);
                    mma16816(o[2 * d2], pa, b0, b1);
                    mma16816(o[2 * d2 + 1], pa, b2, b3);
                }
            }
        }
        __syncthreads();  // the buffer just read is the next iteration's load target
    }

#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
    }
    if constexpr (SPLIT > 1) {
        // Parts 1.. hand their partials to part 0 through the (now idle) tile buffers, in fragment
        // order: the thread of the same lane in the partner warp reads exactly what it needs.
        // The loop's last barrier guarantees no warp still reads the tiles.
        float* xo = reinterpret_cast<float*>(smem_raw);   // [SPLIT - 1][WARPS][DT][32][4]
        float* xm = xo + (SPLIT - 1) * WARPS * DT * 128;  // [SPLIT - 1][WARPS][32][4]: m_a, m_b, l_a, l_b
        static_assert(size_t(SPLIT - 1) * WARPS * (DT + 1) * 128 * sizeof(float) <= 4 * kTileHalves * sizeof(__half),
                      "partials must fit in the tile buffers");
        if (part > 0) {
            const int x = (part - 1) * WARPS + warp;
#pragma unroll
            for (int i = 0; i < DT; ++i)
                *reinterpret_cast<float4*>(xo + ((x * DT + i) * 32 + lane) * 4) =
                    make_float4(o[i][0], o[i][1], o[i][2], o[i][3]);
            *reinterpret_cast<float4*>(xm + (x * 32 + lane) * 4) = make_float4(m_a, m_b, l_a, l_b);
        }
        __syncthreads();
        if (part > 0) return;
        // Part 0 always saw key 0, so its max is finite and so is every joint one; a part that
        // saw no key (max -inf) gets weight 0.
#pragma unroll
        for (int p = 1; p < SPLIT; ++p) {
            const int x = (p - 1) * WARPS + warp;
            const float4 pm = *reinterpret_cast<const float4*>(xm + (x * 32 + lane) * 4);
            const float mj_a = fmaxf(m_a, pm.x), mj_b = fmaxf(m_b, pm.y);
            const float w0a = exp2f(m_a - mj_a), w1a = exp2f(pm.x - mj_a);
            const float w0b = exp2f(m_b - mj_b), w1b = exp2f(pm.y - mj_b);
            m_a = mj_a;
            m_b = mj_b;
            l_a = l_a * w0a + pm.z * w1a;
            l_b = l_b * w0b + pm.w * w1b;
#pragma unroll
            for (int i = 0; i < DT; ++i) {
                const float4 po = *reinterpret_cast<const float4*>(xo + ((x * DT + i) * 32 + lane) * 4);
                o[i][0] = o[i][0] * w0a + po.x * w1a;
                o[i][1] = o[i][1] * w0a + po.y * w1a;
                o[i][2] = o[i][2] * w0b + po.z * w1b;
                o[i][3] = o[i][3] * w0b + po.w * w1b;
            }
        }
    }
    const float inv_a = 1.0f / l_a, inv_b = 1.0f / l_b;
    if (wslot + g8 < n_slots) {
        float* oa = out + (size_t(ra) * n_heads + ha) * HD + 2 * t4;
#pragma unroll
        for (int i = 0; i < DT; ++i) *reinterpret_cast<float2*>(oa + 8 * i) = make_float2(o[i][0] * inv_a, o[i][1] * inv_a);
    }
    if (wslot + g8 + 8 < n_slots) {
        float* ob = out + (size_t(rb) * n_heads + hb) * HD + 2 * t4;
#pragma unroll
        for (int i = 0; i < DT; ++i) *reinterpret_cast<float2*>(ob + 8 * i) = make_float2(o[i][2] * inv_b, o[i][3] * inv_b);
    }
}

template <int HD, int WARPS, int SPLIT>
void launch_tc(const AttentionArgs& a, cudaStream_t stream) {
    const auto kernel = attn_prefill_tc_kernel<HD, WARPS, SPLIT>;
    const size_t smem = size_t(4) * kKeyTile * (HD + 8) * sizeof(__half);  // K and V, two buffers each
    // Above 48 KiB (head_dim 128: 68 KiB) dynamic shared memory must be asked for per kernel.
    MN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const int slots = a.rows * (a.n_heads / a.n_kv_heads);
    const dim3 grid((slots + 16 * WARPS - 1) / (16 * WARPS), a.n_kv_heads);
    kernel<<<grid, 32 * WARPS * SPLIT, smem, stream>>>(a.q, static_cast<const __half*>(a.k_cache),
                                               static_cast<const __half*>(a.v_cache), a.n_ctx, a.pos0, a.rows,
                                               a.n_heads, a.n_kv_heads, a.out);
    MN_CUDA_CHECK_LAUNCH("attn_prefill_tc_kernel");
}

// The configuration as 10 * SPLIT + WARPS (slot groups per block): forced by prefill_tc 2, 4, 22,
// 24 or 42, else 22. Measured on an H100, 512-row prefill, us per layer (2 / 4 / 22 / 24 / 42):
// Qwen2.5-0.5B geometry (hd 64, 14/2 heads) 12.0 / 10.8 / 10.9 / 12.0 / 11.9; Qwen2.5-7B geometry
// (hd 128, 28/4 heads) 25.7 / 26.0 / 23.2 / 24.3 / 31.4 (the fp32 tile kernel: 85 and 234).
int pick_config(const AttentionArgs& a) {
    switch (a.prefill_tc) {
        case 2: case 4: case 22: case 24: case 42: return a.prefill_tc;
        default: return 22;
    }
}

template <int HD>
void launch_hd(const AttentionArgs& a, int config, cudaStream_t stream) {
    switch (config) {
        case 4: launch_tc<HD, 4, 1>(a, stream); break;
        case 24: launch_tc<HD, 4, 2>(a, stream); break;
        case 42: launch_tc<HD, 2, 4>(a, stream); break;
        case 2: launch_tc<HD, 2, 1>(a, stream); break;
        default: launch_tc<HD, 2, 2>(a, stream); break;
    }
}

}  // namespace

// Chunks of fewer rows keep the fp32 tile kernel: the same rows then get the same scores
// whether they arrive in one short chunk or another (a truncated cache continued, against a
// fresh run of the same tokens: equal to 1e-5), and the fp16 rounding of Q and P here would
// break that. Such chunks cost microseconds either way.
constexpr int kTensorCoreMinRows = 16;

bool attention_prefill_covers(const AttentionArgs& a) {
    return a.prefill_tc != 0 && a.f16_cache && a.rows >= kTensorCoreMinRows && (a.head_dim == 64 || a.head_dim == 128) &&
           a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0;
}

void launch_attention_prefill(const AttentionArgs& a, cudaStream_t stream) {
    if (!attention_prefill_covers(a)) throw Error("cuda attention: the tensor-core prefill kernel does not cover this shape");
    const int config = pick_config(a);
    if (a.head_dim == 64) launch_hd<64>(a, config, stream);
    else launch_hd<128>(a, config, stream);
}

}  // namespace mn::cuda
