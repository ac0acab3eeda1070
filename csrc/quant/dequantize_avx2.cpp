// AVX2 (+F16C) dequantizers and quantizers.
//
// Each kernel unpacks 16 or 32 quants per step into bytes, widens 8 at a time to
// float and applies the block's scale (and minimum) with separate mul/add (no
// FMA, and this file is built with -ffp-contract=off), in the same order as the
// scalar reference, so the outputs are bit-identical to it.
#if defined(METALLIC_HAVE_AVX2)

#include <immintrin.h>

#include <cstring>

#include "common/fp16.h"
#include "quant/avx2_util.h"
#include "quant/blocks.h"
#include "quant/kernels.h"

namespace mn::detail {
namespace {

// Low 8 signed bytes of v as 8 floats.
inline __m256 i8x8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

// y[0..15] = d * q (+/- m): q holds 16 signed bytes.
inline void put16_mul(float* y, __m128i q, __m256 d) {
    _mm256_storeu_ps(y, _mm256_mul_ps(d, i8x8_to_ps(q)));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(d, i8x8_to_ps(_mm_srli_si128(q, 8))));
}
inline void put16_mul_add(float* y, __m128i q, __m256 d, __m256 m) {
    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_mul_ps(d, i8x8_to_ps(q)), m));
    _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_mul_ps(d, i8x8_to_ps(_mm_srli_si128(q, 8))), m));
}
inline void put16_mul_sub(float* y, __m128i q, __m256 d, __m256 m) {
    _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(d, i8x8_to_ps(q)), m));
    _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(d, i8x8_to_ps(_mm_srli_si128(q, 8))), m));
}
inline __m128i lo128(__m256i v) { return _mm256_castsi256_si128(v); }
inline __m128i hi128(__m256i v) { return _mm256_extracti128_si256(v, 1); }

inline void put32_mul(float* y, __m256i q, __m256 d) {
    put16_mul(y, lo128(q), d);
    put16_mul(y + 16, hi128(q), d);
}
inline void put32_mul_add(float* y, __m256i q, __m256 d, __m256 m) {
    put16_mul_add(y, lo128(q), d, m);
    put16_mul_add(y + 16, hi128(q), d, m);
}
inline void put32_mul_sub(float* y, __m256i q, __m256 d, __m256 m) {
    put16_mul_sub(y, lo128(q), d, m);
    put16_mul_sub(y + 16, hi128(q), d, m);
}

void deq_f32(const void* src, float* y, int64_t n) { std::memcpy(y, src, size_t(n) * 4); }

void deq_f16(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
    for (; i < n; ++i) y[i] = fp16_to_float(x[i]);
}

void deq_bf16(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
        _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; ++i) y[i] = bf16_to_float(x[i]);
}

void deq_q4_0(const void* src, float* y, int64_t nb) {
    const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const __m256 d = _mm256_set1_ps(fp16_to_float(b[i].d));
        const __m256i q = _mm256_sub_epi8(unpack_nibbles32(b[i].qs), _mm256_set1_epi8(8));
        put32_mul(y, q, d);
    }
}

void deq_q4_1(const void* src, float* y, int64_t nb) {
    const BlockQ4_1* b = static_cast<const BlockQ4_1*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const __m256 d = _mm256_set1_ps(fp16_to_float(b[i].d));
        const __m256 m = _mm256_set1_ps(fp16_to_float(b[i].m));
        put32_mul_add(y, unpack_nibbles32(b[i].qs), d, m);
    }
}

void deq_q5_0(const void* src, float* y, int64_t nb) {
    const BlockQ5_0* b = static_cast<const BlockQ5_0*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const __m256 d = _mm256_set1_ps(fp16_to_float(b[i].d));
        __m256i q = _mm256_or_si256(unpack_nibbles32(b[i].qs), expand_bits_0x10(b[i].qh));
        q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        put32_mul(y, q, d);
    }
}

void deq_q5_1(const void* src, float* y, int64_t nb) {
    const BlockQ5_1* b = static_cast<const BlockQ5_1*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const __m256 d = _mm256_set1_ps(fp16_to_float(b[i].d));
        const __m256 m = _mm256_set1_ps(fp16_to_float(b[i].m));
        put32_mul_add(y, _mm256_or_si256(unpack_nibbles32(b[i].qs), expand_bits_0x10(b[i].qh)), d, m);
    }
}

void deq_q8_0(const void* src, float* y, int64_t nb) {
    const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const __m256 d = _mm256_set1_ps(fp16_to_float(b[i].d));
        put32_mul(y, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs)), d);
    }
}

void deq_q8_1(const void* src, float* y, int64_t nb) {
    const BlockQ8_1* b = static_cast<const BlockQ8_1*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const __m256 d = _mm256_set1_ps(fp16_to_float(b[i].d));
        put32_mul(y, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs)), d);
    }
}

