// NEON (AArch64) dequantizers and quantizers: the same unpack-to-bytes scheme
// as the AVX2 file, 16 quants per step. Separate multiply and add (this file is
// built with -ffp-contract=off) keep the results bit-identical to the scalar
// reference; tests/quant/neon_check.cpp checks that under qemu.
#if defined(METALLIC_HAVE_NEON)

#include <arm_neon.h>

#include <cstring>

#include "common/fp16.h"
#include "quant/blocks.h"
#include "quant/neon_util.h"
#include "quant/kernels.h"

namespace mn::detail {
namespace {

// y[0..15] = d * q (+/- m) for 16 signed bytes q.
template <int Op>  // 0: d*q, 1: d*q + m, 2: d*q - m
inline void put16(float* y, int8x16_t q, float32x4_t d, float32x4_t m) {
    const int16x8_t w0 = vmovl_s8(vget_low_s8(q)), w1 = vmovl_high_s8(q);
    const float32x4_t f[4] = {vcvtq_f32_s32(vmovl_s16(vget_low_s16(w0))), vcvtq_f32_s32(vmovl_high_s16(w0)),
                              vcvtq_f32_s32(vmovl_s16(vget_low_s16(w1))), vcvtq_f32_s32(vmovl_high_s16(w1))};
    for (int k = 0; k < 4; ++k) {
        float32x4_t v = vmulq_f32(d, f[k]);
        if (Op == 1) v = vaddq_f32(v, m);
        if (Op == 2) v = vsubq_f32(v, m);
        vst1q_f32(y + 4 * k, v);
    }
}
inline void put16_mul(float* y, int8x16_t q, float d) { put16<0>(y, q, vdupq_n_f32(d), vdupq_n_f32(0.0f)); }
inline void put16_mul_add(float* y, int8x16_t q, float d, float m) { put16<1>(y, q, vdupq_n_f32(d), vdupq_n_f32(m)); }
inline void put16_mul_sub(float* y, int8x16_t q, float d, float m) { put16<2>(y, q, vdupq_n_f32(d), vdupq_n_f32(m)); }

void deq_f32(const void* src, float* y, int64_t n) { std::memcpy(y, src, size_t(n) * 4); }

void deq_f16(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))));
    for (; i < n; ++i) y[i] = fp16_to_float(x[i]);
}

void deq_bf16(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(x + i), 16)));
    for (; i < n; ++i) y[i] = bf16_to_float(x[i]);
}

void deq_q4_0(const void* src, float* y, int64_t nb) {
    const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d);
        const uint8x16_t v = vld1q_u8(b[i].qs);
        put16_mul(y, vsubq_s8(s8(vandq_u8(v, vdupq_n_u8(0x0F))), vdupq_n_s8(8)), d);
        put16_mul(y + 16, vsubq_s8(s8(vshrq_n_u8(v, 4)), vdupq_n_s8(8)), d);
    }
}

void deq_q4_1(const void* src, float* y, int64_t nb) {
    const BlockQ4_1* b = static_cast<const BlockQ4_1*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d), m = fp16_to_float(b[i].m);
        const uint8x16_t v = vld1q_u8(b[i].qs);
        put16_mul_add(y, s8(vandq_u8(v, vdupq_n_u8(0x0F))), d, m);
        put16_mul_add(y + 16, s8(vshrq_n_u8(v, 4)), d, m);
    }
}

void deq_q5_0(const void* src, float* y, int64_t nb) {
    const BlockQ5_0* b = static_cast<const BlockQ5_0*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d);
        const uint8x16_t v = vld1q_u8(b[i].qs);
        const uint8x16_t lo = vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), expand_bits_0x10(b[i].qh, 0));
        const uint8x16_t hi = vorrq_u8(vshrq_n_u8(v, 4), expand_bits_0x10(b[i].qh, 1));
        put16_mul(y, vsubq_s8(s8(lo), vdupq_n_s8(16)), d);
        put16_mul(y + 16, vsubq_s8(s8(hi), vdupq_n_s8(16)), d);
    }
}

void deq_q5_1(const void* src, float* y, int64_t nb) {
    const BlockQ5_1* b = static_cast<const BlockQ5_1*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d), m = fp16_to_float(b[i].m);
        const uint8x16_t v = vld1q_u8(b[i].qs);
        put16_mul_add(y, s8(vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), expand_bits_0x10(b[i].qh, 0))), d, m);
        put16_mul_add(y + 16, s8(vorrq_u8(vshrq_n_u8(v, 4), expand_bits_0x10(b[i].qh, 1))), d, m);
    }
}

