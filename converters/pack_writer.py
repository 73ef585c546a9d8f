"""Write a steering pack directory atomically: build everything in a temporary sibling, then rename.

A failed or interrupted write never leaves a half pack where a runtime could load it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from finesteer_edge.model_info import Fingerprint
from finesteer_edge.pack.control_vector import write_control_vector
from finesteer_edge.pack.manifest import CONTROL, HEAD, MANIFEST, FileEntry, Manifest
from finesteer_edge.schedule import Schedule
from finesteer_edge.spread import Spread

from .head_params import FoldedHead
from .onnx_head import build_head_onnx


def write_pack(
    out: str | Path,
    *,
    head: FoldedHead,
    fingerprint: Fingerprint,
    gate_layer: int,
    steer_layer: int,
    alpha: float,
    tau: float,
    mean_vector: Mapping[int, np.ndarray],
    method: str = "finesteer",
    vector_source: str = "head",
    mode: str = "exact",
    name: str = "",
    description: str = "",
    model_name: str = "",
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    feature_layer: int | None = None,
    verify: Callable[[Path], object] | None = None,
    schedule: Schedule | None = None,
    spread: Spread | None = None,
    gate_feature: str = "last",
    strength: float = 1.0,
    head_feature: str = "last",
) -> Path:
    """Write ``out`` (a directory). ``mean_vector`` (layer -> (d,)) becomes ``control.gguf``; ``schedule`` and
    ``spread`` go into the manifest (issue 11; None: steer the whole turn at the steer layer), and so does what the gate
reads (``gate_feature``, issue 10; ``last``: the last prompt token, as before), what the MoSE head reads
(``head_feature``, issue 11, same vocabulary) and the pack's own ``strength``.

    ``verify(tmp_dir)`` runs on the finished pack before it is moved into place; if it raises, nothing
    is left behind.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite to replace it)")
    bad = head.check_finite()
    if bad:
        raise ValueError(f"head has NaN/Inf in {', '.join(bad)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        head_bytes = build_head_onnx(head, doc=description)
        (tmp / HEAD).write_bytes(head_bytes)
        write_control_vector(
            tmp / CONTROL, mean_vector, model_hint=fingerprint.architecture, n_layer=fingerprint.n_layer,
            extra={"method": method, "gate_layer": gate_layer, "steer_layer": steer_layer, "alpha": float(alpha)},
        )
        files = {n: _entry(tmp / n) for n in (HEAD, CONTROL)}
        manifest = Manifest(
            name=name, description=description, method=method, model=fingerprint, model_name=model_name,
            gate_layer=gate_layer, steer_layer=steer_layer, feature_layer=feature_layer, alpha=float(alpha),
            tau=float(tau),
            gate_kind=head.gate.kind, n_experts=head.n_experts, basis_rank=head.basis_rank,
            vector_source=vector_source, mode=mode, files=files, provenance=dict(provenance or {}),
            schedule=schedule, spread=spread, gate_feature=gate_feature, strength=float(strength),
            head_feature=head_feature,
        )
        (tmp / MANIFEST).write_text(manifest.to_json())
        if verify is not None:
            verify(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _entry(path: Path) -> FileEntry:
    data = path.read_bytes()
    return FileEntry(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def _replace_dir(new: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(new, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
