#include "gguf/gguf_parser.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "common/error.h"

namespace mn {

const char* gguf_type_name(GGUFType t) {
    switch (t) {
        case GGUFType::U8: return "u8";
        case GGUFType::I8: return "i8";
        case GGUFType::U16: return "u16";
        case GGUFType::I16: return "i16";
        case GGUFType::U32: return "u32";
        case GGUFType::I32: return "i32";
        case GGUFType::F32: return "f32";
        case GGUFType::BOOL: return "bool";
        case GGUFType::STRING: return "string";
        case GGUFType::ARRAY: return "array";
        case GGUFType::U64: return "u64";
        case GGUFType::I64: return "i64";
        case GGUFType::F64: return "f64";
    }
    return "?";
}

uint32_t gguf_type_size(GGUFType t) {
    switch (t) {
        case GGUFType::U8: case GGUFType::I8: case GGUFType::BOOL: return 1;
        case GGUFType::U16: case GGUFType::I16: return 2;
        case GGUFType::U32: case GGUFType::I32: case GGUFType::F32: return 4;
        case GGUFType::U64: case GGUFType::I64: case GGUFType::F64: return 8;
        case GGUFType::STRING: case GGUFType::ARRAY: return 0;
    }
    return 0;
}

const MetaEntry* GGUFHeader::find(std::string_view key) const {
    for (const auto& e : metadata)
        if (e.key == key) return &e;
    return nullptr;
}

namespace {

// Smallest encodings, used to reject counts the remaining bytes cannot hold
// before anything is allocated for them.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;            // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // empty name, n_dims=1, ne[0], type, offset
constexpr uint64_t kMinStringBytes = 8;                // length prefix
constexpr uint64_t kMinArrayBytes = 4 + 8;             // element type + count

bool valid_type(uint32_t t) { return t <= static_cast<uint32_t>(GGUFType::F64); }

uint64_t min_element_bytes(GGUFType t) {
    if (t == GGUFType::STRING) return kMinStringBytes;
    if (t == GGUFType::ARRAY) return kMinArrayBytes;
    return gguf_type_size(t);
}

bool valid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t n = s.size(), i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) { ++i; continue; }
        size_t len;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
        else return false;
        if (n - i < len) return false;
        for (size_t k = 1; k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return false;
        i += len;
    }
    return true;
}

std::string quoted(std::string_view s) {
    // Names in messages are cut short and kept printable: they come from the file.
    std::string out = "'";
    size_t n = std::min<size_t>(s.size(), 80);
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c < 0x7F && c != '\'') {
            out += static_cast<char>(c);
        } else {
            static const char* hex = "0123456789abcdef";
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    if (s.size() > n) out += "...";
    return out + "'";
}

class Cursor {
public:
    Cursor(const uint8_t* data, uint64_t size, const std::string& path) : d_(data), n_(size), path_(path) {}

    uint64_t pos() const { return pos_; }
    uint64_t remaining() const { return n_ - pos_; }
    const uint8_t* data() const { return d_; }

    [[noreturn]] void fail(uint64_t offset, const std::string& field, const std::string& what) const {
        throw GGUFError(path_, offset, field, what);
    }

    // `field` is a callable producing the field's description; it only runs
    // when something fails, so the hot loops build no strings.
    template <class F>
    void need(uint64_t bytes, const F& field) const {
        if (remaining() < bytes)
            fail(pos_, field(), "truncated file: need " + std::to_string(bytes) + " bytes, only " +
                                    std::to_string(remaining()) + " left (file size " + std::to_string(n_) + ")");
    }

