// Native microbenchmark of the dot kernels on cache-resident weights: the
// minimum over many repetitions of TSC ticks, which is robust on a shared
// machine where wall or even CPU time of a single call is noisy.
// Build after `pip install .` (which leaves the static core library in build/):
//   g++ -O2 -std=c++17 -march=native -Icsrc bench/dot_microbench.cpp \
//       $(find build/cp311* -name libmetallic_core.a | head -1) -o /tmp/dot_microbench -lpthread
//   /tmp/dot_microbench [scalar|avx2|neon|auto] [n = 4096, a multiple of 256]
// Prints TSC ticks per weight block per activation row and the implied GB/s of
// weight bytes (nc = 1) and GFLOP/s (nc = 4, 8) at the measured TSC rate.
#include <x86intrin.h>

#include <chrono>
#include <cstring>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/cpu_features.h"
#include "quant/dequantize.h"
#include "quant/dot.h"

using namespace mn;

int main(int argc, char** argv) {
    const Isa isa = parse_isa(argc > 1 ? argv[1] : "auto");
    const auto t0 = std::chrono::steady_clock::now();
    const uint64_t c0 = __rdtsc();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(100)) {
    }
    const double tsc_hz = double(__rdtsc() - c0) /
                          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("isa %s, TSC %.3f GHz, 48 weight rows (cache-resident)\n", isa_name(isa), tsc_hz / 1e9);
    const TensorType types[] = {TensorType::Q4_0, TensorType::Q4_1, TensorType::Q5_0, TensorType::Q5_1,
                                TensorType::Q8_0, TensorType::Q2_K, TensorType::Q3_K, TensorType::Q4_K,
                                TensorType::Q5_K, TensorType::Q6_K, TensorType::F32,  TensorType::F16,
                                TensorType::BF16};
    const int64_t n = argc > 2 ? std::stoll(argv[2]) : 4096;  // a multiple of 256
    const int nr = 48;
    std::mt19937 rng(1);
    std::printf("%-5s %14s %12s %14s %14s\n", "type", "ticks/blk nc1", "nc=1 GB/s", "nc=4 GFLOP/s", "nc=8 GFLOP/s");
    for (TensorType t : types) {
        const TypeTraits* tt = type_traits(t);
        const size_t wrb = row_bytes(*tt, n);
        std::vector<uint8_t> w(wrb * nr);
        // Random bytes; clearing bits of every odd byte keeps any fp16 field finite
        // (timing does not depend on the values otherwise).
        for (size_t i = 0; i < w.size(); ++i) w[i] = uint8_t(rng()) & ((i & 1) ? 0x3b : 0xff);
        const DotKernel k = get_dot_kernel(t, isa);
        const TypeTraits* at = type_traits(k.act_type);
        const size_t arb = row_bytes(*at, n);
        std::vector<float> x(size_t(n) * 8);
        for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 100.0f;
        std::vector<uint8_t> a(arb * 8);
        if (k.act_type == TensorType::F32) std::memcpy(a.data(), x.data(), a.size());
        else quantize_row(k.act_type, x.data(), a.data(), n * 8, Isa::Scalar);
        std::vector<float> out(size_t(nr) * 8);
        double ticks[3];
        const int ncs[3] = {1, 4, 8};
        for (int i = 0; i < 3; ++i) {
            uint64_t best = ~0ull;
            for (int rep = 0; rep < (isa == Isa::Scalar ? 20 : 1000); ++rep) {
                const uint64_t s = __rdtsc();
                k.fn(n, w.data(), wrb, nr, a.data(), arb, ncs[i], out.data(), size_t(ncs[i]));
                const uint64_t d = __rdtsc() - s;
                if (d < best) best = d;
            }
            ticks[i] = double(best);
        }
        const double blocks = double(nr) * double(n / tt->block_size);
        std::printf("%-5s %14.2f %12.2f %14.1f %14.1f\n", tt->name, ticks[0] / blocks,
                    double(wrb * nr) / (ticks[0] / tsc_hz) / 1e9, 2.0 * n * nr * 4 / (ticks[1] / tsc_hz) / 1e9,
                    2.0 * n * nr * 8 / (ticks[2] / tsc_hz) / 1e9);
    }
    return 0;
}
