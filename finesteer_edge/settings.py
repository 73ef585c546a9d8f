"""Settings objects: how to sample (:class:`SamplingParams`) and how to steer (:class:`SteeringSettings`).

Why frozen dataclasses: the checks live in ``__post_init__``, so a bad value fails where it is written,
and a settings object cannot be changed afterwards past those checks (change one with
:func:`dataclasses.replace`, which runs them again). ``SteeredLlama`` takes the same keyword arguments as
before and builds these; the turn itself only sees the objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .vocab import GATE_POLICIES, MODES, VECTOR_SOURCES, GatePolicy, Mode, VectorSource, check_choice

MAX_SEED = (1 << 32) - 1


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite")
    return float(value)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    return int(value)


@dataclass(frozen=True)
class SamplingParams:
    """How one turn samples. ``temperature`` 0 is greedy (then seed, top_k, top_p and min_p do not matter).

    New sampler options (a repeat penalty, ...) belong here as fields with a neutral default, checked below,
    so every call path gets them at once.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    top_k: int = 40
    """0 = off."""
    top_p: float = 0.95
    """1 = off."""
    min_p: float = 0.05
    """0 = off."""
    stop: tuple[str, ...] = field(default=())
    """Stop strings (the text stops before the first match); any sequence of strings is stored as a tuple."""

    def __post_init__(self) -> None:
        if _integer(self.max_tokens, "max_tokens") < 0:
            raise ValueError("max_tokens must be >= 0")
        if _number(self.temperature, "temperature") < 0:
            raise ValueError("temperature must be >= 0")
        if self.seed is not None and not 0 <= _integer(self.seed, "seed") <= MAX_SEED:
            raise ValueError(f"seed must be in 0..{MAX_SEED}")
        if _integer(self.top_k, "top_k") < 0:
            raise ValueError("top_k must be >= 0 (0 = off)")
        if not 0 < _number(self.top_p, "top_p") <= 1:
            raise ValueError("top_p must be in (0, 1] (1 = off)")
        if not 0 <= _number(self.min_p, "min_p") <= 1:
            raise ValueError("min_p must be in [0, 1] (0 = off)")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if not all(isinstance(s, str) for s in stop):
            raise TypeError("stop must be a sequence of strings")
        object.__setattr__(self, "stop", stop)


@dataclass(frozen=True)
class SteeringSettings:
    """How a :class:`~finesteer_edge.SteeredLlama` steers its turns (the same for every loaded pack).

    ``strength`` multiplies every pack's vector, on top of each pack's own strength. ``vector_source``
    None means each pack's own default (its manifest's ``vector_source``).
    """

    mode: Mode = "exact"
    strength: float = 1.0
    gate: GatePolicy = "pack"
    vector_source: VectorSource | None = None

    def __post_init__(self) -> None:
        check_choice(self.mode, MODES, "mode")
        check_choice(self.gate, GATE_POLICIES, "gate")
        if self.vector_source is not None:
            check_choice(self.vector_source, VECTOR_SOURCES, "vector_source")
        object.__setattr__(self, "strength", _number(self.strength, "strength"))
