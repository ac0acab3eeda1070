"""Tiny synthetic GGUF models of the supported architectures, written with the
`gguf` package, for tests that need no real model: every weight type, odd
shapes, missing or mis-shaped tensors."""

from __future__ import annotations

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants

# Byte offset and kind of the scale fields of the K-quant blocks, so random
# blocks get finite, moderate scales (random fp16 bytes would be inf/nan).
_K_SCALES = {
    "Q2_K": [(80, "f16"), (82, "f16")],
    "Q3_K": [(108, "f16")],
    "Q4_K": [(0, "f16"), (2, "f16")],
    "Q5_K": [(0, "f16"), (2, "f16")],
    "Q6_K": [(208, "f16")],
    "Q8_K": [(0, "f32")],
}


def random_matrix(rng: np.random.Generator, rows: int, cols: int, type_name: str, scale: float = 0.05):
    """A [rows][cols] weight in `type_name`: (array, raw_dtype) for GGUFWriter.add_tensor."""
    qtype = T[type_name]
    if type_name in _K_SCALES:
        # Random blocks with unit scale fields, then every scale field
        # multiplied by one factor so the weights' spread is `scale` (all
        # values are linear in d and dmin), as for the other types.
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = rows * cols // block
        raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)

        def set_scales(factor):
            for off, kind in _K_SCALES[type_name]:
                dt = np.float16 if kind == "f16" else np.float32
                vals = (rng_scales * factor).astype(dt)
                raw[:, off:off + vals.itemsize] = vals.view(np.uint8).reshape(n_blocks, vals.itemsize)

        rng_scales = rng.uniform(0.5, 1.0, n_blocks)
        set_scales(1.0)
        spread = float(quants.dequantize(raw, qtype).std())
        set_scales(scale / spread)
        return raw.reshape(rows, cols // block * size), qtype
    x = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    if type_name == "F32":
        return x, None
    return quants.quantize(x, qtype), qtype


def write_model(path, *, arch: str = "llama", n_layers: int = 2, d_model: int = 256, n_heads: int = 4,
                n_kv_heads: int = 2, d_ff: int = 512, vocab: int = 300, wtype: str = "Q8_0",
                embd_type: str | None = None, qkv_bias: bool | None = None, tied: bool = False,
                omit: tuple[str, ...] = (), shapes: dict | None = None, seed: int = 0,
                rope_base: float = 10000.0, eps: float = 1e-5, context_length: int = 512,
                extra_metadata: dict | None = None) -> str:
    """Writes a random model; `omit` drops tensors by name, `shapes` overrides (rows, cols) of a tensor."""
    rng = np.random.default_rng(seed)
    shapes = shapes or {}
    if qkv_bias is None:
        qkv_bias = arch == "qwen2"
    head_dim = d_model // n_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_embedding_length(d_model)
    w.add_feed_forward_length(d_ff)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_context_length(context_length)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    for key, value in (extra_metadata or {}).items():
        w.add_string(key, value) if isinstance(value, str) else w.add_uint32(key, value)

    def matrix(name, rows, cols, type_name=wtype):
        if name in omit:
            return
        rows, cols = shapes.get(name, (rows, cols))
        arr, raw = random_matrix(rng, rows, cols, type_name)
        w.add_tensor(name, arr, raw_dtype=raw)

    def vector(name, n, center=0.0, spread=0.1):
        if name in omit:
            return
        n = shapes.get(name, (n,))[0]
        w.add_tensor(name, (center + spread * rng.standard_normal(n)).astype(np.float32))

    matrix("token_embd.weight", vocab, d_model, embd_type or wtype)
    vector("output_norm.weight", d_model, 1.0)
    if not tied:
        matrix("output.weight", vocab, d_model)
    for i in range(n_layers):
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", d_model, 1.0)
        matrix(p + "attn_q.weight", n_heads * head_dim, d_model)
        matrix(p + "attn_k.weight", n_kv_heads * head_dim, d_model)
        matrix(p + "attn_v.weight", n_kv_heads * head_dim, d_model)
        if qkv_bias:
            vector(p + "attn_q.bias", n_heads * head_dim)
            vector(p + "attn_k.bias", n_kv_heads * head_dim)
            vector(p + "attn_v.bias", n_kv_heads * head_dim)
        matrix(p + "attn_output.weight", d_model, n_heads * head_dim)
        vector(p + "ffn_norm.weight", d_model, 1.0)
        matrix(p + "ffn_gate.weight", d_ff, d_model)
        matrix(p + "ffn_up.weight", d_ff, d_model)
        matrix(p + "ffn_down.weight", d_model, d_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)
