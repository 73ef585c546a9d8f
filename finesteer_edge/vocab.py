"""Every fixed set of words the project uses, in one place: modes, gate policies and kinds, vector sources,
context policies, pack methods.

Why one module: the same sets used to be spelled in several files (``steered.py``, ``pack/manifest.py``,
``train/scs.py``, ``train/checkpoint.py``, the CLI) and drifted (``vector_source`` was ``head``/``mean`` in
the API but ``head``/``control`` in the manifest). Each set is a ``Literal`` type for annotations and a
tuple of its values for checks and messages (the tuple is derived from the type, so they cannot drift).
The manifest's spelling of the static vector source maps to the API's in :func:`vector_source_from_manifest`
and back in :func:`vector_source_to_manifest`, nowhere else.
"""

from __future__ import annotations

from typing import Literal, TypeVar, get_args

Mode = Literal["exact", "fast"]
"""``exact``: a steered turn re-prefills the conversation with the vector on; ``fast``: steer generated tokens."""
MODES: tuple[Mode, ...] = get_args(Mode)

GatePolicy = Literal["pack", "always", "never"]
"""``pack``: steer iff gate score >= the pack's tau; ``always``/``never``: forced (baselines, debugging)."""
GATE_POLICIES: tuple[GatePolicy, ...] = get_args(GatePolicy)

GateKind = Literal["scs", "scs_logistic", "logistic", "always"]
"""The gate a pack's head computes (manifest ``gate.kind``)."""
GATE_KINDS: tuple[GateKind, ...] = get_args(GateKind)

GateFeature = Literal["last", "user_mean", "user_end"]
"""What the gate reads at its layer (manifest ``gate.feature``; absent = ``last``): the state of the prompt's last
token (the end of the rendered conversation, after the assistant header), the mean over the tokens of the last
user message, or the state of that message's last token. Issue 10: the pooled user-message state carried harm
across data sources and conversation shapes better than the last token (docs/GATE_CEILING.md)."""
GATE_FEATURES: tuple[GateFeature, ...] = get_args(GateFeature)
SPAN_GATE_FEATURES: tuple[GateFeature, ...] = ("user_end", "user_mean")
"""The features read over the last user message's token span (the runtime locates it in the rendered prompt)."""
HEAD_FEATURES: tuple[GateFeature, ...] = GATE_FEATURES
"""What the MoSE head reads at its layer (manifest ``head.feature``; absent = ``last``): the same features as the
gate, computed by the same code (``gate_input.py``). Issue 11: a head fed the last token's state shrank its vector
on phrasings and conversations it never saw (docs/CLEAN_REFUSAL.md); the user message's own tokens move less."""

TrainedGateKind = Literal["scs", "scs_logistic"]
"""The gates ``train`` fits and checkpoints hold; both project onto a PCA subspace (mean ``m``, basis ``V``)."""
TRAINED_GATE_KINDS: tuple[TrainedGateKind, ...] = get_args(TrainedGateKind)

GateCandidateKind = Literal["scs", "scs_logistic", "probe"]
"""What gate selection fits and scores: the two trained gate kinds and an L2 logistic ``probe`` on the whole state
(stored as a rank-1 ``scs_logistic`` gate, so packs only ever hold ``GateKind``s)."""
GATE_CANDIDATE_KINDS: tuple[GateCandidateKind, ...] = get_args(GateCandidateKind)

VectorSource = Literal["head", "mean", "projected", "head_direction"]
"""API spelling. ``head``: the MoSE head's query-specific vector; ``mean``: the pack's static mean vector;
``projected``: the pack's mean direction at the length of the head's vector along it (the head decides how hard
to steer each query, the mean which way; issue 11, DESIGN-NOTES item 17); ``head_direction``: the head's
direction at the mean's length (the head decides which way, the mean how hard; DESIGN-NOTES item 19)."""
VECTOR_SOURCES: tuple[VectorSource, ...] = get_args(VectorSource)

ManifestVectorSource = Literal["head", "control", "projected", "head_direction"]
"""Manifest spelling (format_version 1, kept for old packs): the static vector is the file ``control.gguf``."""
MANIFEST_VECTOR_SOURCES: tuple[ManifestVectorSource, ...] = get_args(ManifestVectorSource)

ContextPolicy = Literal["error", "drop_oldest"]
"""What a turn does when the conversation outgrows the context (see ``SteeredLlama``)."""
CONTEXT_POLICIES: tuple[ContextPolicy, ...] = get_args(ContextPolicy)

CombinePolicy = Literal["cap", "refuse", "sum"]
"""Several packs adding at one layer beyond what any of them does alone: scale the sum down to that (``cap``),
refuse the turn (``refuse``), or keep the plain sum as llama.cpp's ``--control-vector A B`` does (``sum``)."""
COMBINE_POLICIES: tuple[CombinePolicy, ...] = get_args(CombinePolicy)

PackMethod = Literal["finesteer", "static"]
"""A pack's method: SCS gate + MoSE head, or one fixed vector (optionally gated)."""
PACK_METHODS: tuple[PackMethod, ...] = get_args(PackMethod)

_T = TypeVar("_T", bound=str)


def vector_source_from_manifest(value: ManifestVectorSource) -> VectorSource:
    """The API's name for a manifest's ``vector_source`` (``control`` -> ``mean``; the others are spelled alike)."""
    value = check_choice(value, MANIFEST_VECTOR_SOURCES, "manifest vector_source")
    return "mean" if value == "control" else value


def vector_source_to_manifest(value: VectorSource) -> ManifestVectorSource:
    """The manifest's name for an API ``vector_source`` (``mean`` -> ``control``; the others are spelled alike)."""
    value = check_choice(value, VECTOR_SOURCES, "vector_source")
    return "control" if value == "mean" else value


def check_choice(value: object, allowed: tuple[_T, ...], name: str) -> _T:
    """``value`` if it is one of ``allowed``, else ValueError naming the setting and the choices."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
    return value  # type: ignore[return-value]


def choices(allowed: tuple[str, ...], sep: str = " or ") -> str:
    """``"exact or fast"``: the values for a human message (CLI errors, help)."""
    return ", ".join(allowed[:-1]) + sep + allowed[-1] if len(allowed) > 1 else allowed[0]
