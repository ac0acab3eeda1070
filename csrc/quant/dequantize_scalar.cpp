// The reference (scalar) dequantizers and quantizers.
//
// The arithmetic follows the format definitions in the same order of float32
// operations as gguf-py's numpy reference (e.g. Q4_K: (d * sc) * q - dmin * m),
// and csrc/quant/*.cpp are built with -ffp-contract=off, so results are
// bit-identical to it and to the SIMD paths (which do the same operations lane-wise).
#include <cmath>
#include <cstring>

#include "common/fp16.h"
#include "quant/blocks.h"
#include "quant/kernels.h"

namespace mn::detail {
namespace {

void deq_f32(const void* src, float* y, int64_t n) { std::memcpy(y, src, size_t(n) * 4); }

void deq_f16(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_float(x[i]);
}

void deq_bf16(const void* src, float* y, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_float(x[i]);
}

void deq_q4_0(const void* src, float* y, int64_t nb) {
    const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d);
        for (int j = 0; j < QK / 2; ++j) {
            y[j] = d * float((b[i].qs[j] & 0x0F) - 8);
            y[j + QK / 2] = d * float((b[i].qs[j] >> 4) - 8);
        }
    }
}

void deq_q4_1(const void* src, float* y, int64_t nb) {
    const BlockQ4_1* b = static_cast<const BlockQ4_1*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d), m = fp16_to_float(b[i].m);
        for (int j = 0; j < QK / 2; ++j) {
            y[j] = d * float(b[i].qs[j] & 0x0F) + m;
            y[j + QK / 2] = d * float(b[i].qs[j] >> 4) + m;
        }
    }
}

inline uint32_t load_u32le(const uint8_t* p) {
    return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

void deq_q5_0(const void* src, float* y, int64_t nb) {
    const BlockQ5_0* b = static_cast<const BlockQ5_0*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d);
        const uint32_t qh = load_u32le(b[i].qh);
        for (int j = 0; j < QK / 2; ++j) {
            const int lo = (b[i].qs[j] & 0x0F) | int(((qh >> j) & 1) << 4);
            const int hi = (b[i].qs[j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
            y[j] = d * float(lo - 16);
            y[j + QK / 2] = d * float(hi - 16);
        }
    }
}

void deq_q5_1(const void* src, float* y, int64_t nb) {
    const BlockQ5_1* b = static_cast<const BlockQ5_1*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d), m = fp16_to_float(b[i].m);
        const uint32_t qh = load_u32le(b[i].qh);
        for (int j = 0; j < QK / 2; ++j) {
            const int lo = (b[i].qs[j] & 0x0F) | int(((qh >> j) & 1) << 4);
            const int hi = (b[i].qs[j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
            y[j] = d * float(lo) + m;
            y[j + QK / 2] = d * float(hi) + m;
        }
    }
}

void deq_q8_0(const void* src, float* y, int64_t nb) {
    const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d);
        for (int j = 0; j < QK; ++j) y[j] = d * float(b[i].qs[j]);
    }
}

void deq_q8_1(const void* src, float* y, int64_t nb) {
    const BlockQ8_1* b = static_cast<const BlockQ8_1*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_float(b[i].d);  // s is redundant for decoding
        for (int j = 0; j < QK; ++j) y[j] = d * float(b[i].qs[j]);
    }
}

void deq_q2_k(const void* src, float* y, int64_t nb) {
    const BlockQ2_K* b = static_cast<const BlockQ2_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d), dmin = fp16_to_float(b[i].dmin);
        for (int e = 0; e < QK_K; ++e) {
            const int h = e / 128, j = (e / 32) % 4, l = e % 32;
            const int q = (b[i].qs[32 * h + l] >> (2 * j)) & 3;
            const uint8_t s = b[i].scales[e / 16];
            const float dl = d * float(s & 0x0F), ml = dmin * float(s >> 4);
            y[e] = dl * float(q) - ml;
        }
    }
}

