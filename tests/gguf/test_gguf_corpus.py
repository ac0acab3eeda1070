"""Replays the fuzzer's seed corpus, the minimized corpus of its campaigns
(tests/gguf/corpus/minimized/: inputs that reached new parser states, most of
them malformed) and every input the fuzzer ever found a
problem with (tests/gguf/corpus/regressions/): each must parse or end in a
GGUFError; a crash takes the test process down."""

from __future__ import annotations

from pathlib import Path

import pytest

from metallic_native import GGUFError, GGUFFile

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = sorted(p for d in ("seeds", "minimized", "regressions") for p in (CORPUS / d).glob("*") if p.is_file()
               and p.name != "README.md")


def test_corpus_is_present():
    assert any(p.parent.name == "seeds" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_file(path):
    try:
        with GGUFFile(path) as f:
            f.metadata
            for name in f.tensors:
                f.raw(name).tobytes()
    except GGUFError as e:
        assert str(e).startswith(f"{path}: at byte offset "), str(e)
