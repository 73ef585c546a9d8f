"""When in a steered turn the vector is on, and how strongly: a schedule over the turn (issue 11).

Why: a vector strong enough to make SmolLM2 refuse keeps pushing after the refusal has been said, and
the model repeats it until ``max_tokens`` ("You're here to help with your homework." x 30). The
refusal is decided by the first few tokens; what follows only needs the model's own judgement, which
includes stopping. So a pack can keep the vector on for the (re-prefilled) prompt and the first ``k``
generated tokens, then decay or clear it.

The scale applies between ``llama_decode`` calls. Each change of the control vector costs llama.cpp a
scheduler re-reserve, so a schedule changes it rarely: once (on, then off) or in ``steps`` levels.

Step ``t`` is the decode of the ``t``-th generated token (0-based), whose logits pick token ``t + 1``;
token 0 is sampled from the prompt's logits, so ``prompt`` decides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DECAYS = ("none", "linear", "exp")


class ScheduleError(ValueError):
    """A schedule with values that mean nothing (negative tokens, unknown decay, ...)."""


@dataclass(frozen=True)
class Schedule:
    """Scale of the steering vector over one steered turn. The default is "on for the whole turn"."""

    prompt: bool = True
    """Steer the prompt: in ``exact`` mode the conversation is re-prefilled with the vector on. False
    leaves the prompt cache unsteered (the ``fast`` behaviour) and steers from the first decode on."""
    tokens: int | None = None
    """Generated tokens the vector stays on for (then ``floor``); None: the whole turn."""
    decay: str = "none"
    """Within the ``tokens`` window: ``none`` (full strength), ``linear`` (1 down towards ``floor``) or
    ``exp`` (halving each step), in ``steps`` levels."""
    steps: int = 4
    """Distinct levels of a decay (each level change is one control-vector change)."""
    floor: float = 0.0
    """Scale after the window (0: the vector is cleared)."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, bool):
            raise ScheduleError("schedule.prompt must be true or false")
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                                        or self.tokens < 0):
            raise ScheduleError("schedule.tokens must be a whole number >= 0 or null (the whole turn)")
        if self.decay not in DECAYS:
            raise ScheduleError(f"schedule.decay must be one of {', '.join(DECAYS)}, not {self.decay!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 64:
            raise ScheduleError("schedule.steps must be a whole number in 1..64")
        if isinstance(self.floor, bool) or not isinstance(self.floor, int | float) or not (
                math.isfinite(self.floor) and 0.0 <= self.floor <= 1.0):
            raise ScheduleError("schedule.floor must be a number in 0..1")
        if self.decay != "none" and self.tokens is None:
            raise ScheduleError("a decaying schedule needs schedule.tokens (the window it decays over)")

    @property
    def always_on(self) -> bool:
        """True for today's behaviour: full strength for the prompt and every generated token."""
        return self.prompt and self.tokens is None

    def scale(self, t: int) -> float:
        """Multiplier of the vector while decoding generated token ``t`` (0-based)."""
        if self.tokens is None:
            return 1.0
        if t >= self.tokens:
            return float(self.floor)
        if self.decay == "none":
            return 1.0
        level = (t * self.steps) // max(1, self.tokens)  # 0 .. steps-1
        if self.decay == "linear":
            return float(1.0 - (1.0 - self.floor) * level / self.steps)
        return float(self.floor + (1.0 - self.floor) * 0.5 ** level)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "tokens": self.tokens, "decay": self.decay, "steps": self.steps,
                "floor": self.floor}

    @classmethod
    def from_dict(cls, d: Any) -> Schedule:
        """Strict parsing of a manifest's ``schedule`` object (unknown keys are an error, not ignored)."""
        if not isinstance(d, dict):
            raise ScheduleError("schedule must be an object")
        unknown = set(d) - {"prompt", "tokens", "decay", "steps", "floor"}
        if unknown:
            raise ScheduleError(f"schedule has unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        return cls(**d)

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """CLI form: ``all`` | ``K`` | ``K:linear`` | ``K:exp`` (optionally ``:noprompt``)."""
        parts = [p.strip() for p in text.split(":") if p.strip()]
        if not parts:
            raise ScheduleError("empty schedule")
        prompt = "noprompt" not in parts
        parts = [p for p in parts if p != "noprompt"]
        tokens: int | None
        if not parts or parts[0] == "all":
            tokens = None
        else:
            try:
                tokens = int(parts[0])
            except ValueError:
                raise ScheduleError(f"schedule {text!r}: expected all, K, K:linear or K:exp") from None
        decay = parts[1] if len(parts) > 1 else "none"
        return cls(prompt=prompt, tokens=tokens, decay=decay)


ALWAYS = Schedule()


class ScheduledControl:
    """Applies a schedule to a session's control vector between decodes (one steered turn).

    ``rows``/``il_start``/``il_end`` are the full-strength buffer the turn started with; the session
    call happens only when the scale changes.
    """

    def __init__(self, session: Any, schedule: Schedule, rows: np.ndarray, il_start: int, il_end: int) -> None:
        self.session = session
        self.schedule = schedule
        self.rows, self.il_start, self.il_end = rows, il_start, il_end
        self.current = 1.0
        self.changes = 0

    def before_decode(self, t: int) -> None:
        want = self.schedule.scale(t)
        if want == self.current:
            return
        if want == 0.0:
            self.session.clear_control()
        else:
            self.session.set_control((self.rows * np.float32(want)).astype(np.float32), self.il_start, self.il_end)
        self.current = want
        self.changes += 1
