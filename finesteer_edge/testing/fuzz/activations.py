"""Activations files (safetensors, a JSON metadata string) through ``load_activations`` and ``train``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core import apply_byte_mutations, apply_manifest_mutations, dump_manifest, json_mut, strategies, tuple_muts
from .safetensors import HEADER_MUTATIONS, ST_MUTATIONS, SafetensorsSpec, apply_st_mutations, encode_safetensors


@dataclass
class ActivationsCase:
    tensor_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    header_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    meta_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    meta_text: int | None = None
    """Replace the metadata JSON string with junk number ``meta_text`` (see ``_META_TEXTS``)."""
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    train: bool = False
    """Also run ``train`` (1 epoch) when the file loads: what the trainer does with what the loader lets in."""


_META_TEXTS = ("", "{", "[]", "null", "1", '"x"', "{}", "NaN", '{"a":' * 3000 + "1" + "}" * 3000, "\ud800",
               '{"format_version": 1}')
ACTIVATION_EXTRA_NAMES = ("h_layer.1", "h_layer.2", "h_layer.-1", "h_layer.x", "h_layer.99999999999999999999",
                          "h_layer.", "label", "split", "has_delta", "delta", "h_gate", "junk", "__metadata__",
                          "h_layer.1.5", "h_layer.0")


def write_activations(case: ActivationsCase, dest: Path, *, acts: SafetensorsSpec, meta: dict[str, Any],
                      d: int) -> Path:
    """The mutated activations file ``dest``, from the base tensors ``acts`` and metadata ``meta``."""
    from ...train.activations import META_KEY

    spec = apply_st_mutations(acts, case.tensor_muts, ACTIVATION_EXTRA_NAMES, d)
    text = dump_manifest(apply_manifest_mutations(meta, case.meta_muts), indent=None)
    meta_text = text.decode("utf-8", errors="surrogatepass")
    if case.meta_text is not None:
        meta_text = _META_TEXTS[case.meta_text % len(_META_TEXTS)]
    spec.metadata = {**(spec.metadata or {}), META_KEY: meta_text}
    dest.write_bytes(apply_byte_mutations(encode_safetensors(spec, case.header_muts), case.bytes_muts))
    return dest


def activation_cases(meta: dict[str, Any], train: bool | None = None):  # type: ignore[no-untyped-def]
    """Strategy of :class:`ActivationsCase`. ``train``: None mixes cases that also run ``train`` (about 1 in
    6, ~1-2 s each) with load-only ones; False / True: only one kind."""
    st, byte_muts, _ = strategies()
    meta_paths = st.lists(json_mut(meta), min_size=1, max_size=3)
    none: Any = st.just([])
    trained = st.builds(ActivationsCase, tensor_muts=tuple_muts(("values", "shape", "dtype", "extra", "rename"), 2),
                        meta_muts=none | meta_paths, train=st.just(True))
    if train:
        return trained
    loads = [
        st.builds(ActivationsCase, tensor_muts=tuple_muts(ST_MUTATIONS)),
        st.builds(ActivationsCase, header_muts=tuple_muts(HEADER_MUTATIONS, 2)),
        st.builds(ActivationsCase, meta_muts=meta_paths),
        st.builds(ActivationsCase, meta_text=st.integers(0, len(_META_TEXTS) - 1)),
        st.builds(ActivationsCase, bytes_muts=byte_muts),
    ]
    return st.one_of(*loads) if train is False else st.one_of(*loads, trained)
