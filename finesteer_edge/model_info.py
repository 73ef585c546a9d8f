"""What a pack must agree with: a model's fingerprint, read from the GGUF header without llama.cpp.

The fingerprint names the network a steering vector was fitted to: architecture, depth, width,
vocabulary and a hash of the tokenizer. It deliberately ignores the quantization, so one pack serves
the Q4_1 and the Q8_0 file of the same model.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .gguf_file import GGUFFormatError, is_gguf, read_gguf


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
        if not isinstance(v, int) or v <= 0:
            raise ModelFileError(f"{path}: GGUF lacks a valid {arch}.{key}")
        return v

    tokens = md.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens) if tokens is not None else int(md.get(f"{arch}.vocab_size", 0))
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
