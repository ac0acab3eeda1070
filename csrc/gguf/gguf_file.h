// A GGUF model opened for reading: one file, or the parts of a split model,
// each memory-mapped and parsed by parse_gguf.
//
// Split models (llama.cpp's gguf-split layout): `name-00001-of-00003.gguf` and
// its siblings. Every part is a complete GGUF file holding `split.no` (u16,
// 0-based), `split.count` (u16) and `split.tensors.count` (i32, total over all
// parts); the first part holds all other metadata, and the tensors are spread
// over the parts. Opening the first part opens the whole set: metadata()
// is the first part's, tensors() lists every part's tensors (each pointing
// into its own part's mapping). Opening a later part alone is an error that
// says which file to open instead.
//
// Lifetime: tensor data pointers stay valid while the GGUFFile lives, or
// longer for anyone who keeps mapping(part) (a shared_ptr) alive.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gguf/gguf_parser.h"
#include "gguf/mapped_file.h"

namespace mn {

struct GGUFPart {
    std::shared_ptr<const MappedFile> map;
    GGUFHeader header;
};

// One tensor of the file set.
struct GGUFTensor {
    const TensorInfo* info;  // owned by the part's header
    uint32_t part;           // index into GGUFFile::parts()
    const uint8_t* data;     // info->nbytes bytes inside that part's mapping
};

class GGUFFile {
public:
    // Maps and parses `path` (and, for a split model, its sibling parts).
    // Throws GGUFError for a malformed file or file set, Error if a file
    // cannot be opened.
    explicit GGUFFile(const std::string& path);
    GGUFFile(const GGUFFile&) = delete;  // tensors_ and tensor_index_ point into parts_
    GGUFFile& operator=(const GGUFFile&) = delete;

    const std::string& path() const { return path_; }
    uint32_t version() const { return parts_[0].header.version; }
    const std::vector<GGUFPart>& parts() const { return parts_; }
    const GGUFHeader& header() const { return parts_[0].header; }
    const std::vector<MetaEntry>& metadata() const { return parts_[0].header.metadata; }
    const std::vector<GGUFTensor>& tensors() const { return tensors_; }
    const std::shared_ptr<const MappedFile>& mapping(size_t part) const { return parts_[part].map; }

    const GGUFTensor* find_tensor(std::string_view name) const;
    const MetaValue* find(std::string_view key) const;

    // The bytes of a metadata string (metadata lives in the first part).
    std::string_view str(const StringRef& s) const { return string_at(parts_[0].map->data(), s); }

    // Typed metadata access for model loaders. Each returns nullopt / empty if
    // the key is absent and throws GGUFError (naming key and offset) if the
    // value has an incompatible type. Integers accept any integer type whose
    // value fits; floats accept f32 and f64.
    std::optional<int64_t> get_int(std::string_view key) const;
    std::optional<double> get_float(std::string_view key) const;
    std::optional<bool> get_bool(std::string_view key) const;
    std::optional<std::string> get_string(std::string_view key) const;
    std::vector<std::string_view> get_string_array(std::string_view key) const;
    std::vector<int64_t> get_int_array(std::string_view key) const;
    std::vector<float> get_float_array(std::string_view key) const;

    [[noreturn]] void fail_key(std::string_view key, const MetaValue& v, const std::string& what) const;

private:
    std::string path_;
    std::vector<GGUFPart> parts_;
    std::vector<GGUFTensor> tensors_;
    std::unordered_map<std::string_view, size_t> tensor_index_;  // views into TensorInfo::name
};

// Integer value of a scalar metadata value of any integer type, if it fits in int64.
std::optional<int64_t> meta_as_int(const MetaValue& v);

}  // namespace mn
