// Device code of the single-row integer matvec (matvec_q8.cu says how it works), shared by its
// kernels there and by the persistent decode-step kernel (decode_step.cu): the GGUF blocks as
// integer dot products, the input row quantized into shared memory, and a block's row groups.
#pragma once

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace mn::cuda::q8 {

// ---- weight blocks ---------------------------------------------------------------------------

// Weight loads: through the read-only cache from global memory, or (SH) from a copy that the
// block staged in shared memory with the same alignment modulo 16.
template <bool SH, typename V>
__device__ __forceinline__ V ldw(const V* p) {
    if constexpr (SH) return *p;
    else return __ldg(p);
}

// N 32-bit words starting at a 2-byte aligned address: N + 1 aligned loads and funnel shifts
// (the 32-element formats' blocks are 18, 22, 34 and 210 bytes long). Reads up to 2 bytes past
// the last word; weight allocations are padded for that (upload()), and so are staged copies.
template <int N, bool SH>
__device__ __forceinline__ void load_a2(const uint8_t* p, uint32_t w[N]) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const unsigned int* b = reinterpret_cast<const unsigned int*>(a & ~uintptr_t(3));
    const uint32_t sh = uint32_t(a & 2) * 8;
    uint32_t t[N + 1];
#pragma unroll
    for (int i = 0; i <= N; ++i) t[i] = ldw<SH>(b + i);
#pragma unroll
    for (int i = 0; i < N; ++i) w[i] = __funnelshift_r(t[i], t[i + 1], sh);
}

__device__ __forceinline__ float h2f_lo(uint32_t w) { return __half2float(__ushort_as_half(uint16_t(w & 0xFFFF))); }
__device__ __forceinline__ float h2f_hi(uint32_t w) { return __half2float(__ushort_as_half(uint16_t(w >> 16))); }

// Bits 0..3 of t to bit 4 of bytes 0..3 (the fifth bit of four 5-bit values).
__device__ __forceinline__ uint32_t spread4(uint32_t t) { return (((t & 0xFu) * 0x00204081u) & 0x01010101u) << 4; }

template <TensorType T>
struct Q8Unit;  // elems: weights per unit (one lane's step)
template <> struct Q8Unit<TensorType::Q4_0> { static constexpr int elems = 32; };
template <> struct Q8Unit<TensorType::Q4_1> { static constexpr int elems = 32; };
template <> struct Q8Unit<TensorType::Q5_0> { static constexpr int elems = 32; };
template <> struct Q8Unit<TensorType::Q5_1> { static constexpr int elems = 32; };
template <> struct Q8Unit<TensorType::Q8_0> { static constexpr int elems = 32; };
template <> struct Q8Unit<TensorType::Q4_K> { static constexpr int elems = 64; };
template <> struct Q8Unit<TensorType::Q5_K> { static constexpr int elems = 64; };
template <> struct Q8Unit<TensorType::Q6_K> { static constexpr int elems = 64; };

// The input blocks (of 32) that unit u multiplies: A, and B for 64-element units.
template <TensorType T>
__device__ __forceinline__ void unit_blocks(int u, int& A, int& B) {
    if constexpr (T == TensorType::Q6_K) {
        // u = 4 s + 2 h + p: chunks p and p + 2 of half h of super-block s (they share ql bytes).
        const int p = u & 1;
        A = 2 * u - p;
        B = A + 2;
    } else if constexpr (Q8Unit<T>::elems == 64) {
        A = 2 * u;
        B = A + 1;
    } else {
        A = B = u;
    }
}

// The weight bytes of unit u, loaded (the loads issued, not yet used).
struct UnitRaw {
    uint32_t q[8];  // 32 bytes of quants (16 for the 4-bit 32-element formats)
    uint32_t h[8];  // high bits (Q5_0/Q5_1: h[0]; Q5_K/Q6_K: 32 bytes)
    uint32_t s[4];  // header: K-quant scales in s[0..2]; d (and min) in s[3]
};

// A Q6_K unit's words: the 4-byte words under its 2-byte aligned fields (quants ql, high bits qh,
// the int8 scales; the f16 d alone), loaded (issued, not yet used); q6_finish shifts them into a
// UnitRaw. Apart so that q6_load_pair can issue two rows' loads before either is used.
struct Q6Words {
    uint32_t ql[9], qh[9], sc[3], d;
};
template <bool SH>
__device__ __forceinline__ void q6_issue(const uint8_t* row, int u, Q6Words& r, uint32_t& sh) {
    // 210-byte super-blocks (2-byte aligned): ql[128], qh[64], int8 scales[16], f16 d.
    const uint8_t* b = row + size_t(u >> 2) * 210;
    const int h = (u >> 1) & 1, p = u & 1;
    const uintptr_t a = reinterpret_cast<uintptr_t>(b);
    sh = uint32_t(a & 2) * 8;  // every field's offset is a multiple of 4: one shift for all
    const unsigned int* w = reinterpret_cast<const unsigned int*>(a & ~uintptr_t(3));
    const int oq = (64 * h + 32 * p) / 4, oh = (128 + 32 * h) / 4, os = (192 + 8 * h) / 4;
#pragma unroll
    for (int i = 0; i < 9; ++i) r.ql[i] = ldw<SH>(w + oq + i);
#pragma unroll
    for (int i = 0; i < 9; ++i) r.qh[i] = ldw<SH>(w + oh + i);
#pragma unroll
    for (int i = 0; i < 3; ++i) r.sc[i] = ldw<SH>(w + os + i);
    r.d = ldw<SH>(reinterpret_cast<const unsigned short*>(b + 208));
}
__device__ __forceinline__ void q6_finish(const Q6Words& r, uint32_t sh, UnitRaw& w) {
#pragma unroll
    for (int i = 0; i < 8; ++i) w.q[i] = __funnelshift_r(r.ql[i], r.ql[i + 1], sh);
#pragma unroll
    for (int i = 0; i < 8; ++i) w.h[i] = __funnelshift_r(r.qh[i], r.qh[i + 1], sh);
#pragma unroll
    for (int i = 0; i < 2; ++i) w.s[i] = __funnelshift_r(r.sc[i], r.sc[i + 1], sh);
    w.s[3] = r.d;
}

