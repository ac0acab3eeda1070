// Byte layouts of the quantized block formats stored in GGUF files.
//
// These structs are the file format (implemented from the format's description,
// not copied from ggml): each block covers QK4_0.. / QK_K elements and the
// structs are packed so sizeof() equals the on-disk block size, which the
// static_asserts below check against the type table in formats.cpp.
// Half-precision fields are stored as raw uint16_t bits (see common/fp16.h).
//
// Element order inside a block (which bits belong to element i):
//   Q4_0/Q4_1:  element j < 16 is the low nibble of qs[j], element j + 16 the high nibble.
//   Q5_0/Q5_1:  as Q4 for the low 4 bits; bit 4 of element i is bit i of the
//               little-endian uint32 qh.
//   Q8_0/Q8_1/Q8_K: qs[i] is element i.
//   Q2_K:  element 128*h + 32*j + l (h < 2, j < 4, l < 32) is bits 2j..2j+1 of
//          qs[32*h + l]; sub-block (16 elements) k = element / 16 has scale
//          scales[k] & 15 and min scales[k] >> 4.
//   Q3_K:  low 2 bits as Q2_K; element i has its "high" bit in bit (i / 32) of
//          hmask[i % 32], and q = low - (high ? 0 : 4). 16 signed 6-bit scales,
//          minus 32, packed in 12 bytes (see k_scale_q3).
//   Q4_K:  element 64*c + 32*s + l is nibble s of qs[32*c + l]; sub-block of 32
//          elements k = element / 32 has 6-bit scale and min packed in 12 bytes
//          (see k_scale_min).
//   Q5_K:  as Q4_K for the low 4 bits; bit 4 of element i is bit (i / 32) of qh[i % 32].
//   Q6_K:  element 128*h + 64*s + l (l < 64) has low nibble s of ql[64*h + l];
//          element 128*h + 32*j + l (l < 32) has bits 4..5 from bits 2j..2j+1 of
//          qh[32*h + l]; q - 32, int8 scale per 16 elements.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mn {

constexpr int QK = 32;     // elements per block of the 32-element formats
constexpr int QK_K = 256;  // elements per super-block of the K formats

#pragma pack(push, 1)

struct BlockQ4_0 { uint16_t d; uint8_t qs[QK / 2]; };
struct BlockQ4_1 { uint16_t d; uint16_t m; uint8_t qs[QK / 2]; };
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; };
struct BlockQ5_1 { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[QK / 2]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[QK]; };
// s = d * sum(qs), precomputed so dot products with Q4_1/Q5_1 weights can add the
// weight minimum's contribution with one multiply per block.
struct BlockQ8_1 { uint16_t d; uint16_t s; int8_t qs[QK]; };

struct BlockQ2_K {
    uint8_t scales[QK_K / 16];  // low nibble: scale, high nibble: min, per 16 elements
    uint8_t qs[QK_K / 4];
    uint16_t d;
    uint16_t dmin;
};
struct BlockQ3_K {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
};
struct BlockQ4_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[QK_K / 2];
};
struct BlockQ5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
struct BlockQ6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
};
// The activation format of the K dot products: float scale, and the sums of
// each 16 quants so the weight minimums can be applied per sub-block cheaply.
struct BlockQ8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
};

#pragma pack(pop)

static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block size");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block size");
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block size");
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block size");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block size");
static_assert(sizeof(BlockQ8_1) == 36, "Q8_1 block size");
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block size");
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block size");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block size");
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block size");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block size");
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K block size");

// The 8 (scale, min) pairs of Q4_K/Q5_K, 6 bits each, packed in 12 bytes:
// sub-blocks 0-3 use the low 6 bits of bytes 0-3 (scale) and 4-7 (min);
// sub-blocks 4-7 take their low 4 bits from the nibbles of bytes 8-11 and their
// high 2 bits from the top 2 bits of bytes 0-3 (scale) and 4-7 (min).
inline void k_scale_min(const uint8_t* s, int j, uint8_t* sc, uint8_t* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = uint8_t((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
        *m = uint8_t((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// The 16 signed scales of Q3_K: low 4 bits from the nibbles of bytes 0-7
// (scale k < 8: low nibble of byte k; k >= 8: high nibble of byte k - 8), high
// 2 bits from bits 2*(k/4)..+1 of byte 8 + k % 4; the 6-bit value is biased by 32.
inline int k_scale_q3(const uint8_t* s, int k) {
    const int lo = k < 8 ? (s[k] & 0x0F) : (s[k - 8] >> 4);
    const int hi = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

}  // namespace mn
