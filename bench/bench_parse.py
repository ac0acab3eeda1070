"""Header parse speed of the GGUF reader on the real models.

    python bench/bench_parse.py [--runs N] [paths...]

For each model prints the median over N runs of
  native parse   : mmap + parse + validate (no Python objects; _gguf_parse_only)
  open           : GGUFFile(path) (native parse + wrapper)
  open+metadata  : GGUFFile(path).metadata (every value converted to Python)
  open+tensors   : GGUFFile(path).tensors
Run after `pip install .`; warm page cache; wall and process CPU time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from metallic_native import GGUFFile, _core

MODELS = Path(os.path.expanduser("~/.cache/metallic_native/models"))
DEFAULT = [MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", MODELS / "smollm2-135m-instruct-q4_1.gguf"]


def median_ms(fn, runs: int) -> str:
    """Median wall time and median CPU time of this process (the CPU time is
    the steadier number on a shared, loaded machine)."""
    fn()  # warm the page cache and the allocator
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append((time.process_time() - c) * 1e3)
        wall.append((time.perf_counter() - t) * 1e3)
    return f"{statistics.median(wall):8.2f} ms wall  {statistics.median(cpu):8.2f} ms cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    for p in args.paths:
        if not p.exists():
            print(f"{p.name}: not found (run `metallic pull ...`)")
            continue

        def opened():
            GGUFFile(p).close()

        def with_metadata():
            f = GGUFFile(p)
            f.metadata
            f.close()

        def with_tensors():
            f = GGUFFile(p)
            f.tensors
            f.close()

        with GGUFFile(p) as f:
            md = f.metadata
            n_strings = sum(len(v) for v in md.values() if isinstance(v, list))
            desc = f"{len(md)} keys, {n_strings} strings in arrays, {len(f.tensors)} tensors"
        print(f"{p.name} ({desc}), median of {args.runs}:")
        print(f"  native parse   {median_ms(lambda: _core._gguf_parse_only(str(p)), args.runs)}")
        print(f"  open           {median_ms(opened, args.runs)}")
        print(f"  open+metadata  {median_ms(with_metadata, args.runs)}")
        print(f"  open+tensors   {median_ms(with_tensors, args.runs)}")


if __name__ == "__main__":
    main()
