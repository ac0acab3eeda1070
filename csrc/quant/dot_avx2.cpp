// AVX2 dot-product kernels (integer block products, fp32 accumulation).
//
// Structure: a driver walks the weight rows and, for each, the activation rows
// in groups of up to 4 (NC). A kernel instantiated for NC decodes each weight
// block ONCE into byte registers and multiplies it with the NC activation
// blocks, so prefill tiles (nc = 4..8) pay the weight decode once per 4
// columns, and decode (nc = 1) streams the weights once.
//
// Byte products use _mm256_maddubs_epi16 (unsigned x signed -> pairwise int16
// sums), then _mm256_madd_epi16 with 1 or with the sub-block scale (-> int32):
//   - weights with an offset (Q4_0: q-8, Q5_0: q-16, Q8_0) are made signed and
//     multiplied as |w| * (a with w's sign) (_mm256_sign_epi8); this needs
//     |a| <= 127, which quantize_row guarantees;
//   - K-quant weights stay unsigned (0..63) and their offsets / minimums are
//     applied once per super-block through the activation's bsums.
// int16 saturation cannot happen: |pair sum| <= 2 * 128 * 127 = 32512 (sign
// trick) or 2 * 63 * 127 = 16002 (unsigned weights).
#if defined(METALLIC_HAVE_AVX2)

#include <immintrin.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "quant/avx2_util.h"
#include "quant/blocks.h"
#include "quant/kernels.h"

namespace mn::detail {
namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// sum of w[i] * a[i] over pairs -> 8 int32 lanes, w unsigned bytes, a signed.
inline __m256i dot_us(__m256i w, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
}
// Same for signed w: |w| * (a carrying w's sign).
inline __m256i dot_ss(__m256i w, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)),
                             _mm256_set1_epi16(1));
}
// Pairwise int16 products of unsigned w and signed a, then weighted by the
// int16 scales in `sc` (lanes 0-7 = first 16 elements, lanes 8-15 = next 16).
inline __m256i dot_us_scaled(__m256i w, __m256i a, __m256i sc) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), sc);
}
// From 16 int16 scales (sc16, lane i = scale i), the madd operand for sub-blocks
// k, k + 1 (k even): lanes 0-7 = scale k, lanes 8-15 = scale k + 1. One dword
// permute (the pair) and one byte shuffle (spread the pair over the two halves).
inline __m256i pair_scales(__m256i sc16, int k) {
    const __m256i pair = _mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(k / 2));
    const __m256i spread = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                            2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    return _mm256_shuffle_epi8(pair, spread);
}

// ---------------------------------------------------------------------------
// Driver.
// ---------------------------------------------------------------------------
template <typename W, typename A>
using RowKernel = void (*)(int64_t nb, const W* w, const A* const* a, const float* const* as, float* res);

// Q8_0 / Q8_1 activation scales and scaled block sums as floats, computed once
// per call instead of once per weight row: as[c][2b] = d, as[c][2b + 1] =
// d * sum(q), the product in float for both formats (Q8_1's stored s is the
// same product rounded to fp16: 2^-11 relative, which two-level activations
// would notice). Empty for the other activation formats.
template <typename A>
std::vector<float> activation_scales(const void* a, size_t a_row_bytes, int nc, int64_t nb) {
    std::vector<float> out;
    if constexpr (std::is_same_v<A, BlockQ8_0> || std::is_same_v<A, BlockQ8_1>) {
        constexpr int per = 2;
        out.resize(size_t(nc) * size_t(nb) * per);
        for (int c = 0; c < nc; ++c) {
            const A* ac = reinterpret_cast<const A*>(static_cast<const uint8_t*>(a) + size_t(c) * a_row_bytes);
            float* o = out.data() + size_t(c) * size_t(nb) * per;
            for (int64_t b = 0; b < nb; ++b) {
                o[2 * b] = h2f(ac[b].d);
                int sum = 0;
                for (int j = 0; j < QK; ++j) sum += ac[b].qs[j];
                o[2 * b + 1] = o[2 * b] * float(sum);
            }
        }
    }
    return out;
}

template <typename W, typename A, int BS, RowKernel<W, A> K1, RowKernel<W, A> K2, RowKernel<W, A> K3,
          RowKernel<W, A> K4>
