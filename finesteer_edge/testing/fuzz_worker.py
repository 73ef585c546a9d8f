"""The process :class:`~finesteer_edge.testing.fuzz.FuzzWorker` talks to: one JSON request per line in,
one JSON reply per line out, on a private copy of stdout (fd 1 itself goes to stderr, so anything
llama.cpp or onnxruntime prints cannot corrupt the protocol).

Requests: ``{"op": "pack", "path"}``, ``{"op": "pack_run", "path", "model", "prompts"}``,
``{"op": "control", "path", "n_embd", "n_layer"}``, ``{"op": "model", "path", "pack"}``.
Replies: ``{"kind": "ok" | "typed" | "bug", "error", "detail", "maxrss_mb"}``. Which exceptions count as
``typed`` depends on the op: pack inputs must end in a ``PackError``, control vectors in a
``PackFormatError``, model files in a ``FinesteerError`` (``ModelFileError`` for the header itself).
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


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    rss_limit_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    import finesteer_edge.steered  # noqa: F401 - import everything before measuring the address space

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
