"""The converter's second kind of input: a static vector (the first is a MoSE :class:`Checkpoint`).

Its own module because both ``convert`` (which consumes it) and the importers (which produce it, e.g.
``importers/control_vector.py``) need it: defined in ``convert.py`` it made the two import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finesteer_edge.model_info import Fingerprint

from .head_params import GateParams


@dataclass
class StaticSource:
    """A fixed vector per layer (already at the strength to apply), optionally gated."""

    directions: dict[int, np.ndarray]
    gate: GateParams
    gate_layer: int
    tau: float
    fingerprint: Fingerprint | None
    model_name: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
