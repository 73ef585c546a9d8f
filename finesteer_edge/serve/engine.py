"""Start-up: load the model once, load and verify every pack, build the slots.

Every pack passes :func:`finesteer_edge.verify.verify_pack`, the one place that decides whether a pack may be
used with a model (the runtime and the CLI's ``verify`` call it too): checksums and fingerprint once at
start-up, before any context is allocated, then the llama.cpp self-test on every slot's context (which
``SteeredLlama.__init__`` runs through ``verify_pack`` as well). A slot is one ``SteeredLlama`` holding every
pack, so memory is one context per slot whatever the number of packs. A pack that fails stops the server with its
:class:`PackError` (the CLI prints one ``error:`` line, exit code 2). Only with ``allow_unsteered`` is it
left out instead, loudly, and requests naming it get a 400 saying why: never silently unsteered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PackError
from ..llama.model import LlamaModel
from ..pack.pack import SteeringPack
from ..steered import SteeredLlama
from ..verify import verify_pack
from .slots import Slot, SlotPool, slot_thread
from .steering import SteeringDefaults

log = logging.getLogger("finesteer_edge.serve")


@dataclass
class ServeConfig:
    model_path: Path
    pack_paths: list[Path] = field(default_factory=list)
    model_id: str | None = None
    """Name in /v1/models and in responses; default: the GGUF file's stem."""
    parallel: int = 1
    n_ctx: int = 4096
    n_threads: int | None = None
    strength: float = 1.0
    mode: str | None = None
    gate: str = "pack"
    vector: str | None = None
    threshold: float | None = None
    """``--gate-threshold``: the requests' default gate threshold (None: each pack's tau)."""
    allow_unsteered: bool = False
    max_queue: int = 16
    queue_timeout: float = 60.0
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    chat_template: str | None = None
    """``--chat-template``: a built-in name, a Jinja file, or None for the GGUF's own."""


@dataclass
class Engine:
    config: ServeConfig
    model: LlamaModel
    pool: SlotPool
    packs: dict[str, SteeringPack]
    failed: dict[str, str]
    """Pack -> why it is not served (only with ``allow_unsteered``)."""
    defaults: SteeringDefaults

    @property
    def model_id(self) -> str:
        return self.config.model_id or self.config.model_path.stem

    def close(self) -> None:
        self.pool.close()
        self.model.close()


def _load_pack(path: Path, model: LlamaModel) -> SteeringPack:
    """Load and check ``path`` (checksums, fingerprint); the self-test follows on each slot's context."""
    report = verify_pack(path, model, selftest=False)
    assert report.pack is not None
    return report.pack


def _instance(model: LlamaModel, packs: list[SteeringPack], cfg: ServeConfig) -> SteeredLlama:
    """One slot's context with every pack (settings come per turn; these are only the constructor's)."""
    return SteeredLlama(model, packs=packs, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, strength=cfg.strength,
                        mode=None, gate="pack", vector_source=None, allow_unsteered=cfg.allow_unsteered,
                        chat_template=cfg.chat_template)


def _name(pack: SteeringPack) -> str:
    return pack.manifest.name or pack.path.name


def build_engine(cfg: ServeConfig) -> Engine:
    """Load everything; raises :class:`PackError` for a failing pack unless ``cfg.allow_unsteered``."""
    if cfg.parallel < 1:
        raise ValueError("--parallel must be >= 1")
    model = LlamaModel(cfg.model_path)
    packs: dict[str, SteeringPack] = {}
    failed: dict[str, str] = {}
    names: list[str] = []
    slots: list[Slot] = []
    try:
        for path in cfg.pack_paths:
            name = path.name
            pack = None
            try:
                pack = _load_pack(path, model)
                name = _name(pack)
            except PackError as exc:
                _refuse(name, exc, cfg, failed)
            if name in packs or name in failed and pack is not None:
                raise PackError(f"two packs are named {name!r} (the second is {path}); requests name packs, "
                                "so rename one in its manifest")
            if pack is not None:
                packs[name] = pack
            names.append(name)
        for i in range(cfg.parallel):
            thread = slot_thread(i)
            try:  # built on the slot's own thread, which runs all its turns (Slot.executor)
                llm = thread.submit(_instance, model, list(packs.values()), cfg).result()
            except BaseException:  # a PackError here (self-test) stops the server
                thread.shutdown(wait=True)
                raise
            slots.append(Slot(i, llm, thread))
            # allow_unsteered: a pack whose self-test failed on this context was left out of it (loudly);
            # it is then not served at all (it may still sit, never enabled, in earlier slots' instances).
            held = set(llm.pack_names)
            for name in [n for n in packs if n not in held]:
                packs.pop(name)
                failed[name] = llm.unsteered_reason or "its self-test failed on a slot's context"
    except BaseException:
        for slot in slots:
            slot.close()
        model.close()
        raise
    # Requests that do not name packs get every served pack; a configured one that failed is reported.
    default_packs = tuple(n for n in names if n in packs)
    unsteered = "; ".join(f"{n}: {failed[n]}" for n in names if n in failed) or None
    defaults = SteeringDefaults(packs=default_packs, strength=cfg.strength, mode=cfg.mode, gate=cfg.gate,
                                vector=cfg.vector, threshold=cfg.threshold, unsteered_reason=unsteered)
    pool = SlotPool(slots, max_queue=cfg.max_queue, queue_timeout=cfg.queue_timeout)
    return Engine(cfg, model, pool, packs, failed, defaults)


def _refuse(name: str, exc: PackError, cfg: ServeConfig, failed: dict[str, str]) -> None:
    if not cfg.allow_unsteered:
        raise exc
    failed[name] = str(exc)
    log.error("STEERING DISABLED for pack %s: %s; serving without it (--allow-unsteered)", name, exc)
