"""metallic_native: a native LLM inference engine for GGUF models.

    from metallic_native import GGUFFile, models
    path = models.pull("qwen2.5-coder-0.5b-instruct-q4_k_m")
    with GGUFFile(path) as f:
        print(f.metadata["general.architecture"])
"""

from ._core import GGUFError, best_isa
from .gguf import GGUFFile
from . import models

__all__ = ["GGUFFile", "GGUFError", "best_isa", "models"]
__version__ = "0.1.0"
