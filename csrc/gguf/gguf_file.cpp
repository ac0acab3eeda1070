#include "gguf/gguf_file.h"

#include <cstdio>
#include <cstring>
#include <limits>

#include "common/error.h"

namespace mn {

namespace {

template <class T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

// Splits "dir/name-00001-of-00003.gguf" into "dir/name", 1 and 3.
bool parse_split_name(const std::string& path, std::string& prefix, int& no, int& count) {
    // "-NNNNN-of-MMMMM.gguf" is 20 characters.
    const size_t tail = 20;
    if (path.size() <= tail) return false;
    const char* t = path.c_str() + path.size() - tail;
    auto digits = [](const char* p, int n, int& out) {
        out = 0;
        for (int i = 0; i < n; ++i) {
            if (p[i] < '0' || p[i] > '9') return false;
            out = out * 10 + (p[i] - '0');
        }
        return true;
    };
    if (t[0] != '-' || std::memcmp(t + 6, "-of-", 4) != 0 || std::memcmp(t + 15, ".gguf", 5) != 0) return false;
    if (!digits(t + 1, 5, no) || !digits(t + 10, 5, count)) return false;
    prefix = path.substr(0, path.size() - tail);
    return true;
}

std::string split_name(const std::string& prefix, int no, int count) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "-%05d-of-%05d.gguf", no, count);
    return prefix + buf;
}

GGUFPart open_part(const std::string& path) {
    GGUFPart p;
    p.map = MappedFile::open(path);
    p.header = parse_gguf(p.map->data(), p.map->size(), path);
    return p;
}

// An integer split key of a part; any integer type is accepted (the writers
// use u16 and i32) as long as the value is in range.
std::optional<int64_t> split_key(const GGUFPart& part, const char* key, int64_t lo, int64_t hi) {
    const MetaEntry* e = part.header.find(key);
    if (e == nullptr) return std::nullopt;
    std::optional<int64_t> v = meta_as_int(e->value);
    if (!v) throw GGUFError(part.map->path(), e->value.file_offset, std::string("metadata '") + key + "'",
                            std::string("must be an integer, found ") + gguf_type_name(e->value.type));
    if (*v < lo || *v > hi)
        throw GGUFError(part.map->path(), e->value.file_offset, std::string("metadata '") + key + "'",
                        "value " + std::to_string(*v) + " out of range [" + std::to_string(lo) + ", " +
                            std::to_string(hi) + "]");
    return v;
}

}  // namespace

