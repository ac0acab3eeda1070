// Scalar unpacking of each integer weight format into the panel shape of
// panel.h. Plain code: it runs once per weight band and is amortized over every
// activation column of a prefill chunk, so it is a small share of the time.
#include "quant/panel.h"

#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common/error.h"
#include "common/fp16.h"
#include "quant/blocks.h"

namespace mn {

namespace {

// One row: q[0..n), s and o per 16 elements.
using UnpackRow = void (*)(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o);

// Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0: one scale per 32 elements, stored for both groups.
inline void set_pair(float* s, float* o, int64_t g, float scale, float offset) {
    s[g] = s[g + 1] = scale;
    o[g] = o[g + 1] = offset;
}

void unpack_q4_0(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ4_0*>(w);
    for (int64_t i = 0; i < n / QK; ++i, q += QK) {
        for (int j = 0; j < 16; ++j) {
            q[j] = b[i].qs[j] & 15;
            q[j + 16] = b[i].qs[j] >> 4;
        }
        const float d = fp16_to_float(b[i].d);
        set_pair(s, o, 2 * i, d, 8.0f * d);
    }
}

void unpack_q4_1(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ4_1*>(w);
    for (int64_t i = 0; i < n / QK; ++i, q += QK) {
        for (int j = 0; j < 16; ++j) {
            q[j] = b[i].qs[j] & 15;
            q[j + 16] = b[i].qs[j] >> 4;
        }
        set_pair(s, o, 2 * i, fp16_to_float(b[i].d), -fp16_to_float(b[i].m));
    }
}

template <typename B>
void unpack_five_bits(const B& b, uint8_t* q) {
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    for (int j = 0; j < 16; ++j) {
        q[j] = uint8_t((b.qs[j] & 15) | (((qh >> j) & 1) << 4));
        q[j + 16] = uint8_t((b.qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    }
}

void unpack_q5_0(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ5_0*>(w);
    for (int64_t i = 0; i < n / QK; ++i, q += QK) {
        unpack_five_bits(b[i], q);
        const float d = fp16_to_float(b[i].d);
        set_pair(s, o, 2 * i, d, 16.0f * d);
    }
}

void unpack_q5_1(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ5_1*>(w);
    for (int64_t i = 0; i < n / QK; ++i, q += QK) {
        unpack_five_bits(b[i], q);
        set_pair(s, o, 2 * i, fp16_to_float(b[i].d), -fp16_to_float(b[i].m));
    }
}

void unpack_q8_0(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(w);
    for (int64_t i = 0; i < n / QK; ++i, q += QK) {
        for (int j = 0; j < QK; ++j) q[j] = uint8_t(int(b[i].qs[j]) + 128);
        const float d = fp16_to_float(b[i].d);
        set_pair(s, o, 2 * i, d, 128.0f * d);
    }
}

void unpack_q2_k(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ2_K*>(w);
    for (int64_t i = 0; i < n / QK_K; ++i, q += QK_K, s += 16, o += 16) {
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < 4; ++j)
                for (int l = 0; l < 32; ++l) q[128 * h + 32 * j + l] = (b[i].qs[32 * h + l] >> (2 * j)) & 3;
        const float d = fp16_to_float(b[i].d), dmin = fp16_to_float(b[i].dmin);
        for (int k = 0; k < 16; ++k) {
            s[k] = d * float(b[i].scales[k] & 15);
            o[k] = dmin * float(b[i].scales[k] >> 4);
        }
    }
}

void unpack_q3_k(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ3_K*>(w);
    for (int64_t i = 0; i < n / QK_K; ++i, q += QK_K, s += 16, o += 16) {
        // code = low 2 bits + 4 * high bit, in 0..7; the value is code - 4.
        for (int e = 0; e < QK_K; ++e) {
            const int h = e / 128, j = (e % 128) / 32, l = e % 32;
            const int low = (b[i].qs[32 * h + l] >> (2 * j)) & 3;
            const int high = (b[i].hmask[e % 32] >> (e / 32)) & 1;
            q[e] = uint8_t(low + 4 * high);
        }
        const float d = fp16_to_float(b[i].d);
        for (int k = 0; k < 16; ++k) {
            s[k] = d * float(k_scale_q3(b[i].scales, k));
            o[k] = 4.0f * s[k];
        }
    }
}

template <bool Five, typename B>
void unpack_q45_k(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const B*>(w);
    for (int64_t i = 0; i < n / QK_K; ++i, q += QK_K, s += 16, o += 16) {
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) {
                const uint8_t byte = b[i].qs[32 * c + l];
                uint8_t lo = byte & 15, hi = byte >> 4;
                if constexpr (Five) {
                    const uint8_t* qh = reinterpret_cast<const BlockQ5_K&>(b[i]).qh;
                    lo |= uint8_t(((qh[l] >> (2 * c)) & 1) << 4);
                    hi |= uint8_t(((qh[l] >> (2 * c + 1)) & 1) << 4);
                }
                q[64 * c + l] = lo;
                q[64 * c + 32 + l] = hi;
            }
        const float d = fp16_to_float(b[i].d), dmin = fp16_to_float(b[i].dmin);
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            k_scale_min(b[i].scales, j, &sc, &m);
            set_pair(s, o, 2 * j, d * float(sc), dmin * float(m));
        }
    }
}

void unpack_q6_k(const uint8_t* w, int64_t n, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ6_K*>(w);
    for (int64_t i = 0; i < n / QK_K; ++i, q += QK_K, s += 16, o += 16) {
        for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 32; ++l) {
                const uint8_t* ql = b[i].ql + 64 * h;
                const uint8_t qh = b[i].qh[32 * h + l];
                uint8_t* qq = q + 128 * h;
                qq[l] = uint8_t((ql[l] & 15) | ((qh & 3) << 4));
                qq[l + 32] = uint8_t((ql[l + 32] & 15) | (((qh >> 2) & 3) << 4));
                qq[l + 64] = uint8_t((ql[l] >> 4) | (((qh >> 4) & 3) << 4));
                qq[l + 96] = uint8_t((ql[l + 32] >> 4) | (((qh >> 6) & 3) << 4));
            }
        const float d = fp16_to_float(b[i].d);
        for (int k = 0; k < 16; ++k) {
            s[k] = d * float(b[i].scales[k]);
            o[k] = 32.0f * s[k];
        }
    }
}

