// Small AVX2 helpers shared by the *_avx2.cpp files of csrc/quant. Include only
// from files compiled with the AVX2 flags (the CMake rule for *_avx2.cpp).
#pragma once

#if defined(METALLIC_HAVE_AVX2)

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace mn::detail {

// 16 packed nibble bytes -> 32 bytes: elements 0..15 (low nibbles) in the low
// lane, 16..31 (high nibbles) in the high lane: the Q4_x/Q5_x element order.
// One broadcast load, one per-lane variable shift (0 in the low lane, 4 in the
// high one) and one mask: 3 uops instead of 5 for the two-halves version.
inline __m256i unpack_nibbles32(const uint8_t* qs) {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
    const __m256i sh = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return _mm256_and_si256(sh, _mm256_set1_epi8(0x0F));
}

// Bit i of the little-endian 32-bit word at p -> byte i = 0x10 if set, else 0.
#if defined(__AVX512BW__) && defined(__AVX512VL__)
// Native builds on an AVX-512 CPU (-march=native defines these for every file):
// the 32 bits are a byte mask register already. Portable builds take the branch below.
inline __m256i expand_bits_0x10(const uint8_t* p) {
    uint32_t bits;
    std::memcpy(&bits, p, 4);
    return _mm256_maskz_mov_epi8(__mmask32(bits), _mm256_set1_epi8(0x10));
}
#else
inline __m256i expand_bits_0x10(const uint8_t* p) {
    uint32_t bits;
    std::memcpy(&bits, p, 4);
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i sel = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), shuf);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}
#endif

// Byte-wise (v >> shift) & mask, shifting 16-bit lanes (the mask drops the bits
// that crossed from the neighbour byte).
inline __m256i shr_mask(__m256i v, int shift, int mask) {
    return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(char(mask)));
}

}  // namespace mn::detail

#endif  // METALLIC_HAVE_AVX2