template <TensorType T, bool SH>
__device__ __forceinline__ void unit_load(const uint8_t* __restrict__ row, int u, UnitRaw& r) {
    if constexpr (T == TensorType::Q8_0) {
        const uint8_t* b = row + size_t(u) * 34;
        r.s[3] = ldw<SH>(reinterpret_cast<const unsigned short*>(b));
        load_a2<8, SH>(b + 2, r.q);
    } else if constexpr (T == TensorType::Q4_0) {
        const uint8_t* b = row + size_t(u) * 18;
        r.s[3] = ldw<SH>(reinterpret_cast<const unsigned short*>(b));
        load_a2<4, SH>(b + 2, r.q);
    } else if constexpr (T == TensorType::Q5_0) {
        const uint8_t* b = row + size_t(u) * 22;
        r.s[3] = ldw<SH>(reinterpret_cast<const unsigned short*>(b));
        load_a2<1, SH>(b + 2, r.h);
        load_a2<4, SH>(b + 6, r.q);
    } else if constexpr (T == TensorType::Q4_1) {  // 20-byte blocks: 4-byte aligned
        const unsigned int* b = reinterpret_cast<const unsigned int*>(row + size_t(u) * 20);
        r.s[3] = ldw<SH>(b);
#pragma unroll
        for (int i = 0; i < 4; ++i) r.q[i] = ldw<SH>(b + 1 + i);
    } else if constexpr (T == TensorType::Q5_1) {  // 24-byte blocks: 8-byte aligned
        const uint2* b = reinterpret_cast<const uint2*>(row + size_t(u) * 24);
        const uint2 x0 = ldw<SH>(b), x1 = ldw<SH>(b + 1), x2 = ldw<SH>(b + 2);
        r.s[3] = x0.x;
        r.h[0] = x0.y;
        r.q[0] = x1.x; r.q[1] = x1.y; r.q[2] = x2.x; r.q[3] = x2.y;
    } else if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K) {
        // 144 / 176-byte super-blocks: 16-byte aligned. Header: d, dmin, 12 bytes of 6-bit scales;
        // Q5_K then 32 bytes of fifth bits; then the nibbles, 32 bytes per pair of sub-blocks.
        constexpr bool q5 = T == TensorType::Q5_K;
        const uint8_t* b = row + size_t(u >> 2) * (q5 ? 176 : 144);
        const int p = u & 3;
        const uint4 hd = ldw<SH>(reinterpret_cast<const uint4*>(b));
        const uint4* qp = reinterpret_cast<const uint4*>(b + (q5 ? 48 : 16) + 32 * p);
        const uint4 q0 = ldw<SH>(qp), q1 = ldw<SH>(qp + 1);
        r.s[3] = hd.x;
        r.s[0] = hd.y; r.s[1] = hd.z; r.s[2] = hd.w;
        r.q[0] = q0.x; r.q[1] = q0.y; r.q[2] = q0.z; r.q[3] = q0.w;
        r.q[4] = q1.x; r.q[5] = q1.y; r.q[6] = q1.z; r.q[7] = q1.w;
        if constexpr (q5) {
            const uint4* hp = reinterpret_cast<const uint4*>(b + 16);
            const uint4 h0 = ldw<SH>(hp), h1 = ldw<SH>(hp + 1);
            r.h[0] = h0.x; r.h[1] = h0.y; r.h[2] = h0.z; r.h[3] = h0.w;
            r.h[4] = h1.x; r.h[5] = h1.y; r.h[6] = h1.z; r.h[7] = h1.w;
        }
    } else if constexpr (T == TensorType::Q6_K) {
        Q6Words w;
        uint32_t sh;
        q6_issue<SH>(row, u, w, sh);
        q6_finish(w, sh, r);
    }
}

