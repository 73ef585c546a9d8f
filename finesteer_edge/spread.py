"""Spreading one steering shift over a layer range (issue 11), as llama.cpp's ``--control-vector-layer-range``
and repeng apply a vector to many layers.

Why: one layer carrying the whole shift needs a large norm there, which pushes SmolLM2 off its
manifold (loops, word salad); the same total shift split evenly over ``n`` consecutive layers adds
``1/n`` of it at each, a smaller perturbation per block that the residual stream sums back up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class SpreadError(ValueError):
    """A layer range that does not fit the model or makes no sense."""


@dataclass(frozen=True)
class Spread:
    """Apply the total vector split evenly over layers ``first..last`` (inclusive) instead of one layer."""

    first: int
    last: int

    def __post_init__(self) -> None:
        for v in (self.first, self.last):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpreadError("spread.layers must be two whole numbers [first, last]")
        if not 1 <= self.first <= self.last:
            raise SpreadError("spread.layers must satisfy 1 <= first <= last (llama.cpp cannot steer layer 0)")

    @property
    def layers(self) -> range:
        return range(self.first, self.last + 1)

    def check(self, n_layer: int) -> None:
        """Control vectors cover layers 1..n_layer-1."""
        if self.last > n_layer - 1:
            raise SpreadError(f"spread.layers [{self.first}, {self.last}] go past the last steerable layer "
                              f"{n_layer - 1} of this {n_layer}-layer model")

    def apply(self, vectors: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """The sum of ``vectors`` split evenly over the range (same total shift, 1/n per layer)."""
        total = np.sum([np.asarray(v, dtype=np.float32) for v in vectors.values()], axis=0)
        n = len(self.layers)
        return {layer: (total / np.float32(n)).astype(np.float32) for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [self.first, self.last]}

    @classmethod
    def from_dict(cls, d: Any) -> Spread:
        if not isinstance(d, dict) or set(d) != {"layers"}:
            raise SpreadError('spread must be an object {"layers": [first, last]}')
        layers = d["layers"]
        if not isinstance(layers, list) or len(layers) != 2:
            raise SpreadError("spread.layers must be two whole numbers [first, last]")
        return cls(layers[0], layers[1])
