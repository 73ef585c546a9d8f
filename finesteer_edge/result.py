"""What one generated turn reports back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PackOutcome:
    """What one pack's gate decided on a turn (one entry per loaded pack, in load order)."""

    name: str
    steered: bool
    gate_score: float
    threshold: float
    expert_weights: list[float]
    strength: float
    """What this pack's vector was multiplied by: the turn's strength, times its PackSpec's, times the pack's own
    (manifest ``strength``; 1 for most packs)."""
    enabled: bool = True
    """False: ``SteeringSettings.enabled`` left this pack out, so its gate was forced shut this turn."""


@dataclass
class GenerationResult:
    text: str
    steered: bool
    """Whether the control vector was on for this turn."""
    gate_score: float | None
    """The head's gate score for this turn (None without a pack)."""
    expert_weights: list[float] | None
    mode: str
    """``exact``, ``fast``, or ``none`` without a pack."""
    tokens: int
    """Generated tokens (EOS and stop strings excluded)."""
    seconds: float
    """Wall time of the whole turn: prefill, gate, re-prefill, generation."""
    threshold: float | None = None
    """tau: the turn is steered iff gate_score >= threshold (unless the gate is forced)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens reused from the KV cache (multi-turn chat)."""
    ttft_seconds: float = 0.0
    finish_reason: str = "length"
    """``stop`` (EOS or stop string), ``length`` (max_tokens) or ``context`` (context full)."""
    token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    strength: float | None = None
    dropped_turns: int = 0
    """Oldest user/assistant exchanges left out so the prompt fits (``context_policy="drop_oldest"``)."""
    packs: list[PackOutcome] = field(default_factory=list)
    """Per pack: its gate's decision on this turn (empty without a pack). The top-level ``steered``,
    ``gate_score`` and ``expert_weights`` summarise it: steered if any pack steered; score and weights
    of the first pack."""

    def to_dict(self, *, with_token_ids: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_token_ids:
            d.pop("token_ids")
        return d

    @property
    def tokens_per_second(self) -> float:
        gen_time = self.seconds - self.ttft_seconds
        return (self.tokens - 1) / gen_time if self.tokens > 1 and gen_time > 0 else 0.0
