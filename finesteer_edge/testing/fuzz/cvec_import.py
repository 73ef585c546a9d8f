"""Control-vector GGUFs in three writers' styles through ``convert``: the ``cvec_import`` target."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from .core import apply_byte_mutations, strategies, tuple_muts
from .gguf import GGUF_MUTATIONS, I32, U32, apply_gguf_mutations, encode_gguf, parse_spec_bytes


@dataclass
class CvecCase:
    style: str = "finesteer"
    gguf_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    gate: bool = False
    strength: float = 1.0


def cvec_styles(control: bytes, n_layer: int) -> dict[str, bytes]:
    """The pack's control.gguf (finesteer-edge writer) and the same vector as repeng and llama.cpp's
    cvector-generator write it (uint32 count / int32 count with directions 1..n_layer-1)."""
    spec = parse_spec_bytes(control)
    repeng = spec.copy()
    repeng.kvs = [kv for kv in repeng.kvs if not kv.key.startswith("controlvector.finesteer.")]
    repeng.set("controlvector.layer_count", U32, len(repeng.tensors))
    gen = repeng.copy()
    gen.set("controlvector.layer_count", I32, n_layer - 1)
    t0 = gen.tensors[0]
    gen.tensors = [copy.deepcopy(t0) for _ in range(n_layer - 1)]
    for i, t in enumerate(gen.tensors, 1):
        t.name = f"direction.{i}"
    return {"finesteer": control, "repeng": encode_gguf(repeng), "generator": encode_gguf(gen)}


def write_cvec(case: CvecCase, dest: Path, cvecs: dict[str, bytes]) -> Path:
    """The mutated control vector ``dest``, from the base file of ``case.style`` in ``cvecs``."""
    blob = cvecs[case.style]
    if case.gguf_muts:
        blob = apply_gguf_mutations(blob, case.gguf_muts)
    dest.write_bytes(apply_byte_mutations(blob, case.bytes_muts))
    return dest


def cvec_cases():  # type: ignore[no-untyped-def]
    """Strategy of :class:`CvecCase`: GGUF or byte edits, odd strengths, with and without an SCS gate."""
    st, byte_muts, _ = strategies()
    styles = st.sampled_from(["finesteer", "repeng", "generator"])
    gmut = tuple_muts(GGUF_MUTATIONS)
    strength = st.sampled_from([1.0, 1.0, -2.0, 0.0, 1e30, 3.4e38, 1e-45])
    return st.one_of(
        st.builds(CvecCase, style=styles, gguf_muts=gmut, gate=st.booleans(), strength=strength),
        st.builds(CvecCase, style=styles, bytes_muts=byte_muts),
        st.builds(CvecCase, style=styles, strength=strength, gate=st.booleans()),
    )
