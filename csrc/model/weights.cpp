#include "model/weights.h"

#include "common/error.h"
#include "gguf/gguf_parser.h"

namespace mn {

namespace {

std::string shape_str(int64_t ne0, int64_t ne1) {
    return ne1 == 1 ? "[" + std::to_string(ne0) + "]" : "[" + std::to_string(ne0) + ", " + std::to_string(ne1) + "]";
}

struct Binder {
    const FindTensor& find;
    const std::string& path;

    // ne1 == 1 means a vector. `matrix` weights may be any supported quantized
    // type; vectors (norms, biases) must be F32.
    bool bind(WeightTensor& w, const std::string& name, int64_t ne0, int64_t ne1, bool matrix, bool required = true) {
        const TensorLookup t = find(name);
        if (!t.info) {
            if (!required) return false;
            throw GGUFError(path, 0, name, "required tensor is missing (expected shape " + shape_str(ne0, ne1) + ")");
        }
        const TensorInfo& info = *t.info;
        const int64_t got1 = info.n_dims >= 2 ? info.ne[1] : 1;
        const bool extra_dims = (info.n_dims >= 3 && info.ne[2] != 1) || (info.n_dims >= 4 && info.ne[3] != 1);
        if (info.ne[0] != ne0 || got1 != ne1 || extra_dims) {
            std::string got = "[";
            for (uint32_t i = 0; i < info.n_dims; ++i) got += (i ? ", " : "") + std::to_string(info.ne[i]);
            throw GGUFError(path, info.info_offset, name,
                            "tensor has shape " + got + "], expected " + shape_str(ne0, ne1));
        }
        if (!matrix && info.traits->block_size != 1)
            throw GGUFError(path, info.info_offset, name,
                            std::string("expected an F32 vector, found type ") + info.traits->name);
        if (!matrix && info.type_id != uint32_t(TensorType::F32))
            throw GGUFError(path, info.info_offset, name,
                            std::string("expected an F32 vector, found type ") + info.traits->name);
        if (!info.traits->can_dequantize)
            throw GGUFError(path, info.info_offset, name,
                            std::string("tensor type ") + info.traits->name + " is not supported by this engine");
        w.name = name;
        w.type = TensorType(info.type_id);
        w.ne0 = ne0;
        w.ne1 = ne1;
        w.row_bytes = size_t(ne0 / info.traits->block_size) * info.traits->type_size;
        w.host = t.data;
        w.device = nullptr;
        return true;
    }
};

}  // namespace

ModelWeights load_weights(const ModelConfig& c, const FindTensor& find, const std::string& path) {
    Binder b{find, path};
    ModelWeights m;
    const int64_t d = c.d_model, q_dim = int64_t(c.n_heads) * c.head_dim, kv_dim = int64_t(c.n_kv_heads) * c.head_dim;
    // The vocabulary size comes from the tokenizer's token list when present,
    // so a mismatched embedding table is reported rather than silently used.
    int64_t vocab = c.vocab_size;
    if (vocab <= 0) {
        const TensorLookup t = find("token_embd.weight");
        vocab = t.info && t.info->n_dims >= 2 ? t.info->ne[1] : 1;
    }
    b.bind(m.token_embd, "token_embd.weight", d, vocab, true);
    b.bind(m.output_norm, "output_norm.weight", d, 1, false);
    if (!b.bind(m.output, "output.weight", d, m.token_embd.ne1, true, /*required=*/false)) {
        m.output = m.token_embd;
        m.tied_output = true;
    }
    m.layers.resize(c.n_layers);
    for (int i = 0; i < c.n_layers; ++i) {
        LayerWeights& l = m.layers[i];
        const std::string p = "blk." + std::to_string(i) + ".";
        b.bind(l.attn_norm, p + "attn_norm.weight", d, 1, false);
        b.bind(l.wq, p + "attn_q.weight", d, q_dim, true);
        b.bind(l.wk, p + "attn_k.weight", d, kv_dim, true);
        b.bind(l.wv, p + "attn_v.weight", d, kv_dim, true);
        b.bind(l.wo, p + "attn_output.weight", q_dim, d, true);
        const bool bq = b.bind(l.bq, p + "attn_q.bias", q_dim, 1, false, false);
        const bool bk = b.bind(l.bk, p + "attn_k.bias", kv_dim, 1, false, false);
        const bool bv = b.bind(l.bv, p + "attn_v.bias", kv_dim, 1, false, false);
        if (bq != bk || bk != bv)
            throw GGUFError(path, 0, p + "attn_q.bias",
                            "layer has biases on only some of Q, K and V; expected all three or none");
        l.has_qkv_bias = bq;
        b.bind(l.ffn_norm, p + "ffn_norm.weight", d, 1, false);
        b.bind(l.w_gate, p + "ffn_gate.weight", d, c.d_ff, true);
        b.bind(l.w_up, p + "ffn_up.weight", d, c.d_ff, true);
        b.bind(l.w_down, p + "ffn_down.weight", c.d_ff, d, true);
    }
    return m;
}

}  // namespace mn