// The dot product of unit u's weights (loaded in r) with the input blocks A (a[0..7], da)
// and, for 64-element units, B (a[8..15], db); da/db = (d, d * sum q) of those blocks.
template <TensorType T>
__device__ __forceinline__ float unit_dot(const UnitRaw& r, int u, const int a[16], float2 da, float2 db) {
    constexpr uint32_t m4 = 0x0F0F0F0Fu;
    if constexpr (T == TensorType::Q8_0) {
        int s = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = __dp4a(int(r.q[i]), a[i], s);
        return h2f_lo(r.s[3]) * da.x * float(s);
    } else if constexpr (T == TensorType::Q4_0 || T == TensorType::Q4_1 || T == TensorType::Q5_0 ||
                         T == TensorType::Q5_1) {
        constexpr bool five = T == TensorType::Q5_0 || T == TensorType::Q5_1;
        constexpr bool has_min = T == TensorType::Q4_1 || T == TensorType::Q5_1;
        int s = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            // byte j of word i: element 4i + j (low nibble) and 16 + 4i + j (high nibble)
            uint32_t lo = r.q[i] & m4, hi = (r.q[i] >> 4) & m4;
            if constexpr (five) {
                lo |= spread4(r.h[0] >> (4 * i));
                hi |= spread4(r.h[0] >> (4 * i + 16));
            }
            s = __dp4a(int(lo), a[i], s);
            s = __dp4a(int(hi), a[i + 4], s);
        }
        const float d = h2f_lo(r.s[3]);
        if constexpr (has_min) return d * da.x * float(s) + h2f_hi(r.s[3]) * da.y;
        else return d * (da.x * float(s) - (five ? 16.0f : 8.0f) * da.y);
    } else if constexpr (T == TensorType::Q4_K || T == TensorType::Q5_K) {
        constexpr bool q5 = T == TensorType::Q5_K;
        const int p = u & 3;
        // 6-bit scales and mins of sub-blocks 2p and 2p + 1: bytes 2(p & 1), +1 of each header word.
        const int sh = 16 * (p & 1);
        const uint32_t b0 = (r.s[0] >> sh) & 0xFFFFu, b1 = (r.s[1] >> sh) & 0xFFFFu, b2 = (r.s[2] >> sh) & 0xFFFFu;
        int sc0, sc1, m0, m1;
        if (p < 2) {
            sc0 = b0 & 63; sc1 = (b0 >> 8) & 63;
            m0 = b1 & 63; m1 = (b1 >> 8) & 63;
        } else {
            sc0 = (b2 & 0xF) | (((b0 >> 6) & 3) << 4);
            sc1 = ((b2 >> 8) & 0xF) | (((b0 >> 14) & 3) << 4);
            m0 = ((b2 >> 4) & 0xF) | (((b1 >> 6) & 3) << 4);
            m1 = ((b2 >> 12) & 0xF) | (((b1 >> 14) & 3) << 4);
        }
        int s0 = 0, s1 = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            uint32_t lo = r.q[i] & m4, hi = (r.q[i] >> 4) & m4;
            if constexpr (q5) {
                lo |= ((r.h[i] >> (2 * p)) & 0x01010101u) << 4;
                hi |= ((r.h[i] >> (2 * p + 1)) & 0x01010101u) << 4;
            }
            s0 = __dp4a(int(lo), a[i], s0);
            s1 = __dp4a(int(hi), a[i + 8], s1);
        }
        const float d = h2f_lo(r.s[3]), dmin = h2f_hi(r.s[3]);
        return d * (float(sc0) * da.x * float(s0) + float(sc1) * db.x * float(s1)) -
               dmin * (float(m0) * da.y + float(m1) * db.y);
    } else if constexpr (T == TensorType::Q6_K) {
        const int p = u & 1;
        // Chunk p: low nibbles of ql with bits 2p, 2p + 1 of qh as bits 4, 5; chunk p + 2: high
        // nibbles with bits 2p + 4, 2p + 5. The 6-bit values (0..63) go into __dp4a as they are and
        // the format's -32 comes off the sums as 32 * (the input's sum): the same integers as
        // subtracting 32 from every byte first (__vsub4: three instructions a word, 48 of a row's
        // unit), so the same float result. The input's sums are the same for both rows of a pair
        // (the compiler computes them once for the two inlined calls).
        const int sl = 4 - 2 * p, sr = 2 * p;
        int sa0 = 0, sa1 = 0, sb0 = 0, sb1 = 0, oa0 = 0, oa1 = 0, ob0 = 0, ob1 = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint32_t va = ((r.h[i] << sl) & 0x30303030u) | (r.q[i] & m4);
            const uint32_t vb = ((r.h[i] >> sr) & 0x30303030u) | ((r.q[i] >> 4) & m4);
            if (i < 4) {
                sa0 = __dp4a(int(va), a[i], sa0);
                sb0 = __dp4a(int(vb), a[i + 8], sb0);
                oa0 = __dp4a(0x20202020, a[i], oa0);
                ob0 = __dp4a(0x20202020, a[i + 8], ob0);
            } else {
                sa1 = __dp4a(int(va), a[i], sa1);
                sb1 = __dp4a(int(vb), a[i + 8], sb1);
                oa1 = __dp4a(0x20202020, a[i], oa1);
                ob1 = __dp4a(0x20202020, a[i + 8], ob1);
            }
        }
        sa0 -= oa0; sa1 -= oa1; sb0 -= ob0; sb1 -= ob1;
        // int8 scales of the 16-element halves: chunk p at bytes 2p, 2p + 1; chunk p + 2 at 2p + 4, 2p + 5.
        const uint32_t ca = r.s[0] >> (16 * p), cb = r.s[1] >> (16 * p);
        const float d = h2f_lo(r.s[3]);
        return d * (da.x * float(int(int8_t(ca & 0xFF)) * sa0 + int(int8_t((ca >> 8) & 0xFF)) * sa1) +
                     db.x * float(int(int8_t(cb & 0xFF)) * sb0 + int(int8_t((cb >> 8) & 0xFF)) * sb1));
    }
    return 0.0f;
}

