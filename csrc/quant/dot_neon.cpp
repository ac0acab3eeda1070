// NEON dot-product kernels: same arithmetic as dot_scalar.cpp (exact int32
// block sums, fp32 accumulation over blocks) with 16-byte integer dot products
// (SDOT where the compiler targets dotprod, else widening multiplies).
//
// Simpler than the AVX2 kernels: each (weight row, activation row) pair is a
// separate pass (no multi-column register blocking). Verified against the
// scalar kernels under qemu (tests/quant/neon_check.cpp), not timed on hardware.
#if defined(METALLIC_HAVE_NEON)

#include <arm_neon.h>

#include "common/fp16.h"
#include "quant/blocks.h"
#include "quant/kernels.h"
#include "quant/neon_util.h"

namespace mn::detail {
namespace {

inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t hi = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
#endif
}
inline int dot32(int8x16_t w0, int8x16_t w1, const int8_t* a) {
    return vaddvq_s32(dot16(dot16(vdupq_n_s32(0), w0, vld1q_s8(a)), w1, vld1q_s8(a + 16)));
}
inline int dot16s(int8x16_t w, const int8_t* a) { return vaddvq_s32(dot16(vdupq_n_s32(0), w, vld1q_s8(a))); }

template <typename W, typename A, float (*Row)(int64_t, const W*, const A*), int BlockSize>
void drive(int64_t n, const void* w, size_t w_row_bytes, int nr, const void* a, size_t a_row_bytes, int nc,
           float* out, size_t out_stride) {
    const int64_t nb = n / BlockSize;
    for (int r = 0; r < nr; ++r) {
        const W* wr = reinterpret_cast<const W*>(static_cast<const uint8_t*>(w) + size_t(r) * w_row_bytes);
        for (int c = 0; c < nc; ++c) {
            const A* ac = reinterpret_cast<const A*>(static_cast<const uint8_t*>(a) + size_t(c) * a_row_bytes);
            out[size_t(r) * out_stride + size_t(c)] = Row(nb, wr, ac);
        }
    }
}

float row_q4_0(int64_t nb, const BlockQ4_0* w, const BlockQ8_0* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8x16_t v = vld1q_u8(w[b].qs);
        const int8x16_t lo = vsubq_s8(s8(vandq_u8(v, vdupq_n_u8(0x0F))), vdupq_n_s8(8));
        const int8x16_t hi = vsubq_s8(s8(vshrq_n_u8(v, 4)), vdupq_n_s8(8));
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) * float(dot32(lo, hi, a[b].qs));
    }
    return acc;
}

float row_q4_1(int64_t nb, const BlockQ4_1* w, const BlockQ8_1* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8x16_t v = vld1q_u8(w[b].qs);
        const int sumi = dot32(s8(vandq_u8(v, vdupq_n_u8(0x0F))), s8(vshrq_n_u8(v, 4)), a[b].qs);
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) * float(sumi) + fp16_to_float(w[b].m) * fp16_to_float(a[b].s);
    }
    return acc;
}

float row_q5_0(int64_t nb, const BlockQ5_0* w, const BlockQ8_0* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8x16_t v = vld1q_u8(w[b].qs);
        const uint8x16_t lo = vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), expand_bits_0x10(w[b].qh, 0));
        const uint8x16_t hi = vorrq_u8(vshrq_n_u8(v, 4), expand_bits_0x10(w[b].qh, 1));
        const int sumi = dot32(vsubq_s8(s8(lo), vdupq_n_s8(16)), vsubq_s8(s8(hi), vdupq_n_s8(16)), a[b].qs);
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) * float(sumi);
    }
    return acc;
}

float row_q5_1(int64_t nb, const BlockQ5_1* w, const BlockQ8_1* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8x16_t v = vld1q_u8(w[b].qs);
        const uint8x16_t lo = vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), expand_bits_0x10(w[b].qh, 0));
        const uint8x16_t hi = vorrq_u8(vshrq_n_u8(v, 4), expand_bits_0x10(w[b].qh, 1));
        const int sumi = dot32(s8(lo), s8(hi), a[b].qs);
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) * float(sumi) + fp16_to_float(w[b].m) * fp16_to_float(a[b].s);
    }
    return acc;
}

