"""Our checkpoint directory (``model.safetensors`` + ``config.json``) through ``convert``: the ``checkpoint`` target."""

from __future__ import annotations

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
from .safetensors import HEADER_MUTATIONS, ST_MUTATIONS, SafetensorsSpec, apply_st_mutations, encode_safetensors


@dataclass
class CheckpointCase:
    tensor_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    header_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    weights_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    config_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    config_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    file_op: tuple | None = None  # type: ignore[type-arg]


CKPT_FILE_OPS = ("missing_weights", "missing_config", "weights_dir", "config_dir", "oversize_config",
                 "oversize_weights", "empty_weights", "empty_config", "config_symlink_loop", "not_a_dir")
CHECKPOINT_EXTRA_NAMES = ("gate_w", "mean_delta", "V", "C", "x", "", "m", "t", "input_scale", "__metadata__",
                          "mlp.W1", "W_q", "a" * 300, "gamma")


def _checkpoint_file_op(dest: Path, op: str) -> None:
    weights, config = dest / "model.safetensors", dest / "config.json"
    if op == "missing_weights":
        weights.unlink()
    elif op == "missing_config":
        config.unlink()
    elif op in ("weights_dir", "config_dir"):
        p = weights if op == "weights_dir" else config
        p.unlink()
        p.mkdir()
    elif op in ("oversize_config", "oversize_weights"):
        # Sparse files: no disk used, but a loader that reads them whole allocates gigabytes.
        p = config if op == "oversize_config" else weights
        with open(p, "r+b") as f:
            f.truncate(3 << 30)
    elif op == "empty_weights":
        weights.write_bytes(b"")
    elif op == "empty_config":
        config.write_bytes(b"")
    elif op == "config_symlink_loop":
        config.unlink()
        config.symlink_to(config)
    elif op == "not_a_dir":
        shutil.rmtree(dest)
        dest.write_bytes(b"{}")


def write_checkpoint(case: CheckpointCase, dest: Path, *, weights: SafetensorsSpec, config: dict[str, Any],
                     extra: dict[str, bytes], d: int) -> Path:
    """The mutated checkpoint directory ``dest``, from the base ``weights``, ``config`` and other files."""
    fresh_dir(dest)
    spec = apply_st_mutations(weights, case.tensor_muts, CHECKPOINT_EXTRA_NAMES, d)
    blob = apply_byte_mutations(encode_safetensors(spec, case.header_muts), case.weights_bytes_muts)
    text = apply_byte_mutations(dump_manifest(apply_manifest_mutations(config, case.config_muts)),
                                case.config_bytes_muts)
    (dest / "model.safetensors").write_bytes(blob)
    (dest / "config.json").write_bytes(text)
    for name, data in extra.items():
        (dest / name).write_bytes(data)
    if case.file_op:
        _checkpoint_file_op(dest, case.file_op[0])
    return dest


def checkpoint_cases(config: dict[str, Any]):  # type: ignore[no-untyped-def]
    """Strategy of :class:`CheckpointCase`: one part mutated at a time, sometimes several."""
    st, byte_muts, _ = strategies()
    config_paths = st.lists(json_mut(config), min_size=1, max_size=3)
    none: Any = st.just([])
    return st.one_of(
        st.builds(CheckpointCase, tensor_muts=tuple_muts(ST_MUTATIONS)),
        st.builds(CheckpointCase, header_muts=tuple_muts(HEADER_MUTATIONS, 2)),
        st.builds(CheckpointCase, weights_bytes_muts=byte_muts),
        st.builds(CheckpointCase, config_muts=config_paths),
        st.builds(CheckpointCase, config_bytes_muts=byte_muts),
        st.builds(CheckpointCase, file_op=st.tuples(st.sampled_from(CKPT_FILE_OPS))),
        st.builds(CheckpointCase, tensor_muts=tuple_muts(ST_MUTATIONS, 2, 0),
                  header_muts=tuple_muts(HEADER_MUTATIONS, 1, 0), config_muts=none | config_paths),
    )