struct Q8Params {
    MatvecJob jobs[kMaxMatvecJobs];
    int group_end[kMaxMatvecJobs];  // exclusive prefix sums of the jobs' row pairs (SwiGLU: of N)
    int n_jobs;
    int n_groups;  // group_end[n_jobs - 1]
    int K;
    int wpg;  // warps per row group: 1, 2 or 4 (long rows; the staged kernel also 8)
    // Lanes per row group when wpg is 1: 32, or (the staged kernel, short rows) 16, 8, 4 or 2,
    // so that a warp takes 32 / lpg groups at once.
    int lpg;
    int groups_per_block;  // staged kernel: each block's run of row groups
    int stage_bytes;       // staged kernel: shared-memory bytes for the weights (the input after)
    Q8Source src;
    float* swiglu_out;
#ifdef MN_CUDA_TRACE
    TraceSink trace;
#endif
};

// Loads of the quantized input: from the block's shared memory, or (PRE) from the row that
// launch_quantize_q8 wrote, through the read-only cache.
template <bool PRE, typename V>
__device__ __forceinline__ V ld_in(const V* p) {
    if constexpr (PRE) return __ldg(p);
    else return *p;
}

// Q6_K units of two rows from global memory, every load issued before any is used. Loaded as
// unit_load does it, ptxas placed the second row's loads (and some of the first's) after the first
// row's arithmetic to save registers (56-64 instead of 80), so a unit took two or three memory
// round trips; the Q6_K products ran at 69-86% of a plain read of their bytes. H100,
// bench/micro/matvec_q8_bandwidth.cu: the 7B output head 168 -> 147 us (98% of the read), its down
// projection 27.6 -> 24.9 us. The xor of a unit's words (q6_fold) is made a dependency of every
// later instruction (through the funnel shifts' amount, or'ed with it and'ed with a zero the
// compiler cannot see), so ptxas must issue all of both rows' loads first. (An empty asm statement
// taking the words does not do it: it leaves nothing in the PTX that ptxas schedules around.)
__device__ __forceinline__ uint32_t q6_fold(const Q6Words& r) {
    uint32_t x = r.d;
#pragma unroll
    for (int i = 0; i < 9; ++i) x ^= r.ql[i] ^ r.qh[i];
#pragma unroll
    for (int i = 0; i < 3; ++i) x ^= r.sc[i];
    return x;
}
__device__ __forceinline__ void q6_load_pair(const uint8_t* r0, const uint8_t* r1, int u, uint32_t zero,
                                             UnitRaw& w0, UnitRaw& w1) {
    Q6Words a, b;
    uint32_t sa, sb;
    q6_issue<false>(r0, u, a, sa);
    q6_issue<false>(r1, u, b, sb);
    const uint32_t dep = (q6_fold(a) ^ q6_fold(b)) & zero;
    q6_finish(a, sa | dep, w0);
    q6_finish(b, sb | dep, w1);
}

// A warp's (part of the) dot products of two weight rows with the quantized input.
template <TensorType T, bool PRE, bool SH = false>
__device__ __forceinline__ void rows_q8(const uint8_t* __restrict__ r0, const uint8_t* __restrict__ r1, int K,
                                        const int8_t* aq, const float2* ads, int first, int stride, float acc[2]) {
    constexpr int E = Q8Unit<T>::elems;
    const int U = K / E;
    for (int u = first; u < U; u += stride) {
        UnitRaw w0, w1;
        if constexpr (T == TensorType::Q6_K && !SH) {
            q6_load_pair(r0, r1, u, uint32_t(K) >> 31, w0, w1);  // K > 0: a zero
        } else {
            unit_load<T, SH>(r0, u, w0);
            unit_load<T, SH>(r1, u, w1);
        }
        int A, B;
        unit_blocks<T>(u, A, B);
        int a[16];
        const int4* pa = reinterpret_cast<const int4*>(aq + 32 * A);
        const int4 x0 = ld_in<PRE>(pa), x1 = ld_in<PRE>(pa + 1);
        a[0] = x0.x; a[1] = x0.y; a[2] = x0.z; a[3] = x0.w; a[4] = x1.x; a[5] = x1.y; a[6] = x1.z; a[7] = x1.w;
        const float2 da = ld_in<PRE>(ads + A);
        float2 db = da;
        if constexpr (E == 64) {
            const int4* pb = reinterpret_cast<const int4*>(aq + 32 * B);
            const int4 y0 = ld_in<PRE>(pb), y1 = ld_in<PRE>(pb + 1);
            a[8] = y0.x; a[9] = y0.y; a[10] = y0.z; a[11] = y0.w; a[12] = y1.x; a[13] = y1.y; a[14] = y1.z; a[15] = y1.w;
            db = ld_in<PRE>(ads + B);
        } else {
#pragma unroll
            for (int i = 8; i < 16; ++i) a[i] = 0;
        }
        acc[0] += unit_dot<T>(w0, u, a, da, db);
        acc[1] += unit_dot<T>(w1, u, a, da, db);
    }
}