void deq_q3_k(const void* src, float* y, int64_t nb) {
    const BlockQ3_K* b = static_cast<const BlockQ3_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d);
        float dl[16];
        for (int k = 0; k < 16; ++k) dl[k] = d * float(k_scale_q3(b[i].scales, k));
        for (int e = 0; e < QK_K; ++e) {
            const int h = e / 128, j = (e / 32) % 4, l = e % 32;
            const int low = (b[i].qs[32 * h + l] >> (2 * j)) & 3;
            const int high = (b[i].hmask[l] >> (e / 32)) & 1;
            y[e] = dl[e / 16] * float(low - (high ? 0 : 4));
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
            const uint8_t* q = b[i].qs + 32 * (k / 2);
            const int shift = 4 * (k % 2);
            for (int l = 0; l < 32; ++l) y[32 * k + l] = ds * float((q[l] >> shift) & 0x0F) - dm;
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
            const uint8_t* q = b[i].qs + 32 * (k / 2);
            const int shift = 4 * (k % 2);
            for (int l = 0; l < 32; ++l) {
                const int v = ((q[l] >> shift) & 0x0F) | (((b[i].qh[l] >> k) & 1) << 4);
                y[32 * k + l] = ds * float(v) - dm;
            }
        }
    }
}

void deq_q6_k(const void* src, float* y, int64_t nb) {
    const BlockQ6_K* b = static_cast<const BlockQ6_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = fp16_to_float(b[i].d);
        for (int e = 0; e < QK_K; ++e) {
            const int h = e / 128, r = e % 128;
            const int lo = (b[i].ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
            const int hi = (b[i].qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            const float ds = d * float(b[i].scales[e / 16]);
            y[e] = ds * float((lo | (hi << 4)) - 32);
        }
    }
}

void deq_q8_k(const void* src, float* y, int64_t nb) {
    const BlockQ8_K* b = static_cast<const BlockQ8_K*>(src);
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        const float d = b[i].d;
        for (int j = 0; j < QK_K; ++j) y[j] = d * float(b[i].qs[j]);
    }
}

// ---------------------------------------------------------------------------
// Quantizers. d = amax / 127 and q = round-half-away-from-zero(x * (1 / d)),
// the Q8_0 definition (gguf-py's quantizer is bit-exact with it); the clamp
// only matters for non-finite input (the Python layer rejects that) and keeps
// the float -> int conversion defined.
// ---------------------------------------------------------------------------
inline int8_t round_q(float v) {
    v = std::fmin(std::fmax(std::round(v), -127.0f), 127.0f);
    return int8_t(v);
}

inline float block_amax(const float* x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    return amax;
}

void quant_q8_0(const float* x, void* dst, int64_t nb) {
    BlockQ8_0* b = static_cast<BlockQ8_0*>(dst);
    for (int64_t i = 0; i < nb; ++i, x += QK) {
        const float d = block_amax(x, QK) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = float_to_fp16(d);
        for (int j = 0; j < QK; ++j) b[i].qs[j] = round_q(x[j] * id);
    }
}

void quant_q8_1(const float* x, void* dst, int64_t nb) {
    BlockQ8_1* b = static_cast<BlockQ8_1*>(dst);
    for (int64_t i = 0; i < nb; ++i, x += QK) {
        const float d = block_amax(x, QK) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; ++j) {
            b[i].qs[j] = round_q(x[j] * id);
            sum += b[i].qs[j];
        }
        b[i].d = float_to_fp16(d);
        b[i].s = float_to_fp16(d * float(sum));
    }
}

void quant_q8_k(const float* x, void* dst, int64_t nb) {
    BlockQ8_K* b = static_cast<BlockQ8_K*>(dst);
    for (int64_t i = 0; i < nb; ++i, x += QK_K) {
        const float d = block_amax(x, QK_K) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = d;
        for (int g = 0; g < QK_K / 16; ++g) {
            int sum = 0;
            for (int j = 16 * g; j < 16 * g + 16; ++j) {
                b[i].qs[j] = round_q(x[j] * id);
                sum += b[i].qs[j];
            }
            b[i].bsums[g] = int16_t(sum);
        }
    }
}

}  // namespace

DequantFn dequant_fn_scalar(TensorType t) {
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

QuantFn quant_fn_scalar(TensorType t) {
    switch (t) {
        case TensorType::Q8_0: return quant_q8_0;
        case TensorType::Q8_1: return quant_q8_1;
        case TensorType::Q8_K: return quant_q8_k;
        default: return nullptr;
    }
}

}  // namespace mn::detail
