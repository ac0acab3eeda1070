// Standalone check of the NEON kernels against the scalar reference, meant to be
// cross-compiled for aarch64 and run under qemu-aarch64 on an x86 host (see
// run_neon_check.sh). Exits non-zero and prints the first mismatch on failure.
//
// Checks, on random blocks of every type (scale fields set to finite values):
//   dequantize_row(Neon) == dequantize_row(Scalar), bitwise (NaNs: both NaN);
//   quantize_row(Neon) == quantize_row(Scalar), bytewise, for Q8_0/Q8_1/Q8_K;
//   and, when quant/dot.h is present, the NEON dot kernels against the scalar ones.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "common/cpu_features.h"
#include "common/fp16.h"
#include "quant/dequantize.h"
#include "quant/formats.h"
#if __has_include("quant/dot.h")
#include "quant/dot.h"
#define HAVE_DOT 1
#endif

using namespace mn;

namespace {

struct TypeCase {
    TensorType type;
    std::vector<int> f16_fields;  // byte offsets of fp16 scales in a block
    std::vector<int> f32_fields;
};

const std::vector<TypeCase>& cases() {
    static const std::vector<TypeCase> c = {
        {TensorType::F32, {}, {}},           {TensorType::F16, {}, {}},          {TensorType::BF16, {}, {}},
        {TensorType::Q4_0, {0}, {}},         {TensorType::Q4_1, {0, 2}, {}},     {TensorType::Q5_0, {0}, {}},
        {TensorType::Q5_1, {0, 2}, {}},      {TensorType::Q8_0, {0}, {}},        {TensorType::Q8_1, {0, 2}, {}},
        {TensorType::Q2_K, {80, 82}, {}},    {TensorType::Q3_K, {108}, {}},      {TensorType::Q4_K, {0, 2}, {}},
        {TensorType::Q5_K, {0, 2}, {}},      {TensorType::Q6_K, {208}, {}},      {TensorType::Q8_K, {}, {0}},
    };
    return c;
}

float random_scale(std::mt19937& rng) {
    std::uniform_real_distribution<float> e(-20.0f, 6.0f);
    float v = std::exp2(e(rng));
    return (rng() & 1) ? -v : v;
}

std::vector<uint8_t> random_blocks(std::mt19937& rng, const TypeCase& tc, int64_t nblocks) {
    const TypeTraits* tt = type_traits(tc.type);
    std::vector<uint8_t> raw(size_t(nblocks) * tt->type_size);
    for (auto& b : raw) b = uint8_t(rng());
    for (int64_t i = 0; i < nblocks; ++i) {
        uint8_t* blk = raw.data() + i * tt->type_size;
        for (int off : tc.f16_fields) {
            const uint16_t h = float_to_fp16(random_scale(rng));
            std::memcpy(blk + off, &h, 2);
        }
        for (int off : tc.f32_fields) {
            const float f = random_scale(rng);
            std::memcpy(blk + off, &f, 4);
        }
    }
    return raw;
}

bool same_float(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
    return float_to_bits(a) == float_to_bits(b);
}

int failures = 0;

void check_dequantize(std::mt19937& rng) {
    for (const TypeCase& tc : cases()) {
        const TypeTraits* tt = type_traits(tc.type);
        for (int64_t nblocks : {int64_t(1), int64_t(3), int64_t(37), int64_t(tt->block_size == 1 ? 1031 : 129)}) {
            const auto raw = random_blocks(rng, tc, nblocks);
            const int64_t n = nblocks * tt->block_size;
            std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
            dequantize_row(tc.type, raw.data(), a.data(), n, Isa::Scalar);
            dequantize_row(tc.type, raw.data(), b.data(), n, Isa::Neon);
            for (int64_t i = 0; i < n; ++i)
                if (!same_float(a[size_t(i)], b[size_t(i)])) {
                    std::printf("FAIL dequantize %s n=%lld at %lld: scalar %.9g neon %.9g\n", tt->name, (long long)n,
                                (long long)i, a[size_t(i)], b[size_t(i)]);
                    ++failures;
                    break;
                }
        }
        std::printf("dequantize %-5s neon == scalar: checked\n", tt->name);
    }
}

void check_quantize(std::mt19937& rng) {
    std::normal_distribution<float> nd;
    std::uniform_int_distribution<int> ex(-12, 12);
    for (TensorType t : {TensorType::Q8_0, TensorType::Q8_1, TensorType::Q8_K}) {
        const TypeTraits* tt = type_traits(t);
        const int64_t n = 256 * 33;
        std::vector<float> x(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; i += 32) {
            const float scale = std::exp2(float(ex(rng)));
            for (int j = 0; j < 32; ++j) x[size_t(i + j)] = (rng() % 20 == 0) ? 0.0f : nd(rng) * scale;
        }
        for (int j = 0; j < 32; ++j) x[size_t(j)] = 0.0f;                    // all-zero block
        for (int j = 0; j < 16; ++j) x[size_t(64 + j)] = float(j) + 0.5f;   // exact half steps
        x[64 + 16] = 127.0f;
        std::vector<uint8_t> a(size_t(n / tt->block_size * tt->type_size)), b(a.size());
        quantize_row(t, x.data(), a.data(), n, Isa::Scalar);
        quantize_row(t, x.data(), b.data(), n, Isa::Neon);
        if (a != b) {
            size_t i = 0;
            while (a[i] == b[i]) ++i;
            std::printf("FAIL quantize %s: byte %zu scalar %u neon %u\n", tt->name, i, a[i], b[i]);
            ++failures;
        }
        std::printf("quantize   %-5s neon == scalar: checked\n", tt->name);
    }
}

}  // namespace

#ifdef HAVE_DOT
#include "neon_check_dot.inc"
#endif

int main() {
    if (!isa_available(Isa::Neon)) {
        std::printf("NEON kernels not available in this build\n");
        return 2;
    }
    std::mt19937 rng(1234);
    check_dequantize(rng);
    check_quantize(rng);
#ifdef HAVE_DOT
    check_dot(rng);
#endif
    if (failures) {
        std::printf("%d FAILURES\n", failures);
        return 1;
    }
    std::printf("ALL NEON CHECKS PASSED\n");
    return 0;
}
