"""Fuzzing support for everything a steering pack, a model file or a training-side file feeds into our parsers.

A pack is a file users download and share, and a model file is read by our header check before
llama.cpp sees it, so both must end in one of our typed errors whatever their bytes are; so must the
files ``extract``, ``train`` and ``convert`` read. The fast tests (``tests/test_fuzz_packs.py``,
``tests/test_fuzz_training.py``) and the long run (``scripts/fuzz_packs.py``) share these modules:

- ``core``: byte and JSON edits, shared value tables, the pickle payload, the hypothesis strategies
  (hypothesis is imported lazily: a dev dependency);
- one module per format: ``gguf`` (control vectors, model headers), ``onnx_head`` (needs ``onnx``),
  ``pack`` (the pack directory and its manifest), ``safetensors``, ``npy``, ``torch_files``, and the
  training-side targets ``checkpoints``, ``torch_checkpoints``, ``cvec_import``, ``activations``, ``jsonl``
  (gathered by ``training``);
- ``worker`` (:class:`FuzzWorker`, the harness side) and ``worker_process`` (the process it runs: llama.cpp
  can abort or segfault on bad input, so a dead worker is a crash, a silent one a hang, a peak RSS over the
  limit an unbounded allocation, and pytest itself never dies);
- ``campaign``: the valid base inputs (:class:`FuzzBase`) and :func:`run_campaign`.

Each case is a small printable tuple list, so a failure shrinks to a readable example. The names below
are the package's public face; the modules import each other, never this package.
"""

from .activations import ActivationsCase
from .campaign import MICRO_CONFIG_KW, RUN_PROMPTS, TARGETS, CampaignResult, FuzzBase, run_campaign
from .checkpoints import CheckpointCase
from .core import MARKER, Payload, RawJSON, apply_byte_mutations, apply_manifest_mutations, dump_manifest, strategies
from .cvec_import import CvecCase
from .gguf import (
    GGUFSpec,
    ModelCase,
    apply_gguf_mutations,
    build_model_case,
    encode_gguf,
    parse_spec_bytes,
    spec_from_file,
)
from .jsonl import JsonlCase
from .npy import build_npy_case
from .onnx_head import apply_head_mutations
from .pack import FILE_OPS, PackCase, PackParts, build_pack_case, write_pack_case
from .safetensors import SafetensorsSpec, encode_safetensors, parse_safetensors
from .torch_checkpoints import TorchCase
from .training import TRAINING_TARGETS, TrainingBase
from .worker import FuzzWorker, Outcome

__all__ = [
    "FILE_OPS", "MARKER", "MICRO_CONFIG_KW", "RUN_PROMPTS", "TARGETS", "TRAINING_TARGETS", "ActivationsCase",
    "CampaignResult", "CheckpointCase", "CvecCase", "FuzzBase", "FuzzWorker", "GGUFSpec", "JsonlCase", "ModelCase",
    "Outcome", "PackCase", "PackParts", "Payload", "RawJSON", "SafetensorsSpec", "TorchCase", "TrainingBase",
    "apply_byte_mutations", "apply_gguf_mutations", "apply_head_mutations", "apply_manifest_mutations",
    "build_model_case", "build_npy_case", "build_pack_case", "dump_manifest", "encode_gguf", "encode_safetensors",
    "parse_safetensors", "parse_spec_bytes", "run_campaign", "spec_from_file", "strategies", "write_pack_case",
]
