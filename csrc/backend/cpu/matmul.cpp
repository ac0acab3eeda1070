// Matrix products of the CPU backend, directly on the quantized weights.
#include <algorithm>
#include <atomic>
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/vec.h"
#include "quant/dequantize.h"

namespace mn {

// Reference path for any weight type: each task dequantizes one band of
// weight rows into its scratch (a few KB, never the whole matrix) and takes
// float dot products with every activation row.
void CpuBackend::matmul(const WeightTensor& w, const Buffer& x, int rows, Buffer& out, const WeightTensor* bias) {
    const int64_t K = w.ne0, N = w.ne1;
    const auto* wbase = static_cast<const uint8_t*>(w.device);
    const float* b = bias ? static_cast<const float*>(bias->device) : nullptr;
    constexpr int kRowTile = 8;
    const int64_t n_tiles = (N + kRowTile - 1) / kRowTile;
    std::atomic<int64_t> next{0};
    pool_.run([&](int thread, int) {
        float* wrows = thread_scratch(thread, size_t(kRowTile) * K);
        for (;;) {
            const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
            if (t >= n_tiles) break;
            const int64_t r0 = t * kRowTile;
            const int nr = int(std::min<int64_t>(kRowTile, N - r0));
            for (int r = 0; r < nr; ++r)
                dequantize_row(w.type, wbase + (r0 + r) * w.row_bytes, wrows + r * K, K, isa_);
            for (int c = 0; c < rows; ++c) {
                const float* xr = x.f32() + int64_t(c) * K;
                float* orow = out.f32() + int64_t(c) * N + r0;
                for (int r = 0; r < nr; ++r) orow[r] = vec::dot(xr, wrows + r * K, int(K)) + (b ? b[r0 + r] : 0.0f);
            }
        }
    });
}

}  // namespace mn
