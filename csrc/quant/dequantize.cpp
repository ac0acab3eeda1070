// Dispatch of dequantize_row / quantize_row to the kernel table of the chosen ISA.
// Validation lives here, once, so the kernels can assume whole blocks.
#include "quant/dequantize.h"

#include <string>

#include "common/error.h"
#include "quant/kernels.h"

namespace mn {
namespace {

const TypeTraits& checked_traits(TensorType type, int64_t n) {
    const TypeTraits* tt = type_traits(type);
    if (!tt) throw InvalidArgument("unknown tensor type id " + std::to_string(uint32_t(type)));
    if (n < 0 || n % tt->block_size != 0)
        throw InvalidArgument(std::string("n=") + std::to_string(n) + " is not a whole number of " + tt->name +
                              " blocks (block size " + std::to_string(tt->block_size) + ")");
    return *tt;
}

void check_isa(Isa isa) {
    if (!isa_available(isa))
        throw InvalidArgument(std::string("isa '") + isa_name(isa) + "' is not available in this build on this CPU");
}

}  // namespace

bool can_quantize(TensorType type) { return detail::quant_fn_scalar(type) != nullptr; }

void dequantize_row(TensorType type, const void* src, float* dst, int64_t n, Isa isa) {
    const TypeTraits& tt = checked_traits(type, n);
    check_isa(isa);
    detail::DequantFn fn = nullptr;
    switch (isa) {
        case Isa::Scalar: fn = detail::dequant_fn_scalar(type); break;
        case Isa::Avx512:  // the AVX2 kernels; AVX-512 adds only the prefill GEMM
        case Isa::Avx2:
#if defined(METALLIC_HAVE_AVX2)
            fn = detail::dequant_fn_avx2(type);
#endif
            break;
        case Isa::Neon:
#if defined(METALLIC_HAVE_NEON)
            fn = detail::dequant_fn_neon(type);
#endif
            break;
    }
    if (!fn) throw InvalidArgument(std::string("no ") + isa_name(isa) + " dequantization kernel for type " + tt.name);
    if (n) fn(src, dst, n / tt.block_size);
}

void quantize_row(TensorType type, const float* src, void* dst, int64_t n, Isa isa) {
    const TypeTraits& tt = checked_traits(type, n);
    check_isa(isa);
    detail::QuantFn fn = nullptr;
    switch (isa) {
        case Isa::Scalar: fn = detail::quant_fn_scalar(type); break;
        case Isa::Avx512:  // the AVX2 kernels; AVX-512 adds only the prefill GEMM
        case Isa::Avx2:
#if defined(METALLIC_HAVE_AVX2)
            fn = detail::quant_fn_avx2(type);
#endif
            break;
        case Isa::Neon:
#if defined(METALLIC_HAVE_NEON)
            fn = detail::quant_fn_neon(type);
#endif
            break;
    }
    if (!fn)
        throw InvalidArgument(std::string("no ") + isa_name(isa) + " quantization kernel for type " + tt.name +
                              " (supported: Q8_0, Q8_1, Q8_K)");
    if (n) fn(src, dst, n / tt.block_size);
}

}  // namespace mn
