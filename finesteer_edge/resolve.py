"""Turn what a user typed (a model name or path, a pack name or path, or nothing) into files.

No model: the default model, pulled on first use. No pack: the pack bundled for that model, found by
fingerprint among ``finesteer_edge/packs/*`` (the registry's ``default_pack`` wins when several fit).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelFileError, PackFormatError
from .model_info import ModelInfo
from .pull import pull
from .registry import DEFAULT_MODEL, KNOWN_MODELS

BUNDLED_PACKS = Path(__file__).parent / "packs"


def resolve_model(model: str | None, *, show_progress: bool = True) -> Path:
    """A path to a GGUF file. Known names are pulled into the cache when missing."""
    if model is None:
        return pull(DEFAULT_MODEL, show_progress=show_progress)
    if model in KNOWN_MODELS:
        return pull(model, show_progress=show_progress)
    p = Path(model).expanduser()
    if p.exists():
        return p
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ModelFileError(f"model file not found: {model} (known model names: {known})")


def bundled_packs() -> dict[str, Path]:
    if not BUNDLED_PACKS.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_PACKS.iterdir()) if (p / "manifest.json").is_file()}


def resolve_pack(pack: str | None) -> Path:
    """A pack directory from a path or the name of a bundled pack."""
    assert pack is not None
    p = Path(pack).expanduser()
    if p.exists():
        return p
    bundled = bundled_packs()
    if pack in bundled:
        return bundled[pack]
    names = ", ".join(bundled) or "none"
    raise PackFormatError(f"pack not found: {pack} (bundled packs: {names})")


def default_pack_for(info: ModelInfo) -> Path | None:
    """The bundled pack made for this model, if there is one."""
    from .pack.manifest import parse_manifest

    matches = []
    for name, path in bundled_packs().items():
        try:
            m = parse_manifest((path / "manifest.json").read_bytes())
        except (OSError, PackFormatError):
            continue
        if not m.model.mismatches(info.fingerprint):
            matches.append(name)
    if not matches:
        return None
    preferred = {k.default_pack for k in KNOWN_MODELS.values()}
    for name in matches:
        if name in preferred:
            return bundled_packs()[name]
    return bundled_packs()[matches[0]]
