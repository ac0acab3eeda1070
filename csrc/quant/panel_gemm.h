// Integer matrix-matrix product of weight panels (quant/panel.h) with
// activations quantized to 8 bits, for prefill. AVX-512 VNNI: one vpdpbusd
// multiplies 64 unsigned weight codes with 64 signed activation codes.
//
// Activation panel rows hold n_pad codes (n rounded up to 128, the tail zero,
// in panel order like the weights) and, per group of 16 elements in element
// order, the scale d of the element's 32-block (x ~ d * code, |code| <= 127)
// and d * sum(codes of the group). Weight panel rows hold n_pad codes and per
// group a scale and an offset (panel.h). Then
//   dot(w, x) = sum_g s_w[g] d[g] sum(q_w q_x) - sum_g o_w[g] (d[g] sum(q_x))
// where the first sum is integer within each group and the second is a short
// float dot product over groups.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/panel.h"

namespace mn {

// Panel rows are padded to a multiple of this many elements.
constexpr int kPanelStep = kPanelHalfChunk;
// The microkernel's register tile: weight rows x activation rows. panel_gemm
// takes row counts padded to these multiples (padding rows zero).
constexpr int kPanelTileRows = 2, kPanelTileCols = 4;

struct ActivationPanel {
    const int8_t* q;      // row c at q + c * q_stride
    size_t q_stride;
    const float* scale;   // row c at scale + c * s_stride (n_pad / 16 floats)
    const float* sum;     // the same layout
    size_t s_stride;
};

struct WeightPanel {
    const uint8_t* q;
    size_t q_stride;
    const float* scale;
    const float* offset;
    size_t s_stride;
    bool groups_of_16;  // scales change every 16 elements (else every 32)
};

// True if this binary has the AVX-512 VNNI kernels and the CPU runs them.
bool panel_gemm_available();

// Quantizes x[0..n) into `levels` activation panel rows starting at row 0 of
// the given pointers: level 2 quantizes the residual x - level 1, so their sum
// is ~100x closer to x. Writes the whole padded row (n_pad = round_up(n, 128)).
void quantize_activation_panel(const float* x, int64_t n, int levels, int8_t* q, size_t q_stride, float* scale,
                               float* sum, size_t s_stride);

// Where results go: dot(weight row r, activation row c) to p[r * row_stride +
// c * col_stride], for r < rows and c < cols only (the panels may hold padding
// rows beyond those, whose results are dropped).
struct PanelOutput {
    float* p;
    size_t row_stride, col_stride;
    int rows, cols;
};

// Products of weight rows [0, nr) with activation rows [0, nc) (nr a multiple
// of kPanelTileRows, nc of kPanelTileCols; padding rows must be zero), rows
// n_pad elements long.
void panel_gemm(int64_t n_pad, const WeightPanel& w, int nr, const ActivationPanel& a, int nc, const PanelOutput& out);

}  // namespace mn
