// Error types of the core. Each maps to one Python exception in csrc/python/module.cpp:
//   GGUFError      -> metallic_native.GGUFError (a ValueError): the file itself is bad.
//   InvalidArgument-> ValueError: the caller passed something wrong.
//   Error          -> RuntimeError: anything else that went wrong at run time.
// Native code never asserts on input; it throws one of these.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace mn {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct InvalidArgument : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// A malformed or unsupported GGUF file. The message always names the file,
// the byte offset where the problem was found and the field being read.
struct GGUFError : Error {
    GGUFError(const std::string& path, uint64_t offset, const std::string& field, const std::string& what)
        : Error(path + ": at byte offset " + std::to_string(offset) + " (" + field + "): " + what),
          path(path), offset(offset), field(field) {}
    std::string path;
    uint64_t offset;
    std::string field;
};

}  // namespace mn