float row_q8_0(int64_t nb, const BlockQ8_0* w, const BlockQ8_0* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b)
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) *
               float(dot32(vld1q_s8(w[b].qs), vld1q_s8(w[b].qs + 16), a[b].qs));
    return acc;
}

float row_q2_k(int64_t nb, const BlockQ2_K* w, const BlockQ8_K* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0, summ = 0;
        for (int h = 0; h < 2; ++h)
            for (int s = 0; s < 2; ++s) {
                const uint8x16_t q = vld1q_u8(w[b].qs + 32 * h + 16 * s);
                for (int j = 0; j < 4; ++j) {
                    const int k = 8 * h + 2 * j + s;
                    const int8x16_t v = s8(vandq_u8(shr(q, 2 * j), vdupq_n_u8(3)));
                    sumi += (w[b].scales[k] & 0x0F) * dot16s(v, a[b].qs + 16 * k);
                }
            }
        for (int k = 0; k < 16; ++k) summ += (w[b].scales[k] >> 4) * a[b].bsums[k];
        const float da = a[b].d;
        acc += fp16_to_float(w[b].d) * da * float(sumi) - fp16_to_float(w[b].dmin) * da * float(summ);
    }
    return acc;
}

float row_q3_k(int64_t nb, const BlockQ3_K* w, const BlockQ8_K* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0;
        for (int h = 0; h < 2; ++h)
            for (int s = 0; s < 2; ++s) {
                const uint8x16_t q = vld1q_u8(w[b].qs + 32 * h + 16 * s);
                const uint8x16_t hm = vld1q_u8(w[b].hmask + 16 * s);
                for (int j = 0; j < 4; ++j) {
                    const int k = 8 * h + 2 * j + s;
                    const uint8x16_t set = vtstq_u8(hm, vdupq_n_u8(uint8_t(1u << (4 * h + j))));
                    const int8x16_t v = vsubq_s8(s8(vandq_u8(shr(q, 2 * j), vdupq_n_u8(3))),
                                                 s8(vbicq_u8(vdupq_n_u8(4), set)));
                    sumi += k_scale_q3(w[b].scales, k) * dot16s(v, a[b].qs + 16 * k);
                }
            }
        acc += fp16_to_float(w[b].d) * a[b].d * float(sumi);
    }
    return acc;
}

template <bool Five, typename W>
float row_q45_k(int64_t nb, const W* w, const BlockQ8_K* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0, summ = 0;
        for (int k = 0; k < 8; ++k) {
            uint8_t sc, m;
            k_scale_min(w[b].scales, k, &sc, &m);
            int8x16_t v[2];
            for (int half = 0; half < 2; ++half) {
                const uint8x16_t q = vld1q_u8(w[b].qs + 32 * (k / 2) + 16 * half);
                uint8x16_t u = (k & 1) ? vshrq_n_u8(q, 4) : vandq_u8(q, vdupq_n_u8(0x0F));
                if constexpr (Five) {
                    const uint8x16_t hb = vld1q_u8(reinterpret_cast<const BlockQ5_K&>(w[b]).qh + 16 * half);
                    u = vorrq_u8(u, vandq_u8(vtstq_u8(hb, vdupq_n_u8(uint8_t(1u << k))), vdupq_n_u8(0x10)));
                }
                v[half] = s8(u);
            }
            sumi += sc * dot32(v[0], v[1], a[b].qs + 32 * k);
            summ += m * (a[b].bsums[2 * k] + a[b].bsums[2 * k + 1]);
        }
        const float da = a[b].d;
        acc += fp16_to_float(w[b].d) * da * float(sumi) - fp16_to_float(w[b].dmin) * da * float(summ);
    }
    return acc;
}
float row_q4_k(int64_t nb, const BlockQ4_K* w, const BlockQ8_K* a) { return row_q45_k<false>(nb, w, a); }
float row_q5_k(int64_t nb, const BlockQ5_K* w, const BlockQ8_K* a) { return row_q45_k<true>(nb, w, a); }

