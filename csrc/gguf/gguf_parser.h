// Parsing and validation of one GGUF file's header from a byte buffer.
//
// The parser works on (pointer, size) so the same code runs on a memory
// mapping (GGUFFile) and on a fuzzer's input. It never copies the file:
// strings and arrays are recorded as offsets into the buffer, so a parse of a
// 150k-entry vocabulary costs one small record per string.
//
// Layout (little-endian; GGUF v2 and v3 share it, v1 used 32-bit counts and is
// rejected):
//   u32 magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
//   n_kv x { string key, u32 value_type, value },
//   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset },
//   padding to `general.alignment` (default 32), then the data section.
// A string is u64 length + bytes (no terminator). An array value is
// u32 element_type + u64 count + elements.
//
// Decisions where the format leaves room (all errors are mn::GGUFError):
// - n_dims must be 1..4 and every ne[i] >= 1 (ggml's readers cannot handle a
//   zero extent either: they divide by it in overflow checks).
// - The element count must fit in int64; ne[0] must be a whole number of blocks.
// - Tensor offsets are relative to the data section, must be multiples of the
//   alignment, tensors must lie inside the file and must not overlap.
// - general.alignment, if present, must be a u32 that is a nonzero power of two.
// - Booleans must be stored as 0 or 1.
// - Duplicate metadata keys and duplicate tensor names are errors.
// - Arrays nest at most kMaxArrayDepth deep.
// - With zero tensors the aligned data offset may lie past the end of the file
//   (metadata-only files need not be padded); otherwise it may not.
// - Big-endian GGUF files are recognised and rejected with a clear message.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quant/formats.h"

namespace mn {

enum class GGUFType : uint32_t {
    U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GGUFType t);
// Bytes per element for fixed-size types; 0 for STRING and ARRAY.
uint32_t gguf_type_size(GGUFType t);

constexpr uint32_t kGGUFMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kGGUFDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;

// A string stored in the buffer: `offset` is where its bytes start (after the
// u64 length), relative to the start of the buffer.
struct StringRef {
    uint64_t offset = 0;
    uint64_t size = 0;
};

// One metadata value. Scalars are decoded; strings and arrays are references
// into the buffer (numeric array elements are contiguous, unaligned,
// little-endian, starting at `data_offset`).
struct MetaValue {
    GGUFType type = GGUFType::U8;
    uint64_t file_offset = 0;          // where the value starts (for error messages)
    union {
        uint64_t u;
        int64_t i;
        double f;
        bool b;
    } scalar{};                        // U8..I64 (u or i by signedness), F32/F64 (f), BOOL (b)
    StringRef str;                     // STRING
    GGUFType elem_type = GGUFType::U8; // ARRAY
    uint64_t count = 0;                // ARRAY: number of elements
    uint64_t data_offset = 0;          // ARRAY of fixed-size elements: first element
    std::vector<StringRef> strings;    // ARRAY of STRING
    std::vector<MetaValue> items;      // ARRAY of ARRAY
};

struct MetaEntry {
    std::string key;
    uint64_t key_offset = 0;  // where the key's length prefix starts
    MetaValue value;
};

struct TensorInfo {
    std::string name;
    uint64_t info_offset = 0;   // where this tensor's info record starts
    uint32_t n_dims = 0;
    int64_t ne[kMaxDims] = {1, 1, 1, 1};  // ggml order: ne[0] is the innermost (contiguous) extent
    uint32_t type_id = 0;
    const TypeTraits* traits = nullptr;
    int64_t n_elements = 0;
    uint64_t nbytes = 0;
    uint64_t rel_offset = 0;    // as stored: relative to the data section
    uint64_t abs_offset = 0;    // from the start of the buffer
};

struct GGUFHeader {
    uint32_t version = 0;
    uint32_t alignment = kGGUFDefaultAlignment;
    uint64_t data_offset = 0;   // start of the data section (may exceed size only with no tensors)
    uint64_t file_size = 0;
    std::vector<MetaEntry> metadata;  // in file order
    std::vector<TensorInfo> tensors;  // in file order

    const MetaEntry* find(std::string_view key) const;
};

// Parses and validates the whole header of the GGUF image at data[0, size).
// `path` only labels error messages. Throws mn::GGUFError on anything invalid;
// never reads outside the buffer, and allocates at most about 15x `size`: every
// count is checked against the bytes left before anything is allocated for it,
// and each record kept (MetaEntry 152 B + hash-set node, MetaValue 112 B,
// StringRef 16 B, TensorInfo 128 B) stands for at least 13, 12, 8 or 32 input
// bytes respectively. Recursion is bounded by kMaxArrayDepth.
GGUFHeader parse_gguf(const uint8_t* data, uint64_t size, const std::string& path);

// The bytes of a string recorded by the parser in the same buffer.
inline std::string_view string_at(const uint8_t* data, const StringRef& s) {
    return std::string_view(reinterpret_cast<const char*>(data) + s.offset, static_cast<size_t>(s.size));
}

}  // namespace mn