// Loads of the float row: through the read-only cache, or (COHERENT) from L2, for a kernel that
// reads rows other blocks of the same launch wrote (decode_step.cu: the read-only path is not
// kept coherent within a launch).
template <bool COHERENT>
__device__ __forceinline__ float4 ldx(const float* p) {
    if constexpr (COHERENT) return __ldcg(reinterpret_cast<const float4*>(p));
    else return __ldg(reinterpret_cast<const float4*>(p));
}

// v.x^2 + v.y^2 + v.z^2 + v.w^2 in double (the rms_norm sums of squares).
__device__ __forceinline__ double sum_sq(float4 v) {
    return double(v.x) * v.x + double(v.y) * v.y + double(v.z) * v.z + double(v.w) * v.w;
}

// The block's sum of x * x over its threads' partial sums (double), as 1 / rms (BAR: the block
// barrier, block_bar's).
template <int THREADS, int BAR = 0>
__device__ __forceinline__ float block_inv_rms(double ss, int K, float eps) {
    constexpr int kWarps = THREADS / 32;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    __shared__ double part[kWarps];
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    block_bar<BAR, THREADS>();
    double t = 0.0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += part[w];
    return inv_rms(t, K, eps);
}

// This thread's norm weights of the row's first round trip, loaded before the kernel's wait
// (they are constant), so that after the wait the row is the only round trip to L2 (the
// staged kernel). Traced on the H100 (0.5B geometry): the staged matvecs' input was quantized
// 1.06-1.12 us after the wait instead of 1.57 (median over blocks).
struct NormAhead {
    float w[8];
};
// Eight norm weights from p (16-byte aligned) through the read-only cache.
__device__ __forceinline__ void load_norm8(const float* p, float w[8]) {
    const float4 c = __ldg(reinterpret_cast<const float4*>(p)), d = __ldg(reinterpret_cast<const float4*>(p) + 1);
    w[0] = c.x; w[1] = c.y; w[2] = c.z; w[3] = c.w;
    w[4] = d.x; w[5] = d.y; w[6] = d.z; w[7] = d.w;
}
__device__ __forceinline__ void load_norm_ahead(const Q8Source& src, int K, NormAhead& na) {
    const int i = 8 * threadIdx.x;
    if (src.norm_weight && i < K) load_norm8(src.norm_weight + i, na.w);
}

