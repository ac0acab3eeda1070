// Weight panels: a band of quantized weight rows unpacked for integer
// matrix-matrix products (prefill).
//
// Every integer weight format is rewritten into one shape: unsigned 8-bit codes
// q and, per group of 16 elements, a scale s and an offset o, such that
//     w[i] = s[i / 16] * q[i] - o[i / 16]
// (Q5_0: q in 0..31, s = d, o = 16 d; Q8_0: q = code + 128, o = 128 d; Q4_K:
// s = d * sc, o = dmin * m; Q6_K: q in 0..63, o = 32 s; ...). One integer GEMM
// microkernel then serves every format, and the format-specific work, decoding
// the bits, is done once per weight band instead of once per activation column.
// A panel is transient scratch (a few dozen rows); the model's weights are
// never held in any other layout.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/formats.h"

namespace mn {

constexpr int kPanelGroup = 16;  // elements per scale/offset group

// True if `type` can be unpacked into a panel (the integer block formats).
bool panel_supported(TensorType type);

// Unpacks weight rows [0, rows) of n elements (n a multiple of the type's block
// size) into q (row r at q + r * q_stride bytes), scale and offset (row r at
// + r * s_stride floats, n / 16 groups each). Elements n .. q_stride - 1 and
// their groups are left untouched: the caller zero-fills padding once.
void unpack_panel(TensorType type, const void* w, size_t w_row_bytes, int rows, int64_t n, uint8_t* q,
                  size_t q_stride, float* scale, float* offset, size_t s_stride);

}  // namespace mn
