"""Shared helpers for the text tests (tokenizer, chat templates).

model_path(name): the cached real model file, or a skip when it is absent. CI sets
METALLIC_REQUIRE_MODELS=1, which turns that skip into a failure, so a missing model can never pass
silently there.

fixture(name): a reference fixture from tests/fixtures (made by tests/reference/make_reference.py
with transformers; the tests compare against these stored files so they need no transformers).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from text_metadata import read_metadata

MODELS_DIR = Path(os.environ.get("METALLIC_MODELS_DIR", "~/.cache/metallic_native/models")).expanduser()
FIXTURES_DIR = Path(os.environ.get("METALLIC_FIXTURES_DIR", Path(__file__).resolve().parents[1] / "fixtures"))

QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SMOLLM = "smollm2-135m-instruct-q4_1.gguf"
# model file -> prefix of its fixture files in tests/fixtures
FIXTURE_KEYS = {QWEN: "qwen", SMOLLM: "smollm"}


def _require_models() -> bool:
    return os.environ.get("METALLIC_REQUIRE_MODELS", "") not in ("", "0")


def model_path(name: str) -> Path:
    """Path of a cached model file; skips the test if absent (fails under METALLIC_REQUIRE_MODELS=1)."""
    path = MODELS_DIR / name
    if path.is_file():
        return path
    message = (
        f"model file {path} is absent; fetch it (see shared/models.md or `metallic pull`) "
        "to run this test"
    )
    if _require_models():
        pytest.fail(message + " (METALLIC_REQUIRE_MODELS is set, so this is a failure)")
    pytest.skip(message)


@functools.lru_cache(maxsize=None)
def _read_metadata(path: str) -> dict[str, Any]:
    return read_metadata(path)


def model_metadata(name: str) -> dict[str, Any]:
    """GGUF metadata of a cached model (read once per session)."""
    return _read_metadata(str(model_path(name)))


@functools.lru_cache(maxsize=None)
def _load_fixture(name: str) -> Any:
    path = FIXTURES_DIR / name
    if not path.is_file():
        # Fixtures are committed files, so a missing one is a broken checkout, never a skip.
        pytest.fail(f"reference fixture {path} is missing (made by tests/reference/make_reference.py)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fixture(name: str) -> Any:
    return _load_fixture(name)


@functools.lru_cache(maxsize=None)
def _tokenizer(name: str):
    from metallic_native.tokenizer import Tokenizer

    return Tokenizer.from_metadata(model_metadata(name))


def model_tokenizer(name: str):
    """Tokenizer of a cached model (built once per session)."""
    return _tokenizer(name)


class TextModel:
    """A real model for the text tests: its file, metadata, tokenizer and fixture key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = FIXTURE_KEYS[name]
        self.path = model_path(name)

    @property
    def metadata(self) -> dict[str, Any]:
        return model_metadata(self.name)

    @property
    def tokenizer(self):
        return model_tokenizer(self.name)

    def fixture(self, kind: str) -> Any:
        """tests/fixtures/<key>_<kind>.json, e.g. kind="tokenizer" or "chat_template"."""
        return fixture(f"{self.key}_{kind}.json")


@pytest.fixture(scope="session", params=[QWEN, SMOLLM], ids=["qwen", "smollm"])
def text_model(request) -> TextModel:
    """Each real model in turn (skipped when absent, failed under METALLIC_REQUIRE_MODELS=1)."""
    return TextModel(request.param)


@pytest.fixture(scope="session")
def tokenizer_corpus() -> list[str]:
    return fixture("tokenizer_corpus.json")


@pytest.fixture(scope="session")
def smollm_model() -> TextModel:
    return TextModel(SMOLLM)


@pytest.fixture(scope="session")
def qwen_model() -> TextModel:
    return TextModel(QWEN)
