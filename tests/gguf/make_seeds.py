"""Regenerates the fuzzer's seed corpus in tests/gguf/corpus/seeds/.

    python tests/gguf/make_seeds.py

Seeds: the synthetic files of gguf_synth.py (every metadata type, nested arrays,
v2, custom alignment, split parts), the real models' metadata re-written with
arrays cut to 64 entries and their tensor infos (all names and types) with
one-block tensors so the file parses completely, and the first 64 KiB of each
real model (a truncated header: the vocabulary is cut). Kept well under 2 MB.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import gguf
from gguf import GGUFValueType as VT

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gguf_synth as synth  # noqa: E402

REAL = list(synth.REAL_MODELS)
SEEDS = HERE / "corpus" / "seeds"

_VT_BY_NAME = {"u8": VT.UINT8, "i8": VT.INT8, "u16": VT.UINT16, "i16": VT.INT16, "u32": VT.UINT32,
               "i32": VT.INT32, "f32": VT.FLOAT32, "bool": VT.BOOL, "string": VT.STRING, "u64": VT.UINT64,
               "i64": VT.INT64, "f64": VT.FLOAT64}


def shrink_real(src: Path, dst: Path, n_tensors: int = 64, n_items: int = 64) -> None:
    from metallic_native import GGUFFile

    with GGUFFile(src) as f:
        md, types, tensors = f.metadata, f.metadata_types, list(f.tensors.values())
        w = gguf.GGUFWriter(str(dst), arch=md["general.architecture"])
        for k, v in md.items():
            if k == "general.architecture":
                continue
            t = types[k]
            if t.startswith("array["):
                sub = _VT_BY_NAME[t[6:-1]]
                w.add_key_value(k, list(v[:n_items]), VT.ARRAY, sub_type=sub)
            else:
                w.add_key_value(k, v, _VT_BY_NAME[t])
        for t in tensors[:n_tensors]:
            qt = gguf.GGMLQuantizationType(t.type_id)
            bs, ts = gguf.GGML_QUANT_SIZES[qt]
            w.add_tensor(t.name, np.zeros((1, ts), dtype=np.uint8), raw_dtype=qt)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def main() -> None:
    SEEDS.mkdir(parents=True, exist_ok=True)
    for old in SEEDS.iterdir():
        old.unlink()
    synth.write_roundtrip(SEEDS / "roundtrip.gguf")
    b = bytearray((SEEDS / "roundtrip.gguf").read_bytes())
    b[4:8] = (2).to_bytes(4, "little")
    (SEEDS / "roundtrip_v2.gguf").write_bytes(bytes(b))
    synth.write_simple(SEEDS / "simple_align64.gguf", alignment=64)
    synth.write_simple(SEEDS / "no_tensors.gguf", n_tensors=0)
    with tempfile.TemporaryDirectory() as d:
        for i, p in enumerate(synth.write_split(Path(d) / "split", n_tensors=3, max_tensors=2)):
            (SEEDS / f"split_part{i + 1}.gguf").write_bytes(p.read_bytes())
    from metallic_native import models

    for name in REAL:
        src = models.model_path(name)
        if not src.exists():
            print(f"skipping {name}: not in the cache")
            continue
        stem = name.split("-instruct")[0]
        shrink_real(src, SEEDS / f"{stem}_shrunk.gguf")
        with open(src, "rb") as f:
            (SEEDS / f"{stem}_head64k.bin").write_bytes(f.read(65536))
    total = sum(p.stat().st_size for p in SEEDS.iterdir())
    print(f"{len(list(SEEDS.iterdir()))} seeds, {total} bytes")


if __name__ == "__main__":
    main()
