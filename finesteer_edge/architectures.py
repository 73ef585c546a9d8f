"""Which llama.cpp architectures finesteer-edge is tested on, and how each reads hidden states.

``SUPPORTED_ARCHITECTURES`` is the list the test suite parametrises over: for each, a tiny random GGUF
of that architecture (``finesteer_edge.testing.tiny_model``) passes the load-time self-test, exact and
fast steering, the chat-template path and (where transformers can load it) the HF layer cross-check.
The README's "Supported architectures" list is checked against it. Other architectures still load if
the self-test passes on them (it proves the tap and the control vector agree on ``l_out-N``), with a
warning that they are untested; one whose graph adds no control vector is refused by that self-test.
"""

from __future__ import annotations

SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "granite", "olmo2", "olmo",
)

# Architectures whose graph builder in the pinned llama.cpp fills ``t_layer_inp[il]`` for every layer, so
# ``llama_set_embeddings_layer_inp`` can read ``l_out-N`` in the generation context itself. The others use
# a second, tap-only context with a ``cb_eval`` callback (taps.py), so generation never runs a callback.
# (Enabling layer inputs on the others aborts in llama.cpp: "layer input tensor is null", e.g. qwen2, granite,
# olmo2, olmo.)
LAYER_INP_ARCHITECTURES = frozenset({"llama", "qwen3", "qwen3moe"})


def is_supported(architecture: str) -> bool:
    return architecture in SUPPORTED_ARCHITECTURES