void drive(int64_t n, const void* w, size_t w_row_bytes, int nr, const void* a, size_t a_row_bytes, int nc,
           float* out, size_t out_stride) {
    const int64_t nb = n / BS;
    const std::vector<float> scales = activation_scales<A>(a, a_row_bytes, nc, nb);
    const size_t per_col = nc ? scales.size() / size_t(nc) : 0;
    for (int r = 0; r < nr; ++r) {
        const W* wr = reinterpret_cast<const W*>(static_cast<const uint8_t*>(w) + size_t(r) * w_row_bytes);
        float* o = out + size_t(r) * out_stride;
        for (int c = 0; c < nc; c += 4) {
            const A* ap[4];
            const float* sp[4];
            const int m = nc - c < 4 ? nc - c : 4;
            for (int k = 0; k < m; ++k) {
                ap[k] = reinterpret_cast<const A*>(static_cast<const uint8_t*>(a) + size_t(c + k) * a_row_bytes);
                sp[k] = scales.data() + size_t(c + k) * per_col;
            }
            switch (m) {
                case 4: K4(nb, wr, ap, sp, o + c); break;
                case 3: K3(nb, wr, ap, sp, o + c); break;
                case 2: K2(nb, wr, ap, sp, o + c); break;
                default: K1(nb, wr, ap, sp, o + c); break;
            }
        }
    }
}
#define MN_DOT(W, A, BS, K) drive<W, A, BS, K<1>, K<2>, K<3>, K<4>>

// ---------------------------------------------------------------------------
// Decode fast path (nc = 1, and nc = 2 for two-level activations) for the
// 32-element formats: 4 blocks per step, their int32 sums folded into one
// vector by horizontal adds, so the scale math (fp16 -> float, d_w * d_a, int
// -> float, FMA and the offset/minimum term) runs once per 4 blocks instead of
// per block. Returns the number of blocks done.
// Extra: 0 none; 1 accm += d_w * as[2b + 1] (offset formats); 2 accm += m_w * as[2b + 1] (Q8_1 s).
// ---------------------------------------------------------------------------
template <typename W>
inline __m128 four_halves(const W* w, uint16_t W::*field) {
    return _mm_cvtph_ps(_mm_setr_epi16(short(w[0].*field), short(w[1].*field), short(w[2].*field),
                                       short(w[3].*field), 0, 0, 0, 0));
}

// NC activation rows (decode: 1; two-level decode: 2). Each weight block is
// decoded once for all NC rows.
template <int NC, typename W, typename A, __m256i (*Decode)(const W&), bool Signed, int Extra>
int64_t by4(int64_t nb, const W* w, const A* const* a, const float* const* as, __m256* acc, float* accm) {
    __m128 accm4[NC];
    for (int c = 0; c < NC; ++c) accm4[c] = _mm_setzero_ps();
    const __m256i split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        const __m256i q0 = Decode(w[b]), q1 = Decode(w[b + 1]), q2 = Decode(w[b + 2]), q3 = Decode(w[b + 3]);
        const __m128 dw = four_halves(w + b, &W::d);
        for (int c = 0; c < NC; ++c) {
            auto prod = [&](__m256i q, int i) {
                const __m256i av = load256(a[c][b + i].qs);
                return Signed ? dot_ss(q, av) : dot_us(q, av);
            };
            const __m256i p0 = prod(q0, 0), p1 = prod(q1, 1), p2 = prod(q2, 2), p3 = prod(q3, 3);
            // Per 128-bit half: [sum p0, sum p1, sum p2, sum p3] over that half's lanes.
            const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
            // as[2b .. 2b + 7] = d0 s0 d1 s1 d2 s2 d3 s3 -> [d0..d3 | s0..s3]
            const __m256 ds = _mm256_permutevar8x32_ps(_mm256_loadu_ps(as[c] + 2 * b), split);
            const __m128 sc = _mm_mul_ps(dw, _mm256_castps256_ps128(ds));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_set_m128(sc, sc), acc[c]);
            if constexpr (Extra == 1) accm4[c] = _mm_fmadd_ps(dw, _mm256_extractf128_ps(ds, 1), accm4[c]);
            if constexpr (Extra == 2)
                accm4[c] = _mm_fmadd_ps(four_halves(w + b, &W::m), _mm256_extractf128_ps(ds, 1), accm4[c]);
        }
    }
    for (int c = 0; c < NC; ++c) {
        __m128 t = _mm_add_ps(accm4[c], _mm_movehl_ps(accm4[c], accm4[c]));
        t = _mm_add_ss(t, _mm_movehdup_ps(t));
        accm[c] += _mm_cvtss_f32(t);
    }
    return b;
}

