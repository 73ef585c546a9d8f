"""Strict JSON for the metadata we read back: pack manifests, checkpoint configs, activations metadata.

One parser for all of them, because their numbers flow into each other (a checkpoint's tau becomes a
manifest's tau) and every one of them is a file users share.
"""

from __future__ import annotations

import json
import math
from typing import Any


def loads_strict(raw: str | bytes, *, int64_only: bool = True) -> Any:
    """JSON as our own writers produce it (``allow_nan=False``): no ``NaN``/``Infinity``, no numbers
    beyond float range, no integers outside int64, text that re-encodes to UTF-8.

    For checkpoint configs and activations metadata, whose numbers go on into a pack manifest that must
    be strict JSON too. Every problem, too-deep nesting included, is a ``ValueError`` the caller turns
    into its own typed error. ``int64_only=False`` leaves integers unbounded for readers that check each
    field's range themselves (the manifest, whose errors name the field).
    """
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def finite_float(text: str) -> float:
        f = float(text)
        if not math.isfinite(f):
            raise ValueError(f"number {text[:20]} is out of range")
        return f

    def int64(text: str) -> int:
        i = int(text)
        if not -(1 << 63) <= i < 1 << 63:
            raise ValueError(f"integer {text[:20]}... is out of range")
        return i

    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        obj = json.loads(text, parse_constant=no_constant, parse_float=finite_float,
                         parse_int=int64 if int64_only else int)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return obj
