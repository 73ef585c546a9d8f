"""Where evaluation data comes from: the curated splits shipped in the package by default, any user JSONL otherwise.

The curated data (``finesteer_edge/datasets``: sources, licences and sha256 in its README and SHA256SUMS)
ships inside the wheel, so a pip user can train and evaluate without the repository; ``FINESTEER_EDGE_DATA``
points the defaults at another folder of the same layout.
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


PACKAGED_DATA = Path(__file__).resolve().parents[1] / "datasets"
"""The curated safety and TruthfulQA splits that ship with the package."""


def default_data_dir() -> Path | None:
    """``$FINESTEER_EDGE_DATA``, else the data shipped in the package (None only if it was stripped)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return PACKAGED_DATA if PACKAGED_DATA.is_dir() else None


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
