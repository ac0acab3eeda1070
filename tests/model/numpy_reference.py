"""An independent float64 numpy implementation of the qwen2/llama forward pass,
reading weights with the `gguf` package's reader and dequantizers. Slow and
simple on purpose: it checks the engine on synthetic models of any weight type."""

from __future__ import annotations

import numpy as np
import gguf
from gguf import quants


class NumpyTransformer:
    def __init__(self, path: str):
        r = gguf.GGUFReader(path)
        self.meta = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("tokenizer.")}
        arch = self.meta["general.architecture"]
        g = lambda k, d=None: self.meta.get(f"{arch}.{k}", d)  # noqa: E731
        self.arch = arch
        self.n_layers = g("block_count")
        self.d = g("embedding_length")
        self.n_heads = g("attention.head_count")
        self.n_kv = g("attention.head_count_kv", self.n_heads)
        self.hd = self.d // self.n_heads
        self.eps = g("attention.layer_norm_rms_epsilon")
        self.base = g("rope.freq_base", 10000.0)
        self.w = {}
        for t in r.tensors:
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # numpy order: rows first
            self.w[t.name] = quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]
        self.k_cache = [[] for _ in range(self.n_layers)]
        self.v_cache = [[] for _ in range(self.n_layers)]

    def _norm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x, pos):
        # x: [n_heads, hd]
        half = self.hd // 2
        inv = 1.0 / self.base ** (np.arange(half) * 2.0 / self.hd)
        c, s = np.cos(pos * inv), np.sin(pos * inv)
        x = x.copy()
        if self.arch == "qwen2":   # NeoX: rotate (i, i + hd/2)
            a, b = x[:, :half].copy(), x[:, half:].copy()
            x[:, :half], x[:, half:] = a * c - b * s, a * s + b * c
        else:                      # llama GGUF: adjacent pairs
            a, b = x[:, 0::2].copy(), x[:, 1::2].copy()
            x[:, 0::2], x[:, 1::2] = a * c - b * s, a * s + b * c
        return x

    def step(self, token: int):
        """Appends one token; returns (logits, hidden states after each layer)."""
        pos = len(self.k_cache[0])
        x = self.w["token_embd.weight"][token].copy()
        hidden = [x.copy()]
        for i in range(self.n_layers):
            p = f"blk.{i}."
            h = self._norm(x, self.w[p + "attn_norm.weight"])
            q = self.w[p + "attn_q.weight"] @ h + self.w.get(p + "attn_q.bias", 0)
            k = self.w[p + "attn_k.weight"] @ h + self.w.get(p + "attn_k.bias", 0)
            v = self.w[p + "attn_v.weight"] @ h + self.w.get(p + "attn_v.bias", 0)
            q = self._rope(q.reshape(self.n_heads, self.hd), pos)
            k = self._rope(k.reshape(self.n_kv, self.hd), pos)
            self.k_cache[i].append(k)
            self.v_cache[i].append(v.reshape(self.n_kv, self.hd))
            K = np.stack(self.k_cache[i])  # [t, n_kv, hd]
            V = np.stack(self.v_cache[i])
            group = self.n_heads // self.n_kv
            out = np.empty((self.n_heads, self.hd))
            for hh in range(self.n_heads):
                s = K[:, hh // group] @ q[hh] / np.sqrt(self.hd)
                pr = np.exp(s - s.max())
                pr /= pr.sum()
                out[hh] = pr @ V[:, hh // group]
            x = x + self.w[p + "attn_output.weight"] @ out.reshape(-1)
            h = self._norm(x, self.w[p + "ffn_norm.weight"])
            gt = self.w[p + "ffn_gate.weight"] @ h
            up = self.w[p + "ffn_up.weight"] @ h
            x = x + self.w[p + "ffn_down.weight"] @ (gt / (1 + np.exp(-gt)) * up)
            hidden.append(x.copy())
        logits = self.w["output.weight"] @ self._norm(x, self.w["output_norm.weight"])
        return logits, hidden
