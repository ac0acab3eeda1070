// The tensor element types a GGUF file can declare (ggml's type ids, which are
// part of the file format) and their block geometry. The reader needs the
// geometry of every type to validate extents, even types we cannot compute with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace mn {

enum class TensorType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3,
    Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
    TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39, NVFP4 = 40, Q1_0 = 41,
};

struct TypeTraits {
    const char* name;
    uint32_t block_size;   // elements per block
    uint32_t type_size;    // bytes per block
    bool can_dequantize;   // this engine has kernels for it
};

// nullptr for ids that are not a known type (removed ids 4, 5, 31-33, 36-38 included).
const TypeTraits* type_traits(uint32_t type_id);
inline const TypeTraits* type_traits(TensorType t) { return type_traits(static_cast<uint32_t>(t)); }
// Lookup by the type's name ("Q4_K", case-sensitive); nullptr if unknown.
const TypeTraits* type_traits_by_name(const std::string& name);
// Bytes of a row of n elements (n a multiple of the block size).
inline uint64_t row_bytes(const TypeTraits& tt, int64_t n) { return uint64_t(n / tt.block_size) * tt.type_size; }
// The id of a table entry returned by type_traits*().
uint32_t type_id(const TypeTraits* traits);

}  // namespace mn
