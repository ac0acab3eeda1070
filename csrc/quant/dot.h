// Dot products of quantized weight rows with quantized activation rows: the
// inner kernels of the CPU engine's matrix-vector (decode) and matrix-matrix
// (prefill) products.
//
// Each weight type is paired with one activation format, chosen so the block
// products are integer dot products with one float multiply-add per block:
//   Q4_0, Q5_0, Q8_0 weights  x  Q8_0 activations
//   Q4_1, Q5_1 weights        x  Q8_1 activations (s = d * sum(q) carries the weight minimum)
//   Q2_K .. Q6_K weights      x  Q8_K activations (bsums carry the minimums / offsets)
//   F32, F16, BF16 weights    x  F32 activations
// Activations must come from quantize_row (quant values within [-127, 127]:
// the AVX2 kernels use a sign trick that cannot represent -128). Q8_0/Q8_1
// store d (and Q8_1 s = d * sum(q), up to 32 * max|x|) in fp16, so activations
// must stay below ~2000 in magnitude for Q8_1 (and ~8e6 for Q8_0); Q8_K's f32 d has no such limit.
//
// Precision: integer sums within a block are exact; per-block results are
// accumulated in float32, so results differ from a float64 reference by about
// (number of blocks) * 2^-24 relative to the sum of |products|, plus, for Q8_1
// in the scalar and NEON kernels, the fp16 rounding of s (2^-11 relative to
// |m_w| * |s|; the AVX2 kernels recompute d * sum(q) in float).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/cpu_features.h"
#include "quant/formats.h"

namespace mn {

// out[r * out_stride + c] = dot(weight row r, activation row c) for r < nr, c < nc.
// Rows hold n elements (a multiple of both formats' block sizes); weight row r
// starts at w + r * w_row_bytes, activation row c at a + c * a_row_bytes.
using DotFn = void (*)(int64_t n, const void* w, size_t w_row_bytes, int nr, const void* a, size_t a_row_bytes,
                       int nc, float* out, size_t out_stride);

struct DotKernel {
    TensorType act_type;  // the activation format fn expects
    DotFn fn;             // nullptr: no kernel for this weight type at all
    Isa isa;              // the kernel family fn belongs to (Scalar where `isa` has no kernel for the type)
};

// The kernel for `weight_type` on `isa` (which must be available: see
// isa_available). Types without a SIMD kernel on `isa` get the scalar one;
// types with no kernel at all get fn == nullptr.
DotKernel get_dot_kernel(TensorType weight_type, Isa isa);

// The activation format paired with weight_type (F32 if it has none).
TensorType dot_activation_type(TensorType weight_type);

}  // namespace mn
