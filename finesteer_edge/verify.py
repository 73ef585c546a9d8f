"""``verify_pack``: every check that a pack may be used with a model, in one function with one report.

The checks, in order (each needs the previous one):

1. ``checksums``: the pack's files are inside its directory and match the manifest's sizes and sha256
   (:meth:`SteeringPack.load`; a pack passed already loaded was checked when it was loaded, from the
   very bytes it holds);
2. ``fingerprint``: the pack was made for this model (:meth:`SteeringPack.check_model`);
3. ``selftest``: on this llama.cpp build and model, the hidden-state tap reads the pack's layers and a
   control vector at its steer layer lands there and clears bit-exactly (:func:`run_selftest`).

The runtime (``SteeredLlama``), the CLI ``verify`` command and the server all call this, so a pack is
trusted for the same reasons everywhere. A failed check raises its typed :class:`PackError`
(:class:`ChecksumError`, :class:`PackFormatError`, :class:`ModelMismatchError`, :class:`LayerError`,
:class:`SelfTestError`) with the message users see; ``raise_on_failure=False`` returns the report with
the failed check instead (the later checks are then not run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PackError, SelfTestError
from .llama.model import LlamaModel
from .llama.session import ContextSettings, LlamaSession
from .model_info import ModelInfo, read_model_info
from .pack.pack import SteeringPack
from .selftest import SelfTestReport, run_selftest

CHECKS = ("checksums", "fingerprint", "selftest")
SELFTEST_N_CTX = 512


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """Which checks ran on which pack and model, and how each went."""

    pack_path: str
    pack_name: str
    model: str
    checks: list[CheckResult] = field(default_factory=list)
    selftest: SelfTestReport | None = None
    error: PackError | None = None
    """The first failure (only kept with ``raise_on_failure=False``)."""
    pack: SteeringPack | None = None
    """The loaded pack (None when it could not be loaded)."""

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)

    @property
    def ran(self) -> list[str]:
        return [c.name for c in self.checks]

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "ok": self.ok, "pack": self.pack_path, "model": self.model,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks},
            "selftest": self.selftest.to_dict() if self.selftest else None,
        }
        for c in self.checks:  # the flat form `verify --json` always printed
            if c.name != "selftest":
                d[c.name] = "ok" if c.ok else "failed"
        if self.error is not None:
            d["error"] = str(self.error)
        return d


ModelLike = str | os.PathLike[str] | ModelInfo | LlamaModel | LlamaSession


def verify_pack(pack: SteeringPack | str | os.PathLike[str], model: ModelLike, *, selftest: bool = True,
                n_threads: int | None = None, raise_on_failure: bool = True) -> VerifyReport:
    """Check ``pack`` against ``model`` and return what was checked.

    ``model``: a GGUF path, a loaded :class:`LlamaModel`, a :class:`ModelInfo` (no self-test possible:
    pass ``selftest=False``), or an open :class:`LlamaSession` whose taps include the pack's layers (the
    self-test then runs on it, and leaves its KV cache empty and its control vector cleared).
    """
    if isinstance(model, ModelInfo) and selftest:
        raise ValueError("the self-test needs a model to run, not only its ModelInfo (or pass selftest=False)")
    info = _info(model)
    report = VerifyReport(pack_path=str(pack.path if isinstance(pack, SteeringPack) else pack),
                          pack_name=pack.manifest.name if isinstance(pack, SteeringPack) else Path(pack).name,
                          model=str(info.path))
    try:
        _run_checks(report, pack, model, info, selftest=selftest, n_threads=n_threads)
    except PackError as exc:
        if raise_on_failure:
            raise
        report.error = exc
    return report


def _run_checks(report: VerifyReport, pack: SteeringPack | str | os.PathLike[str], model: ModelLike,
                info: ModelInfo, *, selftest: bool, n_threads: int | None) -> None:
    step = "checksums"
    try:
        if isinstance(pack, SteeringPack):
            loaded, how = pack, "verified when the pack was loaded"
        else:
            loaded, how = SteeringPack.load(Path(pack)), "match the manifest"
        report.pack, report.pack_name, report.pack_path = loaded, loaded.manifest.name, str(loaded.path)
        report.checks.append(CheckResult(step, True, f"{', '.join(sorted(loaded.manifest.files))}: {how}"))
        step = "fingerprint"
        loaded.check_model(info)
        fp = loaded.manifest.model
        report.checks.append(CheckResult(step, True, f"{fp.architecture}, {fp.n_layer} layers, n_embd {fp.n_embd}"))
        if not selftest:
            return
        step = "selftest"
        st = _selftest(loaded, model, n_threads)
        report.selftest = st
        report.checks.append(CheckResult(
            step, True, f"tap '{st.tap_method}' reads layer {st.steer_layer} as +v within {st.max_tap_error:.2g}; "
                        f"'{st.cvec_api}' changes logits by up to {st.logit_change:.3g} and clears bit-exactly"))
    except PackError as exc:
        report.checks.append(CheckResult(step, False, str(exc)))
        raise


def _info(model: ModelLike) -> ModelInfo:
    if isinstance(model, ModelInfo):
        return model
    if isinstance(model, LlamaModel | LlamaSession):
        return model.info
    return read_model_info(model)


def _selftest(pack: SteeringPack, model: ModelLike, n_threads: int | None) -> SelfTestReport:
    m = pack.manifest
    if isinstance(model, LlamaSession):
        missing = sorted(set(pack.tap_layers) - set(model.tap.layers if model.tap else ()))
        if missing:
            raise SelfTestError(f"this session does not tap layer(s) {missing} that the pack reads")
        return run_selftest(model, m.gate_layer, m.steer_layer, (m.head_layer,))
    assert not isinstance(model, ModelInfo)
    session = LlamaSession(model if isinstance(model, LlamaModel) else Path(model),
                           ContextSettings(n_ctx=SELFTEST_N_CTX, n_threads=n_threads), tap_layers=pack.tap_layers)
    try:
        return run_selftest(session, m.gate_layer, m.steer_layer, (m.head_layer,))
    finally:
        session.close()
