// Matrix products of the CPU backend, directly on the quantized weights: no
// dequantized copy of a weight matrix is ever made.
#include <algorithm>
#include <atomic>
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/vec.h"
#include "quant/dequantize.h"
#include "quant/dot.h"
#include "quant/panel.h"
#include "quant/panel_gemm.h"

namespace mn {

namespace {

// A band of weight rows is one task: its rows stay in L1/L2 while every
// activation row passes over it. Decode (one activation row) just splits the
// weight rows between threads; bands are small enough that the threads'
// shares even out.
constexpr int kRowTile = 16;
// Activation rows per kernel call during prefill: their quantized rows (about
// 1 KB each for d_model 896) stay in L1/L2 while a weight band is decoded.
constexpr int kColTile = 32;
// ActivationMode::Auto uses two-level activations up to this many rows: decode
// steps and small batches, where decoding the weights costs more than the
// second integer dot. Large prefill chunks, which are compute-bound, use one level.
constexpr int kAutoTwoLevelMaxRows = 8;
// Decode pieces: long enough to be sequential streams, short enough that the
// last ones even out the threads' finishing times.
constexpr int64_t kDecodePieceBytes = 64 * 1024;
// The panel GEMM unpacks each weight band once per call, so it pays off once
// a few activation rows share the unpacking; decode stays on the dot kernels.
constexpr int kPanelMinRows = 8;
// Weight rows per panel band: the band's codes and scales (~1.5 bytes per
// element) stay in L2 while all activation columns pass over it.
constexpr int kPanelBand = 32;

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

}  // namespace

void CpuBackend::matmul(const WeightTensor& w, const Buffer& x, int rows, Buffer& out, const WeightTensor* bias) {
    const int64_t K = w.ne0, N = w.ne1;
    const auto* wbase = static_cast<const uint8_t*>(w.device);
    const float* b = bias ? static_cast<const float*>(bias->device) : nullptr;
    const DotKernel kernel = get_dot_kernel(w.type, isa_);
    float* o = out.f32();

    if (!kernel.fn) {  // no integer kernel: dequantize one band of rows at a time
        matmul_dequantized(w, x, rows, out, bias);
        return;
    }

    // Quantize the activations once to the format the kernel consumes. With
    // two-level activations each row becomes two quantized rows, x ~ q1 + q2
    // where q2 quantizes the residual x - q1: the kernel decodes each weight
    // block once for both, and the 8-bit rounding error shrinks ~100-fold.
    const bool two_level = activations_ == ActivationMode::TwoLevel ||
                           (activations_ == ActivationMode::Auto && rows <= kAutoTwoLevelMaxRows);
    const int levels = (kernel.act_type != TensorType::F32 && two_level) ? 2 : 1;
    const int act_rows = rows * levels;
    if (isa_ == Isa::Avx512 && act_rows >= kPanelMinRows && panel_supported(w.type)) {
        matmul_panel(w, x, rows, levels, out, bias);
        return;
    }
    const uint8_t* act = static_cast<const uint8_t*>(x.data);
    size_t act_row_bytes = size_t(K) * sizeof(float);
    if (kernel.act_type != TensorType::F32) {
        const TypeTraits* at = type_traits(kernel.act_type);
        act_row_bytes = size_t(K / at->block_size) * at->type_size;
        uint8_t* q = activation_scratch(act_row_bytes * act_rows);
        std::atomic<int64_t> next_row{0};
        auto quantize_rows = [&](int thread, int) {
            float* residual = levels == 2 ? thread_scratch(thread, size_t(K)) : nullptr;
            for (int64_t r; (r = next_row.fetch_add(1, std::memory_order_relaxed)) < rows;) {
                const float* xr = x.f32() + r * K;
                uint8_t* q1 = q + size_t(r) * levels * act_row_bytes;
                quantize_row(kernel.act_type, xr, q1, K, isa_);
                if (levels == 2) {
                    dequantize_row(kernel.act_type, q1, residual, K, isa_);
                    for (int64_t i = 0; i < K; ++i) residual[i] = xr[i] - residual[i];
                    quantize_row(kernel.act_type, residual, q1 + act_row_bytes, K, isa_);
                }
            }
        };
        // One row (decode) is quantized in place: a dispatch would cost more than the work.
        if (rows == 1) quantize_rows(0, 1);
        else pool_.run(quantize_rows);
        act = q;
    }

    const int64_t n_tiles = (N + kRowTile - 1) / kRowTile;
    if (rows == 1) {
        // Decode streams the weights once: each thread walks one contiguous
        // share of the rows (16-row tiles handed out in turn, which interleave
        // the threads' streams, made 2-thread decode slower than 1-thread), and
        // takes pieces of the others' shares once its own is done. Two-level
        // activations are two rows through the same kernel, summed here.
        const int64_t tiles_per_piece = std::max<int64_t>(1, kDecodePieceBytes / (kRowTile * int64_t(w.row_bytes)));
        pool_.parallel_shares(n_tiles, tiles_per_piece, [&](int64_t t0, int64_t t1) {
            const int64_t r0 = t0 * kRowTile, r1 = std::min<int64_t>(t1 * kRowTile, N);
            if (levels == 1) {
                kernel.fn(K, wbase + r0 * w.row_bytes, w.row_bytes, int(r1 - r0), act, act_row_bytes, 1, o + r0, 1);
                if (b)
                    for (int64_t r = r0; r < r1; ++r) o[r] += b[r];
                return;
            }
            constexpr int kStep = 256;
            float pair[2 * kStep];  // [row][level]
            for (int64_t s0 = r0; s0 < r1; s0 += kStep) {
                const int nr = int(std::min<int64_t>(kStep, r1 - s0));
                kernel.fn(K, wbase + s0 * w.row_bytes, w.row_bytes, nr, act, act_row_bytes, 2, pair, 2);
                for (int r = 0; r < nr; ++r) o[s0 + r] = pair[2 * r] + pair[2 * r + 1] + (b ? b[s0 + r] : 0.0f);
            }
        });
        return;
    }

    // Column tiles hold whole rows' levels, so a row's two partial dots meet in one tile.
    const int col_tile = kColTile - kColTile % levels;
    std::atomic<int64_t> next{0};
    pool_.run([&](int thread, int) {
        // The kernel writes tile[r * nc + c]; it is scattered to out[c / levels][r0 + r].
        float* tile = thread_scratch(thread, size_t(kRowTile) * kColTile);
        for (;;) {
            const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
            if (t >= n_tiles) break;
            const int64_t r0 = t * kRowTile;
            const int nr = int(std::min<int64_t>(kRowTile, N - r0));
            for (int c0 = 0; c0 < act_rows; c0 += col_tile) {
                const int nc = std::min(col_tile, act_rows - c0);
                kernel.fn(K, wbase + r0 * w.row_bytes, w.row_bytes, nr, act + size_t(c0) * act_row_bytes,
                          act_row_bytes, nc, tile, size_t(nc));
                for (int c = 0; c < nc; c += levels) {
                    float* orow = o + int64_t((c0 + c) / levels) * N + r0;
                    for (int r = 0; r < nr; ++r) {
                        float v = tile[r * nc + c];
                        if (levels == 2) v += tile[r * nc + c + 1];
                        orow[r] = v + (b ? b[r0 + r] : 0.0f);
                    }
                }
            }
        }
    });
}

void CpuBackend::matmul_panel(const WeightTensor& w, const Buffer& x, int rows, int levels, Buffer& out,
                              const WeightTensor* bias) {
    const int64_t K = w.ne0, N = w.ne1;
    const size_t n_pad = round_up(size_t(K), kPanelStep), groups = n_pad / kPanelGroup;
    const int act_rows = rows * levels, cols = int(round_up(size_t(act_rows), kPanelTileCols));
    const auto* wbase = static_cast<const uint8_t*>(w.device);
    const float* b = bias ? static_cast<const float*>(bias->device) : nullptr;

    // Activation panel: codes, then (64-byte aligned) scales and scaled sums.
    const size_t q_bytes = round_up(size_t(cols) * n_pad, 64);
    uint8_t* scratch = activation_scratch(q_bytes + 2 * size_t(cols) * groups * sizeof(float));
    auto* aq = reinterpret_cast<int8_t*>(scratch);
    auto* ascale = reinterpret_cast<float*>(scratch + q_bytes);
    float* asum = ascale + size_t(cols) * groups;
    // Chunks of `levels` columns: each holds one input row's levels (and cols is a multiple of levels).
    pool_.parallel_for(cols, levels, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; c += levels) {
            if (c < act_rows) {
                quantize_activation_panel(x.f32() + (c / levels) * K, K, levels, aq + c * n_pad, n_pad,
                                          ascale + c * groups, asum + c * groups, groups);
            } else {  // padding columns: zero codes and scales
                for (int64_t p = c; p < std::min<int64_t>(c + levels, cols); ++p) {
                    std::memset(aq + p * n_pad, 0, n_pad);
                    std::fill(ascale + p * groups, ascale + (p + 1) * groups, 0.0f);
                    std::fill(asum + p * groups, asum + (p + 1) * groups, 0.0f);
                }
            }
        }
    });
    const ActivationPanel apanel{aq, n_pad, ascale, asum, groups};

    const int64_t n_bands = (N + kPanelBand - 1) / kPanelBand;
    std::atomic<int64_t> next{0};
    pool_.run([&](int thread, int) {
        // Per thread: the band's codes, scales, offsets and its output tile.
        const size_t code_floats = round_up(size_t(kPanelBand) * n_pad, 64) / sizeof(float);
        const size_t group_floats = size_t(kPanelBand) * groups;
        float* mem = thread_scratch(thread, code_floats + 2 * group_floats + size_t(kPanelBand) * cols);
        auto* wq = reinterpret_cast<uint8_t*>(mem);
        float* wscale = mem + code_floats;
        float* woffset = wscale + group_floats;
        float* tile = woffset + group_floats;
        // The groups past each row's K / 16, and the rows past the band's end up
        // to the tile's row multiple, must be zero: the kernel reads whole
        // (half) chunks of whole tiles. unpack_panel writes everything else.
        std::memset(wq, 0, size_t(kPanelBand) * n_pad);
        std::fill(wscale, wscale + 2 * group_floats, 0.0f);
        for (;;) {
            const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
            if (t >= n_bands) break;
            const int64_t r0 = t * kPanelBand;
            const int nr = int(std::min<int64_t>(kPanelBand, N - r0));
            if (nr < kPanelBand) {  // the last band: clear what the previous band left
                std::memset(wq, 0, size_t(kPanelBand) * n_pad);
                std::fill(wscale, wscale + 2 * group_floats, 0.0f);
            }
            unpack_panel(w.type, wbase + r0 * w.row_bytes, w.row_bytes, nr, K, wq, n_pad, wscale, woffset, groups);
            const WeightPanel wpanel{wq, n_pad, wscale, woffset, groups, panel_groups_of_16(w.type)};
            const int nr_pad = int(round_up(size_t(nr), kPanelTileRows));
            float* o = out.f32();
            if (levels == 1) {  // results straight into the output rows
                panel_gemm(int64_t(n_pad), wpanel, nr_pad, apanel, cols, PanelOutput{o + r0, 1, size_t(N), nr, rows});
                if (b)
                    for (int c = 0; c < rows; ++c)
                        for (int r = 0; r < nr; ++r) o[int64_t(c) * N + r0 + r] += b[r0 + r];
                continue;
            }
            // Two levels: the tile holds both rows of each input row, [c][r], summed here.
            panel_gemm(int64_t(n_pad), wpanel, nr_pad, apanel, cols, PanelOutput{tile, 1, kPanelBand, nr, act_rows});
            for (int c = 0; c < rows; ++c) {
                float* orow = o + int64_t(c) * N + r0;
                const float* t0 = tile + size_t(2 * c) * kPanelBand;
                const float* t1 = t0 + kPanelBand;
                for (int r = 0; r < nr; ++r) orow[r] = t0[r] + t1[r] + (b ? b[r0 + r] : 0.0f);
            }
        }
    });
}

