#!/usr/bin/env python3
"""Random-text parity of metallic_native's tokenizer with transformers and (optionally) llama.cpp.

Not part of the test suite (it needs transformers, and llama.cpp for --llama-lib); the suite
compares against stored fixtures. This checks many more strings than the fixtures hold:

    /work/venvs/ref/bin/python tests/reference/check_tokenizer_parity.py --n 3000
    ... --llama-lib /path/to/libllama.so      # also compare with llama_tokenize (vocab only)

For SmolLM, transformers' GGUF loader lacks the "smollm" pre-tokenizer (it falls back to GPT-2's
regex without the digit split); strings with digits are compared with a transformers tokenizer
whose pre-tokenizer is set to SmolLM2's own (Digits(individual) + ByteLevel).
llama.cpp is compared with add_special and parse_special on and off. Known difference: llama.cpp
turns Qwen's ordinary token "</s>" into a control token, so text containing "</s>" differs.
"""

from __future__ import annotations

import argparse
import ctypes as C
import json
import os
import random
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "text"))
from text_metadata import read_metadata  # noqa: E402

MODELS_DIR = Path(os.environ.get("METALLIC_MODELS_DIR", "~/.cache/metallic_native/models")).expanduser()
FIXTURES_DIR = Path(os.environ.get("METALLIC_FIXTURES_DIR", ROOT / "tests" / "fixtures"))
QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SMOLLM = "smollm2-135m-instruct-q4_1.gguf"

POOLS = [
    " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "0123456789", "abcxyzABCXYZ", "éèàüößçñ", "ПриветЁё",
    "中文字符测试龘", "日本語ひらがなカタカナ", "한국어", "नमस्ते", "مرحبا", "😀👍🏽👨\u200d👩\u200d👧🇫🇷❤️",
    "'s't're've'm'll'd", "’", "!@#$%^&*()_+-=[]{};:,./<>?`~|\\\"", "\u200b\u200d\ufeff", "١٢٣", "Ⅻ½²",
    "\x00\x01\x7f", "𝔘𝕞𝄞", "ﬁ",
]
WHOLE = ["<|im_end|>", "<|endoftext|>", "<|im_start|>", "<tool_call>", "<|fim_prefix|>", "<file_sep>", "<jupyter_code>"]


def random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.1:
                parts.append(rng.choice(WHOLE))
            else:
                pool = rng.choice(POOLS)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        out.append("".join(parts))
    return out


def has_digit(text: str) -> bool:
    return any(unicodedata.category(c).startswith("N") for c in text)


class LlamaCpp:
    """llama_tokenize through ctypes, vocabulary only. The params struct layout is that of the
    llama.h the library was built from (checked for the 0.3.36 vendored llama.cpp)."""

    class Params(C.Structure):
        _fields_ = [
            ("devices", C.c_void_p), ("tensor_buft_overrides", C.c_void_p), ("n_gpu_layers", C.c_int32),
            ("split_mode", C.c_int), ("load_mode", C.c_int), ("lazy_mode", C.c_int), ("main_gpu", C.c_int32),
            ("tensor_split", C.c_void_p), ("progress_callback", C.c_void_p), ("progress_callback_user_data", C.c_void_p),
            ("kv_overrides", C.c_void_p), ("vocab_only", C.c_bool), ("check_tensors", C.c_bool),
            ("use_extra_bufts", C.c_bool), ("no_host", C.c_bool), ("no_alloc", C.c_bool), ("load_mtp", C.c_bool),
        ]

    def __init__(self, lib_path: str, model_path: str) -> None:
        lib = C.CDLL(lib_path)
        lib.llama_model_default_params.restype = self.Params
        lib.llama_model_load_from_file.argtypes = [C.c_char_p, self.Params]
        lib.llama_model_load_from_file.restype = C.c_void_p
        lib.llama_model_get_vocab.argtypes = [C.c_void_p]
        lib.llama_model_get_vocab.restype = C.c_void_p
        lib.llama_tokenize.argtypes = [C.c_void_p, C.c_char_p, C.c_int32, C.POINTER(C.c_int32), C.c_int32, C.c_bool, C.c_bool]
        lib.llama_tokenize.restype = C.c_int32
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        params.vocab_only = True
        model = lib.llama_model_load_from_file(model_path.encode(), params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        self._lib, self._vocab = lib, lib.llama_model_get_vocab(model)

    def encode(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        buf = (C.c_int32 * (len(data) + 8))()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, len(data) + 8, add_special, parse_special)
        if n < 0:
            raise RuntimeError("llama_tokenize buffer too small")
        return list(buf[:n])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama-lib", help="path of libllama.so to compare with llama.cpp as well")
    args = ap.parse_args()

    from transformers import AutoTokenizer
    from tokenizers import pre_tokenizers

    from metallic_native.tokenizer import Tokenizer

    texts = random_texts(args.seed, args.n)
    corpus_file = FIXTURES_DIR / "tokenizer_corpus.json"
    if corpus_file.is_file():
        texts = json.loads(corpus_file.read_text(encoding="utf-8")) + texts
    failures = 0
    for name in (QWEN, SMOLLM):
        path = MODELS_DIR / name
        if not path.is_file():
            print(f"{name}: absent, skipped")
            continue
        ours = Tokenizer.from_metadata(read_metadata(str(path)))
        ref = AutoTokenizer.from_pretrained(str(MODELS_DIR), gguf_file=name)
        ref_digits = None
        if ours.pre_tokenizer == "smollm":
            ref_digits = AutoTokenizer.from_pretrained(str(MODELS_DIR), gguf_file=name)
            ref_digits.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
            )
        counts = {"ids": 0, "ids_no_special_parsing": 0, "decode": 0}
        for text in texts:
            reference = ref_digits if ref_digits is not None and has_digit(text) else ref
            if ours.encode(text) != reference(text).input_ids:
                counts["ids"] += 1
            if ours.encode(text, parse_special=False) != reference(text, split_special_tokens=True).input_ids:
                counts["ids_no_special_parsing"] += 1
            if ours.decode(ours.encode(text)) != text:
                counts["decode"] += 1
        print(f"{name}: {len(texts)} texts vs transformers, mismatches {counts}")
        failures += sum(counts.values())
        if args.llama_lib:
            llama = LlamaCpp(args.llama_lib, str(path))
            diff = {True: [], False: []}
            for text in texts:
                for parse in (True, False):
                    if ours.encode(text, parse_special=parse) != llama.encode(text, True, parse):
                        diff[parse].append(text)
            print(
                f"{name}: vs llama.cpp, mismatches parse_special=True {len(diff[True])}, "
                f"parse_special=False {len(diff[False])}; first: {[t[:40] for t in diff[True][:3] + diff[False][:3]]}"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
