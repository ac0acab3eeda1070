// AVX-512 VNNI microkernels for quant/panel_gemm.h.
//
// A tile of 2 weight rows x 4 activation rows keeps 8 float accumulators in
// registers. Per chunk of 256 elements and pair: four vpdpbusd (64 byte
// products each) summed into the same 16 int32 lanes, which panel order makes
// lanes of one 32-block each (lanes 2j, 2j + 1 <-> block j); then one
// int->float conversion, one multiply of the weight and activation scale
// vectors and one FMA (the closing half chunk: two vpdpbusd, lanes 4j..4j+3).
// Types whose scales change every 16 elements convert twice per chunk (the
// first vectors hold the first half of each block, the others the second).
// vpdpbusd does not saturate: |lane| <= 16 * 255 * 127 per chunk, far inside
// int32; each chunk's sums are converted before the next.
#include "quant/panel_gemm.h"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "common/cpu_features.h"
#include "common/error.h"

#if defined(METALLIC_HAVE_AVX512)
#include <immintrin.h>
#endif

namespace mn {

bool panel_gemm_available() { return isa_available(Isa::Avx512); }

#if defined(METALLIC_HAVE_AVX512)

namespace {

// kPanelTileRows x kPanelTileCols = 2 x 4 measured fastest of 1x4 .. 4x4 on
// Zen 4 (one 512-bit load per cycle: 6 loads feed 8 vpdpbusd).

// From a chunk's 16 group values (element order), the lane vector where lanes
// 2j, 2j + 1 hold group 2j + Odd (block j's first or second half).
template <int Odd>
inline __m512 spread(const float* g) {
    const __m512i idx = _mm512_setr_epi32(Odd, Odd, 2 + Odd, 2 + Odd, 4 + Odd, 4 + Odd, 6 + Odd, 6 + Odd, 8 + Odd,
                                          8 + Odd, 10 + Odd, 10 + Odd, 12 + Odd, 12 + Odd, 14 + Odd, 14 + Odd);
    return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(g));
}

// R weight rows x C activation rows. The chunk's 4 vectors are the outer
// loop, so each step issues R * C independent vpdpbusd: long dependent chains
// per pair (4 vpdpbusd, conversion, FMA) written one pair after another
// measured 2x slower, the out-of-order window being too small to overlap them.
// The same for a half chunk (4 blocks, lanes 4j .. 4j + 3 <-> block j), from
// its 8 group values.
template <int Odd>
inline __m512 spread_half(const float* g) {
    const __m512i idx = _mm512_setr_epi32(Odd, Odd, Odd, Odd, 2 + Odd, 2 + Odd, 2 + Odd, 2 + Odd, 4 + Odd, 4 + Odd,
                                          4 + Odd, 4 + Odd, 6 + Odd, 6 + Odd, 6 + Odd, 6 + Odd);
    return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(_mm256_loadu_ps(g)));
}

template <int R, int C, bool Groups16>
void tile(int64_t n_pad, const WeightPanel& w, int r0, const ActivationPanel& a, int c0, const PanelOutput& out) {
    const uint8_t* wq[R];
    const float *ws[R], *wo[R];
    const int8_t* aq[C];
    const float *as[C], *asum[C];
    for (int i = 0; i < R; ++i) {
        wq[i] = w.q + size_t(r0 + i) * w.q_stride;
        ws[i] = w.scale + size_t(r0 + i) * w.s_stride;
        wo[i] = w.offset + size_t(r0 + i) * w.s_stride;
    }
    for (int i = 0; i < C; ++i) {
        aq[i] = a.q + size_t(c0 + i) * a.q_stride;
        as[i] = a.scale + size_t(c0 + i) * a.s_stride;
        asum[i] = a.sum + size_t(c0 + i) * a.s_stride;
    }
    __m512 acc[R][C];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    // One chunk at element k: NV = 4 vectors (a full chunk) or 2 (the row's closing half chunk).
    auto chunk = [&](int64_t k, auto nv_tag) {
        constexpr int NV = decltype(nv_tag)::value;
        const int64_t g = k / 16;
        __m512i t[R][C];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
            for (int c = 0; c < C; ++c) t[r][c] = _mm512_setzero_si512();
        // Applies the scales to t (the products of vectors since the last call) and clears it.
        auto flush = [&](auto odd) {
            constexpr int Odd = decltype(odd)::value;
            __m512 asv[C];
#pragma GCC unroll 8
            for (int c = 0; c < C; ++c) asv[c] = NV == 4 ? spread<0>(as[c] + g) : spread_half<0>(as[c] + g);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const __m512 wsv = NV == 4 ? spread<Odd>(ws[r] + g) : spread_half<Odd>(ws[r] + g);
#pragma GCC unroll 8
                for (int c = 0; c < C; ++c) {
                    acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t[r][c]), _mm512_mul_ps(wsv, asv[c]), acc[r][c]);
                    t[r][c] = _mm512_setzero_si512();
                }
            }
        };
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            __m512i wv[R], av[C];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_si512(wq[r] + k + 64 * v);
#pragma GCC unroll 8
            for (int c = 0; c < C; ++c) av[c] = _mm512_loadu_si512(aq[c] + k + 64 * v);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
                for (int c = 0; c < C; ++c) t[r][c] = _mm512_dpbusd_epi32(t[r][c], wv[r], av[c]);
            // Groups of 16: the first half of each block is in vectors [0, NV/2), the second in the rest.
            if (Groups16 && v == NV / 2 - 1) flush(std::integral_constant<int, 0>{});
        }
        if constexpr (Groups16) flush(std::integral_constant<int, 1>{});
        else flush(std::integral_constant<int, 0>{});
    };
    int64_t k = 0;
    for (; k + kPanelChunk <= n_pad; k += kPanelChunk) chunk(k, std::integral_constant<int, 4>{});
    if (k < n_pad) chunk(k, std::integral_constant<int, 2>{});
    // Offsets: acc -= o_w[g] * (d sum(q_x))[g], 16 groups per step (n_pad / 16 is a multiple of 8).
    const int64_t groups = n_pad / 16;
    for (int64_t g = 0; g < groups; g += 16) {
        const __mmask16 m = groups - g >= 16 ? __mmask16(0xFFFF) : __mmask16(0x00FF);
        __m512 wov[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) wov[r] = _mm512_maskz_loadu_ps(m, wo[r] + g);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) {
            const __m512 sv = _mm512_maskz_loadu_ps(m, asum[c] + g);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fnmadd_ps(wov[r], sv, acc[r][c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c)
            if (r0 + r < out.rows && c0 + c < out.cols)
                out.p[size_t(r0 + r) * out.row_stride + size_t(c0 + c) * out.col_stride] = _mm512_reduce_add_ps(acc[r][c]);
}

}  // namespace

