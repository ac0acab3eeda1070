// A read-only memory mapping of a whole file.
//
// The GGUF reader never copies tensor data: tensors are pointers into this
// mapping, and every object that hands such a pointer out (the GGUFFile, numpy
// views in Python) holds a std::shared_ptr<const MappedFile>, so the mapping is
// unmapped only when the last holder lets go. The interface is deliberately
// tiny (open, data, size) so a non-POSIX implementation can sit behind it; only
// the POSIX one (mmap) exists today.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/error.h"

namespace mn {

// The file could not be opened, examined or mapped; `err` is the errno, so
// bindings can raise the matching OSError (FileNotFoundError, ...).
struct FileOpenError : Error {
    FileOpenError(const std::string& path, const std::string& what, int err)
        : Error(path + ": " + what), path(path), err(err) {}
    std::string path;
    int err;
};

class MappedFile {
public:
    // Maps `path` read-only. Throws FileOpenError naming the path and the OS error
    // if it cannot be opened or mapped. An empty file maps to size() == 0,
    // data() == nullptr (mmap refuses zero-length mappings).
    static std::shared_ptr<const MappedFile> open(const std::string& path);

    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    uint64_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    MappedFile() = default;
    std::string path_;
    const uint8_t* data_ = nullptr;
    uint64_t size_ = 0;
};

}  // namespace mn
