"""Start-up: load the model once, load and verify every pack, build the slots.

Every pack is loaded, checked against the model (fingerprint), checksummed and self-tested on every
slot's context (``SteeredLlama.__init__`` does all three). A pack that fails stops the server with its
:class:`PackError` (the CLI prints one ``error:`` line, exit code 2). Only with ``allow_unsteered`` is it
left out instead, loudly, and requests naming it get a 400 saying why: never silently unsteered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PackError
from ..llama.session import LlamaModel
from ..pack.pack import SteeringPack
from ..steered import SteeredLlama
from .slots import Slot, SlotPool
from .steering import InstanceDefaults, SteeringDefaults

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
    allow_unsteered: bool = False
    max_queue: int = 16
    queue_timeout: float = 60.0
    max_body_bytes: int = 1 << 20
    api_key: str | None = None


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
    pack = SteeringPack.load(path)
    pack.check_model(model.info)
    return pack


def _instance(model: LlamaModel, pack: SteeringPack | None, cfg: ServeConfig) -> SteeredLlama:
    return SteeredLlama(model, pack, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, strength=cfg.strength,
                        mode=None, gate="pack", vector_source=None)


def build_engine(cfg: ServeConfig) -> Engine:
    """Load everything; raises :class:`PackError` for a failing pack unless ``cfg.allow_unsteered``."""
    if cfg.parallel < 1:
        raise ValueError("--parallel must be >= 1")
    model = LlamaModel(cfg.model_path)
    packs: dict[str, SteeringPack] = {}
    failed: dict[str, str] = {}
    names: list[str] = []
    try:
        for path in cfg.pack_paths:
            name = path.name
            pack = None
            try:
                pack = _load_pack(path, model)
                name = pack.manifest.name or path.name
            except PackError as exc:
                _refuse(name, exc, cfg, failed)
            if name in packs or name in failed and pack is not None:
                raise PackError(f"two packs are named {name!r} (the second is {path}); requests name packs, "
                                "so rename one in its manifest")
            if pack is not None:
                packs[name] = pack
            names.append(name)
        slots: list[Slot] = []
        for i in range(cfg.parallel):
            slot = Slot(i, {})
            for name, pack in list(packs.items()):
                try:
                    llm = _instance(model, pack, cfg)
                except PackError as exc:  # the self-test on this context failed
                    for s in [*slots, slot]:
                        dropped = s.instances.pop(name, None)
                        s.defaults.pop(name, None)
                        if dropped is not None:
                            dropped.close()
                    packs.pop(name)
                    _refuse(name, exc, cfg, failed)
                    continue
                slot.instances[name] = llm
                slot.defaults[name] = InstanceDefaults(llm.mode, llm.vector_source)
            slots.append(slot)
        for slot in slots:
            if not slot.instances:
                llm = _instance(model, None, cfg)
                slot.instances[None] = llm
                slot.defaults[None] = InstanceDefaults(llm.mode, llm.vector_source)
    except BaseException:
        model.close()
        raise
    # The first --pack is the default of requests that do not name one (one pack per request today).
    first = names[0] if names else None
    default_packs = (first,) if first in packs else ()
    unsteered = failed.get(first) if first is not None and not default_packs else None
    defaults = SteeringDefaults(packs=default_packs, strength=cfg.strength, mode=cfg.mode, gate=cfg.gate,
                                vector=cfg.vector, unsteered_reason=unsteered)
    pool = SlotPool(slots, max_queue=cfg.max_queue, queue_timeout=cfg.queue_timeout)
    return Engine(cfg, model, pool, packs, failed, defaults)


def _refuse(name: str, exc: PackError, cfg: ServeConfig, failed: dict[str, str]) -> None:
    if not cfg.allow_unsteered:
        raise exc
    failed[name] = str(exc)
    log.error("STEERING DISABLED for pack %s: %s; serving without it (--allow-unsteered)", name, exc)
