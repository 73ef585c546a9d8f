"""Record, in a pack's manifest, how it steers by default: vector source, strength and schedule (issue 11).

Why a command and not a hand edit: these are chosen by measurement after the pack is built (``bench/
clean_refusal.py`` on validation), and the choice must travel with the pack, be written in the format version
that makes older runtimes refuse rather than misread it, and leave a record of what it replaced. The pack's files
are copied unchanged; only ``manifest.json`` is rewritten, and the new pack must load (checksums, layers, the
control vector at the steer layer) before it replaces anything.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

from finesteer_edge.pack.manifest import MANIFEST, PACK_FILES, Manifest
from finesteer_edge.pack.pack import SteeringPack
from finesteer_edge.schedule import Schedule
from finesteer_edge.vocab import VectorSource, vector_source_to_manifest

from .pack_writer import _replace_dir


def set_pack_defaults(pack_dir: str | Path, out: str | Path, *, vector_source: VectorSource | None = None,
                      strength: float | None = None, schedule: Schedule | None = None, note: str = "",
                      overwrite: bool = False) -> Path:
    """Write ``out``: ``pack_dir`` with the given defaults (None: keep the pack's). ``out`` may be ``pack_dir``
    itself with ``overwrite``. ``note`` says how the values were chosen (kept in ``provenance.defaults``)."""
    src = SteeringPack.load(pack_dir)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite to replace it)")
    m = src.manifest
    changes: dict[str, Any] = {}
    if vector_source is not None:
        changes["vector_source"] = vector_source_to_manifest(vector_source)
    if strength is not None:
        changes["strength"] = float(strength)
    if schedule is not None:
        changes["schedule"] = schedule
    if not changes:
        raise ValueError("nothing to set: give a vector source, a strength or a schedule")
    before = {"vector_source": m.vector_source, "strength": m.strength,
              "schedule": m.schedule.to_dict() if m.schedule else None}
    after = {k: (v.to_dict() if isinstance(v, Schedule) else v) for k, v in changes.items()}
    record = {"set": after, "before": before, "note": note,
              "at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    history = list(m.provenance.get("defaults", [])) if isinstance(m.provenance.get("defaults"), list) else []
    new: Manifest = dataclasses.replace(m, **changes, provenance={**m.provenance, "defaults": [*history, record]})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in PACK_FILES:
            shutil.copyfile(src.path / name, tmp / name)
        (tmp / MANIFEST).write_text(new.to_json())
        SteeringPack.load(tmp)  # the rewritten pack must load before it replaces anything
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
