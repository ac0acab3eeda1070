// Scalar dot-product kernels: the reference the SIMD kernels are tested against,
// written as plainly as the formats allow. Each block's integer sum is exact;
// blocks are combined in float32 (see dot.h for the precision this gives).
#include <cstring>

#include "common/fp16.h"
#include "quant/blocks.h"
#include "quant/kernels.h"

namespace mn::detail {
namespace {

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

inline int q5_value(const uint8_t* qs, const uint8_t* qh, int i) {
    uint32_t h;
    std::memcpy(&h, qh, 4);
    const int lo = i < 16 ? (qs[i] & 0x0F) : (qs[i - 16] >> 4);
    return lo | int(((h >> i) & 1) << 4);
}

float row_q4_0(int64_t nb, const BlockQ4_0* w, const BlockQ8_0* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0;
        for (int j = 0; j < 16; ++j)
            sumi += ((w[b].qs[j] & 0x0F) - 8) * a[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * a[b].qs[j + 16];
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) * float(sumi);
    }
    return acc;
}

float row_q4_1(int64_t nb, const BlockQ4_1* w, const BlockQ8_1* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0;
        for (int j = 0; j < 16; ++j) sumi += (w[b].qs[j] & 0x0F) * a[b].qs[j] + (w[b].qs[j] >> 4) * a[b].qs[j + 16];
        // sum((d q + m) * da qa) = d da sum(q qa) + m * (da sum(qa)) = ... + m * s
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) * float(sumi) + fp16_to_float(w[b].m) * fp16_to_float(a[b].s);
    }
    return acc;
}

float row_q5_0(int64_t nb, const BlockQ5_0* w, const BlockQ8_0* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0;
        for (int i = 0; i < 32; ++i) sumi += (q5_value(w[b].qs, w[b].qh, i) - 16) * a[b].qs[i];
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) * float(sumi);
    }
    return acc;
}

float row_q5_1(int64_t nb, const BlockQ5_1* w, const BlockQ8_1* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0;
        for (int i = 0; i < 32; ++i) sumi += q5_value(w[b].qs, w[b].qh, i) * a[b].qs[i];
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) * float(sumi) + fp16_to_float(w[b].m) * fp16_to_float(a[b].s);
    }
    return acc;
}

float row_q8_0(int64_t nb, const BlockQ8_0* w, const BlockQ8_0* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0;
        for (int i = 0; i < 32; ++i) sumi += w[b].qs[i] * a[b].qs[i];
        acc += fp16_to_float(w[b].d) * fp16_to_float(a[b].d) * float(sumi);
    }
    return acc;
}

float row_q2_k(int64_t nb, const BlockQ2_K* w, const BlockQ8_K* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0, summ = 0;
        for (int k = 0; k < 16; ++k) {
            int s = 0;
            for (int e = 16 * k; e < 16 * k + 16; ++e) {
                const int h = e / 128, j = (e / 32) % 4, l = e % 32;
                s += ((w[b].qs[32 * h + l] >> (2 * j)) & 3) * a[b].qs[e];
            }
            sumi += (w[b].scales[k] & 0x0F) * s;
            summ += (w[b].scales[k] >> 4) * a[b].bsums[k];
        }
        const float da = a[b].d;
        acc += fp16_to_float(w[b].d) * da * float(sumi) - fp16_to_float(w[b].dmin) * da * float(summ);
    }
    return acc;
}

float row_q3_k(int64_t nb, const BlockQ3_K* w, const BlockQ8_K* a) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        int sumi = 0;
        for (int k = 0; k < 16; ++k) {
            int s = 0;
            for (int e = 16 * k; e < 16 * k + 16; ++e) {
                const int h = e / 128, j = (e / 32) % 4, l = e % 32;
                const int low = (w[b].qs[32 * h + l] >> (2 * j)) & 3;
                const int high = (w[b].hmask[l] >> (e / 32)) & 1;
                s += (low - (high ? 0 : 4)) * a[b].qs[e];
            }
            sumi += k_scale_q3(w[b].scales, k) * s;
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
            const uint8_t* q = w[b].qs + 32 * (k / 2);
            int s = 0;
            for (int l = 0; l < 32; ++l) {
                int v = (q[l] >> (4 * (k % 2))) & 0x0F;
                if constexpr (Five) v |= ((reinterpret_cast<const BlockQ5_K*>(&w[b])->qh[l] >> k) & 1) << 4;
                s += v * a[b].qs[32 * k + l];
            }
            sumi += sc * s;
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
        for (int k = 0; k < 16; ++k) {
            int s = 0;
            for (int e = 16 * k; e < 16 * k + 16; ++e) {
                const int h = e / 128, r = e % 128;
                const int lo = (w[b].ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
                const int hi = (w[b].qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
                s += ((lo | (hi << 4)) - 32) * a[b].qs[e];
            }
            sumi += w[b].scales[k] * s;
        }
        acc += fp16_to_float(w[b].d) * a[b].d * float(sumi);
    }
    return acc;
}

float row_f32(int64_t n, const float* w, const float* a) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += w[i] * a[i];
    return acc;
}
float row_f16(int64_t n, const uint16_t* w, const float* a) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += fp16_to_float(w[i]) * a[i];
    return acc;
}
float row_bf16(int64_t n, const uint16_t* w, const float* a) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += bf16_to_float(w[i]) * a[i];
    return acc;
}

}  // namespace

DotFn dot_fn_scalar(TensorType t) {
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