// ---------------------------------------------------------------------------
// 32-element formats. Two blocks per iteration into two accumulator sets to
// hide the FMA latency when NC is small.
// ---------------------------------------------------------------------------
inline __m256i q8_codes(const BlockQ8_0& b) { return load256(b.qs); }
inline __m256i q4_unsigned(const BlockQ4_0& b) { return unpack_nibbles32(b.qs); }
inline __m256i q5_unsigned(const BlockQ5_0& b) {
    return _mm256_or_si256(unpack_nibbles32(b.qs), expand_bits_0x10(b.qh));
}

// Q8_0 x Q8_0: both signed, |w| * (a with w's sign).
template <int NC>
void k_q8_0(int64_t nb, const BlockQ8_0* w, const BlockQ8_0* const* a, const float* const* as, float* res) {
    __m256 acc0[NC], acc1[NC];
    for (int c = 0; c < NC; ++c) acc0[c] = acc1[c] = _mm256_setzero_ps();
    int64_t b = 0;
    if constexpr (NC <= 2) {
        float unused[NC] = {};
        b = by4<NC, BlockQ8_0, BlockQ8_0, q8_codes, true, 0>(nb, w, a, as, acc0, unused);
    }
    for (; b + 2 <= nb; b += 2) {
        const __m256i q0 = load256(w[b].qs), q1 = load256(w[b + 1].qs);
        const float d0 = h2f(w[b].d), d1 = h2f(w[b + 1].d);
        for (int c = 0; c < NC; ++c) {
            const __m256i p0 = dot_ss(q0, load256(a[c][b].qs));
            const __m256i p1 = dot_ss(q1, load256(a[c][b + 1].qs));
            acc0[c] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * as[c][2 * b]), _mm256_cvtepi32_ps(p0), acc0[c]);
            acc1[c] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * as[c][2 * b + 2]), _mm256_cvtepi32_ps(p1), acc1[c]);
        }
    }
    for (; b < nb; ++b) {
        const __m256i q0 = load256(w[b].qs);
        const float d0 = h2f(w[b].d);
        for (int c = 0; c < NC; ++c) {
            const __m256i p0 = dot_ss(q0, load256(a[c][b].qs));
            acc0[c] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * as[c][2 * b]), _mm256_cvtepi32_ps(p0), acc0[c]);
        }
    }
    for (int c = 0; c < NC; ++c) res[c] = hsum(_mm256_add_ps(acc0[c], acc1[c]));
}

// Q4_0 / Q5_0 x Q8_0: weights q - Offset with q unsigned, so
// sum((q - Offset) * qa) * d_w * d_a = d_w d_a sum(q qa) - Offset * d_w * (d_a sum(qa)),
// the last factor precomputed per activation block (as[c][2b + 1]). Cheaper than
// the sign trick, which needs two extra byte ops per block.
template <int NC, typename W, __m256i (*Decode)(const W&), int Offset>
void k_offset_x_q8_0(int64_t nb, const W* w, const BlockQ8_0* const* a, const float* const* as, float* res) {
    __m256 acc0[NC], acc1[NC];
    float accm[NC];
    for (int c = 0; c < NC; ++c) {
        acc0[c] = acc1[c] = _mm256_setzero_ps();
        accm[c] = 0.0f;
    }
    int64_t b = 0;
    if constexpr (NC <= 2) b = by4<NC, W, BlockQ8_0, Decode, false, 1>(nb, w, a, as, acc0, accm);
    for (; b + 2 <= nb; b += 2) {
        const __m256i q0 = Decode(w[b]), q1 = Decode(w[b + 1]);
        const float d0 = h2f(w[b].d), d1 = h2f(w[b + 1].d);
        for (int c = 0; c < NC; ++c) {
            const __m256i p0 = dot_us(q0, load256(a[c][b].qs));
            const __m256i p1 = dot_us(q1, load256(a[c][b + 1].qs));
            acc0[c] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * as[c][2 * b]), _mm256_cvtepi32_ps(p0), acc0[c]);
            acc1[c] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * as[c][2 * b + 2]), _mm256_cvtepi32_ps(p1), acc1[c]);
            accm[c] += d0 * as[c][2 * b + 1] + d1 * as[c][2 * b + 3];
        }
    }
    for (; b < nb; ++b) {
        const __m256i q0 = Decode(w[b]);
        const float d0 = h2f(w[b].d);
        for (int c = 0; c < NC; ++c) {
            const __m256i p0 = dot_us(q0, load256(a[c][b].qs));
            acc0[c] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * as[c][2 * b]), _mm256_cvtepi32_ps(p0), acc0[c]);
            accm[c] += d0 * as[c][2 * b + 1];
        }
    }
    for (int c = 0; c < NC; ++c) res[c] = hsum(_mm256_add_ps(acc0[c], acc1[c])) - float(Offset) * accm[c];
}
template <int NC> void k_q4_0(int64_t nb, const BlockQ4_0* w, const BlockQ8_0* const* a, const float* const* as, float* res) {
    k_offset_x_q8_0<NC, BlockQ4_0, q4_unsigned, 8>(nb, w, a, as, res);
}
template <int NC> void k_q5_0(int64_t nb, const BlockQ5_0* w, const BlockQ8_0* const* a, const float* const* as, float* res) {
    k_offset_x_q8_0<NC, BlockQ5_0, q5_unsigned, 16>(nb, w, a, as, res);
}

