"""A steering pack on disk: ``manifest.json`` + ``head.onnx`` + ``control.gguf``, verified before use.

Loading checks, in order: the three files are regular files inside the pack directory (no symlinks,
nothing outside it), the manifest parses, every file's size and sha256 match the manifest, the control
vector is a valid llama.cpp control vector for the manifest's model, and the head loads in
onnxruntime with the documented signature. Matching against a concrete model (fingerprint, layer
range) is :meth:`SteeringPack.check_model`, done when the pack is attached to a model.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ChecksumError, LayerError, ModelMismatchError, PackFormatError
from ..model_info import ModelInfo
from .control_vector import ControlVector, read_control_vector
from .head import HeadOutput, HeadRunner
from .manifest import CONTROL, HEAD, MANIFEST, MAX_MANIFEST_BYTES, Manifest, parse_manifest

MAX_HEAD_BYTES = 2 << 30


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_member(root: Path, name: str, limit: int) -> bytes:
    """Read ``root/name`` only if it is a regular file really inside ``root`` and not too large."""
    p = root / name
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise PackFormatError(f"pack {root} is missing {name}") from None
    except OSError as exc:
        raise PackFormatError(f"pack {root}: cannot stat {name}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise PackFormatError(f"pack {root}: {name} is a symlink; packs must hold their own files")
    if not stat.S_ISREG(st.st_mode):
        raise PackFormatError(f"pack {root}: {name} is not a regular file")
    if p.resolve().parent != root.resolve():
        raise PackFormatError(f"pack {root}: {name} resolves outside the pack directory")
    if st.st_size > limit:
        raise PackFormatError(f"pack {root}: {name} is {st.st_size} bytes, over the {limit}-byte limit")
    # The checks above can race with a swap of the file: open without following links and without
    # blocking (a FIFO put in its place would block open() forever), then check what was opened.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise PackFormatError(f"pack {root}: cannot open {name}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise PackFormatError(f"pack {root}: {name} changed while it was being opened")
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise PackFormatError(f"pack {root}: cannot read {name}: {exc.strerror}") from exc
    if len(data) > limit:
        raise PackFormatError(f"pack {root}: {name} grew over the {limit}-byte limit while it was read")
    return data


@dataclass
class SteeringPack:
    path: Path
    manifest: Manifest
    head: HeadRunner
    control: ControlVector

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringPack:
        root = Path(path)
        if not root.exists():
            raise PackFormatError(f"pack not found: {root}")
        if not root.is_dir():
            raise PackFormatError(f"a pack is a directory; {root} is not one")
        manifest = parse_manifest(_read_member(root, MANIFEST, MAX_MANIFEST_BYTES))
        m = manifest
        blobs = {}
        for name, limit in ((HEAD, MAX_HEAD_BYTES), (CONTROL, 64 * m.model.n_layer * m.model.n_embd + (1 << 20))):
            data = _read_member(root, name, limit)
            entry = m.files[name]
            if len(data) != entry.bytes:
                raise ChecksumError(f"pack {root}: {name} is {len(data)} bytes, manifest says {entry.bytes}")
            digest = sha256_bytes(data)
            if digest != entry.sha256:
                raise ChecksumError(f"pack {root}: sha256 of {name} is {digest}, manifest says {entry.sha256}")
            blobs[name] = data
        _check_layers(m, m.model.n_layer)
        control = _parse_control(root, blobs[CONTROL], m)
        head = HeadRunner(blobs[HEAD], m.model.n_embd, m.n_experts)
        return cls(path=root, manifest=m, head=head, control=control)

    # ------------------------------------------------------------------ model binding
    def check_model(self, info: ModelInfo) -> None:
        """Refuse a model this pack was not made for (n_embd, n_layer, vocabulary, tokenizer)."""
        problems = self.manifest.model.mismatches(info.fingerprint)
        if problems:
            raise ModelMismatchError(
                f"pack {self.manifest.name or self.path} was made for "
                f"{self.manifest.model_name or self.manifest.model.architecture} and does not fit "
                f"{info.path.name}: {'; '.join(problems)}"
            )
        _check_layers(self.manifest, info.n_layer)

    @property
    def tap_layers(self) -> tuple[int, ...]:
        m = self.manifest
        return tuple(sorted({m.gate_layer, m.steer_layer, m.head_layer}))

    def evaluate(self, h_gate: np.ndarray, h_steer: np.ndarray) -> HeadOutput:
        return self.head.run(h_gate, h_steer)

    def mean_vector(self) -> dict[int, np.ndarray]:
        """control.gguf's rows (the static mean vector, already times alpha)."""
        return {k: v.copy() for k, v in self.control.directions.items()}

    def describe(self) -> dict[str, object]:
        m = self.manifest
        return {
            "name": m.name,
            "path": str(self.path),
            "method": m.method,
            "model": {**m.model.to_dict(), "name": m.model_name},
            "gate_layer": m.gate_layer,
            "steer_layer": m.steer_layer,
            "feature_layer": m.head_layer,
            "gate_feature": m.gate_feature,
            "head_feature": m.head_feature,
            "alpha": m.alpha,
            "tau": m.tau,
            "gate_kind": m.gate_kind,
            "experts": m.n_experts,
            "basis_rank": m.basis_rank,
            "vector_source": m.vector_source,
            "strength": m.strength,
            "mode": m.mode,
            "control_layers": sorted(self.control.directions),
            "schedule": m.schedule.to_dict() if m.schedule else None,
            "spread": m.spread.to_dict() if m.spread else None,
            "files": {k: {"bytes": v.bytes, "sha256": v.sha256} for k, v in m.files.items()},
            "total_bytes": sum(v.bytes for v in m.files.values()),
            "description": m.description,
        }


def _check_layers(m: Manifest, n_layer: int) -> None:
    # Hidden states are read at l_out-N for N <= n_layer - 2 (the last block only keeps output rows),
    # and llama.cpp cannot add a control vector at layer 0.
    if not 0 <= m.gate_layer <= n_layer - 2:
        raise LayerError(f"gate layer {m.gate_layer} is out of range 0..{n_layer - 2} for a {n_layer}-layer model")
    if m.steer_layer == 0:
        raise LayerError("steer layer 0: llama.cpp cannot apply a control vector to layer 0")
    if not 1 <= m.steer_layer <= n_layer - 2:
        raise LayerError(f"steer layer {m.steer_layer} is out of range 1..{n_layer - 2} for a {n_layer}-layer model")
    if not 0 <= m.head_layer <= n_layer - 2:
        raise LayerError(f"feature layer {m.head_layer} is out of range 0..{n_layer - 2} for a {n_layer}-layer model")


def _parse_control(root: Path, data: bytes, m: Manifest) -> ControlVector:
    # Parse the verified bytes, not the file: it could be swapped after hashing.
    try:
        cv = read_control_vector(data, n_embd=m.model.n_embd, n_layer=m.model.n_layer, name=CONTROL)
    except PackFormatError as exc:
        raise PackFormatError(f"pack {root}: {exc}") from exc
    if m.vector_source != "control" and m.steer_layer not in cv.directions:  # head, projected, head_direction
        raise PackFormatError(f"pack {root}: control.gguf has no direction.{m.steer_layer} for the steer layer")
    return cv
