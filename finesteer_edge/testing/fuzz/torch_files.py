"""Odd torch files: tensors a weights-only loader must refuse or check, and non-tensor objects around them.

Expanded views (tiny storage, huge logical size), sparse, meta and quantized tensors, other dtypes,
parameters, shared storages; outer objects that are not the expected mapping; a ``__reduce__`` payload
(:class:`~finesteer_edge.testing.fuzz.core.Payload`) that would create a marker file; zip or legacy
format, deflated records. Needs torch in this process (imported lazily).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .core import TENSOR_VALUES, Payload, odd_shape

TORCH_MUTATIONS = ("values", "shape", "dtype", "drop", "extra", "view", "sparse", "meta_device", "rename",
                   "nonstr_key", "param", "evil", "quantized", "shared", "noncontig")
OUTER_MUTATIONS = ("list", "tuple", "tensor", "none", "state_not_map", "layer", "fingerprint", "components",
                   "evil_meta", "nested", "int", "deflate")
_TORCH_DTYPES = ("float16", "bfloat16", "float64", "int64", "int8", "uint8", "bool", "complex64", "float8_e4m3fn",
                 "int32", "uint16", "float8_e5m2")
_TORCH_KEYS = ("selector", "U_rest", "scale.0.weight", "official_layer", "layer", "model", "prototypes",
               "residual_basis", "beta.0.weight", "state_dict", "metadata", "gamma", "tau", "query.weight", "")
_LAYER_VALUES = (2, 0, -1, 1, 3, 10**30, "2", "x", None, True, 2.5, "inf", "nan", [2], {"a": 1})


def _torch_value(choice: int, d: int, marker: Path) -> Any:
    """Values a weights-only unpickler allows (and one it must refuse)."""
    import torch

    opts: list[Any] = [
        torch.zeros(d), torch.zeros(d, d), torch.tensor(2), 2, -1, 10**30, float("inf"), float("nan"), "x", None,
        [1, 2], (1,), {"a": 1}, torch.Size([2]), torch.float32, torch.device("cpu"), b"bytes", True,
        torch.tensor([1.0, 2.0]), _nested(400), Payload(str(marker)), torch.zeros(d, dtype=torch.int64),
    ]
    return opts[choice % len(opts)]


def _nested(depth: int) -> Any:
    x: Any = 1
    for _ in range(depth):
        x = [x]
    return x


def to_torch_state(state: dict[str, np.ndarray]) -> dict[Any, Any]:
    import torch

    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}


def apply_torch_mutations(sd: dict[Any, Any], muts: list[tuple], d: int, marker: Path) -> dict[Any, Any]:  # type: ignore[type-arg]
    import torch

    for mut in muts:
        kind, a, b = (tuple(mut) + (0, 0))[:3]
        keys = list(sd)
        try:
            key = keys[a % len(keys)] if keys else None
            val = sd.get(key) if key is not None else None
            # An expanded "view" (up to 2^40 logical elements) is only ever replaced, dropped or renamed:
            # any other edit would materialise it here, in the harness.
            t = val if isinstance(val, torch.Tensor) and val.numel() <= 1 << 22 else None
            if kind == "values" and t is not None and t.is_floating_point() and t.numel():
                t = t.clone()
                if b % 3 == 0:
                    t.fill_(TENSOR_VALUES[b % len(TENSOR_VALUES)])
                else:
                    t.view(-1)[b % t.numel()] = TENSOR_VALUES[b % len(TENSOR_VALUES)]
                sd[key] = t
            elif kind == "shape" and t is not None:
                sd[key] = torch.from_numpy(np.ascontiguousarray(odd_shape(t.double().numpy(), b, d))).float()
            elif kind == "dtype" and t is not None:
                sd[key] = t.to(getattr(torch, _TORCH_DTYPES[b % len(_TORCH_DTYPES)]))
            elif kind == "drop" and key is not None:
                del sd[key]
            elif kind == "extra":
                sd[_TORCH_KEYS[a % len(_TORCH_KEYS)]] = _torch_value(b, d, marker)
            elif kind == "view" and key is not None:
                # Tiny storage, huge logical size (stride 0): materialising it would allocate gigabytes.
                size = ((1 << 24, d), (1 << 30,), (d, d), (1 << 20, 1 << 20), (d,))[b % 5]
                base = torch.zeros(1)
                sd[key] = base.expand(*size) if len(size) else base
            elif kind == "sparse" and t is not None and t.dim() >= 1:
                sd[key] = t.to_sparse()
            elif kind == "meta_device" and t is not None:
                sd[key] = torch.empty(t.shape, device="meta")
            elif kind == "rename" and key is not None:
                sd[_TORCH_KEYS[b % len(_TORCH_KEYS)]] = sd.pop(key)
            elif kind == "nonstr_key" and key is not None:
                sd[(5, (b,), 2.5, None)[b % 4]] = sd.pop(key)
            elif kind == "param" and t is not None:
                sd[key] = torch.nn.Parameter(t.float(), requires_grad=bool(b % 2))
            elif kind == "evil":
                sd[key if key is not None and b % 2 else "query.weight"] = Payload(str(marker))
            elif kind == "quantized" and t is not None and t.is_floating_point():
                with warnings.catch_warnings():  # deprecated in torch, still loadable: exactly the point
                    warnings.simplefilter("ignore")
                    sd[key] = torch.quantize_per_tensor(t.float(), 0.1, 0, torch.qint8)
            elif kind == "shared" and t is not None and len(keys) > 1:
                other = keys[b % len(keys)]
                sd[other] = t  # two keys, one storage
            elif kind == "noncontig" and t is not None and t.dim() == 2:
                sd[key] = t.t().contiguous().t()
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError):
            continue
    return sd


def wrap_torch_payload(sd: dict[Any, Any], layout: str, muts: list[tuple], marker: Path) -> Any:  # type: ignore[type-arg]
    """The object given to ``torch.save``: a bare state_dict (official) or ``{state_dict, metadata}`` (moe)."""
    import torch

    obj: Any = {"state_dict": sd, "metadata": {"components": {"config": {"value_projection": True}}}} \
        if layout == "moe" else sd
    for mut in muts:
        kind, a, b = (tuple(mut) + (0, 0))[:3]
        holder = obj.get("metadata") if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict) else obj
        if kind == "list":
            obj = [obj]
        elif kind == "tuple":
            obj = (obj, 1)
        elif kind == "tensor":
            obj = torch.zeros(3, 3)
        elif kind == "none":
            obj = None
        elif kind == "int":
            obj = 7
        elif kind == "state_not_map" and isinstance(obj, dict):
            obj = {"state_dict": [sd], "metadata": {}} if a % 2 else {"state_dict": torch.zeros(2), "metadata": 5}
        elif kind == "layer" and isinstance(holder, dict):
            holder[("official_layer", "layer")[a % 2]] = _LAYER_VALUES[b % len(_LAYER_VALUES)] \
                if not isinstance(_LAYER_VALUES[b % len(_LAYER_VALUES)], str) or b % 3 \
                else torch.tensor([2, 3])
        elif kind == "fingerprint" and isinstance(holder, dict):
            fp: dict[str, Any] = {"architecture": "llama", "n_layer": 4, "n_embd": 32, "n_vocab": 269,
                                  "tokenizer_sha256": "0" * 64}
            field_name = ("architecture", "n_layer", "n_embd", "n_vocab", "tokenizer_sha256")[a % 5]
            fp[field_name] = (float("inf"), float("nan"), "x", None, [1], 10**30, -1, torch.tensor([1, 2]),
                              torch.tensor(4), 4.7)[b % 10]
            holder[("model", "fingerprint")[b % 2]] = fp if b % 7 else "not a dict"
        elif kind == "components" and isinstance(obj, dict):
            obj["metadata"] = {"components": ({"config": {"value_projection": (True, False, "yes", None)[b % 4]}},
                                              {"config": [1]}, [], {"selection": {"chosen_k": 2}},
                                              _nested(300))[a % 5],
                               "training": ({"history": [1] * 1000, "epochs": 3}, [], None)[b % 3]}
        elif kind == "evil_meta" and isinstance(obj, dict):
            obj["metadata"] = {"note": Payload(str(marker))}
        elif kind == "nested" and isinstance(obj, dict):
            obj["metadata"] = {"deep": _nested(200 + 100 * (a % 8))}
    return obj


def save_torch(obj: Any, path: Path, *, legacy: bool) -> bool:
    """``torch.save`` in the zip (default) or legacy format; False when torch itself cannot save ``obj``."""
    import pickle

    import torch

    try:
        if legacy:
            torch.save(obj, path, _use_new_zipfile_serialization=False)
        else:
            torch.save(obj, path)
    except (RuntimeError, TypeError, ValueError, AttributeError, pickle.PicklingError, RecursionError,
            NotImplementedError):
        return False
    return True


def deflate(path: Path) -> None:
    """Re-zip a zip-format torch file with deflated records (torch.load inflates them: a zip bomb)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as zin:
        records = [(i.filename, zin.read(i.filename)) for i in zin.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, blob in records:
            zout.writestr(name, blob)
