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
from .multipack import PackSpec
from .pack.pack import SteeringPack
from .result import GenerationResult, PackOutcome
from .settings import SamplingParams, SteeringSettings
from .steered import SteeredLlama
from .verify import VerifyReport, verify_pack

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
    "PackOutcome",
    "PackSpec",
    "SamplingParams",
    "SelfTestError",
    "SteeredLlama",
    "SteeringPack",
    "SteeringSettings",
    "VerifyReport",
    "__version__",
    "verify_pack",
]
