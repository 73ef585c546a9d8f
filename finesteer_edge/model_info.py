"""What a pack must agree with: a model's fingerprint, read from the GGUF header without llama.cpp.

The fingerprint names the network a steering vector was fitted to: architecture, depth, width,
vocabulary and a hash of the tokenizer. It deliberately ignores the quantization, so one pack serves
the Q4_1 and the Q8_0 file of the same model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .gguf_file import GGUFFormatError, is_gguf, read_gguf

# Limits of the pinned llama.cpp (llama-cpp-python 0.3.36): beyond them its loader aborts the process
# (GGML_ASSERT) instead of returning an error, so the header check must refuse them first.
MAX_LAYERS = 512
"""LLAMA_MAX_LAYERS."""
MAX_EXPERTS = 512
"""LLAMA_MAX_EXPERTS."""
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
TENSOR_ALIGNMENT = 32
"""ggml's TENSOR_ALIGNMENT: the mapped data of every tensor must start on it."""
_ARR, _STR, _F32, _I32, _U32 = 9, 8, 6, 5, 4


@dataclass(frozen=True)
class Fingerprint:
    architecture: str
    n_layer: int
    n_embd: int
    n_vocab: int
    tokenizer_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        return cls(
            architecture=str(d["architecture"]),
            n_layer=int(d["n_layer"]),
            n_embd=int(d["n_embd"]),
            n_vocab=int(d["n_vocab"]),
            tokenizer_sha256=str(d["tokenizer_sha256"]),
        )

    def mismatches(self, other: Fingerprint) -> list[str]:
        """Human-readable differences, most telling first (empty when they match)."""
        out = []
        for key in ("architecture", "n_layer", "n_embd", "n_vocab", "tokenizer_sha256"):
            a, b = getattr(self, key), getattr(other, key)
            if a != b:
                if key == "tokenizer_sha256":
                    a, b = str(a)[:12] + "...", str(b)[:12] + "..."
                out.append(f"{key} {a} != {b}")
        return out


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    name: str
    fingerprint: Fingerprint
    chat_template: str | None
    context_length: int | None

    @property
    def n_layer(self) -> int:
        return self.fingerprint.n_layer

    @property
    def n_embd(self) -> int:
        return self.fingerprint.n_embd


