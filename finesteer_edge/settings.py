"""Settings objects: how to sample (:class:`SamplingParams`) and how to steer (:class:`SteeringSettings`).

Why frozen dataclasses: the checks live in ``__post_init__``, so a bad value fails where it is written,
and a settings object cannot be changed afterwards past those checks (change one with
:func:`dataclasses.replace`, which runs them again). ``SteeredLlama`` takes the same keyword arguments as
before and builds these; the turn itself only sees the objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
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
class Penalties:
    """Repetition penalties of llama.cpp's own sampler chain (issue 11), off by default as in llama.cpp.

    ``repeat_penalty`` > 1 divides the logits of tokens seen in the last ``repeat_last_n`` generated
    tokens (``llama_sampler_init_penalties``, with ``frequency_penalty``/``presence_penalty``);
    ``dry_multiplier`` > 0 enables DRY (``llama_sampler_init_dry``: penalises tokens that would extend a
    repeated sequence longer than ``dry_allowed_length``, by ``multiplier * base ** excess``). They run
    before greedy or top-k/top-p/min-p/temperature, as in llama.cpp's default chain, and see the
    generated tokens of the turn. Applied the same way to steered and unsteered turns.
    """

    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64

    def __post_init__(self) -> None:
        for name in ("repeat_penalty", "frequency_penalty", "presence_penalty", "dry_multiplier", "dry_base"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if self.repeat_penalty <= 0:
            raise ValueError("repeat_penalty must be > 0 (1.0 = off)")
        if self.dry_multiplier < 0:
            raise ValueError("dry_multiplier must be >= 0 (0 = off)")
        if self.dry_multiplier > 0 and self.dry_base < 1.0:
            raise ValueError("dry_base must be >= 1 when DRY is on")
        for name in ("repeat_last_n", "dry_allowed_length", "dry_penalty_last_n"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    @property
    def penalize(self) -> bool:
        return self.repeat_last_n > 0 and (self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0
                                           or self.presence_penalty != 0.0)

    @property
    def dry(self) -> bool:
        return self.dry_multiplier > 0 and self.dry_penalty_last_n > 0

    @property
    def off(self) -> bool:
        return not (self.penalize or self.dry)


NO_PENALTIES = Penalties()
CLI_PENALTIES = Penalties(repeat_penalty=1.1, repeat_last_n=64, dry_multiplier=0.8)
"""The sampler penalties ``generate``, ``chat`` and ``eval`` (and ``scripts/run_eval.py``) use unless told otherwise:
repeat penalty 1.1 over the last 64 tokens and DRY 0.8 (docs/CLEAN_REFUSAL.md: they remove the steered loops).
The one home of these numbers; the Python API itself stays plain greedy (:data:`NO_PENALTIES`) by default."""


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
    penalties: Penalties = NO_PENALTIES
    """llama.cpp's repetition penalties (repeat/frequency/presence, DRY); off by default."""

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
        if self.penalties is None:
            object.__setattr__(self, "penalties", NO_PENALTIES)
        if not isinstance(self.penalties, Penalties):
            raise TypeError(f"penalties must be Penalties, not {type(self.penalties).__name__}")


UNSET: Any = object()
"""Default of ``generate``/``chat``'s loose sampling keywords: "not given", so ``sampling=`` supplies the value."""


def merge_sampling(sampling: SamplingParams | None, *, penalties: Penalties | None = UNSET,
                   repeat_penalty: float = UNSET, repeat_last_n: int = UNSET, dry_multiplier: float = UNSET,
                   **loose: Any) -> SamplingParams:
    """``sampling`` (or the defaults) with the loose keywords that were given (not :data:`UNSET`) put in; checked.

    The loose penalty fields build a :class:`Penalties`; a whole ``penalties`` object wins over them. Here,
    next to the fields it fills, so a new sampler option is added in one module.
    """
    if sampling is not None and not isinstance(sampling, SamplingParams):
        raise TypeError(f"sampling must be SamplingParams, not {type(sampling).__name__}")
    given = {k: v for k, v in loose.items() if v is not UNSET}
    if penalties is not UNSET and penalties is not None:
        given["penalties"] = penalties
    else:
        fields = {k: v for k, v in (("repeat_penalty", repeat_penalty), ("repeat_last_n", repeat_last_n),
                                    ("dry_multiplier", dry_multiplier)) if v is not UNSET}
        if fields:
            given["penalties"] = Penalties(**fields)
    base = sampling or SamplingParams()
    return replace(base, **given) if given else base


@dataclass(frozen=True)
class SteeringSettings:
    """How a :class:`~finesteer_edge.SteeredLlama` steers its turns (the same for every loaded pack).

    ``strength`` multiplies every pack's vector, on top of each pack's own strength. ``vector_source``
    None means each pack's own default (its manifest's ``vector_source``). ``enabled`` names the loaded packs
    whose gates may open (None: all): the others are forced shut for the turn, which leaves it bit-identical
    to not loading them. Why: a server holds one context with every pack and serves each request a subset,
    without one instance (one KV cache) per subset.
    """

    mode: Mode = "exact"
    strength: float = 1.0
    gate: GatePolicy = "pack"
    vector_source: VectorSource | None = None
    enabled: tuple[str, ...] | None = None
    """Pack names (manifest name, else directory name) whose gates may open; None = every loaded pack."""
    threshold: float | None = None
    """Gate threshold for every pack's gate (policy ``pack``): open iff the gate score >= it. None: each pack's
    own tau, the operating point its training chose. Why a knob: no threshold of the bundled safety gate meets
    both the hit and the false-positive targets on unseen sources (docs/GATE_CEILING.md), so the trade-off is
    the user's to choose; higher opens on fewer turns (held-out rates per threshold: docs/gate/GATE_CURVE.md)."""

    def __post_init__(self) -> None:
        if self.enabled is not None:
            names = (self.enabled,) if isinstance(self.enabled, str) else tuple(self.enabled)
            if not all(isinstance(n, str) for n in names):
                raise TypeError("enabled must be a sequence of pack names (strings) or None")
            object.__setattr__(self, "enabled", names)
        check_choice(self.mode, MODES, "mode")
        check_choice(self.gate, GATE_POLICIES, "gate")
        if self.vector_source is not None:
            check_choice(self.vector_source, VECTOR_SOURCES, "vector_source")
        object.__setattr__(self, "strength", _number(self.strength, "strength"))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", _number(self.threshold, "threshold"))
