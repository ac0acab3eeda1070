// libFuzzer target for the GGUF parser (csrc/gguf/gguf_parser.cpp).
// Build and run: tests/gguf/run_fuzzer.sh.
//
// The input bytes are parsed exactly as a mapped file would be. Anything other
// than success or mn::GGUFError (another exception, a sanitizer report, a
// crash, a timeout, an allocation over -malloc_limit_mb) is a finding.
// After a successful parse every recorded string, array and tensor extent is
// touched, so an offset the parser let through but that points outside the
// buffer shows up as an ASan report here rather than later in a model loader.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "gguf/gguf_parser.h"

namespace {

uint64_t touch(const uint8_t* data, const mn::MetaValue& v) {
    uint64_t h = 0;
    auto bytes = [&](uint64_t off, uint64_t n) {
        for (uint64_t i = 0; i < n; ++i) h = h * 31 + data[off + i];
    };
    if (v.type == mn::GGUFType::STRING) bytes(v.str.offset, v.str.size);
    if (v.type == mn::GGUFType::ARRAY) {
        if (uint32_t sz = mn::gguf_type_size(v.elem_type)) bytes(v.data_offset, v.count * sz);
        for (const auto& s : v.strings) bytes(s.offset, s.size);
        for (const auto& item : v.items) h += touch(data, item);
    }
    return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        mn::GGUFHeader h = mn::parse_gguf(data, size, "<fuzz input>");
        volatile uint64_t sink = 0;
        for (const auto& e : h.metadata) sink = sink + touch(data, e.value) + e.key.size();
        for (const auto& t : h.tensors) {
            // Extents were validated: first and last byte must be readable.
            if (t.nbytes == 0 || t.abs_offset + t.nbytes > size) std::abort();
            sink = sink + data[t.abs_offset] + data[t.abs_offset + t.nbytes - 1];
        }
    } catch (const mn::GGUFError&) {
        // The expected outcome for malformed input.
    }
    return 0;
}
