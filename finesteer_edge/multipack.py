"""Several packs on one model: each gated on its own, the open ones' vectors summed into one control vector.

llama.cpp holds one control-vector buffer per context (one row per layer, added to that block's output),
so packs combine by addition: vectors at different layers coexist, vectors at the same layer add, the way
``llama-cli --control-vector A --control-vector B`` sums its files. What addition can do that no pack alone
does is push a layer further than any pack was validated at: two packs steering the same layer with
similar directions nearly double the shift. :func:`combine` bounds that per layer (``cap``, the default:
measured in docs/DESIGN-NOTES.md "Several packs"), refuses the turn (``refuse``), or sums as llama.cpp
does (``sum``, for measurements).

The bound at layer L is the largest norm any single open pack applies at L on this turn, i.e. exactly what
that pack does when it is loaded alone, at its strength. The cap scales the summed vector at L down to that
norm, keeping its direction; layers where only one pack adds are never touched, so a turn where one gate
opens is exactly that pack's turn alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import PackError
from .pack.pack import SteeringPack
from .vocab import COMBINE_POLICIES, CombinePolicy, check_choice

_SLACK = 1e-6
"""Relative slack before the bound counts as exceeded (float32 round-off of the sum)."""


@dataclass(frozen=True)
class PackSpec:
    """A pack to load, with its own strength (multiplied by the instance's ``strength``)."""

    pack: SteeringPack | str | os.PathLike[str]
    strength: float = 1.0

    def __post_init__(self) -> None:
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
            raise ValueError(f"pack strength must be a finite number, not {s!r}")
        object.__setattr__(self, "strength", float(s))


@dataclass(frozen=True)
class Decision:
    """One pack's verdict on a turn: gate score, whether it opens, and its vectors (already times strength)."""

    gate_score: float
    open: bool
    vectors: dict[int, np.ndarray]
    expert_weights: np.ndarray
    threshold: float | None = None
    """The threshold the gate score was held against (the settings' ``threshold``, else the pack's tau)."""


@dataclass(frozen=True)
class Combined:
    """The control vector a turn sets: per-layer sums of the open packs' vectors, and where it was capped."""

    vectors: dict[int, np.ndarray]
    capped: dict[int, float]
    """Layer -> the factor the sum was scaled by (< 1), for the layers the cap changed."""


def pack_specs(pack: object, packs: Sequence[object] | None) -> list[PackSpec]:
    """The ``pack=`` / ``packs=`` arguments as one list (``pack`` alone is a list of one)."""
    if pack is not None and packs is not None:
        raise ValueError("pass pack= or packs=, not both")
    items = [pack] if pack is not None else list(packs or ())
    return [p if isinstance(p, PackSpec) else PackSpec(p) for p in items]  # type: ignore[arg-type]


def combine(decisions: Sequence[Decision], names: Sequence[str], policy: CombinePolicy = "cap") -> Combined:
    """Sum the open decisions' vectors per layer, bounding shared layers by ``policy`` (module docstring)."""
    check_choice(policy, COMBINE_POLICIES, "combine")
    sums: dict[int, np.ndarray] = {}
    parts: dict[int, list[tuple[str, float]]] = {}
    for d, name in zip(decisions, names, strict=True):
        if not d.open:
            continue
        for layer, v in d.vectors.items():
            v32 = np.asarray(v, dtype=np.float32)
            sums[layer] = sums[layer] + v32 if layer in sums else v32.copy()
            parts.setdefault(layer, []).append((name, float(np.linalg.norm(v32))))
    capped: dict[int, float] = {}
    for layer, contributors in parts.items():
        if len(contributors) < 2 or policy == "sum":
            continue
        bound = max(n for _, n in contributors)
        norm = float(np.linalg.norm(sums[layer]))
        if norm <= bound * (1 + _SLACK):
            continue
        if policy == "refuse":
            who = ", ".join(f"{n} ({x:.3g})" for n, x in contributors)
            raise PackError(
                f"packs {who} together shift layer {layer} by {norm:.3g}, more than any of them alone "
                f"({bound:.3g}); lower their strengths or load them separately"
            )
        factor = bound / norm
        sums[layer] = (sums[layer] * np.float32(factor)).astype(np.float32)
        capped[layer] = factor
    return Combined(sums, capped)


def check_compatible(packs: Sequence[SteeringPack]) -> None:
    """Refuse a set of packs made for different models (a model that fits one cannot fit the other)."""
    from .errors import ModelMismatchError

    if not packs:
        return
    first = packs[0].manifest
    for p in packs[1:]:
        problems = first.model.mismatches(p.manifest.model)
        if problems:
            raise ModelMismatchError(
                f"packs {first.name or packs[0].path.name} and {p.manifest.name or p.path.name} were made for "
                f"different models ({'; '.join(problems)}); load them on their own models"
            )


def steer_layers(pack: SteeringPack, vector_source: str | None = None) -> list[int]:
    """The layers a pack's control vector writes: its steer layer (``head``, ``projected``, ``head_direction``)
    or control.gguf's rows (``mean``)."""
    from .vocab import vector_source_from_manifest

    source = vector_source or vector_source_from_manifest(pack.manifest.vector_source)  # type: ignore[arg-type]
    return sorted(pack.control.directions) if source == "mean" else [pack.manifest.steer_layer]


def describe_set(packs: Sequence[SteeringPack]) -> dict[str, object]:
    """What a set of packs does together: the layers the one prefill taps, and who writes which layer."""
    check_compatible(packs)
    writers: dict[int, list[str]] = {}
    for p in packs:
        for layer in steer_layers(p):
            writers.setdefault(layer, []).append(p.manifest.name or p.path.name)
    return {
        "packs": [p.manifest.name or p.path.name for p in packs],
        "tap_layers": sorted(set().union(*(p.tap_layers for p in packs))),
        "gate_layers": {p.manifest.name or p.path.name: p.manifest.gate_layer for p in packs},
        "steer_layers": {str(layer): names for layer, names in sorted(writers.items())},
        "shared_layers": sorted(layer for layer, names in writers.items() if len(names) > 1),
    }
