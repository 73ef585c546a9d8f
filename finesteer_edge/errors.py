"""Typed errors. Every failure a user can cause maps to one of these.

The CLI turns any :class:`FinesteerError` into a one-line ``error: ...`` on stderr and exit code 2,
so the message must say what went wrong and, where possible, what to do about it.
"""

from __future__ import annotations


class FinesteerError(Exception):
    """Base class of every error finesteer-edge raises on purpose."""


class ModelFileError(FinesteerError):
    """The model file is missing, unreadable, or not a GGUF llama.cpp can load."""


class UnknownModelError(FinesteerError):
    """A model name that is not in the registry of known models."""


class PullError(FinesteerError):
    """Fetching a known model failed (no network, bad download, checksum mismatch)."""


class PackError(FinesteerError):
    """A steering pack is invalid or cannot be applied. Never falls back to unsteered generation."""


class PackFormatError(PackError):
    """Manifest, head or control vector is malformed, missing, or outside the pack directory."""


class ChecksumError(PackError):
    """A pack file's sha256 does not match its manifest."""


class ModelMismatchError(PackError):
    """The pack was made for another model (architecture, n_layer, n_embd, vocabulary or tokenizer)."""


class LayerError(PackError):
    """A layer index that llama.cpp cannot tap or steer (layer 0 for steering, or out of range)."""


class SelfTestError(PackError):
    """The load-time self-test of the hidden-state tap or the control vector failed."""


class ContextOverflowError(FinesteerError):
    """The prompt (plus at least one generated token) does not fit into the context window."""


class ConcurrentUseError(FinesteerError):
    """A SteeredLlama was re-entered while one of its calls (e.g. an open stream) was still running."""


class CheckpointError(FinesteerError):
    """A training checkpoint is malformed, unsafe (not weights-only) or holds NaN/Inf weights."""


class DataError(FinesteerError):
    """Training or evaluation data is malformed (the message names file and line)."""


class ActivationsError(FinesteerError):
    """An activations file is malformed or comes from another model than the one given."""
