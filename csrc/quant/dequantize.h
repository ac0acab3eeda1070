// Dequantization and quantization of rows of GGUF tensor data.
// Every type has a scalar path (the reference) and, where compiled in and
// supported by the CPU, a SIMD path (AVX2 on x86-64, NEON on ARM); `isa`
// picks which one runs so tests can check each against the other.
#pragma once

#include <cstdint>

#include "common/cpu_features.h"
#include "quant/formats.h"

namespace mn {

// Decode n elements (a multiple of the type's block size) of `type` at src into dst.
// Throws InvalidArgument if the type has no kernel or n is not a whole number of blocks.
void dequantize_row(TensorType type, const void* src, float* dst, int64_t n, Isa isa);

// Encode n floats (a multiple of the block size) as `type`. Q8_0, Q8_1 and Q8_K
// are supported (the activation formats of the integer dot products).
void quantize_row(TensorType type, const float* src, void* dst, int64_t n, Isa isa);

// True for the types quantize_row accepts (Q8_0, Q8_1, Q8_K).
bool can_quantize(TensorType type);

}  // namespace mn
