"""Reading GGUF model files.

    from metallic_native import GGUFFile
    with GGUFFile(path) as f:
        f.metadata["general.architecture"]      # plain Python values
        t = f.tensors["token_embd.weight"]      # TensorInfo
        f.raw(t.name)                           # zero-copy uint8 view of its bytes
        f.dequantize(t.name)                    # float32, numpy-ordered shape

Shapes: ``TensorInfo.shape`` is in GGUF/ggml order, ``ne[0]`` first (ne[0] is
the contiguous, innermost extent). ``TensorInfo.np_shape`` is the reverse, the
shape numpy uses and the shape ``dequantize`` returns.

The file is memory-mapped and parsed in C++ (metallic_native._core). Split
models (``name-00001-of-0000N.gguf``) open as one file set from the first part.
Arrays from ``raw`` keep the mapping alive by themselves, so they stay valid
after ``close()``; everything else on a closed file raises ValueError.
"""

from __future__ import annotations

import os
from typing import Any, Dict, NamedTuple, Tuple

import numpy as np

from . import _core
from ._core import GGUFError

__all__ = ["GGUFFile", "GGUFError", "TensorInfo"]


class TensorInfo(NamedTuple):
    """One tensor of a GGUF file (or file set)."""

    name: str
    shape: Tuple[int, ...]   # GGUF order: ne[0] (innermost) first
    type: str                # type name, e.g. "Q4_K"
    type_id: int             # ggml type id
    offset: int              # absolute byte offset of the data in its file
    nbytes: int
    n_elements: int
    part: int                # index of the split part holding it (0 for single files)

    @property
    def np_shape(self) -> Tuple[int, ...]:
        """The numpy-order shape (reversed ``shape``), as ``dequantize`` returns."""
        return tuple(reversed(self.shape))


class GGUFFile:
    """A GGUF file opened read-only over mmap. See the module docstring."""

    def __init__(self, path: "str | os.PathLike[str]"):
        self._path = os.fspath(path)
        if not isinstance(self._path, str):
            raise TypeError(f"GGUFFile path must be str or os.PathLike[str], not {type(path).__name__}")
        self._native = _core._GGUFFile(self._path)
        self._version = self._native.version
        self._metadata: Dict[str, Any] | None = None
        self._tensors: Dict[str, TensorInfo] | None = None

    # -- properties --------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._path

    @property
    def version(self) -> int:
        return self._version

    @property
    def closed(self) -> bool:
        return self._native.closed

    @property
    def part_paths(self) -> list:
        """Paths of the files of the set (one entry unless the model is split)."""
        return self._native.part_paths

    @property
    def alignment(self) -> int:
        return self._native.alignment

    @property
    def data_offset(self) -> int:
        """Start of the (first part's) data section."""
        return self._native.data_offset

    @property
    def metadata(self) -> Dict[str, Any]:
        """Key -> value, in file order. Scalars as int/float/bool/str; numeric
        arrays as numpy arrays of the stored dtype; string arrays as lists of
        str; nested arrays as lists. Converted once, then cached (the same
        dict is returned each time)."""
        self._check_open()
        if self._metadata is None:
            self._metadata = self._native.metadata()
        return self._metadata

    @property
    def metadata_types(self) -> Dict[str, str]:
        """Key -> stored GGUF type, e.g. "u32", "string", "array[string]"."""
        return self._native.metadata_types()

    @property
    def tensors(self) -> Dict[str, TensorInfo]:
        """Name -> TensorInfo, in file order (parts in order for split models)."""
        self._check_open()
        if self._tensors is None:
            self._tensors = {t[0]: TensorInfo(t[0], tuple(t[1]), *t[2:]) for t in self._native.tensor_infos()}
        return self._tensors

    # -- data --------------------------------------------------------------------
    def raw(self, name: str) -> np.ndarray:
        """Read-only zero-copy uint8 view of the tensor's bytes in the mapping."""
        return self._native.raw(name)

    def dequantize(self, name: str, isa: str = "auto") -> np.ndarray:
        """The tensor as float32, shaped ``np_shape``. ``isa`` picks the kernel
        family ("auto", "scalar", "avx2", "neon")."""
        return self._native.dequantize(name, isa)

    # -- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Drops this object's mapping. Arrays from raw() keep theirs alive."""
        self._native.close()
        self._metadata = None
        self._tensors = None

    def __enter__(self) -> "GGUFFile":
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._native.closed:
            raise ValueError(f"I/O operation on closed GGUFFile ({self._path})")

    def __repr__(self) -> str:
        if self.closed:
            return f"<GGUFFile {self._path!r} v{self._version} closed>"
        n_parts = len(self.part_paths)
        parts = f", {n_parts} parts" if n_parts > 1 else ""
        return (f"<GGUFFile {self._path!r} v{self._version}, {len(self.tensors)} tensors, "
                f"{len(self._native.metadata_types())} metadata keys{parts}>")
