"""JSONL data: strict line-by-line reading with errors that name the file and line.

Used by extraction, training and evaluation, and by users with their own prompt sets, so every
malformed line is reported precisely instead of surfacing later as a KeyError.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import DataError

MAX_LINE_BYTES = 1 << 20


def read_jsonl(path: str | Path, *, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Objects of a JSONL file, each with the ``required`` keys; empty or malformed lines are errors.

    The file is read line by line with a bounded ``readline``, so a huge file with one endless line
    (or gigabytes of NUL bytes) is refused after ``MAX_LINE_BYTES`` instead of being read whole.
    """
    path = Path(path)
    need = tuple(required)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a FIFO (process substitution) is allowed
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror or exc}") from exc
    rows = []
    with f:
        lineno = 0
        while True:
            try:
                line = f.readline(MAX_LINE_BYTES + 2)
            except OSError as exc:  # e.g. a directory: open() succeeds, read() fails with EISDIR
                raise DataError(f"{path}: {exc.strerror or exc}") from exc
            if not line:
                break
            lineno += 1
            where = f"{path}:{lineno}"
            if line.endswith(b"\n"):
                line = line[:-1]
            if len(line) > MAX_LINE_BYTES:
                raise DataError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
            rows.append(_parse_line(line, where, need))
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def _parse_line(line: bytes, where: str, need: tuple[str, ...]) -> dict[str, Any]:
    if not line.strip():
        raise DataError(f"{where}: empty line")
    try:
        obj = json.loads(line.decode("utf-8"))
        # A lone surrogate escape ("\ud800") parses, but the text can never be encoded again: it would
        # fail later in the tokenizer or a hash with a traceback instead of naming the line here.
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, 5000-digit integers, surrogates
        raise DataError(f"{where}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object")
    for key in need:
        if key not in obj:
            raise DataError(f"{where}: missing field {key!r}")
    return obj


def text_field(row: dict[str, Any], key: str, where: str) -> str:
    v = row.get(key)
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string")
    return v


def text_list(row: dict[str, Any], key: str, where: str) -> list[str]:
    v = row.get(key)
    if isinstance(v, str) and v.strip():
        return [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        raise DataError(f"{where}: field {key!r} must be a non-empty string or list of strings")
    return list(v)


def file_sha256(path: str | Path) -> str:
    """Streamed, so hashing a large data or activations file costs no memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
