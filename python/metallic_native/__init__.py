"""metallic_native: a native LLM inference engine for GGUF models.

    from metallic_native import Model
    with Model("qwen2.5-coder-0.5b-instruct-q4_k_m") as model:   # pulled on first use
        logits = model.eval([14990, 11, 1879])                  # last position's logits

    from metallic_native import GGUFFile
    with GGUFFile(path) as f:
        print(f.metadata["general.architecture"], f.tensors["output.weight"])
"""

from ._core import GGUFError, best_isa
from .gguf import GGUFFile
from .model import Model
from . import models

__all__ = ["Model", "GGUFFile", "GGUFError", "best_isa", "models"]
__version__ = "0.1.0"