// What a quantizing kernel knows of its input row at compile time. The staged kernel is compiled
// for each case, so that a launch runs only its own code: the rms_norm paths were ~14 KB of a Q5_0
// staged kernel's 31 KB of sm_90 code (now 17.7 KB without a norm, 24.4 KB with a one-pass one),
// and instruction fetch is a measured part of these kernels' cost. H100, 0.5B geometry, tg128
// top_k=1, same lease, alternating: 1,718-1,720 tok/s against 1,674-1,682 with one kernel for all.
enum RowNorm : int {
    kNormAtRuntime = -1,  // src.norm_weight decides, and K the passes
    kNormNone = 0,        // no rms_norm (src.norm_weight is null)
    kNormOnePass = 1,     // rms_norm, K <= THREADS * 8 (one pass)
    kNormPasses = 2,      // rms_norm, K > THREADS * 8
};
// The case of a row of K values (norm: rms-normalized) for blocks of THREADS threads (one pass:
// the row fits quantize_row_to_shared's one trip of THREADS * 8 values).
template <int THREADS>
constexpr RowNorm row_norm_kind(bool norm, int K) {
    return !norm ? kNormNone : K <= THREADS * 8 ? kNormOnePass : kNormPasses;
}
// Quantizes the float row (rms-normalized and scaled when src.norm_weight is set) into the
// block's shared memory exactly as quantize_q8_kernel does. Lane groups of 4 take a block of
// 32 (8 values per lane, two 16-byte loads), kTrips groups per thread per round trip to L2.
// One trip, so rows wider than THREADS * 8 take several round trips: the loop's code is 8.7 KB
// smaller than with 4 unrolled trips (38.9 vs 30.2 KB for a Q5_0 SwiGLU staged kernel), and
// instruction fetch is a measured part of these kernels' stalls (Nsight Compute, H100): the
// 0.5B geometry decoded at 1,441-1,453 tok/s with 1 trip vs 1,399-1,409 with 4, same lease,
// although its down projection's 4864-wide row then takes 3 round trips. Rows that one pass
// covers are read once (the sum of squares from the registers): each read is a round trip to
// L2 (COHERENT) or L1. `ahead`: this thread's first norm weights, loaded before the wait.
// NORM: the row's case when the caller knows it (the row must then be that case). BAR: the block
// barrier (block_bar's; the block's first THREADS threads call it).
template <int THREADS, bool COHERENT = false, RowNorm NORM = kNormAtRuntime, int BAR = 0>
__device__ __forceinline__ void quantize_row_to_shared(const Q8Source& src, int K, int8_t* sq, float2* sd,
                                                       const NormAhead* ahead = nullptr) {
    constexpr int kTrips = 1;
    constexpr int kPerTrip = THREADS * 8;
    const int tid = threadIdx.x;
    const bool norm = NORM == kNormAtRuntime ? src.norm_weight != nullptr : NORM != kNormNone;
    const bool one_pass = NORM == kNormAtRuntime ? K <= kTrips * kPerTrip : NORM == kNormOnePass;
    float inv = 1.0f;
    if (norm && !one_pass) {
        double ss = 0.0;
        for (int i = 4 * tid; i < K; i += 4 * THREADS) {
            const float4 v = ldx<COHERENT>(src.x + i);
            ss += sum_sq(v);
        }
        inv = block_inv_rms<THREADS, BAR>(ss, K, src.eps);
    }
    const bool write_norm = norm && src.norm_out && blockIdx.x == 0;
    for (int base = 0; base < K; base += kTrips * kPerTrip) {
        float v[kTrips][8];
#pragma unroll
        for (int t = 0; t < kTrips; ++t) {
            const int i = base + t * kPerTrip + 8 * tid;
            if (i < K) {
                const float4 a = ldx<COHERENT>(src.x + i), b = ldx<COHERENT>(src.x + i + 4);
                v[t][0] = a.x; v[t][1] = a.y; v[t][2] = a.z; v[t][3] = a.w;
                v[t][4] = b.x; v[t][5] = b.y; v[t][6] = b.z; v[t][7] = b.w;
            }
        }
        if (norm && one_pass) {  // one trip of the loop: every thread is here
            double ss = 0.0;
#pragma unroll
            for (int t = 0; t < kTrips; ++t)
                if (base + t * kPerTrip + 8 * tid < K)
#pragma unroll
                    for (int e = 0; e < 8; ++e) ss += double(v[t][e]) * v[t][e];
            inv = block_inv_rms<THREADS, BAR>(ss, K, src.eps);
        }
        if (norm) {
#pragma unroll
            for (int t = 0; t < kTrips; ++t) {
                const int i = base + t * kPerTrip + 8 * tid;
                if (i < K) {
                    float w8[8];
                    if (ahead && base == 0 && t == 0) {
#pragma unroll
                        for (int e = 0; e < 8; ++e) w8[e] = ahead->w[e];
                    } else {
                        load_norm8(src.norm_weight + i, w8);
                    }
#pragma unroll
                    for (int e = 0; e < 8; ++e) v[t][e] = v[t][e] * inv * w8[e];
                }
            }
        }
#pragma unroll
        for (int t = 0; t < kTrips; ++t) {
            const int i = base + t * kPerTrip + 8 * tid;
            // K is a multiple of 32: the 4 lanes of a block are all in or all out.
            const unsigned live = __ballot_sync(0xffffffffu, i < K);
            if (i >= K) continue;
            if (write_norm) {
                float4* po = reinterpret_cast<float4*>(src.norm_out + i);
                po[0] = make_float4(v[t][0], v[t][1], v[t][2], v[t][3]);
                po[1] = make_float4(v[t][4], v[t][5], v[t][6], v[t][7]);
            }
            float amax = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; ++e) amax = fmaxf(amax, fabsf(v[t][e]));
            amax = fmaxf(amax, __shfl_xor_sync(live, amax, 1));
            amax = fmaxf(amax, __shfl_xor_sync(live, amax, 2));
            const float d = amax / 127.0f;
            const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
            int q[8], qsum = 0;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                q[e] = __float2int_rn(v[t][e] * id);
                qsum += q[e];
            }
            qsum += __shfl_xor_sync(live, qsum, 1);
            qsum += __shfl_xor_sync(live, qsum, 2);
            int2 packed;
            packed.x = (q[0] & 0xFF) | ((q[1] & 0xFF) << 8) | ((q[2] & 0xFF) << 16) | (int(uint32_t(q[3]) << 24));
            packed.y = (q[4] & 0xFF) | ((q[5] & 0xFF) << 8) | ((q[6] & 0xFF) << 16) | (int(uint32_t(q[7]) << 24));
            *reinterpret_cast<int2*>(sq + i) = packed;
            if ((tid & 3) == 0) sd[i >> 5] = make_float2(d, d * float(qsum));
        }
    }
}

