import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = Path(os.path.expanduser("~/.cache/metallic_native/models"))
REAL_MODELS = {
    "qwen2.5-coder-0.5b-instruct-q4_k_m": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "smollm2-135m-instruct-q4_1": "smollm2-135m-instruct-q4_1.gguf",
}


def real_model_path(key: str) -> Path:
    p = MODELS / REAL_MODELS[key]
    if not p.exists():
        pytest.skip(f"model {p.name} not found in cache; run `metallic pull {key}` first")
    return p
