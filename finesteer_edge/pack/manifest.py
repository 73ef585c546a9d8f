"""``manifest.json`` of a steering pack: schema, strict parsing, and serialisation.

Parsing is strict on purpose (types, ranges, known file names) because a pack is a shared file:
anything unexpected is a :class:`PackFormatError` naming the field, not a KeyError three calls later.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import PackFormatError
from ..model_info import Fingerprint
from ..schedule import Schedule, ScheduleError
from ..spread import Spread, SpreadError
from ..strict_json import loads_strict
from ..vocab import GATE_FEATURES, GATE_KINDS, HEAD_FEATURES, MANIFEST_VECTOR_SOURCES, MODES, PACK_METHODS

FORMAT_NAME = "finesteer-edge-pack"
FORMAT_VERSION = 1
"""The version written for packs every runtime since 0.1 reads as intended."""
SPAN_FEATURE_VERSION = 2
"""Written for packs whose gate reads a user-message span (``gate.feature``): a runtime that only knows version 1
would ignore the field and gate on the last token, silently wrong, so it must refuse the pack instead."""
DEFAULTS_VERSION = 3
"""Written for packs that carry their own ``strength`` or steer with the ``projected`` vector source (issue 11): a
version-2 runtime would ignore the strength and steer weaker than measured, so it must refuse the pack instead."""
HEAD_FEATURE_VERSION = 4
"""Written for packs whose MoSE head reads a user-message span (``head.feature``): an older runtime would feed the
head the last token's state, a different input than it was trained on, so it must refuse the pack instead."""
HEAD_DIRECTION_VERSION = 5
"""Written for packs that steer with the ``head_direction`` vector source by default (DESIGN-NOTES item 19): an
older runtime does not know the source, so it must refuse the pack by its version, before reading the field."""
READ_VERSIONS = (FORMAT_VERSION, SPAN_FEATURE_VERSION, DEFAULTS_VERSION, HEAD_FEATURE_VERSION, HEAD_DIRECTION_VERSION)
MAX_PACK_STRENGTH = 100.0
MANIFEST = "manifest.json"
HEAD = "head.onnx"
CONTROL = "control.gguf"
PACK_FILES = (HEAD, CONTROL)
MAX_MANIFEST_BYTES = 4 << 20



@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    name: str
    method: str
    """``finesteer`` (SCS gate + MoSE head) or ``static`` (one fixed vector, optionally gated)."""
    model: Fingerprint
    model_name: str
    gate_layer: int
    steer_layer: int
    alpha: float
    tau: float
    """Steer iff gate_score >= tau."""
    gate_kind: str
    n_experts: int
    basis_rank: int
    vector_source: str
    """``head``: the head's query-specific vector at ``steer_layer``; ``control``: control.gguf's rows;
    ``projected``: control.gguf's row at ``steer_layer`` at the length of the head's vector along it;
    ``head_direction``: the head's vector at the length of control.gguf's row at ``steer_layer``."""
    mode: str
    files: dict[str, FileEntry]
    feature_layer: int | None = None
    """Layer whose state feeds the MoSE head (``h_steer``); None = ``steer_layer``. Differs for imports
    from the official FineSteer code, which reads block L's input (our L-1) and adds at block L's output."""
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    schedule: Schedule | None = None
    """When in a steered turn the vector is on (optional; None: the whole turn, as before issue 11)."""
    spread: Spread | None = None
    """Split the vector evenly over a layer range instead of the steer layer alone (optional)."""
    gate_feature: str = "last"
    """What the gate reads at ``gate_layer`` (``finesteer_edge.vocab.GateFeature``): the last prompt token's state,
    or a pooled state of the last user message (packs with one are written as format version 2)."""
    strength: float = 1.0
    """The pack's own strength, chosen by measurement (``set-defaults``): every turn's strength multiplies it, so a
    user's ``--strength 1`` is the measured point. Packs with one other than 1 are written as format version 3."""
    head_feature: str = "last"
    """What the MoSE head reads at ``head_layer``, in the gate's vocabulary (``HEAD_FEATURES``); packs whose head
    reads a user-message span are written as format version 4."""

    @property
    def written_version(self) -> int:
        """The oldest format version whose readers apply everything this manifest asks for."""
        if self.vector_source == "head_direction":
            return HEAD_DIRECTION_VERSION
        if self.head_feature != "last":
            return HEAD_FEATURE_VERSION
        if self.strength != 1.0 or self.vector_source == "projected":
            return DEFAULTS_VERSION
        return SPAN_FEATURE_VERSION if self.gate_feature != "last" else self.format_version

    @property
    def head_layer(self) -> int:
        return self.steer_layer if self.feature_layer is None else self.feature_layer

    def to_json(self) -> str:
        d: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": self.written_version,
            "name": self.name,
            "description": self.description,
            "method": self.method,
            "model": {**self.model.to_dict(), "name": self.model_name},
            "layers": {"gate": self.gate_layer, "steer": self.steer_layer, "feature": self.head_layer},
            "alpha": self.alpha,
            "tau": self.tau,
            "gate": {"kind": self.gate_kind, **({"feature": self.gate_feature} if self.gate_feature != "last" else {})},
            **({"head": {"feature": self.head_feature}} if self.head_feature != "last" else {}),
            "experts": self.n_experts,
            "basis_rank": self.basis_rank,
            "vector_source": self.vector_source,
            "mode": self.mode,
            "files": {k: {"sha256": v.sha256, "bytes": v.bytes} for k, v in sorted(self.files.items())},
            "provenance": self.provenance,
        }
        if self.strength != 1.0:
            d["strength"] = self.strength
        if self.schedule is not None:
            d["schedule"] = self.schedule.to_dict()
        if self.spread is not None:
            d["spread"] = self.spread.to_dict()
        return json.dumps(d, indent=2, sort_keys=False, allow_nan=False) + "\n"