std::optional<int64_t> meta_as_int(const MetaValue& v) {
    switch (v.type) {
        case GGUFType::U8: case GGUFType::U16: case GGUFType::U32: case GGUFType::U64:
            if (v.scalar.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
            return static_cast<int64_t>(v.scalar.u);
        case GGUFType::I8: case GGUFType::I16: case GGUFType::I32: case GGUFType::I64:
            return v.scalar.i;
        default:
            return std::nullopt;
    }
}

GGUFFile::GGUFFile(const std::string& path) : path_(path) {
    parts_.push_back(open_part(path));
    // parts_ grows below: refer to the first part by index, never by a reference.

    std::optional<int64_t> count = split_key(parts_[0], "split.count", 0, 65535);
    if (count && *count > 1) {
        std::optional<int64_t> no = split_key(parts_[0], "split.no", 0, 65535);
        const MetaEntry* ce = parts_[0].header.find("split.count");
        if (!no)
            throw GGUFError(path, ce->value.file_offset, "metadata 'split.no'",
                            "split.count is " + std::to_string(*count) + " but split.no is missing");
        std::string prefix;
        int name_no = 0, name_count = 0;
        if (*no != 0) {
            std::string hint;
            if (parse_split_name(path, prefix, name_no, name_count))
                hint = "; open " + split_name(prefix, 1, name_count) + " instead";
            throw GGUFError(path, parts_[0].header.find("split.no")->value.file_offset, "metadata 'split.no'",
                            "this is part " + std::to_string(*no + 1) + " of a " + std::to_string(*count) +
                                "-part split model, not the first" + hint);
        }
        if (!parse_split_name(path, prefix, name_no, name_count) || name_no != 1 || name_count != *count)
            throw GGUFError(path, ce->value.file_offset, "metadata 'split.count'",
                            "file is part 1 of " + std::to_string(*count) +
                                " but its name does not follow <name>-00001-of-" +
                                split_name("", 1, static_cast<int>(*count)).substr(10, 5) +
                                ".gguf, so the other parts cannot be located");
        std::optional<int64_t> total = split_key(parts_[0], "split.tensors.count", 0, std::numeric_limits<int32_t>::max());
        if (!total)
            throw GGUFError(path, ce->value.file_offset, "metadata 'split.tensors.count'",
                            "split model without split.tensors.count");
        parts_.reserve(static_cast<size_t>(*count));
        for (int i = 1; i < *count; ++i) {
            std::string ppath = split_name(prefix, i + 1, static_cast<int>(*count));
            try {
                parts_.push_back(open_part(ppath));
            } catch (const GGUFError&) {
                throw;
            } catch (const Error& e) {
                throw GGUFError(ppath, 0, "split part",
                                "part " + std::to_string(i + 1) + " of " + std::to_string(*count) + " of " + path +
                                    " cannot be opened: " + e.what());
            }
            const GGUFPart& p = parts_.back();
            std::optional<int64_t> pno = split_key(p, "split.no", 0, 65535);
            std::optional<int64_t> pcount = split_key(p, "split.count", 0, 65535);
            if (!pno || *pno != i) {
                const MetaEntry* e = p.header.find("split.no");
                throw GGUFError(ppath, e ? e->value.file_offset : 0, "metadata 'split.no'",
                                "expected split.no = " + std::to_string(i) + ", found " +
                                    (pno ? std::to_string(*pno) : std::string("none")));
            }
            if (!pcount || *pcount != *count) {
                const MetaEntry* e = p.header.find("split.count");
                throw GGUFError(ppath, e ? e->value.file_offset : 0, "metadata 'split.count'",
                                "expected split.count = " + std::to_string(*count) + " (as in " + path +
                                    "), found " + (pcount ? std::to_string(*pcount) : std::string("none")));
            }
        }
        uint64_t n = 0;
        for (const auto& p : parts_) n += p.header.tensors.size();
        if (n != static_cast<uint64_t>(*total))
            throw GGUFError(path, parts_[0].header.find("split.tensors.count")->value.file_offset,
                            "metadata 'split.tensors.count'",
                            "declares " + std::to_string(*total) + " tensors but the " + std::to_string(*count) +
                                " parts hold " + std::to_string(n));
    } else if (count && *count == 1) {
        std::optional<int64_t> no = split_key(parts_[0], "split.no", 0, 65535);
        if (no && *no != 0)
            throw GGUFError(path, parts_[0].header.find("split.no")->value.file_offset, "metadata 'split.no'",
                            "split.no is " + std::to_string(*no) + " but split.count is 1");
    } else if (count && *count == 0) {
        throw GGUFError(path, parts_[0].header.find("split.count")->value.file_offset, "metadata 'split.count'",
                        "split.count is 0");
    }

    // Index only once parts_ no longer changes: the index holds views of the names.
    size_t total_tensors = 0;
    for (const auto& p : parts_) total_tensors += p.header.tensors.size();
    tensors_.reserve(total_tensors);
    tensor_index_.reserve(total_tensors);
    for (uint32_t pi = 0; pi < parts_.size(); ++pi) {
        const GGUFPart& p = parts_[pi];
        for (const TensorInfo& t : p.header.tensors) {
            if (!tensor_index_.emplace(std::string_view(t.name), tensors_.size()).second)
                throw GGUFError(p.map->path(), t.info_offset, "tensor '" + t.name + "' name",
                                "duplicate tensor name across split parts");
            tensors_.push_back(GGUFTensor{&t, pi, p.map->data() + t.abs_offset});
        }
    }
}

const GGUFTensor* GGUFFile::find_tensor(std::string_view name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const MetaValue* GGUFFile::find(std::string_view key) const {
    const MetaEntry* e = header().find(key);
    return e ? &e->value : nullptr;
}

void GGUFFile::fail_key(std::string_view key, const MetaValue& v, const std::string& what) const {
    throw GGUFError(path_, v.file_offset, "metadata '" + std::string(key) + "'", what);
}

std::optional<int64_t> GGUFFile::get_int(std::string_view key) const {
    const MetaValue* v = find(key);
    if (!v) return std::nullopt;
    std::optional<int64_t> r = meta_as_int(*v);
    if (!r) fail_key(key, *v, std::string("expected an integer that fits in int64, found ") + gguf_type_name(v->type));
    return r;
}

std::optional<double> GGUFFile::get_float(std::string_view key) const {
    const MetaValue* v = find(key);
    if (!v) return std::nullopt;
    if (v->type != GGUFType::F32 && v->type != GGUFType::F64)
        fail_key(key, *v, std::string("expected f32 or f64, found ") + gguf_type_name(v->type));
    return v->scalar.f;
}

std::optional<bool> GGUFFile::get_bool(std::string_view key) const {
    const MetaValue* v = find(key);
    if (!v) return std::nullopt;
    if (v->type != GGUFType::BOOL) fail_key(key, *v, std::string("expected bool, found ") + gguf_type_name(v->type));
    return v->scalar.b;
}

std::optional<std::string> GGUFFile::get_string(std::string_view key) const {
    const MetaValue* v = find(key);
    if (!v) return std::nullopt;
    if (v->type != GGUFType::STRING)
        fail_key(key, *v, std::string("expected string, found ") + gguf_type_name(v->type));
    return std::string(str(v->str));
}

std::vector<std::string_view> GGUFFile::get_string_array(std::string_view key) const {
    std::vector<std::string_view> out;
    const MetaValue* v = find(key);
    if (!v) return out;
    if (v->type != GGUFType::ARRAY || v->elem_type != GGUFType::STRING)
        fail_key(key, *v, "expected an array of strings");
    out.reserve(v->strings.size());
    for (const StringRef& s : v->strings) out.push_back(str(s));
    return out;
}

std::vector<int64_t> GGUFFile::get_int_array(std::string_view key) const {
    std::vector<int64_t> out;
    const MetaValue* v = find(key);
    if (!v) return out;
    if (v->type != GGUFType::ARRAY) fail_key(key, *v, "expected an array of integers");
    const uint8_t* p = parts_[0].map->data() + v->data_offset;
    out.resize(static_cast<size_t>(v->count));
    for (size_t i = 0; i < out.size(); ++i) {
        switch (v->elem_type) {
            case GGUFType::U8: out[i] = load<uint8_t>(p + i); break;
            case GGUFType::I8: out[i] = load<int8_t>(p + i); break;
            case GGUFType::U16: out[i] = load<uint16_t>(p + 2 * i); break;
            case GGUFType::I16: out[i] = load<int16_t>(p + 2 * i); break;
            case GGUFType::U32: out[i] = load<uint32_t>(p + 4 * i); break;
            case GGUFType::I32: out[i] = load<int32_t>(p + 4 * i); break;
            case GGUFType::I64: out[i] = load<int64_t>(p + 8 * i); break;
            case GGUFType::U64: {
                uint64_t u = load<uint64_t>(p + 8 * i);
                if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                    fail_key(key, *v, "element " + std::to_string(i) + " does not fit in int64");
                out[i] = static_cast<int64_t>(u);
                break;
            }
            default:
                fail_key(key, *v, std::string("expected an array of integers, found an array of ") +
                                      gguf_type_name(v->elem_type));
        }
    }
    return out;
}

std::vector<float> GGUFFile::get_float_array(std::string_view key) const {
    std::vector<float> out;
    const MetaValue* v = find(key);
    if (!v) return out;
    if (v->type != GGUFType::ARRAY || (v->elem_type != GGUFType::F32 && v->elem_type != GGUFType::F64))
        fail_key(key, *v, "expected an array of f32 or f64");
    const uint8_t* p = parts_[0].map->data() + v->data_offset;
    out.resize(static_cast<size_t>(v->count));
    for (size_t i = 0; i < out.size(); ++i)
        out[i] = v->elem_type == GGUFType::F32 ? load<float>(p + 4 * i) : static_cast<float>(load<double>(p + 8 * i));
    return out;
}

}  // namespace mn
