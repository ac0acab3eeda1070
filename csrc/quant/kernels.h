// Internal: the per-ISA kernel tables behind dequantize_row / quantize_row.
// Each *_scalar/_avx2/_neon.cpp file fills in one table; a null entry means
// "no kernel for this type on this ISA". Kernels take a count of whole blocks
// (for F32/F16/BF16 a block is one element) and never validate: the
// dispatcher in dequantize.cpp does.
#pragma once

#include <cstdint>

#include "quant/dot.h"
#include "quant/formats.h"

namespace mn::detail {

using DequantFn = void (*)(const void* src, float* dst, int64_t nblocks);
using QuantFn = void (*)(const float* src, void* dst, int64_t nblocks);

DequantFn dequant_fn_scalar(TensorType t);
QuantFn quant_fn_scalar(TensorType t);
DotFn dot_fn_scalar(TensorType weight_type);
#if defined(METALLIC_HAVE_AVX2)
DequantFn dequant_fn_avx2(TensorType t);
QuantFn quant_fn_avx2(TensorType t);
DotFn dot_fn_avx2(TensorType weight_type);
#endif
#if defined(METALLIC_HAVE_NEON)
DequantFn dequant_fn_neon(TensorType t);
QuantFn quant_fn_neon(TensorType t);
DotFn dot_fn_neon(TensorType weight_type);
#endif

}  // namespace mn::detail
