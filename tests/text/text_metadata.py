"""GGUF metadata as a plain dict, for the text tests, bench and reference scripts (no pytest).

Uses metallic_native.GGUFFile (the engine's reader). Without the compiled extension (a pure-Python
checkout) it reads the same values with the gguf package: string arrays as lists of str, numeric
arrays as numpy arrays, scalars as Python values, as GGUFFile gives them.
"""

from __future__ import annotations

from typing import Any


def read_metadata(path: str) -> dict[str, Any]:
    try:
        from metallic_native import GGUFFile
    except ImportError:
        GGUFFile = None
    if GGUFFile is not None:
        with GGUFFile(path) as f:
            return dict(f.metadata)
    return read_metadata_with_gguf_package(path)


def read_metadata_with_gguf_package(path: str) -> dict[str, Any]:
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if not field.types:
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            if field.types[-1] == GGUFValueType.STRING:
                out[name] = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                out[name] = np.array([field.parts[i][0] for i in field.data])
        elif kind == GGUFValueType.STRING:
            out[name] = bytes(field.parts[field.data[0]]).decode("utf-8")
        else:
            value = field.parts[field.data[0]][0]
            out[name] = bool(value) if kind == GGUFValueType.BOOL else value.item()
    return out
