#include "model/config.h"

#include "common/error.h"
#include "gguf/gguf_file.h"

namespace mn {

const std::vector<std::string>& supported_architectures() {
    static const std::vector<std::string> kArchs = {"llama", "qwen2"};
    return kArchs;
}

namespace {

// Reads `<arch>.*` keys with range checks; errors name the key and its offset.
struct MetaReader {
    const GGUFFile& f;

    [[noreturn]] void fail(const std::string& key, const std::string& what) const {
        if (const MetaValue* v = f.find(key)) f.fail_key(key, *v, what);
        throw GGUFError(f.path(), 0, key, what);
    }

    int integer(const std::string& key, int64_t lo, int64_t hi, std::optional<int64_t> fallback = std::nullopt) const {
        std::optional<int64_t> v = f.get_int(key);
        if (!v) {
            if (!fallback) fail(key, "required metadata key is missing");
            v = fallback;
        }
        if (*v < lo || *v > hi)
            fail(key, "value " + std::to_string(*v) + " is outside [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "]");
        return int(*v);
    }

    float real(const std::string& key, double lo, double hi, std::optional<double> fallback) const {
        std::optional<double> v = f.get_float(key);
        if (!v) {
            if (!fallback) fail(key, "required metadata key is missing");
            v = fallback;
        }
        if (!(*v >= lo && *v <= hi))
            fail(key, "value " + std::to_string(*v) + " is outside [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "]");
        return float(*v);
    }
};

}  // namespace

ModelConfig ModelConfig::from_gguf(const GGUFFile& file) {
    const MetaReader m{file};
    ModelConfig c;
    const std::optional<std::string> arch = file.get_string("general.architecture");
    if (!arch) m.fail("general.architecture", "required metadata key is missing");
    c.arch_name = *arch;
    if (c.arch_name == "qwen2") {
        c.arch = Arch::Qwen2;
        c.rope_style = RopeStyle::NeoX;
    } else if (c.arch_name == "llama") {
        c.arch = Arch::Llama;
        c.rope_style = RopeStyle::Normal;
    } else {
        std::string list;
        for (const auto& a : supported_architectures()) list += (list.empty() ? "" : ", ") + a;
        throw InvalidArgument(file.path() + ": unsupported architecture '" + c.arch_name + "' (supported: " + list +
                              ")");
    }
    const std::string a = c.arch_name + ".";
    // Bounds are sanity limits that keep buffer sizes far from overflow, not model limits.
    c.n_layers = m.integer(a + "block_count", 1, 1024);
    c.d_model = m.integer(a + "embedding_length", 1, 1 << 16);
    c.n_heads = m.integer(a + "attention.head_count", 1, 1024);
    c.n_kv_heads = m.integer(a + "attention.head_count_kv", 1, 1024, c.n_heads);
    c.d_ff = m.integer(a + "feed_forward_length", 1, 1 << 20);
    c.n_ctx_train = m.integer(a + "context_length", 1, 1 << 24, 2048);
    c.head_dim = m.integer(a + "attention.key_length", 2, 1024, c.d_model / c.n_heads);
    c.rms_eps = m.real(a + "attention.layer_norm_rms_epsilon", 0.0, 1.0, std::nullopt);
    c.rope_base = m.real(a + "rope.freq_base", 1.0, 1e12, 10000.0);
    const int rope_dims = m.integer(a + "rope.dimension_count", 1, 1024, c.head_dim);

    if (c.n_heads % c.n_kv_heads != 0)
        m.fail(a + "attention.head_count_kv", "head_count " + std::to_string(c.n_heads) +
                                                  " is not a multiple of head_count_kv " +
                                                  std::to_string(c.n_kv_heads));
    // The CPU attention keeps per-head sums for one KV head's query heads on the stack.
    if (c.n_heads / c.n_kv_heads > 64)
        m.fail(a + "attention.head_count_kv", "more than 64 query heads per KV head (" + std::to_string(c.n_heads) +
                                                  " / " + std::to_string(c.n_kv_heads) + ") is not supported");
    if (c.head_dim % 2 != 0 || rope_dims != c.head_dim)
        m.fail(a + "rope.dimension_count", "partial or odd rotary dimensions are not supported (rope dims " +
                                               std::to_string(rope_dims) + ", head dim " +
                                               std::to_string(c.head_dim) + ")");
    if (const MetaValue* v = file.find("tokenizer.ggml.tokens")) c.vocab_size = int(v->count);
    return c;
}

}  // namespace mn