// Unsigned weights with a minimum (Q4_1, Q5_1) x Q8_1: d_w d_a sum(q qa) + m_w s_a.
inline __m256i q4_1_unsigned(const BlockQ4_1& b) { return unpack_nibbles32(b.qs); }
inline __m256i q5_1_unsigned(const BlockQ5_1& b) {
    return _mm256_or_si256(unpack_nibbles32(b.qs), expand_bits_0x10(b.qh));
}

template <int NC, typename W, __m256i (*Decode)(const W&)>
void k_unsigned_x_q8_1(int64_t nb, const W* w, const BlockQ8_1* const* a, const float* const* as, float* res) {
    __m256 acc0[NC], acc1[NC];
    float accm[NC];
    for (int c = 0; c < NC; ++c) {
        acc0[c] = acc1[c] = _mm256_setzero_ps();
        accm[c] = 0.0f;
    }
    int64_t b = 0;
    if constexpr (NC <= 2) b = by4<NC, W, BlockQ8_1, Decode, false, 2>(nb, w, a, as, acc0, accm);
    for (; b + 2 <= nb; b += 2) {
        const __m256i q0 = Decode(w[b]), q1 = Decode(w[b + 1]);
        const float d0 = h2f(w[b].d), d1 = h2f(w[b + 1].d), m0 = h2f(w[b].m), m1 = h2f(w[b + 1].m);
        for (int c = 0; c < NC; ++c) {
            const __m256i p0 = dot_us(q0, load256(a[c][b].qs));
            const __m256i p1 = dot_us(q1, load256(a[c][b + 1].qs));
            acc0[c] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * as[c][2 * b]), _mm256_cvtepi32_ps(p0), acc0[c]);
            acc1[c] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * as[c][2 * b + 2]), _mm256_cvtepi32_ps(p1), acc1[c]);
            accm[c] += m0 * as[c][2 * b + 1] + m1 * as[c][2 * b + 3];
        }
    }
    for (; b < nb; ++b) {
        const __m256i q0 = Decode(w[b]);
        const float d0 = h2f(w[b].d), m0 = h2f(w[b].m);
        for (int c = 0; c < NC; ++c) {
            const __m256i p0 = dot_us(q0, load256(a[c][b].qs));
            acc0[c] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * as[c][2 * b]), _mm256_cvtepi32_ps(p0), acc0[c]);
            accm[c] += m0 * as[c][2 * b + 1];
        }
    }
    for (int c = 0; c < NC; ++c) res[c] = hsum(_mm256_add_ps(acc0[c], acc1[c])) + accm[c];
}
template <int NC> void k_q4_1(int64_t nb, const BlockQ4_1* w, const BlockQ8_1* const* a, const float* const* as, float* res) {
    k_unsigned_x_q8_1<NC, BlockQ4_1, q4_1_unsigned>(nb, w, a, as, res);
}
template <int NC> void k_q5_1(int64_t nb, const BlockQ5_1* w, const BlockQ8_1* const* a, const float* const* as, float* res) {
    k_unsigned_x_q8_1<NC, BlockQ5_1, q5_1_unsigned>(nb, w, a, as, res);
}