def _get(d: Any, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if not isinstance(d, dict) or key not in d:
        raise PackFormatError(f"manifest: missing field {where}{key!r}")
    v = d[key]
    # bool is an int subclass: never accept it where a number is meant.
    if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise PackFormatError(f"manifest: field {where}{key!r} has the wrong type")
    if not isinstance(v, kind):
        raise PackFormatError(f"manifest: field {where}{key!r} has the wrong type")
    return v


def _finite(v: Any, name: str) -> float:
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float range
        raise PackFormatError(f"manifest: {name} must be finite") from None
    if not math.isfinite(f):
        raise PackFormatError(f"manifest: {name} must be finite")
    return f


def _choice(v: str, allowed: tuple[str, ...], name: str) -> str:
    if v not in allowed:
        raise PackFormatError(f"manifest: {name} {v!r} is not one of {', '.join(allowed)}")
    return v


def _check_span_layer(name: str, feature: str, layer: int, n_layer: int) -> None:
    """llama.cpp keeps only the output rows in the last block: no user-message span to pool there."""
    if feature != "last" and layer >= n_layer - 1:
        raise PackFormatError(f"manifest: {name} {feature!r} cannot read the last layer ({layer})")


def parse_manifest(raw: bytes) -> Manifest:
    # Strict JSON: NaN/Infinity literals and out-of-range numbers are refused here rather than turning up
    # as inf in a field or as invalid JSON in `inspect --json`. ValueError covers JSONDecodeError and
    # Python's limit on huge integer literals; a lone surrogate escape ("\ud800") parses but cannot be
    # printed or re-encoded, so the document must round-trip to UTF-8.
    try:
        d = loads_strict(raw, int64_only=False)
    except ValueError as exc:
        raise PackFormatError(f"manifest.json is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(d, dict):
        raise PackFormatError("manifest.json must hold a JSON object")
    if d.get("format") != FORMAT_NAME:
        raise PackFormatError(f"manifest.json is not a {FORMAT_NAME} manifest")
    version = _get(d, "format_version", int)
    if version not in READ_VERSIONS:
        raise PackFormatError(f"pack format version {version} is not supported (this runtime reads "
                              f"{', '.join(map(str, READ_VERSIONS))})")
    model = _get(d, "model", dict)
    try:
        fp = Fingerprint(
            architecture=_get(model, "architecture", str, "model."),
            n_layer=_get(model, "n_layer", int, "model."),
            n_embd=_get(model, "n_embd", int, "model."),
            n_vocab=_get(model, "n_vocab", int, "model."),
            tokenizer_sha256=_get(model, "tokenizer_sha256", str, "model."),
        )
    except PackFormatError:
        raise
    if not (1 <= fp.n_layer <= 4096 and 1 <= fp.n_embd <= 65536 and fp.n_vocab >= 1):
        raise PackFormatError("manifest: model dimensions out of range")
    layers = _get(d, "layers", dict)
    gate_layer = _get(layers, "gate", int, "layers.")
    steer_layer = _get(layers, "steer", int, "layers.")
    feature_layer = _get(layers, "feature", int, "layers.") if "feature" in layers else None
    files_raw = _get(d, "files", dict)
    files: dict[str, FileEntry] = {}
    for name in PACK_FILES:
        entry = _get(files_raw, name, dict, "files.")
        sha = _get(entry, "sha256", str, f"files.{name}.")
        size = _get(entry, "bytes", int, f"files.{name}.")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha) or size < 0:
            raise PackFormatError(f"manifest: bad checksum entry for {name}")
        files[name] = FileEntry(sha, size)
    extra = set(files_raw) - set(PACK_FILES)
    if extra:
        raise PackFormatError(f"manifest lists unknown files: {', '.join(sorted(map(str, extra)))}")
    gate = _get(d, "gate", dict)
    n_experts = _get(d, "experts", int)
    basis_rank = _get(d, "basis_rank", int)
    if not (1 <= n_experts <= 4096 and 0 <= basis_rank <= 4096):
        raise PackFormatError("manifest: experts/basis_rank out of range")
    provenance = d.get("provenance", {})
    if not isinstance(provenance, dict):
        raise PackFormatError("manifest: provenance must be an object")
    name = d.get("name", "")
    description = d.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise PackFormatError("manifest: name and description must be strings")
    # `inspect` and `chat` print these: terminal control sequences from a downloaded file must not reach a tty.
    for label, text in (("name", name), ("description", description), ("model.name", str(model.get("name", "")))):
        if any((ord(c) < 32 and c not in "\n\t") or 127 <= ord(c) < 160 for c in text):
            raise PackFormatError(f"manifest: {label} contains control characters")
    gate_feature = _choice(_get(gate, "feature", str, "gate."), GATE_FEATURES, "gate.feature") \
        if "feature" in gate else "last"
    if gate_feature != "last" and version < SPAN_FEATURE_VERSION:
        raise PackFormatError(f"manifest: gate.feature {gate_feature!r} needs format_version {SPAN_FEATURE_VERSION}")
    _check_span_layer("gate.feature", gate_feature, gate_layer, fp.n_layer)
    head_feature = "last"
    if "head" in d:
        head_feature = _choice(_get(_get(d, "head", dict), "feature", str, "head."), HEAD_FEATURES, "head.feature")
    if head_feature != "last" and version < HEAD_FEATURE_VERSION:
        raise PackFormatError(f"manifest: head.feature {head_feature!r} needs format_version {HEAD_FEATURE_VERSION}")
    _check_span_layer("head.feature", head_feature, steer_layer if feature_layer is None else feature_layer,
                      fp.n_layer)
    vector_source = _choice(_get(d, "vector_source", str), MANIFEST_VECTOR_SOURCES, "vector_source")
    strength = 1.0
    if "strength" in d:
        strength = _finite(_get(d, "strength", (int, float)), "strength")
        if not 0.0 < strength <= MAX_PACK_STRENGTH:
            raise PackFormatError(f"manifest: strength must be in (0, {MAX_PACK_STRENGTH:g}], not {strength:g}")
    if (strength != 1.0 or vector_source == "projected") and version < DEFAULTS_VERSION:
        raise PackFormatError(f"manifest: a pack strength or vector_source 'projected' needs format_version "
                              f"{DEFAULTS_VERSION}")
    if vector_source == "head_direction" and version < HEAD_DIRECTION_VERSION:
        raise PackFormatError(f"manifest: vector_source 'head_direction' needs format_version {HEAD_DIRECTION_VERSION}")
    schedule = spread = None
    try:
        if d.get("schedule") is not None:
            schedule = Schedule.from_dict(d["schedule"])
        if d.get("spread") is not None:
            spread = Spread.from_dict(d["spread"])
            spread.check(fp.n_layer)
    except (ScheduleError, SpreadError, TypeError) as exc:
        raise PackFormatError(f"manifest: {exc}") from None
    return Manifest(
        schedule=schedule,
        spread=spread,
        name=name,
        description=description,
        method=_choice(_get(d, "method", str), PACK_METHODS, "method"),
        model=fp,
        model_name=str(model.get("name", "")),
        gate_layer=gate_layer,
        steer_layer=steer_layer,
        feature_layer=feature_layer,
        alpha=_finite(_get(d, "alpha", (int, float)), "alpha"),
        tau=_finite(_get(d, "tau", (int, float)), "tau"),
        gate_kind=_choice(_get(gate, "kind", str, "gate."), GATE_KINDS, "gate.kind"),
        gate_feature=gate_feature,
        head_feature=head_feature,
        n_experts=n_experts,
        basis_rank=basis_rank,
        vector_source=vector_source,
        strength=strength,
        mode=_choice(_get(d, "mode", str), MODES, "mode"),
        files=files,
        provenance=provenance,
        format_version=version,
    )