void deq_q8_0(const void* src, float* y, int64_t nb) {
    const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d);
        put16_mul(y, vld1q_s8(b[i].qs), d);
        put16_mul(y + 16, vld1q_s8(b[i].qs + 16), d);
    }
}

void deq_q8_1(const void* src, float* y, int64_t nb) {
    const BlockQ8_1* b = static_cast<const BlockQ8_1*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d);
        put16_mul(y, vld1q_s8(b[i].qs), d);
        put16_mul(y + 16, vld1q_s8(b[i].qs + 16), d);
    }
}

void deq_q2_k(const void* src, float* y, int64_t nb) {
    const BlockQ2_K* b = static_cast<const BlockQ2_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d), dmin = fp16_to_float(b[i].dmin);
        for (int h = 0; h < 2; ++h)
            for (int s = 0; s < 2; ++s) {
                const uint8x16_t q = vld1q_u8(b[i].qs + 32 * h + 16 * s);
                for (int j = 0; j < 4; ++j) {
                    const int k = 8 * h + 2 * j + s;
                    const uint8_t sc = b[i].scales[k];
                    put16_mul_sub(y + 16 * k, s8(vandq_u8(shr(q, 2 * j), vdupq_n_u8(3))), d * float(sc & 0x0F),
                                  dmin * float(sc >> 4));
                }
            }
    }
}

void deq_q3_k(const void* src, float* y, int64_t nb) {
    const BlockQ3_K* b = static_cast<const BlockQ3_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d);
        for (int h = 0; h < 2; ++h)
            for (int s = 0; s < 2; ++s) {
                const uint8x16_t q = vld1q_u8(b[i].qs + 32 * h + 16 * s);
                const uint8x16_t hm = vld1q_u8(b[i].hmask + 16 * s);
                for (int j = 0; j < 4; ++j) {
                    const int k = 8 * h + 2 * j + s;
                    const uint8x16_t set = vtstq_u8(hm, vdupq_n_u8(uint8_t(1u << (4 * h + j))));
                    const uint8x16_t minus = vbicq_u8(vdupq_n_u8(4), set);  // 4 where the high bit is clear
                    const int8x16_t v = vsubq_s8(s8(vandq_u8(shr(q, 2 * j), vdupq_n_u8(3))), s8(minus));
                    put16_mul(y + 16 * k, v, d * float(k_scale_q3(b[i].scales, k)));
                }
            }
    }
}

void deq_q4_k(const void* src, float* y, int64_t nb) {
    const BlockQ4_K* b = static_cast<const BlockQ4_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d), dmin = fp16_to_float(b[i].dmin);
        for (int k = 0; k < 8; ++k) {
            uint8_t sc, m;
            k_scale_min(b[i].scales, k, &sc, &m);
            const float ds = d * float(sc), dm = dmin * float(m);
            for (int half = 0; half < 2; ++half) {
                const uint8x16_t q = vld1q_u8(b[i].qs + 32 * (k / 2) + 16 * half);
                const uint8x16_t v = (k & 1) ? vshrq_n_u8(q, 4) : vandq_u8(q, vdupq_n_u8(0x0F));
                put16_mul_sub(y + 32 * k + 16 * half, s8(v), ds, dm);
            }
        }
    }
}

void deq_q5_k(const void* src, float* y, int64_t nb) {
    const BlockQ5_K* b = static_cast<const BlockQ5_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d), dmin = fp16_to_float(b[i].dmin);
        for (int k = 0; k < 8; ++k) {
            uint8_t sc, m;
            k_scale_min(b[i].scales, k, &sc, &m);
            const float ds = d * float(sc), dm = dmin * float(m);
            for (int half = 0; half < 2; ++half) {
                const uint8x16_t q = vld1q_u8(b[i].qs + 32 * (k / 2) + 16 * half);
                const uint8x16_t hb = vld1q_u8(b[i].qh + 16 * half);
                const uint8x16_t high = vandq_u8(vtstq_u8(hb, vdupq_n_u8(uint8_t(1u << k))), vdupq_n_u8(0x10));
                const uint8x16_t v = (k & 1) ? vshrq_n_u8(q, 4) : vandq_u8(q, vdupq_n_u8(0x0F));
                put16_mul_sub(y + 32 * k + 16 * half, s8(vorrq_u8(v, high)), ds, dm);
            }
        }
    }
}