// ---------------------------------------------------------------------------
// K-quants x Q8_K. Per super-block: sumi[c] (8 int32 lanes) collects
// sum_k scale_k * sum(q * qa); offsets/minimums come from bsums; then one FMA
// per column with d_w * d_a.
// ---------------------------------------------------------------------------
inline __m256i bsums(const BlockQ8_K& a) { return load256(a.bsums); }

// Q4_K / Q5_K: element 64c + 32s + l is nibble s of qs[32c + l]; 8 sub-blocks of 32.
template <int NC, bool Five, typename W>
void k_q45_k(int64_t nb, const W* w, const BlockQ8_K* const* a, const float* const* as, float* res) {
    __m256 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        // The 8 six-bit scales and mins (see k_scale_min), unpacked four at a
        // time with 32-bit word operations instead of byte by byte.
        uint32_t u[3];
        std::memcpy(u, w[b].scales, 12);
        const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, m_lo = u[1] & 0x3f3f3f3fu;
        const uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
        const uint32_t m_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
        const __m128i sc8 = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, int(sc_hi), int(sc_lo)));
        const __m128i m16 = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, int(m_hi), int(m_lo)));
        const __m256i scw = _mm256_set_m128i(sc8, sc8);  // scale k = int16 word k of each lane
        // Minimums as int16, each repeated for the two bsums (16 elements each) of its sub-block.
        const __m256i mins = _mm256_set_m128i(_mm_unpackhi_epi16(m16, m16), _mm_unpacklo_epi16(m16, m16));
        __m256i sumi[NC];
        for (int c = 0; c < NC; ++c) sumi[c] = _mm256_setzero_si256();
        __m256i hb = _mm256_setzero_si256();
        if constexpr (Five) hb = load256(reinterpret_cast<const BlockQ5_K&>(w[b]).qh);
        for (int cc = 0; cc < 4; ++cc) {
            const __m256i q = load256(w[b].qs + 32 * cc);
            __m256i lo = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
            __m256i hi = shr_mask(q, 4, 0x0F);
            if constexpr (Five) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(shr_mask(hb, 2 * cc, 1), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(shr_mask(hb, 2 * cc + 1, 1), 4));
            }
            // Broadcast words 2cc and 2cc + 1 of scw (byte shuffle with indices 4cc, 4cc + 1 / + 2, + 3).
            const __m256i s_lo = _mm256_shuffle_epi8(scw, _mm256_set1_epi16(short(0x0100 + 0x0404 * cc)));
            const __m256i s_hi = _mm256_shuffle_epi8(scw, _mm256_set1_epi16(short(0x0302 + 0x0404 * cc)));
            for (int c = 0; c < NC; ++c) {
                const __m256i p_lo = dot_us_scaled(lo, load256(a[c][b].qs + 64 * cc), s_lo);
                const __m256i p_hi = dot_us_scaled(hi, load256(a[c][b].qs + 64 * cc + 32), s_hi);
                sumi[c] = _mm256_add_epi32(sumi[c], _mm256_add_epi32(p_lo, p_hi));
            }
        }
        const float d = h2f(w[b].d), dmin = h2f(w[b].dmin);
        for (int c = 0; c < NC; ++c) {
            const float da = a[c][b].d;
            const __m256i summ = _mm256_madd_epi16(bsums(a[c][b]), mins);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sumi[c]), acc[c]);
            acc[c] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(summ), acc[c]);
        }
    }
    for (int c = 0; c < NC; ++c) res[c] = hsum(acc[c]);
}
template <int NC> void k_q4_k(int64_t nb, const BlockQ4_K* w, const BlockQ8_K* const* a, const float* const* as, float* res) {
    k_q45_k<NC, false>(nb, w, a, as, res);
}
template <int NC> void k_q5_k(int64_t nb, const BlockQ5_K* w, const BlockQ8_K* const* a, const float* const* as, float* res) {
    k_q45_k<NC, true>(nb, w, a, as, res);
}

