// get_dot_kernel: the weight type -> (activation format, kernel) table per ISA.
#include "quant/dot.h"

#include <string>

#include "common/error.h"
#include "quant/kernels.h"

namespace mn {

TensorType dot_activation_type(TensorType t) {
    switch (t) {
        case TensorType::Q4_0:
        case TensorType::Q5_0:
        case TensorType::Q8_0: return TensorType::Q8_0;
        case TensorType::Q4_1:
        case TensorType::Q5_1: return TensorType::Q8_1;
        case TensorType::Q2_K:
        case TensorType::Q3_K:
        case TensorType::Q4_K:
        case TensorType::Q5_K:
        case TensorType::Q6_K: return TensorType::Q8_K;
        default: return TensorType::F32;
    }
}

DotKernel get_dot_kernel(TensorType t, Isa isa) {
    if (!isa_available(isa))
        throw InvalidArgument(std::string("isa '") + isa_name(isa) + "' is not available in this build on this CPU");
    DotFn fn = nullptr;
    switch (isa) {
        case Isa::Scalar: break;
        case Isa::Avx512:  // the AVX2 kernels; AVX-512 adds only the prefill GEMM
        case Isa::Avx2:
#if defined(METALLIC_HAVE_AVX2)
            fn = detail::dot_fn_avx2(t);
#endif
            break;
        case Isa::Neon:
#if defined(METALLIC_HAVE_NEON)
            fn = detail::dot_fn_neon(t);
#endif
            break;
    }
    if (!fn) {
        fn = detail::dot_fn_scalar(t);
        isa = Isa::Scalar;
    }
    return DotKernel{dot_activation_type(t), fn, isa};
}

}  // namespace mn
