"""A request's ``steering`` field -> the settings of one turn, in one place.

Today's runtime holds one pack per :class:`SteeredLlama` and takes mode, strength, gate and vector
source as attributes, so :func:`resolve` picks the pack (or none) and :func:`apply` sets the attributes
on the slot's instance for that pack before the turn. When the runtime gains several packs per
instance and frozen settings objects, only these two functions change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..result import GenerationResult
from ..settings import SteeringSettings
from ..steered import SteeredLlama
from .errors import APIError
from .schemas import SteeringRequest

MAX_STRENGTH = 10.0
"""|strength| above this turns any model's output into noise; refused rather than served."""


@dataclass(frozen=True)
class SteeringDefaults:
    """What a request gets when it does not say (from the command line)."""

    packs: tuple[str, ...]
    strength: float = 1.0
    mode: str | None = None
    """None: each pack's own default."""
    gate: str = "pack"
    vector: str | None = None
    """None: each pack's own default."""
    unsteered_reason: str | None = None
    """Why the default pack is not served (it failed at start-up under ``--allow-unsteered``)."""


@dataclass(frozen=True)
class SteeringChoice:
    """Resolved settings of one turn. ``pack`` None = no steering (bit-identical to a no-pack run)."""

    pack: str | None
    strength: float
    mode: str | None
    gate: str
    vector: str | None
    note: str | None = None
    """Reported in the response: why a request that asked for the defaults is unsteered."""


def resolve(requested: SteeringRequest | None, given: bool, defaults: SteeringDefaults,
            loaded: dict[str, object], failed: dict[str, str]) -> SteeringChoice:
    """Validate a request's steering against the loaded packs; raise :class:`APIError` (400) if it cannot be
    honoured. ``given`` False: the field was absent (defaults); given and None: steering off."""
    if given and requested is None:
        return SteeringChoice(None, defaults.strength, None, "never", None)
    req = requested or SteeringRequest()
    packs = tuple(req.packs) if req.packs is not None else defaults.packs
    strength = defaults.strength if req.strength is None else req.strength
    if not math.isfinite(strength) or abs(strength) > MAX_STRENGTH:
        raise APIError(400, f"steering.strength must be a finite number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}], "
                       f"not {strength!r}", param="steering.strength", code="invalid_strength")
    for name in packs:
        if name in failed:
            raise APIError(400, f"pack {name!r} failed its start-up check and is not served: {failed[name]}",
                           param="steering.packs", code="pack_unavailable")
        if name not in loaded:
            names = ", ".join(sorted(loaded)) or "none"
            raise APIError(400, f"unknown pack {name!r} (loaded packs: {names})", param="steering.packs",
                           code="unknown_pack")
    if len(set(packs)) > 1:
        raise APIError(400, "this server applies one pack per request; name one of "
                       f"{', '.join(sorted(set(packs)))} in steering.packs", param="steering.packs",
                       code="too_many_packs")
    mode = req.mode or defaults.mode
    gate = req.gate or defaults.gate
    vector = req.vector or defaults.vector
    if not packs:
        note = defaults.unsteered_reason if req.packs is None else None
        return SteeringChoice(None, strength, None, "never", None, note)
    return SteeringChoice(packs[0], float(strength), mode, gate, vector)


@dataclass(frozen=True)
class InstanceDefaults:
    """An instance's settings as constructed (the pack's own mode and vector source)."""

    mode: str
    vector_source: str


def apply(choice: SteeringChoice, llm: SteeredLlama, own: InstanceDefaults) -> None:
    """Set every per-turn setting (all of them, every time: nothing leaks from the previous request), through
    ``set_steering`` so the runtime's checks apply."""
    gate = choice.gate if choice.pack is not None else "never"
    llm.set_steering(SteeringSettings(mode=choice.mode or own.mode, strength=choice.strength, gate=gate,
                                      vector_source=choice.vector or own.vector_source))


def report(choice: SteeringChoice, result: GenerationResult, vector_source: str) -> dict[str, object]:
    """The ``steering`` object of a response: what was asked and, per pack, what the gate decided."""
    if choice.pack is None:
        out: dict[str, object] = {"steered": False, "packs": [], "mode": None, "gate": None, "vector": None}
        if choice.note:
            out["unsteered_reason"] = choice.note
        return out
    packs = [
        {"name": p.name, "steered": p.steered, "gate_score": p.gate_score, "threshold": p.threshold,
         "expert_weights": p.expert_weights, "strength": p.strength}
        for p in result.packs
    ]
    return {"steered": result.steered, "packs": packs, "mode": result.mode, "gate": choice.gate,
            "vector": vector_source}