void deq_q2_k(const void* src, float* y, int64_t nb) {
    const BlockQ2_K* b = static_cast<const BlockQ2_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d), dmin = fp16_to_float(b[i].dmin);
        for (int h = 0; h < 2; ++h) {
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 32 * h));
            for (int j = 0; j < 4; ++j) {
                const __m256i v = shr_mask(q, 2 * j, 3);
                for (int s = 0; s < 2; ++s) {
                    const int k = 8 * h + 2 * j + s;
                    const uint8_t sc = b[i].scales[k];
                    const __m256 dl = _mm256_set1_ps(d * float(sc & 0x0F));
                    const __m256 ml = _mm256_set1_ps(dmin * float(sc >> 4));
                    put16_mul_sub(y + 16 * k, s ? hi128(v) : lo128(v), dl, ml);
                }
            }
        }
    }
}

void deq_q3_k(const void* src, float* y, int64_t nb) {
    const BlockQ3_K* b = static_cast<const BlockQ3_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d);
        const __m256i hm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].hmask));
        for (int h = 0; h < 2; ++h) {
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 32 * h));
            for (int j = 0; j < 4; ++j) {
                const __m256i bit = _mm256_set1_epi8(char(1 << (4 * h + j)));
                // 4 where the high bit is clear: q = low - 4 * !high.
                const __m256i clear = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), _mm256_setzero_si256());
                const __m256i v = _mm256_sub_epi8(shr_mask(q, 2 * j, 3), _mm256_and_si256(clear, _mm256_set1_epi8(4)));
                for (int s = 0; s < 2; ++s) {
                    const int k = 8 * h + 2 * j + s;
                    const __m256 dl = _mm256_set1_ps(d * float(k_scale_q3(b[i].scales, k)));
                    put16_mul(y + 16 * k, s ? hi128(v) : lo128(v), dl);
                }
            }
        }
    }
}

void deq_q4_k(const void* src, float* y, int64_t nb) {
    const BlockQ4_K* b = static_cast<const BlockQ4_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d), dmin = fp16_to_float(b[i].dmin);
        for (int c = 0; c < 4; ++c) {
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 32 * c));
            for (int s = 0; s < 2; ++s) {
                const int k = 2 * c + s;
                uint8_t sc, m;
                k_scale_min(b[i].scales, k, &sc, &m);
                put32_mul_sub(y + 32 * k, shr_mask(q, 4 * s, 0x0F), _mm256_set1_ps(d * float(sc)),
                              _mm256_set1_ps(dmin * float(m)));
            }
        }
    }
}

void deq_q5_k(const void* src, float* y, int64_t nb) {
    const BlockQ5_K* b = static_cast<const BlockQ5_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d), dmin = fp16_to_float(b[i].dmin);
        const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qh));
        for (int c = 0; c < 4; ++c) {
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + 32 * c));
            for (int s = 0; s < 2; ++s) {
                const int k = 2 * c + s;
                uint8_t sc, m;
                k_scale_min(b[i].scales, k, &sc, &m);
                const __m256i bit = _mm256_set1_epi8(char(1 << k));
                const __m256i high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit),
                                                      _mm256_set1_epi8(0x10));
                put32_mul_sub(y + 32 * k, _mm256_or_si256(shr_mask(q, 4 * s, 0x0F), high),
                              _mm256_set1_ps(d * float(sc)), _mm256_set1_ps(dmin * float(m)));
            }
        }
    }
}

void deq_q6_k(const void* src, float* y, int64_t nb) {
    const BlockQ6_K* b = static_cast<const BlockQ6_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d);
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qh + 32 * h));
            for (int j = 0; j < 4; ++j) {
                // Elements 128h + 32j + l: nibble j/2 of ql[64h + 32(j%2) + l], bits 2j.. of qh[32h + l].
                const __m256i lo = shr_mask((j & 1) ? ql1 : ql0, 4 * (j >> 1), 0x0F);
                const __m256i hi = _mm256_slli_epi16(shr_mask(qh, 2 * j, 3), 4);  // < 0x40: no carry between bytes
                const __m256i v = _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
                for (int s = 0; s < 2; ++s) {
                    const int k = 8 * h + 2 * j + s;
                    put16_mul(y + 16 * k, s ? hi128(v) : lo128(v), _mm256_set1_ps(d * float(b[i].scales[k])));
                }
            }
        }
    }
}

void deq_q8_k(const void* src, float* y, int64_t nb) {
    const BlockQ8_K* b = static_cast<const BlockQ8_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const __m256 d = _mm256_set1_ps(b[i].d);
        for (int j = 0; j < QK_K; j += 32)
            put32_mul(y + j, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs + j)), d);
    }
}

