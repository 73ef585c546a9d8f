"""A request's ``steering`` field -> the settings of one turn, in one place.

Every slot holds one :class:`SteeredLlama` with all served packs loaded. :func:`resolve` validates a
request's packs and settings; :func:`settings` turns them into the turn's :class:`SteeringSettings`, whose
``enabled`` lists the requested packs: the others are forced shut for that turn only (bit-identical to not
loading them), so a request's subset is served from one prefill in one context, as
``SteeredLlama(packs=[...])`` does. The settings go to ``chat(steering=...)`` per turn; nothing is set
on the shared instance, so nothing leaks into the next request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..pack.pack import SteeringPack
from ..result import GenerationResult
from ..settings import SteeringSettings
from ..vocab import vector_source_from_manifest
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
    threshold: float | None = None
    """None: each pack's own tau."""
    unsteered_reason: str | None = None
    """Why the default pack is not served (it failed at start-up under ``--allow-unsteered``)."""


@dataclass(frozen=True)
class SteeringChoice:
    """Resolved settings of one turn. ``packs`` empty = no steering (bit-identical to a no-pack run)."""

    packs: tuple[str, ...]
    strength: float
    mode: str | None
    gate: str
    vector: str | None
    note: str | None = None
    """Reported in the response: why a request that asked for the defaults lacks a configured pack."""
    threshold: float | None = None
    """Gate threshold for every requested pack; None: each pack's tau."""


def resolve(requested: SteeringRequest | None, given: bool, defaults: SteeringDefaults,
            loaded: dict[str, object], failed: dict[str, str]) -> SteeringChoice:
    """Validate a request's steering against the loaded packs; raise :class:`APIError` (400) if it cannot be
    honoured. ``given`` False: the field was absent (defaults); given and None: steering off."""
    if given and requested is None:
        return SteeringChoice((), defaults.strength, None, "never", None)
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
    packs = tuple(dict.fromkeys(packs))  # a name given twice is one pack, applied once
    mode = req.mode or defaults.mode
    gate = req.gate or defaults.gate
    vector = req.vector or defaults.vector
    threshold = defaults.threshold if req.threshold is None else req.threshold
    note = defaults.unsteered_reason if req.packs is None else None
    if not packs:
        return SteeringChoice((), strength, None, "never", None, note)
    return SteeringChoice(packs, float(strength), mode, gate, vector, note, threshold)


def _vector(choice: SteeringChoice, pack: SteeringPack) -> str:
    return choice.vector or vector_source_from_manifest(pack.manifest.vector_source)  # type: ignore[arg-type]


def settings(choice: SteeringChoice, loaded: dict[str, SteeringPack]) -> SteeringSettings:
    """The turn's settings: every field set every time. Mode default: ``exact`` if any requested pack's
    manifest says so (as ``SteeredLlama`` picks for its packs); vector default: each pack's own."""
    if not choice.packs:
        return SteeringSettings(mode="exact", strength=choice.strength, gate="never", enabled=())
    modes = [loaded[n].manifest.mode for n in choice.packs]
    mode = choice.mode or ("exact" if "exact" in modes else "fast")
    return SteeringSettings(mode=mode, strength=choice.strength, gate=choice.gate,  # type: ignore[arg-type]
                            vector_source=choice.vector, enabled=choice.packs,  # type: ignore[arg-type]
                            threshold=choice.threshold)


def report(choice: SteeringChoice, result: GenerationResult, loaded: dict[str, SteeringPack]) -> dict[str, object]:
    """The ``steering`` object of a response: what was asked and, for every requested pack, what its gate
    decided (the packs the request left out are not reported: their gates were shut by the request)."""
    out: dict[str, object]
    if not choice.packs:
        out = {"steered": False, "packs": [], "mode": None, "gate": None, "vector": None}
    else:
        by_name = {p.name: p for p in result.packs}
        packs = [
            {"name": n, "steered": by_name[n].steered, "gate_score": by_name[n].gate_score,
             "threshold": by_name[n].threshold, "expert_weights": by_name[n].expert_weights,
             "strength": by_name[n].strength, "vector": _vector(choice, loaded[n])}
            for n in choice.packs
        ]
        out = {"steered": result.steered, "packs": packs, "mode": result.mode, "gate": choice.gate,
               "vector": _vector(choice, loaded[choice.packs[0]])}
    if choice.note:
        out["unsteered_reason"] = choice.note
    return out