// Q6_K: q = 6-bit unsigned, value (q - 32) * scale_k per 16 elements:
// sum = sum_k sc_k * (sum(q * qa) - 32 * bsum_k).
template <int NC>
void k_q6_k(int64_t nb, const BlockQ6_K* w, const BlockQ8_K* const* a, const float* const* as, float* res) {
    __m256 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].scales)));
        __m256i sumi[NC];
        for (int c = 0; c < NC; ++c) sumi[c] = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = load256(w[b].ql + 64 * h), ql1 = load256(w[b].ql + 64 * h + 32);
            const __m256i qh = load256(w[b].qh + 32 * h);
            for (int j = 0; j < 4; ++j) {
                const __m256i lo = shr_mask((j & 1) ? ql1 : ql0, 4 * (j >> 1), 0x0F);
                const __m256i q = _mm256_or_si256(lo, _mm256_slli_epi16(shr_mask(qh, 2 * j, 3), 4));
                const int k = 8 * h + 2 * j;
                const __m256i s = pair_scales(sc16, k);
                for (int c = 0; c < NC; ++c)
                    sumi[c] = _mm256_add_epi32(sumi[c], dot_us_scaled(q, load256(a[c][b].qs + 128 * h + 32 * j), s));
            }
        }
        const float d = h2f(w[b].d);
        for (int c = 0; c < NC; ++c) {
            const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(bsums(a[c][b]), sc16), 5);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[c][b].d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[c], off)),
                                     acc[c]);
        }
    }
    for (int c = 0; c < NC; ++c) res[c] = hsum(acc[c]);
}

// Q3_K: value = scale_k * (low - 4 * !high); with u = low + 4 * high in 0..7,
// sum = sum_k sc_k * (sum(u * qa) - 4 * bsum_k).
template <int NC>
void k_q3_k(int64_t nb, const BlockQ3_K* w, const BlockQ8_K* const* a, const float* const* as, float* res) {
    __m256 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        // The 16 six-bit scales (see k_scale_q3), four per 32-bit word op:
        // low nibbles from bytes 0-7, high 2 bits from bytes 8-11 moved to bits 4-5.
        uint32_t u[3];
        std::memcpy(u, w[b].scales, 12);
        const uint32_t m4 = 0x0f0f0f0fu, m2 = 0x30303030u;
        const __m128i sc8 = _mm_set_epi32(int(((u[1] >> 4) & m4) | ((u[2] >> 2) & m2)),
                                          int(((u[0] >> 4) & m4) | (u[2] & m2)),
                                          int((u[1] & m4) | ((u[2] << 2) & m2)),
                                          int((u[0] & m4) | ((u[2] << 4) & m2)));
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_sub_epi8(sc8, _mm_set1_epi8(32)));
        const __m256i hm = load256(w[b].hmask);
        __m256i sumi[NC];
        for (int c = 0; c < NC; ++c) sumi[c] = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            const __m256i qs = load256(w[b].qs + 32 * h);
            for (int j = 0; j < 4; ++j) {
                const __m256i high = _mm256_slli_epi16(shr_mask(hm, 4 * h + j, 1), 2);
                const __m256i u = _mm256_add_epi8(shr_mask(qs, 2 * j, 3), high);
                const int k = 8 * h + 2 * j;
                const __m256i s = pair_scales(sc16, k);
                for (int c = 0; c < NC; ++c)
                    sumi[c] = _mm256_add_epi32(sumi[c], dot_us_scaled(u, load256(a[c][b].qs + 128 * h + 32 * j), s));
            }
        }
        const float d = h2f(w[b].d);
        for (int c = 0; c < NC; ++c) {
            const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(bsums(a[c][b]), sc16), 2);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[c][b].d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[c], off)),
                                     acc[c]);
        }
    }
    for (int c = 0; c < NC; ++c) res[c] = hsum(acc[c]);
}

// Q2_K: value = d * sc_k * q - dmin * m_k, q in 0..3, 16 sub-blocks of 16.
template <int NC>
void k_q2_k(int64_t nb, const BlockQ2_K* w, const BlockQ8_K* const* a, const float* const* as, float* res) {
    __m256 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].scales));
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F)));
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0x0F)));
        __m256i sumi[NC];
        for (int c = 0; c < NC; ++c) sumi[c] = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            const __m256i qs = load256(w[b].qs + 32 * h);
            for (int j = 0; j < 4; ++j) {
                const __m256i q = shr_mask(qs, 2 * j, 3);
                const int k = 8 * h + 2 * j;
                const __m256i s = pair_scales(sc16, k);
                for (int c = 0; c < NC; ++c)
                    sumi[c] = _mm256_add_epi32(sumi[c], dot_us_scaled(q, load256(a[c][b].qs + 128 * h + 32 * j), s));
            }
        }
        const float d = h2f(w[b].d), dmin = h2f(w[b].dmin);
        for (int c = 0; c < NC; ++c) {
            const float da = a[c][b].d;
            const __m256i summ = _mm256_madd_epi16(bsums(a[c][b]), mins);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sumi[c]), acc[c]);
            acc[c] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(summ), acc[c]);
        }
    }
    for (int c = 0; c < NC; ++c) res[c] = hsum(acc[c]);
}

