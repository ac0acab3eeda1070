// AVX-512 VNNI microkernels for quant/panel_gemm.h.
//
// A 4 x 4 tile of (weight row, activation row) pairs keeps 16 float
// accumulators in registers. Per step of 64 elements: 4 weight and 4
// activation loads, and per pair one vpdpbusd (64 byte products summed into 16
// int32 lanes, 4 elements per lane), one int->float conversion, one multiply of
// the two scale vectors and one FMA. The 16 lanes cover 4 groups of 16, so a
// lane's scales are its group's: the per-group scales are spread to lanes with
// one permute per row per step, shared by the 4 pairs of that row.
// vpdpbusd does not saturate and |sum| <= 64 * 255 * 127 per lane per step, far
// inside int32; each step's sums are converted before the next.
#include "quant/panel_gemm.h"

#include <cmath>
#include <cstring>

#include "common/cpu_features.h"
#include "common/error.h"

#if defined(METALLIC_HAVE_AVX512)
#include <immintrin.h>
#endif

namespace mn {

bool panel_gemm_available() { return isa_available(Isa::Avx512); }

#if defined(METALLIC_HAVE_AVX512)

namespace {

// Lane l of a 64-element step belongs to group l / 4 of the step's 4 groups.
inline __m512 spread_groups(const float* g) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(g)));
}

void tile_4x4(int64_t n_pad, const WeightPanel& w, int r0, const ActivationPanel& a, int c0, float* out,
              size_t out_stride) {
    const uint8_t* wq[4];
    const float *ws[4], *wo[4];
    const int8_t* aq[4];
    const float *as[4], *asum[4];
    for (int i = 0; i < 4; ++i) {
        wq[i] = w.q + size_t(r0 + i) * w.q_stride;
        ws[i] = w.scale + size_t(r0 + i) * w.s_stride;
        wo[i] = w.offset + size_t(r0 + i) * w.s_stride;
        aq[i] = a.q + size_t(c0 + i) * a.q_stride;
        as[i] = a.scale + size_t(c0 + i) * a.s_stride;
        asum[i] = a.sum + size_t(c0 + i) * a.s_stride;
    }
    __m512 acc[4][4];
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t k = 0; k < n_pad; k += kPanelStep) {
        __m512i wv[4];
        __m512 wsv[4];
        for (int r = 0; r < 4; ++r) {
            wv[r] = _mm512_loadu_si512(wq[r] + k);
            wsv[r] = spread_groups(ws[r] + k / 16);
        }
        for (int c = 0; c < 4; ++c) {
            const __m512i av = _mm512_loadu_si512(aq[c] + k);
            const __m512 asv = spread_groups(as[c] + k / 16);
            for (int r = 0; r < 4; ++r) {
                const __m512i t = _mm512_dpbusd_epi32(zero, wv[r], av);
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(wsv[r], asv), acc[r][c]);
            }
        }
    }
    // Offsets: acc -= o_w[g] * (d sum(q_x))[g], 16 groups per step, the tail masked.
    const int64_t groups = n_pad / 16;
    for (int64_t g = 0; g < groups; g += 16) {
        const __mmask16 m = groups - g >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (groups - g)) - 1);
        __m512 wov[4];
        for (int r = 0; r < 4; ++r) wov[r] = _mm512_maskz_loadu_ps(m, wo[r] + g);
        for (int c = 0; c < 4; ++c) {
            const __m512 sv = _mm512_maskz_loadu_ps(m, asum[c] + g);
            for (int r = 0; r < 4; ++r) acc[r][c] = _mm512_fnmadd_ps(wov[r], sv, acc[r][c]);
        }
    }
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) out[size_t(r0 + r) * out_stride + c0 + c] = _mm512_reduce_add_ps(acc[r][c]);
}

}  // namespace

void quantize_activation_panel(const float* x, int64_t n, int levels, int8_t* q, size_t q_stride, float* scale,
                               float* sum, size_t s_stride) {
    const int64_t n_pad = (n + kPanelStep - 1) / kPanelStep * kPanelStep;
    alignas(64) float residual[32];
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
                v0 = _mm512_fnmadd_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)qp))),
                                      _mm512_loadu_ps(base));
                v1 = _mm512_fnmadd_ps(d,
                                      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(qp + 16)))),
                                      _mm512_loadu_ps(base + 16));
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
}

void panel_gemm(int64_t n_pad, const WeightPanel& w, int nr, const ActivationPanel& a, int nc, float* out,
                size_t out_stride) {
    // Activation columns outermost: a 4-column slab stays in L1 while the
    // band's weight rows (in L2) pass over it.
    for (int c0 = 0; c0 < nc; c0 += 4)
        for (int r0 = 0; r0 < nr; r0 += 4) tile_4x4(n_pad, w, r0, a, c0, out, out_stride);
}

#else  // !METALLIC_HAVE_AVX512

void quantize_activation_panel(const float*, int64_t, int, int8_t*, size_t, float*, float*, size_t) {
    throw Error("panel GEMM: this binary has no AVX-512 kernels");
}
void panel_gemm(int64_t, const WeightPanel&, int, const ActivationPanel&, int, float*, size_t) {
    throw Error("panel GEMM: this binary has no AVX-512 kernels");
}

#endif

}  // namespace mn