void quantize_activation_panel(const float* x, int64_t n, int levels, int8_t* q, size_t q_stride, float* scale,
                               float* sum, size_t s_stride) {
    const int64_t n_pad = (n + kPanelStep - 1) / kPanelStep * kPanelStep;
    alignas(64) float residual[32];
    // Codes are computed in element order (each level's residual needs the
    // previous level's codes), then every level is put in panel order.
    for (int level = 0; level < levels; ++level) {
        int8_t* ql = q + size_t(level) * q_stride;
        float* sl = scale + size_t(level) * s_stride;
        float* ul = sum + size_t(level) * s_stride;
        for (int64_t b = 0; b < n / 32; ++b) {
            __m512 v0, v1;
            if (level == 0) {
                v0 = _mm512_loadu_ps(x + 32 * b);
                v1 = _mm512_loadu_ps(x + 32 * b + 16);
            } else {  // the residual of the previous level's block
                const int8_t* qp = q + size_t(level - 1) * q_stride + 32 * b;
                const __m512 d = _mm512_set1_ps(scale[size_t(level - 1) * s_stride + 2 * b]);
                const float* base = level == 1 ? x + 32 * b : residual;
                const __m512 p0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)qp)));
                const __m512 p1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(qp + 16))));
                v0 = _mm512_fnmadd_ps(d, p0, _mm512_loadu_ps(base));
                v1 = _mm512_fnmadd_ps(d, p1, _mm512_loadu_ps(base + 16));
                _mm512_store_ps(residual, v0);
                _mm512_store_ps(residual + 16, v1);
            }
            const float amax = std::fmax(_mm512_reduce_max_ps(_mm512_abs_ps(v0)), _mm512_reduce_max_ps(_mm512_abs_ps(v1)));
            const float d = amax / 127.0f;
            const __m512 id = _mm512_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
            // Round to nearest; |code| <= 127 since |x| * 127 / amax <= 127.
            const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id));
            const __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
            _mm_storeu_si128((__m128i*)(ql + 32 * b), _mm512_cvtsepi32_epi8(i0));
            _mm_storeu_si128((__m128i*)(ql + 32 * b + 16), _mm512_cvtsepi32_epi8(i1));
            sl[2 * b] = sl[2 * b + 1] = d;
            ul[2 * b] = d * float(_mm512_reduce_add_epi32(i0));
            ul[2 * b + 1] = d * float(_mm512_reduce_add_epi32(i1));
        }
        std::memset(ql + n, 0, size_t(n_pad - n));
        for (int64_t g = n / 16; g < n_pad / 16; ++g) sl[g] = ul[g] = 0.0f;
    }
    for (int level = 0; level < levels; ++level)
        to_panel_order(reinterpret_cast<uint8_t*>(q + size_t(level) * q_stride), size_t(n_pad));
}

void panel_gemm(int64_t n_pad, const WeightPanel& w, int nr, const ActivationPanel& a, int nc, const PanelOutput& out) {
    // Activation columns outermost: a 4-column slab stays in L1 while the
    // band's weight rows (in L2) pass over it.
    for (int c0 = 0; c0 < nc; c0 += kPanelTileCols)
        for (int r0 = 0; r0 < nr; r0 += kPanelTileRows) {
            if (w.groups_of_16) tile<kPanelTileRows, kPanelTileCols, true>(n_pad, w, r0, a, c0, out);
            else tile<kPanelTileRows, kPanelTileCols, false>(n_pad, w, r0, a, c0, out);
        }
}

#else  // !METALLIC_HAVE_AVX512

void quantize_activation_panel(const float*, int64_t, int, int8_t*, size_t, float*, float*, size_t) {
    throw Error("panel GEMM: this binary has no AVX-512 kernels");
}
void panel_gemm(int64_t, const WeightPanel&, int, const ActivationPanel&, int, const PanelOutput&) {
    throw Error("panel GEMM: this binary has no AVX-512 kernels");
}

#endif

}  // namespace mn
