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
// Codes are stored in chunks of 256 elements, each chunk in "panel order":
// 64-byte vector v of the chunk holds, for each of its 8 blocks of 32 j, the
// 8 elements [32 j + 8 v, 32 j + 8 v + 8). A 4-byte lane of any of the 4
// vectors then always covers elements of one block (lanes 2j, 2j + 1 <-> block
// j), so the integer products of all 4 vectors can be summed per lane before
// the block's scales are applied once. Weights and activations use the same
// order, and a dot product does not depend on the order of its terms.
// A row whose length is an odd multiple of 128 ends in a half chunk of 4
// blocks and 2 vectors: vector v holds, for each block j, elements
// [32 j + 16 v, +16) (lanes 4j .. 4j + 3 <-> block j). Rows are padded to a
// multiple of 128 only: 896-wide rows (Qwen2.5 0.5B) would waste 1/8 of the
// work if padded to 1024.
constexpr int kPanelChunk = 256;
constexpr int kPanelHalfChunk = 128;

// Rearranges row[0 .. n_pad) (n_pad a multiple of 128) from element order to panel order.
void to_panel_order(uint8_t* row, size_t n_pad);

// True if `type` can be unpacked into a panel (the integer block formats).
bool panel_supported(TensorType type);

// True if the type's scales change every 16 elements (Q2_K, Q3_K, Q6_K), not every 32.
bool panel_groups_of_16(TensorType type);

// Unpacks weight rows [0, rows) of n elements (n a multiple of the type's block
// size) into q (row r at q + r * q_stride bytes, panel order over n_pad =
// q_stride elements), scale and offset (row r at + r * s_stride floats, n / 16
// groups each, element order). Codes n .. n_pad - 1 are set to zero; the
// groups past n / 16 are left untouched: the caller zero-fills them once.
void unpack_panel(TensorType type, const void* w, size_t w_row_bytes, int rows, int64_t n, uint8_t* q,
                  size_t q_stride, float* scale, float* offset, size_t s_stride);

}  // namespace mn