// The rows of row group `group`: its job j, first output row n0, and the two weight rows r0, r1
// (SwiGLU: row n0 of gate and of up). False when the group is past the last job's rows.
template <bool SWIGLU>
__device__ __forceinline__ bool group_rows(const Q8Params& p, int group, int& j, int& n0, const uint8_t*& r0,
                                           const uint8_t*& r1) {
    j = 0;
    while (j < p.n_jobs && group >= p.group_end[j]) ++j;
    if (j >= p.n_jobs || (SWIGLU && j > 0)) return false;
    if (SWIGLU) {
        const QMatrix& g = p.jobs[0].w;
        const QMatrix& u = p.jobs[1].w;
        n0 = group;
        r0 = g.data + size_t(n0) * g.row_bytes;
        r1 = u.data + size_t(n0) * u.row_bytes;
    } else {
        const QMatrix& m = p.jobs[j].w;
        n0 = 2 * (group - (j ? p.group_end[j - 1] : 0));
        r0 = m.data + size_t(n0) * m.row_bytes;
        // An odd last row is computed twice (so that no branch separates the two rows' loads).
        r1 = n0 + 1 < m.N ? r0 + m.row_bytes : r0;
    }
    return true;
}

// A row group's outputs: bias, the residual add, or SwiGLU (the two rows are gate and up).
template <bool SWIGLU>
__device__ __forceinline__ void store_group(const Q8Params& p, int j, int n0, const float acc[2]) {
    if (SWIGLU) {
        const MatvecJob& g = p.jobs[0];
        const MatvecJob& u = p.jobs[1];
        const int n = n0;
        const float gv = acc[0] + (g.bias ? g.bias[n] : 0.0f);
        const float uv = acc[1] + (u.bias ? u.bias[n] : 0.0f);
        if (g.out != p.swiglu_out) g.out[n] = gv;
        u.out[n] = uv;
        p.swiglu_out[n] = gv / (1.0f + expf(-gv)) * uv;
        return;
    }
    // Every load before any store: a store could alias a later load as far as the compiler knows,
    // so interleaved, the second row's bias and residual loads each waited behind the stores
    // before them (up to four round trips to L2 where one does; out and residual never alias,
    // CudaBackend::add checks it).
    const MatvecJob& job = p.jobs[j];
    const bool two = n0 + 1 < job.w.N;
    float v[2] = {acc[0], acc[1]}, res[2] = {0.0f, 0.0f};
    if (job.bias) {
        v[0] += __ldg(job.bias + n0);
        if (two) v[1] += __ldg(job.bias + n0 + 1);
    }
    if (job.residual) {
        res[0] = job.residual[n0];
        if (two) res[1] = job.residual[n0 + 1];
    }
    job.out[n0] = v[0];
    if (two) job.out[n0 + 1] = v[1];
    if (job.residual) {
        job.residual[n0] = res[0] + v[0];
        if (two) job.residual[n0 + 1] = res[1] + v[1];
    }
}

// The block's warps on one row group each (wpg warps per group): the two rows' dot products,
// summed over the group's warps, stored by its first lane. Every warp of the block calls it
// (live or not): it synchronizes the block when wpg > 1 (BAR, THREADS: block_bar's). SH: the rows
// are in shared memory.
template <bool SWIGLU, TensorType FIXED, bool PRE, bool SH, int BAR = 0, int THREADS = 0>
__device__ __forceinline__ void group_pass(const Q8Params& p, bool live, int j, int n0, const uint8_t* r0,
                                           const uint8_t* r1, const int8_t* sq, const float2* sd,
                                           float (*red)[2]) {
    const int wi = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wpg = p.wpg, sub = wi % wpg, lpg = p.lpg;
    const int li = lane & (lpg - 1);  // the lane within its group (lpg < 32: wpg is 1, sub 0)
    const int first = li + 32 * sub, stride = lpg * wpg;
    float acc[2] = {0.0f, 0.0f};
    if (live && FIXED != TensorType::F32) {
        rows_q8<FIXED == TensorType::F32 ? TensorType::Q8_0 : FIXED, PRE, SH>(r0, r1, p.K, sq, sd, first, stride, acc);
    } else if (live) {
#define MN_CASE(T) \
    case T: rows_q8<T, PRE, SH>(r0, r1, p.K, sq, sd, first, stride, acc); break;
        switch (p.jobs[j].w.type) {
            MN_CASE(TensorType::Q4_0)
            MN_CASE(TensorType::Q4_1)
            MN_CASE(TensorType::Q5_0)
            MN_CASE(TensorType::Q5_1)
            MN_CASE(TensorType::Q8_0)
            MN_CASE(TensorType::Q4_K)
            MN_CASE(TensorType::Q5_K)
            MN_CASE(TensorType::Q6_K)
            default: break;  // the launcher only sends these types
        }
#undef MN_CASE
    }
    // The sums over the group's lanes (xor offsets below lpg stay inside the group).
    for (int o = lpg >> 1; o > 0; o >>= 1) {
        acc[0] += __shfl_xor_sync(0xffffffffu, acc[0], o);
        acc[1] += __shfl_xor_sync(0xffffffffu, acc[1], o);
    }
    if (wpg > 1) {
        if (lane == 0) {
            red[wi][0] = acc[0];
            red[wi][1] = acc[1];
        }
        block_bar<BAR, THREADS>();
        if (sub == 0) {
            for (int w = 1; w < wpg; ++w) {
                acc[0] += red[wi + w][0];
                acc[1] += red[wi + w][1];
            }
        }
        block_bar<BAR, THREADS>();  // red is written again by the next group
    }
    if (live && sub == 0 && li == 0) store_group<SWIGLU>(p, j, n0, acc);
}