    template <class T, class F>
    T read(const F& field) {
        need(sizeof(T), field);
        T v;
        std::memcpy(&v, d_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }

    template <class F>
    StringRef read_string(const F& field) {
        uint64_t at = pos_;
        uint64_t len = read<uint64_t>(field);
        if (len > remaining())
            fail(at, field(), "string length " + std::to_string(len) + " exceeds the " +
                                  std::to_string(remaining()) + " bytes left in the file");
        StringRef s{pos_, len};
        pos_ += len;
        return s;
    }

    void skip(uint64_t n) { pos_ += n; }  // callers have checked with need()

    std::string_view view(const StringRef& s) const { return string_at(d_, s); }

private:
    const uint8_t* d_;
    uint64_t n_;
    uint64_t pos_ = 0;
    const std::string& path_;
};

void parse_value(Cursor& c, GGUFType type, MetaValue& v, const std::string& where, int depth);

void parse_array_body(Cursor& c, MetaValue& v, const std::string& where, int depth) {
    uint64_t at = c.pos();
    uint32_t et = c.read<uint32_t>([&] { return where + " array element type"; });
    if (!valid_type(et))
        c.fail(at, where + " array element type", "unknown value type " + std::to_string(et));
    v.elem_type = static_cast<GGUFType>(et);
    if (v.elem_type == GGUFType::ARRAY && depth + 1 > kMaxArrayDepth)
        c.fail(at, where + " array element type",
               "arrays nested deeper than " + std::to_string(kMaxArrayDepth) + " levels");
    at = c.pos();
    v.count = c.read<uint64_t>([&] { return where + " array length"; });
    uint64_t min_bytes = min_element_bytes(v.elem_type);
    if (v.count > c.remaining() / min_bytes)
        c.fail(at, where + " array length",
               "array of " + std::to_string(v.count) + " " + gguf_type_name(v.elem_type) + " elements needs at least " +
                   (v.count > std::numeric_limits<uint64_t>::max() / min_bytes
                        ? std::string("more than 2^64")
                        : std::to_string(v.count * min_bytes)) +
                   " bytes but only " + std::to_string(c.remaining()) + " are left in the file");
    switch (v.elem_type) {
        case GGUFType::STRING: {
            v.strings.reserve(static_cast<size_t>(v.count));
            for (uint64_t i = 0; i < v.count; ++i)
                v.strings.push_back(c.read_string([&] { return where + " element " + std::to_string(i); }));
            break;
        }
        case GGUFType::ARRAY: {
            v.items.resize(static_cast<size_t>(v.count));
            for (uint64_t i = 0; i < v.count; ++i) {
                MetaValue& item = v.items[static_cast<size_t>(i)];
                item.type = GGUFType::ARRAY;
                item.file_offset = c.pos();
                parse_array_body(c, item, where + "[" + std::to_string(i) + "]", depth + 1);
            }
            break;
        }
        default: {
            v.data_offset = c.pos();
            uint64_t bytes = v.count * min_bytes;  // cannot overflow: checked against remaining above
            c.skip(bytes);
            if (v.elem_type == GGUFType::BOOL) {
                const uint8_t* p = c.data() + v.data_offset;
                for (uint64_t i = 0; i < v.count; ++i)
                    if (p[i] > 1)
                        c.fail(v.data_offset + i, where + " element " + std::to_string(i),
                               "bool stored as " + std::to_string(p[i]) + " (must be 0 or 1)");
            }
            break;
        }
    }
}

void parse_value(Cursor& c, GGUFType type, MetaValue& v, const std::string& where, int depth) {
    v.type = type;
    v.file_offset = c.pos();
    auto field = [&] { return where + " value (" + gguf_type_name(type) + ")"; };
    switch (type) {
        case GGUFType::U8: v.scalar.u = c.read<uint8_t>(field); break;
        case GGUFType::I8: v.scalar.i = c.read<int8_t>(field); break;
        case GGUFType::U16: v.scalar.u = c.read<uint16_t>(field); break;
        case GGUFType::I16: v.scalar.i = c.read<int16_t>(field); break;
        case GGUFType::U32: v.scalar.u = c.read<uint32_t>(field); break;
        case GGUFType::I32: v.scalar.i = c.read<int32_t>(field); break;
        case GGUFType::U64: v.scalar.u = c.read<uint64_t>(field); break;
        case GGUFType::I64: v.scalar.i = c.read<int64_t>(field); break;
        case GGUFType::F32: v.scalar.f = c.read<float>(field); break;
        case GGUFType::F64: v.scalar.f = c.read<double>(field); break;
        case GGUFType::BOOL: {
            uint8_t b = c.read<uint8_t>(field);
            if (b > 1) c.fail(v.file_offset, field(), "bool stored as " + std::to_string(b) + " (must be 0 or 1)");
            v.scalar.b = b != 0;
            break;
        }
        case GGUFType::STRING: v.str = c.read_string(field); break;
        case GGUFType::ARRAY: parse_array_body(c, v, where, depth + 1); break;
    }
}

bool is_pow2(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

}  // namespace

GGUFHeader parse_gguf(const uint8_t* data, uint64_t size, const std::string& path) {
    Cursor c(data, size, path);
    GGUFHeader h;
    h.file_size = size;

    // --- fixed header -------------------------------------------------------
    uint32_t magic = c.read<uint32_t>([] { return std::string("magic"); });
    if (magic != kGGUFMagic) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "bad magic: expected \"GGUF\" (47 47 55 46), found %02x %02x %02x %02x",
                      data[0], data[1], data[2], data[3]);
        c.fail(0, "magic", buf);
    }
    uint32_t version = c.read<uint32_t>([] { return std::string("version"); });
    if (version != 2 && version != 3) {
        uint32_t swapped = __builtin_bswap32(version);
        if (swapped >= 1 && swapped <= 3)
            c.fail(4, "version", "big-endian GGUF files are not supported");
        c.fail(4, "version",
               "unsupported GGUF version " + std::to_string(version) + " (supported: 2 and 3)");
    }
    h.version = version;
    uint64_t n_tensors = c.read<uint64_t>([] { return std::string("tensor count"); });
    uint64_t n_kv = c.read<uint64_t>([] { return std::string("metadata count"); });
    if (n_kv > c.remaining() / kMinKvBytes)
        c.fail(16, "metadata count",
               std::to_string(n_kv) + " key/value pairs cannot fit in the " + std::to_string(c.remaining()) +
                   " bytes left (each needs at least " + std::to_string(kMinKvBytes) + ")");
    if (n_tensors > c.remaining() / kMinTensorInfoBytes)
        c.fail(8, "tensor count",
               std::to_string(n_tensors) + " tensor infos cannot fit in the " + std::to_string(c.remaining()) +
                   " bytes left (each needs at least " + std::to_string(kMinTensorInfoBytes) + ")");
    if (n_kv * kMinKvBytes + n_tensors * kMinTensorInfoBytes > c.remaining())
        c.fail(8, "tensor count",
               std::to_string(n_tensors) + " tensor infos and " + std::to_string(n_kv) +
                   " key/value pairs cannot fit in the " + std::to_string(c.remaining()) + " bytes left");

    // --- metadata -----------------------------------------------------------
    h.metadata.resize(static_cast<size_t>(n_kv));
    std::unordered_set<std::string_view> keys;
    keys.reserve(static_cast<size_t>(n_kv));
    for (uint64_t i = 0; i < n_kv; ++i) {
        MetaEntry& e = h.metadata[static_cast<size_t>(i)];
        e.key_offset = c.pos();
        auto key_field = [&] { return "metadata[" + std::to_string(i) + "] key"; };
        StringRef k = c.read_string(key_field);
        std::string_view kv = c.view(k);
        if (!valid_utf8(kv)) c.fail(e.key_offset, key_field(), "key is not valid UTF-8");
        if (!keys.insert(kv).second)
            c.fail(e.key_offset, key_field(), "duplicate metadata key " + quoted(kv));
        e.key.assign(kv);
        std::string where = "metadata " + quoted(kv);
        uint64_t at = c.pos();
        uint32_t t = c.read<uint32_t>([&] { return where + " value type"; });
        if (!valid_type(t)) c.fail(at, where + " value type", "unknown value type " + std::to_string(t));
        parse_value(c, static_cast<GGUFType>(t), e.value, where, 0);
    }

    if (const MetaEntry* a = h.find("general.alignment")) {
        const MetaValue& v = a->value;
        if (v.type != GGUFType::U32)
            c.fail(v.file_offset, "metadata 'general.alignment'",
                   std::string("must be a u32, found ") + gguf_type_name(v.type));
        if (!is_pow2(v.scalar.u))
            c.fail(v.file_offset, "metadata 'general.alignment'",
                   "alignment " + std::to_string(v.scalar.u) + " is not a nonzero power of two");
        h.alignment = static_cast<uint32_t>(v.scalar.u);
    }

    // --- tensor infos -------------------------------------------------------
    if (n_tensors > c.remaining() / kMinTensorInfoBytes)
        c.fail(c.pos(), "tensor infos",
               std::to_string(n_tensors) + " tensor infos cannot fit in the " + std::to_string(c.remaining()) +
                   " bytes left after the metadata");
    h.tensors.resize(static_cast<size_t>(n_tensors));
    std::vector<uint64_t> offset_field_pos(static_cast<size_t>(n_tensors));
    std::unordered_set<std::string_view> names;
    names.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        TensorInfo& t = h.tensors[static_cast<size_t>(i)];
        t.info_offset = c.pos();
        auto name_field = [&] { return "tensor[" + std::to_string(i) + "] name"; };
        StringRef nref = c.read_string(name_field);
        std::string_view nv = c.view(nref);
        if (!valid_utf8(nv)) c.fail(t.info_offset, name_field(), "tensor name is not valid UTF-8");
        if (!names.insert(nv).second) c.fail(t.info_offset, name_field(), "duplicate tensor name " + quoted(nv));
        t.name.assign(nv);
        const std::string where = "tensor " + quoted(nv);

        uint64_t at = c.pos();
        t.n_dims = c.read<uint32_t>([&] { return where + " n_dims"; });
        if (t.n_dims == 0 || t.n_dims > kMaxDims)
            c.fail(at, where + " n_dims",
                   "n_dims is " + std::to_string(t.n_dims) + " (must be 1.." + std::to_string(kMaxDims) + ")");
        int64_t n_el = 1;
        for (uint32_t d = 0; d < t.n_dims; ++d) {
            at = c.pos();
            auto dim_field = [&] { return where + " ne[" + std::to_string(d) + "]"; };
            uint64_t ne = c.read<uint64_t>(dim_field);
            if (ne == 0) c.fail(at, dim_field(), "zero extent (every dimension must be >= 1)");
            if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                c.fail(at, dim_field(), "extent " + std::to_string(ne) + " does not fit in int64");
            t.ne[d] = static_cast<int64_t>(ne);
            if (__builtin_mul_overflow(n_el, t.ne[d], &n_el))
                c.fail(at, dim_field(), "element count (product of the extents) overflows int64");
        }
        t.n_elements = n_el;

        at = c.pos();
        t.type_id = c.read<uint32_t>([&] { return where + " type"; });
        t.traits = type_traits(t.type_id);
        if (t.traits == nullptr) c.fail(at, where + " type", "unknown tensor type id " + std::to_string(t.type_id));
        if (t.ne[0] % t.traits->block_size != 0)
            c.fail(t.info_offset, where + " ne[0]",
                   "ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of the " + t.traits->name +
                       " block size " + std::to_string(t.traits->block_size));
        // Rows are whole blocks, so the element count is too.
        uint64_t blocks = static_cast<uint64_t>(n_el) / t.traits->block_size;
        if (__builtin_mul_overflow(blocks, static_cast<uint64_t>(t.traits->type_size), &t.nbytes))
            c.fail(t.info_offset, where + " shape", "byte size overflows 64 bits");

        offset_field_pos[static_cast<size_t>(i)] = c.pos();
        t.rel_offset = c.read<uint64_t>([&] { return where + " offset"; });
        if (t.rel_offset % h.alignment != 0)
            c.fail(offset_field_pos[static_cast<size_t>(i)], where + " offset",
                   "data offset " + std::to_string(t.rel_offset) + " is not a multiple of the alignment " +
                       std::to_string(h.alignment));
    }

    // --- data section ---------------------------------------------------------
    uint64_t end_of_infos = c.pos();
    uint64_t pad = (h.alignment - end_of_infos % h.alignment) % h.alignment;
    if (end_of_infos > std::numeric_limits<uint64_t>::max() - pad)
        c.fail(end_of_infos, "data section", "aligned data offset overflows 64 bits");
    h.data_offset = end_of_infos + pad;
    if (n_tensors > 0 && h.data_offset > size)
        c.fail(end_of_infos, "data section",
               "data section would start at " + std::to_string(h.data_offset) + ", past the end of the file (" +
                   std::to_string(size) + " bytes)");
    uint64_t data_size = h.data_offset <= size ? size - h.data_offset : 0;

    for (size_t i = 0; i < h.tensors.size(); ++i) {
        TensorInfo& t = h.tensors[i];
        if (t.rel_offset > data_size || t.nbytes > data_size - t.rel_offset)
            c.fail(offset_field_pos[i], "tensor " + quoted(t.name) + " offset",
                   "tensor data [" + std::to_string(t.rel_offset) + ", +" + std::to_string(t.nbytes) +
                       " bytes) extends past the end of the data section (" + std::to_string(data_size) +
                       " bytes starting at file offset " + std::to_string(h.data_offset) + ")");
        t.abs_offset = h.data_offset + t.rel_offset;
    }

    std::vector<size_t> order(h.tensors.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return h.tensors[a].rel_offset < h.tensors[b].rel_offset;
    });
    for (size_t k = 1; k < order.size(); ++k) {
        const TensorInfo& prev = h.tensors[order[k - 1]];
        const TensorInfo& cur = h.tensors[order[k]];
        if (prev.rel_offset + prev.nbytes > cur.rel_offset)
            c.fail(offset_field_pos[order[k]], "tensor " + quoted(cur.name) + " offset",
                   "tensor data at " + std::to_string(cur.rel_offset) + " overlaps tensor " + quoted(prev.name) +
                       " at [" + std::to_string(prev.rel_offset) + ", +" + std::to_string(prev.nbytes) + ")");
    }
    return h;
}

}  // namespace mn
