"""Official FineSteer ``.pth`` files and ``finesteer_moe`` checkpoints, with their bank files: the ``torch`` target.

The state dicts are synthetic but have the real keys and shapes (DESIGN.md section 3); the mutated bank
file (prototypes ``C`` or basis ``U``) is an ``.npy``, a safetensors or a torch file. Building cases
needs torch in this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .core import apply_byte_mutations, fresh_dir, strategies, tuple_muts
from .npy import NPY_MUTATIONS, build_npy_case
from .safetensors import (
    HEADER_MUTATIONS,
    ST_MUTATIONS,
    SafetensorsSpec,
    apply_st_mutations,
    encode_safetensors,
    st_tensor,
)
from .torch_files import (
    OUTER_MUTATIONS,
    TORCH_MUTATIONS,
    apply_torch_mutations,
    deflate,
    save_torch,
    to_torch_state,
    wrap_torch_payload,
)


@dataclass
class TorchCase:
    layout: str = "official"
    state_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    outer_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    legacy: bool = False
    bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bank: str = "npy"
    """Format of the mutated bank file (official layout): npy, safetensors or pt."""
    bank_target: str = "C"
    bank_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    bank_bytes_muts: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]
    official_layer: int | None = 2
    activations: bool = False


def official_state(rng: np.random.Generator, d: int, k: int) -> dict[str, np.ndarray]:
    """The official ``SteeringModel.state_dict()`` keys and shapes (DESIGN.md section 3), hidden_dim = d."""
    def lin(i: int, o: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.standard_normal((o, i)) / np.sqrt(i), rng.standard_normal(o) * 0.1

    out: dict[str, np.ndarray] = {}
    for name, (i, o) in (("query", (d, d)), ("key", (d, d)), ("value", (d, d)), ("scale.0", (d, d)),
                         ("scale.2", (d, 1)), ("mix.0", (d, d)), ("mix.2", (d, k))):
        out[f"{name}.weight"], out[f"{name}.bias"] = lin(i, o)
    out["gamma"], out["tau"] = np.array(1.5), np.array(0.5)
    return out


def moe_state(rng: np.random.Generator, d: int, K: int, k: int) -> dict[str, np.ndarray]:
    """``finesteer_moe`` MoSE buffers and layers (value projection on)."""
    out = {"prototypes": rng.standard_normal((K, d)), "residual_basis": np.linalg.qr(rng.standard_normal((d, k)))[0]}
    for name, (i, o) in (("query", (d, d)), ("key", (d, d)), ("value", (d, d)), ("beta.0", (d, d)),
                         ("beta.2", (d, k))):
        out[f"{name}.weight"] = rng.standard_normal((o, i)) / np.sqrt(i)
        out[f"{name}.bias"] = rng.standard_normal(o) * 0.1
    return out


BANK_NAMES = ("U_rest", "selector", "x", "", "U")


def write_torch(case: TorchCase, dest_dir: Path, *, official: dict[str, np.ndarray], moe: dict[str, np.ndarray],
                C: np.ndarray, U: np.ndarray, d: int, marker: Path, acts_path: Path) -> dict[str, Any]:
    """The case's files in ``dest_dir``; returns the ``convert`` keyword arguments (paths as strings)."""
    import torch

    fresh_dir(dest_dir)
    base = moe if case.layout == "moe" else official
    sd = apply_torch_mutations(to_torch_state(base), case.state_muts, d, marker)
    obj = wrap_torch_payload(sd, case.layout, case.outer_muts, marker)
    path = dest_dir / ("model.pt" if case.layout == "moe" else "steering_model.pth")
    if not save_torch(obj, path, legacy=case.legacy):
        save_torch(to_torch_state(base), path, legacy=case.legacy)
    if any(m[0] == "deflate" for m in case.outer_muts):
        deflate(path)
    path.write_bytes(apply_byte_mutations(path.read_bytes(), case.bytes_muts))
    kwargs: dict[str, Any] = {"src": str(path), "official_layer": case.official_layer}
    if case.layout == "official":
        banks = {"C": ("prototypes", C), "U": ("basis", U)}
        for name, (arg, arr) in banks.items():
            mutated = name == case.bank_target
            fmt = case.bank if mutated else {"C": "npy", "U": "safetensors"}[name]
            p = dest_dir / f"{arg}.{fmt}"
            if fmt == "npy":
                blob = build_npy_case(arr, case.bank_muts if mutated else [], marker)
            elif fmt == "safetensors":
                spec = SafetensorsSpec([st_tensor(("selector", "U_rest")[name == "U"], arr)])
                if mutated:
                    spec = apply_st_mutations(spec, [m for m in case.bank_muts if m[0] in ST_MUTATIONS],
                                              BANK_NAMES, d)
                blob = encode_safetensors(spec, [m for m in case.bank_muts if m[0] in HEADER_MUTATIONS]
                                          if mutated else [])
            else:
                t: Any = {"x": torch.from_numpy(np.array(arr, dtype=np.float32))}
                if mutated:
                    t = apply_torch_mutations(t, [m for m in case.bank_muts if m[0] in TORCH_MUTATIONS], d, marker)
                    t = t["x"] if len(t) == 1 and "x" in t and case.bank_muts and case.bank_muts[0][1] % 2 else t
                if not save_torch(t, p, legacy=case.legacy):
                    save_torch(torch.zeros(2), p, legacy=False)
                blob = p.read_bytes()
            if mutated:
                blob = apply_byte_mutations(blob, case.bank_bytes_muts)
            p.write_bytes(blob)
            kwargs[arg] = str(p)
    if case.activations:
        kwargs["activations"] = str(acts_path)
    return kwargs


def torch_cases():  # type: ignore[no-untyped-def]
    """Strategy of :class:`TorchCase`: state, outer-object, byte and bank-file edits, odd layers."""
    st, byte_muts, _ = strategies()
    layouts = st.sampled_from(["official", "moe"])
    layer = st.sampled_from([2, 2, 2, 1, 0, -1, 3, None, 10**9])
    return st.one_of(
        st.builds(TorchCase, layout=layouts, state_muts=tuple_muts(TORCH_MUTATIONS), legacy=st.booleans()),
        st.builds(TorchCase, layout=layouts, outer_muts=tuple_muts(OUTER_MUTATIONS, 2), legacy=st.booleans(),
                  official_layer=layer),
        st.builds(TorchCase, layout=layouts, bytes_muts=byte_muts, legacy=st.booleans()),
        st.builds(TorchCase, bank=st.just("npy"), bank_target=st.sampled_from(["C", "U"]),
                  bank_muts=tuple_muts(NPY_MUTATIONS, 2)),
        st.builds(TorchCase, bank=st.just("safetensors"), bank_target=st.sampled_from(["C", "U"]),
                  bank_muts=tuple_muts(ST_MUTATIONS + HEADER_MUTATIONS, 2)),
        st.builds(TorchCase, bank=st.just("pt"), bank_target=st.sampled_from(["C", "U"]),
                  bank_muts=tuple_muts(TORCH_MUTATIONS, 2), legacy=st.booleans()),
        st.builds(TorchCase, bank=st.sampled_from(["npy", "safetensors", "pt"]),
                  bank_target=st.sampled_from(["C", "U"]), bank_bytes_muts=byte_muts),
        st.builds(TorchCase, layout=layouts, state_muts=tuple_muts(("values", "shape", "drop", "dtype"), 1, 0),
                  activations=st.booleans(), official_layer=layer),
    )