// ---------------------------------------------------------------------------
// Quantizers: same definition as the scalar reference (d = amax / 127,
// q = round-half-away(x * (1/d)), clamped to +-127). Rounding half away from
// zero is done exactly as floor(a) + floor(2 * (a - floor(a))) on |x|, every
// step of which is exact in float, so the bytes equal the scalar ones.
// ---------------------------------------------------------------------------
inline __m256 round_half_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 a = _mm256_andnot_ps(sign, v);
    const __m256 f = _mm256_floor_ps(a);
    const __m256 frac = _mm256_sub_ps(a, f);
    const __m256 r = _mm256_add_ps(f, _mm256_floor_ps(_mm256_add_ps(frac, frac)));
    return _mm256_or_ps(r, _mm256_and_ps(v, sign));
}

inline __m256i quant8(__m256 x, __m256 id) {
    __m256 r = round_half_away(_mm256_mul_ps(x, id));
    // max first: a NaN product becomes -127 as in the scalar fmax/fmin chain.
    r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    return _mm256_cvtps_epi32(r);
}

inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

float amax_of(const float* x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    return hmax(m);
}

// Quantizes 32 floats to 32 int8 at q; returns their sum.
inline int quant32(const float* x, __m256 id, int8_t* q, int* sum16 = nullptr) {
    const __m256i i0 = quant8(_mm256_loadu_ps(x), id), i1 = quant8(_mm256_loadu_ps(x + 8), id);
    const __m256i i2 = quant8(_mm256_loadu_ps(x + 16), id), i3 = quant8(_mm256_loadu_ps(x + 24), id);
    // packs interleave the 128-bit lanes; the permute restores element order.
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    const __m256i s01 = _mm256_add_epi32(i0, i1), s23 = _mm256_add_epi32(i2, i3);
    if (sum16) {
        sum16[0] = hsum_i32(s01);
        sum16[1] = hsum_i32(s23);
        return sum16[0] + sum16[1];
    }
    return hsum_i32(_mm256_add_epi32(s01, s23));
}

void quant_q8_0(const float* x, void* dst, int64_t nb) {
    BlockQ8_0* b = static_cast<BlockQ8_0*>(dst);
    for (int64_t i = 0; i < nb; ++i, x += QK) {
        const float d = amax_of(x, QK) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = float_to_fp16(d);
        quant32(x, _mm256_set1_ps(id), b[i].qs);
    }
}

void quant_q8_1(const float* x, void* dst, int64_t nb) {
    BlockQ8_1* b = static_cast<BlockQ8_1*>(dst);
    for (int64_t i = 0; i < nb; ++i, x += QK) {
        const float d = amax_of(x, QK) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const int sum = quant32(x, _mm256_set1_ps(id), b[i].qs);
        b[i].d = float_to_fp16(d);
        b[i].s = float_to_fp16(d * float(sum));
    }
}

void quant_q8_k(const float* x, void* dst, int64_t nb) {
    BlockQ8_K* b = static_cast<BlockQ8_K*>(dst);
    for (int64_t i = 0; i < nb; ++i, x += QK_K) {
        const float d = amax_of(x, QK_K) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = d;
        const __m256 vid = _mm256_set1_ps(id);
        for (int j = 0; j < QK_K; j += 32) {
            int s[2];
            quant32(x + j, vid, b[i].qs + j, s);
            b[i].bsums[j / 16] = int16_t(s[0]);
            b[i].bsums[j / 16 + 1] = int16_t(s[1]);
        }
    }
}

}  // namespace

DequantFn dequant_fn_avx2(TensorType t) {
    switch (t) {
        case TensorType::F32: return deq_f32;
        case TensorType::F16: return deq_f16;
        case TensorType::BF16: return deq_bf16;
        case TensorType::Q4_0: return deq_q4_0;
        case TensorType::Q4_1: return deq_q4_1;
        case TensorType::Q5_0: return deq_q5_0;
        case TensorType::Q5_1: return deq_q5_1;
        case TensorType::Q8_0: return deq_q8_0;
        case TensorType::Q8_1: return deq_q8_1;
        case TensorType::Q2_K: return deq_q2_k;
        case TensorType::Q3_K: return deq_q3_k;
        case TensorType::Q4_K: return deq_q4_k;
        case TensorType::Q5_K: return deq_q5_k;
        case TensorType::Q6_K: return deq_q6_k;
        case TensorType::Q8_K: return deq_q8_k;
        default: return nullptr;
    }
}

QuantFn quant_fn_avx2(TensorType t) {
    switch (t) {
        case TensorType::Q8_0: return quant_q8_0;
        case TensorType::Q8_1: return quant_q8_1;
        case TensorType::Q8_K: return quant_q8_k;
        default: return nullptr;
    }
}

}  // namespace mn::detail

#endif  // METALLIC_HAVE_AVX2