void CpuBackend::matmul_dequantized(const WeightTensor& w, const Buffer& x, int rows, Buffer& out,
                                    const WeightTensor* bias) {
    const int64_t K = w.ne0, N = w.ne1;
    const auto* wbase = static_cast<const uint8_t*>(w.device);
    const float* b = bias ? static_cast<const float*>(bias->device) : nullptr;
    constexpr int kBand = 8;
    const int64_t n_tiles = (N + kBand - 1) / kBand;
    std::atomic<int64_t> next{0};
    pool_.run([&](int thread, int) {
        float* wrows = thread_scratch(thread, size_t(kBand) * K);
        for (;;) {
            const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
            if (t >= n_tiles) break;
            const int64_t r0 = t * kBand;
            const int nr = int(std::min<int64_t>(kBand, N - r0));
            for (int r = 0; r < nr; ++r) dequantize_row(w.type, wbase + (r0 + r) * w.row_bytes, wrows + r * K, K, isa_);
            for (int c = 0; c < rows; ++c) {
                const float* xr = x.f32() + int64_t(c) * K;
                float* orow = out.f32() + int64_t(c) * N + r0;
                for (int r = 0; r < nr; ++r) orow[r] = vec::dot(xr, wrows + r * K, int(K)) + (b ? b[r0 + r] : 0.0f);
            }
        }
    });
}

}  // namespace mn
