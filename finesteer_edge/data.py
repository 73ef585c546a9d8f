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
    """Objects of a JSONL file, each with the ``required`` keys; empty or malformed lines are errors."""
    path = Path(path)
    need = tuple(required)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror or exc}") from exc
    rows = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for lineno, line in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        if len(line) > MAX_LINE_BYTES:
            raise DataError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
        if not line.strip():
            raise DataError(f"{where}: empty line")
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise DataError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object")
        for key in need:
            if key not in obj:
                raise DataError(f"{where}: missing field {key!r}")
        rows.append(obj)
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


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
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