#if defined(__AVX2__)
// Fast paths for the 32-element formats, writing panel order directly (the
// Qwen2.5 models keep most of their matrices in Q5_0). They compile where the
// build targets AVX2 (the default native build); elsewhere the plain code runs.

// Stores block b's 32 codes at their panel-order places: piece v (elements 8v .. 8v + 7)
// at chunk offset 64 v + 8 (b % 8); in a row's closing half chunk, half v
// (elements 16 v .. 16 v + 15) at offset 64 v + 16 (b % 8).
inline void store_block(uint8_t* row, size_t n_pad, int64_t b, __m256i codes) {
    const size_t chunk = size_t(b / 8) * kPanelChunk;
    const __m128i lo = _mm256_castsi256_si128(codes), hi = _mm256_extracti128_si256(codes, 1);
    if (chunk + kPanelChunk > n_pad) {
        uint8_t* base = row + chunk + 16 * (b % 8);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(base), lo);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(base + 64), hi);
        return;
    }
    uint8_t* base = row + chunk + 8 * (b % 8);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(base), lo);
    _mm_storeh_pd(reinterpret_cast<double*>(base + 64), _mm_castsi128_pd(lo));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(base + 128), hi);
    _mm_storeh_pd(reinterpret_cast<double*>(base + 192), _mm_castsi128_pd(hi));
}

// Elements 0-15 from the low nibbles of 16 bytes, 16-31 from the high ones.
inline __m256i nibbles(const uint8_t* qs) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m128i m = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

// 0x10 in byte i where bit i of the 32-bit word is set.
inline __m256i bit4(const uint8_t* qh) {
    uint32_t bits;
    std::memcpy(&bits, qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)),
                                               _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                                                2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i mask = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask), _mm256_set1_epi8(0x10));
}

void panel_q5_0(const uint8_t* w, int64_t n, size_t n_pad, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ5_0*>(w);
    for (int64_t i = 0; i < n / QK; ++i) {
        store_block(q, n_pad, i, _mm256_or_si256(nibbles(b[i].qs), bit4(b[i].qh)));
        const float d = fp16_to_float(b[i].d);
        set_pair(s, o, 2 * i, d, 16.0f * d);
    }
}

void panel_q4_0(const uint8_t* w, int64_t n, size_t n_pad, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ4_0*>(w);
    for (int64_t i = 0; i < n / QK; ++i) {
        store_block(q, n_pad, i, nibbles(b[i].qs));
        const float d = fp16_to_float(b[i].d);
        set_pair(s, o, 2 * i, d, 8.0f * d);
    }
}

