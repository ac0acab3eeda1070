"""Shared test helpers: locating the real models.

Real-model tests call `real_model(name)`: it returns the cached path, pulling
the model if it is not cached. Where the model cannot be had, the test is
skipped with the reason, except under METALLIC_REQUIRE_MODELS=1 (set by CI),
where it fails instead, so CI never counts a skipped real-model test as a pass.
"""

from __future__ import annotations

import os

import pytest

QWEN_05B = "qwen2.5-coder-0.5b-instruct-q4_k_m"
SMOLLM_135M = "smollm2-135m-instruct-q4_1"


def real_model(name: str) -> str:
    from metallic_native import models

    try:
        return str(models.pull(name, progress=False))
    except Exception as exc:  # network down, no cache: say why
        msg = f"real model {name} unavailable ({type(exc).__name__}: {exc}); run `metallic pull {name}`"
        if os.environ.get("METALLIC_REQUIRE_MODELS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def qwen05b_path() -> str:
    return real_model(QWEN_05B)


@pytest.fixture(scope="session")
def smollm_path() -> str:
    return real_model(SMOLLM_135M)
