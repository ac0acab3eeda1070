#!/usr/bin/env python3
"""Tokenizer speed: construction from GGUF metadata, encode / decode throughput, streaming decode,
chat template rendering.

    python bench/tokenizer_bench.py [MODEL.gguf ...]   (default: the cached qwen and smollm models)

Metadata is read once (not timed); construction is timed from the metadata dict, best of N runs,
wall time and process CPU time (CPU time is the steadier number on a shared machine).
The text is real: about 1 MB of the Python standard library's source (code) plus a multilingual
paragraph block, so the numbers cover both code and prose.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

MODELS_DIR = Path(os.environ.get("METALLIC_MODELS_DIR", "~/.cache/metallic_native/models")).expanduser()
DEFAULT_MODELS = ["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "smollm2-135m-instruct-q4_1.gguf"]

PROSE = (
    "The history of computing is a story of layered abstractions, each hiding the one beneath. "
    "Bonjour, je m'appelle Élodie et j'habite à Montréal. Привет, как дела? Сегодня хорошая погода. "
    "今天天气很好，我们去公园散步吧。東京は日本の首都です。안녕하세요, 만나서 반갑습니다. "
    "नमस्ते दुनिया। مرحبا بالعالم. Emoji: 😀👍🏽👨\u200d👩\u200d👧 and numbers 3.14159, 1,000,000.\n"
)


def read_metadata(path: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "text"))
    from text_metadata import read_metadata as read  # GGUFFile, or the gguf package without _core

    return read(path)


def sample_text(limit: int = 1_000_000) -> str:
    import json

    root = Path(json.__file__).resolve().parents[1]  # the stdlib directory
    parts, size = [], 0
    for name in sorted(root.glob("*.py")):
        text = name.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= limit * 0.9:
            break
    parts.append(PROSE * (int(limit * 0.1) // len(PROSE) + 1))
    return "".join(parts)


def timed(fn, repeat: int):
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus), statistics.median(walls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from metallic_native.chat import ChatTemplate
    from metallic_native.tokenizer import Tokenizer

    paths = args.models or [str(MODELS_DIR / m) for m in DEFAULT_MODELS]
    text = sample_text()
    nbytes = len(text.encode("utf-8"))
    lines = [l for l in text.splitlines() if l.strip()][:20000]
    print(f"text: {len(text):,} chars, {nbytes:,} UTF-8 bytes; {len(lines):,} short lines; load {os.getloadavg()[0]:.1f}")
    for path in paths:
        if not Path(path).is_file():
            print(f"{path}: absent, skipped")
            continue
        t0 = time.perf_counter()
        meta = read_metadata(path)
        t_meta = time.perf_counter() - t0
        n_tok, n_merge = len(meta["tokenizer.ggml.tokens"]), len(meta.get("tokenizer.ggml.merges", []))
        print(f"\n{Path(path).name}: {n_tok:,} tokens, {n_merge:,} merges (metadata read in {t_meta:.2f} s, not timed below)")

        wall, cpu, med = timed(lambda: Tokenizer.from_metadata(meta), args.repeat)
        print(f"  construct from metadata : best {wall * 1e3:7.1f} ms wall (median {med * 1e3:.1f}), {cpu * 1e3:7.1f} ms CPU")
        tok = Tokenizer.from_metadata(meta)

        ids = tok.encode(text)
        wall, cpu, _ = timed(lambda: tok.encode(text), args.repeat)
        print(
            f"  encode 1 long text      : {len(ids):,} tokens, {wall * 1e3:7.1f} ms -> "
            f"{len(ids) / wall / 1e6:.2f} M tok/s, {nbytes / wall / 1e6:.1f} MB/s (CPU {cpu * 1e3:.1f} ms)"
        )
        n_line_tok = sum(len(tok.encode(l)) for l in lines)
        wall, cpu, _ = timed(lambda: [tok.encode(l) for l in lines], args.repeat)
        print(
            f"  encode short lines      : {len(lines):,} calls, {wall / len(lines) * 1e6:.1f} us/call, "
            f"{n_line_tok / wall / 1e6:.2f} M tok/s"
        )
        wall, cpu, _ = timed(lambda: tok.encode_batch(lines), args.repeat)
        print(f"  encode_batch short lines: {n_line_tok / wall / 1e6:.2f} M tok/s (tokenizers' threads)")
        wall, cpu, _ = timed(lambda: tok.decode(ids), args.repeat)
        print(f"  decode                  : {len(ids) / wall / 1e6:.2f} M tok/s")
        sub = ids[:200_000]

        def stream():
            dec = tok.incremental_decoder()
            for i in sub:
                dec.add(i)
            dec.flush()

        wall, cpu, _ = timed(stream, args.repeat)
        print(f"  incremental decode      : {wall / len(sub) * 1e9:.0f} ns/token")
        if "tokenizer.chat_template" in meta:
            tmpl = ChatTemplate.from_metadata(meta)
            msgs = [{"role": "system", "content": "Be brief."}] + [
                {"role": "user" if i % 2 == 0 else "assistant", "content": lines[i]} for i in range(20)
            ]
            wall, cpu, _ = timed(lambda: tmpl.render(msgs), args.repeat * 20)
            print(f"  chat render (21 msgs)   : {wall * 1e6:.0f} us")


if __name__ == "__main__":
    main()