// Rows [n_lo, n_hi) of job j that the groups [g_begin, g_end) cover (n_lo == n_hi: none).
template <bool SWIGLU>
__device__ __forceinline__ void job_rows(const Q8Params& p, int j, int g_begin, int g_end, int& n_lo, int& n_hi) {
    n_lo = n_hi = 0;
    if (SWIGLU) {
        if (j < 2) n_lo = g_begin, n_hi = g_end;  // gate and up: the same rows
        return;
    }
    const int gs = j ? p.group_end[j - 1] : 0;
    const int lo = max(g_begin, gs), hi = min(g_end, p.group_end[j]);
    if (lo >= hi) return;
    n_lo = 2 * (lo - gs);
    n_hi = min(2 * (hi - gs), p.jobs[j].w.N);
}

// Host side (matvec_q8.cu). The parameters of a launch over these jobs (validated: an mn::Error
// names what is wrong), without a grid plan (wpg, groups_per_block, stage_bytes).
Q8Params make_params(const MatvecJob* jobs, int n_jobs, int K, const Q8Source& src, float* swiglu_out);
// Elements per unit (a lane's step) of type t.
constexpr int unit_elems(TensorType t) {
    return t == TensorType::Q4_K || t == TensorType::Q5_K || t == TensorType::Q6_K ? 64 : 32;
}
// The row groups of one launch over these jobs: how many, the weight bytes of the largest (two
// rows), the smallest unit of the jobs' types (elements) and the jobs' weight bytes in all.
struct GroupShape {
    int groups = 0;
    size_t group_bytes = 0;
    int unit_elems = 64;
    size_t weight_bytes = 0;
};
GroupShape group_shape(const MatvecJob* jobs, int n_jobs, bool swiglu);
// The shared-memory bytes stage_rows lays out for groups_per_block groups of that shape: per job
// up to 15 bytes before and after for the 16-byte alignment and 16 spare; a multiple of 16.
size_t staged_bytes(const GroupShape& shape, int groups_per_block, int n_jobs);
// Warps per row group: enough for a lane per unit of a row of `units` units (of the jobs'
// smallest kind), as far as a block's `warps` go round its groups.
int warps_per_group(int units, int groups_per_block, int warps);
// Lanes per group for rows a warp covers (wpg 1): the fewest passes at a modest reduction cost.
int lanes_per_group(int units, int groups_per_block, int warps);

// The weight rows of row groups [g_begin, g_end), job by job, into `stage` with cp.async (issued
// only when `issue`; the layout is computed either way): job j's global bytes from src[j]
// (16-byte aligned) land at stage + off[j], so that every address keeps its alignment modulo
// 16, which the block loads rely on. Returns the bytes the layout takes.
// bytes (if given): each job's byte count there (0: none of its rows).
template <bool SWIGLU, int THREADS>
__device__ __forceinline__ int stage_rows(const Q8Params& p, int g_begin, int g_end, uint8_t* stage,
                                          const uint8_t* src[kMaxMatvecJobs], int off[kMaxMatvecJobs], bool issue,
                                          int* bytes_out = nullptr) {
    int used = 0;
    // Not unrolled: 3-6 KB less code per staged kernel (instruction fetch is part of their
    // stalls); H100, same lease, alternating, 0.5B geometry tg128: 1,464-1,473 vs 1,409-1,459.
#pragma unroll 1
    for (int j = 0; j < kMaxMatvecJobs; ++j) {
        src[j] = nullptr;
        off[j] = 0;
        if (bytes_out) bytes_out[j] = 0;
        int n_lo = 0, n_hi = 0;
        if (j < p.n_jobs) job_rows<SWIGLU>(p, j, g_begin, g_end, n_lo, n_hi);
        if (n_lo >= n_hi) continue;
        const QMatrix& m = p.jobs[j].w;
        const uintptr_t b = reinterpret_cast<uintptr_t>(m.data + size_t(n_lo) * m.row_bytes);
        const uintptr_t e = reinterpret_cast<uintptr_t>(m.data + size_t(n_hi) * m.row_bytes);
        const uintptr_t a = b & ~uintptr_t(15);
        // Rounded up to 16: at most 14 bytes past the tensor, inside upload()'s 16 spare bytes.
        const int bytes = int(((e + 15) & ~uintptr_t(15)) - a);
        src[j] = reinterpret_cast<const uint8_t*>(a);
        off[j] = used;
        if (bytes_out) bytes_out[j] = bytes;
        if (issue)
            for (int c = 16 * int(threadIdx.x); c < bytes; c += 16 * THREADS)
                cp_async16(smem_u32(stage + used + c), src[j] + c, true);
        used += bytes + 16;  // + 16: load_a2 reads up to 2 bytes past a block
    }
    return used;
}

}  // namespace mn::cuda::q8
