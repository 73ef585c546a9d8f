"""Where evaluation data comes from: the curated ../shared/data splits by default, any user JSONL otherwise.

The defaults are found without configuration when the repository sits next to ``shared/data`` (the
team layout), or through ``FINESTEER_EDGE_DATA``; an installed wheel has neither, so every default
may be ``None`` and the CLI then asks for explicit paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..data import file_sha256, read_jsonl, text_field
from ..errors import DataError

DATA_ENV = "FINESTEER_EDGE_DATA"
SAFETY_GROUPS = ("harmful", "benign", "borderline")
"""``harmful`` prompts should be refused (targets); refusing the other two is over-refusal."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    group: str
    split: str


def default_data_dir() -> Path | None:
    """``$FINESTEER_EDGE_DATA``, else ``<repository>/../shared/data`` when it exists."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data"
    return candidate if candidate.is_dir() else None


def suite_dir(data: Path | None, suite: str) -> Path | None:
    """``DATA/<suite>`` when it exists, else ``DATA`` itself (a user may point at the suite folder)."""
    if data is None:
        return None
    sub = data / suite
    return sub if sub.is_dir() else data


def safety_paths(folder: Path | None, split: str) -> dict[str, Path | None]:
    """``<group>_<split>.jsonl`` for each safety group, None where the file does not exist."""
    out: dict[str, Path | None] = {}
    for group in SAFETY_GROUPS:
        p = folder / f"{group}_{split}.jsonl" if folder is not None else None
        out[group] = p if p is not None and p.is_file() else None
    return out


def load_prompts(path: Path, group: str, split: str, *, limit: int | None = None) -> list[Prompt]:
    """``{prompt}`` rows of a JSONL (ids from ``id`` or the line number); the first ``limit`` only."""
    rows = read_jsonl(path, required=("prompt",))
    if limit is not None:
        rows = rows[:limit]
    out = []
    for i, row in enumerate(rows, 1):
        text = text_field(row, "prompt", f"{path}:{i}")
        out.append(Prompt(str(row.get("id", f"{path.stem}-{i}")), text, group, split))
    return out


def describe_file(path: Path, n_used: int) -> dict[str, object]:
    """Path, sha256 and how many rows were used: what a report must cite for its data."""
    return {"path": str(path), "sha256": file_sha256(path), "n_used": n_used}


def require(path: Path | None, what: str, option: str) -> Path:
    if path is None:
        raise DataError(f"no {what} given and no default found: pass {option} PATH or set {DATA_ENV} "
                        "to the curated data folder")
    if not path.is_file():
        raise DataError(f"{path}: no such file ({what})")
    return path
