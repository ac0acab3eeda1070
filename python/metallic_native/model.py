"""The inference engine's Python face: metallic_native.Model."""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from . import _core
from .generation import GenerationMixin


class Model(GenerationMixin):
    """A GGUF model loaded for inference.

    Model(path_or_name, n_ctx=None, n_threads=None, backend="auto")

    path_or_name: a GGUF file, or the name of a model that `metallic pull` knows
        (pulled on first use).
    n_ctx: KV cache length in tokens (default: the model's context length,
        capped at 4096).
    n_threads: CPU threads (default: the number of physical cores).
    backend: "auto" (CUDA when a GPU is visible, else CPU), "cpu", "cuda" or "metal".
    kv_type: "f16" (default) or "f32" storage for the KV cache.
    isa: CPU kernel family: "auto", "avx512" (AVX2 kernels + the VNNI prefill GEMM), "avx2",
        "neon" or "scalar" (for testing).
    max_batch: prompt tokens processed per prefill chunk.
    chat_template: a Jinja chat template to use instead of the file's
        (tokenizer.chat_template); needed for chat with a model that has none.
    activations: CPU matrix products quantize activations to 8 bits ("q8", the
        default: the fastest, and what llama.cpp does; logits within ~1e-3
        cosine of float) or to 8 bits plus an 8-bit residual ("q8x2": within
        ~1e-5 of float, about twice the integer work: use it to compare with a
        float reference); "auto" uses q8x2 for decode steps and small batches
        and q8 for large prefill chunks.

    Text generation (generate, stream, chat, create_completion,
    create_chat_completion) comes from GenerationMixin (generation.py).

    The native work of eval() runs with the GIL released. One call runs at a
    time per Model; use one Model per thread for parallel work.
    """

    def __init__(self, path_or_name: str | os.PathLike, n_ctx: int | None = None, n_threads: int | None = None,
                 backend: str = "auto", *, kv_type: str = "f16", isa: str = "auto", max_batch: int = 256,
                 activations: str = "q8", chat_template: str | None = None):
        from . import models

        path = models.resolve(path_or_name)
        if n_ctx is not None:
            _check_int("n_ctx", n_ctx, 1)
        if n_threads is not None:
            _check_int("n_threads", n_threads, 1)
        _check_int("max_batch", max_batch, 1)
        self.path = path
        self.activations = activations
        self._native = _core.Model(str(path), int(n_ctx or 0), int(n_threads or 0), backend, kv_type, isa,
                                   int(max_batch), activations)
        self.config = dict(self._native.config)
        # Built on first use: the tokenizer takes a few hundred ms for a 150k vocabulary,
        # which callers that only need logits should not pay.
        self._metadata = None
        self._tokenizer = None
        self._chat_template = None
        self._chat_template_source = chat_template

    # ---- file metadata, tokenizer, chat template ---------------------------------------------
    @property
    def metadata(self) -> dict:
        """The GGUF file's metadata as plain Python values."""
        if self._metadata is None:
            from .gguf import GGUFFile

            with GGUFFile(self.path) as f:
                self._metadata = f.metadata
        return self._metadata

    @property
    def tokenizer(self):
        """The tokenizer built from the file's vocabulary and merges (metallic_native.tokenizer.Tokenizer)."""
        if self._tokenizer is None:
            from .tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_metadata(self.metadata)
        return self._tokenizer

    @property
    def chat_template(self):
        """The chat template (metallic_native.chat.ChatTemplate): the one passed to Model(),
        else the file's; None if there is neither (chat() then raises ValueError)."""
        if self._chat_template is None:
            from .chat import ChatTemplate, NoChatTemplateError

            try:
                self._chat_template = ChatTemplate.from_metadata(self.metadata, self._chat_template_source)
            except NoChatTemplateError:
                return None
        return self._chat_template

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of text. add_special adds BOS/EOS as the model's metadata asks;
        parse_special turns special-token text such as "<|im_end|>" into that token."""
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids, skip_special: bool = False) -> str:
        """Text of token ids."""
        return self.tokenizer.decode(list(ids), skip_special=skip_special)

    # ---- state -------------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._native.n_ctx

    @property
    def n_past(self) -> int:
        """Tokens currently held in the KV cache."""
        return self._native.n_past

    @property
    def backend(self) -> str:
        return self._native.backend

    @property
    def n_threads(self) -> int:
        return self._native.n_threads

    @property
    def backend_counters(self) -> dict:
        """Event counts of the backend since load, by name (CUDA: graph_replays,
        steps_run_ahead, steps_taken_ahead); empty for backends that keep none."""
        return dict(self._native.backend_counters)

    @property
    def n_vocab(self) -> int:
        return self.config["vocab_size"]

    def reset(self) -> None:
        """Empties the KV cache."""
        self._forget_prefix_record()
        self._native.reset()

    def truncate(self, n: int) -> None:
        """Keeps the first n cached tokens and forgets the rest (for prefix reuse)."""
        self._forget_prefix_record()
        self._native.truncate(int(n))

    def _generation_engine(self):
        # Generation drives the native handle directly: the public eval/truncate/reset
        # forget generation's record of the cache, since they change it behind its back.
        return self._native

    # ---- compute -----------------------------------------------------------------------------
    def eval(self, tokens: Sequence[int] | np.ndarray, *, all_logits: bool = False,
             capture_hidden: bool = False, top_k: int = 0, logsumexp: bool = False):
        """Appends tokens to the cache and returns float32 logits.

        Returns the last position's logits [vocab], or every position's [n, vocab]
        with all_logits=True. With capture_hidden=True returns (logits, hidden)
        where hidden[0] is the embedding output and hidden[i] the residual stream
        after layer i, shaped [n_layers + 1, n, d_model].
        With top_k=K > 0 returns (ids, logits) of the last position's K largest
        logits in descending order (ties: lower id first), int32 and float32
        arrays of length K; on a GPU they are selected there, so only 2K numbers
        cross to the host (top_k=1 is greedy decoding). With logsumexp=True as
        well, returns (ids, logits, lse) where lse = log(sum(exp(all logits))) of
        that position, computed where the logits are: logits - lse are the
        tokens' log-probabilities.
        """
        arr = np.asarray(tokens)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.size == 0:
            raise ValueError("tokens is empty")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
        self._forget_prefix_record()
        return self._native.eval(arr.astype(np.int64, copy=False), all_logits, capture_hidden, int(top_k),
                                 bool(logsumexp))

    # ---- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Frees the KV cache, device memory and the file mapping now."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"Model({str(self.path)!r}, closed)"
        return (f"Model({str(self.path)!r}, arch={self.config['architecture']}, n_ctx={self.n_ctx}, "
                f"backend={self.backend})")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
