"""One pack's verdict on a turn, read from the unsteered prefill: gate score, open or shut, and its vectors.

Apart from :class:`~finesteer_edge.steered.SteeredLlama` because it is the per-pack arithmetic of DESIGN.md
section 4 with no state of its own: the gate policy and threshold, ``enabled``, the instance's strength times
the pack's, the vector source, the layer spread and the finite check. SteeredLlama decides every pack from one prefill
and adds the open ones' vectors together (multipack.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import PackError
from .gate_input import gate_state, head_state
from .multipack import Decision
from .pack.pack import SteeringPack
from .schedule import ALWAYS, Schedule
from .settings import SteeringSettings
from .spread import Spread
from .vocab import VectorSource, vector_source_from_manifest

if TYPE_CHECKING:
    from .llama.session import LlamaSession


def pack_name(pack: SteeringPack) -> str:
    """The name ``enabled`` and the turn's outcomes use: the manifest's name, else the directory's."""
    return pack.manifest.name or pack.path.name


def pack_vector_source(pack: SteeringPack, steering: SteeringSettings) -> VectorSource:
    """``steering``'s vector source, else the pack's own (its manifest's default)."""
    return steering.vector_source or vector_source_from_manifest(pack.manifest.vector_source)  # type: ignore[arg-type]


def pack_threshold(pack: SteeringPack, steering: SteeringSettings) -> float:
    """The score ``pack``'s gate is held against: ``steering``'s threshold, else the pack's own tau."""
    return pack.manifest.tau if steering.threshold is None else steering.threshold


def decide_pack(s: LlamaSession, pack: SteeringPack, pack_strength: float, st: SteeringSettings,
                spread: Spread | None = None) -> Decision:
    """``pack``'s gate and vectors for the hidden states of ``s``'s last capturing prefill. ``spread``
    replaces the pack's own layer spread (None: the manifest's)."""
    m = pack.manifest
    out = pack.evaluate(gate_state(s, m), head_state(s, m))
    tau = pack_threshold(pack, st)
    is_open = {"pack": out.gate_score >= tau, "always": True, "never": False}[st.gate]
    if st.enabled is not None and pack_name(pack) not in st.enabled:
        is_open = False  # left out of this turn: shut, so the turn is as without the pack
    strength = st.strength * pack_strength * m.strength  # the turn's, the PackSpec's, the pack's own
    source = pack_vector_source(pack, st)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, not warned
        if source == "head":
            vectors = {m.steer_layer: out.vector * strength}
        elif source == "projected":
            vectors = {m.steer_layer: project_on_mean(pack, out.vector) * strength}
        elif source == "head_direction":
            vectors = {m.steer_layer: head_direction_at_mean_length(pack, out.vector) * strength}
        else:
            vectors = {layer: v * strength for layer, v in pack.control.directions.items()}
        spread = spread or m.spread
        if spread is not None:
            spread.check(s.n_layer)
            vectors = spread.apply(vectors)
    for v in vectors.values():
        if not np.isfinite(v).all():
            raise PackError("the steering vector is not finite; refusing to generate")
    return Decision(out.gate_score, bool(is_open), vectors, out.expert_weights, tau)


def project_on_mean(pack: SteeringPack, vector: np.ndarray) -> np.ndarray:
    """The ``projected`` vector source: the pack's mean direction at the steer layer, as long as ``vector`` (the
    head's) reaches along it, and zero where the head points away from it.

    Why: on SmolLM2's safety pack the head's vectors lie within ~0.97 cosine of the mean and their departures
    are noise for refusing, while their lengths carry what the head learned per query (about 68 on harmful
    prompts, about 35 on the borderline ones whose gate opens; docs/CLEAN_REFUSAL.md). Keeping the length and
    dropping the direction keeps the one and loses the other. The head never reverses the mean's direction.
    """
    mean = _steer_mean(pack, "projected")
    along = max(float(vector.astype(np.float64) @ mean) / float(mean @ mean), 0.0)
    return (mean * along).astype(np.float32)


def head_direction_at_mean_length(pack: SteeringPack, vector: np.ndarray) -> np.ndarray:
    """The ``head_direction`` vector source: ``vector``'s (the head's) direction at the length of the pack's mean
    vector at the steer layer; the mean itself when the head's vector is zero (it has no direction to keep).

    Why: a head trained on each realistic request's own refusal shift (``extract --realistic-data``) turns toward
    the shift a phrasing needs (role-play: cosine 0.97 to that family's own shift, against 0.84 for the mean), but
    at about 0.68 of the mean's length on the phrasings it was not sure of, too short to refuse
    (DESIGN-NOTES item 19). Kept at the mean's length, its direction refuses where the mean's does not.
    """
    mean = _steer_mean(pack, "head_direction")
    v = vector.astype(np.float64)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm):
        raise PackError("the head's vector is not finite; refusing to generate")
    return (mean if norm == 0.0 else v * (float(np.linalg.norm(mean)) / norm)).astype(np.float32)


def _steer_mean(pack: SteeringPack, source: str) -> np.ndarray:
    """control.gguf's row at the steer layer (float64), which the ``projected`` and ``head_direction`` sources
    need; a clear :class:`PackError` when it is missing, zero or not finite (fail closed)."""
    m = pack.manifest
    mean = pack.control.directions.get(m.steer_layer)
    if mean is None:
        raise PackError(f"pack {pack_name(pack)}: control.gguf has no direction.{m.steer_layer} for vector source "
                        f"{source}; use vector source head or mean")
    mean = mean.astype(np.float64)
    norm2 = float(mean @ mean)
    if not np.isfinite(norm2) or norm2 == 0.0:
        raise PackError(f"pack {pack_name(pack)}: the mean vector at layer {m.steer_layer} is zero or not finite; "
                        f"vector source {source} needs it")
    return mean


def open_packs_schedule(packs: Sequence[SteeringPack], decisions: Sequence[Decision]) -> Schedule:
    """The schedule of the packs whose gates opened (the first of them that has one; none: the whole turn).
    A pack that stayed shut or was left out (``enabled``) does not shape the turn, so a turn with one open
    gate is that pack's turn alone."""
    own = [p.manifest.schedule for p, d in zip(packs, decisions, strict=True)
           if d.open and p.manifest.schedule is not None]
    return own[0] if own else ALWAYS