// ---------------------------------------------------------------------------
// Float weights x F32 activations: FMA, 16 elements per step.
// ---------------------------------------------------------------------------
inline __m256 load8_f32(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load8_bf16(const uint16_t* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
inline float one_f32(const float* p) { return *p; }
inline float one_f16(const uint16_t* p) { return h2f(*p); }
inline float one_bf16(const uint16_t* p) {
    const uint32_t u = uint32_t(*p) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

template <int NC, typename W, __m256 (*Load8)(const W*), float (*Load1)(const W*)>
void k_float(int64_t n, const W* w, const float* const* a, const float* const* as, float* res) {
    __m256 acc0[NC], acc1[NC];
    for (int c = 0; c < NC; ++c) acc0[c] = acc1[c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 w0 = Load8(w + i), w1 = Load8(w + i + 8);
        for (int c = 0; c < NC; ++c) {
            acc0[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(a[c] + i), acc0[c]);
            acc1[c] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(a[c] + i + 8), acc1[c]);
        }
    }
    for (int c = 0; c < NC; ++c) {
        float s = hsum(_mm256_add_ps(acc0[c], acc1[c]));
        for (int64_t t = i; t < n; ++t) s += Load1(w + t) * a[c][t];
        res[c] = s;
    }
}
template <int NC> void k_f32(int64_t n, const float* w, const float* const* a, const float* const* as, float* res) {
    k_float<NC, float, load8_f32, one_f32>(n, w, a, as, res);
}
template <int NC> void k_f16(int64_t n, const uint16_t* w, const float* const* a, const float* const* as, float* res) {
    k_float<NC, uint16_t, load8_f16, one_f16>(n, w, a, as, res);
}
template <int NC> void k_bf16(int64_t n, const uint16_t* w, const float* const* a, const float* const* as, float* res) {
    k_float<NC, uint16_t, load8_bf16, one_bf16>(n, w, a, as, res);
}

}  // namespace

DotFn dot_fn_avx2(TensorType t) {
    switch (t) {
        case TensorType::Q4_0: return MN_DOT(BlockQ4_0, BlockQ8_0, QK, k_q4_0);
        case TensorType::Q5_0: return MN_DOT(BlockQ5_0, BlockQ8_0, QK, k_q5_0);
        case TensorType::Q8_0: return MN_DOT(BlockQ8_0, BlockQ8_0, QK, k_q8_0);
        case TensorType::Q4_1: return MN_DOT(BlockQ4_1, BlockQ8_1, QK, k_q4_1);
        case TensorType::Q5_1: return MN_DOT(BlockQ5_1, BlockQ8_1, QK, k_q5_1);
        case TensorType::Q2_K: return MN_DOT(BlockQ2_K, BlockQ8_K, QK_K, k_q2_k);
        case TensorType::Q3_K: return MN_DOT(BlockQ3_K, BlockQ8_K, QK_K, k_q3_k);
        case TensorType::Q4_K: return MN_DOT(BlockQ4_K, BlockQ8_K, QK_K, k_q4_k);
        case TensorType::Q5_K: return MN_DOT(BlockQ5_K, BlockQ8_K, QK_K, k_q5_k);
        case TensorType::Q6_K: return MN_DOT(BlockQ6_K, BlockQ8_K, QK_K, k_q6_k);
        case TensorType::F32: return MN_DOT(float, float, 1, k_f32);
        case TensorType::F16: return MN_DOT(uint16_t, float, 1, k_f16);
        case TensorType::BF16: return MN_DOT(uint16_t, float, 1, k_bf16);
        default: return nullptr;
    }
}

}  // namespace mn::detail

#endif  // METALLIC_HAVE_AVX2
