"""Writes a GGUF model of a real architecture's geometry filled with random
quantized blocks, for speed measurements where the real weights are not at
hand (the tokens it predicts are meaningless; the bytes it reads are real).

    python bench/make_synthetic_model.py /tmp/qwen7b-q4km.gguf --preset qwen2.5-7b

Types follow llama.cpp's Q4_K_M recipe (see TYPES): for 7B Q4_K everywhere,
Q6_K for the output and for attn_v / ffn_down of the first and last eighth of
the layers and every third layer between them. Scales are drawn so that a row's dot product with a
unit-variance input stays near unit variance, which keeps the residual stream
finite through all layers."""

from __future__ import annotations

import argparse

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

PRESETS = {
    # name: (arch, layers, d_model, heads, kv_heads, d_ff, vocab, rope_base)
    "qwen2.5-7b": ("qwen2", 28, 3584, 28, 4, 18944, 152064, 1000000.0),
    "qwen2.5-0.5b": ("qwen2", 24, 896, 14, 2, 4864, 151936, 1000000.0),
}
# Types as the real Q4_K_M files have them: 7B in K-quants; 0.5B (896 columns, not a
# multiple of 256) mostly Q5_0, with Q8_0 for attn_v and the output, and K-quants for ffn_down.
TYPES = {
    "qwen2.5-7b": dict(embd="Q4_K", out="Q6_K", main="Q4_K", more="Q6_K", down="Q4_K", down_more="Q6_K"),
    "qwen2.5-0.5b": dict(embd="Q5_0", out="Q8_0", main="Q5_0", more="Q8_0", down="Q4_K", down_more="Q6_K"),
}

# Offsets of the f16 scales of a block; the rest of a block is random bits.
SCALE_FIELDS = {"Q4_K": [0, 2], "Q6_K": [208], "Q5_0": [0], "Q8_0": [0]}
# A block's typical |quantized value| times its scale should be ~1/sqrt(cols): divisors per type.
SCALE_DIV = {"Q4_K": 32 * 8, "Q6_K": 64 * 16, "Q5_0": 8, "Q8_0": 64}


def random_kquant(rng, rows, cols, type_name):
    qtype = T[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    # Q4_K: value = d * sc * q - dmin * m with sc, m < 64 and q < 16; Q6_K: d * sc * (q - 32), |sc| < 128;
    # Q5_0: d * (q - 16); Q8_0: d * q, |q| < 128.
    d = 1.0 / np.sqrt(cols) / SCALE_DIV[type_name]
    for off in SCALE_FIELDS[type_name]:
        vals = (rng.uniform(0.5, 1.0, n_blocks) * d).astype(np.float16)
        raw[:, off:off + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block * size), qtype


def uses_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="qwen2.5-7b")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    arch, n_layers, d, n_heads, n_kv, d_ff, vocab, rope_base = PRESETS[args.preset]
    if args.layers:
        n_layers = args.layers
    hd = d // n_heads
    rng = np.random.default_rng(args.seed)
    w = gguf.GGUFWriter(args.out, arch)
    w.add_name(f"synthetic {args.preset} Q4_K_M")
    # A placeholder byte-level tokenizer (llama.cpp refuses files without one): token i is "t<i>".
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_token_types([1] * vocab)
    w.add_token_merges(["t 1"])
    w.add_block_count(n_layers)
    w.add_embedding_length(d)
    w.add_feed_forward_length(d_ff)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_context_length(32768)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(vocab)])

    def matrix(name, rows, cols, type_name):
        arr, raw = random_kquant(rng, rows, cols, type_name)
        w.add_tensor(name, arr, raw_dtype=raw)

    def vector(name, n, center):
        w.add_tensor(name, (center + 0.05 * rng.standard_normal(n)).astype(np.float32))

    ty = TYPES[args.preset]
    matrix("token_embd.weight", vocab, d, ty["embd"])
    vector("output_norm.weight", d, 1.0)
    matrix("output.weight", vocab, d, ty["out"])
    for i in range(n_layers):
        p = f"blk.{i}."
        big = uses_more_bits(i, n_layers)
        more = ty["more"] if big else ty["main"]
        down = ty["down_more"] if big else ty["down"]
        vector(p + "attn_norm.weight", d, 1.0)
        matrix(p + "attn_q.weight", n_heads * hd, d, ty["main"])
        matrix(p + "attn_k.weight", n_kv * hd, d, ty["main"])
        matrix(p + "attn_v.weight", n_kv * hd, d, more)
        if arch == "qwen2":
            vector(p + "attn_q.bias", n_heads * hd, 0.0)
            vector(p + "attn_k.bias", n_kv * hd, 0.0)
            vector(p + "attn_v.bias", n_kv * hd, 0.0)
        matrix(p + "attn_output.weight", d, n_heads * hd, ty["main"])
        vector(p + "ffn_norm.weight", d, 1.0)
        matrix(p + "ffn_gate.weight", d_ff, d, ty["main"])
        matrix(p + "ffn_up.weight", d_ff, d, ty["main"])
        matrix(p + "ffn_down.weight", d, d_ff, down)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: {args.preset}, {n_layers} layers")


if __name__ == "__main__":
    main()