def tokenizer_hash(metadata: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(str(metadata.get("tokenizer.ggml.model", "")).encode())
    h.update(b"\0")
    for tok in metadata.get("tokenizer.ggml.tokens", []):
        h.update(str(tok).encode("utf-8", errors="surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def read_model_info(path: str | Path) -> ModelInfo:
    """Read the fingerprint of a GGUF model; a typed error for a missing or non-GGUF file."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"model path is not a file: {path}")
    if not is_gguf(path):
        raise ModelFileError(f"{path} is not a GGUF model file")
    try:
        g = read_gguf(path, skip_keys=("tokenizer.ggml.merges",))
    except GGUFFormatError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    md = g.metadata
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{path}: GGUF has no general.architecture")

    def num(key: str) -> int:
        v = md.get(f"{arch}.{key}")
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ModelFileError(f"{path}: GGUF lacks a valid {arch}.{key}")
        return v

    misaligned = [t.name for t in g.tensors if t.offset % TENSOR_ALIGNMENT]
    if misaligned:  # llama.cpp maps the file and asserts that every tensor's data is aligned
        raise ModelFileError(f"{path}: tensor data of {misaligned[0]!r} is not {TENSOR_ALIGNMENT}-byte aligned")
    try:
        _check_header(arch, md, g.types, num("block_count"))
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    tokens = md.get("tokenizer.ggml.tokens")
    vocab_size = md.get(f"{arch}.vocab_size", 0)
    n_vocab = len(tokens) if tokens is not None else vocab_size if isinstance(vocab_size, int) else 0
    template = md.get("tokenizer.chat_template")
    ctx_len = md.get(f"{arch}.context_length")
    return ModelInfo(
        path=path,
        name=str(md.get("general.name", path.stem)),
        fingerprint=Fingerprint(
            architecture=arch,
            n_layer=num("block_count"),
            n_embd=num("embedding_length"),
            n_vocab=n_vocab,
            tokenizer_sha256=tokenizer_hash(md),
        ),
        chat_template=template if isinstance(template, str) else None,
        context_length=ctx_len if isinstance(ctx_len, int) else None,
    )


def _check_header(arch: str, md: dict[str, Any], types: dict[str, tuple[int, int]], n_layer: int) -> None:
    """Refuse what the pinned llama.cpp would abort on (``GGML_ASSERT``) or read out of bounds.

    llama.cpp returns a clean error for most malformed files (bad structure, missing tensors, wrong
    shapes), which surfaces as :class:`ModelFileError`. These checks cover the generic hyper-parameters
    and tokenizer arrays where it asserts or trusts the file instead (found by fuzzing,
    ``tests/test_fuzz_packs.py``); architecture-specific asserts beyond them are llama.cpp's to fix.
    Raises ValueError with the reason.
    """
    if n_layer > MAX_LAYERS:
        raise ValueError(f"{arch}.block_count {n_layer} is over llama.cpp's limit of {MAX_LAYERS} layers")

    def count(key: str) -> int | list[int] | None:
        v = md.get(f"{arch}.{key}")
        if v is None:
            return None
        items = v if isinstance(v, list) else [v]
        if not items or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in items):
            raise ValueError(f"{arch}.{key} must be a non-negative integer (or one per layer)")
        if isinstance(v, list) and len(v) > n_layer:
            raise ValueError(f"{arch}.{key} has {len(v)} per-layer values for {n_layer} layers")
        return v

    nextn = count("nextn_predict_layers")
    if isinstance(nextn, int) and nextn > n_layer:
        raise ValueError(f"{arch}.nextn_predict_layers {nextn} exceeds block_count {n_layer}")
    n_expert = count("expert_count")
    used = count("expert_used_count")
    groups = count("expert_group_count")
    group_used = count("expert_group_used_count")
    if isinstance(n_expert, list) or isinstance(groups, list) or isinstance(group_used, list):
        raise ValueError(f"{arch}: expert and group counts must be single integers")
    n_expert, groups, group_used = n_expert or 0, groups or 0, group_used or 0
    used_max = max(used) if isinstance(used, list) else used or 0
    if n_expert > MAX_EXPERTS:
        raise ValueError(f"{arch}.expert_count {n_expert} is over llama.cpp's limit of {MAX_EXPERTS}")
    if used_max > n_expert or (n_expert > 0 and used_max == 0):
        raise ValueError(f"{arch}: expert_used_count {used_max} does not fit expert_count {n_expert}")
    if n_expert == 0 and groups:
        raise ValueError(f"{arch}: expert groups without experts")
    if n_expert > 0 and (groups >= n_expert or (groups > 1 and (n_expert % groups or not 0 < group_used < groups))):
        raise ValueError(f"{arch}: expert_group_count {groups} / expert_group_used_count {group_used} do not fit "
                         f"{n_expert} experts")
    scaling = md.get(f"{arch}.rope.scaling.type")
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise ValueError(f"{arch}.rope.scaling.type {scaling!r} is not one of {', '.join(ROPE_SCALING_TYPES)}")
    for key, value in md.items():
        if not key.startswith(f"{arch}."):
            continue
        floats = value if isinstance(value, list) else [value]
        if all(isinstance(x, float) for x in floats) and floats:
            if not all(math.isfinite(x) for x in floats):
                raise ValueError(f"{key} is not finite")
            if ("epsilon" in key or key.endswith("_eps")) and min(floats) < 0:
                raise ValueError(f"{key} is negative")

    # The vocabulary: llama.cpp asserts unique tokens and reads scores and token types as raw arrays.
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is None:
        return
    if types.get("tokenizer.ggml.tokens") != (_ARR, _STR) or not isinstance(tokens, list) or not tokens:
        raise ValueError("tokenizer.ggml.tokens must be a non-empty array of strings")
    if len(tokens) >= 1 << 31:
        raise ValueError("tokenizer.ggml.tokens is too long")
    seen = {t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)}  # llama.cpp renames empty tokens
    if len(seen) != len(tokens):
        raise ValueError(f"tokenizer.ggml.tokens has duplicates ({len(tokens) - len(seen)} tokens repeat)")
    for key, allowed in (("tokenizer.ggml.scores", ((_ARR, _F32),)),
                         ("tokenizer.ggml.token_type", ((_ARR, _I32), (_ARR, _U32)))):
        if key in types:
            n = len(md[key]) if key in md and hasattr(md[key], "__len__") else -1
            if types[key] not in allowed or n != len(tokens):
                raise ValueError(f"{key} must be a 32-bit array with one entry per token ({len(tokens)})")
    if "tokenizer.ggml.merges" in types and types["tokenizer.ggml.merges"] != (_ARR, _STR):
        raise ValueError("tokenizer.ggml.merges must be an array of strings")
    model = md.get("tokenizer.ggml.model")
    if model is not None and not isinstance(model, str):
        raise ValueError("tokenizer.ggml.model must be a string")
    if model == "no_vocab":  # llama.cpp asserts as soon as such a model is asked to tokenize
        raise ValueError("the model has no vocabulary (tokenizer.ggml.model = no_vocab); a text model is needed")
    if model == "llama":
        # SentencePiece falls back to the byte tokens <0x00>..<0xFF> for anything else, and llama.cpp
        # terminates the process (std::out_of_range) when one is missing.
        missing = [b for b in range(256) if f"<0x{b:02X}>" not in seen]
        if missing:
            raise ValueError(f"the SentencePiece vocabulary lacks {len(missing)} of the 256 byte tokens "
                             f"(first: <0x{missing[0]:02X}>)")
