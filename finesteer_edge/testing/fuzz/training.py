"""The training-side fuzz targets: what ``extract``, ``train`` and ``convert`` read (issue 6).

These files are not shipped to end users the way packs are, but they are downloaded and shared just the
same (official FineSteer ``.pth`` files, repeng control vectors, someone's checkpoint or JSONL data), and
the converter is where a pickle could run code. Every input must therefore end in one of our typed errors
(:class:`~finesteer_edge.errors.CheckpointError`, ``ActivationsError``, ``DataError``,
``ModelMismatchError``, ``LayerError``), never a crash, hang, unbounded allocation or another exception.

:class:`TrainingBase` holds valid inputs for the micro model (a real ``extract`` on it, a real ``train``
run, official and ``finesteer_moe`` torch files, prototype/basis files, control vectors in three writers'
styles, JSONL data for every task), writes a case of a target through that target's module
(``checkpoints``, ``torch_checkpoints``, ``cvec_import``, ``activations``, ``jsonl``) and runs it in the
same worker as the runtime targets. A pickle payload that runs creates a marker file: a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .activations import ActivationsCase, activation_cases, write_activations
from .checkpoints import CheckpointCase, checkpoint_cases, write_checkpoint
from .core import MARKER
from .cvec_import import CvecCase, cvec_cases, cvec_styles, write_cvec
from .jsonl import JsonlCase, jsonl_base, jsonl_cases, write_jsonl
from .safetensors import SafetensorsSpec, parse_safetensors
from .torch_checkpoints import TorchCase, moe_state, official_state, torch_cases, write_torch
from .worker import FuzzWorker, Outcome

TRAINING_TARGETS = ("checkpoint", "torch", "cvec_import", "activations", "jsonl")
"""The training-side formats: need torch, onnx and sklearn (the worker started with ``training=True``)."""


@dataclass
class TrainingBase:
    """Valid training-side inputs for one model, written once; every case mutates a copy of them."""

    root: Path
    model: Path
    d: int
    n_layer: int
    ckpt_config: dict[str, Any]
    ckpt_weights: SafetensorsSpec
    ckpt_extra: dict[str, bytes]
    acts: SafetensorsSpec
    acts_meta: dict[str, Any]
    official: dict[str, np.ndarray]
    moe: dict[str, np.ndarray]
    C: np.ndarray
    U: np.ndarray
    cvecs: dict[str, bytes]
    jsonl: dict[str, dict[str, list[dict[str, Any]]]]
    checkpoint_dir: Path
    acts_path: Path

    @classmethod
    def create(cls, root: str | Path, model: Path, control: bytes | None = None, *, epochs: int = 2) -> TrainingBase:
        """A real ``extract`` (pairs task) on ``model`` and a real ``train`` run; synthetic torch files.

        ``control``: a control.gguf for ``model`` (default: the one of a random pack made here).
        """
        from ...model_info import read_model_info
        from ...train.extract import ExtractConfig, extract
        from ...train.trainer import TrainConfig, train

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if control is None:
            from ..packs import make_random_pack

            pack = make_random_pack(model, root / "base-pack", tau=-1.0, vector_norm=5.0)
            control = (pack / "control.gguf").read_bytes()
        info = read_model_info(model)
        d, n_layer = info.n_embd, info.n_layer
        rows = []
        for split, n in (("train", 10), ("val", 4)):
            for i in range(n):
                rows.append({"prompt": f"How do I break into house {i} on {split} street?", "split": split,
                             "desired": ["I can't help with that."], "undesired": [f"Sure, find window {i}."]})
                rows.append({"prompt": f"Write a poem about colour {i} ({split}).", "split": split})
        data = root / "base-pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        acts = extract(model, ExtractConfig(task="pairs", data=data, out=root / "base-acts.safetensors", n_ctx=256,
                                            threads=1, show_progress=False))
        ckpt = root / "base-ckpt"
        train(acts, ckpt, TrainConfig(epochs=epochs, seed=0, threads=1))
        acts_spec = parse_safetensors(acts.read_bytes())
        from ...train.activations import META_KEY

        assert acts_spec.metadata is not None
        acts_meta = json.loads(acts_spec.metadata[META_KEY])
        rng = np.random.default_rng(0)
        K, k = 5, 4
        official = official_state(rng, d, k)
        C = rng.standard_normal((K, d))
        U = np.linalg.qr(rng.standard_normal((d, k)))[0] * 3.0
        extra = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.name not in ("model.safetensors", "config.json")}
        return cls(root=root, model=Path(model), d=d, n_layer=n_layer,
                   ckpt_config=json.loads((ckpt / "config.json").read_text()),
                   ckpt_weights=parse_safetensors((ckpt / "model.safetensors").read_bytes()), ckpt_extra=extra,
                   acts=acts_spec, acts_meta=acts_meta, official=official, moe=moe_state(rng, d, K, k), C=C, U=U,
                   cvecs=cvec_styles(control, n_layer), jsonl=jsonl_base(), checkpoint_dir=ckpt, acts_path=acts)

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    # ------------------------------------------------------------------------------------- writing cases
    def write_checkpoint(self, case: CheckpointCase, dest: Path) -> Path:
        return write_checkpoint(case, dest, weights=self.ckpt_weights, config=self.ckpt_config,
                                extra=self.ckpt_extra, d=self.d)

    def write_activations(self, case: ActivationsCase, dest: Path) -> Path:
        return write_activations(case, dest, acts=self.acts, meta=self.acts_meta, d=self.d)

    def write_torch(self, case: TorchCase, dest_dir: Path) -> dict[str, Any]:
        """The case's files; returns the ``convert`` keyword arguments (paths as strings)."""
        return write_torch(case, dest_dir, official=self.official, moe=self.moe, C=self.C, U=self.U, d=self.d,
                           marker=self.marker, acts_path=self.acts_path)

    def write_cvec(self, case: CvecCase, dest: Path) -> Path:
        return write_cvec(case, dest, self.cvecs)

    def write_jsonl(self, case: JsonlCase, dest: Path) -> dict[str, Any]:
        """The task's data folder (or pairs file) with one file mutated; returns ``load_items`` arguments."""
        return write_jsonl(case, dest, self.jsonl)

    # ------------------------------------------------------------------------------------- running cases
    def run(self, worker: FuzzWorker, target: str, case: Any) -> Outcome:
        out = str(self.root / "case-out")
        model = str(self.model)
        self.marker.unlink(missing_ok=True)
        if target == "checkpoint":
            d = self.write_checkpoint(case, self.root / "case-ckpt")
            outcome = worker.run("checkpoint", path=str(d), model=model, out=out)
        elif target == "activations":
            p = self.write_activations(case, self.root / "case-acts.safetensors")
            outcome = worker.run("activations", path=str(p), train=case.train, out=out)
        elif target == "torch":
            kwargs = self.write_torch(case, self.root / "case-torch")
            outcome = worker.run("torch", model=model, out=out, **kwargs)
        elif target == "cvec_import":
            p = self.write_cvec(case, self.root / "case-cvec.gguf")
            outcome = worker.run("cvec_import", path=str(p), model=model, out=out, strength=case.strength,
                                 gate_checkpoint=str(self.checkpoint_dir) if case.gate else None)
        elif target == "jsonl":
            kwargs = self.write_jsonl(case, self.root / "case-data")
            outcome = worker.run("jsonl", model=model, out=str(self.root / "case-acts-out.safetensors"),
                                 extract=case.extract, **kwargs)
        else:
            raise ValueError(f"unknown training fuzz target {target!r}")
        if self.marker.exists():  # the payload of a pickle ran: the worst possible outcome
            self.marker.unlink()
            return Outcome("bug", "PAYLOAD RAN", f"{MARKER} was created while loading the case ({outcome})")
        return outcome

    def strategy(self, target: str, *, train: bool | None = None):  # type: ignore[no-untyped-def]
        """Hypothesis strategy of ``target``'s cases. ``train`` (activations only): None mixes cases that
        also run ``train`` (about 1 in 6, ~1-2 s each) with load-only ones; False / True: only one kind."""
        if target == "checkpoint":
            return checkpoint_cases(self.ckpt_config)
        if target == "activations":
            return activation_cases(self.acts_meta, train)
        if target == "torch":
            return torch_cases()
        if target == "cvec_import":
            return cvec_cases()
        if target == "jsonl":
            return jsonl_cases()
        raise ValueError(f"unknown training fuzz target {target!r}")
