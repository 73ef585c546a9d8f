"""A steering pack as editable data: three parts whose manifest checksums are recomputed after a mutation.

Recomputing the checksums is the point: a mutated head or control vector with a stale checksum would be
refused at the first check, so only validation beyond the checksum gets exercised when they are fresh.
File operations (symlinks out of the pack, FIFOs, sparse oversize files, a pack that is a file) test
the loader's filesystem checks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core import (
    apply_byte_mutations,
    apply_manifest_mutations,
    dump_manifest,
    fresh_dir,
    json_mut,
    strategies,
    tuple_muts,
)
from .gguf import GGUF_MUTATIONS, apply_gguf_mutations
from .onnx_head import HEAD_MUTATIONS, apply_head_mutations

MANIFEST, HEAD, CONTROL = "manifest.json", "head.onnx", "control.gguf"


@dataclass
class PackParts:
    manifest: dict[str, Any]
    head: bytes
    control: bytes

    @classmethod
    def from_dir(cls, path: str | Path) -> PackParts:
        p = Path(path)
        return cls(json.loads((p / MANIFEST).read_text()), (p / HEAD).read_bytes(), (p / CONTROL).read_bytes())


@dataclass
class PackCase:
    """One mutated pack. Parts are mutated first, checksums recomputed, then the manifest is mutated."""

    head_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    head_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    control_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    control_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    manifest_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    manifest_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    file_op: tuple | None = None  # type: ignore[type-arg]
    recompute: bool = True


def build_pack_case(base: PackParts, case: PackCase) -> tuple[bytes, bytes, bytes]:
    """(manifest, head, control) bytes of the mutated pack."""
    head = apply_head_mutations(base.head, case.head_muts) if case.head_muts else base.head
    head = apply_byte_mutations(head, case.head_bytes_muts)
    control = base.control
    if case.control_muts:
        control = apply_gguf_mutations(control, case.control_muts)
    control = apply_byte_mutations(control, case.control_bytes_muts)
    doc = copy.deepcopy(base.manifest)
    if case.recompute:
        for name, blob in ((HEAD, head), (CONTROL, control)):
            doc["files"][name] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    doc = apply_manifest_mutations(doc, case.manifest_muts)
    manifest = apply_byte_mutations(dump_manifest(doc), case.manifest_bytes_muts)
    return manifest, head, control


def write_pack_case(base: PackParts, case: PackCase, dest: Path, outside: Path) -> Path:
    """Write the case into ``dest`` (emptied first). ``outside`` is a scratch directory outside the pack."""
    fresh_dir(dest)
    manifest, head, control = build_pack_case(base, case)
    blobs = {MANIFEST: manifest, HEAD: head, CONTROL: control}
    for name, blob in blobs.items():
        (dest / name).write_bytes(blob)
    if case.file_op:
        _file_op(dest, outside, blobs, case.file_op)
    return dest


FILE_OPS = ("missing", "symlink_out", "symlink_in", "symlink_dotdot", "dir", "fifo", "oversize", "hardlink_out",
            "dangling", "pack_is_file", "pack_missing", "pack_symlink")


def _file_op(dest: Path, outside: Path, blobs: dict[str, bytes], op: tuple) -> None:  # type: ignore[type-arg]
    kind, name = op[0], op[1]
    target = dest / name
    outside.mkdir(parents=True, exist_ok=True)
    if kind == "missing":
        target.unlink()
    elif kind in ("symlink_out", "symlink_dotdot", "hardlink_out"):
        real = outside / f"real-{name}"
        real.unlink(missing_ok=True)
        real.write_bytes(blobs[name])
        target.unlink()
        if kind == "hardlink_out":
            os.link(real, target)
        elif kind == "symlink_out":
            target.symlink_to(real)
        else:
            target.symlink_to(os.path.relpath(real, dest))  # "../outside/real-x": a `..` path out of the pack
    elif kind == "symlink_in":
        other = next(n for n in blobs if n != name)
        target.unlink()
        target.symlink_to(other)
    elif kind == "dangling":
        target.unlink()
        target.symlink_to(outside / "does-not-exist")
    elif kind == "dir":
        target.unlink()
        target.mkdir()
    elif kind == "fifo":
        target.unlink()
        os.mkfifo(target)
    elif kind == "oversize":
        # A sparse file just over the loader's limit for that member: costs no disk, must be refused unread.
        limits = {MANIFEST: 4 << 20, HEAD: 2 << 30, CONTROL: 1 << 30}
        with open(target, "r+b") as f:
            f.truncate(limits[name] + 1)
    elif kind == "pack_is_file":
        shutil.rmtree(dest)
        dest.write_bytes(blobs[MANIFEST])
    elif kind == "pack_missing":
        shutil.rmtree(dest)
    elif kind == "pack_symlink":
        # The pack directory itself is a symlink to a real pack elsewhere: that is the user's choice, allowed.
        real = outside / "real-pack"
        if real.exists():
            shutil.rmtree(real)
        shutil.move(str(dest), real)
        dest.symlink_to(real, target_is_directory=True)


def pack_cases(base: PackParts):  # type: ignore[no-untyped-def]
    """Strategy of :class:`PackCase` focused on one pack input at a time, sometimes several."""
    st, byte_muts, _ = strategies()
    manifest_mut = json_mut(base.manifest)
    file_op = st.tuples(st.sampled_from(FILE_OPS), st.sampled_from([MANIFEST, HEAD, CONTROL]))
    none: Any = st.just([])
    return st.one_of(
        st.builds(PackCase, manifest_muts=st.lists(manifest_mut, min_size=1, max_size=3)),
        st.builds(PackCase, manifest_bytes_muts=byte_muts),
        st.builds(PackCase, head_muts=tuple_muts(HEAD_MUTATIONS)),
        st.builds(PackCase, head_bytes_muts=byte_muts),
        st.builds(PackCase, control_muts=tuple_muts(GGUF_MUTATIONS)),
        st.builds(PackCase, control_bytes_muts=byte_muts),
        st.builds(PackCase, file_op=file_op),
        st.builds(PackCase, head_muts=tuple_muts(HEAD_MUTATIONS, 2, 0), control_muts=tuple_muts(GGUF_MUTATIONS, 2, 0),
                  manifest_muts=st.lists(manifest_mut, max_size=2), head_bytes_muts=none | byte_muts,
                  recompute=st.booleans()),
    )


def runnable_pack_cases(base: PackParts):  # type: ignore[no-untyped-def]
    """Mutations that keep a pack loadable more often: numbers, layers, tau, weights. Used with llama.cpp."""
    st = strategies()[0]
    numbers = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, -1, 1 << 31, 0.0, -0.0, 1e30, -1e30, 3.4e38, 1e-45, 1e308]),
                        st.floats(allow_nan=False, allow_infinity=False), st.integers(-8, 8))
    keys = [("alpha",), ("tau",), ("layers", "gate"), ("layers", "steer"), ("experts",), ("basis_rank",),
            ("mode",), ("vector_source",), ("method",), ("gate", "kind")]
    manifest_mut = st.one_of(
        st.tuples(st.just("replace"), st.sampled_from(keys), numbers),
        st.tuples(st.just("replace"), st.sampled_from([("mode",), ("vector_source",), ("method",), ("gate", "kind")]),
                  st.sampled_from(["exact", "fast", "head", "control", "static", "finesteer", "always", "scs"])),
    )
    return st.builds(PackCase, manifest_muts=st.lists(manifest_mut, max_size=3),
                     head_muts=tuple_muts(("init_values", "init_values", "attr", "retype_node"), 2, 0),
                     control_muts=tuple_muts(("tensor_values", "tensor_name", "tensor_dup", "kv_value"), 2, 0))
