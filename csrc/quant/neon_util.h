// Small NEON helpers shared by the *_neon.cpp files of csrc/quant.
#pragma once

#if defined(METALLIC_HAVE_NEON)

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

namespace mn::detail {

inline int8x16_t s8(uint8x16_t v) { return vreinterpretq_s8_u8(v); }
inline uint8x16_t shr(uint8x16_t v, int n) { return vshlq_u8(v, vdupq_n_s8(int8_t(-n))); }

// Bits 0..15 (half 0) or 16..31 (half 1) of the little-endian word at p -> 0x10 per set bit.
inline uint8x16_t expand_bits_0x10(const uint8_t* p, int half) {
    uint32_t bits;
    std::memcpy(&bits, p, 4);
    const uint8x16_t bytes = vreinterpretq_u8_u32(vdupq_n_u32(bits));
    const uint8_t idx0[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    const uint8_t sel[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t idx = vaddq_u8(vld1q_u8(idx0), vdupq_n_u8(uint8_t(2 * half)));
    return vandq_u8(vtstq_u8(vqtbl1q_u8(bytes, idx), vld1q_u8(sel)), vdupq_n_u8(0x10));
}

}  // namespace mn::detail

#endif  // METALLIC_HAVE_NEON