void panel_q8_0(const uint8_t* w, int64_t n, size_t n_pad, uint8_t* q, float* s, float* o) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(w);
    for (int64_t i = 0; i < n / QK; ++i) {
        const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
        store_block(q, n_pad, i, _mm256_xor_si256(codes, _mm256_set1_epi8(char(0x80))));  // + 128
        const float d = fp16_to_float(b[i].d);
        set_pair(s, o, 2 * i, d, 128.0f * d);
    }
}
#endif

// The unpackers that write panel order themselves (row length n_pad).
using UnpackPanelRow = void (*)(const uint8_t* w, int64_t n, size_t n_pad, uint8_t* q, float* s, float* o);

// The unpacker that writes panel order itself, if the type has one in this build.
UnpackPanelRow panel_order_fn(TensorType type) {
#if defined(__AVX2__)
    switch (type) {
        case TensorType::Q4_0: return panel_q4_0;
        case TensorType::Q5_0: return panel_q5_0;
        case TensorType::Q8_0: return panel_q8_0;
        default: break;
    }
#endif
    (void)type;
    return nullptr;
}

UnpackRow unpack_fn(TensorType type) {
    switch (type) {
        case TensorType::Q4_0: return unpack_q4_0;
        case TensorType::Q4_1: return unpack_q4_1;
        case TensorType::Q5_0: return unpack_q5_0;
        case TensorType::Q5_1: return unpack_q5_1;
        case TensorType::Q8_0: return unpack_q8_0;
        case TensorType::Q2_K: return unpack_q2_k;
        case TensorType::Q3_K: return unpack_q3_k;
        case TensorType::Q4_K: return unpack_q45_k<false, BlockQ4_K>;
        case TensorType::Q5_K: return unpack_q45_k<true, BlockQ5_K>;
        case TensorType::Q6_K: return unpack_q6_k;
        default: return nullptr;
    }
}

}  // namespace

bool panel_supported(TensorType type) { return unpack_fn(type) != nullptr; }

bool panel_groups_of_16(TensorType type) {
    return type == TensorType::Q2_K || type == TensorType::Q3_K || type == TensorType::Q6_K;
}

void to_panel_order(uint8_t* row, size_t n_pad) {
    size_t c = 0;
    for (; c + kPanelChunk <= n_pad; c += kPanelChunk) {
        uint64_t units[32];  // unit 4 j + v = elements [32 j + 8 v, +8)
        std::memcpy(units, row + c, kPanelChunk);
        for (int v = 0; v < 4; ++v)
            for (int j = 0; j < 8; ++j) std::memcpy(row + c + 64 * v + 8 * j, &units[4 * j + v], 8);
    }
    if (c < n_pad) {  // the half chunk
        uint8_t half[kPanelHalfChunk];  // half-block 2 j + v = elements [32 j + 16 v, +16)
        std::memcpy(half, row + c, kPanelHalfChunk);
        for (int v = 0; v < 2; ++v)
            for (int j = 0; j < 4; ++j) std::memcpy(row + c + 64 * v + 16 * j, half + 32 * j + 16 * v, 16);
    }
}

void unpack_panel(TensorType type, const void* w, size_t w_row_bytes, int rows, int64_t n, uint8_t* q,
                  size_t q_stride, float* scale, float* offset, size_t s_stride) {
    const UnpackRow fn = unpack_fn(type);
    if (!fn) throw InvalidArgument("unpack_panel: type has no panel form");
    if (const UnpackPanelRow direct = panel_order_fn(type)) {
        // The last (half) chunk is cleared first: the blocks past n are not written.
        const size_t last = size_t(n) / kPanelHalfChunk * kPanelHalfChunk;
        for (int r = 0; r < rows; ++r) {
            uint8_t* qr = q + size_t(r) * q_stride;
            if (last < q_stride) std::memset(qr + last, 0, q_stride - last);
            direct(static_cast<const uint8_t*>(w) + size_t(r) * w_row_bytes, n, q_stride, qr,
                   scale + size_t(r) * s_stride, offset + size_t(r) * s_stride);
        }
        return;
    }
    for (int r = 0; r < rows; ++r) {
        uint8_t* qr = q + size_t(r) * q_stride;
        fn(static_cast<const uint8_t*>(w) + size_t(r) * w_row_bytes, n, qr, scale + size_t(r) * s_stride,
           offset + size_t(r) * s_stride);
        std::memset(qr + n, 0, q_stride - size_t(n));
        to_panel_order(qr, q_stride);
    }
}

}  // namespace mn
