"""The process :class:`~finesteer_edge.testing.fuzz.FuzzWorker` talks to: one JSON request per line in,
one JSON reply per line out, on a private copy of stdout (fd 1 itself goes to stderr, so anything
llama.cpp or onnxruntime prints cannot corrupt the protocol).

Requests: ``{"op": "pack", "path"}``, ``{"op": "pack_run", "path", "model", "prompts"}``,
``{"op": "control", "path", "n_embd", "n_layer"}``, ``{"op": "model", "path", "pack"}``.
Training-side requests (the worker started with ``--training``, see ``training``):
``{"op": "checkpoint", "path", "model", "out"}``, ``{"op": "torch", "src", "model", "out", ...convert
options}``, ``{"op": "cvec_import", "path", "model", "out", "strength", "gate_checkpoint"}`` (all three run
``convert`` to the end), ``{"op": "activations", "path", "train", "out"}`` and ``{"op": "jsonl", "task",
"data", "negatives", "extract", "model", "out"}``.
Replies: ``{"kind": "ok" | "typed" | "bug", "error", "detail", "maxrss_mb"}``. Which exceptions count as
``typed`` depends on the op: pack inputs must end in a ``PackError``, control vectors in a
``PackFormatError``, model files in a ``FinesteerError`` (``ModelFileError`` for the header itself);
training-side inputs in ``CheckpointError``, ``ModelMismatchError`` or ``LayerError`` (convert),
``ActivationsError`` (activations; ``DataError`` too once training runs) and ``DataError`` (JSONL).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _limit_address_space(extra_gib: int = 6) -> None:
    """Cap virtual memory a few GiB above what the imports use, so a runaway allocation fails fast
    instead of taking the machine down; the parent still flags big successful allocations by peak RSS."""
    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        limit = vm + (extra_gib << 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, StopIteration, ValueError):  # pragma: no cover - non-Linux
        pass


def _evaluate(req: dict[str, Any]) -> tuple[str, str, str]:
    from finesteer_edge.errors import FinesteerError, ModelFileError, PackError, PackFormatError
    from finesteer_edge.model_info import read_model_info
    from finesteer_edge.pack.control_vector import read_control_vector
    from finesteer_edge.pack.pack import SteeringPack
    from finesteer_edge.steered import SteeredLlama

    op = req["op"]
    typed: tuple[type[BaseException], ...]
    try:
        if op == "pack":
            typed = (PackError,)
            SteeringPack.load(req["path"])
        elif op == "pack_run":
            typed = (PackError,)
            pack = SteeringPack.load(req["path"])
            with SteeredLlama(req["model"], pack, n_ctx=128, n_threads=1) as llm:
                for prompt in req["prompts"]:
                    llm.generate(prompt, max_tokens=3)
        elif op == "control":
            typed = (PackFormatError,)
            read_control_vector(Path(req["path"]).read_bytes(), n_embd=req["n_embd"], n_layer=req["n_layer"])
        elif op == "model":
            typed = (ModelFileError,)
            read_model_info(req["path"])
            typed = (FinesteerError,)  # past the header: a template or context error is a typed refusal too
            with SteeredLlama(req["path"], n_ctx=64, n_threads=1) as llm:
                llm.generate("hi", max_tokens=2)
            if req.get("pack"):
                with SteeredLlama(req["path"], req["pack"], n_ctx=64, n_threads=1) as llm:
                    llm.generate("hi", max_tokens=2)
        elif op in ("checkpoint", "torch", "cvec_import", "activations", "jsonl"):
            return _evaluate_training(req)
        elif op == "abort":  # the harness's own test: a process that dies like llama.cpp on GGML_ASSERT
            os.abort()
        elif op == "sleep":  # ... and one that hangs
            import time

            time.sleep(float(req["seconds"]))
            typed = ()
        else:
            return "bug", "unknown op", op
    except typed as exc:
        return "typed", type(exc).__name__, str(exc)[:300]
    except BaseException as exc:  # noqa: BLE001 - anything else is exactly what the fuzzer hunts for
        return "bug", type(exc).__name__, "".join(traceback.format_exception(exc))[-3000:]
    return "ok", "", ""


def _evaluate_training(req: dict[str, Any]) -> tuple[str, str, str]:
    """The training-side ops: every input must end in the typed errors the CLI reports in one line."""
    from finesteer_edge.converters.convert import convert
    from finesteer_edge.errors import ActivationsError, CheckpointError, DataError, LayerError, ModelMismatchError

    op = req["op"]
    convert_errors = (CheckpointError, ModelMismatchError, LayerError)
    typed: tuple[type[BaseException], ...] = convert_errors
    out = Path(req["out"])
    try:
        if op == "checkpoint":
            convert(Path(req["path"]), out, model=Path(req["model"]), overwrite=True)
        elif op == "torch":
            typed = (*convert_errors, ActivationsError)
            paths = {k: Path(req[k]) if req.get(k) else None for k in ("prototypes", "basis", "activations")}
            convert(Path(req["src"]), out, model=Path(req["model"]), overwrite=True,
                    official_layer=req.get("official_layer"), **paths)
        elif op == "cvec_import":
            gate = req.get("gate_checkpoint")
            convert(Path(req["path"]), out, model=Path(req["model"]), overwrite=True, strength=req["strength"],
                    gate_checkpoint=Path(gate) if gate else None)
        elif op == "activations":
            from finesteer_edge.train.activations import load_activations

            typed = (ActivationsError,)
            load_activations(req["path"])
            if req.get("train"):
                from finesteer_edge.train.trainer import TrainConfig, train

                typed = (ActivationsError, DataError)
                train(Path(req["path"]), out, TrainConfig(epochs=1, threads=1))
        elif op == "jsonl":
            from finesteer_edge.train.tasks import load_items

            typed = (DataError,)
            negatives = [Path(p) for p in req.get("negatives") or []]
            load_items(req["task"], Path(req["data"]), negatives=negatives)
            if req.get("extract"):
                from finesteer_edge.train.extract import ExtractConfig, extract

                extract(Path(req["model"]), ExtractConfig(task=req["task"], data=Path(req["data"]), out=out,
                                                          negatives=negatives, limit=2, own_tokens=2, n_ctx=256,
                                                          threads=1, show_progress=False))
    except typed as exc:
        return "typed", type(exc).__name__, str(exc)[:300]
    except BaseException as exc:  # noqa: BLE001 - anything else is exactly what the fuzzer hunts for
        return "bug", type(exc).__name__, "".join(traceback.format_exception(exc))[-3000:]
    return "ok", "", ""


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    rss_limit_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    import finesteer_edge.steered  # noqa: F401 - import everything before measuring the address space

    if "--training" in sys.argv[2:]:
        # torch, onnx, onnxruntime and scikit-learn map gigabytes of address space when imported: load
        # them before the cap, single-threaded like the CLI on a shared machine.
        import torch

        torch.set_num_threads(1)
        import onnx  # noqa: F401
        import safetensors.numpy  # noqa: F401
        from sklearn import cluster, decomposition, linear_model, metrics  # noqa: F401

        import finesteer_edge.converters.convert  # noqa: F401
        import finesteer_edge.converters.importers.control_vector  # noqa: F401
        import finesteer_edge.converters.importers.torch_checkpoints  # noqa: F401
        import finesteer_edge.train.extract  # noqa: F401
        import finesteer_edge.train.trainer  # noqa: F401
        from finesteer_edge.train import mose  # noqa: F401

    _limit_address_space(max(2, rss_limit_mb // 1024 + 4))
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        kind, error, detail = _evaluate(json.loads(line))
        maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        proto.write(json.dumps({"kind": kind, "error": error, "detail": detail, "maxrss_mb": maxrss_mb}) + "\n")


if __name__ == "__main__":
    main()
