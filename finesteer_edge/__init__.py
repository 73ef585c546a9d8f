"""finesteer-edge: FineSteer-style conditional steering for quantized GGUF models through llama.cpp.

The runtime needs numpy, onnxruntime, gguf and llama-cpp-python only; training and conversion
(torch, onnx) live in ``finesteer_edge.train`` and ``finesteer_edge.converters`` and are never
imported from here.
"""

from __future__ import annotations

import logging

from .errors import (
    ChecksumError,
    ConcurrentUseError,
    ContextOverflowError,
    FinesteerError,
    LayerError,
    ModelFileError,
    ModelMismatchError,
    PackError,
    PackFormatError,
    SelfTestError,
)
from .pack.pack import SteeringPack
from .result import GenerationResult
from .steered import SteeredLlama

__version__ = "0.1.0"

logging.getLogger("finesteer_edge").addHandler(logging.NullHandler())

__all__ = [
    "ChecksumError",
    "ConcurrentUseError",
    "ContextOverflowError",
    "FinesteerError",
    "GenerationResult",
    "LayerError",
    "ModelFileError",
    "ModelMismatchError",
    "PackError",
    "PackFormatError",
    "SelfTestError",
    "SteeredLlama",
    "SteeringPack",
    "__version__",
]