float row_q6_k(int64_t nb, const BlockQ6_K* w, const BlockQ8_K* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0;
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < 4; ++j)
                for (int s = 0; s < 2; ++s) {
                    const int k = 8 * h + 2 * j + s;
                    const uint8x16_t ql = vld1q_u8(w[b].ql + 64 * h + 32 * (j & 1) + 16 * s);
                    const uint8x16_t qh = vld1q_u8(w[b].qh + 32 * h + 16 * s);
                    const uint8x16_t lo = (j >> 1) ? vshrq_n_u8(ql, 4) : vandq_u8(ql, vdupq_n_u8(0x0F));
                    const uint8x16_t hi = vshlq_n_u8(vandq_u8(shr(qh, 2 * j), vdupq_n_u8(3)), 4);
                    const int8x16_t v = vsubq_s8(s8(vorrq_u8(lo, hi)), vdupq_n_s8(32));
                    sumi += w[b].scales[k] * dot16s(v, a[b].qs + 16 * k);
                }
        acc += fp16_to_float(w[b].d) * a[b].d * float(sumi);
    }
    return acc;
}

template <float32x4_t (*Load4)(const uint16_t*), float (*Load1)(uint16_t)>
float row_half(int64_t n, const uint16_t* w, const float* a) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, Load4(w + i), vld1q_f32(a + i));
        acc1 = vfmaq_f32(acc1, Load4(w + i + 4), vld1q_f32(a + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; ++i) s += Load1(w[i]) * a[i];
    return s;
}
inline float32x4_t load4_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
inline float32x4_t load4_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
float row_f16(int64_t n, const uint16_t* w, const float* a) { return row_half<load4_f16, fp16_to_float>(n, w, a); }
float row_bf16(int64_t n, const uint16_t* w, const float* a) { return row_half<load4_bf16, bf16_to_float>(n, w, a); }

float row_f32(int64_t n, const float* w, const float* a) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(w + i), vld1q_f32(a + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(w + i + 4), vld1q_f32(a + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; ++i) s += w[i] * a[i];
    return s;
}

}  // namespace

DotFn dot_fn_neon(TensorType t) {
    switch (t) {
        case TensorType::Q4_0: return drive<BlockQ4_0, BlockQ8_0, row_q4_0, QK>;
        case TensorType::Q4_1: return drive<BlockQ4_1, BlockQ8_1, row_q4_1, QK>;
        case TensorType::Q5_0: return drive<BlockQ5_0, BlockQ8_0, row_q5_0, QK>;
        case TensorType::Q5_1: return drive<BlockQ5_1, BlockQ8_1, row_q5_1, QK>;
        case TensorType::Q8_0: return drive<BlockQ8_0, BlockQ8_0, row_q8_0, QK>;
        case TensorType::Q2_K: return drive<BlockQ2_K, BlockQ8_K, row_q2_k, QK_K>;
        case TensorType::Q3_K: return drive<BlockQ3_K, BlockQ8_K, row_q3_k, QK_K>;
        case TensorType::Q4_K: return drive<BlockQ4_K, BlockQ8_K, row_q4_k, QK_K>;
        case TensorType::Q5_K: return drive<BlockQ5_K, BlockQ8_K, row_q5_k, QK_K>;
        case TensorType::Q6_K: return drive<BlockQ6_K, BlockQ8_K, row_q6_k, QK_K>;
        case TensorType::F32: return drive<float, float, row_f32, 1>;
        case TensorType::F16: return drive<uint16_t, float, row_f16, 1>;
        case TensorType::BF16: return drive<uint16_t, float, row_bf16, 1>;
        default: return nullptr;
    }
}

}  // namespace mn::detail

#endif  // METALLIC_HAVE_NEON