void deq_q6_k(const void* src, float* y, int64_t nb) {
    const BlockQ6_K* b = static_cast<const BlockQ6_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d);
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < 4; ++j)
                for (int s = 0; s < 2; ++s) {
                    // Elements 128h + 32j + 16s + l: nibble j/2 of ql[64h + 32(j%2) + 16s + l],
                    // bits 2j.. of qh[32h + 16s + l].
                    const int k = 8 * h + 2 * j + s;
                    const uint8x16_t ql = vld1q_u8(b[i].ql + 64 * h + 32 * (j & 1) + 16 * s);
                    const uint8x16_t qh = vld1q_u8(b[i].qh + 32 * h + 16 * s);
                    const uint8x16_t lo = (j >> 1) ? vshrq_n_u8(ql, 4) : vandq_u8(ql, vdupq_n_u8(0x0F));
                    const uint8x16_t hi = vshlq_n_u8(vandq_u8(shr(qh, 2 * j), vdupq_n_u8(3)), 4);
                    put16_mul(y + 16 * k, vsubq_s8(s8(vorrq_u8(lo, hi)), vdupq_n_s8(32)),
                              d * float(b[i].scales[k]));
                }
    }
}

void deq_q8_k(const void* src, float* y, int64_t nb) {
    const BlockQ8_K* b = static_cast<const BlockQ8_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K)
        for (int j = 0; j < QK_K; j += 16) put16_mul(y + j, vld1q_s8(b[i].qs + j), b[i].d);
}

// ---------------------------------------------------------------------------
// Quantizers. FRINTA (vrndaq_f32) is round-half-away-from-zero, the same as
// std::round; FMAXNM/FMINNM treat NaN like fmax/fmin. Bytes equal the scalar ones.
// ---------------------------------------------------------------------------
float amax_of(const float* x, int n) {
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int j = 0; j < n; j += 4) m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(x + j)));
    return vmaxnmvq_f32(m);
}

// 16 floats -> 16 int8 at q; returns their sum.
inline int quant16(const float* x, float id, int8_t* q) {
    const float32x4_t vid = vdupq_n_f32(id);
    int32x4_t r[4];
    for (int k = 0; k < 4; ++k) {
        float32x4_t v = vrndaq_f32(vmulq_f32(vld1q_f32(x + 4 * k), vid));
        v = vminnmq_f32(vmaxnmq_f32(v, vdupq_n_f32(-127.0f)), vdupq_n_f32(127.0f));
        r[k] = vcvtq_s32_f32(v);
    }
    const int16x8_t w0 = vcombine_s16(vmovn_s32(r[0]), vmovn_s32(r[1]));
    const int16x8_t w1 = vcombine_s16(vmovn_s32(r[2]), vmovn_s32(r[3]));
    vst1q_s8(q, vcombine_s8(vmovn_s16(w0), vmovn_s16(w1)));
    return vaddvq_s32(vaddq_s32(vaddq_s32(r[0], r[1]), vaddq_s32(r[2], r[3])));
}

void quant_q8_0(const float* x, void* dst, int64_t nb) {
    BlockQ8_0* b = static_cast<BlockQ8_0*>(dst);
    for (int64_t i = 0; i < nb; ++i, x += QK) {
        const float d = amax_of(x, QK) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = float_to_fp16(d);
        quant16(x, id, b[i].qs);
        quant16(x + 16, id, b[i].qs + 16);
    }
}

void quant_q8_1(const float* x, void* dst, int64_t nb) {
    BlockQ8_1* b = static_cast<BlockQ8_1*>(dst);
    for (int64_t i = 0; i < nb; ++i, x += QK) {
        const float d = amax_of(x, QK) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const int sum = quant16(x, id, b[i].qs) + quant16(x + 16, id, b[i].qs + 16);
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
        for (int g = 0; g < QK_K / 16; ++g) b[i].bsums[g] = int16_t(quant16(x + 16 * g, id, b[i].qs + 16 * g));
    }
}

}  // namespace

DequantFn dequant_fn_neon(TensorType t) {
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

QuantFn quant_fn_neon(TensorType t) {
    switch (t) {
        case TensorType::Q8_0: return quant_q8_0;
        case TensorType::Q8_1: return quant_q8_1;
        case TensorType::Q8_K: return quant_q8_k;
        default: return nullptr;
    }
}

}  // namespace mn::detail

#endif  // METALLIC_HAVE_NEON
